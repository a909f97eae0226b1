"""model.dtype=bfloat16: bf16 × bf16 → f32 products in the forward and backward pass (research/model/precision.py)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.embeddings import registry
from research.model import attention, precision
from research.model.config import ModelConfig
from research.model.transformer import Transformer
from research.train import optim, steps
from tests.train_utils import dot_generals

BF16, F32 = jnp.bfloat16, jnp.float32

# (lhs shape, rhs shape, dimension numbers): the products the model makes and the awkward ones around them.
PRODUCTS = {
    "dense": ((6, 5), (5, 7), (((1,), (0,)), ((), ()))),
    "dense_general_in": ((6, 5), (5, 3, 2), (((1,), (0,)), ((), ()))),  # q/k/v: one axis into several
    "dense_general_out": ((6, 3, 2), (3, 2, 7), (((1, 2), (0, 1)), ((), ()))),  # the output projection
    "tied_head": ((6, 5), (9, 5), (((1,), (1,)), ((), ()))),  # h·Eᵀ: the table contracts its last axis
    "scores": ((2, 3, 6, 5), (2, 3, 4, 5), (((3,), (3,)), ((0, 1), (0, 1)))),
    "probs_v": ((2, 3, 6, 4), (2, 3, 4, 5), (((3,), (2,)), ((0, 1), (0, 1)))),
    "logits_blhd": ((2, 6, 3, 5), (2, 4, 3, 5), (((3,), (3,)), ((0, 2), (0, 2)))),  # CoPE's q·kᵀ
    "lhs_transposed": ((5, 6), (7, 5), (((0,), (1,)), ((), ()))),
}


def _rounded(seed, shape):
  """Normal values that bf16 represents exactly, as float32 (rounded in numpy: no compilation per shape)."""
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  return jnp.asarray(x.astype(BF16).astype(np.float32))


@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_bf16_dot_general_is_the_exact_product_of_bf16_operands_with_matching_gradients(name):
  lhs_shape, rhs_shape, dims = PRODUCTS[name]
  a, b = _rounded(1, lhs_shape), _rounded(2, rhs_shape)
  g = _rounded(3, jax.eval_shape(lambda x, y: jax.lax.dot_general(x, y, dims), a, b).shape)

  @jax.jit
  def both(a, b, g):
    """(exact product, its vjp of g) and the same through bf16_dot_general; g is a cotangent bf16 represents, so
    rounding it changes nothing."""
    out = []
    for f in (lambda x, y: jax.lax.dot_general(x, y, dims, precision="highest"),
              lambda x, y: precision.bf16_dot_general(x, y, dims)):
      value, vjp = jax.vjp(f, a, b)
      out.append((value, *vjp(g)))
    return out

  want, got = both(a, b, g)
  for w, h in zip(want, got):
    assert h.dtype == F32 and h.shape == w.shape
    np.testing.assert_allclose(h, w, rtol=1e-5, atol=1e-5)  # f32 accumulation of exactly representable inputs


def test_bf16_dot_general_gives_cotangents_in_the_inputs_dtypes():
  """Inputs in bf16 get bf16 cotangents; inputs in float32 get float32 ones (a weight gradient is not rounded)."""
  dims = PRODUCTS["dense"][2]
  a, b = _rounded(1, (6, 5)).astype(BF16), _rounded(2, (5, 7))
  g_a, g_b = jax.jit(jax.grad(lambda x, y: precision.bf16_dot_general(x, y, dims).sum(), (0, 1)))(a, b)
  assert (g_a.dtype, g_b.dtype) == (BF16, F32)


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("shapes", [((6, 5), (6, 7)), ((6, 7), (6, 5)), ((3, 6, 5), (3, 6, 4))])
def test_the_transposed_product_with_and_without_the_cpu_padding(shapes, pad):
  """xᵀ·y over the shared leading axis: padded (XLA:CPU's bf16 kernels) or not (other backends), the same product."""
  x, y = _rounded(1, shapes[0]), _rounded(2, shapes[1])
  got = jax.jit(precision._transposed_product, static_argnums=2)(x.astype(BF16), y.astype(BF16), pad)
  assert got.dtype == F32
  np.testing.assert_allclose(got, jnp.einsum("...mx,...my->...xy", x, y, precision="highest"), rtol=1e-5, atol=1e-5)


def test_bf16_dot_general_rounds_operands_and_cotangents_to_bf16():
  """Float32 inputs that bf16 cannot represent are rounded as they enter the product, and so is the cotangent."""
  dims = PRODUCTS["dense"][2]
  a = jax.random.normal(jax.random.key(1), (6, 5))
  b = jax.random.normal(jax.random.key(2), (5, 7))
  g = jax.random.normal(jax.random.key(3), (6, 7))
  r = lambda x: x.astype(BF16).astype(F32)  # noqa: E731
  out, vjp = jax.vjp(lambda x, y: precision.bf16_dot_general(x, y, dims), a, b)
  np.testing.assert_allclose(out, r(a) @ r(b), rtol=1e-5, atol=1e-5)
  g_a, g_b = vjp(g)
  np.testing.assert_allclose(g_a, r(g) @ r(b).T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_b, r(a).T @ r(g), rtol=1e-5, atol=1e-5)
  assert not np.allclose(out, a @ b, rtol=1e-6, atol=0)  # the rounding is really there


def test_every_product_of_the_gradient_is_bf16_by_bf16_to_f32():
  """jax's own transpose of a bf16 → f32 product multiplies the f32 cotangent by a bf16 operand (f32 rate on CPU)."""
  dims = PRODUCTS["dense_general_in"][2]
  a, b = _rounded(1, (6, 5)), _rounded(2, (5, 3, 2))
  jaxpr = jax.make_jaxpr(jax.grad(lambda x, y: precision.bf16_dot_general(x, y, dims).sum(), (0, 1)))(a, b).jaxpr
  products = [(tuple(v.aval.dtype for v in e.invars), e.outvars[0].aval.dtype) for e in dot_generals(jaxpr)]
  assert len(products) == 3, products
  assert all(p == ((BF16, BF16), F32) for p in products), products


# ------------------------------------------------------------------------------------------- the train step

V, B, L = 64, 4, 16
TRAIN = {"optimizer": "adamw", "learning_rate": 1e-2, "schedule": "constant", "warmup_steps": 0, "steps": 10,
         "weight_decay": 0.1, "grad_clip": 1.0, "b1": 0.9, "b2": 0.95,
         "embedding": {"weight_decay": True, "lr_multiplier": 1.0, "freeze": False, "lazy": False},
         "position": {"weight_decay": False}}


def _step(dtype, loss_chunk=32, **model):
  cfg = ModelConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=2, mlp_dim=64, max_len=L, dtype=dtype,
                    **{"position": "rope", **model})
  net, tx = Transformer(cfg), optim.make_optimizer(TRAIN)
  settings = steps.StepSettings(objective="clm", vocab_size=V, loss_chunk=loss_chunk)
  state = jax.jit(functools.partial(steps.init_state, model=net, optimizer=tx, seq_len=L))(jax.random.key(0))
  step = jax.jit(functools.partial(steps.train_step, model=net, optimizer=tx, schedule=optim.make_schedule(TRAIN),
                                   settings=settings))
  return step, state


def _batch(seed=0):
  tokens = np.random.default_rng(seed).integers(5, V, (B, L + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((B, L), np.float32),
          "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy()}


def _lowered_products(text: str) -> list[tuple[str, str, str]]:
  """(lhs, rhs, result) element types of every stablehlo.dot_general in a lowered module's text."""
  sig = r"stablehlo\.dot_general .*?: \(tensor<(?:[\dx]*x)?(\w+)>, tensor<(?:[\dx]*x)?(\w+)>\) -> tensor<(?:[\dx]*x)?(\w+)>"
  return re.findall(sig, text)


def _compiled_dot_operands(text: str) -> list[tuple[str, str]]:
  """Element types of both operands of every dot in compiled HLO text (operands are looked up by name)."""
  types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", text))
  return [(types[a], types[b]) for a, b in re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", text)]


@pytest.mark.parametrize("tie", [True, False])
def test_bf16_train_step_has_no_product_with_a_bf16_result(tie):
  """Tied and untied heads, inside the fused chunked loss; XLA:CPU's compiled step checked for the tied one (the
  table's layout is the awkward one: the head contracts its last axis)."""
  step, state = _step("bfloat16", tie_embeddings=tie)
  lowered = step.lower(state, _batch())
  products = _lowered_products(lowered.as_text())
  # 1 layer: 6 forward products (q/k/v, scores, ·v, out, fc1, fc2) and 12 backward; the head's 3 (logits, d/dh and
  # d/dW, taken in the fused loss's forward pass).
  assert len(products) == 21, products
  assert all(p == ("bf16", "bf16", "f32") for p in products), products
  if tie and jax.default_backend() == "cpu":
    # What XLA:CPU runs: no product was upcast to float32 (it does so for bf16 products its bf16 kernels do not take,
    # e.g. a weight gradient that contracts the tokens, the leading axis of both operands).
    operands = _compiled_dot_operands(lowered.compile().as_text())
    assert operands and all(o == ("bf16", "bf16") for o in operands), operands


def test_f32_train_step_has_no_bf16():
  step, state = _step("float32")
  text = step.lower(state, _batch()).as_text()
  assert _lowered_products(text) and all(p == ("f32", "f32", "f32") for p in _lowered_products(text))
  assert "bf16" not in text


# The products model.dtype=bfloat16 leaves in float32 (docs/architecture.md, "dtypes": "Not covered"), by the last
# name JAX records for them: a positional scheme's own products. CoPE's position logits, FIRE's MLP, and Sandwich's
# kernel of position features (kept float32 at HIGHEST: bf16 features would move it by up to 0.04 at d' = 64).
FLOAT32_PRODUCTS = {"cope": {"blhd,pd->bhlp"}, "fire": {"mlp_hidden", "mlp_out"}, "sandwich": {"bli,bsi->bls"}}


def _float32_products(jaxpr) -> set[str]:
  """The names of a jaxpr's products that are not bf16 × bf16 → f32."""
  return {str(e.source_info.name_stack).split("/")[-1] for e in dot_generals(jaxpr)
          if tuple(v.aval.dtype for v in e.invars) != (BF16, BF16) or e.outvars[0].aval.dtype != F32}


@pytest.mark.parametrize("scheme", registry.names())
def test_every_scheme_multiplies_in_bf16_but_its_documented_float32_products(scheme):
  """Every scheme's bf16 train step (forward and backward; the evaluation step is its forward pass) and the apply
  that sows the attention probabilities (research-analyze --positions): every product is bf16 × bf16 → f32 except
  the scheme's FLOAT32_PRODUCTS, which are there (the list is not stale). Traced only, nothing compiled."""
  cfg = ModelConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=2, mlp_dim=64, max_len=L, dtype="bfloat16",
                    position=scheme)
  net, tx = Transformer(cfg), optim.make_optimizer(TRAIN)
  state = jax.eval_shape(functools.partial(steps.init_state, model=net, optimizer=tx, seq_len=L), jax.random.key(0))
  step = functools.partial(steps.train_step, model=net, optimizer=tx, schedule=optim.make_schedule(TRAIN),
                           settings=steps.StepSettings(objective="clm", vocab_size=V, loss_chunk=32))
  batch = _batch()
  expected = FLOAT32_PRODUCTS.get(scheme, set())
  assert _float32_products(jax.make_jaxpr(step)(state, batch).jaxpr) == expected
  sow = lambda params: net.apply({"params": params}, batch["inputs"], mutable=[attention.INTERMEDIATES])  # noqa: E731
  jaxpr, (_, sown) = jax.make_jaxpr(sow, return_shape=True)(state.params)
  assert sown[attention.INTERMEDIATES]["block_0"]["attention"]["probabilities"][0].shape == (B, 2, L, L)
  # The probabilities come from the forward pass's own bf16 q·kᵀ, not from a float32 one it never made.
  assert _float32_products(jaxpr.jaxpr) == expected


def test_bf16_loss_and_gradients_track_f32():
  """Same parameters, same batch: the bf16 loss within 1 % of float32 and the gradient pointing the same way."""
  _, state = _step("bfloat16")
  rng = np.random.default_rng(7)
  params = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), state.params)
  batch = _batch(1)

  def loss_and_grad(dtype):
    cfg = ModelConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=2, mlp_dim=64, max_len=L, dtype=dtype,
                      position="rope")
    def loss(p):
      s, w, _ = steps.lm_loss_sums(p, Transformer(cfg), batch["inputs"], batch["targets"], batch["weights"],
                                   batch["positions"], deterministic=True, loss_chunk=32)
      return s / w
    return jax.jit(jax.value_and_grad(loss))(params)

  (l16, g16), (l32, g32) = loss_and_grad("bfloat16"), loss_and_grad("float32")
  assert float(l16) != float(l32)  # bf16 rounding is really there
  assert float(l16) == pytest.approx(float(l32), rel=1e-2)
  flat16, flat32 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (g16, g32))
  cosine = flat16 @ flat32 / (np.linalg.norm(flat16) * np.linalg.norm(flat32))
  assert cosine > 0.999, cosine
  assert {x.dtype for x in jax.tree.leaves(g16)} == {jnp.dtype(F32)}
