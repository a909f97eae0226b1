"""Schemes that act inside attention: RoPE (on queries and keys), ALiBi and T5 buckets (on scores).

The math lives in free functions (`rope_frequencies`, `apply_rope`, `alibi_slopes`, `alibi_bias`,
`t5_buckets`) so that analysis code can call them without a model; the registered modules only wire them to
the model config.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from research.embeddings.registry import PositionalScheme, register

# ---------------------------------------------------------------------------------------------------------- RoPE


def rope_frequencies(rot_dim: int, base: float = 10_000.0, scaling: str = "none", factor: float = 1.0,
                     original_len: int = 2048, beta_fast: float = 32.0, beta_slow: float = 1.0):
  """Inverse frequencies θ_i = base^(-2i/d) of RoPE (Su et al. 2021), d = rot_dim, and the attention factor.

  Scalings that stretch a model trained on length L0 = `original_len` by a factor s = `factor`:
    - "linear": position interpolation (Chen et al. 2023; kaiokendev): θ_i / s, i.e. position p acts as p/s.
      Hugging Face transformers' `_compute_linear_scaling_rope_parameters`.
    - "ntk": static NTK-aware base scaling (bloc97, 2023, reddit r/LocalLLaMA "NTK-Aware Scaled RoPE allows LLaMA
      models to have extended (8k+) context size without any fine-tuning"): base' = base · s^(d/(d−2)) at every
      length, so θ'_i = θ_i · s^(−2i/(d−2)): the highest frequency (i = 0) is kept and the lowest (i = d/2 − 1) is
      divided by exactly s, as linear scaling would. Hugging Face has no static form. Its "dynamic"
      (`_compute_dynamic_ntk_parameters`, bloc97 and emozilla) recomputes the base from the current length L when
      L > L0: base' = base · (s_hf·L/L0 − (s_hf − 1))^(d/(d−2)), i.e. this formula with s = s_hf·L/L0 − s_hf + 1.
      It therefore equals ours at L = s·L0 with its own factor s_hf = 1 (with s_hf = s it would be s² − s + 1).
    - "yarn": YaRN (Peng et al. 2023), as Hugging Face's `_compute_yarn_parameters` with its defaults. The
      correction range comes from `find_correction_dim(r) = d·ln(L0 / (2π·r)) / (2·ln base)`, the pair index
      whose wavelength makes r rotations over L0: low = floor(.) at r = `beta_fast`, high = ceil(.) at r =
      `beta_slow` (HF's `truncate=True`), clamped to [0, d − 1] (d, not d/2, as HF does), and high + 0.001 when
      low == high. The ramp γ_i = clip((i − low) / (high − low), 0, 1) over pair index i blends θ'_i =
      (θ_i / s)·γ_i + θ_i·(1 − γ_i): fast pairs keep θ_i (extrapolation), slow ones are interpolated. The
      attention factor (HF's "mscale", `get_mscale(s)` = 0.1·ln(s) + 1 with `attention_factor`, `mscale` and
      `mscale_all_dim` unset) multiplies cos and sin, so q·k logits of the rotated channels grow by its square.
  Returns (inv_freq of shape [rot_dim // 2], attention_factor); factor 1 (or "none") is plain RoPE.
  """
  exponents = np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim
  if scaling == "none" or factor == 1.0:
    return jnp.asarray(base ** -exponents, jnp.float32), 1.0
  if scaling == "linear":
    return jnp.asarray(base ** -exponents / factor, jnp.float32), 1.0
  if scaling == "ntk":
    return jnp.asarray((base * factor ** (rot_dim / (rot_dim - 2))) ** -exponents, jnp.float32), 1.0
  if scaling == "yarn":
    def correction_dim(rotations):
      return rot_dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), rot_dim - 1)
    high = high + 0.001 if low == high else high
    ramp = np.clip((np.arange(rot_dim // 2) - low) / (high - low), 0.0, 1.0)
    extrapolation_weight = 1.0 - ramp
    inv_freq = base ** -exponents
    blended = inv_freq / factor * (1.0 - extrapolation_weight) + inv_freq * extrapolation_weight
    return jnp.asarray(blended, jnp.float32), 0.1 * math.log(factor) + 1.0
  raise ValueError(f"rope scaling {scaling!r} is not one of none, linear, ntk, yarn")


def apply_rope(x_BxLxHxD, positions_BxL, inv_freq_R, attention_factor: float = 1.0):
  """Rotates the first 2R channels of every head by angle position·θ_i (half-split pairs (i, i+R), as GPT-NeoX
  and Hugging Face Llama do); the remaining channels pass through unchanged."""
  rot = 2 * inv_freq_R.shape[0]
  angles_BxLxR = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_R[None, None, :]
  cos_BxLx1xR = (jnp.cos(angles_BxLxR) * attention_factor)[:, :, None, :]
  sin_BxLx1xR = (jnp.sin(angles_BxLxR) * attention_factor)[:, :, None, :]
  x = x_BxLxHxD.astype(jnp.float32)
  x1, x2, rest = x[..., :rot // 2], x[..., rot // 2:rot], x[..., rot:]
  rotated = [x1 * cos_BxLx1xR - x2 * sin_BxLx1xR, x2 * cos_BxLx1xR + x1 * sin_BxLx1xR, rest]
  return jnp.concatenate(rotated, axis=-1).astype(x_BxLxHxD.dtype)


def rope_rotary_dim(head_dim: int, fraction: float) -> int:
  return int(head_dim * fraction) // 2 * 2


@register("rope")
class RotaryPositions(PositionalScheme):
  """RoPE on queries and keys; base `model.rope_base`, fraction `model.rope_fraction` of each head rotated,
  optional scaling `model.rope_scaling` by `model.rope_factor` (see `rope_frequencies`)."""

  @classmethod
  def validate(cls, cfg) -> None:
    head_dim = cfg.width // cfg.num_heads
    if head_dim % 2:
      # Name the head counts that would work, so the fix is one edit: h divides the width with an even quotient.
      allowed = [h for h in range(1, cfg.width + 1) if cfg.width % h == 0 and (cfg.width // h) % 2 == 0]
      choices = (f"allowed num_heads for width {cfg.width}: {', '.join(map(str, allowed))}" if allowed else
                 f"no head count gives an even head dimension for the odd width {cfg.width}; change d_model")
      raise ValueError(f"rope needs an even head dimension, got {head_dim} (= width {cfg.width} / "
                       f"{cfg.num_heads} heads); {choices}")
    if not 0.0 < cfg.rope_fraction <= 1.0 or rope_rotary_dim(head_dim, cfg.rope_fraction) < 2:
      raise ValueError(f"model.rope_fraction={cfg.rope_fraction} must be in (0, 1] and rotate at least 2 of the "
                       f"{head_dim} head dimensions")
    if cfg.rope_factor < 1.0:
      raise ValueError(f"model.rope_factor={cfg.rope_factor} must be >= 1")

  def rotary(self, positions_BxL):
    cfg = self.cfg
    inv_freq, attention_factor = rope_frequencies(
        rope_rotary_dim(cfg.width // cfg.num_heads, cfg.rope_fraction), cfg.rope_base, cfg.rope_scaling,
        cfg.rope_factor, cfg.rope_original_len or cfg.max_len)
    return functools.partial(apply_rope, positions_BxL=positions_BxL, inv_freq_R=inv_freq,
                             attention_factor=attention_factor)


# --------------------------------------------------------------------------------------------------------- ALiBi


def alibi_slopes(num_heads: int) -> np.ndarray:
  """Head slopes of ALiBi (Press et al. 2022): 2^(−8h/n) for h = 1..n when n is a power of two; otherwise the
  slopes for the nearest lower power of two, followed by every other slope of the set for twice that."""

  def power_of_two(n):
    return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

  if num_heads & (num_heads - 1) == 0:
    return np.asarray(power_of_two(num_heads))
  lower = 2 ** int(math.floor(math.log2(num_heads)))
  return np.asarray(power_of_two(lower) + power_of_two(2 * lower)[0::2][: num_heads - lower])


def alibi_bias(q_positions_BxL, k_positions_BxL, slopes_H, causal: bool):
  """bias[b, h, i, j] = −slope_h·(i − j) (causal; j > i is masked anyway) or −slope_h·|i − j| (bidirectional)."""
  distance_BxLxL = (q_positions_BxL[:, :, None] - k_positions_BxL[:, None, :]).astype(jnp.float32)
  if not causal:
    distance_BxLxL = jnp.abs(distance_BxLxL)
  return -jnp.asarray(slopes_H, jnp.float32)[None, :, None, None] * distance_BxLxL[:, None]


@register("alibi")
class AlibiPositions(PositionalScheme):
  """ALiBi: a fixed linear distance penalty per head; symmetric |i−j| in an encoder."""

  def bias(self, q_positions_BxL, k_positions_BxL):
    return alibi_bias(q_positions_BxL, k_positions_BxL, alibi_slopes(self.cfg.num_heads), self.cfg.causal)


# ------------------------------------------------------------------------------------------------------ T5 bias


def t5_buckets(relative_position, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
  """T5's bucketing of relative_position = key − query (Raffel et al. 2020, `_relative_position_bucket`):
  half the buckets are exact small distances, the rest logarithmic up to `max_distance`; a bidirectional model
  spends half the buckets on each direction, a causal one sees only the past."""
  n = -relative_position
  ret = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(n.dtype) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  safe_n = jnp.maximum(n, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(safe_n / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(n.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return ret + jnp.where(is_small, n, large)


@register("t5")
class T5Positions(PositionalScheme):
  """T5 relative bias: a learned scalar per (bucket, head), one table shared by all layers as in T5."""

  @classmethod
  def validate(cls, cfg) -> None:
    if cfg.t5_buckets < 4 or cfg.t5_max_distance <= cfg.t5_buckets // 2:
      raise ValueError(f"model.t5_buckets={cfg.t5_buckets} must be >= 4 and model.t5_max_distance="
                       f"{cfg.t5_max_distance} larger than half of it")

  def setup(self):
    self.rel_bias = self.param("rel_bias", nn.initializers.normal(stddev=self.cfg.embed_init_std),
                               (self.cfg.t5_buckets, self.cfg.num_heads), jnp.float32)

  def bias(self, q_positions_BxL, k_positions_BxL):
    relative_BxLxL = k_positions_BxL[:, None, :] - q_positions_BxL[:, :, None]
    buckets_BxLxL = t5_buckets(relative_BxLxL.astype(jnp.int32), not self.cfg.causal, self.cfg.t5_buckets,
                               self.cfg.t5_max_distance)
    return jnp.moveaxis(jnp.take(self.rel_bias, buckets_BxLxL, axis=0), -1, 1)  # [B, H, Lq, Lk]
