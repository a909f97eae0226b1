"""Checkpointer on real Orbax: bit-identical round trips, retention, atomicity, resharding, config checks."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research.train import checkpoint
from research.train.checkpoint import Checkpointer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_state():
  rng = np.random.default_rng(0)
  params = {'token_embed': {'embedding': jnp.asarray(rng.standard_normal((6, 4)), jnp.float32)},
            'dense': {'kernel': jnp.asarray(rng.standard_normal((4, 4)), jnp.bfloat16),
                      'bias': jnp.asarray(rng.standard_normal(4), jnp.float32)}}
  tx = optax.adamw(1e-2)
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.3, params)
  _, opt_state = tx.update(grads, opt_state, params)  # nonzero moments, count = 1
  return {'params': params, 'opt_state': opt_state, 'step': jnp.asarray(12345, jnp.int32),
          'rng': jax.random.PRNGKey(42), 'key': jax.random.key(7)}


def as_bits(x):
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return 'key', np.asarray(jax.random.key_data(x))
  return str(x.dtype), np.asarray(x)


def assert_bit_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    (kx, bx), (ky, by) = as_bits(x), as_bits(y)
    assert kx == ky
    np.testing.assert_array_equal(bx.reshape(-1).view(np.uint8), by.reshape(-1).view(np.uint8))


@pytest.mark.parametrize('async_save', [True, False])
def test_round_trip_is_bit_identical(tmp_path, async_save):
  state = make_state()
  data_state = {'epoch': 3, 'position': 17, 'seed': 0, 'order': [2, 0, 1]}
  with Checkpointer(tmp_path, keep=2, keep_best=True, async_save=async_save) as ckpt:
    assert ckpt.save(5, state, data_state, {'valid_loss': 2.5, 'train_loss': jnp.float32(3.0)},
                     metadata={'config': {'model': {'d_model': 4}}})
    ckpt.wait()
  # A fresh Checkpointer, as after a restart.
  with Checkpointer(tmp_path, keep=2, keep_best=True, async_save=async_save) as ckpt:
    assert ckpt.latest_step() == 5
    abstract = jax.eval_shape(lambda: state)
    abstract = jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=x.sharding),
                            abstract, state)
    restored, restored_data = ckpt.restore(target=abstract)
    meta = ckpt.read_metadata()
  assert_bit_identical(restored, state)
  assert restored_data == data_state
  assert isinstance(restored['opt_state'][0], optax.ScaleByAdamState)
  assert int(restored['opt_state'][0].count) == 1
  assert meta['metrics'] == {'valid_loss': 2.5, 'train_loss': 3.0}
  assert meta['metadata'] == {'config': {'model': {'d_model': 4}}}


def test_restore_like_a_concrete_state(tmp_path):
  state = make_state()
  with Checkpointer(tmp_path, keep=1, keep_best=False, async_save=False) as ckpt:
    ckpt.save(1, state, {})
    zeros = jax.tree.map(lambda x: x if x.dtype == jax.random.key(0).dtype else jnp.zeros_like(x), state)
    restored, _ = ckpt.restore(target=zeros)
  assert_bit_identical(restored, state)


@flax.struct.dataclass
class OldState:
  """A state of the shape written before a field was added (steps.TrainState before `counts`: commit 8bf42b2)."""
  step: jax.Array
  params: dict
  rng: jax.Array


@flax.struct.dataclass
class NewState:
  step: jax.Array
  params: dict
  rng: jax.Array
  counts: dict | None = None


def test_a_checkpoint_without_a_field_added_since_restores_where_the_run_leaves_it_none(tmp_path):
  state = make_state()
  old = OldState(step=state['step'], params=state['params'], rng=state['key'])
  with Checkpointer(tmp_path, keep=1, keep_best=False, async_save=False) as ckpt:
    ckpt.save(4, old, {'position': 3})
  like = NewState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.zeros_like, state['params']),
                  rng=jax.random.key(0))
  with Checkpointer(tmp_path, keep=1, keep_best=False, async_save=False) as ckpt:
    restored, data = ckpt.restore(target=like)
    assert isinstance(restored, NewState) and restored.counts is None and data == {'position': 3}
    assert_bit_identical((restored.step, restored.params, restored.rng), (old.step, old.params, old.rng))
    # A state that uses the field (counts arrays) is not restored from a checkpoint without it: a real mismatch.
    with pytest.raises(ValueError, match='tree structures do not match'):
      ckpt.restore(target=like.replace(counts={'present': jnp.zeros(6, jnp.int32)}))


def test_parameters_restore_through_a_relative_directory(tmp_path, monkeypatch):
  # `research-analyze --workdir=runs/x` passes a relative path; Orbax's metadata reader found nothing under one.
  state = make_state()
  (tmp_path / 'runs' / 'x').mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  with Checkpointer('runs/x/checkpoints', keep=1, keep_best=False, async_save=False) as ckpt:
    ckpt.save(3, state, {})
  monkeypatch.chdir(tmp_path / 'runs')
  with Checkpointer('x/checkpoints', keep=1, keep_best=False, async_save=False) as ckpt:
    assert ckpt.latest_step() == 3
    params = ckpt.restore_params()
  assert_bit_identical(params, state['params'])


def test_no_checkpoint_raises(tmp_path):
  with Checkpointer(tmp_path, keep=1, keep_best=False, async_save=False) as ckpt:
    assert ckpt.latest_step() is None and ckpt.best_step() is None
    with pytest.raises(FileNotFoundError):
      ckpt.restore(target=make_state())


LOSSES = {1: 5.0, 2: 1.0, 3: 4.0, 4: None, 5: 3.0, 6: 2.0}


@pytest.mark.parametrize('keep_best, survivors', [(True, [2, 5, 6]), (False, [5, 6])])
def test_keeps_last_k_plus_best(tmp_path, keep_best, survivors):
  state = {'w': jnp.zeros(2)}
  with Checkpointer(tmp_path, keep=2, keep_best=keep_best, async_save=True) as ckpt:
    for step, loss in LOSSES.items():
      ckpt.save(step, state, {'step': step}, None if loss is None else {'valid_loss': loss})
    ckpt.wait()
    assert ckpt.all_steps() == survivors
    assert ckpt.best_step() == (2 if keep_best else 6)
  on_disk = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
  assert on_disk == survivors
  # Retention and the best step survive a restart: metrics live in the checkpoints.
  with Checkpointer(tmp_path, keep=2, keep_best=keep_best, async_save=False) as ckpt:
    assert ckpt.all_steps() == survivors
    ckpt.save(7, state, {'step': 7}, {'valid_loss': 9.0})
    assert ckpt.all_steps() == ([2, 6, 7] if keep_best else [6, 7])
    assert ckpt.restore(2 if keep_best else 6, target=state)[1]['step'] == (2 if keep_best else 6)


CRASH = textwrap.dedent('''
    import os, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import async_path
    from research.train.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1], keep=3, keep_best=False, async_save=True)
    ckpt.save(1, {'w': jnp.arange(4.0), 'big': jnp.zeros((8, 64))}, {'position': 1})
    ckpt.wait()
    # Die at the one moment that matters, deterministically: step 2 is fully written under its temporary name and
    # Orbax is about to rename it into place (its commit). The process ends there, as with kill -9.
    rename = async_path.rename
    async def rename_or_die(src, dst):
      if src.name.startswith('2') and 'tmp' in src.name:
        os._exit(3)
      return await rename(src, dst)
    async_path.rename = rename_or_die
    ckpt.save(2, {'w': jnp.arange(4.0) + 1, 'big': jnp.ones((8, 64))}, {'position': 2})
    ckpt.wait()
    os._exit(4)  # not reached: the commit above always dies
''')


def test_crash_mid_save_leaves_previous_checkpoint_restorable(tmp_path):
  proc = subprocess.run([sys.executable, '-c', CRASH, str(tmp_path)], cwd=ROOT, capture_output=True,
                        text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)}, timeout=120)
  assert proc.returncode == 3, proc.stderr
  leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith('2')]
  assert leftovers and all('tmp' in name for name in leftovers), leftovers  # an uncommitted step 2
  target = {'w': jnp.zeros(4), 'big': jnp.zeros((8, 64))}
  # A reader (research-evaluate, research-analyze while the run trains) leaves what may be a save in progress.
  with Checkpointer(tmp_path, keep=3, keep_best=False, async_save=False, read_only=True) as reader:
    assert reader.latest_step() == 1 and reader.all_steps() == [1]
    np.testing.assert_array_equal(reader.restore(target=target)[0]['w'], np.arange(4.0))
    assert not reader.save(2, target, {'position': 2})
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('2')) == sorted(leftovers)
  with Checkpointer(tmp_path, keep=3, keep_best=False, async_save=False) as ckpt:
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    state, data_state = ckpt.restore(target=target)
    np.testing.assert_array_equal(state['w'], np.arange(4.0))
    assert data_state == {'position': 1}
    # Resuming re-saves step 2 normally.
    assert ckpt.save(2, target, {'position': 2})
    assert ckpt.all_steps() == [1, 2]
  assert sorted(p.name for p in tmp_path.iterdir()) == ['1', '2']  # the partial write was cleaned up


def test_evaluating_or_analysing_a_run_leaves_the_trainers_save_in_progress_alone(tmp_path):
  """research-evaluate and research-analyze open a run's checkpoints while it may still train. Their opening removed
  every `<step>.orbax-checkpoint-tmp*` directory, the trainer's save in progress among them, and the trainer then
  crashed. Here the save in progress is a step directory under its temporary name."""
  import shutil
  from research.analysis import rare
  from research.evaluate import extrapolation
  from research.train import loop
  from tests.train_utils import tiny_config
  workdir = tmp_path / 'run'
  loop.train(tiny_config(**{'train.steps': 4, 'train.checkpoint_every': 4, 'train.eval_every': 4,
                            'train.async_checkpoints': False}), workdir)
  in_progress = workdir / 'checkpoints' / '8.orbax-checkpoint-tmp-1764000000000000'
  shutil.copytree(workdir / 'checkpoints' / '4', in_progress)
  assert extrapolation.evaluate_run(workdir, (1,))['checkpoint_step'] == 4
  assert rare._table_at(workdir, 4) is not None
  assert in_progress.is_dir()


def test_config_differences_name_every_field_outside_the_ignored_ones():
  saved = {'model': {'d_model': 64, 'vocab_size': 100, 'num_layers': 2, 'position': 'rope'},
           'train': {'learning_rate': 1e-3}}
  current = ml_collections.ConfigDict({'model': {'d_model': 128, 'vocab_size': 100, 'num_layers': 3,
                                                 'position': 'rope', 'dropout': 0.1},
                                       'train': {'learning_rate': 3e-4}})
  diffs = checkpoint.config_differences(saved, current, ignore=['train'])
  assert 'model.d_model: 64 (saved) != 128 (current)' in diffs
  assert 'model.num_layers: 2 (saved) != 3 (current)' in diffs
  assert "model.dropout: '<missing>' (saved) != 0.1 (current)" in diffs
  assert not any('vocab_size' in d or 'learning_rate' in d for d in diffs)
  # An ignored prefix skips every field under it; nothing else is ever skipped.
  assert any('learning_rate' in d for d in checkpoint.config_differences(saved, current))
  assert checkpoint.config_differences(saved, current, ignore=['model', 'train']) == []
  assert checkpoint.config_differences({'a': (1, 2)}, {'a': [1, 2]}) == []  # JSON round trip of tuples
  # A prefix ends at a field's boundary: ignoring model.pos_dim does not ignore model.position (or model.pos_dims).
  diffs = checkpoint.config_differences({'model': {'pos_dim': 1, 'position': 'rope', 'pos_dims': 1}},
                                        {'model': {'pos_dim': 2, 'position': 'alibi', 'pos_dims': 2}},
                                        ignore=['model.pos_dim', 'model.pos'])
  assert [d.split(':')[0] for d in diffs] == ['model.pos_dims', 'model.position']


RESHARD = textwrap.dedent('''
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from research.train import mesh as mesh_lib
    from research.train.checkpoint import Checkpointer

    state = {'params': {'kernel': jnp.arange(8 * 16, dtype=jnp.float32).reshape(8, 16),
                        'bias': jnp.arange(16, dtype=jnp.float32)},
             'step': jnp.asarray(3, jnp.int32), 'rng': jax.random.PRNGKey(1)}
    def placed(mesh):
      return jax.device_put(state, mesh_lib.param_sharding(state, mesh))
    out = {}
    src = placed(mesh_lib.make_mesh(2, 4))
    out['saved_kernel_shard'] = list(src['params']['kernel'].addressable_shards[0].data.shape)
    with Checkpointer(sys.argv[1], keep=1, keep_best=False, async_save=True) as ckpt:
      ckpt.save(1, src, {})
      ckpt.wait()
      for name, (data, fsdp) in {'8x1': (8, 1), '1x8': (1, 8)}.items():
        mesh = mesh_lib.make_mesh(data, fsdp)
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                state, mesh_lib.param_sharding(state, mesh))
        restored, _ = ckpt.restore(target=abstract)
        same = all(np.array_equal(np.asarray(a), np.asarray(b)) and a.dtype == b.dtype
                   for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)))
        kernel = restored['params']['kernel']
        out[name] = {'same': same, 'kernel_shard': list(kernel.addressable_shards[0].data.shape),
                     'sharding_matches': kernel.sharding == abstract['params']['kernel'].sharding}
    print(json.dumps(out))
''')


def test_restore_onto_a_different_mesh(tmp_path):
  env = {**os.environ, 'PYTHONPATH': str(ROOT), 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-c', RESHARD, str(tmp_path)], cwd=ROOT, capture_output=True,
                        text=True, env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['saved_kernel_shard'] == [8, 4]  # 2x4 mesh: the 16-wide dim split in 4
  assert out['8x1'] == {'same': True, 'kernel_shard': [8, 16], 'sharding_matches': True}
  assert out['1x8'] == {'same': True, 'kernel_shard': [8, 2], 'sharding_matches': True}
