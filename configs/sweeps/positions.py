"""Positional schemes under CLM, 3 seeds, trained at 64 tokens and evaluated up to 16× (1024 tokens).

The question of the ALiBi paper (Press et al. 2022, Table 2): which schemes extrapolate beyond the training length?
  research-sweep --sweep=configs/sweeps/positions.py --workdir=runs/positions && research-report runs/positions
"""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/clm.py"
EVALUATE = {"lengths": [1, 2, 4, 8, 16]}
SCHEMES = ["none", "learned", "sinusoidal", "rope", "alibi", "t5"]


def get_sweep():
  shared = {"data.seq_len": [64], "train.steps": [800], "train.eval_every": [400], "train.checkpoint_every": [400]}
  return product({"model.position": SCHEMES}, seeds(3), shared)
