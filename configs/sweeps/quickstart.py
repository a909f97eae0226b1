"""The quickstart ablation: five positional schemes plus an untied head, evaluated at 1×, 2×, 4×, 8× the training
length. Finishes in well under 10 minutes on 2 CPU cores (docs/results.md has the table as measured)."""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/quickstart.py"
EVALUATE = {"lengths": [1, 2, 4, 8]}


def get_sweep():
  tied = product({"model.position": ["none", "learned", "sinusoidal", "rope", "alibi"],
                  "model.tie_embeddings": [True]}, seeds(1))
  untied = product({"model.position": ["alibi"], "model.tie_embeddings": [False]}, seeds(1))
  return tied + untied
