"""Optax optimizers, schedules and the embedding-specific options.

`make_optimizer(train_cfg)` returns one `optax.GradientTransformationExtraArgs`:

    clip_by_global_norm(grad_clip)            # skipped when grad_clip == 0
    partition by param_groups(params):
      'other':     optimizer(schedule)       with the weight-decay mask; the positional parameters are in this
                                            partition, decayed iff position.weight_decay, and so is an
                                            untied head (or a factorized tied table's head_projection),
                                            decayed iff head.weight_decay
      'embedding': optimizer(mult * schedule) decayed iff embedding.weight_decay (that rate is 0 for the first
                   embedding.freeze_steps steps),
                   wrapped in lazy_rows(...) when embedding.lazy,
                   or set_to_zero()          when embedding.freeze

Lazy updates need to know which rows of the table the batch used, so the train step passes them as an
extra argument (optax's extra-args mechanism; transformations that do not use it ignore it):

    updates, opt_state = tx.update(grads, opt_state, params, row_mask=present_rows(inputs, vocab_size))

The embedding table is the leaf whose path ends in ('token_embed', 'embedding'), wherever it is nested. The
positional parameters are every leaf under a module named `position_embed` (the scheme's module, shared by all
layers, or one per layer inside a block): a learned table, T5's bucket biases, and whatever a scheme owns. They are
a group of their own (their own norms, their own decay flag) so that no scheme is regularised differently from
another by accident: with the defaults neither the token table nor any positional parameter is decayed
(docs/training.md, "Parameter groups"). Nor is an untied head (`lm_head`, its own decay flag; its norms are the
'other' group's), nor a factorized tied table's `head_projection`, so that a tied and an untied model differ in
tying only. They share the 'other' partition's optimizer (same rule, same learning
rate), which keeps the optimizer state's structure what it was before the group existed: older checkpoints restore.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

EMBEDDING_PATH_SUFFIX = ('token_embed', 'embedding')
POSITION_MODULE = 'position_embed'
UNTIED_HEAD_MODULE = 'lm_head'  # research/model/transformer.py: the untied model's output head
# research/embeddings/token.py: a factorized tied table's d→e projection, the head's way back to the table.
HEAD_PROJECTION_SUFFIX = ('token_embed', 'head_projection')
PROJECTION_GROUPS = ('head', 'matrices')  # train.head.projection_group
LAZY_ROWS = ('lookups', 'batch')  # train.embedding.lazy_rows
GROUPS = ('embedding', 'position', 'other')
NO_DECAY_NAMES = frozenset({'bias', 'scale'})
OPTIMIZERS = ('adamw', 'adam', 'sgd', 'adafactor', 'lion')
SCHEDULES = ('constant', 'cosine', 'linear', 'rsqrt')


def _key_name(key: Any) -> Any:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return getattr(key, attr)
  return str(key)


def path_names(path: tuple[Any, ...]) -> tuple[Any, ...]:
  """('token_embed', 'embedding') from a jax key path of DictKey / GetAttrKey / SequenceKey."""
  return tuple(_key_name(k) for k in path)


def is_embedding_path(path: tuple[Any, ...]) -> bool:
  return path_names(path)[-2:] == EMBEDDING_PATH_SUFFIX


def is_position_path(path: tuple[Any, ...]) -> bool:
  return POSITION_MODULE in path_names(path)


def group_of(path: tuple[Any, ...]) -> str:
  if is_embedding_path(path):
    return 'embedding'
  return 'position' if is_position_path(path) else 'other'


def param_groups(params: Any) -> Any:
  """Labels every leaf 'embedding' (the token table), 'position' (the positional scheme's parameters) or 'other';
  same tree structure as `params`."""
  return jax.tree_util.tree_map_with_path(lambda path, _: group_of(path), params)


def partition_labels(params: Any) -> Any:
  """The optimizer's partition: 'embedding' (the token table) or 'other' (everything else, positional parameters
  included: they differ from the rest only in `decay_mask`)."""
  return jax.tree.map(lambda group: 'embedding' if group == 'embedding' else 'other', param_groups(params))


def is_untied_head_path(path: tuple[Any, ...]) -> bool:
  """A leaf of the untied output head (the model's `lm_head` module, [width, V])."""
  return UNTIED_HEAD_MODULE in path_names(path)


def is_head_projection_path(path: tuple[Any, ...]) -> bool:
  """A leaf of a factorized tied table's head projection (`token_embed/head_projection`, [d_model, e])."""
  names = path_names(path)
  return any(names[i:i + 2] == HEAD_PROJECTION_SUFFIX for i in range(len(names) - 1))


def decay_mask(params: Any, embedding_weight_decay: bool = False, position_weight_decay: bool = False,
               head_weight_decay: bool = False, projection_group: str = 'head') -> Any:
  """True where weight decay applies: >=2-d leaves not named bias/scale; the token table, the positional
  parameters (of any rank) and the untied head iff their flags say so. A factorized tied table's head projection
  belongs to the head (`projection_group` 'head': decayed iff `head_weight_decay`, as the untied head it stands in
  for) or, as in runs before train.head.projection_group existed ('matrices'), to the >=2-d rule."""
  _check_choice('train.head.projection_group', projection_group, PROJECTION_GROUPS)

  def rule(path, leaf):
    if is_embedding_path(path):
      return bool(embedding_weight_decay)
    if is_position_path(path):
      return bool(position_weight_decay)
    if is_untied_head_path(path) or (projection_group == 'head' and is_head_projection_path(path)):
      return bool(head_weight_decay)
    name = path_names(path)[-1] if path else None
    return jnp.ndim(leaf) >= 2 and name not in NO_DECAY_NAMES

  return jax.tree_util.tree_map_with_path(rule, params)


def present_rows(token_ids: jax.Array, vocab_size: int) -> jax.Array:
  """bool[V]: True for every row of the table that `token_ids` (any shape) looks up."""
  ids = jnp.asarray(token_ids).reshape(-1)
  # Negative ids would wrap around in .at[]; send them (and ids >= V) out of range, where they are dropped.
  ids = jnp.where(ids < 0, vocab_size, ids)
  return jnp.zeros((vocab_size,), jnp.bool_).at[ids].set(True, mode='drop')


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ValueError(f'unknown {kind} {value!r}; valid choices: {", ".join(valid)}')


def make_schedule(train_cfg: Mapping[str, Any]) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then the named decay.

  constant: stays at the peak.  cosine / linear: decay to `min_lr_ratio * learning_rate` (default 0) at
  `steps`.  rsqrt: peak * sqrt(warmup_steps / step), i.e. 1/sqrt(step) decay continuous at the peak
  (peak / sqrt(step + 1) without warmup).  Unknown names raise ValueError listing SCHEDULES.
  """
  name = train_cfg['schedule']
  _check_choice('schedule', name, SCHEDULES)
  peak = float(train_cfg['learning_rate'])
  warmup = int(train_cfg.get('warmup_steps', 0))
  total = int(train_cfg.get('steps', 0))
  floor = peak * float(train_cfg.get('min_lr_ratio', 0.0))
  decay_steps = max(total - warmup, 1)

  if name == 'constant':
    decay = optax.constant_schedule(peak)
  elif name == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=floor / peak if peak else 0.0)
  elif name == 'linear':
    decay = optax.linear_schedule(peak, floor, decay_steps)
  else:  # rsqrt
    offset = max(warmup, 1)
    decay = lambda count: peak * jax.lax.rsqrt(jnp.asarray(count + offset, jnp.float32) / offset)
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _core(name: str, lr: optax.ScalarOrSchedule, train_cfg: Mapping[str, Any],
          mask: Callable[[Any], Any]) -> optax.GradientTransformation:
  """The named optimizer with its weight decay (decoupled for adamw/lion/adafactor, L2 for adam/sgd). Decoupled decay
  is scaled by the learning rate in all three: adafactor's as Hugging Face's and fairseq's Adafactor do it
  (p -= lr · param_scale · wd · p), which optax's `weight_decay_rate` does not (it subtracts wd · p whatever the
  rate: 10 % of every matrix per step at wd 0.1, even during warmup)."""
  wd = float(train_cfg.get('weight_decay', 0.0))
  b1, b2 = float(train_cfg.get('b1', 0.9)), float(train_cfg.get('b2', 0.999))
  if name == 'adamw':
    return optax.adamw(lr, b1=b1, b2=b2, weight_decay=wd, mask=mask)
  if name == 'lion':
    return optax.lion(lr, b1=b1, b2=b2, weight_decay=wd, mask=mask)
  if name == 'adafactor':
    # optax.adafactor's own chain with its defaults, the decay added before the learning rate and the parameter
    # scale instead of after them; without decay it is optax.adafactor(lr) transform for transform.
    decay = [optax.add_decayed_weights(wd, mask)] if wd else []
    return optax.chain(optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0), *decay,
                       optax.scale_by_learning_rate(lr, flip_sign=False), optax.scale_by_param_block_rms(),
                       optax.scale(-1))
  # Classic (coupled) L2: the decay enters the gradient, before moments / momentum.
  l2 = [optax.add_decayed_weights(wd, mask)] if wd else []
  if name == 'adam':
    return optax.chain(*l2, optax.adam(lr, b1=b1, b2=b2))
  momentum = float(train_cfg.get('momentum', 0.0))
  return optax.chain(*l2, optax.sgd(lr, momentum=momentum or None))


def lazy_rows(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Applies `inner` only to the rows flagged by the extra argument `row_mask` (bool[V]), like LazyAdam.

  Rows not in the batch get a zero update and keep their optimizer statistics bit-identical, so neither
  momentum nor weight decay touches them.  Every state leaf of `inner` must be a scalar (e.g. a step count,
  shared by all rows as in TensorFlow's LazyAdam) or have V rows; anything else (a factored second moment)
  cannot be updated row by row and raises.
  """

  def init_fn(params):
    return inner.init(params)

  def update_fn(updates, state, params=None, *, row_mask=None, **extra_args):
    if row_mask is None:
      raise ValueError('lazy embedding updates need the rows present in the batch: '
                       'tx.update(grads, state, params, row_mask=present_rows(token_ids, vocab_size))')
    new_updates, new_state = inner.update(updates, state, params, **extra_args)
    rows = row_mask.shape[0]

    def select(new, old):
      if jnp.ndim(new) == 0:
        return new
      if new.shape[0] != rows:
        raise ValueError(f'lazy updates need per-row optimizer state; got a state leaf of shape {new.shape} '
                         f'for a table with {rows} rows')
      keep = row_mask.reshape((rows,) + (1,) * (new.ndim - 1))
      return jnp.where(keep, new, old)

    new_updates = jax.tree.map(lambda u: select(u, jnp.zeros_like(u)), new_updates)
    new_state = jax.tree.map(select, new_state, state)
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def frozen_for(lr: optax.Schedule, steps: int) -> optax.Schedule:
  """`lr`, but exactly 0 while the update count is below `steps` (`embedding.freeze_steps`).

  Keyed on the count of the optimizer's own schedule state, which is the train step (it counts every update from
  the first), so a resumed run freezes and unfreezes at the same step, and the optimizer state has the same
  structure whatever `steps` is. With the learning rate at 0 every optimizer's update of the table is an exact zero
  (their weight decay is multiplied by the learning rate too), so the table
  is bit-identical for `steps` steps. Its moments (Adam's mu and nu, momentum) still accumulate the gradients
  meanwhile: at step `steps` the table starts with warm statistics rather than fresh ones.
  """
  return lambda count: jnp.where(count < steps, 0.0, lr(count))


def make_optimizer(train_cfg: Mapping[str, Any]) -> optax.GradientTransformationExtraArgs:
  """Clipping + optimizer + weight-decay mask + embedding options, from `config.train`."""
  name = train_cfg['optimizer']
  _check_choice('optimizer', name, OPTIMIZERS)
  emb = train_cfg.get('embedding', None) or {}
  emb_decay = bool(emb.get('weight_decay', False))  # the schema's defaults (docs/training.md, "Parameter groups")
  position_decay = bool((train_cfg.get('position', None) or {}).get('weight_decay', False))
  head = train_cfg.get('head', None) or {}
  head_decay, projection_group = bool(head.get('weight_decay', False)), str(head.get('projection_group', 'head'))
  multiplier = float(emb.get('lr_multiplier', 1.0))
  freeze, lazy = bool(emb.get('freeze', False)), bool(emb.get('lazy', False))
  freeze_steps = int(emb.get('freeze_steps', 0) or 0)
  if lazy and not freeze and name == 'adafactor':
    raise ValueError("embedding.lazy is not supported with optimizer 'adafactor': its factored second moment "
                     'mixes all rows; use adamw, adam, sgd or lion')

  schedule = make_schedule(train_cfg)
  mask = lambda params: decay_mask(params, emb_decay, position_decay, head_decay, projection_group)
  if freeze:
    embedding_tx = optax.set_to_zero()
  else:
    embedding_lr = schedule if multiplier == 1.0 else (lambda count: multiplier * schedule(count))
    if freeze_steps > 0:
      embedding_lr = frozen_for(embedding_lr, freeze_steps)
    embedding_tx = _core(name, embedding_lr, train_cfg, mask)
    if lazy:
      embedding_tx = lazy_rows(embedding_tx)
  other_tx = _core(name, schedule, train_cfg, mask)
  clip = float(train_cfg.get('grad_clip', 0.0))
  if clip > 0 and freeze:
    # A frozen table has no gradient to speak of: the global norm is the other parameters' (as in PyTorch, where
    # a frozen parameter has no .grad), so freezing the table does not shrink every other step.
    other_tx = optax.chain(optax.clip_by_global_norm(clip), other_tx)
  grouped = optax.partition({'embedding': embedding_tx, 'other': other_tx}, partition_labels)
  if clip > 0 and not freeze:
    return optax.chain(optax.clip_by_global_norm(clip), grouped)
  return optax.with_extra_args_support(grouped)
