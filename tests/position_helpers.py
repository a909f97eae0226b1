"""Positional schemes defined outside the library, for the tests of `model.position=package.module:Class`
(imported by path, never registered)."""

import flax.linen as nn
import jax.numpy as jnp

from research.embeddings import relative
from research.embeddings.registry import PositionalScheme


class HalvedAlibi(PositionalScheme):
  """ALiBi at half the slope: a shared, parameter-free bias."""

  def bias(self, q_positions_BxL, k_positions_BxL):
    return 0.5 * relative.alibi_bias(q_positions_BxL, k_positions_BxL, relative.alibi_slopes(self.cfg.num_heads),
                                     self.cfg.causal)


class LearnedSlopePerLayer(PositionalScheme):
  """ALiBi with one learned slope per head and layer (zero at init): a per-layer scheme with parameters."""

  per_layer = True

  def setup(self):
    self.slope = self.param("slope", nn.initializers.zeros, (self.cfg.num_heads,), jnp.float32)

  def bias(self, q_positions_BxL, k_positions_BxL):
    return relative.alibi_bias(q_positions_BxL, k_positions_BxL, self.slope, self.cfg.causal)


class NotAScheme(nn.Module):
  """A module, but not a PositionalScheme."""


NOT_A_CLASS = 3
