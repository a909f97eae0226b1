"""Properties of every positional scheme (docs/architecture.md), checked against closed forms, not against the code's output."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from research.embeddings import positions, registry, relative
from research.model.config import ModelConfig
from research.model.transformer import Transformer, count_params

# ---------------------------------------------------------------------------------------------------- sinusoidal


@given(st.lists(st.integers(0, 200_000), min_size=1, max_size=5), st.sampled_from([2, 6, 7, 16]))
@settings(max_examples=25, deadline=None)
def test_sinusoidal_matches_formula_at_any_position(pos, dim):
  pe = np.asarray(positions.sinusoidal(jnp.asarray([pos]), dim, 10_000.0))[0]
  for row, p in enumerate(pos):
    for c in range(dim):
      i = c // 2
      angle = p / 10_000.0 ** (2 * i / dim)
      expected = math.sin(angle) if c % 2 == 0 else math.cos(angle)
      # float32 angles lose absolute precision as p grows: tolerance relative to the angle's magnitude.
      assert abs(pe[row, c] - expected) < 1e-5 + 1e-6 * abs(angle), (p, c)


def test_sinusoidal_wavelength_is_configurable():
  a = positions.sinusoidal(jnp.arange(5)[None], 8, 10_000.0)
  b = positions.sinusoidal(jnp.arange(5)[None], 8, 100.0)
  assert np.allclose(a[..., 0], b[..., 0])  # i = 0 has wavelength 2π whatever the maximum
  assert not np.allclose(a[..., 2:], b[..., 2:])


# ---------------------------------------------------------------------------------------------------------- RoPE


def _rope(x, pos, **kw):
  inv, factor = relative.rope_frequencies(x.shape[-1], **kw)
  return relative.apply_rope(x, pos, inv, factor)


@given(st.integers(0, 5000), st.integers(0, 5000), st.integers(-3000, 3000), st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_rope_score_depends_only_on_distance(m, n, shift, seed):
  shift = max(shift, -min(m, n))
  q, k = jax.random.normal(jax.random.key(seed), (2, 1, 1, 1, 16))
  score = lambda a, b: float(jnp.sum(_rope(q, jnp.array([[a]])) * _rope(k, jnp.array([[b]]))))  # noqa: E731
  assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=2e-3, abs=2e-3)


def test_rope_preserves_norms_and_passes_unrotated_channels():
  x = jax.random.normal(jax.random.key(1), (2, 9, 3, 12))
  pos = jnp.broadcast_to(jnp.arange(9) * 37, (2, 9))
  inv, _ = relative.rope_frequencies(8)  # rotate 8 of 12 channels
  y = relative.apply_rope(x, pos, inv)
  assert np.allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
  assert np.array_equal(y[..., 8:], x[..., 8:])
  assert np.allclose(y[:, 0], x[:, 0])  # position 0 is the identity rotation


@pytest.mark.parametrize("shared", [True, False], ids=["rows-share-positions", "rows-differ"])
def test_rope_tables_are_the_scaled_cosines_and_sines_of_each_rows_angles(shared):
  # Both branches of per_row_tables: the first row's tables broadcast, and every row's own.
  offsets = np.zeros((3, 1)) if shared else np.array([[0], [500], [2000]])
  pos = jnp.asarray(np.arange(10)[None] * 3 + offsets, jnp.int32)
  inv, _ = relative.rope_frequencies(8)
  cos, sin = relative.rope_tables(pos, inv, 0.5)
  angles = np.asarray(pos, np.float64)[..., None] * np.asarray(inv, np.float64)
  assert cos.shape == sin.shape == (3, 10, 1, 4)
  # float32 angles: absolute error up to ~2e3 · 2^-24 rad at these positions
  np.testing.assert_allclose(np.asarray(cos)[:, :, 0], 0.5 * np.cos(angles), atol=2e-4)
  np.testing.assert_allclose(np.asarray(sin)[:, :, 0], 0.5 * np.sin(angles), atol=2e-4)


@pytest.mark.parametrize("position", ["rope", "xpos"])
def test_the_compiled_gradient_evaluates_the_rotation_tables_once(position):
  # XLA fuses elementwise producers into their consumers: without the conditional in per_row_tables, every q and k
  # rotation of every layer, forward and backward, evaluated its own cosines and sines (12 copies of each at 3
  # layers), once per head. Here: one per branch of the conditional. The positions are an argument, as in the train
  # step (batch["positions"]); positions that are compile-time constants let XLA fold the conditional away.
  cfg = ModelConfig(vocab_size=11, d_model=16, num_heads=2, mlp_dim=8, num_layers=3, position=position)
  model = Transformer(cfg)
  ids = jnp.zeros((2, 6), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
  params = model.init(jax.random.key(0), ids)["params"]
  loss = lambda p, pos: jnp.sum(model.apply({"params": p}, ids, pos) ** 2)  # noqa: E731
  hlo = jax.jit(jax.grad(loss)).lower(params, positions).compile().as_text()
  assert 1 <= hlo.count(" sine(") <= 2 and 1 <= hlo.count(" cosine(") <= 2, (hlo.count(" sine("), position)


def test_rope_linear_scaling_is_position_interpolation():
  x = jax.random.normal(jax.random.key(2), (1, 6, 2, 8))
  pos = jnp.arange(0, 24, 4)[None]
  scaled = _rope(x, pos, scaling="linear", factor=4.0)
  assert np.allclose(scaled, _rope(x, pos // 4), atol=1e-5)


@pytest.mark.parametrize("s", [2.0, 3.5, 8.0])
def test_rope_linear_scaling_at_p_equals_plain_rope_at_p_over_s(s):
  # Fractional positions p/s too: apply_rope takes any real position, and interpolation is exactly that.
  x = jax.random.normal(jax.random.key(3), (2, 11, 2, 16))
  pos = jnp.broadcast_to(jnp.arange(11) * 7 + 3, (2, 11))
  scaled = _rope(x, pos, scaling="linear", factor=s)
  assert np.allclose(scaled, _rope(x, pos / s), atol=2e-5)
  assert not np.allclose(scaled, _rope(x, pos), atol=1e-2)


@pytest.mark.parametrize("d", [4, 16, 64])
@pytest.mark.parametrize("s", [2.0, 4.0, 8.0])
def test_rope_ntk_keeps_the_highest_frequency_and_interpolates_the_lowest_by_s(d, s):
  # bloc97's argument: change only the base so that the fastest pair still extrapolates (unchanged) while the
  # slowest is interpolated exactly like linear scaling; in between the ratio θ'_i/θ_i is geometric in i.
  ntk, factor = relative.rope_frequencies(d, 10_000.0, "ntk", s)
  plain, _ = relative.rope_frequencies(d, 10_000.0)
  assert factor == 1.0
  ratio = np.asarray(ntk, np.float64) / np.asarray(plain, np.float64)
  assert ratio[0] == pytest.approx(1.0, rel=1e-6)
  assert ratio[-1] == pytest.approx(1.0 / s, rel=1e-5)
  steps = np.diff(np.log(ratio))
  assert np.allclose(steps, steps[0], atol=1e-5) and np.all(steps < 0)


@pytest.mark.parametrize("s", [2.0, 4.0, 16.0])
def test_rope_ntk_equals_hugging_face_dynamic_at_s_times_the_original_length(s):
  # HF's `_compute_dynamic_ntk_parameters`, transcribed: at current length L > L0,
  # base' = base·(s_hf·L/L0 − (s_hf − 1))^(d/(d−2)). With s_hf = 1 and L = s·L0 that is the static NTK base.
  d, base, original = 32, 10_000.0, 256

  def hf_dynamic(seq_len, factor):
    seq_len = seq_len if seq_len > original else original
    scaled_base = base * ((factor * seq_len / original) - (factor - 1)) ** (d / (d - 2))
    return 1.0 / scaled_base ** (np.arange(0, d, 2) / d)

  ntk, _ = relative.rope_frequencies(d, base, "ntk", s)
  assert np.allclose(ntk, hf_dynamic(int(s * original), 1.0), rtol=1e-6)
  assert not np.allclose(ntk, hf_dynamic(int(s * original), s), rtol=1e-3)  # not with HF's factor set to s


def test_rope_yarn_keeps_high_frequencies_interpolates_low_and_sets_temperature():
  d, s = 64, 8.0
  yarn, factor = relative.rope_frequencies(d, 10_000.0, "yarn", s, original_len=4096)
  plain, _ = relative.rope_frequencies(d, 10_000.0)
  assert factor == pytest.approx(0.1 * math.log(s) + 1)
  # Pair i makes L·θ_i/2π rotations over the original length L. Pairs with more than beta_fast = 32 rotations
  # (i <= 10 here) are kept; pairs with fewer than beta_slow = 1 (i >= 23) are interpolated by s.
  rotations = 4096 * np.asarray(plain) / (2 * math.pi)
  assert np.allclose(yarn[rotations > 32], plain[rotations > 32])
  assert np.allclose(yarn[rotations < 1], plain[rotations < 1] / s)
  assert np.all(np.diff(np.asarray(yarn / plain)) <= 1e-7)  # the ramp in between is monotone


def _hf_yarn(dim, base, factor, original_len, beta_fast=32, beta_slow=1):
  """Hugging Face transformers' `_compute_yarn_parameters` (defaults: truncate, no mscale overrides), transcribed
  in float64 numpy."""

  def find_correction_dim(num_rotations):
    return (dim * math.log(original_len / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

  def find_correction_range(low_rot, high_rot):
    low = math.floor(find_correction_dim(low_rot))
    high = math.ceil(find_correction_dim(high_rot))
    return max(low, 0), min(high, dim - 1)

  def linear_ramp_factor(low, high, n):
    if low == high:
      high += 0.001
    return np.clip((np.arange(n, dtype=np.float64) - low) / (high - low), 0, 1)

  pos_freqs = base ** (np.arange(0, dim, 2) / dim)
  inv_freq_extrapolation = 1.0 / pos_freqs
  inv_freq_interpolation = 1.0 / (factor * pos_freqs)
  low, high = find_correction_range(beta_fast, beta_slow)
  extrapolation_factor = 1 - linear_ramp_factor(low, high, dim // 2)
  inv_freq = inv_freq_interpolation * (1 - extrapolation_factor) + inv_freq_extrapolation * extrapolation_factor
  return inv_freq, 0.1 * math.log(factor) + 1.0


# original_len 4: both ends of the range clamp to 0 (the low == high case); 64: the low end clamps; 2048: a ramp
# strictly inside; 2**30: the high end clamps to dim − 1 and every pair extrapolates.
@pytest.mark.parametrize("dim", [16, 64])
@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0])
@pytest.mark.parametrize("original_len", [4, 64, 2048, 2**30])
def test_rope_yarn_matches_the_hugging_face_reference(dim, factor, original_len):
  inv_freq, attention_factor = relative.rope_frequencies(dim, 10_000.0, "yarn", factor, original_len)
  expected, expected_factor = _hf_yarn(dim, 10_000.0, factor, original_len)
  assert inv_freq.shape == (dim // 2,) and inv_freq.dtype == jnp.float32
  assert np.allclose(inv_freq, expected, rtol=1e-6, atol=0)
  assert attention_factor == pytest.approx(expected_factor, rel=1e-12)


def test_rope_attention_factor_scales_the_rotated_channels_only():
  x = jax.random.normal(jax.random.key(4), (2, 9, 3, 12))
  pos = jnp.broadcast_to(jnp.arange(9) * 101, (2, 9))
  inv, factor = relative.rope_frequencies(8, 10_000.0, "yarn", 8.0, original_len=64)  # rotate 8 of 12 channels
  assert factor > 1.0
  y = relative.apply_rope(x, pos, inv, factor)
  # A rotation keeps the norm of the rotated channels, so the factor multiplies it exactly...
  assert np.allclose(jnp.linalg.norm(y[..., :8], axis=-1), factor * jnp.linalg.norm(x[..., :8], axis=-1), rtol=1e-5)
  assert np.array_equal(y[..., 8:], x[..., 8:])  # ...and never touches the pass-through channels
  # A q·k score over the rotated channels grows by factor² (YaRN's temperature: √(1/t) = factor).
  q, k = x[:, :1, :, :8], x[:, 1:2, :, :8]
  same = jnp.zeros((2, 1), jnp.int32)
  plain = jnp.sum(relative.apply_rope(q, same, inv) * relative.apply_rope(k, same, inv))
  scaled = jnp.sum(relative.apply_rope(q, same, inv, factor) * relative.apply_rope(k, same, inv, factor))
  assert float(scaled) == pytest.approx(factor ** 2 * float(plain), rel=1e-5)


def test_rope_fraction_rotates_only_the_leading_channels_of_each_head():
  cfg = ModelConfig(vocab_size=11, d_model=16, num_heads=2, mlp_dim=8, position="rope", rope_fraction=0.5)
  assert cfg.head_dim == 8
  rotary = registry.get_scheme("rope")(cfg).rotary(jnp.broadcast_to(jnp.arange(5) * 3, (2, 5)))
  x = jax.random.normal(jax.random.key(5), (2, 5, 2, 8))
  y = rotary(x)
  assert np.array_equal(y[..., 4:], x[..., 4:])  # half of the 8 head channels pass through
  assert not np.allclose(y[:, 1:, :, :4], x[:, 1:, :, :4], atol=1e-3)  # the first 4 rotate (position 0 is fixed)
  assert np.allclose(jnp.linalg.norm(y[..., :4], axis=-1), jnp.linalg.norm(x[..., :4], axis=-1), rtol=1e-5)


# --------------------------------------------------------------------------------------------------------- ALiBi


def _paper_slopes(n):
  """The ALiBi authors' reference implementation (github.com/ofirpress/attention_with_linear_biases)."""

  def get_slopes_power_of_2(n):
    start = 2 ** (-2 ** -(math.log2(n) - 3))
    return [start * start ** i for i in range(n)]

  if math.log2(n).is_integer():
    return get_slopes_power_of_2(n)
  closest = 2 ** math.floor(math.log2(n))
  return get_slopes_power_of_2(closest) + _paper_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("heads", range(1, 17))
def test_alibi_slopes_match_the_paper(heads):
  assert np.allclose(relative.alibi_slopes(heads), _paper_slopes(heads), rtol=1e-12)


def test_alibi_slopes_for_eight_heads_are_halvings():
  assert np.allclose(relative.alibi_slopes(8), [1 / 2 ** h for h in range(1, 9)])


@pytest.mark.parametrize("causal", [True, False])
def test_alibi_bias_is_linear_in_distance(causal):
  pos = jnp.array([[3, 4, 5, 6, 7, 8]])
  bias = np.asarray(relative.alibi_bias(pos, pos, relative.alibi_slopes(4), causal))
  slopes = relative.alibi_slopes(4)
  for h in range(4):
    for i in range(6):
      for j in range(6):
        if causal and j > i:
          continue  # masked by causality
        assert bias[0, h, i, j] == pytest.approx(-slopes[h] * abs(i - j))


# ------------------------------------------------------------------------------------------------------ T5 bias


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_are_exact_near_and_logarithmic_far(bidirectional):
  rel = jnp.arange(-300, 301)
  b = np.asarray(relative.t5_buckets(rel, bidirectional, 32, 128))
  half = 16 if bidirectional else 32
  exact = half // 2
  past = b[rel <= 0][::-1]  # distance 0, 1, 2, ... into the past
  assert list(past[:exact]) == list(range(exact))
  assert np.all(np.diff(past) >= 0) and past.max() == half - 1
  assert np.all(past[128:] == half - 1)  # beyond max_distance everything shares the last bucket
  future = b[rel > 0]
  if bidirectional:
    assert future.min() >= half  # the other half of the buckets
  else:
    assert np.all(future == 0)  # a causal model never looks ahead


def _t5_bucket_closed_form(relative_position, bidirectional, num_buckets, max_distance):
  """One bucket from the closed form: n = query − key; exact below max_exact = half/2, then
  max_exact + floor(ln(n/max_exact) / ln(max_distance/max_exact) · (half − max_exact)), saturating at half − 1;
  bidirectional splits num_buckets into a past half and a future half."""
  n = -relative_position
  half, offset = num_buckets, 0
  if bidirectional:
    half = num_buckets // 2
    offset = half if n < 0 else 0
    n = abs(n)
  n = max(n, 0)
  max_exact = half // 2
  if n < max_exact:
    return offset + n
  if n >= max_distance:
    return offset + half - 1
  return offset + max_exact + math.floor(math.log(n / max_exact) / math.log(max_distance / max_exact)
                                         * (half - max_exact))


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (8, 20), (64, 1000), (10, 50)])
def test_t5_buckets_match_the_closed_form(bidirectional, num_buckets, max_distance):
  rel = np.arange(-2 * max_distance - 5, 2 * max_distance + 6)
  got = np.asarray(relative.t5_buckets(jnp.asarray(rel), bidirectional, num_buckets, max_distance))
  expected = [_t5_bucket_closed_form(int(r), bidirectional, num_buckets, max_distance) for r in rel]
  assert got.tolist() == expected
  if bidirectional:  # the sign of the distance alone picks the half
    assert np.all(got[rel > 0] >= num_buckets // 2) and np.all(got[rel <= 0] < num_buckets // 2)


def test_t5_bias_is_shift_invariant_and_one_table():
  cfg = ModelConfig(vocab_size=11, d_model=8, num_heads=2, mlp_dim=8, num_layers=3, position="t5")
  scheme = registry.get_scheme("t5")(cfg)
  pos = jnp.arange(10)[None]
  variables = scheme.init(jax.random.key(0), pos, pos, method="bias")
  a = scheme.apply(variables, pos, pos, method="bias")
  b = scheme.apply(variables, pos + 1000, pos + 1000, method="bias")
  assert np.array_equal(a, b)
  params = Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  tables = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0] if "rel_bias" in jax.tree_util.keystr(p)]
  assert len(tables) == 1  # shared by the three layers


# ------------------------------------------------------------------------------------------- learned and concat


def test_learned_position_beyond_table_is_an_error_naming_both():
  cfg = ModelConfig(vocab_size=11, d_model=8, num_heads=2, mlp_dim=8, position="learned", max_len=6)
  model = Transformer(cfg)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))
  with pytest.raises(ValueError, match=r"position 7 is outside \[0, 6\): the learned table has length 6"):
    model.apply(variables, jnp.zeros((1, 8), jnp.int32))
  # Under jit the check cannot run; the lookup must then poison the output instead of clamping to row 5.
  logits = jax.jit(model.apply)(variables, jnp.zeros((1, 8), jnp.int32))
  assert np.all(np.isnan(logits[0, 6:]))


@pytest.mark.parametrize("scheme", ["learned", "sinusoidal"])
def test_concat_grows_the_width_and_the_parameter_count(scheme):
  base = dict(vocab_size=11, d_model=8, num_heads=2, mlp_dim=16, num_layers=1, position=scheme, max_len=5)
  add = ModelConfig(**base, combine="add")
  cat = ModelConfig(**base, combine="concat", pos_dim=4)
  assert add.width == 8 and cat.width == 12
  count = lambda c: count_params(Transformer(c).init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32)))  # noqa
  # Width w: qkv 3w², out w², mlp 2·16w, two block norms + final norm 3·2w; tables 11·8 (+ 5·pos for learned);
  # tied head with concat projects w → 8.
  def expected(w, pos_width, head_proj):
    learned = 5 * pos_width if scheme == "learned" else 0
    return 4 * w * w + 32 * w + 6 * w + 11 * 8 + learned + (w * 8 if head_proj else 0)
  assert count(add) == expected(8, 8, False)
  assert count(cat) == expected(12, 4, True)
