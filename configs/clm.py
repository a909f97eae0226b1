"""Causal LM on the default corpus: a small decoder, the setting of the positional-scheme ablations."""

from configs import default


def get_config():
  c = default.get_config()
  c.objective = "clm"
  return c
