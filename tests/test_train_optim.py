"""Optimizer chain: groups, weight-decay mask, embedding freeze / lr multiplier / lazy rows, schedules."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research.train import optim

V, D = 8, 4
ABSENT = np.array([0, 4, 5, 6, 7])  # rows batch_b never looks up
PRESENT = np.array([1, 2, 3])


def make_cfg(**overrides):
  embedding = dict(weight_decay=True, lr_multiplier=1.0, freeze=False, lazy=False)
  embedding.update(overrides.pop('embedding', {}))
  base = dict(optimizer='adamw', learning_rate=0.1, schedule='constant', warmup_steps=0, steps=100,
              weight_decay=0.1, grad_clip=0.0, b1=0.9, b2=0.999, momentum=0.0, embedding=embedding)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def init_params(seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return {
      'decoder': {
          'token_embed': {'embedding': normal(V, D)},
          'block': {'dense': {'kernel': normal(D, D), 'bias': jnp.zeros((D,))},
                    'ln': {'scale': jnp.ones((D,)), 'bias': jnp.zeros((D,))}},
      },
      'lm_head': {'kernel': normal(D, V), 'bias': jnp.zeros((V,))},
  }


def loss_fn(params, tokens):
  """A tiny untied LM: absent rows of the table get exactly zero gradient."""
  p = params['decoder']
  x = p['token_embed']['embedding'][tokens]
  x = jnp.tanh(x @ p['block']['dense']['kernel'] + p['block']['dense']['bias'][None, None])
  x = x * p['block']['ln']['scale'][None, None] + p['block']['ln']['bias'][None, None]
  logits = x @ params['lm_head']['kernel'] + params['lm_head']['bias'][None, None]
  targets = jnp.roll(tokens, -1, axis=-1)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


loss_and_grad = jax.jit(jax.value_and_grad(loss_fn))  # jitted once: eager dispatch dominates test time


BATCH_ALL = jnp.arange(V)[None, :]
BATCH_B = jnp.array([[1, 2, 3, 2, 1, 3, 3, 2]])  # same shape as BATCH_ALL: one compile per optimizer


def make_step(tx):
  @jax.jit
  def step(params, opt_state, tokens):
    grads = jax.grad(loss_fn)(params, tokens)
    updates, opt_state = tx.update(grads, opt_state, params, row_mask=optim.present_rows(tokens, V))
    return optax.apply_updates(params, updates), opt_state
  return step


def table(params):
  return np.asarray(params['decoder']['token_embed']['embedding'])


def table_state_leaves(opt_state):
  """Optimizer-state leaves belonging to the table (their path ends in token_embed/embedding)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(opt_state)
  return [np.asarray(x) for path, x in flat if optim.is_embedding_path(path)]


def run(cfg, batches, params=None):
  tx = optim.make_optimizer(cfg)
  params = init_params() if params is None else params
  opt_state = tx.init(params)
  step = make_step(tx)
  history = [(params, opt_state)]
  for tokens in batches:
    params, opt_state = step(params, opt_state, tokens)
    history.append((params, opt_state))
  return history


def test_param_groups_finds_the_table_wherever_nested():
  params = init_params()
  params['position_embed'] = {'embedding': jnp.zeros((16, D))}
  groups = optim.param_groups(params)
  assert groups['decoder']['token_embed']['embedding'] == 'embedding'
  flat = jax.tree.leaves(groups)
  assert flat.count('embedding') == 1 and len(flat) == len(jax.tree.leaves(params))


def test_decay_mask_excludes_1d_bias_and_scale():
  params = init_params()
  for flag in (True, False):
    mask = optim.decay_mask(params, embedding_weight_decay=flag)
    assert mask['decoder']['token_embed']['embedding'] is flag
    assert mask['decoder']['block']['dense']['kernel'] and not mask['lm_head']['kernel']  # (its own flag: below)
    assert not mask['decoder']['block']['dense']['bias']
    assert not mask['decoder']['block']['ln']['scale'] and not mask['decoder']['block']['ln']['bias']
    assert not mask['lm_head']['bias']
    assert optim.decay_mask(params, head_weight_decay=True)['lm_head']['kernel']


def test_a_tied_and_an_untied_model_decay_the_same_matrices_and_the_head_only_with_its_flag():
  """The untied head is the token table's counterpart (an output embedding, [width, V]): by default neither is
  decayed, so a tying ablation's arms differ in tying only (train.head.weight_decay; before it existed the untied
  head was decayed with the transformer's matrices: schema.LEGACY_VALUES). Real models, their real optimizer."""
  from research.model.transformer import Transformer
  from research.train import configuration
  from tests.train_utils import tiny_config

  def decayed(**overrides):
    config = tiny_config(**{"train.warmup_steps": 0, "train.weight_decay": 0.1, **overrides})  # lr > 0 at step 0
    model = Transformer(configuration.model_config(config, 64))
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    mask = optim.decay_mask(params, head_weight_decay=config.train.head.weight_decay,
                            projection_group=config.train.head.projection_group)
    tx = optim.make_optimizer(config.train)
    zero = jax.tree.map(jnp.zeros_like, params)  # zero gradients: what moves is the decay alone
    moved = tx.update(zero, tx.init(params), params)[0]
    paths = lambda tree: {jax.tree_util.keystr(p) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]  # noqa: E731
                          if np.any(np.asarray(leaf))}
    assert paths(mask) == paths(moved)  # the optimizer decays what the mask says
    return paths(mask)

  tied, untied = decayed(), decayed(**{"model.tie_embeddings": False})
  assert tied == untied and tied and not any("token_embed" in p for p in tied)
  assert decayed(**{"model.tie_embeddings": False, "train.head.weight_decay": True}) == {
      *tied, "['lm_head']['kernel']"}
  # A factorized table (ALBERT's V×e + e→d): the tied head goes back d→e through head_projection, part of the head as
  # lm_head is of an untied one; the input's e→d projection is decayed in both arms.
  factorized = {"model.table_dim": 8}
  tied, untied = decayed(**factorized), decayed(**factorized, **{"model.tie_embeddings": False})
  projection, head = "['token_embed']['head_projection']['kernel']", "['lm_head']['kernel']"
  assert tied == untied and "['token_embed']['projection']['kernel']" in tied and projection not in tied
  assert decayed(**factorized, **{"train.head.weight_decay": True}) == {*tied, projection}
  assert decayed(**factorized, **{"model.tie_embeddings": False, "train.head.weight_decay": True}) == {*tied, head}
  # Runs before train.head.projection_group decayed it with the transformer's matrices (schema.LEGACY_VALUES).
  assert decayed(**factorized, **{"train.head.projection_group": "matrices"}) == {*tied, projection}


def test_weight_decay_applies_only_where_masked():
  params = jax.tree.map(lambda x: x + 1.0, init_params())  # nonzero biases, so decay would show
  tx = optim.make_optimizer(make_cfg(embedding={'weight_decay': False}))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  assert np.all(np.asarray(updates['decoder']['block']['dense']['kernel']) != 0)
  for leaf in (updates['decoder']['block']['ln']['scale'], updates['decoder']['block']['dense']['bias'],
               updates['lm_head']['bias'], updates['decoder']['token_embed']['embedding']):
    assert np.all(np.asarray(leaf) == 0)


def test_present_rows():
  mask = optim.present_rows(jnp.array([[3, 3, -1], [0, 9, 5]]), 6)
  np.testing.assert_array_equal(mask, [True, False, False, True, False, True])


def test_absent_rows_get_zero_gradient():
  _, grads = loss_and_grad(init_params(), BATCH_B)
  assert np.all(table(grads)[ABSENT] == 0) and np.all(table(grads)[PRESENT] != 0)


def test_dense_adamw_moves_absent_rows():
  (_, _), (p1, s1), (p2, s2) = run(make_cfg(), [BATCH_ALL, BATCH_B])
  assert np.all(table(p2)[ABSENT] != table(p1)[ABSENT])  # momentum + weight decay
  mu1, mu2 = table_state_leaves(s1)[0], table_state_leaves(s2)[0]
  assert np.all(mu2[ABSENT] != mu1[ABSENT])  # mu decays by b1 even with zero gradient


def test_dense_adamw_weight_decay_alone_moves_absent_rows():
  (p0, _), (p1, _) = run(make_cfg(), [BATCH_B])
  assert np.all(table(p1)[ABSENT] != table(p0)[ABSENT])


def test_lazy_adamw_keeps_absent_rows_and_moments_bit_identical():
  cfg = make_cfg(embedding={'lazy': True})
  (_, _), (p1, s1), (p2, s2) = run(cfg, [BATCH_ALL, BATCH_B])
  np.testing.assert_array_equal(table(p2)[ABSENT], table(p1)[ABSENT])
  moments1, moments2 = table_state_leaves(s1), table_state_leaves(s2)
  assert len(moments1) == 2  # mu and nu
  for m1, m2 in zip(moments1, moments2):
    np.testing.assert_array_equal(m2[ABSENT], m1[ABSENT])
    assert np.all(m2[PRESENT] != m1[PRESENT])
  assert np.all(table(p2)[PRESENT] != table(p1)[PRESENT])
  # The rest of the model is not lazy.
  assert np.all(np.asarray(p2['lm_head']['kernel']) != np.asarray(p1['lm_head']['kernel']))


def test_lazy_matches_dense_on_present_rows():
  (_, _), (dense, _) = run(make_cfg(), [BATCH_B])
  (_, _), (lazy, _) = run(make_cfg(embedding={'lazy': True}), [BATCH_B])
  np.testing.assert_array_equal(table(lazy)[PRESENT], table(dense)[PRESENT])


def test_lazy_needs_row_mask():
  tx = optim.make_optimizer(make_cfg(embedding={'lazy': True}))
  params = init_params()
  with pytest.raises(ValueError, match='row_mask'):
    tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)


def test_lazy_with_adafactor_is_rejected():
  with pytest.raises(ValueError, match='adafactor'):
    optim.make_optimizer(make_cfg(optimizer='adafactor', embedding={'lazy': True}))


def test_plain_sgd_does_not_move_absent_rows():
  cfg = make_cfg(optimizer='sgd', weight_decay=0.0, momentum=0.0)
  (p0, _), (p1, _) = run(cfg, [BATCH_B])
  np.testing.assert_array_equal(table(p1)[ABSENT], table(p0)[ABSENT])
  assert np.all(table(p1)[PRESENT] != table(p0)[PRESENT])


def test_freeze_keeps_table_identical_while_rest_trains():
  history = run(make_cfg(embedding={'freeze': True}), [BATCH_ALL, BATCH_B, BATCH_ALL])
  p0, s0 = history[0]
  assert table_state_leaves(s0) == []  # no optimizer state for a frozen table
  for p, _ in history[1:]:
    np.testing.assert_array_equal(table(p), table(p0))
  assert np.all(np.asarray(history[-1][0]['lm_head']['kernel']) != np.asarray(p0['lm_head']['kernel']))


@pytest.mark.parametrize('multiplier', [0.25, 3.0])
def test_lr_multiplier_scales_table_update(multiplier):
  params = init_params()
  _, grads = loss_and_grad(params, BATCH_ALL)

  def updates(mult):
    tx = optim.make_optimizer(make_cfg(optimizer='sgd', weight_decay=0.0,
                                       embedding={'lr_multiplier': mult}))
    return jax.jit(tx.update)(grads, tx.init(params), params)[0]

  base, scaled = updates(1.0), updates(multiplier)
  np.testing.assert_allclose(table(scaled), multiplier * table(base), rtol=1e-6)
  np.testing.assert_array_equal(scaled['lm_head']['kernel'], base['lm_head']['kernel'])


def test_grad_clip_bounds_global_norm():
  params = init_params()
  grads = jax.tree.map(lambda x: 100.0 * jnp.ones_like(x), params)
  tx = optim.make_optimizer(make_cfg(optimizer='sgd', learning_rate=1.0, weight_decay=0.0, grad_clip=0.5))
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_allclose(optax.global_norm(updates), 0.5, rtol=1e-5)


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_every_optimizer_trains(name):
  cfg = make_cfg(optimizer=name, momentum=0.9, grad_clip=1.0)
  history = run(cfg, [BATCH_ALL] * 3)
  losses = [float(loss_and_grad(p, BATCH_ALL)[0]) for p, _ in history]
  assert losses[-1] < losses[0], losses


@pytest.mark.parametrize('kind', ['optimizer', 'schedule'])
def test_unknown_names_raise_listing_valid_choices(kind):
  cfg = make_cfg(**{kind: 'bogus'})
  build = optim.make_optimizer if kind == 'optimizer' else optim.make_schedule
  with pytest.raises(ValueError) as err:
    build(cfg)
  valid = optim.OPTIMIZERS if kind == 'optimizer' else optim.SCHEDULES
  assert "'bogus'" in str(err.value) and all(v in str(err.value) for v in valid)


PEAK, WARMUP, STEPS = 1.0, 10, 110


def schedule(name, **kw):
  cfg = make_cfg(schedule=name, learning_rate=PEAK, warmup_steps=WARMUP, steps=STEPS, **kw)
  return optim.make_schedule(cfg)


@pytest.mark.parametrize('name', optim.SCHEDULES)
def test_warmup_reaches_peak_at_warmup_steps(name):
  s = schedule(name)
  values = [float(s(i)) for i in range(WARMUP + 1)]
  assert values[0] == 0.0 and np.all(np.diff(values) > 0)
  np.testing.assert_allclose(values[WARMUP // 2], PEAK / 2, rtol=1e-6)
  np.testing.assert_allclose(values[WARMUP], PEAK, rtol=1e-6)


def test_constant_stays_at_peak():
  np.testing.assert_allclose([float(schedule('constant')(i)) for i in (WARMUP, STEPS, 10 * STEPS)], PEAK)


@pytest.mark.parametrize('name', ['cosine', 'linear'])
def test_decay_ends_at_floor(name):
  s = schedule(name, min_lr_ratio=0.1)
  np.testing.assert_allclose(float(s(STEPS)), 0.1 * PEAK, rtol=1e-5)
  np.testing.assert_allclose(float(s(STEPS + 50)), 0.1 * PEAK, rtol=1e-5)
  # Both pass through the midpoint between peak and floor halfway through the decay.
  np.testing.assert_allclose(float(s((WARMUP + STEPS) // 2)), 0.55 * PEAK, rtol=1e-5)
  if name == 'cosine':  # flat start, unlike linear
    assert float(s(WARMUP + 1)) > PEAK - 0.01 * (PEAK - 0.1)


def test_rsqrt_decays_as_inverse_sqrt():
  s = schedule('rsqrt')
  for factor in (4, 16, 100):
    np.testing.assert_allclose(float(s(factor * WARMUP)), PEAK / np.sqrt(factor), rtol=1e-5)


@pytest.mark.parametrize('name', ['adam', 'sgd', 'lion'])
def test_lazy_keeps_absent_rows_and_their_state_for_every_row_wise_optimizer(name):
  # Dense, momentum (sgd with momentum 0.9, lion) and decay would all move an absent row; lazy must not.
  cfg = make_cfg(optimizer=name, momentum=0.9, embedding={'lazy': True, 'weight_decay': True})
  (_, _), (p1, s1), (p2, s2) = run(cfg, [BATCH_ALL, BATCH_B])
  np.testing.assert_array_equal(table(p2)[ABSENT], table(p1)[ABSENT])
  leaves1, leaves2 = table_state_leaves(s1), table_state_leaves(s2)
  assert leaves1, 'momentum state expected'
  for m1, m2 in zip(leaves1, leaves2):
    np.testing.assert_array_equal(m2[ABSENT], m1[ABSENT])
  assert np.all(table(p2)[PRESENT] != table(p1)[PRESENT])
  dense = make_cfg(optimizer=name, momentum=0.9, embedding={'lazy': False, 'weight_decay': True})
  (_, _), (d1, _), (d2, _) = run(dense, [BATCH_ALL, BATCH_B])
  assert np.any(table(d2)[ABSENT] != table(d1)[ABSENT])  # the dense optimizer does move them


def test_adafactor_decay_is_scaled_by_the_learning_rate_and_without_decay_it_is_optaxs_own():
  """optax's weight_decay_rate subtracts wd·p whatever the rate (10 % of every matrix per step at wd 0.1, during
  warmup too); ours is Hugging Face's / fairseq's: lr · param_scale · wd · p, so it is 0 at lr 0 and linear in lr."""
  params = init_params()
  zero = jax.tree.map(jnp.zeros_like, params)

  def update(lr, wd, grads=zero):
    tx = optim.make_optimizer(make_cfg(optimizer='adafactor', learning_rate=lr, weight_decay=wd))
    return tx.update(grads, tx.init(params), params)[0]

  kernel = lambda u: np.asarray(u['decoder']['block']['dense']['kernel'])  # noqa: E731 (a decayed matrix)
  assert not np.any(kernel(update(0.0, 0.1)))  # lr 0 (a warmup's first step): no update at all
  small, large = kernel(update(1e-3, 0.1)), kernel(update(2e-3, 0.1))
  np.testing.assert_allclose(large, 2 * small, rtol=1e-6)
  p = np.asarray(params['decoder']['block']['dense']['kernel'])
  scale = max(np.sqrt(np.mean(p ** 2)), 1e-3)  # optax.scale_by_param_block_rms
  np.testing.assert_allclose(small, -1e-3 * scale * 0.1 * p, rtol=1e-5)
  grads = jax.grad(loss_fn)(params, BATCH_B)
  ours, theirs = update(1e-2, 0.0, grads), optax.adafactor(1e-2).update(grads, optax.adafactor(1e-2).init(params),
                                                                         params)[0]
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(a, b)


def test_a_frozen_table_is_left_out_of_the_clipping_norm():
  """As in PyTorch (a frozen parameter has no .grad): the other parameters' step is clipped by their own norm, the
  same with the table frozen as with no table at all."""
  params = init_params()
  grads = jax.grad(loss_fn)(params, BATCH_B)
  clip = 1e-3
  tx = optim.make_optimizer(make_cfg(optimizer='sgd', learning_rate=1.0, weight_decay=0.0, grad_clip=clip,
                                     embedding={'freeze': True}))
  updates = tx.update(grads, tx.init(params), params)[0]
  assert not np.any(np.asarray(updates['decoder']['token_embed']['embedding']))
  others = [g for path, g in jax.tree_util.tree_flatten_with_path(grads)[0] if 'token_embed' not in str(path)]
  norm = float(np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in others)))
  np.testing.assert_allclose(updates['lm_head']['kernel'], -grads['lm_head']['kernel'] * clip / norm, rtol=1e-5)


def test_the_api_defaults_decay_neither_the_table_nor_positions_as_the_schema_and_docs_say():
  params = init_params()
  params['position_embed'] = {'embedding': jnp.ones((4, 4))}
  mask = optim.decay_mask(params)
  assert not mask['decoder']['token_embed']['embedding'] and not mask['position_embed']['embedding']
  assert mask['decoder']['block']['dense']['kernel']
  cfg = make_cfg(optimizer='adamw', learning_rate=0.1)
  del cfg.embedding['weight_decay']
  tx = optim.make_optimizer(cfg)
  zero = jax.tree.map(jnp.zeros_like, params)  # zero gradients: what moves is the decay alone
  updates = tx.update(zero, tx.init(params), params)[0]
  assert not np.any(np.asarray(updates['decoder']['token_embed']['embedding']))
  assert np.all(np.asarray(updates['decoder']['block']['dense']['kernel']) != 0)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_adam_and_sgd_decay_is_coupled_l2_entering_the_gradient_before_the_moments(name):
  """Classic L2 (docs/training.md): the decay wd·p is added to the gradient before Adam's moments (or SGD's step), so
  with a zero gradient Adam's first update is lr-sized whatever the decay (it normalises wd·p), and SGD's is
  -lr·wd·p; decay added after Adam would give +wd·p (no learning rate, the wrong sign)."""
  lr, wd = 0.01, 0.1
  params = {"w": jnp.full((2, 3), 2.0)}
  tx = optim._core(name, lr, {"weight_decay": wd}, mask=lambda p: jax.tree.map(lambda _: True, p))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  expected = -lr if name == "adam" else -lr * wd * 2.0
  np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-4)
