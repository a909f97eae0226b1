"""CoPE: contextual position encoding (Golovneva et al. 2024, "Contextual Position Encoding: Learning to Count
What's Important", arXiv 2405.18719, eq. 3–5):

    g_ij = σ(q_i·k_j)  (0 where the mask forbids j),   p_ij = Σ_{k=j}^{i} g_ik,
    bias_ij = q_i·e[p_ij],  e[p] interpolated between e[⌊p⌋] and e[⌈p⌉],  p clamped to p_max − 1

With every gate at 1, p_ij = i − j + 1 (a key's own token counts), i.e. ordinary relative positions offset by one.
Positions are counted by the model from content, so they ignore the token positions entirely.

What we follow: the paper's appendix code (`CoPE.forward` / `SelfAttn`), which x-transformers' `CoPE` also
transcribes: gates from the scaled, masked logits (q·kᵀ/√d + log mask), positions by a reverse cumulative sum
along the keys, `logits_int = q·e` with the unscaled query, and the interpolation
`logits_int[⌈p⌉]·w + logits_int[⌊p⌋]·(1 − w)`, w = p − ⌊p⌋; e is a zero-initialised [p_max, head_dim] table shared
by the heads of a layer, one per layer. The paper is decoder-only; an encoder counts the gates between i and j on
either side, p_ij = Σ_{k=min(i,j)}^{max(i,j)} g_ik (our extension, so that an MLM can run it).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.embeddings.registry import PositionalScheme, register


def cope_positions(gates_BxHxLxS, causal: bool):
  """p_ij = Σ_{k=j}^{i} g_ik (causal: gates after the query are 0, so the reverse cumulative sum alone is it);
  bidirectional: Σ over k from min(i, j) to max(i, j). Self-attention (L = S) for the bidirectional form."""
  reverse_BxHxLxS = jnp.flip(jnp.cumsum(jnp.flip(gates_BxHxLxS, -1), axis=-1), -1)
  if causal:
    return reverse_BxHxLxS
  forward_BxHxLxS = jnp.cumsum(gates_BxHxLxS, axis=-1)
  length = gates_BxHxLxS.shape[-1]
  diagonal_BxHxLx1 = jnp.diagonal(gates_BxHxLxS, axis1=-2, axis2=-1)[..., None]
  at_query = lambda x: jnp.diagonal(x, axis1=-2, axis2=-1)[..., None]  # noqa: E731  x[..., i, i]
  past = reverse_BxHxLxS - at_query(reverse_BxHxLxS) + diagonal_BxHxLx1  # Σ_{k=j}^{i}
  future = forward_BxHxLxS - at_query(forward_BxHxLxS) + diagonal_BxHxLx1  # Σ_{k=i}^{j}
  key_after_query = jnp.arange(length)[None, :] > jnp.arange(length)[:, None]
  return jnp.where(key_after_query, future, past)


def interpolate(values_BxHxLxP, positions_BxHxLxS):
  """values[⌈p⌉]·w + values[⌊p⌋]·(1 − w), w = p − ⌊p⌋: gradients reach p through w only."""
  floor, ceil = jnp.floor(positions_BxHxLxS), jnp.ceil(positions_BxHxLxS)
  w = positions_BxHxLxS - floor
  at = lambda p: jnp.take_along_axis(values_BxHxLxP, p.astype(jnp.int32), axis=-1)  # noqa: E731
  return at(ceil) * w + at(floor) * (1.0 - w)


def cope_bias(q_BxLxHxD, scores_BxHxLxS, mask, *, table_PxD, causal: bool):
  """CoPE's additive bias [B, H, L, S] from the queries, the scaled logits and the mask (see the module docstring)."""
  gates_BxHxLxS = jax.nn.sigmoid(scores_BxHxLxS)
  if mask is not None:
    gates_BxHxLxS = jnp.where(mask, gates_BxHxLxS, 0.0)  # σ(−inf) = 0 for a masked key, as mask.log() gives
  positions_BxHxLxS = jnp.minimum(cope_positions(gates_BxHxLxS, causal), table_PxD.shape[0] - 1)
  logits_BxHxLxP = jnp.einsum("blhd,pd->bhlp", q_BxLxHxD.astype(jnp.float32), table_PxD)
  return interpolate(logits_BxHxLxP, positions_BxHxLxS)


@register("cope")
class ContextualPositions(PositionalScheme):
  """CoPE per layer: param `table` [model.cope_max_pos, head_dim], zeros at init (the reference's init)."""

  per_layer = True

  @classmethod
  def validate(cls, cfg) -> None:
    if cfg.cope_max_pos < 2:
      raise ValueError(f"model.cope_max_pos={cfg.cope_max_pos} must be >= 2 (positions 0 .. cope_max_pos − 1)")

  def setup(self):
    head_dim = self.cfg.width // self.cfg.num_heads
    self.table = self.param("table", nn.initializers.zeros, (self.cfg.cope_max_pos, head_dim), jnp.float32)

  def logit_bias(self, q_positions_BxL, k_positions_BxL):
    return functools.partial(cope_bias, table_PxD=self.table, causal=self.cfg.causal)
