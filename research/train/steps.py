"""The pure, module-level train and eval steps (docs/architecture.md; the pattern of nanodo and big_vision).

`train_step(state, batch, *, model, optimizer, schedule, settings) -> (state, metrics)`: static pieces are bound with
`functools.partial` and the result is jitted once with shardings and a donated state (see `loop.py`). Randomness
is `fold_in(state.rng, state.step)`, so a resumed run draws the same numbers as an uninterrupted one.

Losses are sums divided once by the total weight, so gradient accumulation over micro-batches gives the same
gradient as one big batch, and padded rows (weight 0) never count.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.batches import document_ids, document_positions, mask_tokens
from research.data.tokenizers import PAD_ID, SPECIAL_IDS
from research.embeddings import registry
from research.embeddings.positions import randomized_positions
from research.model.transformer import HEAD_MODULES, Transformer
from research.train import objectives, optim

Array = Any
# fold_in tag of the randomized-positions key: a separate stream of the step's key, so that the MLM masking and
# dropout keys (split from the same key) are exactly those of a run without randomized positions.
POSITION_STREAM = 0x9051


@flax.struct.dataclass
class TrainState:
  step: Array  # int32 scalar: optimizer steps taken
  params: Any
  opt_state: Any
  rng: Array  # typed PRNG key; per-step keys are fold_in(rng, step)
  # With train.count_updates: {'present': int32 [V], 'nonzero': int32 [V]}, per row of the token table the number of
  # steps whose batch held it (inputs or targets, as `optim.present_rows`) and whose update of it was non-zero. Part
  # of the state, so checkpointed with it: a resumed run counts exactly as an uninterrupted one. None when off.
  counts: Any = None


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Static, hashable settings of the step (bound with functools.partial, never traced)."""

  objective: str = "clm"  # clm | mlm
  vocab_size: int = 256
  grad_accum: int = 1
  z_loss: float = 0.0
  loss_chunk: int = 0  # tokens per chunk of the LM head + cross-entropy; 0 = whole batch at once
  mlm_select_rate: float = 0.15
  mlm_mask_rate: float = 0.8
  mlm_random_rate: float = 0.1
  position_sampling: str = "none"  # none | randomized (training only; evaluation always uses the batch's arange)
  max_position: int = 0  # randomized positions come from [0, max_position); 0 = the batch's length
  count_updates: bool = False  # keep state.counts (train.count_updates)
  # The rows a lazy table updates (train.embedding.lazy_rows): lookups (the inputs' ids, and the targets' when the
  # head is tied: the rows the table's gradient reaches through its lookups) | batch (inputs and targets, always).
  lazy_rows: str = "lookups"
  # Document boundaries inside a row (data.document_positions / data.document_mask), training and evaluation alike.
  document_positions: str = "continuous"  # continuous | reset (0 at every [SEP])
  document_mask: bool = False  # attention only within a document


def document_settings(data_config) -> dict[str, Any]:
  """The StepSettings fields a run's `data` section sets for document boundaries (the trainer and every evaluation
  build their settings with these, so a run is scored the way it trained)."""
  return {"document_positions": str(data_config.document_positions), "document_mask": bool(data_config.document_mask)}


COUNT_KEYS = ("present", "nonzero")


def zero_counts(vocab_size: int) -> dict[str, Array]:
  return {key: jnp.zeros((vocab_size,), jnp.int32) for key in COUNT_KEYS}


def init_state(rng, *, model: Transformer, optimizer: optax.GradientTransformation, seq_len: int,
               count_updates: bool = False) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  params = model.init(init_rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
  counts = zero_counts(model.cfg.vocab_size) if count_updates else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=state_rng,
                    counts=counts)


def table_leaf(tree) -> Array:
  """The token table's leaf of a parameter (or update) tree: the leaf whose path ends in ('token_embed',
  'embedding'), as the optimizer's embedding group finds it."""
  leaves = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0] if optim.is_embedding_path(path)]
  if len(leaves) != 1:
    raise ValueError(f"expected one token table leaf ('token_embed', 'embedding'), found {len(leaves)}")
  return leaves[0]


def count_rows(counts: dict[str, Array], row_mask_V: Array, table_update_VxE: Array) -> dict[str, Array]:
  """counts + this step: `present` where the batch held the row, `nonzero` where any element of its update is not
  exactly zero (a dense optimizer moves absent rows through momentum and decay; lazy or frozen rows stay at 0)."""
  nonzero_V = jnp.any(table_update_VxE != 0, axis=tuple(range(1, table_update_VxE.ndim)))
  return {"present": counts["present"] + row_mask_V.astype(jnp.int32),
          "nonzero": counts["nonzero"] + nonzero_V.astype(jnp.int32)}


def prepare_inputs(batch, rng, settings: StepSettings, *, training: bool = False):
  """(inputs, targets, weights, positions, key_mask): MLM applies the BERT masking here, from the step's key (a
  batch with `rows`, evaluation's: row r from `fold_in(rng, r)`, see `eval_key`);
  `document_positions=reset` restarts the positions at every [SEP] of the row (`batches.document_positions`); in
  training, `position_sampling=randomized` then replaces the positions by a sorted random sample (Ruoss et al. 2023)
  drawn from `fold_in(rng, POSITION_STREAM)`, so a resumed run draws the same positions (with reset positions, each
  document of the row reads the sample from its start: sample[0], sample[1], …).

  key_mask (bool [B, L] or None) marks the keys attention may read. An encoder gets one wherever [PAD] can occur
  (the tail of a short row, an empty row): without it every token would attend to the padding. A decoder gets None:
  padding only ever ends a row (batches.py), after every real token, so the causal mask already hides it, and
  without a key mask causal attention may skip its all-masked blocks (a test checks that appended [PAD] columns
  change neither objective's loss).
  """
  positions = batch["positions"]
  if settings.document_positions == "reset":
    positions = document_positions(batch["inputs"], positions)
  if training and settings.position_sampling == "randomized":
    positions = randomized_positions(jax.random.fold_in(rng, POSITION_STREAM), positions,
                                     settings.max_position or positions.shape[1])
  if settings.objective == "mlm":
    mask = lambda key, tokens: mask_tokens(  # noqa: E731
        key, tokens, vocab_size=settings.vocab_size, select_rate=settings.mlm_select_rate,
        mask_rate=settings.mlm_mask_rate, random_rate=settings.mlm_random_rate, special_ids=SPECIAL_IDS)
    if "rows" in batch:  # evaluation: row r masked with fold_in(rng, r), whatever batch it is in (`eval_key`)
      keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, batch["rows"])
      inputs, targets, selected = jax.vmap(mask)(keys, batch["inputs"])
    else:  # training: the whole batch from the step's key
      inputs, targets, selected = mask(rng, batch["inputs"])
    # [PAD] is special, so masking never selects it nor draws it as a random replacement: the original inputs tell.
    return inputs, targets, selected * batch["weights"], positions, batch["inputs"] != PAD_ID
  return batch["inputs"], batch["targets"], batch["weights"], positions, None


def segments(batch, settings: StepSettings):
  """int32 [B, L] document ids of the rows (`batches.document_ids`, from the unmasked inputs) with
  `document_mask`, which the model turns into a mask that keeps attention within a document; else None."""
  return document_ids(batch["inputs"]) if settings.document_mask else None


def eval_key(seed: int, length: int) -> jax.Array:
  """The MLM masking key of evaluation at window `length`: row r of the split at that length is masked with
  `fold_in(eval_key(seed, length), r)` (`with_row_indices`, `prepare_inputs`). Every row draws its own masks, a rerun
  draws the same ones, and a row's masks depend on nothing but the seed, the length, the row index and the row's
  tokens: not on the batch size (train.batch_size, --max_tokens_per_batch), the number of devices or processes, or
  the empty rows padding a batch. So the trainer's validation and research-evaluate at 1x score the same masks."""
  return jax.random.fold_in(jax.random.key(seed + 1), length)


def with_row_indices(batch, batch_index: int, process_index: int = 0, process_count: int = 1):
  """`batch` (batch `batch_index` of this process's evaluation batches, before any padding for devices) with `rows`:
  int32 [B], each row's index among the split's rows at that length. The evaluation iterators lay the split out in
  order, process h taking rows h, h + P, … (`batches.eval_batches`, `PackedBatches(shuffle=False)`), so row j of
  batch i is h + P·(i·B + j); empty rows past the split's end get the indices they would have (weight 0 anyway).
  Only MLM masking reads them (`prepare_inputs`)."""
  size = batch["inputs"].shape[0]
  rows = process_index + process_count * (batch_index * size + np.arange(size, dtype=np.int64))
  return {**batch, "rows": rows.astype(np.int32)}


def lm_loss_sums(params, model: Transformer, inputs, targets, weights, positions, key_mask=None, segments_BxL=None,
                 *, deterministic: bool, rngs=None, z_loss: float = 0.0, loss_chunk: int = 0,
                 by_position: bool = False):
  """(loss_sum, weight_sum, extras). With `loss_chunk`, the head and the cross-entropy run over chunks of that
  many tokens (`objectives.chunked_cross_entropy`): the full [tokens, V] logits never exist, and each chunk's
  logits are made once, with the head's gradients taken in the forward pass. `segments_BxL` (`segments`) keeps
  attention within documents.

  `by_position` (evaluation) adds extras `nll_by_segment` / `weight_by_segment` [L]: the sums per column of the
  window (the token's index in its row, whatever its `positions`), from the same per-token losses as the totals;
  the whole batch's logits at once (loss_chunk does not apply)."""

  variables = {"params": params}
  n = targets.size
  by_column = {}  # cross_entropy's per-segment sums, one segment per column of the window
  if by_position:
    column_BxL = jnp.broadcast_to(jnp.arange(targets.shape[1], dtype=jnp.int32), targets.shape)
    by_column = {"segments_BxL": column_BxL.reshape(n), "num_segments": targets.shape[1]}
    loss_chunk = 0
  if model.cfg.uses_chars:
    # The char CNN runs once per forward pass over the whole vocabulary, for the input and the tied head together:
    # the full logits at once (train.loss_chunk does not apply).
    logits_BxLxV = model.apply(variables, inputs, positions, key_mask_BxL=key_mask, segments_BxL=segments_BxL,
                               deterministic=deterministic, rngs=rngs)
    return objectives.cross_entropy(logits_BxLxV.reshape(n, -1), targets.reshape(n), weights.reshape(n), z_loss,
                                    **by_column)
  hidden_BxLxD = model.apply(variables, inputs, positions, key_mask_BxL=key_mask, segments_BxL=segments_BxL,
                             deterministic=deterministic, rngs=rngs, return_hidden=True)
  # The head runs on [tokens, d], not [B, L, d]: with one contracting dimension the weight gradient of the head
  # is a plain matmul; with two, XLA:CPU materialises a transposed copy of the [tokens, V] logits gradient.
  hidden_NxD = hidden_BxLxD.reshape(n, hidden_BxLxD.shape[-1])
  targets_N, weights_N = targets.reshape(n), weights.reshape(n)
  if not loss_chunk or loss_chunk >= n:
    logits_NxV = model.apply(variables, hidden_NxD, method=Transformer.logits)
    return objectives.cross_entropy(logits_NxV, targets_N, weights_N, z_loss, **by_column)
  pad = -n % loss_chunk
  if pad:  # the last chunk filled with unscored rows (weight 0): the full logits never exist, whatever B × L is
    hidden_NxD = jnp.pad(hidden_NxD, ((0, pad), (0, 0)))
    targets_N, weights_N = jnp.pad(targets_N, (0, pad)), jnp.pad(weights_N, (0, pad))

  # Only the head's parameters go through the fused loss (the rest would only carry zero gradients).
  head_params = {name: params[name] for name in HEAD_MODULES if name in params}
  head_fn = lambda p, h_CxD: model.apply({"params": p}, h_CxD, method=Transformer.logits)  # noqa: E731
  return objectives.chunked_cross_entropy(head_fn, head_params, hidden_NxD, targets_N, weights_N,
                                          chunk=loss_chunk, z_loss=z_loss)


def _split_micro(x, k: int):
  return x.reshape(k, x.shape[0] // k, *x.shape[1:])


def train_step(state: TrainState, batch, *, model: Transformer, optimizer, schedule, settings: StepSettings):
  """One optimizer step over `batch` (split into `settings.grad_accum` micro-batches). Returns (state, metrics)."""
  rng = jax.random.fold_in(state.rng, state.step)
  mask_rng, dropout_rng = jax.random.split(rng)
  inputs, targets, weights, positions, key_mask = prepare_inputs(batch, mask_rng, settings, training=True)
  segments_BxL = segments(batch, settings)

  def sums_and_grads(micro, key):
    def loss_fn(params):
      loss_sum, weight_sum, extras = lm_loss_sums(
          params, model, *micro, deterministic=False, rngs={"dropout": key}, z_loss=settings.z_loss,
          loss_chunk=settings.loss_chunk)
      return loss_sum, (weight_sum, extras)

    (loss_sum, (weight_sum, extras)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return (loss_sum, weight_sum, extras), grads

  data = (inputs, targets, weights, positions, key_mask, segments_BxL)
  if settings.grad_accum == 1:
    sums, grads = sums_and_grads(data, dropout_rng)
  else:
    micro = jax.tree.map(lambda x: _split_micro(x, settings.grad_accum), data)
    keys = jax.random.split(dropout_rng, settings.grad_accum)

    def body(carry, xs):
      out = sums_and_grads(*xs)
      return jax.tree.map(jnp.add, carry, out), None

    zero = jax.eval_shape(sums_and_grads, jax.tree.map(lambda x: x[0], micro), keys[0])
    sums, grads = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, zero), (micro, keys))[0]
  loss_sum, weight_sum, extras = sums
  denom = jnp.maximum(weight_sum, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)

  # The rows the batch holds (update counts' `present`), and those a lazy table updates: with an untied head the
  # table is only looked up at the inputs, so a row that is only a target has no gradient and stays (lazy_rows).
  batch_rows = optim.present_rows(jnp.concatenate([inputs, targets], axis=1), settings.vocab_size)
  row_mask = batch_rows
  if settings.lazy_rows == "lookups" and not model.cfg.tie_embeddings:
    row_mask = optim.present_rows(inputs, settings.vocab_size)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params, row_mask=row_mask)
  # A scheme's constrained parameters (Kerple's r ≥ 1e-2) are projected back into their box after the update.
  params = registry.project_params(optax.apply_updates(state.params, updates), registry.get_scheme(model.cfg.position))

  groups = optim.param_groups(state.params)
  metrics = objectives.loss_metrics(loss_sum, weight_sum, extras)
  metrics["lr"] = schedule(state.step)
  # Tokens the model read (non-padding inputs); for MLM `tokens` counts only the ~15 % that are scored.
  metrics["input_tokens"] = jnp.sum(batch["weights"]).astype(jnp.float32)
  for name, tree in (("grad_norm", grads), ("param_norm", params), ("update_norm", updates)):
    for group, value in objectives.group_norms(tree, groups).items():
      metrics[f"{name}/{group}"] = value
  counts = state.counts
  if settings.count_updates:
    counts = count_rows(state.counts, batch_rows, table_leaf(updates))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, counts=counts)
  return new_state, metrics


def eval_step(params, batch, rng, *, model: Transformer, settings: StepSettings, rare_V=None,
              by_position: bool = False):
  """Loss sums over one evaluation batch (MLM: `rng` = `eval_key(seed, length)`, and the batch carries its `rows`,
  `with_row_indices`).

  With `rare_V` (bool [V]: the rare rows, e.g. training count < 10) also `rare_nll_sum` and `rare_weight_sum` over
  the scored targets that are rare (a second pass with those targets' weights only; evaluation is cheap).
  `by_position` adds `nll_by_segment` and `weight_by_segment` [L], the sums per column of the window, from the
  same forward pass (`lm_loss_sums`)."""
  inputs, targets, weights, positions, key_mask = prepare_inputs(batch, rng, settings)
  segments_BxL = segments(batch, settings)
  loss_sum, weight_sum, extras = lm_loss_sums(params, model, inputs, targets, weights, positions, key_mask,
                                              segments_BxL, deterministic=True, loss_chunk=settings.loss_chunk,
                                              by_position=by_position)
  input_tokens = jnp.sum(batch["weights"]).astype(jnp.float32)
  out = {"loss_sum": loss_sum, "weight_sum": weight_sum, "input_tokens": input_tokens, **extras}
  if rare_V is not None:
    rare_weights = weights * jnp.take(rare_V, targets, axis=0, mode="fill", fill_value=False).astype(weights.dtype)
    _, rare_weight_sum, rare_extras = lm_loss_sums(params, model, inputs, targets, rare_weights, positions, key_mask,
                                                   segments_BxL, deterministic=True, loss_chunk=settings.loss_chunk)
    out.update(rare_nll_sum=rare_extras["nll_sum"], rare_weight_sum=rare_weight_sum)
  return out
