"""The schemes beyond the ALiBi paper's anchors, under CLM, 3 seeds, on positions.py's budget (64-token windows, 800
steps), evaluated up to 16× (1024 tokens) with the loss by position (issue 13's extended ablation):

  research-sweep --sweep=configs/sweeps/positions_extended.py --workdir=runs/positions_extended
  research-report runs/positions_extended     # the table, ppl_vs_length.png and loss_by_position.png

Arms: every registered scheme that is not one of positions.py's six anchors (fire, kerple_log, kerple_power,
kerple_log_shared, kerple_power_shared, xpos, cope, sandwich, p_rope), randomized RoPE (Ruoss et al. 2023: training positions sampled from [0, 16·64), so every
evaluated position was seen in training), and the anchors none, rope and alibi for reference. Every trial differs
from the others only in the swept fields (a test checks it): the scheme's own options keep their defaults, except
p-RoPE's `model.rope_keep_fraction`, whose default 1.0 keeps every frequency (p = 1 is RoPE bit for bit, so that the
field is neutral for every other scheme and every saved run): the arm sets P_ROPE_KEEP = 0.75, the paper's setting
(Barbero et al. 2025, Gemma 2B: 0.75-RoPE 4.4414 vs RoPE 4.4627 vs NoPE 4.8594).
"""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/clm.py"
TRAIN_LEN = 64
MULTIPLES = [1, 2, 4, 8, 16]
EVALUATE = {"lengths": MULTIPLES, "by_position": True}
ANCHORS = ["none", "rope", "alibi"]
NEW_SCHEMES = ["fire", "kerple_log", "kerple_power", "kerple_log_shared", "kerple_power_shared", "xpos", "cope",
               "sandwich", "p_rope"]
P_ROPE_KEEP = 0.75
RANDOMIZED_ROPE = {"model.position": "rope", "model.position_sampling": "randomized",
                   "model.max_position": max(MULTIPLES) * TRAIN_LEN}
# positions.py's shared budget, so that the two tables compare.
SHARED = {"data.seq_len": [TRAIN_LEN], "train.steps": [800], "train.eval_every": [400], "train.checkpoint_every": [400]}


def arms():
  scheme = lambda s: {"model.position": s, "model.rope_keep_fraction": P_ROPE_KEEP} if s == "p_rope" else {  # noqa
      "model.position": s}
  return [{"model.position": s} for s in ANCHORS] + [dict(RANDOMIZED_ROPE)] + [scheme(s) for s in NEW_SCHEMES]


def get_sweep():
  return product(arms(), seeds(3), SHARED)
