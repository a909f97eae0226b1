"""The same positional schemes under both objectives: causal LM (decoder) and masked LM (encoder, BERT masking).

Haviv et al. (2022): a causal LM learns order without positions (NoPE), a masked LM does not.

Both objectives train at the base config's learning rate (configs/clm.py: the schema's 3e-3), so the MLM arms do
not use configs/mlm.py's 2e-3 (the only field that file changes besides the objective; the masking rates are the
schema's either way).
"""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/clm.py"
EVALUATE = None


def get_sweep():
  return product({"objective": ["clm", "mlm"]},
                 {"model.position": ["none", "learned", "sinusoidal", "rope", "alibi", "t5"]}, seeds(1),
                 {"train.steps": [800]})
