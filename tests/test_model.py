"""Properties of the token embedding and the transformer, for every scheme."""

import dataclasses
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.embeddings import chars, registry, token
from research.model import attention
from research.model.config import ModelConfig
from research.model.transformer import Block, Transformer, count_params
from tests.train_utils import dot_generals

SCHEMES = ["none", "learned", "sinusoidal", "rope", "alibi", "t5"]
V, L = 37, 7


def tiny(**overrides) -> ModelConfig:
  """Small shapes; every other field, the token table's std (d^-0.5) and √d scale included, as a run has them."""
  base = dict(vocab_size=V, d_model=16, num_layers=2, num_heads=2, mlp_dim=32, max_len=16, pos_dim=8)
  return ModelConfig(**{**base, **overrides})


# The property tests run under the embedding settings runs use (ModelConfig's defaults: std d^-0.5, √d at the
# input), and the cheap ones also under the other common convention (std 0.02, unscaled: GPT-2, BERT).
EMBEDDINGS = {"run-defaults": {}, "std0.02-unscaled": {"embed_init_std": 0.02, "embed_scale": False}}
embeddings = pytest.mark.parametrize("embedding", list(EMBEDDINGS.values()), ids=list(EMBEDDINGS))


def test_model_defaults_are_the_run_defaults():
  from research import schema
  cfg = ModelConfig()
  assert cfg.embed_scale and cfg.embed_init_std == pytest.approx(cfg.d_model ** -0.5)
  model = schema.get_config().model.to_dict()
  model.pop("pretrained")  # the trainer's vector-file options: not a model field
  assert {k: v for k, v in dataclasses.asdict(cfg).items() if k in model and k not in ("max_len", "embed_init_std")} \
      == {k: v for k, v in model.items() if k not in ("max_len", "embed_init_std")}
  assert set(model) == {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size", "kind"}
  table = init(tiny())["params"]["token_embed"]["embedding"]
  assert float(table.std()) == pytest.approx(16 ** -0.5, rel=0.15)


def init(cfg, length=L, seed=0):
  return jax.jit(Transformer(cfg).init)(jax.random.key(seed), jnp.zeros((1, length), jnp.int32))


def tokens(batch=2, length=L, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, V)


def vocabulary_matrices(params, cfg):
  """Parameters with a V-sized axis: the token table, and the head when untied."""
  return [x for x in jax.tree_util.tree_leaves(params) if cfg.vocab_size in x.shape]


# ------------------------------------------------------------------------------------------- shapes, all schemes


# Tie × combine × norm in four runs instead of eight: every pair of values of any two of them occurs once (an
# orthogonal array), which keeps interactions covered at half the compile time.
TIE_COMBINE_NORM = [(True, "add", "pre"), (True, "concat", "post"), (False, "add", "post"), (False, "concat", "pre")]


@pytest.mark.parametrize("scheme,kind", itertools.product(SCHEMES, ["decoder", "encoder"]))
def test_shapes_for_every_scheme_kind_head_combine_and_norm(scheme, kind):
  for tie, combine, norm in TIE_COMBINE_NORM:
    cfg = tiny(position=scheme, kind=kind, tie_embeddings=tie, combine=combine, norm=norm)
    variables = init(cfg)
    model = Transformer(cfg)
    hidden, logits = jax.jit(lambda v, ids: (model.apply(v, ids, return_hidden=True), model.apply(v, ids)))(
        variables, tokens())
    assert logits.shape == (2, L, V) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    assert hidden.shape == (2, L, cfg.width)
    assert len(vocabulary_matrices(variables, cfg)) == (1 if tie else 2)
    assert variables["params"]["token_embed"]["embedding"].shape == (V, cfg.d_model)
    assert ("final_norm" in variables["params"]) == (norm == "pre")


# ---------------------------------------------------------------------------------------------------- causality


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_decoder_output_at_t_has_zero_gradient_wrt_inputs_after_t(scheme, norm):
  cfg = tiny(position=scheme, norm=norm)
  model = Transformer(cfg)
  variables = init(cfg)
  x = jax.random.normal(jax.random.key(3), (1, L, cfg.width))
  pos = jnp.arange(L)[None]
  w = jax.random.normal(jax.random.key(4), (cfg.width,))  # a plain sum of a LayerNorm output has zero gradient
  for t in (0, 3, L - 2):
    grad = jax.grad(lambda x: model.apply(variables, x, pos, method=Transformer.encode)[0, t] @ w)(x)
    assert np.all(grad[0, t + 1:] == 0.0), (scheme, t)
    assert np.any(grad[0, :t + 1] != 0.0)


@embeddings
def test_encoder_sees_the_future(embedding):
  cfg = tiny(position="alibi", kind="encoder", **embedding)
  variables = init(cfg)
  x = jax.random.normal(jax.random.key(3), (1, L, cfg.width))
  w = jax.random.normal(jax.random.key(4), (cfg.width,))
  grad = jax.grad(lambda x: Transformer(cfg).apply(variables, x, jnp.arange(L)[None],
                                                   method=Transformer.encode)[0, 0] @ w)(x)
  assert np.all(np.any(grad[0] != 0.0, axis=-1))


# ---------------------------------------------------------------------------------------------------- NoPE/shift


@embeddings
def test_nope_encoder_is_permutation_equivariant(embedding):
  cfg = tiny(position="none", kind="encoder", **embedding)
  variables = init(cfg)
  ids = tokens(batch=1)
  perm = np.random.default_rng(0).permutation(L)
  out = Transformer(cfg).apply(variables, ids)
  out_perm = Transformer(cfg).apply(variables, ids[:, perm])
  assert np.allclose(out[:, perm], out_perm, atol=1e-5)


@embeddings
@pytest.mark.parametrize("scheme", SCHEMES)
def test_shifting_positions_changes_only_absolute_schemes(scheme, embedding):
  cfg = tiny(position=scheme, max_len=64, **embedding)
  variables = init(cfg)
  ids = tokens()
  pos = jnp.broadcast_to(jnp.arange(L), ids.shape)
  model = Transformer(cfg)
  default = model.apply(variables, ids)
  assert np.array_equal(default, model.apply(variables, ids, pos))  # implicit positions are arange
  shifted = model.apply(variables, ids, pos + 40)
  relative_only = not registry.get_scheme(scheme).has_input
  assert np.allclose(default, shifted, atol=2e-4) == relative_only


# ------------------------------------------------------------------------------------------------------- tying


@embeddings
def test_tied_gradient_is_the_sum_of_input_and_output_uses(embedding):
  tied = tiny(position="rope", **embedding)
  untied = dataclasses.replace(tied, tie_embeddings=False)
  variables = init(tied)
  table = variables["params"]["token_embed"]["embedding"]
  untied_vars = {"params": {**variables["params"], "lm_head": {"kernel": table.T}}}
  ids = tokens()
  targets = tokens(seed=5)

  def loss(model, v):
    logits = model.apply(v, ids)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1).mean()

  assert np.allclose(loss(Transformer(tied), variables), loss(Transformer(untied), untied_vars), rtol=1e-6)
  g_tied = jax.grad(lambda v: loss(Transformer(tied), v))(variables)["params"]
  g_untied = jax.grad(lambda v: loss(Transformer(untied), v))(untied_vars)["params"]
  via_input = g_untied["token_embed"]["embedding"]
  via_output = g_untied["lm_head"]["kernel"].T
  absent = np.setdiff1d(np.arange(V), np.asarray(ids))
  assert np.all(via_input[absent] == 0) and np.any(via_output[absent] != 0)  # both uses contribute...
  assert np.allclose(g_tied["token_embed"]["embedding"], via_input + via_output, atol=1e-6)  # ...and add up


def test_parameter_count_differs_by_exactly_the_head():
  tied, untied = tiny(), tiny(tie_embeddings=False)
  assert count_params(init(untied)) - count_params(init(tied)) == V * 16


# --------------------------------------------------------------------------------------------- attention paths


# Both kinds for every scheme; the norm alternates so that each scheme meets both norms and every (kind, norm) pair
# occurs, without doubling the compiles (the norm only changes what reaches attention).
XLA_CASES = [(scheme, kind, ["pre", "post"][(i + j) % 2])
             for i, scheme in enumerate(SCHEMES) for j, kind in enumerate(["decoder", "encoder"])]


@pytest.mark.parametrize("scheme,kind,norm", XLA_CASES)
def test_xla_attention_matches_the_einsum_reference(scheme, kind, norm):
  cfg = tiny(position=scheme, kind=kind, norm=norm)
  variables = init(cfg)
  ids = tokens()
  key_mask = jnp.array([[1] * L, [1] * (L - 2) + [0] * 2])
  reference = Transformer(cfg).apply(variables, ids, key_mask_BxL=key_mask)
  fused = Transformer(dataclasses.replace(cfg, attention="xla")).apply(variables, ids, key_mask_BxL=key_mask)
  assert np.allclose(reference, fused, atol=1e-5)


@pytest.mark.parametrize("length,block", [(7, 3), (256, 128), (4096, 128), (100, 128), (9, 1)])
def test_causal_blocks_tile_the_queries(length, block):
  blocks = attention.causal_blocks(length, block)
  assert blocks[0][0] == 0 and blocks[-1][1] == length
  assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))  # contiguous, no overlap
  assert len(blocks) <= attention.MAX_CAUSAL_BLOCKS
  assert max(stop - start for start, stop in blocks) <= max(block, -(-length // attention.MAX_CAUSAL_BLOCKS))


@pytest.mark.parametrize("bias_batch", [None, 1, 2])
def test_causal_blocks_give_the_full_causal_attention_and_gradient(bias_batch):
  """Skipping the all-masked key blocks changes nothing: outputs and gradients (bias included) as without."""
  b, length, h, d = 2, 11, 2, 4
  q, k, v, g = (jax.random.normal(jax.random.key(i), (b, length, h, d)) for i in range(4))
  bias = None if bias_batch is None else jax.random.normal(jax.random.key(9), (bias_batch, h, length, length))
  mask = attention.attention_mask(length, length, causal=True)

  def loss(q, k, v, bias, causal):
    return jnp.sum(attention.einsum_attention(q, k, v, bias, mask, causal=causal, block=4) * g)

  whole, blocked = (jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias, c) for c in (False, True))
  for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(blocked)):
    np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6)
  assert len(attention.causal_blocks(length, 4)) == 3


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_causal_decoder_with_query_blocks_matches_xla_attention(scheme, monkeypatch):
  """Through the model: a decoder without key padding takes the blocked einsum path (block 3 of 7 tokens here)."""
  monkeypatch.setattr(attention, "CAUSAL_BLOCK", 3)
  cfg = tiny(position=scheme, kind="decoder")
  variables = init(cfg)
  calls = []
  monkeypatch.setattr(attention, "causal_blocks", lambda *a: calls.append(a) or [(0, 3), (3, 6), (6, 7)])
  blocked = Transformer(cfg).apply(variables, tokens())
  assert calls  # the blocked path ran
  fused = Transformer(dataclasses.replace(cfg, attention="xla")).apply(variables, tokens())
  np.testing.assert_allclose(blocked, fused, atol=1e-5)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_post_ln_blocks_output_normalised_tokens_and_have_no_final_norm(norm):
  cfg = tiny(position="rope", norm=norm)
  variables = init(cfg)
  assert ("final_norm" in variables["params"]) == (norm == "pre")
  is_block = lambda module, method_name: isinstance(module, Block)  # noqa: E731
  _, state = jax.jit(lambda v, ids: Transformer(cfg).apply(v, ids, capture_intermediates=is_block))(
      variables, tokens())
  for i in range(cfg.num_layers):
    (h_BxLxD,) = state["intermediates"][f"block_{i}"]["__call__"]
    mean, std = np.asarray(h_BxLxD.mean(-1)), np.asarray(h_BxLxD.std(-1))
    # A post-LN block ends in a LayerNorm (scale 1, bias 0 at init): every token has mean 0 and std 1. A pre-LN
    # block returns the raw residual stream, which nothing normalises.
    normalised = np.abs(mean).max() < 1e-4 and np.abs(std - 1).max() < 1e-3
    assert normalised == (norm == "post"), (i, np.abs(mean).max(), np.abs(std - 1).max())


def test_key_mask_hides_padding():
  cfg = tiny(position="learned", kind="encoder")
  variables = init(cfg)
  ids = tokens(batch=1)
  mask = jnp.array([[1] * (L - 2) + [0, 0]])
  a = Transformer(cfg).apply(variables, ids, key_mask_BxL=mask)
  b = Transformer(cfg).apply(variables, ids.at[0, -2:].set(0), key_mask_BxL=mask)
  assert np.allclose(a[:, :L - 2], b[:, :L - 2], atol=1e-5)


@pytest.mark.parametrize("backend,expected", [("cpu", "einsum"), ("gpu", "xla"), ("cuda", "xla"), ("rocm", "xla"),
                                              ("tpu", "xla"), ("TPU", "xla")])
def test_auto_attention_resolves_per_backend_and_explicit_paths_stay(backend, expected):
  assert attention.resolve("auto", backend) == expected
  assert attention.resolve("einsum", backend) == "einsum" and attention.resolve("xla", backend) == "xla"


def test_the_model_runs_the_path_resolve_names_on_this_backend():
  """auto traces to exactly the program of the path `attention.resolve` names for jax.default_backend()."""
  assert ModelConfig().attention == "auto"
  cfg = tiny(position="alibi")
  variables = init(cfg)
  program = lambda kind: str(jax.make_jaxpr(Transformer(dataclasses.replace(cfg, attention=kind)).apply)(  # noqa
      variables, tokens()))
  resolved = attention.resolve("auto")
  assert resolved == attention.resolve("auto", jax.default_backend())
  other = {"einsum": "xla", "xla": "einsum"}[resolved]
  assert program("auto") == program(resolved) != program(other)


# ------------------------------------------------------------------------------------------- gradient checkpoints


def _loss_and_grads(cfg, variables, ids):
  """Loss of a training-mode forward (dropout on) and its gradient with respect to every parameter."""
  def loss(params):
    logits = Transformer(cfg).apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(7)})
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0])
  return jax.jit(jax.value_and_grad(loss))(variables["params"])


# A shared bias table (its gradient flows into both rematerialised blocks through the hooks) in a decoder, and a
# q/k transform in an encoder (the key-mask path).
@pytest.mark.parametrize("scheme,kind", [("t5", "decoder"), ("rope", "encoder")])
def test_remat_gives_the_same_loss_and_gradients(scheme, kind):
  cfg = tiny(position=scheme, kind=kind, dropout=0.1)
  variables, ids = init(cfg), tokens()
  loss, grads = _loss_and_grads(cfg, variables, ids)
  for remat in ("block", "dots_saveable"):
    remat_loss, remat_grads = _loss_and_grads(dataclasses.replace(cfg, remat=remat), variables, ids)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    assert jax.tree.structure(remat_grads) == jax.tree.structure(grads)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads)):
      np.testing.assert_allclose(r, g, rtol=1e-5, atol=1e-7)


def _checkpoints(jaxpr) -> list:
  """The policies of every jax.checkpoint (remat) equation in a jaxpr, nested ones included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("remat2", "checkpoint"):
      found.append(eqn.params["policy"])
    for value in eqn.params.values():
      sub = getattr(value, "jaxpr", value)
      if hasattr(sub, "eqns"):
        found += _checkpoints(sub)
  return found


def test_each_remat_value_reaches_the_model_and_keeps_fewer_activations():
  cfg = tiny(position="rope")
  variables, ids = init(cfg), tokens()
  residual_bytes = {}
  for remat in ("none", "block", "dots_saveable"):
    c = dataclasses.replace(cfg, remat=remat)
    apply = lambda params: Transformer(c).apply({"params": params}, ids).sum()  # noqa: E731
    policies = _checkpoints(jax.make_jaxpr(apply)(variables["params"]).jaxpr)
    expected = {"none": [], "block": [None] * 2, "dots_saveable": [jax.checkpoint_policies.dots_saveable] * 2}
    assert policies == expected[remat]
    backward = jax.jit(lambda p: jax.vjp(apply, p)[1])(variables["params"])  # its leaves: what backward keeps
    residual_bytes[remat] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(backward))
  # What the backward pass keeps: the block's inputs alone < plus its matmul outputs < everything.
  assert residual_bytes["block"] < residual_bytes["dots_saveable"] < residual_bytes["none"]


# ------------------------------------------------------------------------------------------------------- dtypes


@functools.lru_cache(maxsize=None)
def _bf16_init(scheme):
  # Parameters do not depend on the attention path: one (compiled) init per scheme serves both.
  return init(tiny(position=scheme, dtype="bfloat16"))


@pytest.mark.parametrize("scheme,attention", itertools.product(SCHEMES, ["einsum", "xla"]))
def test_bf16_compute_keeps_f32_parameters_and_tracks_f32(scheme, attention):
  cfg = tiny(position=scheme, attention=attention)
  cfg16 = dataclasses.replace(cfg, dtype="bfloat16")
  variables = _bf16_init(scheme)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  ids = tokens()
  # The products really are bf16: every matmul takes bf16 operands and returns float32 (research/model/precision.py),
  # except that jax.nn.dot_product_attention (attention=xla) makes its own probabilities·v, bf16 → bf16, once a layer.
  dots = [(tuple(v.aval.dtype for v in eqn.invars), eqn.outvars[0].aval.dtype)
          for eqn in dot_generals(jax.make_jaxpr(Transformer(cfg16).apply)(variables, ids).jaxpr)]
  assert dots and all(operands == (jnp.bfloat16, jnp.bfloat16) for operands, _ in dots), dots
  bf16_results = cfg.num_layers if attention == "xla" else 0
  assert sum(out == jnp.bfloat16 for _, out in dots) == bf16_results, dots
  with jax.numpy_rank_promotion("raise"):
    f32, bf16 = jax.jit(lambda v, ids: (Transformer(cfg).apply(v, ids), Transformer(cfg16).apply(v, ids)))(
        variables, ids)
  assert bf16.dtype == jnp.float32  # activations and logits stay float32; only the products' operands are bf16
  gap = np.abs(np.asarray(bf16) - np.asarray(f32))
  # Different (bf16 rounding is really there) yet close: within a few bf16 ulps (2^-8 relative) of the logit scale
  # after two layers.
  assert gap.max() > 0
  assert gap.max() < 0.03 * np.abs(f32).max()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_no_implicit_rank_promotion(scheme):
  cfg = tiny(position=scheme, combine="concat", tie_embeddings=True)
  with jax.numpy_rank_promotion("raise"):
    variables = Transformer(cfg).init(jax.random.key(0), tokens())
    jax.grad(lambda v: Transformer(cfg).apply(v, tokens()).sum())(variables)


# ---------------------------------------------------------------------------------------------- token embedding


def test_out_of_vocabulary_id_is_an_error_naming_id_and_v():
  cfg = tiny()
  variables = init(cfg)
  with pytest.raises(ValueError, match=rf"token id {V + 3} is outside \[0, {V}\)"):
    Transformer(cfg).apply(variables, jnp.array([[1, V + 3]]))
  with pytest.raises(ValueError, match=r"token id -1 is outside"):
    Transformer(cfg).apply(variables, jnp.array([[1, -1]]))
  # Under jit: NaN, never the clamped last row.
  assert np.all(np.isnan(jax.jit(Transformer(cfg).apply)(variables, jnp.array([[1, V + 3]]))[0, 1]))


def test_a_negative_id_or_position_is_refused_eager_and_nan_under_jit_never_the_last_row():
  """jnp.take turns −1 into the last row before its fill mode sees it: the lookup must poison a negative id's row
  too, for the token table, the char-aware vocabulary vectors and the learned position table alike."""
  table = jnp.arange(12.0).reshape(4, 3)
  rows = np.asarray(jax.jit(token.lookup)(table, jnp.array([-1, 4, 1, -4])))
  assert np.all(np.isnan(rows[[0, 1, 3]])) and np.array_equal(rows[2], table[1])
  with pytest.raises(ValueError, match=r"token id -4 is outside \[0, 4\) \(2 such entries\)"):
    token.lookup(table, np.array([-1, 1, -4]))
  vocab = list(chars.SPECIAL_TOKENS) + [f"w{i}" for i in range(V - len(chars.SPECIAL_TOKENS))]
  for cfg, char_ids in ((tiny(position="learned"), None),
                        (tiny(char_embeddings="concat", char_filters="1:4,2:4"), chars.Constant(chars.char_ids(
                            vocab, "word")))):
    model = Transformer(cfg, char_ids=char_ids)
    tokens = jnp.array([[1, 2, 3, 4]])
    positions = jnp.arange(4)[None]
    variables = model.init(jax.random.key(0), tokens)
    apply = jax.jit(lambda v, t, p: model.apply(v, t, p))  # noqa: B023
    assert not np.any(np.isnan(apply(variables, tokens, positions)))
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
      model.apply(variables, tokens.at[0, 0].set(-1), positions)
    assert np.all(np.isnan(apply(variables, tokens.at[0, 0].set(-1), positions)[0, 0]))
    if cfg.position == "learned":
      with pytest.raises(ValueError, match=r"position -1 is outside \[0, 16\)"):
        model.apply(variables, tokens, positions.at[0, 0].set(-1))
      assert np.all(np.isnan(apply(variables, tokens, positions.at[0, 0].set(-1))[0, 0]))


def test_embedding_init_scale_and_pretrained_matrix():
  matrix = np.random.default_rng(0).normal(size=(V, 16)).astype(np.float32)
  emb = token.TokenEmbedding(V, 16, embedding_init=token.from_matrix(matrix), scale=True)
  variables = emb.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  assert np.array_equal(variables["params"]["embedding"], matrix)
  out = emb.apply(variables, jnp.array([[3, 5]]))
  assert np.allclose(out[0], matrix[[3, 5]] * 4.0)  # √16
  with pytest.raises(ValueError, match=r"\(37, 16\).*\(37, 8\)"):
    token.TokenEmbedding(V, 8, embedding_init=token.from_matrix(matrix)).init(jax.random.key(0), jnp.zeros((1, 1),
                                                                                                        jnp.int32))


@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_initialisers_have_the_configured_std(kind):
  table = token.make_init(kind, 0.05)(jax.random.key(0), (400, 100))
  assert abs(float(table.std()) - 0.05) < 0.002
  if kind == "uniform":
    assert float(jnp.abs(table).max()) <= 0.05 * np.sqrt(3) + 1e-6


def test_token_dropout_zeroes_whole_vocabulary_rows():
  emb = token.TokenEmbedding(V, 4, token_dropout=0.5)
  variables = emb.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  ids = jnp.tile(jnp.arange(V), (1, 20))  # every token 20 times
  out = emb.apply(variables, ids, deterministic=False, rngs={"dropout": jax.random.key(7)})
  table = variables["params"]["embedding"]
  dropped = np.all(out[0] == 0, axis=-1).reshape(20, V)
  assert np.all(dropped == dropped[0])  # a row is dropped everywhere or nowhere
  assert 0 < dropped[0].sum() < V
  kept = ~dropped[0]
  assert np.allclose(out[0, :V][kept], 2.0 * table[kept])  # scaled by 1/(1-p)
  assert np.array_equal(emb.apply(variables, ids), table[ids])  # deterministic: identity


def test_embedding_dropout_is_elementwise_and_off_in_eval():
  emb = token.TokenEmbedding(V, 64, dropout=0.5)
  variables = emb.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  out = emb.apply(variables, jnp.array([[2, 2]]), deterministic=False, rngs={"dropout": jax.random.key(1)})
  zero_fraction = float(jnp.mean(out == 0))
  assert 0.3 < zero_fraction < 0.7 and not np.array_equal(out[0, 0] == 0, out[0, 1] == 0)


# ------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("overrides,message", [
    (dict(num_heads=3), r"num_heads=3 does not divide the model width 16; allowed head counts: 1, 2, 4, 8, 16"),
    (dict(num_heads=3, d_model=130), r"allowed head counts: 1, 2, 5, 10, 13, 26, 65, 130$"),  # every one, past 64
    (dict(position="rope", d_model=18, num_heads=2),
     r"rope needs an even head dimension, got 9 .*; allowed num_heads for width 18: 1, 3, 9$"),
    (dict(position="rope", d_model=15, num_heads=3),
     r"got 5 .*; no head count gives an even head dimension for the odd width 15"),
    (dict(position="rope", rope_fraction=0.0), r"model.rope_fraction=0.0 must be in \(0, 1\]"),
    (dict(position="rope", rope_fraction=0.1), r"model.rope_fraction=0.1 .* rotate at least 2 of the 8 head"),
    (dict(position="rope", rope_factor=0.5), r"model.rope_factor=0.5 must be in \[1, 1048576\]"),
    (dict(position="rope", rope_scaling="ntk", rope_factor=1e200), r"model.rope_factor=1e\+200 must be in \[1, "),
    # Scalings rope_frequencies cannot compute (a ZeroDivisionError at the first factor > 1, mid-evaluation).
    (dict(position="rope", rope_fraction=0.25, rope_scaling="ntk", rope_factor=2.0),
     r"^model.rope_scaling='ntk' needs a rotary dimension >= 4 \(its base exponent is d/\(d-2\)\), got 2"),
    (dict(position="rope", rope_scaling="yarn", rope_base=1.0, rope_factor=4.0),
     r"^model.rope_scaling='yarn' needs model.rope_base > 1 \(its correction range divides by ln\(base\)\), got 1$"),
    (dict(position="rope", rope_scaling="yarn", rope_base=0.5, rope_factor=1.5), r"needs model.rope_base > 1 .*got 0.5$"),
    (dict(max_len=0), r"model.max_len=0 must be >= 1"),
    (dict(position="bogus"), r"unknown positional scheme 'bogus'; registered schemes: .*alibi.*rope.*t5"),
    (dict(combine="mul"), r"model.combine='mul' is not one of add, concat"),
    (dict(kind="seq2seq"), r"model.kind='seq2seq' is not one of decoder, encoder"),
    (dict(dropout=1.5), r"model.dropout=1.5 must be in \[0, 1\)"),
    (dict(remat="full"), r"^model.remat='full' is not one of none, block, dots_saveable$"),
    (dict(attention="flash"), r"^model.attention='flash' is not one of auto, einsum, xla$"),
    # finite in float64, inf in the float32 table: a non-finite loss at step 1 that named no field
    (dict(embed_init_std=1e40), r"^model.embed_init_std=1e\+40 must be at most 1e\+06 \(larger float32 tables"),
    (dict(embed_init_std=1e30), r"^model.embed_init_std=1e\+30 must be at most 1e\+06"),
    # an OverflowError (int32) inside the first train step, after the run had written its files
    (dict(position="rope", position_sampling="randomized", max_position=3_000_000_000),
     r"^model.max_position=3000000000 is too large: at most 16,777,216 \(2\^24: positions are float32"),
])
def test_invalid_configs_fail_at_construction_naming_the_value(overrides, message):
  with pytest.raises(ValueError, match=message):
    tiny(**overrides)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_the_largest_embed_init_std_keeps_the_loss_and_its_gradient_finite(norm):
  """model.embed_init_std's bound (config.MAX_EMBED_INIT_STD) is one the float32 model survives at step 1."""
  from research.model import config as config_lib
  cfg = tiny(embed_init_std=config_lib.MAX_EMBED_INIT_STD, norm=norm, position="learned")
  tokens = jax.random.randint(jax.random.key(1), (2, L), 0, V)
  variables = init(cfg)
  loss = lambda v: -jnp.mean(jax.nn.log_softmax(Transformer(cfg).apply(v, tokens))[..., 0])  # noqa: E731
  value, grads = jax.value_and_grad(loss)(variables)
  assert np.isfinite(float(value)) and all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def test_a_scaling_at_factor_one_is_plain_rope_and_accepted_whatever_it_could_not_scale():
  """NTK on a rotary dimension of 2 and YaRN at base 1 are refused only with a factor > 1: at 1 they are plain RoPE
  (a run trained so resumes and evaluates)."""
  for overrides in (dict(rope_fraction=0.25, rope_scaling="ntk"), dict(rope_scaling="yarn", rope_base=1.0)):
    cfg = tiny(position="rope", **overrides)
    plain = tiny(position="rope", **{k: v for k, v in overrides.items() if k != "rope_scaling"})
    ids = jnp.array([[1, 2, 3, 4]])
    variables = Transformer(plain).init(jax.random.key(0), ids)
    np.testing.assert_array_equal(Transformer(cfg).apply(variables, ids), Transformer(plain).apply(variables, ids))


def test_unknown_field_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown model field\(s\) d_modle; valid fields: .*d_model"):
    ModelConfig.from_dict({"d_modle": 8})


# ---------------------------------------------------------------------------------------------- the registry


def test_a_new_scheme_plugs_in_through_the_public_registry_only():

  @registry.register("toy_constant_bias")
  class ConstantBias(registry.PositionalScheme):
    """A constant score bias: softmax-invariant, so the model must equal NoPE."""

    def bias(self, q_positions_BxL, k_positions_BxL):
      return jnp.full((1, self.cfg.num_heads, q_positions_BxL.shape[1], k_positions_BxL.shape[1]), 3.0)

  @registry.register("toy_first_key")
  class FirstKeyOnly(registry.PositionalScheme):
    """Attend only to the first key: every position's attention output must be the same."""

    def bias(self, q_positions_BxL, k_positions_BxL):
      first = (k_positions_BxL == 0)[:, None, None, :]
      return jnp.where(first, 0.0, -1e9) * jnp.ones((1, self.cfg.num_heads, q_positions_BxL.shape[1], 1))

  try:
    assert "toy_constant_bias" in registry.names()
    ids = tokens()
    variables = init(tiny(position="none"))
    nope = Transformer(tiny(position="none")).apply(variables, ids)
    assert np.allclose(Transformer(tiny(position="toy_constant_bias")).apply(variables, ids), nope, atol=1e-5)
    assert not np.allclose(Transformer(tiny(position="toy_first_key")).apply(variables, ids), nope, atol=1e-3)
  finally:
    registry.unregister("toy_constant_bias")
    registry.unregister("toy_first_key")
  assert "toy_constant_bias" not in registry.names()


def test_registering_a_non_scheme_is_refused():
  with pytest.raises(TypeError, match="must subclass PositionalScheme"):
    registry.register("bad")(nn.Dense)
