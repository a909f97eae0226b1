"""Losses and metrics against independent references (optax, numpy)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.train import objectives, optim

B, L, V = 2, 5, 7


def sample(seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.standard_normal((B, L, V)).astype(np.float32) * 3
  targets = rng.integers(0, V, (B, L))
  weights = (rng.random((B, L)) > 0.3).astype(np.float32)
  weights[0, 0] = 1.0
  return jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)


def numpy_lse(logits):
  logits = np.asarray(logits, np.float64)
  m = logits.max(-1, keepdims=True)
  return (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]


def test_cross_entropy_matches_optax():
  logits, targets, weights = sample()
  loss_sum, weight_sum, extras = objectives.cross_entropy(logits, targets, weights)
  ref = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  np.testing.assert_allclose(loss_sum, np.sum(np.asarray(ref) * np.asarray(weights)), rtol=1e-5)
  np.testing.assert_allclose(weight_sum, np.sum(weights))
  np.testing.assert_allclose(extras['nll_sum'], loss_sum)


def test_zero_weight_positions_are_ignored_exactly():
  logits, targets, weights = sample()
  base = objectives.cross_entropy(logits, targets, weights, z_loss=1e-3)
  noise = jnp.where(weights[..., None] == 0, jnp.asarray(1e4), 0.0)
  for garbage in (logits + noise, jnp.where(weights[..., None] == 0, jnp.nan, logits),
                  jnp.where(weights[..., None] == 0, jnp.inf, logits)):
    changed = objectives.cross_entropy(garbage, targets, weights, z_loss=1e-3)
    assert float(changed[0]) == float(base[0])
    assert float(changed[2]['correct_sum']) == float(base[2]['correct_sum'])


def test_z_loss_adds_weighted_mean_lse_squared():
  logits, targets, weights = sample(1)
  z = 1e-2
  plain, weight_sum, _ = objectives.cross_entropy(logits, targets, weights)
  with_z, _, extras = objectives.cross_entropy(logits, targets, weights, z_loss=z)
  lse = numpy_lse(logits)
  expected = z * np.sum(lse**2 * np.asarray(weights)) / np.sum(weights)
  np.testing.assert_allclose((with_z - plain) / weight_sum, expected, rtol=1e-4)
  np.testing.assert_allclose(extras['z_loss_sum'] / weight_sum, expected, rtol=1e-4)


def test_bf16_logits_computed_in_f32():
  logits, targets, weights = sample(2)
  low = logits.astype(jnp.bfloat16)
  loss_sum, _, _ = objectives.cross_entropy(low, targets, weights)
  assert loss_sum.dtype == jnp.float32
  ref = optax.softmax_cross_entropy_with_integer_labels(low.astype(jnp.float32), targets)
  np.testing.assert_allclose(loss_sum, np.sum(np.asarray(ref) * np.asarray(weights)), rtol=1e-6)


def test_next_token_targets_and_clm_loss():
  tokens = jnp.array([[1, 2, 3, 4], [5, 6, 0, 0]])
  pad = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]], jnp.float32)
  targets, weights = objectives.next_token_targets(tokens, pad)
  np.testing.assert_array_equal(targets[:, :3], tokens[:, 1:])
  np.testing.assert_array_equal(weights, [[1, 1, 1, 0], [1, 0, 0, 0]])
  logits = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 7)), jnp.float32)
  loss_sum, weight_sum, _ = objectives.clm_loss(logits, targets, weights)
  ref = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  np.testing.assert_allclose(loss_sum, ref[0, :3].sum() + ref[1, 0], rtol=1e-6)
  assert float(weight_sum) == 4.0


def test_mlm_loss_counts_only_masked_positions():
  logits, targets, _ = sample(3)
  masked = jnp.zeros((B, L), bool).at[0, 1].set(True).at[1, 3].set(True)
  loss_sum, weight_sum, _ = objectives.mlm_loss(logits, targets, masked)
  ref = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  np.testing.assert_allclose(loss_sum, ref[0, 1] + ref[1, 3], rtol=1e-6)
  assert float(weight_sum) == 2.0
  # Unmasked positions can predict anything.
  scrambled = jnp.where(masked[..., None], logits, -logits)
  assert float(objectives.mlm_loss(scrambled, targets, masked)[0]) == float(loss_sum)


def test_loss_metrics():
  logits, targets, weights = sample(4)
  m = objectives.loss_metrics(*objectives.cross_entropy(logits, targets, weights))
  w = np.asarray(weights)
  ref = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
  mean_nll = (ref * w).sum() / w.sum()
  np.testing.assert_allclose(m['loss'], mean_nll, rtol=1e-5)
  np.testing.assert_allclose(m['ppl'], np.exp(mean_nll), rtol=1e-5)
  acc = ((np.argmax(np.asarray(logits), -1) == np.asarray(targets)) * w).sum() / w.sum()
  np.testing.assert_allclose(m['accuracy'], acc, rtol=1e-6)
  assert float(m['tokens']) == w.sum()
  empty = objectives.loss_metrics(*objectives.cross_entropy(logits, targets, jnp.zeros_like(weights)))
  assert float(empty['loss']) == 0.0 and float(empty['tokens']) == 0.0


def test_loss_is_jittable_and_differentiable():
  logits, targets, weights = sample(5)
  grad = jax.jit(jax.grad(lambda x: objectives.cross_entropy(x, targets, weights)[0]))(logits)
  probs = np.asarray(jax.nn.softmax(logits))
  expected = (probs - np.eye(V)[np.asarray(targets)]) * np.asarray(weights)[..., None]
  np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_group_norms():
  tree = {'token_embed': {'embedding': jnp.full((2, 2), 3.0)}, 'dense': {'kernel': jnp.full((1, 4), 2.0)},
          'bias': jnp.array([1.0])}
  norms = objectives.group_norms(tree, optim.param_groups(tree))
  np.testing.assert_allclose(norms['embedding'], 6.0)
  np.testing.assert_allclose(norms['other'], np.sqrt(17.0))
  np.testing.assert_allclose(norms['total'], np.sqrt(36.0 + 17.0))
  np.testing.assert_allclose(norms['total'], optax.global_norm(tree), rtol=1e-6)
  no_table = objectives.group_norms({'w': jnp.ones(3)}, {'w': 'other'})
  assert float(no_table['embedding']) == 0.0


def test_group_norms_rejects_mismatched_trees():
  with pytest.raises(ValueError):
    objectives.group_norms({'a': jnp.ones(2), 'b': jnp.ones(2)}, {'a': 'other'})
