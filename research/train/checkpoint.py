"""The one module that talks to Orbax: atomic checkpoints of the train state, the data-iterator state and
metadata, keeping the last K plus the best by validation loss.

Layout of `directory` (one Orbax step directory per saved step):

    <directory>/<step>/state/   the train state (ocp.args.StandardSave: arrays, any pytree)
    <directory>/<step>/data/    the data-iterator state (ocp.args.JsonSave)
    <directory>/<step>/meta/    {'step', 'metrics', 'metadata', 'typed_keys'} (ocp.args.JsonSave)
    <directory>/<step>/metrics/ the tracked metric ({'valid_loss': x}) Orbax ranks checkpoints by

Atomicity is Orbax's: a step is written under `<step>.orbax-checkpoint-tmp*` and renamed (or, on object
stores, marked with a commit file) only when complete, so an interrupted save leaves an unfinalized
directory that `latest_step` / `restore` ignore and the next `Checkpointer` removes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_policies

from research.error_text import first_line

BEST_METRIC = 'valid_loss'
_ITEMS = ('state', 'data', 'meta')


def _is_typed_key(x: Any) -> bool:
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keystr(path) -> str:
  return jax.tree_util.keystr(path)


def _to_savable(state: Any) -> tuple[Any, dict[str, str]]:
  """Typed PRNG keys -> their raw uint32 data (+ the impl name per path, to re-wrap them on restore)."""
  impls: dict[str, str] = {}

  def convert(path, leaf):
    if _is_typed_key(leaf):
      impls[_keystr(path)] = str(jax.random.key_impl(leaf))
      return jax.random.key_data(leaf)
    return leaf

  return jax.tree_util.tree_map_with_path(convert, state), impls


def _abstract(leaf: Any) -> Any:
  """A restore target leaf: ShapeDtypeStruct (with sharding) for arrays, typed keys as their uint32 data."""
  if _is_typed_key(leaf):
    data = jax.eval_shape(jax.random.key_data, leaf)
    sharding = getattr(leaf, 'sharding', None)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return leaf


def _from_restored(restored: Any, target: Any, impls: Mapping[str, str]) -> Any:
  def convert(path, value, like):
    if _is_typed_key(like):
      return jax.random.wrap_key_data(value, impl=impls.get(_keystr(path), 'threefry2x32'))
    return value

  return jax.tree_util.tree_map_with_path(convert, restored, target)


def unsaved_empty_fields(target: Any, saved_keys: frozenset[str] | None) -> tuple[str, ...]:
  """The fields of a dataclass state `target` (the TrainState) that are None in it and absent from the state saved in
  a checkpoint (`saved_keys`, its top-level keys): fields added to the state after the checkpoint was written, which
  the run does not use (`counts` without train.count_updates, in a checkpoint from before the field existed). Such a
  checkpoint restores into `target` with them left None; a field the run uses (not None) and the checkpoint lacks is
  a real mismatch, which the restore reports."""
  if saved_keys is None or not dataclasses.is_dataclass(target) or isinstance(target, type):
    return ()
  return tuple(f.name for f in dataclasses.fields(target)
               if getattr(target, f.name) is None and f.name not in saved_keys)


def _jsonable(tree: Any) -> Any:
  """Metrics may arrive as jax / numpy scalars; JSON wants Python numbers."""
  def convert(x):
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
      return np.asarray(x).item() if np.ndim(x) == 0 else np.asarray(x).tolist()
    return x

  return jax.tree.map(convert, tree)


class DamagedCheckpoints(ValueError):
  """Checkpoints whose metrics file (<step>/metrics/metrics, which Orbax reads for every step when it opens the
  directory) is not a JSON object: `steps`, and the error Orbax met."""

  def __init__(self, steps: list[int], why: str):
    self.steps, self.why = steps, why
    super().__init__(f"the metrics of checkpoint step{'s' if len(steps) > 1 else ''} "
                     f"{', '.join(map(str, steps))} are damaged ({why[:200]})")


def damaged_metrics(directory: str | os.PathLike) -> list[int]:
  """The finalized steps of `directory` whose metrics file exists but does not hold a JSON object with a number for
  `BEST_METRIC` (the only metric `save` writes, and the file is written only with it: `{}` fails the ranking)."""
  bad = []
  for step in checkpoint_steps(directory):
    path = Path(directory) / str(step) / "metrics" / "metrics"
    if path.is_file():
      try:
        metrics = json.loads(path.read_text())
        ok = isinstance(metrics, dict) and isinstance(metrics.get(BEST_METRIC), (int, float)) \
            and not isinstance(metrics[BEST_METRIC], bool)
      except FileNotFoundError:  # deleted since it was listed (the trainer's retention, beside a reader)
        ok = True
      except (ValueError, UnicodeDecodeError):
        ok = False
      if not ok:
        bad.append(step)
  return bad


class Checkpointer:
  """Orbax CheckpointManager with keep-last-K + best-by-`valid_loss` retention.

  Args:
    directory: where step directories go (created if missing).
    keep: how many of the most recent checkpoints to keep.
    keep_best: also keep the checkpoint with the lowest `metrics['valid_loss']` seen so far.
    async_save: write in a background thread (call `wait()` before reading the files or exiting).
    read_only: a reader's (research-evaluate, research-analyze), which may open the directory while its trainer
      writes: it neither saves nor deletes, and leaves the `<step>.orbax-checkpoint-tmp*` directories alone (a
      writer's opening removes them as the remains of a crash; a reader's removed the trainer's save in progress,
      and the trainer crashed).
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3, keep_best: bool = True,
               async_save: bool = True, read_only: bool = False):
    if keep < 1:
      raise ValueError(f'keep must be >= 1, got {keep}')
    policies: list[Any] = [ocp_policies.LatestN(n=keep)]
    if keep_best:
      # reverse=True sorts descending, and BestN keeps the tail: the lowest loss.
      policies.append(ocp_policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=True, n=1,
                                         keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        # best_fn/best_mode make Orbax store the metrics and rank by them (best_step()); which checkpoints
        # survive is decided by the preservation policy alone.
        best_fn=lambda m: m[BEST_METRIC], best_mode='min',
        preservation_policy=ocp_policies.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        create=not read_only)
    # Absolute: Orbax's metadata reader finds nothing under a relative path (`research-analyze --workdir=runs/x`
    # restored no parameters), while the manager itself copes with one.
    damaged = damaged_metrics(directory) if os.path.isdir(directory) else []
    if damaged:  # (a JSON object without the metric opens, then fails the first ranking in a KeyError)
      raise DamagedCheckpoints(damaged, f"no number for {BEST_METRIC!r}")
    try:
      self._manager = self._open(directory, options, retries=3 if read_only else 0)
    except Exception as e:  # noqa: BLE001 — Orbax reads every step's metrics here: a damaged one fails it whole
      damaged = damaged_metrics(directory)
      if damaged:
        raise DamagedCheckpoints(damaged, first_line(e)) from None
      raise

  @staticmethod
  def _open(directory, options, retries: int):
    """The CheckpointManager; a reader's opening is tried again when a step it listed vanished before it read it:
    the trainer's retention deleted it meanwhile (Orbax's listing and reading are not one operation)."""
    for attempt in range(retries + 1):
      try:
        return ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options, item_names=_ITEMS)
      except FileNotFoundError:
        if attempt == retries:
          raise

  @property
  def directory(self):
    return self._manager.directory

  def save(self, step: int, state: Any, data_state: Mapping[str, Any],
           metrics: Mapping[str, Any] | None = None, force: bool = False, *,
           metadata: Mapping[str, Any] | None = None) -> bool:
    """Saves `state` (any pytree of arrays), `data_state` and optional metrics / metadata (JSON-able;
    numpy / jax values become Python numbers or lists).

    Only `metrics['valid_loss']` ranks checkpoints; checkpoints saved without it are kept by recency
    only.  Returns whether a save was started (Orbax skips a step that already exists).
    """
    savable, impls = _to_savable(state)
    metrics = _jsonable(dict(metrics)) if metrics else {}
    meta = {'step': int(step), 'metrics': metrics, 'metadata': _jsonable(dict(metadata or {})),
            'typed_keys': impls}
    tracked = {BEST_METRIC: float(metrics[BEST_METRIC])} if BEST_METRIC in metrics else None
    args = ocp.args.Composite(state=ocp.args.StandardSave(savable),
                              data=ocp.args.JsonSave(_jsonable(dict(data_state))),
                              meta=ocp.args.JsonSave(meta))
    return self._manager.save(int(step), args=args, metrics=tracked, force=force)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the lowest valid_loss; None if no kept checkpoint has one."""
    # Orbax's in-memory ranking (best_fn / best_mode='min'); it skips checkpoints saved without metrics.
    return self._manager.best_step() if self._manager.all_steps() else None

  def _resolve(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no finalized checkpoint in {self.directory}')
    return step

  def read_metadata(self, step: int | None = None) -> dict[str, Any]:
    """{'step', 'metrics', 'metadata', ...} stored with `step` (default: latest)."""
    step = self._resolve(step)
    return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

  def restore(self, step: int | None = None, target: Any = None) -> tuple[Any, dict[str, Any]]:
    """Returns (state, data_state) of `step` (default: latest).

    `target` is the state's abstract tree (`jax.eval_shape` output with `sharding=` set on each
    ShapeDtypeStruct) or a concrete state to mimic; arrays come back with the target's shardings, so a
    checkpoint written on one mesh restores onto another.  Typed PRNG keys in `target` come back typed.
    Without a target, Orbax restores the saved structure with the saved shardings.
    """
    step = self._resolve(step)
    meta = self.read_metadata(step)
    abstract = None if target is None else jax.tree.map(_abstract, target)
    absent = () if target is None else unsaved_empty_fields(target, self._saved_state_keys(step))
    if absent:  # the saved state has the shape of the target without these (None) fields: restore that shape
      abstract = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract) if f.name not in absent}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    state = restored.state
    if absent:
      state = dataclasses.replace(target, **state)  # the absent fields keep the target's None
    if target is not None:
      state = _from_restored(state, target, meta['typed_keys'])
    return state, dict(restored.data)

  def _state_metadata(self, step: int) -> Any:
    """The saved state's tree of array metadata at `step` (nested dicts, as Orbax reads `<step>/state/_METADATA`),
    or None when there is none."""
    path = os.path.join(os.fspath(self.directory), str(step), 'state')
    if not os.path.isdir(path):
      raise FileNotFoundError(f'checkpoint step {step}: {path} is missing')
    with ocp.StandardCheckpointer() as reader:
      metadata = reader.metadata(path)
    tree = getattr(metadata, 'item_metadata', metadata)
    return getattr(tree, 'tree', tree)

  def _saved_state_keys(self, step: int) -> frozenset[str] | None:
    """The top-level keys of the state saved at `step` (a dataclass state is saved as a dict of its fields), or
    None when its metadata cannot be read (the restore then meets whatever is wrong and names it)."""
    try:
      tree = self._state_metadata(step)
    except (OSError, ValueError):
      return None
    return frozenset(tree) if isinstance(tree, Mapping) else None

  def restore_params(self, step: int | None = None, sharding: Any = None) -> Any:
    """The parameters of `step` (default: latest) alone, restored with `sharding`: one Sharding for every leaf, or a
    function of a leaf's shape that returns its Sharding (a mesh's rule, `mesh.leaf_sharding`); default: this
    process's first device. The target is built from the checkpoint's own metadata, not from a model and an
    optimizer, so a run still evaluates after the optimizer state's layout changed (a new optimizer option, another
    version of this code) and whatever mesh it was trained on."""
    step = self._resolve(step)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    sharding_of = sharding if callable(sharding) else (lambda shape: sharding)
    path = os.path.join(os.fspath(self.directory), str(step), 'state')
    tree = self._state_metadata(step)
    if not isinstance(tree, Mapping) or 'params' not in tree:
      raise FileNotFoundError(f'checkpoint step {step}: {path} has no parameter metadata')
    is_array = lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype')  # noqa: E731
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(tuple(a.shape), a.dtype,
                                                         sharding=sharding_of(tuple(a.shape))),
                          {'params': tree['params']}, is_leaf=is_array)
    # Its own one-shot checkpointer: the manager binds one handler per item, and `restore` uses StandardRestore.
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding), target),
          partial_restore=True))
    return restored['params']

  def wait(self) -> None:
    """Blocks until the pending async save is committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
  """The finalized checkpoint steps in `directory`, ascending, read from disk without starting a CheckpointManager
  (whose start-up clean-up thread must not be left running by a process that exits on a user error)."""
  directory = Path(directory)
  return sorted(ocp.utils.checkpoint_steps(directory)) if directory.is_dir() else []


def has_checkpoint(directory: str | os.PathLike) -> bool:
  """Whether `directory` holds a finalized checkpoint (`checkpoint_steps`)."""
  return bool(checkpoint_steps(directory))


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out: dict[str, Any] = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}.{key}' if prefix else str(key)))
    return out
  return {prefix: tree}


_MISSING = '<missing>'


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                       ignore: Iterable[str] = ()) -> list[str]:
  """'field: saved (saved) != current (current)' for every leaf field whose value differs, over the union of both
  configs' fields (a field only one of them has differs from `<missing>`), except those under a path in `ignore`.

  Everything is compared unless allowed to change, so a field added to the schema later is protected without
  anyone remembering to list it. Values are compared after JSON normalisation (tuples == lists), since saved
  configs are JSON.
  """
  flat_saved, flat_current = _flatten(_jsonable_config(saved)), _flatten(_jsonable_config(current))
  ignore = tuple(ignore)
  skip = lambda key: any(key == f or key.startswith(f + '.') for f in ignore)  # noqa: E731
  diffs = []
  for key in sorted(set(flat_saved) | set(flat_current)):
    a, b = flat_saved.get(key, _MISSING), flat_current.get(key, _MISSING)
    if not skip(key) and a != b:
      diffs.append(f'{key}: {a!r} (saved) != {b!r} (current)')
  return diffs


def _jsonable_config(cfg: Mapping[str, Any]) -> Any:
  if hasattr(cfg, 'to_dict'):
    cfg = cfg.to_dict()

  def norm(x):
    if isinstance(x, Mapping):
      return {str(k): norm(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [norm(v) for v in x]
    return x

  return norm(cfg)
