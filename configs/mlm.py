"""Masked LM (BERT recipe: 15 % selected; 80 % [MASK], 10 % random, 10 % unchanged) with a bidirectional encoder."""

from configs import default


def get_config():
  c = default.get_config()
  c.objective = "mlm"
  c.train.learning_rate = 2e-3
  return c
