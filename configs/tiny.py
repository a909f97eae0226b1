"""A model small enough for tests and smoke runs: trains well below log(V) on the default corpus in seconds."""

from configs import default


def get_config():
  c = default.get_config()
  c.data.vocab_size = 512
  c.data.seq_len = 64
  c.model.d_model = 64
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.mlp_dim = 256
  c.train.steps = 200
  c.train.batch_size = 16
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 20
  c.train.checkpoint_every = 100
  c.train.eval_every = 100
  c.train.eval_batches = 8
  c.train.log_every = 20
  return c
