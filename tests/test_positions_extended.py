"""Properties of the schemes added after the first six (FIRE, Kerple, xPos, CoPE, Sandwich, p-RoPE, randomized
positions), of the extended scheme interface (per-layer schemes, q/k pairs, logit biases) and of external schemes
named `package.module:Class`. Closed forms and invariances, not numbers copied from the code."""

import dataclasses
import functools
import json
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from research.embeddings import cope, fire, kerple, positions, registry, relative
from research.model import attention as attention_lib
from research.model.attention import attention_logits, attention_mask
from research.model.config import ModelConfig
from research.model.transformer import Transformer
from research.train import configuration, optim, steps
from tests.train_utils import cli, mark_finished, read_metrics, tiny_config

NEW_SCHEMES = ["fire", "kerple_log", "kerple_power", "xpos", "cope", "sandwich", "p_rope"]
PER_LAYER = ["fire", "kerple_log", "kerple_power", "cope"]
V, L = 37, 7


def tiny(**overrides) -> ModelConfig:
  base = dict(vocab_size=V, d_model=16, num_layers=2, num_heads=2, mlp_dim=32, max_len=16)
  return ModelConfig(**{**base, **overrides})


def init(cfg, length=L, seed=0):
  return jax.jit(Transformer(cfg).init)(jax.random.key(seed), jnp.zeros((1, length), jnp.int32))


def perturbed(variables, seed=7, scale=0.3):
  """Every positional parameter moved off its init (CoPE's table starts at zero, which would hide its effect)."""
  def move(path, leaf):
    if "position_embed" not in jax.tree_util.keystr(path):
      return leaf
    key = jax.random.fold_in(jax.random.key(seed), hash(jax.tree_util.keystr(path)) % 2**31)
    return leaf + scale * jax.random.normal(key, leaf.shape, leaf.dtype)
  return jax.tree_util.tree_map_with_path(move, variables)


def tokens(batch=2, length=L, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, V)


def position_paths(params):
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
          if "position_embed" in jax.tree_util.keystr(p)]


def kinds_for(scheme):
  return ["decoder"] if scheme == "xpos" else ["decoder", "encoder"]


# -------------------------------------------------------------------------------------------------------- FIRE


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=6), st.floats(0.01, 2.0), st.floats(1.0, 2000.0),
       st.booleans())
@settings(max_examples=40, deadline=None)
def test_fire_input_lies_in_zero_one(pos, c, threshold, causal):
  p = jnp.asarray([sorted(pos)])
  x = np.asarray(fire.fire_inputs(p, p, c, threshold, causal))[0]
  allowed = np.tril(np.ones_like(x, bool)) if causal else np.ones_like(x, bool)  # a decoder sees j <= i only
  assert np.all(x[allowed] >= 0.0) and np.all(x[allowed] <= 1.0 + 1e-6)
  assert np.all(np.diag(x) == 0.0)


def _scheme_bias(name, cfg, q_pos, k_pos=None, variables=None, seed=0):
  scheme = registry.get_scheme(name)(cfg)
  k_pos = q_pos if k_pos is None else k_pos
  variables = variables or scheme.init(jax.random.key(seed), q_pos, k_pos, method="bias")
  return np.asarray(scheme.apply(variables, q_pos, k_pos, method="bias")), variables


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_fire_bias_depends_only_on_distance_while_positions_stay_within_l(kind):
  cfg = tiny(position="fire", kind=kind)
  pos = jnp.arange(12)[None]
  a, variables = _scheme_bias("fire", cfg, pos)
  b, _ = _scheme_bias("fire", cfg, pos + 300, variables=variables)  # still <= L = 512
  assert a.shape == (1, 2, 12, 12)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for d in range(-11, 12):  # Toeplitz: constant along every diagonal (j <= i only in a decoder)
    if kind == "decoder" and d < 0:
      continue
    diagonal = np.diagonal(a, offset=-d, axis1=-2, axis2=-1)
    np.testing.assert_allclose(diagonal, diagonal[..., :1].repeat(diagonal.shape[-1], -1), rtol=1e-5, atol=1e-6)
  # Beyond L the normaliser grows with the query position: the same distance maps to a smaller input.
  c, _ = _scheme_bias("fire", cfg, pos + 5000, variables=variables)
  assert not np.allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_fire_init_length_is_the_threshold_l_init(kind):
  """model.fire_init_length is L_init in L = |L_mult| · L_init: halving it while doubling the learned multiplier is
  the same bias; with L_init = 16 the normaliser is ψ(16) for queries up to 16 and ψ(i) beyond (so the bias of a
  distance changes from position 16 on, where with the default 512 it would not), and 512 is the paper's default."""
  assert ModelConfig().fire_init_length == 512.0
  pos = jnp.arange(40)[None]
  short = tiny(position="fire", kind=kind, fire_init_length=16.0)
  a, variables = _scheme_bias("fire", short, pos)
  doubled = jax.tree_util.tree_map(lambda x: x, variables)
  doubled["params"]["length_multiplier"] = 2 * variables["params"]["length_multiplier"]
  b, _ = _scheme_bias("fire", tiny(position="fire", kind=kind, fire_init_length=8.0), pos, variables=doubled)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  default, _ = _scheme_bias("fire", tiny(position="fire", kind=kind), pos, variables=variables)
  for bias, constant in ((a, 14), (default, 37)):  # distance 3 at queries i = 3 .. 39: constant while i <= L only
    diagonal = np.diagonal(bias, offset=-3, axis1=-2, axis2=-1)[0]  # [H, 37], query i = 3 + index
    np.testing.assert_allclose(diagonal[:, :constant], diagonal[:, :1].repeat(constant, -1), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(diagonal[:, constant:] - diagonal[:, :1]) > 1e-5)  # i = 17 ..: ψ(3)/ψ(i) falls
  for bad in (0.0, -4.0, float("inf"), float("nan"), True):
    with pytest.raises(ValueError, match=r"model.fire_init_length=.* must be a finite number > 0"):
      tiny(position="rope", fire_init_length=bad)


@pytest.mark.parametrize("batch,length,block_budget", [(1, 40, 40 * fire.MLP_WIDTH * 7),  # 6 rows a block
                                                         (3, 33, 1), (2, 16, 10**9)])  # 1 row; one whole block
def test_fire_in_query_blocks_is_the_same_mlp(batch, length, block_budget):
  import flax.linen as nn
  params = init(tiny(position="fire"))["params"]["block_0"]["attention"]["position_embed"]
  params = perturbed({"position_embed": params})["position_embed"]
  pos = jnp.arange(batch * length).reshape(batch, length) % 29 * 37  # beyond L too, rows differ
  x = fire.fire_inputs(pos, pos, params["c"], 512.0, causal=True)
  direct = nn.Dense(2).apply({"params": params["mlp_out"]},
                             nn.relu(nn.Dense(fire.MLP_WIDTH).apply({"params": params["mlp_hidden"]}, x[..., None])))
  blocked = fire.mlp_in_query_blocks(x, params["mlp_hidden"], params["mlp_out"], block_budget)
  assert blocked.shape == (batch, 2, length, length)
  np.testing.assert_allclose(blocked, jnp.moveaxis(direct, -1, 1), rtol=1e-6, atol=1e-6)


def test_fire_above_the_hidden_budget_runs_in_blocks_with_the_same_loss_and_gradients_and_less_memory(monkeypatch):
  cfg = tiny(position="fire")
  variables = perturbed(init(cfg))
  x = tokens(batch=2, length=24)

  def loss(params):
    return jnp.mean(Transformer(cfg).apply({"params": params}, x) ** 2)

  def bias_temp_bytes(hidden_budget, block_budget):
    """XLA's own account of the compiled bias at 2048 × 2048 (temporaries, the output excluded)."""
    monkeypatch.setattr(fire, "HIDDEN_BUDGET", hidden_budget)
    monkeypatch.setattr(fire, "BLOCK_BUDGET", block_budget)
    own = {"params": variables["params"]["block_0"]["attention"]["position_embed"]}
    fn = jax.jit(lambda v, p: fire.FirePositions(cfg).apply(v, p, p, method="bias"))
    return fn.lower(own, jnp.arange(2048)[None]).compile().memory_analysis().temp_size_in_bytes

  direct = jax.value_and_grad(loss)(variables["params"])
  monkeypatch.setattr(fire, "HIDDEN_BUDGET", 24 * 24 * fire.MLP_WIDTH - 1)  # this batch's shared row: just over
  monkeypatch.setattr(fire, "BLOCK_BUDGET", 24 * 5 * fire.MLP_WIDTH)  # 5 query rows a block
  blocked = jax.value_and_grad(loss)(variables["params"])
  np.testing.assert_allclose(blocked[0], direct[0], rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), blocked[1], direct[1])
  hidden_bytes = 2048 * 2048 * fire.MLP_WIDTH * 4  # the [L, S, 32] float32 hidden layer: 512 MiB
  whole, in_blocks = bias_temp_bytes(10**12, 1 << 20), bias_temp_bytes(1 << 20, 1 << 20)
  # What is left in blocks is the [H, L, S] bias, its input and one 4 MiB block: a few [L, S] arrays, not 32.
  assert whole >= hidden_bytes > 4 * in_blocks and whole > 5 * in_blocks, (whole, in_blocks)


def test_fire_owns_an_mlp_c_and_a_length_multiplier_in_every_layer():
  params = init(tiny(position="fire", num_layers=3))["params"]
  for i in range(3):
    own = params[f"block_{i}"]["attention"]["position_embed"]
    assert own["mlp_hidden"]["kernel"].shape == (1, fire.MLP_WIDTH)
    assert own["mlp_out"]["kernel"].shape == (fire.MLP_WIDTH, 2)
    assert float(own["c"]) == pytest.approx(fire.INIT_C) and float(own["length_multiplier"]) == 1.0
  assert "position_embed" not in params  # the transformer's shared instance owns nothing


# ------------------------------------------------------------------------------------------------------ Kerple


@pytest.mark.parametrize("bias_fn", [kerple.kerple_log_bias, kerple.kerple_power_bias])
@given(r1=st.lists(st.floats(0.01, 5.0), min_size=3, max_size=3), r2=st.lists(st.floats(0.01, 2.0), min_size=3,
                                                                              max_size=3),
       offset=st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_kerple_is_zero_at_distance_zero_non_positive_and_non_increasing(bias_fn, r1, r2, offset):
  pos = jnp.arange(offset, offset + 40)[None]
  bias = np.asarray(bias_fn(pos, pos, jnp.asarray(r1), jnp.asarray(r2)))[0]  # [H, L, S]
  assert np.all(np.diagonal(bias, axis1=-2, axis2=-1) == 0.0)
  assert np.all(bias <= 0.0)
  by_distance = bias[:, -1, ::-1]  # the last query against keys at distance 0, 1, 2, ...
  assert np.all(np.diff(by_distance, axis=-1) <= 1e-6)
  np.testing.assert_array_equal(bias, np.swapaxes(bias, -1, -2))  # |m − n|: symmetric


def test_kerple_power_with_exponent_one_is_alibi_with_slope_r1():
  slopes = relative.alibi_slopes(4)
  pos = jnp.asarray([[3, 4, 9, 20, 21]])
  power = kerple.kerple_power_bias(pos, pos, jnp.asarray(slopes, jnp.float32), jnp.ones(4))
  np.testing.assert_allclose(power, relative.alibi_bias(pos, pos, slopes, causal=False), rtol=1e-6)


@pytest.mark.parametrize("name", ["kerple_log", "kerple_power"])
def test_kerple_clamps_its_parameters_in_value_but_not_in_gradient(name):
  cfg = tiny(position=name)
  pos = jnp.arange(6)[None]
  _, variables = _scheme_bias(name, cfg, pos)
  params = variables["params"]
  assert params["r1"].shape == params["r2"].shape == (2,) and np.all(params["r1"] >= 0) and np.all(params["r2"] >= 0)
  wild = {"params": {"r1": jnp.asarray([-3.0, 1e-5]), "r2": jnp.asarray([-1.0, 7.0])}}
  clamped = {"params": {"r1": jnp.asarray([kerple.EPS, kerple.EPS]),
                        "r2": jnp.asarray([kerple.EPS, 7.0 if name == "kerple_log" else kerple.MAX_POWER])}}
  np.testing.assert_array_equal(_scheme_bias(name, cfg, pos, variables=wild)[0],
                                _scheme_bias(name, cfg, pos, variables=clamped)[0])
  scheme = registry.get_scheme(name)(cfg)
  grads = jax.grad(lambda v: scheme.apply(v, pos, pos, method="bias").sum())(wild)["params"]
  assert all(np.all(np.isfinite(g)) and np.all(g != 0) for g in jax.tree.leaves(grads))  # straight through


@pytest.mark.parametrize("name", ["kerple_log", "kerple_power"])
def test_kerple_follows_the_references_in_place_clamp_through_adam(name):
  """The reference clamps the stored tensor before each use (`w = clamp(w); w -= adam(g)`); projecting after each
  update gives the same value at every use. Clamping in the forward pass alone does not: pushed below the bound for
  40 steps and then pulled up, that parameter stays at the bound for about as long as it was pushed."""
  scheme = registry.get_scheme(name)
  low, high = scheme.param_bounds["r2"]
  assert scheme.param_bounds["r1"] == (kerple.EPS, None) and low == kerple.EPS
  assert high == (kerple.MAX_POWER if name == "kerple_power" else None)
  gradients = [1.0] * 40 + [-1.0] * 40  # descent: pushed down, then up
  tx = optax.adam(1e-2)

  def run(step_fn):
    w, state, used = jnp.asarray([0.2]), None, []
    state = tx.init(w)
    for g in gradients:
      w, state, value = step_fn(w, state, jnp.asarray([g]))
      used.append(float(value[0]))
    return np.asarray(used)

  def reference(w, state, g):
    w = jnp.clip(w, low, high)  # the in-place clamp before the forward pass
    updates, state = tx.update(g, state, w)
    return optax.apply_updates(w, updates), state, w

  def ours(w, state, g):
    value = jnp.clip(w, low, high)  # what the forward pass uses
    updates, state = tx.update(g, state, w)
    params = registry.project_params({"block_0": {"attention": {"position_embed": {"r2": optax.apply_updates(
        w, updates)}}}}, scheme)
    return params["block_0"]["attention"]["position_embed"]["r2"], state, value

  def forward_clamp_only(w, state, g):
    updates, state = tx.update(g, state, w)
    return optax.apply_updates(w, updates), state, jnp.clip(w, low, high)

  np.testing.assert_allclose(run(ours), run(reference), rtol=1e-6)
  assert run(reference)[60] > 5 * low and run(forward_clamp_only)[60] == pytest.approx(low)


def test_the_train_step_keeps_kerples_parameters_in_their_box():
  """Through the real train step (AdamW at a rate that drives the kernels to extremes), every stored r1, r2 of every
  layer stays within its box, and some were clipped; an unconstrained leaf beside them (FIRE's c) is not."""
  for name in ("kerple_power", "kerple_log"):
    state, step, _ = _step_setup(tiny(position=name), learning_rate=2.0)
    clipped = 0
    for seed in range(6):
      state, _ = step(state, _batch(seed=seed))
      for layer in range(2):
        own = state.params[f"block_{layer}"]["attention"]["position_embed"]
        for leaf, (low, high) in ((own["r1"], registry.get_scheme(name).param_bounds["r1"]),
                                  (own["r2"], registry.get_scheme(name).param_bounds["r2"])):
          leaf = np.asarray(leaf)
          assert np.all(leaf >= low) and (high is None or np.all(leaf <= high)), (name, layer, leaf)
          clipped += int(np.sum(leaf == low) + (0 if high is None else np.sum(leaf == high)))
    assert clipped > 0  # the rate did push parameters out of their box
  params = {"position_embed": {"c": jnp.asarray(-5.0), "r1": jnp.asarray([-1.0, 3.0])}}
  assert registry.project_params(params, registry.get_scheme("fire")) is params
  projected = registry.project_params(params, registry.get_scheme("kerple_power"))
  assert float(projected["position_embed"]["c"]) == -5.0
  np.testing.assert_array_equal(projected["position_embed"]["r1"], np.float32([kerple.EPS, 3.0]))


@pytest.mark.parametrize("name,r1_range,r2_range", [("kerple_log", 2.0, 1.0), ("kerple_power", 1.0, 2.0)])
def test_kerple_init_follows_the_reference_ranges(name, r1_range, r2_range):
  cfg = tiny(position=name, num_heads=16, d_model=32)
  params = init(cfg)["params"]
  r1 = np.concatenate([params[f"block_{i}"]["attention"]["position_embed"]["r1"] for i in range(2)])
  r2 = np.concatenate([params[f"block_{i}"]["attention"]["position_embed"]["r2"] for i in range(2)])
  assert 0 <= r1.min() and r1.max() <= r1_range and r1.max() > 0.5 * r1_range
  assert 0 <= r2.min() and r2.max() <= r2_range and r2.max() > 0.5 * r2_range
  layer0, layer1 = (params[f"block_{i}"]["attention"]["position_embed"]["r1"] for i in range(2))
  assert not np.array_equal(layer0, layer1)  # each layer draws its own


@pytest.mark.parametrize("name,kind", [("kerple_log", "decoder"), ("kerple_power", "encoder")])
def test_shared_kerple_is_the_per_layer_scheme_with_one_parameter_set_for_every_layer(name, kind):
  """kerple_*_shared (the reference's one module passed to every layer) holds 2·H positional parameters at the top,
  and gives the per-layer scheme's logits when every layer of that one holds the same values."""
  shared = perturbed(init(tiny(position=f"{name}_shared", kind=kind)))["params"]
  assert position_paths(shared) == ["['position_embed']['r1']", "['position_embed']['r2']"]
  own = {key: value for key, value in shared.items() if key != "position_embed"}
  for layer in range(2):
    block = dict(own[f"block_{layer}"])
    block["attention"] = {**block["attention"], "position_embed": shared["position_embed"]}
    own[f"block_{layer}"] = block
  assert jax.tree.structure(own) == jax.tree.structure(init(tiny(position=name, kind=kind))["params"])
  ids = tokens()
  shared_logits = Transformer(tiny(position=f"{name}_shared", kind=kind)).apply({"params": shared}, ids)
  own_logits = Transformer(tiny(position=name, kind=kind)).apply({"params": own}, ids)
  np.testing.assert_allclose(shared_logits, own_logits, rtol=1e-5, atol=1e-5)
  # And the box holds for the shared leaves too (project_params finds them under the top-level position_embed).
  projected = registry.project_params({"position_embed": {"r1": jnp.asarray([-1.0, 3.0])}},
                                      registry.get_scheme(f"{name}_shared"))
  np.testing.assert_array_equal(projected["position_embed"]["r1"], np.float32([kerple.EPS, 3.0]))


@pytest.mark.parametrize("scheme,kind", [("fire", "decoder"), ("kerple_power", "encoder")])
def test_a_per_layer_bias_is_computed_once_for_rows_that_share_positions_with_the_same_values(scheme, kind):
  """registry.bias_for_shared_rows: rows with the first row's positions take the one-row branch, others their own;
  either way every row's bias (and its gradient) is that row's own bias."""
  cfg = tiny(position=scheme, kind=kind)
  module = cfg.scheme(cfg)
  shared = jnp.broadcast_to(jnp.arange(L), (3, L))
  mixed = shared.at[1].add(5)
  variables = module.init(jax.random.key(0), shared, shared, method=module.bias)
  batched = lambda v, p: module.apply(v, p, p, method=module.bias)  # noqa: E731
  row_by_row = lambda v, p: jnp.concatenate(  # noqa: E731  the per-row computation, one row at a time
      [module.apply(v, p[i:i + 1], p[i:i + 1], method=module.rows_bias) for i in range(p.shape[0])])
  for positions in (shared, mixed):
    bias = batched(variables, positions)
    np.testing.assert_allclose(bias, row_by_row(variables, positions), rtol=1e-6, atol=1e-6)
    g = jax.random.normal(jax.random.key(1), bias.shape)
    grads = [jax.jit(jax.grad(lambda v: jnp.sum(fn(v, positions) * g)))(variables) for fn in (batched, row_by_row)]
    for a, b in zip(*map(jax.tree.leaves, grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------------------- xPos


def _xpos_scores(cfg, pos, q, k):
  q_fn, k_fn = registry.get_scheme("xpos")(cfg).rotary(pos)
  return np.asarray(jnp.einsum("blhd,bshd->bhls", q_fn(q), k_fn(k)))


@given(st.integers(0, 100_000), st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_xpos_scores_are_shift_invariant_and_finite_at_large_positions(shift, seed):
  cfg = tiny(position="xpos")
  q, k = jax.random.normal(jax.random.key(seed), (2, 1, 9, 2, 8))
  pos = jnp.arange(9)[None] * 5
  base, shifted = _xpos_scores(cfg, pos, q, k), _xpos_scores(cfg, pos + shift, q, k)
  assert np.all(np.isfinite(shifted))
  np.testing.assert_allclose(base, shifted, rtol=2e-3, atol=2e-3)


def test_xpos_scores_are_the_formula_over_its_whole_span_and_longer_is_refused():
  """Up to XPOS_MAX_SPAN positions the scaled q and k are normal float32 numbers and each score is
  rot(q, n)·rot(k, m)·ζ^((n−m)/B) (float64 here); a little past it the fastest pair's scale overflows (inf / 0 /
  NaN), so training refuses such spans and evaluation reports them n/a, with the reason."""
  from research.evaluate import extrapolation
  span, d = relative.XPOS_MAX_SPAN, 8
  inv_freq, _ = relative.rope_frequencies(d)
  zeta = relative.xpos_zeta(d)
  x = jax.random.normal(jax.random.key(3), (1, span, 1, d))
  pos = jnp.arange(span)[None]
  q = np.asarray(relative.apply_xpos(x, pos, inv_freq, zeta, 1.0), np.float64)
  k = np.asarray(relative.apply_xpos(x, pos, inv_freq, zeta, -1.0), np.float64)
  rot = np.asarray(relative.apply_rope(x, pos, inv_freq), np.float64)
  z = np.concatenate([np.asarray(zeta, np.float64)] * 2)
  for n, m in ((0, 0), (span - 1, 0), (span - 1, span - 100), (span // 2, 7)):
    want = np.sum(rot[0, n, 0] * rot[0, m, 0] * z ** ((n - m) / relative.XPOS_SCALE_BASE))
    assert np.isclose(q[0, n, 0] @ k[0, m, 0], want, rtol=1e-4, atol=1e-6 * np.abs(rot[0, n, 0]).sum())
  over = int(span * 1.12)  # past ~139·B: the scales leave float32's range
  pos = jnp.arange(over)[None]
  assert not np.all(np.isfinite(relative.apply_xpos(x[:, :1].repeat(over, 1), pos, inv_freq, zeta, 1.0)))
  with pytest.raises(ValueError, match=rf"max_position={over} exceeds the {span} positions .*float32's range"):
    tiny(position="xpos", position_sampling="randomized", max_position=over)
  cfg = tiny(position="xpos")
  assert "float32's range" in extrapolation.unscorable_note(cfg, span + 1, 64)
  assert extrapolation.unscorable_note(cfg, span, 64) is None


def test_xpos_scales_queries_and_keys_oppositely_and_decays_with_distance():
  cfg = tiny(position="xpos")  # head_dim 8: 4 rotated pairs (i, i + 4)
  pos = jnp.arange(600)[None]
  q_fn, k_fn = registry.get_scheme("xpos")(cfg).rotary(pos)
  x = jnp.ones((1, 600, 1, 8))
  pair_norm = lambda y: np.hypot(np.asarray(y)[0, :, 0, :4], np.asarray(y)[0, :, 0, 4:])  # noqa: E731  [L, 4]
  q_norm, k_norm = pair_norm(q_fn(x)), pair_norm(k_fn(x))
  np.testing.assert_allclose(q_norm * k_norm, 2.0, rtol=1e-4)  # ζ^(n/B)·ζ^(−n/B) = 1, pair by pair
  assert np.all(np.diff(q_norm, axis=0) < 0) and np.all(np.diff(k_norm, axis=0) > 0)  # ζ < 1: q shrink, k grow
  # Query 599 against keys further and further back: each pair's |q||k| = 2ζ^((n−m)/B) decays with n − m, and
  # the fastest pair (smallest ζ) decays most.
  reach = q_norm[-1] * k_norm[::-1]
  assert np.all(np.diff(reach, axis=0) < 0)
  assert np.all(np.diff(reach[-1]) > 0)


def test_xpos_equals_rope_as_the_scale_base_grows():
  x = jax.random.normal(jax.random.key(2), (2, 11, 3, 12))
  pos = jnp.broadcast_to(jnp.arange(11) * 13 + 4, (2, 11))
  inv_freq, _ = relative.rope_frequencies(8)  # 8 of 12 channels rotate
  zeta = relative.xpos_zeta(8)
  rope = relative.apply_rope(x, pos, inv_freq)
  for sign in (1.0, -1.0):
    huge = relative.apply_xpos(x, pos, inv_freq, zeta, sign, scale_base=1e12)
    np.testing.assert_allclose(huge, rope, rtol=1e-5, atol=1e-6)
    assert not np.allclose(relative.apply_xpos(x, pos, inv_freq, zeta, sign), rope,
                           atol=1e-3)


def test_xpos_zeta_is_the_paper_formula():
  d, gamma = 16, 0.4
  assert np.allclose(relative.xpos_zeta(d), [(2 * i / d + gamma) / (1 + gamma) for i in range(d // 2)])


def test_xpos_in_an_encoder_is_an_error_with_the_reason():
  with pytest.raises(ValueError, match=r"xpos' needs a causal decoder .* keys after the query would be amplified"):
    tiny(position="xpos", kind="encoder")
  with pytest.raises(ValueError, match=r"model.rope_scaling='yarn' does not apply to xpos"):
    tiny(position="xpos", rope_scaling="yarn", rope_factor=2.0)


def test_xpos_with_reset_positions_needs_the_document_mask_for_training():
  """Reset positions without the mask put keys of the previous document at larger positions than the query: the
  score's ζ^((n−m)/B) then grows with the distance (a real row's positions, the real hook), as in an encoder."""
  from research.data import batches
  from research.train import configuration
  from tests.train_utils import tiny_config
  row = np.full((1, 4096), 7, np.int32)
  row[0, [0, 4000]] = batches.SEP_ID
  positions = np.asarray(batches.document_positions(row, np.arange(4096, dtype=np.int32)[None]))
  query, key = 4010, 3999  # the query at reset position 10, a key of the previous document at 3998
  assert positions[0, key] > positions[0, query]
  d = 8
  inv_freq = 1.0 / 10000 ** (np.arange(0, d, 2) / d)
  unit = np.zeros((1, 4096, 1, d), np.float32)
  unit[..., 0] = 1.0  # the fastest pair, whose ζ is the smallest
  pos = jnp.asarray(positions)
  q = relative.apply_xpos(jnp.asarray(unit), pos, inv_freq, relative.xpos_zeta(d), 1.0)
  k = relative.apply_xpos(jnp.asarray(unit), pos, inv_freq, relative.xpos_zeta(d), -1.0)
  rope_q = relative.apply_rope(jnp.asarray(unit), pos, inv_freq)
  rope_k = relative.apply_rope(jnp.asarray(unit), pos, inv_freq)
  ratio = float(jnp.sum(q[0, query] * k[0, key]) / jnp.sum(rope_q[0, query] * rope_k[0, key]))
  assert ratio > 1000  # amplified, not decayed
  flags = {"model.position": "xpos", "data.document_positions": "reset"}
  with pytest.raises(configuration.ConfigError, match=r"xpos' with data.document_positions='reset' needs "
                                                      r"data.document_mask=true"):
    configuration.validate(tiny_config(**flags))
  configuration.validate(tiny_config(**flags, **{"data.document_mask": True}))
  configuration.validate(tiny_config(**{**flags, "model.position": "rope"}))  # the others' negative angles: allowed


# -------------------------------------------------------------------------------------------------------- CoPE


@pytest.mark.parametrize("length", [1, 5, 9])
def test_cope_positions_with_all_gates_open_are_relative_positions_plus_one(length):
  # The paper's p_ij = Σ_{k=j}^{i} g_ik: with every gate 1, j = i is position 1 and j = i − 1 position 2.
  i, j = np.arange(length)[:, None], np.arange(length)[None, :]
  causal_gates = jnp.asarray(np.broadcast_to(j <= i, (1, 1, length, length)), jnp.float32)
  got = np.asarray(cope.cope_positions(causal_gates, causal=True))[0, 0]
  assert np.array_equal(got[j <= i], (i - j + 1)[j <= i]) and np.all(got[j > i] == 0)
  both = np.asarray(cope.cope_positions(jnp.ones((1, 1, length, length)), causal=False))[0, 0]
  np.testing.assert_allclose(both, np.abs(i - j) + 1, atol=1e-6)


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=10, deadline=None)
def test_cope_positions_count_the_gates_between_query_and_key(seed):
  gates = jax.random.uniform(jax.random.key(seed), (1, 1, 6, 6))
  for causal in (True, False):
    g = np.asarray(jnp.tril(gates) if causal else gates)[0, 0]
    got = np.asarray(cope.cope_positions(jnp.asarray(g)[None, None], causal))[0, 0]
    for i in range(6):
      for j in range(6 if not causal else i + 1):
        assert got[i, j] == pytest.approx(g[i, min(i, j):max(i, j) + 1].sum(), rel=1e-5)


def test_cope_interpolates_between_integer_positions():
  values = jnp.asarray([[[[0.0, 10.0, 30.0, 60.0]]]])  # q·e[p] for p = 0..3
  pos = jnp.asarray([[[[0.0, 1.0, 1.5, 2.25, 3.0]]]])
  got = np.asarray(cope.interpolate(values, pos))[0, 0, 0]
  np.testing.assert_allclose(got, [0.0, 10.0, 20.0, 37.5, 60.0], rtol=1e-6)


def test_cope_clamps_positions_to_the_table_and_keys_after_the_query_change_nothing():
  table = jax.random.normal(jax.random.key(0), (4, 8))
  q, k = jax.random.normal(jax.random.key(1), (2, 1, 10, 2, 8))
  mask = attention_mask(10, 10, causal=True)
  bias = functools.partial(cope.cope_bias, table_PxD=table, causal=True)
  a = np.asarray(bias(q, attention_logits(q, k), mask))
  k2 = k.at[:, 6:].set(jax.random.normal(jax.random.key(2), (1, 4, 2, 8)))  # keys 6.. replaced
  b = np.asarray(bias(q, attention_logits(q, k2), mask))
  assert np.array_equal(a[:, :, :6, :6], b[:, :, :6, :6])  # no query up to 5 sees keys 6..
  far = np.asarray(cope.cope_bias(q, jnp.full((1, 2, 10, 10), 50.0), mask, table_PxD=table, causal=True))
  logits_max = np.asarray(jnp.einsum("blhd,d->bhl", q, table[3]))
  np.testing.assert_allclose(far[0, :, -1, 0], logits_max[0, :, -1], rtol=1e-5)  # position 10 clamped to 3


def test_cope_owns_one_zero_table_per_layer():
  cfg = tiny(position="cope", cope_max_pos=12)
  params = init(cfg)["params"]
  for i in range(2):
    table = params[f"block_{i}"]["attention"]["position_embed"]["table"]
    assert table.shape == (12, cfg.head_dim) and np.all(table == 0)
  assert "position_embed" not in params
  with pytest.raises(ValueError, match=r"model.cope_max_pos=1 must be >= 2"):
    tiny(position="cope", cope_max_pos=1)


# ---------------------------------------------------------------------------------------------------- Sandwich


def test_sandwich_as_an_inner_product_equals_the_sum_of_cosines_of_the_distance_at_16x_lengths():
  """The kernel is computed as the inner product of sinusoidal embeddings (no [L, S, d/2] tensor); against the
  paper's Σ cos((m − n)ω) − d/2 in float64 at positions up to 4096, random and sorted as randomized sampling gives."""
  dim, heads = 64, 4
  pos = np.sort(np.random.default_rng(0).choice(4096, size=(2, 96), replace=False), axis=-1)
  bias = np.asarray(relative.sandwich_bias(jnp.asarray(pos), jnp.asarray(pos), heads, dim))
  inv_freq = 10_000.0 ** (-2.0 * np.arange(1, dim // 2 + 1) / dim)
  distance = (pos[:, :, None] - pos[:, None, :]).astype(np.float64)
  kernel = np.cos(distance[..., None] * inv_freq).sum(-1) - dim // 2
  expected = kernel[:, None] / (np.arange(1, heads + 1) * 8.0 / heads)[None, :, None, None]
  np.testing.assert_allclose(bias, expected, atol=1e-2)
  assert np.abs(expected).max() > 1.0  # a kernel far from 0, so the tolerance is small beside it


def test_sandwich_refuses_a_head_too_narrow_for_any_bias():
  """At head dimension 1 the kernel has no frequency (exactly NoPE) and at 2 only 10000^-1: a new run is refused,
  not trained as NoPE under Sandwich's name; 4 (two frequencies) is accepted. The model itself still builds at such
  a shape, so a run trained before the check evaluates."""
  from tests.train_utils import tiny_config
  for heads, width in ((4, 4), (8, 16), (4, 12)):
    overrides = {"model.position": "sandwich", "model.d_model": width, "model.num_heads": heads}
    with pytest.raises(configuration.ConfigError, match=rf"model.position='sandwich' needs a head dimension of at "
                                                         rf"least 4, and width {width} / model.num_heads={heads} is "
                                                         rf"{width // heads}: "):
      configuration.validate(tiny_config(**overrides))
    tiny(position="sandwich", d_model=width, num_heads=heads)  # the evaluator's model of an old run
  configuration.validate(tiny_config(**{"model.position": "sandwich", "model.d_model": 16, "model.num_heads": 4}))
  largest = lambda dim: float(np.abs(np.asarray(relative.sandwich_bias(  # noqa: E731 (one head, 1024 positions)
      jnp.arange(1024)[None], jnp.arange(1024)[None], 1, dim))).max())
  assert largest(2) < 1e-3 < 0.1 < largest(4)  # (head 1's divisor is 8: the kernel's 2 − 2cos at most, / 8)


def test_the_rotary_dimension_is_gpt_neox_s_and_what_every_rotary_scheme_rotates():
  """GPT-NeoX's `int(head_size * rotary_pct)` rounded down to even, as trained runs have it: exact for thirds (1/3 of
  48 is 16), one short where the float product falls below an integer (0.58 × 100 = 57.99…: 56)."""
  assert relative.rope_rotary_dim(48, 1 / 3) == 16 and relative.rope_rotary_dim(96, 2 / 3) == 64
  assert relative.rope_rotary_dim(100, 0.58) == 56 and relative.rope_rotary_dim(100, 0.5) == 50
  # What each rotary scheme rotates: the dims of q that a shift of position changes is rope_rotary_dim's count.
  for head_dim, fraction in ((100, 0.58), (48, 1 / 3)):
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, head_dim))
    for position in ("rope", "p_rope", "xpos"):
      cfg = tiny(position=position, d_model=head_dim, num_heads=1, rope_fraction=fraction, rope_keep_fraction=1.0)
      scheme = cfg.scheme(cfg)

      def rotated(p):
        fn = scheme.apply({}, jnp.array([[p]]), method=scheme.rotary)
        return np.asarray((fn[0] if isinstance(fn, tuple) else fn)(q))
      changed = int((np.abs(rotated(0) - rotated(3)) > 1e-6).any(axis=(0, 1, 2)).sum())
      assert changed == relative.rope_rotary_dim(head_dim, fraction), (position, head_dim, fraction)


@pytest.mark.parametrize("heads,dim", [(2, 8), (4, 16), (3, 6)])
def test_sandwich_is_zero_at_distance_zero_toeplitz_non_positive_and_scaled_per_head(heads, dim):
  pos = jnp.arange(20)[None]
  bias = np.asarray(relative.sandwich_bias(pos, pos, heads, dim))[0]
  assert bias.shape == (heads, 20, 20)
  np.testing.assert_allclose(np.diagonal(bias, axis1=-2, axis2=-1), 0.0, atol=1e-6)
  assert np.all(bias <= 1e-6)
  shifted = np.asarray(relative.sandwich_bias(pos + 777, pos + 777, heads, dim))[0]
  np.testing.assert_allclose(bias, shifted, atol=1e-4)  # depends on m − n only
  np.testing.assert_allclose(bias, np.swapaxes(bias, -1, -2), atol=1e-6)
  for h in range(heads):  # head h = 1..H divides the kernel by 8h/H
    np.testing.assert_allclose(bias[h] * (8 * (h + 1) / heads), bias[0] * (8 / heads), rtol=1e-5, atol=1e-6)
  # The kernel itself: Σ_{i=1}^{d/2} cos(Δ/10000^(2i/d)) − d/2 at Δ = 5, head 1 of H.
  expected = sum(math.cos(5 / 10_000 ** (2 * i / dim)) for i in range(1, dim // 2 + 1)) - dim // 2
  assert bias[0, 5, 0] == pytest.approx(expected / (8 / heads), rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------------------------------------------ p-RoPE


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_p_rope_with_p_one_is_rope_bit_for_bit(kind):
  rope_cfg = tiny(position="rope", kind=kind, rope_fraction=0.5)
  variables = init(rope_cfg)
  ids = tokens()
  rope = Transformer(rope_cfg).apply(variables, ids)
  p_rope = Transformer(dataclasses.replace(rope_cfg, position="p_rope", rope_keep_fraction=1.0)).apply(variables, ids)
  assert np.array_equal(rope, p_rope)


def test_p_rope_with_p_zero_is_nope_and_permutation_equivariant_in_an_encoder():
  cfg = tiny(position="p_rope", kind="encoder", rope_keep_fraction=0.0)
  variables = init(cfg)
  ids = tokens(batch=1)
  perm = np.random.default_rng(0).permutation(L)
  out = Transformer(cfg).apply(variables, ids)
  np.testing.assert_allclose(out[:, perm], Transformer(cfg).apply(variables, ids[:, perm]), atol=1e-5)
  assert np.array_equal(out, Transformer(dataclasses.replace(cfg, position="none")).apply(variables, ids))


def test_p_rope_keeps_the_highest_frequencies_and_leaves_the_rest_unrotated():
  inv_freq, _ = relative.rope_frequencies(16)  # 8 pairs, fastest first
  kept = relative.p_rope_frequencies(inv_freq, 0.75)
  assert np.array_equal(kept[:6], inv_freq[:6]) and np.all(kept[6:] == 0)
  x = jax.random.normal(jax.random.key(0), (1, 5, 1, 16))
  y = relative.apply_rope(x, jnp.arange(5)[None] * 100, kept)
  unrotated = np.r_[6:8, 14:16]  # pairs (6, 14) and (7, 15) in the half-split layout
  assert np.array_equal(y[..., unrotated], x[..., unrotated])
  assert not np.allclose(y[:, 1:, :, :6], x[:, 1:, :, :6], atol=1e-3)
  with pytest.raises(ValueError, match=r"model.rope_keep_fraction=1.5 must be in \[0, 1\]"):
    tiny(position="p_rope", rope_keep_fraction=1.5)


# ----------------------------------------------------------------------------------------- randomized positions


@given(st.integers(1, 40), st.integers(0, 200), st.integers(1, 4), st.integers(0, 2**31 - 1))
@settings(max_examples=12, deadline=None)  # every shape compiles anew: a dozen keeps it to a few seconds
def test_randomized_positions_are_sorted_distinct_and_in_range(length, extra, rows, seed):
  base = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length))
  got = np.asarray(positions.randomized_positions(jax.random.key(seed), base, length + extra))
  assert got.shape == (rows, length) and got.dtype == np.int32
  assert np.all(np.diff(got, axis=1) > 0) and got.min() >= 0 and got.max() < length + extra
  if extra == 0:
    assert np.array_equal(got, base)  # max_position = seq_len: a sample of all of them is arange


def test_randomized_positions_differ_between_rows_and_keys_and_repeat_for_a_key():
  base = jnp.broadcast_to(jnp.arange(16), (4, 16))
  a = np.asarray(positions.randomized_positions(jax.random.key(0), base, 1000))
  assert len({tuple(r) for r in a}) == 4
  assert np.array_equal(a, positions.randomized_positions(jax.random.key(0), base, 1000))
  assert not np.array_equal(a, positions.randomized_positions(jax.random.key(1), base, 1000))


def _step_setup(cfg, objective="clm", learning_rate=1e-2, **settings_kw):
  train_cfg = {"optimizer": "adamw", "learning_rate": learning_rate, "schedule": "constant", "warmup_steps": 0,
               "steps": 10, "weight_decay": 0.1, "grad_clip": 1.0, "b1": 0.9, "b2": 0.95,
               "embedding": {"weight_decay": True, "lr_multiplier": 1.0, "freeze": False, "lazy": False}}
  model, tx = Transformer(cfg), optim.make_optimizer(train_cfg)
  settings_ = steps.StepSettings(objective=objective, vocab_size=cfg.vocab_size, **settings_kw)
  state = steps.init_state(jax.random.key(0), model=model, optimizer=tx, seq_len=8)
  step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=tx,
                                   schedule=optim.make_schedule(train_cfg), settings=settings_))
  return state, step, settings_


def _batch(rows=4, length=8, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(6, V, (rows, length + 1)).astype(np.int32)
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": np.ones((rows, length), np.float32),
          "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy()}


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_randomized_positions_apply_in_training_only_and_leave_the_other_keys_alone(objective):
  plain = steps.StepSettings(objective=objective, vocab_size=V)
  randomized = dataclasses.replace(plain, position_sampling="randomized", max_position=500)
  batch, rng = _batch(), jax.random.key(3)
  drawn = steps.prepare_inputs(batch, rng, randomized, training=True)
  reference = steps.prepare_inputs(batch, rng, plain, training=True)
  assert np.all(np.diff(drawn[3], axis=1) > 0) and not np.array_equal(drawn[3], batch["positions"])
  for a, b in zip(drawn[:3], reference[:3]):  # MLM masking draws exactly the same with or without
    assert np.array_equal(a, b)
  assert np.array_equal(steps.prepare_inputs(batch, rng, randomized)[3], batch["positions"])  # evaluation: arange


def test_randomized_positions_reach_the_model_in_the_train_step():
  cfg = tiny(position="learned", max_len=64, position_sampling="randomized", max_position=64)
  state, step, _ = _step_setup(cfg, position_sampling="randomized", max_position=64)
  _, plain_step, _ = _step_setup(cfg)
  randomized_loss = float(step(state, _batch())[1]["loss"])
  assert np.isfinite(randomized_loss) and randomized_loss != float(plain_step(state, _batch())[1]["loss"])
  # The draw is a function of (state.rng, state.step) alone: a resumed run repeats it bit for bit, and the next
  # step draws anew.
  again = step(state, _batch())
  assert float(again[1]["loss"]) == randomized_loss
  next_state = again[0].replace(params=state.params, opt_state=state.opt_state)
  assert float(step(next_state, _batch())[1]["loss"]) != randomized_loss
  # A learned table shorter than max_position cannot represent the draws.
  with pytest.raises(ValueError, match=r"model.max_position=65 exceeds the 64 positions that "
                                       r"model.position='learned' can represent"):
    tiny(position="learned", max_len=64, position_sampling="randomized", max_position=65)


def test_randomized_position_config_fields_resolve_and_validate():
  resolved = configuration.validate(tiny_config(**{"model.position": "rope", "model.position_sampling": "randomized"}))
  assert resolved.max_position == 64  # 0 = data.seq_len
  with pytest.raises(configuration.ConfigError, match=r"model.max_position=10 is smaller than data.seq_len=64"):
    configuration.validate(tiny_config(**{"model.position_sampling": "randomized", "model.max_position": 10}))
  # Without randomized positions the field is unread (a note, `loop.unread_notes`), not a refusal blaming sampling;
  # a negative value is still its own range line.
  configuration.validate(tiny_config(**{"model.max_position": 10}))
  with pytest.raises(configuration.ConfigError, match=r"model.max_position=-1 must be an integer >= 0"):
    configuration.validate(tiny_config(**{"model.max_position": -1}))
  with pytest.raises(configuration.ConfigError, match=r"model.max_position=256 exceeds the 64 positions"):
    configuration.validate(tiny_config(**{"model.position_sampling": "randomized", "model.max_position": 256}))
  with pytest.raises(configuration.ConfigError, match=r"model.position_sampling='sorted' is not one of none, "):
    configuration.validate(tiny_config(**{"model.position_sampling": "sorted"}))


# ------------------------------------------------------------------------------------------- every scheme, model


ALL_SCHEMES = registry.names()
STEP_CASES = [(s, objective, attention) for s in ALL_SCHEMES for objective in ["clm", "mlm"]
              for attention in ["einsum", "xla"] if not (s == "xpos" and objective == "mlm")]


@pytest.mark.parametrize("scheme,objective,attention", STEP_CASES)
def test_every_scheme_trains_a_step_in_both_objectives_and_attention_paths(scheme, objective, attention):
  cfg = tiny(position=scheme, kind="decoder" if objective == "clm" else "encoder", attention=attention)
  state, step, _ = _step_setup(cfg, objective)
  new_state, metrics = step(state, _batch())
  assert np.isfinite(float(metrics["loss"]))
  before, after = (dict(jax.tree_util.tree_flatten_with_path(s.params)[0]) for s in (state, new_state))
  for path in before:
    if "position_embed" in jax.tree_util.keystr(path):  # every positional parameter gets a gradient
      assert not np.array_equal(before[path], after[path]), jax.tree_util.keystr(path)


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_decoder_output_at_t_has_zero_gradient_wrt_inputs_after_t_for_every_scheme(scheme):
  cfg = tiny(position=scheme)
  model = Transformer(cfg)
  variables = perturbed(init(cfg))
  x = jax.random.normal(jax.random.key(3), (1, L, cfg.width))
  pos = jnp.arange(L)[None]
  w = jax.random.normal(jax.random.key(4), (cfg.width,))
  grad_at = jax.jit(jax.grad(lambda x, t: model.apply(variables, x, pos, method=Transformer.encode)[0, t] @ w))
  for t in (0, 3, L - 2):
    grad = grad_at(x, t)
    assert np.all(grad[0, t + 1:] == 0.0), (scheme, t)
    assert np.any(grad[0, :t + 1] != 0.0)


XLA_CASES = [(s, kind) for s in NEW_SCHEMES for kind in kinds_for(s)]


@pytest.mark.parametrize("scheme,kind", XLA_CASES)
def test_xla_attention_matches_the_einsum_reference_for_the_new_schemes(scheme, kind):
  cfg = tiny(position=scheme, kind=kind)
  variables = perturbed(init(cfg))
  ids = tokens()
  key_mask = jnp.array([[1] * L, [1] * (L - 2) + [0] * 2])
  reference = Transformer(cfg).apply(variables, ids, key_mask_BxL=key_mask)
  fused = Transformer(dataclasses.replace(cfg, attention="xla")).apply(variables, ids, key_mask_BxL=key_mask)
  np.testing.assert_allclose(reference, fused, atol=1e-5)


@pytest.mark.parametrize("scheme", ["fire", "kerple_log", "kerple_power", "sandwich", "xpos", "p_rope"])
def test_relative_schemes_ignore_a_shift_of_all_positions(scheme):
  cfg = tiny(position=scheme)  # FIRE: shifted positions stay <= L = 512
  variables = perturbed(init(cfg))
  ids = tokens()
  pos = jnp.broadcast_to(jnp.arange(L), ids.shape)
  model = Transformer(cfg)
  np.testing.assert_allclose(model.apply(variables, ids, pos), model.apply(variables, ids, pos + 100), atol=2e-4)


def test_cope_ignores_token_positions_entirely():
  cfg = tiny(position="cope")
  variables = perturbed(init(cfg))
  ids = tokens()
  pos = jnp.broadcast_to(jnp.arange(L), ids.shape)
  model = Transformer(cfg)
  assert np.array_equal(model.apply(variables, ids, pos), model.apply(variables, ids, pos * 7 + 3))


@pytest.mark.parametrize("scheme", PER_LAYER)
def test_per_layer_schemes_live_in_every_attention_layer_under_position_embed(scheme):
  params = init(tiny(position=scheme, num_layers=3))["params"]
  paths = position_paths(params)
  assert paths and all(re.search(r"\['block_\d'\]\['attention'\]\['position_embed'\]", p) for p in paths)
  assert {re.search(r"block_(\d)", p).group(1) for p in paths} == {"0", "1", "2"}
  # The optimizer's groups see them as positional parameters (train.position.weight_decay, their own norms), and
  # its partition as ordinary (non-embedding) ones.
  groups, partition = optim.param_groups(params), optim.partition_labels(params)
  assert all(g == "position" for g in jax.tree.leaves(groups["block_0"]["attention"]["position_embed"]))
  assert all(g == "other" for g in jax.tree.leaves(partition["block_0"]["attention"]["position_embed"]))


@pytest.mark.parametrize("scheme", NEW_SCHEMES)
def test_bf16_compute_tracks_f32_for_the_new_schemes(scheme):
  cfg = tiny(position=scheme)
  variables = perturbed(init(cfg))
  f32 = Transformer(cfg).apply(variables, tokens())
  bf16 = Transformer(dataclasses.replace(cfg, dtype="bfloat16")).apply(variables, tokens())
  gap = np.abs(np.asarray(bf16, np.float32) - np.asarray(f32))
  assert np.all(np.isfinite(bf16)) and gap.max() < 0.05 * np.abs(f32).max()


# -------------------------------------------------------------------------------------------- the interface


def test_a_per_layer_scheme_with_a_qk_pair_and_a_logit_bias_plugs_in_through_the_registry_only():

  @registry.register("toy_everything")
  class Everything(registry.PositionalScheme):
    """Queries doubled, keys halved (scores unchanged), and a logit bias that cancels the logits: uniform attention."""

    per_layer = True

    def setup(self):
      self.unused = self.param("unused", jax.nn.initializers.zeros, (3,))

    def rotary(self, positions_BxL):
      return (lambda q: q * 2.0), (lambda k: k * 0.5)

    def logit_bias(self, q_positions_BxL, k_positions_BxL):
      return lambda q, scores, mask: -scores + 0.0 * self.unused.sum()

  @registry.register("toy_uniform")
  class Uniform(registry.PositionalScheme):
    """Cancels the logits from the shared instance: the same uniform attention."""

    def logit_bias(self, q_positions_BxL, k_positions_BxL):
      return lambda q, scores, mask: -scores

  try:
    ids = tokens()
    variables = init(tiny(position="none"))
    nope_params = variables["params"]
    everything_vars = init(tiny(position="toy_everything"))
    assert position_paths(everything_vars["params"]) == [
        f"['block_{i}']['attention']['position_embed']['unused']" for i in range(2)]
    merged = {"params": jax.tree.map(lambda x: x, nope_params)}
    for i in range(2):
      merged["params"][f"block_{i}"]["attention"]["position_embed"] = {"unused": jnp.zeros(3)}
    for attention in ("einsum", "xla"):
      uniform = Transformer(tiny(position="toy_uniform", attention=attention)).apply(variables, ids)
      everything = Transformer(tiny(position="toy_everything", attention=attention)).apply(merged, ids)
      np.testing.assert_allclose(everything, uniform, atol=1e-5)
      assert not np.allclose(uniform, Transformer(tiny(position="none")).apply(variables, ids), atol=1e-3)
  finally:
    registry.unregister("toy_everything")
    registry.unregister("toy_uniform")


def test_a_per_layer_scheme_cannot_also_have_an_input_hook():
  class Both(registry.PositionalScheme):
    per_layer = True
    has_input = True

  with pytest.raises(TypeError, match="cannot have an input hook"):
    registry.register("toy_both")(Both)


@pytest.mark.parametrize("bounds", [{"r": (1.0, 0.5)}, {"r": (float("nan"), None)}, {"r": 0.1}, {"r": (0.1,)},
                                    [("r", (0.0, 1.0))], {"r": (True, None)}])
def test_a_schemes_param_bounds_are_checked_at_registration(bounds):
  """A box the train step could not project onto (low >= high, NaN, not a (low, high) pair) is refused when the
  scheme is registered (or imported as package.module:Class), not at the first step."""
  scheme = type("Boxed", (registry.PositionalScheme,), {"param_bounds": bounds})
  with pytest.raises(TypeError, match=r"Boxed.param_bounds"):
    registry.register("toy_boxed")(scheme)
  assert "toy_boxed" not in registry.names()
  registry.register("toy_fine")(type("Fine", (registry.PositionalScheme,), {"param_bounds": {"r": (0, None)}}))
  registry.unregister("toy_fine")


# --------------------------------------------------------------------------------------------- external schemes


def test_an_external_scheme_is_imported_by_module_and_class():
  cfg = tiny(position="tests.position_helpers:HalvedAlibi")
  variables = init(cfg)
  ids = tokens()
  assert position_paths(variables["params"]) == []
  assert "tests.position_helpers:HalvedAlibi" not in registry.names()  # imported, never registered
  halved = Transformer(cfg).apply(variables, ids)
  assert not np.allclose(halved, Transformer(tiny(position="alibi")).apply(variables, ids), atol=1e-4)
  per_layer = init(tiny(position="tests.position_helpers:LearnedSlopePerLayer"))["params"]
  assert position_paths(per_layer) == [f"['block_{i}']['attention']['position_embed']['slope']" for i in range(2)]
  # Zero learned slopes: exactly NoPE with the same weights.
  nope = Transformer(tiny(position="none")).apply({"params": {k: v for k, v in variables["params"].items()}}, ids)
  merged = jax.tree.map(lambda x: x, variables["params"])
  for i in range(2):
    merged[f"block_{i}"]["attention"]["position_embed"] = {"slope": jnp.zeros(2)}
  np.testing.assert_allclose(
      Transformer(tiny(position="tests.position_helpers:LearnedSlopePerLayer")).apply({"params": merged}, ids), nope,
      atol=1e-6)


@pytest.mark.parametrize("value,message", [
    ("tests.position_helpers:NotAScheme", r"tests.position_helpers.NotAScheme is .*, not a PositionalScheme subclass"),
    ("tests.position_helpers:NOT_A_CLASS", r"NOT_A_CLASS is 3, not a PositionalScheme subclass"),
    ("tests.position_helpers:Missing", r"module 'tests.position_helpers' has no attribute 'Missing'"),
    ("no_such_package.schemes:Mine", r"cannot import module 'no_such_package.schemes' \(ModuleNotFoundError: "),
    ("tests.position_helpers:", r"must be a registered name or package.module:Class"),
])
def test_a_bad_external_scheme_is_a_one_line_config_error_naming_the_value(value, message):
  with pytest.raises(configuration.ConfigError, match=rf"^model.position='{re.escape(value)}'.*{message}") as e:
    configuration.validate(tiny_config(**{"model.position": value}))
  assert "\n" not in str(e.value)


@pytest.mark.slow
def test_an_external_scheme_trains_and_evaluates_through_the_command_line(tmp_path):
  workdir = tmp_path / "run"
  fast = ["--config.train.steps=4", "--config.train.warmup_steps=1", "--config.train.eval_every=4",
          "--config.train.checkpoint_every=4", "--config.train.log_every=2", "--config.train.eval_batches=1",
          "--config.data.seq_len=32", "--config.train.async_checkpoints=false"]
  value = "tests.position_helpers:LearnedSlopePerLayer"
  result = cli("--config=configs/tiny.py", f"--workdir={workdir}", f"--config.model.position={value}", *fast)
  assert result.returncode == 0, result.stderr[-3000:]
  assert np.isfinite(read_metrics(workdir)[-1]["loss"])
  evaluated = cli("experiments.evaluate", f"--workdir={workdir}", "--lengths=1,2")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert (workdir / "eval" / "extrapolation.json").exists()
  bad = cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'bad'}",
            "--config.model.position=tests.position_helpers:NotAScheme", *fast)
  assert bad.returncode == 2 and bad.stderr.startswith("error: model.position='tests.position_helpers:NotAScheme'")
  assert len(bad.stderr.strip().splitlines()) == 1


def test_an_external_scheme_is_validated_in_a_sweep_before_any_trial(tmp_path):
  from research import sweeps
  path = tmp_path / "s.py"
  path.write_text("BASE_CONFIG = 'configs/tiny.py'\nEVALUATE = None\n"
                  "def get_sweep():\n"
                  "  return [{'model.position': 'tests.position_helpers:HalvedAlibi'},"
                  " {'model.position': 'tests.position_helpers:Nope'}]\n")
  with pytest.raises(configuration.ConfigError, match=r"module 'tests.position_helpers' has no attribute 'Nope'"):
    sweeps.load_sweep(path)
  path.write_text(path.read_text().replace("Nope", "LearnedSlopePerLayer"))
  names = [t.name for t in sweeps.load_sweep(path).trials]
  assert names == ["position=tests.position_helpers_HalvedAlibi",
                   "position=tests.position_helpers_LearnedSlopePerLayer"]


def test_a_run_written_before_the_new_fields_existed_still_resumes_and_evaluates(tmp_path):
  from research.train import loop
  current = tiny_config(**{"model.position": "rope"})
  old = json.loads(json.dumps(current.to_dict()))
  for field in ("cope_max_pos", "rope_keep_fraction", "position_sampling", "max_position", "fire_init_length"):
    del old["model"][field]
  (tmp_path / "config.json").write_text(json.dumps(old))
  mark_finished(tmp_path)
  assert loop.check_workdir(current, tmp_path) == tmp_path  # the defaults are how the run behaved: resumable
  # A field the rope run reads, missing from its file, counts as its default: another value is another model. (A
  # field rope never reads, cope_max_pos, may differ: run_fields.unused_fields.)
  with pytest.raises(configuration.ConfigError, match=r"model.position_sampling: 'none' \(saved\) != 'randomized'"):
    loop.check_workdir(configuration.apply_overrides(current, {"model.position_sampling": "randomized"}), tmp_path)
  assert loop.check_workdir(configuration.apply_overrides(current, {"model.cope_max_pos": 32}), tmp_path)
  filled = configuration.with_defaults(old)
  assert filled["model"]["position"] == "rope" and filled["model"]["cope_max_pos"] == 64
  assert configuration.model_config(ml_collections.ConfigDict(filled)).max_position == 64


@pytest.mark.slow
def test_an_external_scheme_runs_as_a_sweep_trial_subprocess_and_is_evaluated(tmp_path):
  from research import sweeps
  fast = {"train.steps": 4, "train.warmup_steps": 1, "train.eval_every": 4, "train.checkpoint_every": 4,
          "train.log_every": 2, "train.eval_batches": 1, "data.seq_len": 32, "train.async_checkpoints": False}
  path = tmp_path / "s.py"
  trial = {"model.position": "tests.position_helpers:HalvedAlibi", **fast}
  path.write_text(f"BASE_CONFIG = 'configs/tiny.py'\nEVALUATE = {{'lengths': [1, 2]}}\n"
                  f"def get_sweep():\n  return [{trial!r}]\n")
  sweep = sweeps.load_sweep(path)
  status = sweeps.run_sweep(sweep, tmp_path / "out", jobs=1, log=lambda line: None)
  (record,) = status.values()
  assert record["status"] == "finished", record
  assert (tmp_path / "out" / sweep.trials[0].name / "eval" / "extrapolation.json").exists()


@pytest.mark.parametrize("position", ["fire", "kerple_log"])
def test_a_per_layer_bias_in_layer_order_is_the_same_bias_and_gradient(position, monkeypatch):
  cfg = tiny(position=position)
  variables = perturbed(init(cfg))
  x = tokens(batch=2, length=12)
  pos = jnp.arange(24).reshape(2, 12) % 9  # rows differ: the per-row path

  def loss(params):
    return jnp.mean(Transformer(cfg).apply({"params": params}, x, pos) ** 2)

  monkeypatch.setattr(attention_lib, "LAYER_ORDER_BUDGET", 10**12)  # the bias as the scheme computes it
  direct = jax.jit(jax.value_and_grad(loss))(variables["params"])
  monkeypatch.setattr(attention_lib, "LAYER_ORDER_BUDGET", 0)  # every layer's bias behind its conditional
  ordered = jax.jit(jax.value_and_grad(loss))(variables["params"])
  np.testing.assert_allclose(ordered[0], direct[0], rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), ordered[1], direct[1])


@pytest.mark.parametrize("position", ["fire", "kerple_power"])
def test_long_inputs_keep_one_layers_position_bias_live_not_one_per_layer(position, monkeypatch):
  """XLA's own account of a 4-layer forward at 1,024 tokens against 1 layer: above LAYER_ORDER_BUDGET each layer's
  [H, L, S] bias is computed in its layer, so three more layers add less than one more bias (without it they add
  about three: 96 -> 159 MB for FIRE)."""
  length, heads = 1024, 4
  bias_bytes = heads * length * length * 4  # 16 MiB
  monkeypatch.setattr(attention_lib, "LAYER_ORDER_BUDGET", attention_lib.LAYER_ORDER_BUDGET // 16)  # 1 M elements
  assert heads * length * length > attention_lib.LAYER_ORDER_BUDGET
  monkeypatch.setattr(fire, "HIDDEN_BUDGET", 1 << 20)  # FIRE's hidden layer in blocks, as at long lengths
  monkeypatch.setattr(fire, "BLOCK_BUDGET", 1 << 20)

  def temp_bytes(layers):
    cfg = ModelConfig(vocab_size=V, d_model=32, num_layers=layers, num_heads=heads, mlp_dim=64, max_len=length,
                      position=position)
    variables = init(cfg)
    fn = jax.jit(lambda v, t: Transformer(cfg).apply(v, t, jnp.arange(length)[None]))
    return fn.lower(variables, jnp.zeros((1, length), jnp.int32)).compile().memory_analysis().temp_size_in_bytes

  one, four = temp_bytes(1), temp_bytes(4)
  assert four - one < bias_bytes, (one, four, bias_bytes)
