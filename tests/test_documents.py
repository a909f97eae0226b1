"""Document boundaries inside packed rows: data.document_positions=reset and data.document_mask (docs/data.md)."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.data import batches
from research.data.tokenizers import CLS_ID, MASK_ID, SEP_ID
from research.embeddings import registry
from research.model import attention
from research.model.config import ModelConfig
from research.model.transformer import Transformer
from research.train import configuration, steps
from tests.train_utils import cli, tiny_config

V, L = 37, 24
B_DOC = [11, 12, 13, 14, 15, 16, 17, 18]  # the later document, the same in every row
# The document before it: the reference, other tokens of the same length, a longer and a shorter one.
A_DOCS = [[20, 21, 22, 23, 24], [30, 29, 28, 27, 26], [5, 6, 7, 8, 9, 10, 19, 25], [31, 32]]
MASKED = (1, 4)  # MLM: the tokens of B_DOC replaced by [MASK]


def test_document_ids_and_positions_restart_at_every_separator():
  S = SEP_ID
  tokens = np.array([[7, 8, S, 9, 9, S, S, 5, 0, 0], [S, 5, 6, 7, 8, 9, 5, 6, 7, 8]], np.int32)
  positions = np.broadcast_to(np.arange(10, dtype=np.int32), tokens.shape)
  assert np.array_equal(batches.document_ids(tokens), [[0, 0, 1, 1, 1, 2, 3, 3, 3, 3], [1] * 10])
  assert np.array_equal(batches.document_positions(tokens, positions),
                        [[0, 1, 0, 1, 2, 0, 0, 1, 2, 3], list(range(10))])
  # Any row: 0 exactly at a separator (and the first column), +1 everywhere else; an offset row counts from its start.
  rng = np.random.default_rng(0)
  rows = np.where(rng.random((16, 40)) < 0.15, S, rng.integers(5, V, (16, 40))).astype(np.int32)
  reset = np.asarray(batches.document_positions(rows, np.broadcast_to(np.arange(100, 140), rows.shape)))
  starts = (rows == S) | (np.arange(40) == 0)
  assert np.all(reset[starts] == 0) and np.all(np.diff(reset, axis=1)[~starts[:, 1:]] == 1)


def _rows(objective):
  """One row per previous document: CLM windows `[SEP] A [SEP] B [SEP] C…` (L + 1 tokens: inputs and targets),
  MLM rows `[CLS] A [SEP] B [SEP] C… [SEP]` with two of B's tokens masked by hand (so every row masks the same tokens
  of B). Returns the batch and each row's columns of B's document: its opening [SEP] and its tokens."""
  rng = np.random.default_rng(1)
  rows, columns = [], []
  for a in A_DOCS:
    head = ([SEP_ID] if objective == "clm" else [CLS_ID]) + a
    columns.append(np.arange(len(head), len(head) + 1 + len(B_DOC)))
    row = head + [SEP_ID] + B_DOC + [SEP_ID]
    rows.append(row + list(rng.integers(5, V, L + 1 - len(row))))
  tokens = np.asarray(rows, np.int32)
  if objective == "clm":
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
  else:
    tokens = tokens[:, :L]
    tokens[:, -1] = SEP_ID
    inputs, targets = tokens.copy(), tokens.copy()
    for r, cols in enumerate(columns):
      inputs[r, cols[1:][list(MASKED)]] = MASK_ID
  batch = {"inputs": inputs, "targets": targets, "weights": np.ones(inputs.shape, np.float32),
           "positions": np.broadcast_to(np.arange(L, dtype=np.int32), inputs.shape).copy()}
  return batch, columns


def _perturbed(params, scale=0.3):
  """Every parameter moved off its init (CoPE's table and FIRE's start small, which would hide their effect)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) * jnp.maximum(jnp.std(x), 0.1)
                                   for x, k in zip(leaves, keys)])


def _token_nll(model, params, batch, settings):
  """Per-token −log p(target), through the train step's own input preparation (positions, masks, segments)."""
  inputs, targets, _, positions, key_mask = steps.prepare_inputs(batch, jax.random.key(0), settings)
  logits = model.apply({"params": params}, inputs, positions, key_mask_BxL=key_mask,
                       segments_BxL=steps.segments(batch, settings))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return np.asarray(-jnp.take_along_axis(logp, jnp.asarray(targets)[..., None], axis=-1)[..., 0])


CASES = [(s, o) for s in registry.names() for o in ("clm", "mlm") if not (s == "xpos" and o == "mlm")]


@pytest.mark.parametrize("scheme,objective", CASES)
def test_with_reset_positions_and_a_document_mask_a_documents_losses_ignore_the_document_before(scheme, objective):
  cfg = ModelConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=L, position=scheme,
                    kind="decoder" if objective == "clm" else "encoder")
  model = Transformer(cfg)
  params = _perturbed(model.init(jax.random.key(0), jnp.zeros((1, L), jnp.int32))["params"])
  batch, columns = _rows(objective)
  on = steps.StepSettings(objective=objective, vocab_size=V, mlm_select_rate=0.0, document_positions="reset",
                          document_mask=True)
  nll = _token_nll(model, params, batch, on)
  later = np.stack([nll[r, cols] for r, cols in enumerate(columns)])  # [rows, B's tokens]
  # The same tokens of the same later document: the same losses, whatever came before (same or other lengths).
  np.testing.assert_allclose(later[1:], np.broadcast_to(later[0], later[1:].shape), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("objective", ["clm", "mlm"])
@pytest.mark.parametrize("positions,mask", [("continuous", False), ("reset", False), ("continuous", True)])
def test_without_both_flags_the_document_before_reaches_the_later_ones_losses(objective, positions, mask):
  """The check above can fail: with either flag off, some previous document (of the same length, or of another
  length, which moves the later document to other positions) changes the later document's losses."""
  cfg = ModelConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=L, position="learned",
                    kind="decoder" if objective == "clm" else "encoder")
  model = Transformer(cfg)
  params = _perturbed(model.init(jax.random.key(0), jnp.zeros((1, L), jnp.int32))["params"])
  batch, columns = _rows(objective)
  settings = steps.StepSettings(objective=objective, vocab_size=V, mlm_select_rate=0.0, document_positions=positions,
                                document_mask=mask)
  nll = _token_nll(model, params, batch, settings)
  later = np.stack([nll[r, cols] for r, cols in enumerate(columns)])
  assert np.abs(later[1:] - later[0]).max() > 1e-4


def _one_document_rows(objective, rows=4):
  """Rows that hold one document each (no [SEP] after the first column): the flags have nothing to change."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(5, V, (rows, L + 1)).astype(np.int32)
  tokens[:, 0] = SEP_ID if objective == "clm" else CLS_ID
  inputs, targets = (tokens[:, :-1], tokens[:, 1:]) if objective == "clm" else (tokens[:, :L], tokens[:, :L])
  return {"inputs": inputs, "targets": targets.copy(), "weights": np.ones((rows, L), np.float32),
          "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (rows, L)).copy()}


@pytest.mark.parametrize("objective,attention_impl", [("clm", "einsum"), ("mlm", "einsum")])
def test_rows_without_a_boundary_score_bit_identically_with_the_flags_on(objective, attention_impl):
  """The flags change nothing but the positions and the mask: where those are the same as without them, so is every
  bit of the loss and its gradient on the einsum path (the flags-off path itself is the unchanged code, which the
  existing tests pin; XLA's attention fuses a [B, 1, L, L] mask differently, so there gradients agree to rounding)."""
  cfg = ModelConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=L, position="alibi",
                    kind="decoder" if objective == "clm" else "encoder", attention=attention_impl)
  model = Transformer(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, L), jnp.int32))["params"]
  off = steps.StepSettings(objective=objective, vocab_size=V)
  on = dataclasses.replace(off, document_positions="reset", document_mask=True)
  batch = _one_document_rows(objective)

  def loss_and_grad(settings):
    inputs, targets, weights, positions, key_mask = steps.prepare_inputs(batch, jax.random.key(1), settings)
    fn = lambda p: steps.lm_loss_sums(p, model, inputs, targets, weights, positions, key_mask,  # noqa: E731
                                      steps.segments(batch, settings), deterministic=True)[0]
    return jax.jit(jax.value_and_grad(fn))(params)

  (loss_off, grad_off), (loss_on, grad_on) = loss_and_grad(off), loss_and_grad(on)
  assert float(loss_off) == float(loss_on)
  for a, b in zip(jax.tree.leaves(grad_off), jax.tree.leaves(grad_on)):
    assert np.array_equal(a, b)


def test_the_causal_query_blocks_keep_a_document_mask():
  """The einsum path's causal blocks (a document mask keeps the causal mask lower-triangular with its diagonal, so
  every query keeps a key) give the numbers of XLA's attention, which reads the whole mask."""
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, L, 2, 8))
  segments = batches.document_ids(_rows("clm")[0]["inputs"][:2])
  mask = attention.attention_mask(L, L, True, None, segments)
  bias = jax.random.normal(jax.random.key(1), (1, 2, L, L))
  blocks, xla, whole = jax.jit(lambda *a: (attention.einsum_attention(*a, causal=True, block=5),
                                           attention.xla_attention(*a), attention.einsum_attention(*a)))(
                                               q, k, v, bias, mask)
  np.testing.assert_allclose(blocks, xla, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(blocks, whole, rtol=1e-5, atol=1e-5)


def test_bad_document_settings_are_one_line_errors():
  with pytest.raises(configuration.ConfigError, match="data.document_positions='per_document' is not one of "
                                                      "continuous, reset"):
    configuration.validate(tiny_config(**{"data.document_positions": "per_document"}))
  # The config's types already refuse a non-bool override; a hand-edited config.json is checked all the same.
  with pytest.raises(configuration.ConfigError, match="data.document_mask='yes' must be true or false"):
    configuration.validate_documents(ml_collections.ConfigDict({"document_positions": "reset",
                                                                "document_mask": "yes"}))


def test_a_bad_document_setting_on_the_command_line_is_one_line_before_anything_runs(tmp_path):
  result = cli("--config=configs/tiny.py", "--config.data.document_positions=sometimes", f"--workdir={tmp_path}")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "data.document_positions='sometimes' is not one of continuous, reset" in lines[0], lines
  assert not any(tmp_path.iterdir())
