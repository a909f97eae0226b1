"""GPT-2 small (Radford et al. 2019; 124 M parameters with tied embeddings), as nanoGPT trains it.

12 layers × 768, 12 heads (head dim 64), MLP 3072, T = 1024, V = 50,304 (GPT-2's 50,257 rounded up to a multiple of
64, as nanoGPT does, so the head's matmul tiles evenly), tied head, pre-LN, GELU. Positions: learned, as GPT-2 (its
1024 × 768 `wpe` table); the table is initialised with GPT-2's std 0.02 and the token vectors are not scaled by √d
(GPT-2's convention, not this project's default). Unlike GPT-2 the dense layers have no biases (this project's
blocks never do; the layer norms have them): 124,392,960 parameters = token table 38,633,472 + positions 786,432
+ 12 blocks × 7,080,960 + final norm 1,536 (GPT-2's own 124,439,808 has 50,257 rows and 92,160 dense biases;
tests/test_benchmarks.py counts ours).

Optimisation as nanoGPT's `train_gpt2` config: AdamW lr 6e-4, β = (0.9, 0.95), weight decay 0.1, clip 1.0, 2,000
warm-up steps, cosine to 6e-5 over 600,000 steps, ~0.5 M tokens per step (512 × 1024, in 32 micro-batches of 16).

`benchmarks/throughput.py --preset=gpt2-small` times this model's real train step on random ids (no corpus). To
train it, give it a corpus that can fill a 50 k vocabulary (`--config.data.corpus=hf:...` or `text:...`; the
built-in sample is far too small) and, on a GPU or TPU, `--config.model.dtype=bfloat16`. `model.attention=auto`
runs jax.nn.dot_product_attention there; `--config.model.remat=block` trades compute for activation memory there
when a micro-batch does not fit (on XLA:CPU it saves none: docs/architecture.md, "Gradient checkpointing").
"""

from configs import default


def get_config():
  c = default.get_config()
  c.objective = "clm"
  c.data.vocab_size = 50_304
  c.data.seq_len = 1024
  c.model.d_model = 768
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.mlp_dim = 3072
  c.model.position = "learned"
  c.model.tie_embeddings = True
  c.model.embed_init_std = 0.02
  c.model.embed_scale = False
  c.train.steps = 600_000
  c.train.batch_size = 512
  c.train.grad_accum = 32
  c.train.learning_rate = 6e-4
  c.train.min_lr_ratio = 0.1
  c.train.warmup_steps = 2000
  c.train.weight_decay = 0.1
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.grad_clip = 1.0
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  c.train.eval_batches = 200
  c.train.log_every = 10
  return c
