"""Language-modelling losses and metrics.

Losses return sums, not means: `(loss_sum, weight_sum, extras)`.  Sums add up across micro-batches and
devices; divide once at the end (`loss_metrics`).  Everything is computed in float32 whatever the logits'
dtype, with logsumexp, so bf16 logits do not lose the loss.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array,
                  z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Weighted token cross-entropy (+ z_loss * logsumexp^2, PaLM's auxiliary loss).

  Returns (loss_sum, weight_sum, extras) with extras = {nll_sum, z_loss_sum, correct_sum}.  Positions of
  weight 0 contribute exactly nothing, even where their logits are inf or nan.
  """
  # The target logit and the accuracy are read with an iota comparison rather than `take_along_axis` (whose
  # gradient is a scatter) and `argmax` (a slow variadic reduce on CPU): same values, cheaper to differentiate
  # (benchmarks/throughput.py).
  logits = logits_BxLxV.astype(jnp.float32)
  lse_BxL = jax.nn.logsumexp(logits, axis=-1)
  vocab_V = jax.lax.broadcasted_iota(jnp.int32, (logits.shape[-1],), 0)
  t_BxLx1 = targets_BxL[..., None].astype(jnp.int32)
  is_target = vocab_V == t_BxLx1
  target_logit_BxL = jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)  # every other term is exactly 0
  nll_BxL = lse_BxL - target_logit_BxL
  z_BxL = z_loss * jnp.square(lse_BxL)
  # argmax == target (argmax = first index of the maximum, NaN above everything): correct unless an earlier
  # logit is >= the target's or a later one is > it.
  logits_ng, target_ng = jax.lax.stop_gradient(logits), jax.lax.stop_gradient(target_logit_BxL)[..., None]
  nan_j, nan_t = jnp.isnan(logits_ng), jnp.isnan(target_ng)
  ge = (logits_ng >= target_ng) | nan_j
  gt = (logits_ng > target_ng) | (nan_j & ~nan_t)
  beaten = jnp.where(vocab_V < t_BxLx1, ge, jnp.where(is_target, False, gt))
  correct_BxL = (~jnp.any(beaten, axis=-1)).astype(jnp.float32)

  weights = weights_BxL.astype(jnp.float32)
  counted = weights != 0
  # where, not multiply: 0 * inf is nan, and padding logits may be anything.
  wsum = lambda x_BxL: jnp.sum(jnp.where(counted, x_BxL * weights, 0.0))  # noqa: E731
  nll_sum, z_sum = wsum(nll_BxL), wsum(z_BxL)
  extras = {'nll_sum': nll_sum, 'z_loss_sum': z_sum, 'correct_sum': wsum(correct_BxL)}
  return nll_sum + z_sum, jnp.sum(weights), extras


def next_token_targets(tokens_BxL: jax.Array, weights_BxL: jax.Array | None = None
                       ) -> tuple[jax.Array, jax.Array]:
  """Targets for causal LM when inputs and targets are the same sequence: position t predicts token t+1.

  The last position has no target and gets weight 0.  Not needed when the data pipeline already gives
  shifted targets.
  """
  targets_BxL = jnp.concatenate([tokens_BxL[:, 1:], jnp.zeros_like(tokens_BxL[:, :1])], axis=1)
  if weights_BxL is None:
    weights_BxL = jnp.ones(tokens_BxL.shape)
  weights = weights_BxL.astype(jnp.float32)
  weights_BxL = jnp.concatenate([weights[:, 1:], jnp.zeros_like(weights[:, :1])], axis=1)
  return targets_BxL, weights_BxL


def clm_loss(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array | None = None,
             z_loss: float = 0.0):
  """Causal LM loss: logits at position t against targets_BxL[t] (already the next token).

  `weights_BxL` marks real tokens (0 for padding); default all ones.
  """
  if weights_BxL is None:
    weights_BxL = jnp.ones(targets_BxL.shape, jnp.float32)
  return cross_entropy(logits_BxLxV, targets_BxL, weights_BxL, z_loss)


def mlm_loss(logits_BxLxV: jax.Array, targets_BxL: jax.Array, masked_BxL: jax.Array,
             weights_BxL: jax.Array | None = None, z_loss: float = 0.0):
  """Masked LM loss: only positions selected for prediction (`masked_BxL` true) count.

  `targets_BxL` are the original tokens; `weights_BxL` (optional) additionally zeroes padding.
  """
  weights = masked_BxL.astype(jnp.float32)
  if weights_BxL is not None:
    weights = weights * weights_BxL.astype(jnp.float32)
  return cross_entropy(logits_BxLxV, targets_BxL, weights, z_loss)


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

  Always reports 'embedding' and 'other' (0 when a group is empty) so that logs keep the same keys.
  """
  leaves = jax.tree.leaves(tree)
  labels = jax.tree.leaves(groups)
  if len(leaves) != len(labels):
    raise ValueError(f'tree has {len(leaves)} leaves but groups has {len(labels)} labels')
  squares: dict[str, jax.Array] = {label: jnp.zeros((), jnp.float32) for label in ('embedding', 'other')}
  for leaf, label in zip(leaves, labels):
    squares[label] = squares.get(label, 0.0) + jnp.sum(jnp.square(jnp.asarray(leaf, jnp.float32)))
  norms = {label: jnp.sqrt(s) for label, s in squares.items()}
  norms['total'] = jnp.sqrt(sum(squares.values()))
  return norms
