"""The quickstart's base: the tiny model trained long enough (1000 steps of 32 × 64 tokens) for positional
schemes to differ, at about a minute per trial on 2 CPU cores."""

from configs import tiny


def get_config():
  c = tiny.get_config()
  c.train.steps = 1000
  c.train.batch_size = 32
  c.train.warmup_steps = 50
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.eval_batches = 0  # the whole validation split, so "valid ppl" and the 1× column agree
  c.train.log_every = 50
  return c
