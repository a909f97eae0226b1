"""Mesh and sharding rules.  Multi-device checks run in a subprocess with 8 simulated CPU devices, since
XLA_FLAGS must be set before jax is imported."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from research.train import mesh as mesh_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json
    import jax, jax.numpy as jnp, numpy as np, ml_collections, optax
    from research.train import mesh as mesh_lib, optim

    V, D, H, B, L = 32, 16, 24, 16, 4
    rng = np.random.default_rng(0)
    normal = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32) * 0.5
    params = {'token_embed': {'embedding': normal(V, D)},
              'mlp': {'kernel': normal(D, H), 'bias': normal(H)}, 'ln': {'scale': normal(H)},
              'odd': {'kernel': normal(3, 5)},
              'lm_head': {'kernel': normal(H, V)}}
    tokens = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
    cfg = ml_collections.ConfigDict(dict(optimizer='adamw', learning_rate=0.1, schedule='constant',
        warmup_steps=0, steps=10, weight_decay=0.1, grad_clip=1.0, b1=0.9, b2=0.99, momentum=0.0,
        embedding=dict(weight_decay=True, lr_multiplier=2.0, freeze=False, lazy=True)))
    tx = optim.make_optimizer(cfg)

    def loss_fn(p, tokens_BxL):
      x = p['token_embed']['embedding'][tokens_BxL]
      h = jnp.tanh(x @ p['mlp']['kernel'] + p['mlp']['bias']) * p['ln']['scale']
      logits = h @ p['lm_head']['kernel'] + 0.0 * jnp.sum(p['odd']['kernel'])
      targets = jnp.roll(tokens_BxL, -1, axis=1)
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    def train_step(p, opt_state, tokens_BxL):
      loss, grads = jax.value_and_grad(loss_fn)(p, tokens_BxL)
      updates, opt_state = tx.update(grads, opt_state, p, row_mask=optim.present_rows(tokens_BxL, V))
      return optax.apply_updates(p, updates), opt_state, loss, grads

    def run(mesh):
      shardings = mesh_lib.param_sharding(params, mesh)
      p = jax.device_put(params, shardings)
      opt_shardings = mesh_lib.param_sharding(jax.eval_shape(tx.init, params), mesh)
      opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(p)
      batch = mesh_lib.shard_batch({'tokens': np.asarray(tokens)}, mesh)
      step = jax.jit(train_step, out_shardings=(shardings, opt_shardings, None, shardings))
      new_p, opt_state, loss, grads = step(p, opt_state, batch['tokens'])
      second_loss = jax.jit(loss_fn)(new_p, batch['tokens'])
      return {
          'mesh': dict(mesh.shape),
          'shards': {jax.tree_util.keystr(k): list(x.addressable_shards[0].data.shape)
                     for k, x in jax.tree_util.tree_flatten_with_path(p)[0]},
          'mu_shard': list(opt_state[1].inner_states['other'].inner_state[0].mu['mlp']['kernel']
                           .addressable_shards[0].data.shape),
          'batch_shard': list(batch['tokens'].addressable_shards[0].data.shape),
          'batch_devices': len({s.device for s in batch['tokens'].addressable_shards}),
          'batch_intact': bool(np.array_equal(np.asarray(batch['tokens']), np.asarray(tokens))),
          'loss': float(loss), 'second_loss': float(second_loss),
          'grads': [np.asarray(g).tolist() for g in jax.tree.leaves(grads)],
          'params': [np.asarray(x).tolist() for x in jax.tree.leaves(new_p)],
      }

    out = {'device_count': jax.device_count(),
           '1x1': run(mesh_lib.make_mesh(1, 1, devices=jax.devices()[:1]))}
    for data, fsdp in [(8, 1), (2, 4), (1, 8), (-1, 4)]:
      out[f'{data}x{fsdp}'] = run(mesh_lib.make_mesh(data, fsdp))
    try:
      mesh_lib.make_mesh(3, 2)
    except ValueError as e:
      out['error'] = str(e)
    print(json.dumps(out))
''')


@pytest.fixture(scope='module')
def eight_devices():
  env = {**os.environ, 'PYTHONPATH': str(ROOT), 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, capture_output=True, text=True, env=env,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_subprocess_sees_eight_devices(eight_devices):
  assert eight_devices['device_count'] == 8


@pytest.mark.parametrize('name, mesh_shape, shards', [
    ('8x1', {'data': 8, 'fsdp': 1},
     {'embedding': [32, 16], 'mlp_kernel': [16, 24], 'lm_head': [24, 32], 'mu': [16, 24]}),
    ('2x4', {'data': 2, 'fsdp': 4},
     {'embedding': [8, 16], 'mlp_kernel': [16, 6], 'lm_head': [24, 8], 'mu': [16, 6]}),
    ('1x8', {'data': 1, 'fsdp': 8},
     {'embedding': [4, 16], 'mlp_kernel': [16, 3], 'lm_head': [24, 4], 'mu': [16, 3]}),
    ('-1x4', {'data': 2, 'fsdp': 4},
     {'embedding': [8, 16], 'mlp_kernel': [16, 6], 'lm_head': [24, 8], 'mu': [16, 6]}),
])
def test_shard_shapes(eight_devices, name, mesh_shape, shards):
  out = eight_devices[name]
  assert out['mesh'] == mesh_shape
  s = out['shards']
  assert s["['token_embed']['embedding']"] == shards['embedding']
  assert s["['mlp']['kernel']"] == shards['mlp_kernel']
  assert s["['lm_head']['kernel']"] == shards['lm_head']
  assert out['mu_shard'] == shards['mu']  # optimizer state follows the same rule
  # 1-d leaves and leaves without a divisible dimension stay whole.
  assert s["['mlp']['bias']"] == [24] and s["['ln']['scale']"] == [24] and s["['odd']['kernel']"] == [3, 5]
  # The batch is split over all 8 devices whatever the mesh shape.
  assert out['batch_shard'] == [2, 4] and out['batch_devices'] == 8 and out['batch_intact']


@pytest.mark.parametrize('name', ['8x1', '2x4', '1x8'])
def test_sharded_step_matches_single_device(eight_devices, name):
  ref, out = eight_devices['1x1'], eight_devices[name]
  assert out['loss'] == pytest.approx(ref['loss'], rel=1e-5)
  assert out['second_loss'] == pytest.approx(ref['second_loss'], rel=1e-5)
  assert out['second_loss'] < out['loss']
  for key in ('grads', 'params'):
    assert len(out[key]) == len(ref[key])
    for x, x_ref in zip(out[key], ref[key]):
      np.testing.assert_allclose(np.asarray(x), np.asarray(x_ref), rtol=1e-4, atol=1e-6)


def test_mesh_size_mismatch_names_the_numbers(eight_devices):
  assert 'data=3' in eight_devices['error'] and 'fsdp=2' in eight_devices['error']
  assert '6' in eight_devices['error'] and '8 devices' in eight_devices['error']


def test_make_mesh_errors_in_process():
  with pytest.raises(ValueError, match='at most one'):
    mesh_lib.make_mesh(-1, -1)
  with pytest.raises(ValueError, match='not divisible'):
    mesh_lib.make_mesh(-1, 3, devices=jax.devices() * 2)
  with pytest.raises(ValueError, match='positive'):
    mesh_lib.make_mesh(0, 1)
  mesh = mesh_lib.make_mesh(-1, 1)
  assert mesh.axis_names == ('data', 'fsdp') and mesh.devices.size == jax.device_count()


@pytest.mark.parametrize('shape, fsdp, spec', [
    ((), 4, P()), ((64,), 4, P()), ((16, 64), 4, P(None, 'fsdp')), ((64, 16), 4, P('fsdp')),
    ((12, 10), 4, P('fsdp')), ((6, 8), 4, P(None, 'fsdp')), ((10, 12), 8, P()), ((32, 32), 8, P('fsdp')),
    ((2, 3, 40), 8, P(None, None, 'fsdp')), ((16, 64), 1, P()),
])
def test_leaf_rule(shape, fsdp, spec):
  assert mesh_lib.leaf_spec(shape, fsdp) == spec


@pytest.mark.parametrize('env, expected', [
    ({}, False), ({'SLURM_NTASKS': '1'}, False), ({'SLURM_NTASKS': '4'}, True),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, True), ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, False), ({'TPU_WORKER_HOSTNAMES': 'h0,h1,h2,h3'}, True),
])
def test_multihost_env(env, expected):
  assert mesh_lib.multihost_env(env) is expected


def test_distributed_not_initialized_on_one_host(monkeypatch):
  for var in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'JAX_NUM_PROCESSES',
              'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(var, raising=False)
  assert mesh_lib.maybe_initialize_distributed(None) is False
  assert mesh_lib.maybe_initialize_distributed(False) is False
  assert not jax.distributed.is_initialized()
