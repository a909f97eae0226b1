"""Tied versus untied input/output embeddings at three widths, 3 seeds (Press & Wolf 2017; Inan et al. 2017)."""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/clm.py"
EVALUATE = None


def get_sweep():
  widths = [{"model.d_model": d, "model.mlp_dim": 4 * d} for d in (64, 128, 256)]
  return product({"model.tie_embeddings": [True, False]}, widths, seeds(3),
                 {"model.position": ["rope"], "train.steps": [800]})
