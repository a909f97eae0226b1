"""Schemes that act inside attention: RoPE (on queries and keys), ALiBi and T5 buckets (on scores).

The math lives in free functions (`rope_frequencies`, `apply_rope`, `alibi_slopes`, `alibi_bias`,
`t5_buckets`) so that analysis code can call them without a model; the registered modules only wire them to
the model config.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
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
      (θ_i / s)·γ_i + θ_i·(1 − γ_i): fast pairs keep θ_i (extrapolation), slow ones are interpolated. The ramp
      is linear in the pair index i between the correction dimensions, as HF's `linear_ramp_factor` and the
      authors' code (jquesnelle/yarn, `_yarn_linear_ramp_mask`) compute it, not linear in r = L0/λ_i as the
      paper writes its γ(r) (that γ is 1 − γ_i here): r_i = L0·θ_i/(2π) falls geometrically with i, so the two
      agree at the ends (up to the rounding of low and high) and differ in between. The
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


MAX_ROPE_FACTOR = 2 ** 20


def check_scaling(cfg, scaling: str) -> None:
  """A one-line ValueError for a scaling `rope_frequencies` cannot compute at any factor > 1 for the model config
  `cfg`: static NTK divides its exponent by rot_dim − 2, YaRN's correction range by ln(base). RoPE's validation
  checks the model's own scaling, research-evaluate one it applies at evaluation."""
  rot_dim, base = rope_rotary_dim(cfg.width // cfg.num_heads, cfg.rope_fraction), cfg.rope_base
  if scaling == "ntk" and rot_dim <= 2:
    raise ValueError(f"model.rope_scaling='ntk' needs a rotary dimension >= 4 (its base exponent is d/(d-2)), got "
                     f"{rot_dim} (head dimension x model.rope_fraction, rounded down to even)")
  if scaling == "yarn" and not base > 1.0:
    raise ValueError(f"model.rope_scaling='yarn' needs model.rope_base > 1 (its correction range divides by "
                     f"ln(base)), got {base:g}")


def rope_tables(positions_BxL, inv_freq_R, attention_factor: float = 1.0):
  """(cos, sin) of the angles position·θ_i, each [B, L, 1, R] and times `attention_factor`, computed once (for the
  first row alone when every row has its positions) behind a conditional (`per_row_tables`), so that every head,
  layer and the backward pass reads them from memory instead of evaluating them again (docs/benchmarks.md)."""
  return per_row_tables(lambda pos_BxL: cos_sin(pos_BxL, inv_freq_R, attention_factor), positions_BxL)


def cos_sin(positions_BxL, inv_freq_R, attention_factor: float = 1.0):
  """cos and sin of the angles position·θ_i times `attention_factor`, each [B, L, 1, R], computed where called
  (`rope_tables` and `xpos_tables` call it once per step, through `per_row_tables`)."""
  angles_BxLxR = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_R[None, None, :]
  return ((jnp.cos(angles_BxLxR) * attention_factor)[:, :, None, :],
          (jnp.sin(angles_BxLxR) * attention_factor)[:, :, None, :])


def per_row_tables(tables_fn, positions_BxL):
  """`tables_fn(positions)`, a pytree of arrays [rows, ...] each a function of its row's positions alone, computed
  for the first row only and broadcast when every row has the first row's positions (the usual case), else row by
  row, decided at run time by `jax.lax.cond`. The conditional is also a fusion boundary, which is its main purpose:
  XLA would otherwise fuse the cosines, sines and powers of these tables into each consumer's loop and evaluate them
  once per head, per use and again in the backward pass (16 fused copies in the benchmark's 4-layer step); on an
  AMD family-25 CPU (AVX2) that was ~6 % of the rope step's time and made the xpos step ~1.4x learned's
  (docs/benchmarks.md).
  (`jax.lax.optimization_barrier` does not help: XLA:CPU removes it before fusion.)"""
  rows = positions_BxL.shape[0]
  shared = jnp.all(positions_BxL == positions_BxL[:1])

  def first_row(pos_BxL):
    return jax.tree.map(lambda t: jnp.broadcast_to(t, (rows, *t.shape[1:])), tables_fn(pos_BxL[:1]))

  return jax.lax.cond(shared, first_row, tables_fn, positions_BxL)


def rotate(x_BxLxHxD, cos_BxLx1xR, sin_BxLx1xR):
  """Rotates the first 2R channels of every head by the angles whose cosines and sines `rope_tables` gives
  (half-split pairs (i, i+R), as GPT-NeoX and Hugging Face Llama do); the remaining channels pass unchanged."""
  rot = 2 * cos_BxLx1xR.shape[-1]
  x = x_BxLxHxD.astype(jnp.float32)
  x1, x2, rest = x[..., :rot // 2], x[..., rot // 2:rot], x[..., rot:]
  rotated = [x1 * cos_BxLx1xR - x2 * sin_BxLx1xR, x2 * cos_BxLx1xR + x1 * sin_BxLx1xR, rest]
  return jnp.concatenate(rotated, axis=-1).astype(x_BxLxHxD.dtype)


def apply_rope(x_BxLxHxD, positions_BxL, inv_freq_R, attention_factor: float = 1.0):
  """Rotates the first 2R channels of every head by angle position·θ_i (half-split pairs (i, i+R), as GPT-NeoX
  and Hugging Face Llama do); the remaining channels pass through unchanged."""
  return rotate(x_BxLxHxD, *rope_tables(positions_BxL, inv_freq_R, attention_factor))


def rope_rotary_dim(head_dim: int, fraction: float) -> int:
  """The dimensions of a head that rotate: GPT-NeoX's `int(head_size * rotary_pct)` (a float product, truncated),
  rounded down to even. Kept as trained runs have it: a few decimal fractions land just below an integer in float
  (0.58 × 100 = 57.99…: 56 rotate, not 58), while 1/3 × 48 is exactly 16 (docs/architecture.md, the rope row)."""
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
    if not 1.0 <= cfg.rope_factor <= MAX_ROPE_FACTOR:
      raise ValueError(f"model.rope_factor={cfg.rope_factor:g} must be in [1, {MAX_ROPE_FACTOR}] (a context up to "
                       f"2^20 times the original length; larger overflows NTK's base)")
    if cfg.rope_factor > 1.0:  # at factor 1 every scaling is plain RoPE (`rope_frequencies` returns before dividing)
      check_scaling(cfg, cfg.rope_scaling)

  @classmethod
  def unrotated_note(cls, cfg) -> str | None:
    """Why this config rotates no channel pair, or None when it rotates at least one: a RoPE scaling of it would
    change nothing but YaRN's attention factor. Pure Python, no JAX: research-evaluate asks it before anything
    loads. (`validate` refuses a model.rope_fraction that leaves no pair, so of a valid config only a subclass that
    rotates fewer pairs, p_rope, can say more than None.)"""
    head_dim = cfg.width // cfg.num_heads
    if rope_rotary_dim(head_dim, cfg.rope_fraction) >= 2:
      return None
    return f"model.rope_fraction={cfg.rope_fraction:g} leaves no pair of the {head_dim} head dimensions to rotate"

  def frequencies(self):
    """(inv_freq [rotary_dim // 2], attention_factor) for this config (see `rope_frequencies`)."""
    cfg = self.cfg
    return rope_frequencies(rope_rotary_dim(cfg.width // cfg.num_heads, cfg.rope_fraction), cfg.rope_base,
                            cfg.rope_scaling, cfg.rope_factor, cfg.rope_original_len or cfg.max_len)

  def rotary(self, positions_BxL):
    inv_freq, attention_factor = self.frequencies()
    cos_BxLx1xR, sin_BxLx1xR = rope_tables(positions_BxL, inv_freq, attention_factor)  # once for q and k
    return functools.partial(rotate, cos_BxLx1xR=cos_BxLx1xR, sin_BxLx1xR=sin_BxLx1xR)


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


# --------------------------------------------------------------------------------------------------------- p-RoPE


def p_rope_frequencies(inv_freq_R, keep_fraction: float):
  """p-RoPE (Barbero et al. 2025, "Round and Round We Go! What makes Rotary Positional Encodings useful?", arXiv
  2410.06205, section 6): keep the ⌊p·R⌋ highest of RoPE's R frequencies θ_i and set the lowest (1 − p) fraction
  to 0, so those channel pairs are never rotated (a 0 angle is the identity, exactly). As the paper's JAX
  `apply_p_rope`, which pads the timescales with ∞ after `int(p · head_dim // 2)` rotating pairs. p = 1 is RoPE,
  p = 0 is NoPE."""
  pairs = inv_freq_R.shape[0]
  return jnp.where(jnp.arange(pairs) < p_rope_kept_pairs(pairs, keep_fraction), inv_freq_R,
                   0.0).astype(inv_freq_R.dtype)


def p_rope_kept_pairs(pairs: int, keep_fraction: float) -> int:
  """How many of RoPE's `pairs` frequencies p-RoPE keeps rotating: `int(p · head_dim // 2)` as the paper's
  `apply_p_rope` computes it (head_dim = 2·pairs), 0 when p·pairs < 1. Pure Python, so a check can ask it without
  starting JAX (`PartialFrequencyRotaryPositions.unrotated_note`, which research-evaluate asks)."""
  return int(keep_fraction * 2 * pairs // 2)


@register("p_rope")
class PartialFrequencyRotaryPositions(RotaryPositions):
  """p-RoPE: RoPE (same base, fraction, scaling) whose lowest (1 − p) fraction of frequencies is removed,
  p = `model.rope_keep_fraction` (see `p_rope_frequencies`).

  Not `model.rope_fraction`: that rotates the leading fraction of each head's channels with a complete frequency
  ladder base^(−2i/d_rot) recomputed over the fewer rotated channels (GPT-NeoX's rotary_pct), so the slowest
  frequency is still 1/base. p-RoPE keeps RoPE's own ladder over all rotated channels and zeroes its slow end: the
  remaining frequencies are exactly RoPE's highest ones, and the channels of the removed ones carry no position
  at all (the paper's argument: low frequencies act as position-free "semantic" channels, but rotate slowly
  enough to drift at long range).
  """

  @classmethod
  def validate(cls, cfg) -> None:
    super().validate(cfg)
    if not 0.0 <= cfg.rope_keep_fraction <= 1.0:
      raise ValueError(f"model.rope_keep_fraction={cfg.rope_keep_fraction} must be in [0, 1] (0 = NoPE, 1 = RoPE)")

  @classmethod
  def unrotated_note(cls, cfg) -> str | None:
    """RoPE's, or the keep fraction's when it keeps none of the rotated pairs' frequencies (`p_rope_kept_pairs`:
    p = 0 is NoPE, and p·R < 1 keeps none of R)."""
    note, pairs = super().unrotated_note(cfg), rope_rotary_dim(cfg.width // cfg.num_heads, cfg.rope_fraction) // 2
    if note or p_rope_kept_pairs(pairs, cfg.rope_keep_fraction) >= 1:
      return note
    return f"model.rope_keep_fraction={cfg.rope_keep_fraction:g} keeps none of its {pairs} rotary frequencies"

  def frequencies(self):
    inv_freq, attention_factor = super().frequencies()
    return p_rope_frequencies(inv_freq, self.cfg.rope_keep_fraction), attention_factor


# ----------------------------------------------------------------------------------------------------------- xPos

XPOS_GAMMA = 0.4  # γ of ζ_i = (2i/d + γ)/(1 + γ) (the paper and x-transformers)
XPOS_SCALE_BASE = 512.0  # B (the paper and x-transformers' default)
# The longest span of positions in a row (last − first + 1) whose scales stay normal float32 numbers: with c the
# middle of the span, the fastest pair scales by ζ₀^(±(span/2)/B), ζ₀ = γ/(1 + γ) = 2/7; at 128·B that is
# e^(±80.2), inside float32's normal range (e^±87.3), and a little past ~139·B queries become inf and keys 0 (NaN
# scores). The paper's and x-transformers' centring have the same limit.
XPOS_MAX_SPAN = int(128 * XPOS_SCALE_BASE)


def xpos_zeta(rot_dim: int, gamma: float = XPOS_GAMMA):
  """ζ_i = (2i/d + γ)/(1 + γ) for pair i = 0..d/2 − 1 (Sun et al. 2022): from γ/(1 + γ) for the fastest pair up to
  nearly 1 for the slowest, so fast-rotating pairs decay most with distance; x-transformers writes it
  (2i + γd)/((1 + γ)d)."""
  return jnp.asarray((np.arange(0, rot_dim, 2) / rot_dim + gamma) / (1.0 + gamma), jnp.float32)


def xpos_tables(positions_BxL, inv_freq_R, zeta_R, scale_base: float = XPOS_SCALE_BASE):
  """(cos, sin, query scale, key scale) of `apply_xpos`, each [B, L, 1, R]: the rotation's tables and
  ζ_i^(±(n − c)/B), with c `xpos_centre` of each row; computed once for queries and keys like `rope_tables`."""

  def tables(pos_BxL):
    power_BxLx1x1 = (pos_BxL - xpos_centre(pos_BxL)).astype(jnp.float32)[..., None, None] / scale_base
    scales = [zeta_R ** (sign * power_BxLx1x1) for sign in (1.0, -1.0)]
    return (*cos_sin(pos_BxL, inv_freq_R), *scales)

  return per_row_tables(tables, positions_BxL)


def scale_rotated(x_BxLxHxD, cos_BxLx1xR, sin_BxLx1xR, scale_BxLx1xR):
  """`rotate`, then every rotated pair times its scale; channels past 2R pass unscaled and unrotated."""
  rotated_BxLxHxD = rotate(x_BxLxHxD.astype(jnp.float32), cos_BxLx1xR, sin_BxLx1xR)
  rot = 2 * scale_BxLx1xR.shape[-1]
  ones_BxLx1xP = jnp.ones(scale_BxLx1xR.shape[:3] + (x_BxLxHxD.shape[-1] - rot,), jnp.float32)
  scale_BxLx1xD = jnp.concatenate([scale_BxLx1xR, scale_BxLx1xR, ones_BxLx1xP], axis=-1)
  return (rotated_BxLxHxD * scale_BxLx1xD).astype(x_BxLxHxD.dtype)


def apply_xpos(x_BxLxHxD, positions_BxL, inv_freq_R, zeta_R, sign: float, scale_base: float = XPOS_SCALE_BASE):
  """RoPE, then every rotated pair times ζ_i^(sign·(n − c)/B) (Sun et al. 2022, "A Length-Extrapolatable
  Transformer", arXiv 2212.10554, eq. 11): queries with sign +1, keys with −1, so that a score q_n·k_m carries
  ζ^((n − m)/B), which decays with the distance n − m ≥ 0. The offset c (`xpos_centre` of each row, the same for
  queries and keys) cancels in every score; subtracting it keeps ζ^(±n/B) finite at large positions, as
  x-transformers centres the positions at seq_len // 2, up to a span of `XPOS_MAX_SPAN` positions (the scheme's
  `max_length`: longer windows are refused in training and n/a in evaluation). Channels past 2R pass unscaled and unrotated."""
  cos_BxLx1xR, sin_BxLx1xR, q_scale_BxLx1xR, k_scale_BxLx1xR = xpos_tables(positions_BxL, inv_freq_R, zeta_R,
                                                                            scale_base)
  scale_BxLx1xR = q_scale_BxLx1xR if sign > 0 else k_scale_BxLx1xR
  return scale_rotated(x_BxLxHxD, cos_BxLx1xR, sin_BxLx1xR, scale_BxLx1xR)


def xpos_centre(positions_BxL):
  """The offset c of `apply_xpos`: the middle of each row's position range (shifting every position of a row by s
  shifts c by s, so the scaled q and k are shift-invariant exactly, not just their scores)."""
  return (jnp.min(positions_BxL, axis=1, keepdims=True) + jnp.max(positions_BxL, axis=1, keepdims=True)) // 2


@register("xpos")
class XposPositions(PositionalScheme):
  """xPos: RoPE (base `model.rope_base`, fraction `model.rope_fraction`; RoPE scalings do not apply) with queries
  scaled by ζ^(n/B) and keys by ζ^(−m/B), γ = 0.4, B = 512 (see `apply_xpos`). Follows x-transformers'
  `RotaryEmbedding(use_xpos=True)` (scale = (arange(0, d, 2) + 0.4d)/1.4d, power = (t − L//2)/scale_base,
  rotate then scale) and the torchscale reference; causal only."""

  @classmethod
  def max_length(cls, cfg) -> int:
    return XPOS_MAX_SPAN

  @classmethod
  def max_length_note(cls, cfg) -> str:
    return (f"beyond a span of {XPOS_MAX_SPAN} positions its scales ζ^(±n/{XPOS_SCALE_BASE:g}) leave float32's "
            f"range")

  @classmethod
  def validate(cls, cfg) -> None:
    if not cfg.causal:
      raise ValueError("model.position='xpos' needs a causal decoder (objective=clm): it grows keys by ζ^(−m/B) and "
                       "shrinks queries by ζ^(n/B), so a score carries ζ^((n−m)/B), a decay only for keys before the "
                       "query; in an encoder, keys after the query would be amplified without bound")
    if cfg.rope_scaling != "none":
      raise ValueError(f"model.rope_scaling={cfg.rope_scaling!r} does not apply to xpos (its scale already "
                       "controls long-range scores); use none")
    RotaryPositions.validate(cfg)

  @classmethod
  def validate_documents(cls, cfg, document_positions: str, document_mask: bool) -> None:
    """Reset positions without the document mask let a query read keys of the previous document at larger positions
    than its own: ζ^((n−m)/B) then amplifies them, as keys after the query in an encoder (1.7·10^4 at a distance of
    −4,000), instead of decaying them."""
    if document_positions == "reset" and not document_mask:
      raise ValueError("model.position='xpos' with data.document_positions='reset' needs data.document_mask=true: "
                       "without it a query reads keys of the previous document at larger positions than its own, "
                       "and ζ^((n−m)/B) amplifies them without bound instead of decaying them")

  def rotary(self, positions_BxL):
    cfg = self.cfg
    rot_dim = rope_rotary_dim(cfg.width // cfg.num_heads, cfg.rope_fraction)
    inv_freq, _ = rope_frequencies(rot_dim, cfg.rope_base)
    cos_BxLx1xR, sin_BxLx1xR, *q_and_k_scales = xpos_tables(positions_BxL, inv_freq, xpos_zeta(rot_dim))
    return tuple(functools.partial(scale_rotated, cos_BxLx1xR=cos_BxLx1xR, sin_BxLx1xR=sin_BxLx1xR,
                                   scale_BxLx1xR=scale_BxLx1xR) for scale_BxLx1xR in q_and_k_scales)


# ------------------------------------------------------------------------------------------------------- Sandwich


# The narrowest head Sandwich trains with (`SandwichPositions.validate_training`): 2 frequencies, 10000^-0.5, 10000^-1.
SANDWICH_MIN_HEAD_DIM = 4


def sandwich_bias(q_positions_BxL, k_positions_BxL, num_heads: int, dim: int):
  """Sandwich (Chi et al. 2023, "Dissecting Transformer Length Extrapolation via the Lens of Receptive Field
  Analysis", arXiv 2212.10356): the inner product of two sinusoidal position embeddings minus its maximum,
  Σ_{i=1}^{d'/2} cos((m − n)/10000^(2i/d')) − d'/2, divided by 8h/H for head h = 1..H (ALiBi-like head scales).
  As NeMo's `SandwichRelativePositionEmbedding` (i from 1, d' = the head dimension, divisor h·8/H); the paper's
  d' is a hyperparameter. 0 at distance 0, < 0 elsewhere, and symmetric, so it serves encoders unchanged.

  Computed as that inner product, cos((m − n)ω) = cos(mω)cos(nω) + sin(mω)sin(nω): one [L, d'] × [d', S] product
  per row instead of a [L, S, d'/2] tensor of cosines (at 16 × 256 tokens: 1.1 GB of evaluation memory instead of
  5.3 GB, docs/benchmarks.md). Positions in float32, so the angle of position p is rounded at p · 2⁻²⁴ relative:
  < 3e-4 rad at p = 4096, a kernel error below 1e-2 on a kernel of magnitude up to d'/2."""
  half = dim // 2
  inv_freq_I = jnp.asarray(10_000.0 ** (-2.0 * np.arange(1, half + 1) / dim), jnp.float32)

  def features(positions_BxL):  # [cos(pω), sin(pω)]: the sinusoidal embedding whose inner products are the kernel
    angle_BxLxI = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_I
    return jnp.concatenate([jnp.cos(angle_BxLxI), jnp.sin(angle_BxLxI)], axis=-1)

  kernel_BxLxS = jnp.einsum("bli,bsi->bls", features(q_positions_BxL), features(k_positions_BxL),
                            precision=jax.lax.Precision.HIGHEST) - half
  head_divisor_H = jnp.asarray(np.arange(1, num_heads + 1) * 8.0 / num_heads, jnp.float32)
  return kernel_BxLxS[:, None] / head_divisor_H[None, :, None, None]


@register("sandwich")
class SandwichPositions(PositionalScheme):
  """Sandwich: a parameter-free, per-head-scaled sinusoidal-kernel bias (see `sandwich_bias`), shared by layers."""

  @classmethod
  def validate_training(cls, cfg) -> None:
    """A head of fewer than SANDWICH_MIN_HEAD_DIM dimensions is refused for training: d' = 1 has no frequency (the
    bias is 0, NoPE) and d' = 2, 3 only 10000^(-2/d'), a bias below 0.001 within 1,024 positions: the run would train
    as NoPE. A run trained at such a shape before the check still evaluates."""
    head_dim = cfg.width // cfg.num_heads
    if head_dim < SANDWICH_MIN_HEAD_DIM:
      what = "no frequency at all" if head_dim < 2 else f"one frequency, 10000^(-2/{head_dim})"
      raise ValueError(f"model.position='sandwich' needs a head dimension of at least {SANDWICH_MIN_HEAD_DIM}, and "
                       f"width {cfg.width} / model.num_heads={cfg.num_heads} is {head_dim}: its bias sums "
                       f"cos(Δ/10000^(2i/d')) over i = 1 … d'/2 (d' = the head dimension), here {what}, so the run "
                       f"would train as NoPE; use fewer heads")

  def bias(self, q_positions_BxL, k_positions_BxL):
    return sandwich_bias(q_positions_BxL, k_positions_BxL, self.cfg.num_heads, self.cfg.width // self.cfg.num_heads)
