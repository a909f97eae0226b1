"""Absolute positional schemes, acting at the input: none (NoPE), learned, sinusoidal; and randomized positions
(Ruoss et al. 2023), which any scheme can train on (`randomized_positions`).

How the vector joins the token vector (`model.combine`): `add` (same width d_model) or `concat` (the positional
vector has `pos_dim` channels, default d_model, and the transformer width becomes d_model + pos_dim).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.embeddings.registry import PositionalScheme, register
from research.embeddings.token import lookup


def sinusoidal(positions_BxL, dim: int, max_wavelength: float = 10_000.0):
  """PE[p, 2i] = sin(p / w^(2i/d)), PE[p, 2i+1] = cos(p / w^(2i/d)) (Vaswani et al. 2017); any length, any p."""
  half = (dim + 1) // 2
  inv_freq_H = jnp.asarray(max_wavelength ** (-2.0 * np.arange(half) / dim), jnp.float32)  # exact in f64 first
  angles_BxLxH = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_H.reshape((1,) * positions_BxL.ndim + (-1,))
  interleaved = jnp.stack([jnp.sin(angles_BxLxH), jnp.cos(angles_BxLxH)], axis=-1)  # [..., H, 2]
  return interleaved.reshape(*positions_BxL.shape, 2 * half)[..., :dim]


@register("none")
class NoPositions(PositionalScheme):
  """NoPE: no positional information at all (a causal mask still orders a decoder's tokens)."""


@register("learned")
class LearnedPositions(PositionalScheme):
  """A trainable L×d table (L = model.max_len). A position >= L is an error naming both, never a clamp."""

  has_input = True

  @classmethod
  def max_length(cls, cfg) -> int:
    return cfg.max_len

  @classmethod
  def trained_length(cls, cfg, train_len: int) -> int | None:
    # Rows at or beyond the positions training used got no gradient: arange(train_len), or [0, max_position) with
    # randomized positions.
    trained = max(train_len, cfg.max_position if cfg.position_sampling == "randomized" else 0)
    return trained if cfg.max_len > trained else None

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.initializers.normal(stddev=self.cfg.embed_init_std), (self.cfg.max_len, self.input_width()),
        jnp.float32)

  def embed(self, positions_BxL):
    return lookup(self.embedding, positions_BxL, "position",
                  f": the learned table has length {self.cfg.max_len} (model.max_len)")


@register("sinusoidal")
class SinusoidalPositions(PositionalScheme):
  """Fixed sinusoids with max wavelength `model.sinusoidal_wavelength`; defined at every position."""

  has_input = True

  def embed(self, positions_BxL):
    return sinusoidal(positions_BxL, self.input_width(), self.cfg.sinusoidal_wavelength)


# --------------------------------------------------------------------------------------------- randomized positions


def randomized_positions(rng, positions_BxL, max_position: int):
  """Randomized positional encodings (Ruoss et al. 2023, "Randomized Positional Encodings Boost Length
  Generalization of Transformers", arXiv 2305.16843): each row draws L distinct positions from [0, max_position)
  uniformly without replacement and sorts them, so order is kept and training sees the positions of sequences up
  to max_position long. The row's positions p (0..L−1, as the batches give them) become sample[p]; with
  max_position = L the sample is 0..L−1 and positions are unchanged. Any scheme reads the result."""
  rows, length = positions_BxL.shape
  keys = jax.random.split(rng, rows)
  draw = lambda key: jnp.sort(jax.random.choice(key, max_position, (length,), replace=False))  # noqa: E731
  sample_BxL = jax.vmap(draw)(keys).astype(positions_BxL.dtype)
  return jnp.take_along_axis(sample_BxL, positions_BxL, axis=1)
