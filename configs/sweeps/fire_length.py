"""FIRE's fixed length L_init against the training length (docs/results.md, "Positions beyond the anchors": FIRE
rose at 16× where Kerple did not). FIRE normalises a distance by ψ(max(L, i)) with L = |L_mult| · L_init, and the
paper's L_init = 512 was set for training at 2,048 tokens; trained on 64-token windows the MLP only ever sees
inputs up to ψ(63)/ψ(512) ≈ 0.5, and an evaluation beyond 512 tokens feeds it inputs it never saw. This sweep
scales L_init: 512 (the paper's, = positions_extended.py's fire arm), 64 (the training length), 16 (512 · 64 /
2048, the paper's ratio of L_init to the training length) and 2048 (beyond the longest evaluation, 16 · 64 = 1024,
so that no evaluated query reaches the threshold), on positions_extended.py's budget and evaluation, 3 seeds:

  research-sweep --sweep=configs/sweeps/fire_length.py --workdir=runs/fire_length
  research-report runs/fire_length
"""

from research.sweeps import product, seeds

from configs.sweeps import positions_extended

BASE_CONFIG = positions_extended.BASE_CONFIG
EVALUATE = positions_extended.EVALUATE
INIT_LENGTHS = [16.0, 64.0, 512.0, 2048.0]


def get_sweep():
  return product({"model.position": ["fire"], "model.fire_init_length": INIT_LENGTHS}, seeds(3),
                 positions_extended.SHARED)
