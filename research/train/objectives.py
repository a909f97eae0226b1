"""Language-modelling losses and metrics.

Losses return sums, not means: `(loss_sum, weight_sum, extras)`.  Sums add up across micro-batches and
devices; divide once at the end (`loss_metrics`).  Everything is computed in float32 whatever the logits'
dtype, with logsumexp, so bf16 logits do not lose the loss.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array,
                  z_loss: float = 0.0, segments_BxL: jax.Array | None = None,
                  num_segments: int = 0) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Weighted token cross-entropy (+ z_loss * logsumexp^2, PaLM's auxiliary loss).

  Returns (loss_sum, weight_sum, extras) with extras = {nll_sum, z_loss_sum, correct_sum}.  Positions of
  weight 0 contribute exactly nothing, even where their logits are inf or nan. With `segments_BxL` (int ids in
  [0, num_segments), e.g. each token's position in its window) extras also hold `nll_by_segment` and
  `weight_by_segment` [num_segments]: the same weighted sums per segment, from the same per-token losses.
  """
  # The target logit is a gather, and the accuracy is read from the row maximum rather than with `argmax` (a slow
  # variadic reduce on CPU): same values, fewer and smaller passes over the [tokens, V] logits (measured on a
  # 512 × 8192 chunk, loss + gradient: 2.6 ms against 3–4 ms for an iota-select target and an index reduce).
  logits = logits_BxLxV.astype(jnp.float32)
  lse_BxL = jax.nn.logsumexp(logits, axis=-1)
  t_BxL = targets_BxL.astype(jnp.int32)
  target_logit_BxL = jnp.take_along_axis(logits, t_BxL[..., None], axis=-1)[..., 0]
  nll_BxL = lse_BxL - target_logit_BxL
  z_BxL = z_loss * jnp.square(lse_BxL)
  # argmax == target, argmax being the first index of the row maximum, or of the first NaN (as jnp.argmax; the
  # maximum is NaN when a NaN is present): the target is a maximum (or a NaN) and no earlier index is one.
  logits_ng, target_ng = jax.lax.stop_gradient(logits), jax.lax.stop_gradient(target_logit_BxL)
  row_max_BxL = jnp.max(logits_ng, axis=-1)
  is_max_BxLxV = (logits_ng == row_max_BxL[..., None]) | jnp.isnan(logits_ng)
  vocab_V = jax.lax.broadcasted_iota(jnp.int32, (logits.shape[-1],), 0)
  earlier_max_BxL = jnp.any(is_max_BxLxV & (vocab_V < t_BxL[..., None]), axis=-1)
  correct_BxL = (((target_ng == row_max_BxL) | jnp.isnan(target_ng)) & ~earlier_max_BxL).astype(jnp.float32)

  weights = weights_BxL.astype(jnp.float32)
  counted = weights != 0
  # where, not multiply: 0 * inf is nan, and padding logits may be anything.
  wsum = lambda x_BxL: jnp.sum(jnp.where(counted, x_BxL * weights, 0.0))  # noqa: E731
  nll_sum, z_sum = wsum(nll_BxL), wsum(z_BxL)
  extras = {'nll_sum': nll_sum, 'z_loss_sum': z_sum, 'correct_sum': wsum(correct_BxL)}
  if segments_BxL is not None:
    by_segment = lambda x_BxL: jax.ops.segment_sum(  # noqa: E731
        jnp.where(counted, x_BxL, 0.0).reshape(-1), segments_BxL.reshape(-1), num_segments=num_segments)
    extras['nll_by_segment'] = by_segment(nll_BxL * weights)
    extras['weight_by_segment'] = by_segment(weights)
  return nll_sum + z_sum, jnp.sum(weights), extras


def _tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


def _wide_last(x):
  """A matrix with its longer axis last ([d, V] for a tied head's [V, d] table); anything else as it is. The fused
  loss sums the head's chunk gradients in this layout and transposes the total once: a weight gradient's bf16
  product comes out with its shorter axis first (`precision._transposed_product`), so summing it in the
  parameter's own layout was a strided transposing add per chunk (57 ms of an 860 ms bf16 step on Zen 4, and a
  slower product). The sums are the same numbers added in the same order, so gradients are bit-identical (f32 and
  bf16; docs/benchmarks.md, "The head's gradient in the product's layout")."""
  return x.T if x.ndim == 2 and x.shape[0] > x.shape[1] else x


def chunked_cross_entropy(head_fn: Callable[[Any, jax.Array], jax.Array], head_params: Any, hidden_NxD: jax.Array,
                          targets_N: jax.Array, weights_N: jax.Array, *, chunk: int, z_loss: float = 0.0
                          ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """`cross_entropy(head_fn(head_params, hidden), targets, weights)` over chunks of `chunk` tokens, so the full
  [N, V] logits never exist, with the gradient computed in the forward pass ("fused linear cross-entropy", as
  Liger-Kernel's): each chunk's logits are made once, and the gradients of its loss with respect to the head
  parameters and to its hidden states are taken right there, while the logits are at hand. A rematerialising
  chunked loss (`jax.checkpoint` per chunk) makes every chunk's logits twice, once for the loss and once again
  in the backward pass: one more N×d×V matmul, the largest in a small model.

  Only `loss_sum` (the first output) is differentiable; `weight_sum` and the extras are metrics, and cotangents
  given for them are ignored. Without differentiation (evaluation) only the forward sums are computed.
  `N` must be a multiple of `chunk`.
  """
  n = hidden_NxD.shape[0]
  if n % chunk:
    raise ValueError(f"chunk={chunk} does not divide the {n} tokens")

  def split(x):
    return x.reshape(n // chunk, chunk, *x.shape[1:])

  def sums_of(params, h_CxD, t_C, w_C):
    return cross_entropy(head_fn(params, h_CxD), t_C, w_C, z_loss)

  # Zeros shaped like one chunk's (loss_sum, weight_sum, extras), whatever cross_entropy returns.
  zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
      sums_of, head_params, hidden_NxD[:chunk], targets_N[:chunk], weights_N[:chunk]))

  @jax.custom_vjp
  def fused(params, h_NxD, t_N, w_N):
    def body(sums, xs):
      return _tree_add(sums, sums_of(params, *xs)), None
    return jax.lax.scan(body, zero_sums, (split(h_NxD), split(t_N), split(w_N)))[0]

  def fused_fwd(params, h_NxD, t_N, w_N):
    def body(carry, xs):
      sums, g_params = carry
      h_CxD, t_C, w_C = xs
      loss_and_sums = lambda p, h: (lambda s: (s[0], s))(sums_of(p, h, t_C, w_C))  # noqa: E731
      (_, chunk_sums), (g_p, g_h_CxD) = jax.value_and_grad(loss_and_sums, argnums=(0, 1), has_aux=True)(
          params, h_CxD)
      return (_tree_add(sums, chunk_sums), _tree_add(g_params, jax.tree.map(_wide_last, g_p))), g_h_CxD

    init = (zero_sums, jax.tree.map(lambda p: jnp.zeros_like(_wide_last(p)), params))
    (sums, g_params), g_h = jax.lax.scan(body, init, (split(h_NxD), split(t_N), split(w_N)))
    g_params = jax.tree.map(lambda g, p: g.T if g.shape != p.shape else g, g_params, params)  # back, once
    return sums, (g_params, g_h.reshape(h_NxD.shape))

  def fused_bwd(residuals, cotangents):
    g_params, g_h_NxD = residuals
    ct = cotangents[0]  # d(objective)/d(loss_sum); the other outputs are metrics
    scale = lambda g: (g * ct).astype(g.dtype)  # noqa: E731
    return jax.tree.map(scale, g_params), scale(g_h_NxD), None, None

  fused.defvjp(fused_fwd, fused_bwd)
  return fused(head_params, hidden_NxD, targets_N, weights_N)


def loss_metrics(loss_sum: jax.Array, weight_sum: jax.Array, extras: dict[str, jax.Array]
                 ) -> dict[str, jax.Array]:
  """loss (incl. z-loss), nll, ppl = exp(nll), weighted accuracy and the token count, from the sums."""
  denom = jnp.maximum(weight_sum, jnp.finfo(jnp.float32).tiny)
  mean = lambda s: jnp.where(weight_sum > 0, s / denom, 0.0)
  nll = mean(extras['nll_sum'])
  return {'loss': mean(loss_sum), 'nll': nll, 'ppl': jnp.exp(nll),
          'accuracy': mean(extras['correct_sum']), 'tokens': weight_sum}


def group_norms(tree: Any, groups: Any) -> dict[str, jax.Array]:
  """Global L2 norm of `tree` per group label (from `optim.param_groups`) and over all leaves ('total').

  Always reports 'embedding', 'position' and 'other' (0 when a group is empty) so that logs keep the same keys.
  """
  leaves = jax.tree.leaves(tree)
  labels = jax.tree.leaves(groups)
  if len(leaves) != len(labels):
    raise ValueError(f'tree has {len(leaves)} leaves but groups has {len(labels)} labels')
  squares: dict[str, jax.Array] = {label: jnp.zeros((), jnp.float32) for label in ('embedding', 'position', 'other')}
  for leaf, label in zip(leaves, labels):
    squares[label] = squares.get(label, 0.0) + jnp.sum(jnp.square(jnp.asarray(leaf, jnp.float32)))
  norms = {label: jnp.sqrt(s) for label, s in squares.items()}
  norms['total'] = jnp.sqrt(sum(squares.values()))
  return norms
