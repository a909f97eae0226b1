"""The pure train / eval steps on a tiny model (no corpus): accumulation, chunked loss, lazy rows, MLM."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.model.config import ModelConfig
from research.model.transformer import Transformer
from research.train import optim, steps

V, B, L = 41, 8, 12


def setup(objective="clm", grad_accum=1, loss_chunk=0, dtype="float32", model_kw=None, count_updates=False,
          lazy_rows="lookups", **train):
  cfg = ModelConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=L,
                    kind="decoder" if objective == "clm" else "encoder", tie_embeddings=train.pop("tie", True),
                    dtype=dtype, **(model_kw or {}))
  train_cfg = {"optimizer": "adamw", "learning_rate": 1e-2, "schedule": "constant", "warmup_steps": 0, "steps": 10,
               "weight_decay": 0.1, "grad_clip": 1.0, "b1": 0.9, "b2": 0.95,
               "embedding": {"weight_decay": True, "lr_multiplier": 1.0, "freeze": False, "lazy": False},
               "position": {"weight_decay": False}}
  for k, v in train.items():
    if k.startswith("embedding_"):
      train_cfg["embedding"][k[len("embedding_"):]] = v
    elif k.startswith("position_"):
      train_cfg["position"][k[len("position_"):]] = v
    else:
      train_cfg[k] = v
  model, tx = Transformer(cfg), optim.make_optimizer(train_cfg)
  settings = steps.StepSettings(objective=objective, vocab_size=V, grad_accum=grad_accum, loss_chunk=loss_chunk,
                                count_updates=count_updates, lazy_rows=lazy_rows)
  state = steps.init_state(jax.random.key(0), model=model, optimizer=tx, seq_len=L, count_updates=count_updates)
  step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=tx,
                                   schedule=optim.make_schedule(train_cfg), settings=settings))
  return state, step


def batch(seed=0, low=5, high=V):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(low, high, (B, L + 1)).astype(np.int32)
  weights = np.ones((B, L), np.float32)
  weights[-1, 5:] = 0.0  # a padded row tail: must not count
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights,
          "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy()}


def test_gradient_accumulation_equals_one_big_batch():
  (s1, step1), (s4, step4) = setup(grad_accum=1), setup(grad_accum=4)
  for i in range(3):
    s1, m1 = step1(s1, batch(i))
    s4, m4 = step4(s4, batch(i))
    assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-5)
    assert float(m1["tokens"]) == float(m4["tokens"]) == B * L - 7
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("head", ["tied", "untied", "tied_concat"])
def test_chunked_loss_equals_the_full_logits_loss(head):
  """Every head layout: the tied table, a separate lm_head, and concat's head_proj in front of the tied table."""
  kw = {"tie": head != "untied", "model_kw": {"combine": "concat", "position": "learned", "pos_dim": 8}
        if head == "tied_concat" else None}
  (s1, full), (s2, chunked) = setup(**kw), setup(loss_chunk=16, **kw)
  for i in range(2):
    s1, m1 = full(s1, batch(i))
    s2, m2 = chunked(s2, batch(i))
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-5)
    assert float(m1["grad_norm/total"]) == pytest.approx(float(m2["grad_norm/total"]), rel=1e-4)


def test_a_chunk_that_does_not_divide_the_tokens_pads_its_last_chunk_and_never_makes_the_full_logits():
  """B × L = 96 tokens in chunks of 20: the last chunk is filled with unscored rows. It used to fall back to the full
  [96, V] logits without a word (train.loss_chunk's promise is that they never exist)."""
  (s1, full), (s2, chunked) = setup(), setup(loss_chunk=20)
  for i in range(2):
    s1, m1 = full(s1, batch(i))
    s2, m2 = chunked(s2, batch(i))
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-5)
    assert float(m1["tokens"]) == float(m2["tokens"]) == B * L - 7
    assert float(m1["grad_norm/total"]) == pytest.approx(float(m2["grad_norm/total"]), rel=1e-4)
  text = str(jax.make_jaxpr(chunked)(s2, batch()))  # the jitted step's program, its scan's body included
  assert f"f32[{B * L},{V}]" not in text and f"f32[20,{V}]" in text
  assert f"f32[{B * L},{V}]" in str(jax.make_jaxpr(full)(s1, batch()))  # (the full logits, as the check sees them)


def test_padding_weights_do_not_change_the_loss():
  state, step = setup()
  b = batch()
  b2 = {**b, "targets": b["targets"].copy()}
  b2["targets"][-1, 5:] = 0  # different targets where the weight is 0
  _, m = step(state, b)
  _, m2 = step(state, b2)
  assert float(m["loss"]) == float(m2["loss"])


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("lazy", [False, True])
def test_lazy_rows_freeze_absent_rows_in_the_real_step(lazy, tie):
  # Tied (the default), an absent row still gets a gradient from the softmax over the whole vocabulary: lazy rows
  # must keep it anyway; dense updates move it, tied or not (untied through weight decay and Adam's moments).
  state, step = setup(tie=tie, embedding_lazy=lazy)
  for i in range(2):  # ids 20..40 never appear in inputs or targets
    new_state, _ = step(state, batch(i, low=5, high=20))
    table, old = new_state.params["token_embed"]["embedding"], state.params["token_embed"]["embedding"]
    moved = np.any(np.asarray(table[20:]) != np.asarray(old[20:]))
    assert moved != lazy
    assert np.any(np.asarray(table[5:20]) != np.asarray(old[5:20]))
    state = new_state


@pytest.mark.parametrize("tie", [True, False])
def test_lazy_lookups_move_a_row_that_is_only_a_target_exactly_when_the_head_is_tied(tie):
  """lazy_rows='lookups' updates the inputs' rows, and the targets' when the head is tied (the head's gradient
  reaches them); untied, a row that is only a target has no gradient and stays."""
  state, step = setup(tie=tie, embedding_lazy=True)
  b = batch(0, low=5, high=20)
  b["targets"][:, -1] = 30  # row 30: a target, never an input; rows 31..40 neither
  assert 30 not in b["inputs"] and b["weights"][0, -1] == 1.0
  new_state, _ = step(state, b)
  table, old = (np.asarray(s.params["token_embed"]["embedding"]) for s in (new_state, state))
  assert np.any(table[30] != old[30]) == tie
  np.testing.assert_array_equal(table[31:], old[31:])
  assert np.all(np.any(table[np.unique(b["inputs"])] != old[np.unique(b["inputs"])], axis=1))


def test_mlm_inputs_are_80_10_10_masked_and_targets_are_the_original_tokens():
  from research.data.tokenizers import MASK_ID, SPECIAL_IDS
  rng = np.random.default_rng(0)
  tokens = rng.integers(5, V, (256, 64)).astype(np.int32)
  tokens[:, 0], tokens[:, -1], tokens[-4:, 40:] = 2, 3, 0  # [CLS] … [SEP], and padded tails
  weights = (tokens != 0).astype(np.float32)
  b = {"inputs": tokens, "targets": tokens.copy(), "weights": weights,
       "positions": np.broadcast_to(np.arange(64, dtype=np.int32), tokens.shape).copy()}
  settings = steps.StepSettings(objective="mlm", vocab_size=V)
  inputs, targets, w, _, key_mask = jax.jit(steps.prepare_inputs, static_argnums=2)(b, jax.random.key(3), settings)
  inputs, targets, selected = np.asarray(inputs), np.asarray(targets), np.asarray(w) > 0
  assert np.array_equal(targets, tokens) and np.array_equal(np.asarray(key_mask), tokens != 0)
  assert not selected[np.isin(tokens, SPECIAL_IDS)].any()  # [CLS], [SEP], [PAD] never selected
  eligible = ~np.isin(tokens, SPECIAL_IDS)
  assert abs(selected.sum() / eligible.sum() - 0.15) < 0.01
  assert np.array_equal(inputs[~selected], tokens[~selected])  # unselected: the original token
  masked, kept = inputs[selected] == MASK_ID, inputs[selected] == tokens[selected]
  replaced = ~masked & ~kept
  n = selected.sum()
  assert abs(masked.sum() / n - 0.8) < 0.02
  # 10 % unchanged, plus the random draws that hit the original token (1 in V − 5 non-special ids).
  assert abs(kept.sum() / n - (0.1 + 0.1 / (V - 5))) < 0.015
  assert abs(replaced.sum() / n - 0.1 * (1 - 1 / (V - 5))) < 0.015
  assert not np.isin(inputs[selected][replaced], SPECIAL_IDS).any()


@pytest.mark.parametrize("objective,attention", [("clm", "einsum"), ("mlm", "einsum"), ("mlm", "xla")])
def test_appended_pad_columns_change_no_row_loss(objective, attention):
  """Padding is not attended to: a row's loss is the same with and without extra [PAD] columns after it."""
  cfg = ModelConfig(vocab_size=V, d_model=16, num_layers=2, num_heads=2, mlp_dim=32, max_len=2 * L, position="rope",
                    kind="decoder" if objective == "clm" else "encoder", attention=attention)
  model = Transformer(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, L), jnp.int32))["params"]
  settings = steps.StepSettings(objective=objective, vocab_size=V)
  narrow = batch(0)
  narrow["inputs"][-1, 5:] = narrow["targets"][-1, 5:] = 0  # the padded tail of the last row, as batches.py pads
  pad = lambda x, value: np.concatenate([x, np.full((B, 6), value, x.dtype)], axis=1)  # noqa: E731
  wide = {"inputs": pad(narrow["inputs"], 0), "targets": pad(narrow["targets"], 0),
          "weights": pad(narrow["weights"], 0.0), "positions": np.broadcast_to(np.arange(L + 6), (B, L + 6)).copy()}
  # The same masked positions in both: masking draws for the wide batch, the narrow one is its first L columns.
  wide_inputs = steps.prepare_inputs(wide, jax.random.key(1), settings)
  narrow_inputs = [None if x is None else x[:, :L] for x in wide_inputs]

  def row_losses(inputs, targets, weights, positions, key_mask):
    return [float(steps.lm_loss_sums(params, model, inputs[r:r + 1], targets[r:r + 1], weights[r:r + 1],
                                     positions[r:r + 1], None if key_mask is None else key_mask[r:r + 1],
                                     deterministic=True)[0]) for r in range(B)]

  np.testing.assert_allclose(row_losses(*wide_inputs), row_losses(*narrow_inputs), rtol=1e-5, atol=1e-6)


def test_mlm_step_scores_only_masked_tokens():
  state, step = setup(objective="mlm")
  b = batch()
  _, m = step(state, b)
  scored = float(m["tokens"])
  assert 0 < scored < 0.35 * (B * L)  # 15 % selected on average; never padding
  assert float(m["loss"]) > 0


def test_per_group_norms_are_reported_and_consistent():
  state, step = setup(model_kw={"position": "learned"})
  _, m = step(state, batch())
  for name in ("grad_norm", "param_norm", "update_norm"):
    total = float(m[f"{name}/total"])
    parts = sum(float(m[f"{name}/{group}"]) ** 2 for group in ("embedding", "position", "other"))
    assert total == pytest.approx(parts ** 0.5, rel=1e-5) and float(m[f"{name}/position"]) > 0
  _, m = setup(model_kw={"position": "rope"})[1](setup(model_kw={"position": "rope"})[0], batch())
  assert float(m["param_norm/position"]) == 0.0  # RoPE owns no parameters: the group is empty, the key is kept


@pytest.mark.parametrize("position", ["learned", "t5"])
def test_positional_parameters_are_not_decayed_unless_asked(position):
  """train.position.weight_decay off: the positional parameters' update is the update without any weight decay."""
  def after_step(**train):
    state, step = setup(model_kw={"position": position}, embedding_weight_decay=False, **train)
    return step(state, batch())[0].params

  off, none, on = after_step(), after_step(weight_decay=0.0), after_step(position_weight_decay=True)
  for a, b in zip(jax.tree.leaves(off["position_embed"]), jax.tree.leaves(none["position_embed"])):
    assert np.array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(on["position_embed"]),
                                                      jax.tree.leaves(none["position_embed"])))
  # The flag is the positional group's only: the transformer's matrices are decayed in both runs.
  assert not np.array_equal(off["block_0"]["mlp"]["fc1"]["kernel"], none["block_0"]["mlp"]["fc1"]["kernel"])


def test_bf16_compute_steps_keep_f32_parameters_and_moments_and_track_f32():
  (s32, step32), (s16, step16) = setup(), setup(dtype="bfloat16")
  for i in range(3):
    s32, m32 = step32(s32, batch(i))
    s16, m16 = step16(s16, batch(i))
    assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=2e-2)
  assert {x.dtype for x in jax.tree.leaves((s16.params, s16.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)} \
      == {jnp.dtype(jnp.float32)}
  assert float(m16["loss"]) < float(step16(setup(dtype="bfloat16")[0], batch(2))[1]["loss"])  # it learned


def test_input_tokens_count_what_the_model_read():
  (s, step), (sm, step_mlm) = setup(), setup(objective="mlm")
  _, m = step(s, batch(0))
  _, mm = step_mlm(sm, batch(0))
  assert float(m["input_tokens"]) == float(mm["input_tokens"]) == B * L - 7
  assert 0 < float(mm["tokens"]) < 0.5 * float(mm["input_tokens"])  # MLM scores only the masked ~15 %
