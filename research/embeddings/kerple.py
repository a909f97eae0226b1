"""KERPLE: kernelized relative positional biases (Chi et al. 2022, "KERPLE: Kernelized Relative Positional
Embedding for Length Extrapolation", arXiv 2205.09921, eq. 4–5), two learned scalars per head and layer:

    kerple_log:    b_h(m, n) = −r1_h · log(1 + r2_h·|m − n|)
    kerple_power:  b_h(m, n) = −r1_h · |m − n|^r2_h,   0 < r2_h ≤ 2

Both are 0 at distance 0, ≤ 0 and non-increasing in distance (conditionally positive definite kernels, shifted);
power with r2 = 1 is ALiBi with a learned slope r1.

What we follow: the authors' gpt-neox code (github.com/chijames/KERPLE, `ParallelKerpleLog`, `ParallelKerplePower`
in megatron/model/positional_embeddings.py), with one difference in where the parameters live. The reference builds
one module before its layer loop and passes it to every layer (megatron/model/gpt2_model.py: `rpe=rpe_emb`), so all
layers share 2·H parameters; `kerple_log` and `kerple_power` give each attention layer its own (2·H per layer, as
FIRE and CoPE), and `kerple_log_shared` / `kerple_power_shared` are the reference's sharing (one module, computed
once per forward pass for every layer, like ALiBi and T5). The rest is the same for both: log inits r1 ~ U(0, 2)
(`bias_p`) and r2 ~ U(0, 1) (`bias_a`); power inits the multiplier r1 ~ U(0, 1) (`bias_a`) and the exponent
r2 ~ U(0, 2) (`bias_p`); every parameter clamped to ≥ 1e-2 and the exponent to ≤ 2 before use. The reference
clamps the stored tensor in place before each forward pass, so the optimizer's next update starts from the clamped
value. Here the train step projects the stored parameters onto the same box after every update (`param_bounds`,
`registry.project_params`), which gives the same value at every use (a test follows both through Adam), and the
forward pass clamps too, with a straight-through gradient, for the initial draw (U(0, ·) can fall below 1e-2) and
for parameters set by hand. Clamping in the forward pass alone is not the same: a stored value pushed past the
bound keeps drifting, and when the gradient turns it takes as many steps to come back. The reference masks the future
with tril (distance 0 above the diagonal); we use |m − n| everywhere, which the causal mask hides in a decoder
and which is the symmetric kernel in an encoder.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from research.embeddings.registry import PositionalScheme, bias_for_shared_rows, register

EPS = 1e-2
MAX_POWER = 2.0


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def straight_through_clip(x, low, high=None):
  """clip(x, low, high) exactly in value, identity in gradient (the reference's in-place clamp of `.data`)."""
  return jnp.clip(x, low, high)


@straight_through_clip.defjvp
def _straight_through_clip_jvp(low, high, primals, tangents):
  return straight_through_clip(primals[0], low, high), tangents[0]


def _distance_BxLxS(q_positions_BxL, k_positions_BxS):
  return jnp.abs(q_positions_BxL[:, :, None] - k_positions_BxS[:, None, :]).astype(jnp.float32)


def kerple_log_bias(q_positions_BxL, k_positions_BxS, r1_H, r2_H):
  """−r1_h·log(1 + r2_h·|m − n|) as [B, H, L, S]."""
  distance_Bx1xLxS = _distance_BxLxS(q_positions_BxL, k_positions_BxS)[:, None]
  return -r1_H[None, :, None, None] * jnp.log1p(r2_H[None, :, None, None] * distance_Bx1xLxS)


def kerple_power_bias(q_positions_BxL, k_positions_BxS, r1_H, r2_H):
  """−r1_h·|m − n|^r2_h as [B, H, L, S]; 0^r2 = 0, with a zero (not NaN) gradient for r2 there."""
  distance_Bx1xLxS = _distance_BxLxS(q_positions_BxL, k_positions_BxS)[:, None]
  positive = distance_Bx1xLxS > 0
  # d^r2 = exp(r2·log d): log 0 would give 0·(−inf) = NaN in the r2 gradient, so distance 0 takes another path.
  powered = jnp.where(positive, jnp.power(jnp.where(positive, distance_Bx1xLxS, 1.0), r2_H[None, :, None, None]), 0.0)
  return -r1_H[None, :, None, None] * powered


def _uniform(scale: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, 0.0, scale)


class _KerplePositions(PositionalScheme):
  """Per layer: params r1, r2 [H], initialised uniform on [0, R1_INIT) and [0, R2_INIT) as the reference code."""

  per_layer = True
  R1_INIT: ClassVar[float] = 1.0
  R2_INIT: ClassVar[float] = 1.0

  def setup(self):
    self.r1 = self.param("r1", _uniform(self.R1_INIT), (self.cfg.num_heads,), jnp.float32)
    self.r2 = self.param("r2", _uniform(self.R2_INIT), (self.cfg.num_heads,), jnp.float32)

  def bias(self, q_positions_BxL, k_positions_BxL):
    # Once for the batch when its rows share positions (the kernels' log / pow per pair are the cost).
    return bias_for_shared_rows(self, type(self).rows_bias, q_positions_BxL, k_positions_BxL)

  def clipped(self):
    """(r1, r2) clamped into `param_bounds` in value, identity in gradient."""
    return tuple(straight_through_clip(getattr(self, name), *self.param_bounds[name]) for name in ("r1", "r2"))

  def rows_bias(self, q_positions_BxL, k_positions_BxL):
    raise NotImplementedError


@register("kerple_log")
class KerpleLogPositions(_KerplePositions):
  """KERPLE logarithmic kernel, per layer: params r1, r2 [H] (see the module docstring)."""

  R1_INIT, R2_INIT = 2.0, 1.0
  param_bounds = {"r1": (EPS, None), "r2": (EPS, None)}

  def rows_bias(self, q_positions_BxL, k_positions_BxL):
    return kerple_log_bias(q_positions_BxL, k_positions_BxL, *self.clipped())


@register("kerple_power")
class KerplePowerPositions(_KerplePositions):
  """KERPLE power kernel, per layer: params r1 (multiplier), r2 (exponent ≤ 2) [H] (see the module docstring)."""

  R1_INIT, R2_INIT = 1.0, 2.0
  param_bounds = {"r1": (EPS, None), "r2": (EPS, MAX_POWER)}

  def rows_bias(self, q_positions_BxL, k_positions_BxL):
    return kerple_power_bias(q_positions_BxL, k_positions_BxL, *self.clipped())


@register("kerple_log_shared")
class KerpleLogSharedPositions(KerpleLogPositions):
  """kerple_log with one r1, r2 [H] for every layer, as the reference code shares its module."""

  per_layer = False


@register("kerple_power_shared")
class KerplePowerSharedPositions(KerplePowerPositions):
  """kerple_power with one r1, r2 [H] for every layer, as the reference code shares its module."""

  per_layer = False
