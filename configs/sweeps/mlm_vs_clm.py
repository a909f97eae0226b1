"""The same positional schemes under both objectives: causal LM (decoder) and masked LM (encoder, BERT masking).

Haviv et al. (2022): a causal LM learns order without positions (NoPE), a masked LM does not.
"""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/clm.py"
EVALUATE = None


def get_sweep():
  return product({"objective": ["clm", "mlm"]},
                 {"model.position": ["none", "learned", "sinusoidal", "rope", "alibi", "t5"]}, seeds(1),
                 {"train.steps": [800]})
