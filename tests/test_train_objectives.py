"""Losses and metrics against independent references (optax, numpy)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.train import objectives, optim
from tests.train_utils import dot_generals

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


def test_per_segment_sums_are_the_weighted_losses_of_each_segment_and_ignore_zero_weights():
  logits, targets, weights = sample()
  logits = jnp.where(weights[..., None] == 0, jnp.nan, logits)  # unscored tokens may hold anything
  columns = jnp.broadcast_to(jnp.arange(L), (B, L))
  _, weight_sum, extras = objectives.cross_entropy(logits, targets, weights, segments_BxL=columns, num_segments=L)
  ref = np.asarray(optax.softmax_cross_entropy_with_integer_labels(jnp.nan_to_num(logits), targets))
  w = np.asarray(weights)
  np.testing.assert_allclose(extras['nll_by_segment'], np.sum(ref * w, axis=0), rtol=1e-5)
  np.testing.assert_array_equal(extras['weight_by_segment'], w.sum(axis=0))
  np.testing.assert_allclose(np.sum(extras['nll_by_segment']), extras['nll_sum'], rtol=1e-6)
  assert float(np.sum(extras['weight_by_segment'])) == float(weight_sum)


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


def test_perplexity_is_exp_of_the_nll_not_of_the_loss_with_its_z_loss():
  """With z_loss > 0 `loss` includes the auxiliary term but `ppl` is exp(nll) only (docs/training.md)."""
  logits, targets, weights = sample(6)
  z = 0.1
  m = objectives.loss_metrics(*objectives.cross_entropy(logits, targets, weights, z_loss=z))
  w = np.asarray(weights)
  mean_nll = (np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, targets)) * w).sum() / w.sum()
  mean_z = z * (numpy_lse(logits) ** 2 * w).sum() / w.sum()
  np.testing.assert_allclose(m['nll'], mean_nll, rtol=1e-5)
  np.testing.assert_allclose(m['loss'], mean_nll + mean_z, rtol=1e-5)
  np.testing.assert_allclose(m['ppl'], np.exp(mean_nll), rtol=1e-5)
  assert abs(np.log(float(m['ppl'])) - float(m['loss'])) > 0.1  # the z-loss term is not in the perplexity


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


def _head_problem(seed=0, n=24, d=6, vocab=11, dtype=jnp.float32, tied=False):
  """An untied head ([d, V] weight) or, `tied`, a table-shaped one ([V, d], applied transposed: the fused loss sums
  its gradient in the [d, V] layout and transposes it once)."""
  rng = np.random.default_rng(seed)
  params = {'w': jnp.asarray(rng.standard_normal((vocab, d) if tied else (d, vocab)), jnp.float32),
            'b': jnp.asarray(rng.standard_normal(vocab), jnp.float32)}
  h = jnp.asarray(rng.standard_normal((n, d)), dtype)
  targets = jnp.asarray(rng.integers(0, vocab, n))
  weights = jnp.asarray((rng.random(n) > 0.25).astype(np.float32))
  def head(p, x):
    w = p['w'].astype(x.dtype)
    return x @ (w.T if tied else w) + p['b'].astype(x.dtype)
  return head, params, h, targets, weights


@pytest.mark.parametrize('tied', [False, True])
@pytest.mark.parametrize('z_loss', [0.0, 1e-2])
def test_chunked_cross_entropy_equals_the_whole_loss_and_its_gradient(z_loss, tied):
  head, params, h, targets, weights = _head_problem(tied=tied)

  def whole(p, x):
    return objectives.cross_entropy(head(p, x), targets, weights, z_loss)

  def chunked(p, x):
    return objectives.chunked_cross_entropy(head, p, x, targets, weights, chunk=8, z_loss=z_loss)

  expected, got = whole(params, h), jax.jit(chunked)(params, h)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  g_whole = jax.grad(lambda p, x: whole(p, x)[0], argnums=(0, 1))(params, h)
  g_chunk = jax.jit(jax.grad(lambda p, x: chunked(p, x)[0], argnums=(0, 1)))(params, h)
  for a, b in zip(jax.tree.leaves(g_whole), jax.tree.leaves(g_chunk)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  # The cotangent of loss_sum scales the gradient (e.g. a mean taken outside): 3·loss gives 3× the gradient.
  g3 = jax.grad(lambda p, x: 3.0 * chunked(p, x)[0], argnums=1)(params, h)
  np.testing.assert_allclose(g3, 3.0 * g_chunk[1], rtol=1e-6)


def test_chunked_cross_entropy_keeps_the_hidden_dtype_and_rejects_a_ragged_chunk():
  head, params, h, targets, weights = _head_problem(dtype=jnp.bfloat16)
  g_h = jax.grad(lambda x: objectives.chunked_cross_entropy(head, params, x, targets, weights, chunk=6)[0])(h)
  assert g_h.dtype == jnp.bfloat16 and g_h.shape == h.shape
  with pytest.raises(ValueError, match='chunk=5 does not divide the 24 tokens'):
    objectives.chunked_cross_entropy(head, params, h, targets, weights, chunk=5)


def _count_vocab_matmuls(jaxpr, vocab) -> int:
  """dot_generals with a V-sized operand or result, through scans and other sub-jaxprs."""
  return sum(any(vocab in v.aval.shape for v in (*eqn.invars, *eqn.outvars)) for eqn in dot_generals(jaxpr))


def test_chunked_cross_entropy_makes_each_chunks_logits_once():
  """Loss + gradient take 3 head matmuls per chunk (logits, then d/dh and d/dW from the same logits); a loss that
  rematerialises the logits in the backward pass takes 4."""
  head, params, h, targets, weights = _head_problem(vocab=13)
  grad_fn = jax.grad(lambda p, x: objectives.chunked_cross_entropy(head, p, x, targets, weights, chunk=8)[0],
                     argnums=(0, 1))
  assert _count_vocab_matmuls(jax.make_jaxpr(grad_fn)(params, h).jaxpr, 13) == 3

  @jax.checkpoint
  def remat_chunk(p, x, t, w):
    return objectives.cross_entropy(head(p, x), t, w)[0]

  def remat(p, x):
    xs = (x.reshape(3, 8, -1), targets.reshape(3, 8), weights.reshape(3, 8))
    return jax.lax.scan(lambda c, a: (c + remat_chunk(p, *a), None), 0.0, xs)[0]

  assert _count_vocab_matmuls(jax.make_jaxpr(jax.grad(remat, argnums=(0, 1)))(params, h).jaxpr, 13) == 4


def test_accuracy_is_argmax_with_ties_infinities_and_nans():
  """Correct means jnp.argmax(logits) == target: the first maximum on ties, the first NaN when there is one."""
  rows = np.array([[1.0, 3.0, 3.0, 0.0],         # tie: index 1 wins, not 2
                   [np.inf, 2.0, np.inf, 0.0],   # +inf tie
                   [0.0, np.nan, 5.0, np.nan],   # first NaN (1) beats the larger 5.0
                   [-np.inf, -np.inf, -1.0, -np.inf],
                   [2.0, 2.0, 2.0, 2.0]], np.float32)
  argmax = np.asarray(jnp.argmax(jnp.asarray(rows), axis=-1))
  assert list(argmax) == [1, 0, 1, 2, 0]
  for target in range(4):
    targets = jnp.full((len(rows),), target)
    _, _, extras = objectives.cross_entropy(jnp.asarray(rows), targets, jnp.ones(len(rows)))
    assert float(extras['correct_sum']) == float(np.sum(argmax == target)), target
