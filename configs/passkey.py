"""Passkey retrieval made learnable: a tiny RoPE decoder trained on the synthetic `passkey` corpus (documents that
are solved passkey prompts, research/data/passkey.py), so that `research-evaluate --passkey` scores clearly above
zero at the training length (docs/reports.md, "Passkey retrieval"; the figures measured are there):

  research-train --config=configs/passkey.py --workdir=runs/passkey
  research-evaluate --workdir=runs/passkey --lengths=1,2,4 --passkey
"""

from configs import tiny


def get_config():
  c = tiny.get_config()
  c.data.corpus = "passkey"
  c.data.vocab_size = 512  # BPE: a 5-digit key is 3 tokens (4 for a few), the filler's words one each
  c.data.seq_len = 64
  c.model.position = "rope"
  c.train.steps = 2000  # copying the key's later tokens (induction) appears between steps 500 and 1000
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  return c
