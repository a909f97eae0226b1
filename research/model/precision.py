"""Matmul precision of the model: the dot products that `model.dtype` selects (docs/architecture.md, "dtypes").

`model.dtype=float32` multiplies with `jax.lax.dot_general` as it is. `model.dtype=bfloat16` multiplies with
`bf16_dot_general`: bf16 operands and a float32 result, in the forward pass and in both products of its backward
pass, the way XLA multiplies bf16 on TPU and GPU. Everything between the products (activations, the residual stream,
softmax, layer norms, the loss, parameters, gradients) stays float32: an operand is rounded to bf16 only as it enters
a product.

Why the backward pass needs its own rule: JAX's transpose of `dot_general(bf16, bf16, preferred_element_type=f32)`
multiplies the float32 output cotangent with the other bf16 operand, a mixed f32 × bf16 product that XLA:CPU
computes at the float32 rate (benchmarks/throughput.py measures both). Here the cotangent is rounded to bf16
first, so all three products of a layer run at the bf16 rate, and their float32 results are kept (a weight gradient
is never rounded to bf16).

How the products are laid out: XLA:CPU multiplies bf16 × bf16 → f32 only through YNNPACK, which takes a product
whose left operand contracts its last axis, both operands row-major; it runs any other bf16 product as float32
(converting the operands) or, for a few layouts, fails. So every product here is reshaped to such a matmul, and the
one product of the backward pass that contracts the operands' leading axis (a weight gradient: Xᵀ·G over the
tokens) gets its smaller operand transposed and padded (see `_transposed_product`).

Why float32 results: on a CPU with AVX512-BF16 (`vdpbf16ps` accumulates bf16 pairs into float32) a 2048³ product
with bf16 operands and a float32 result runs at about twice the float32 rate, while one with a bf16 result runs
slower than float32 (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = Any
DotGeneral = Callable[..., Array]
OPERAND_DTYPE = jnp.bfloat16


def _kept(ndim: int, *used: Sequence[int]) -> list[int]:
  return [i for i in range(ndim) if not any(i in u for u in used)]


def _dims(rank: int, lhs_axis: int, rhs_axis: int):
  """Dimension numbers of a product of two [(B,) X, Y] arrays contracting `lhs_axis` with `rhs_axis`."""
  batch = (0,) if rank == 3 else ()
  return ((lhs_axis % rank,), (rhs_axis % rank,)), (batch, batch)


def _swap_last(x):
  return jnp.swapaxes(x, -1, -2)


def _transposed_product(x16_BxMxX, y16_BxMxY, pad: bool = True):
  """xᵀ·y: [(B,) X, Y] in float32, contracting the M axis that both operands lead with (a weight gradient, with M
  the tokens).

  XLA:CPU runs a bf16 × bf16 → f32 product through YNNPACK only when the left operand contracts its last axis
  (and both have the default row-major layout); any other bf16 product falls back to an Eigen kernel that takes
  only float32, so XLA upcasts its operands to float32 (or, for some layouts, fails at run time). A transpose in
  front of the product does not help: XLA folds it back into the product's dimension numbers. So the smaller
  operand is transposed and padded by one zero row that the result then drops: a pad is not a transpose and cannot
  be folded, so the product stays [X + 1, M] · [M, Y] and runs at the bf16 rate, for one copy of the smaller
  operand. With `pad=False` (other backends, whose bf16 kernels take any layout) the operands are multiplied as
  they are.
  """
  rank = x16_BxMxX.ndim
  if not pad:
    return jax.lax.dot_general(x16_BxMxX, y16_BxMxY, _dims(rank, -2, -2), preferred_element_type=jnp.float32)
  pad_row = [(0, 0, 0)] * (rank - 2) + [(0, 1, 0), (0, 0, 0)]
  zero = jnp.zeros((), OPERAND_DTYPE)
  swap = x16_BxMxX.shape[-1] > y16_BxMxY.shape[-1]
  small, other = (y16_BxMxY, x16_BxMxX) if swap else (x16_BxMxX, y16_BxMxY)
  lhs = jax.lax.pad(_swap_last(small), zero, pad_row)  # [(B,) small + 1, M]
  out = jax.lax.dot_general(lhs, other, _dims(rank, -1, -2), preferred_element_type=jnp.float32)[..., :-1, :]
  return _swap_last(out) if swap else out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bf16_matmul(a_BxMxK, b, rhs_contract_last: bool):
  """[(B,) M, K] · b → float32 [(B,) M, N] from bf16 operands, with b = [(B,) K, N], or [(B,) N, K] when
  `rhs_contract_last` (B: an optional leading batch axis). Both forms run on XLA:CPU's bf16 kernels as they are."""
  return _bf16_matmul_fwd(a_BxMxK, b, rhs_contract_last)[0]


def _bf16_matmul_fwd(a_BxMxK, b, rhs_contract_last):
  a16, b16 = a_BxMxK.astype(OPERAND_DTYPE), b.astype(OPERAND_DTYPE)
  out = jax.lax.dot_general(a16, b16, _dims(a16.ndim, -1, -1 if rhs_contract_last else -2),
                            preferred_element_type=jnp.float32)
  # The residuals are the bf16 operands (half the memory of float32 ones); the zero-size arrays carry the inputs'
  # dtypes to the backward pass, whose cotangents must have them.
  return out, (a16, b16, jnp.zeros((0,), a_BxMxK.dtype), jnp.zeros((0,), b.dtype))


def _bf16_matmul_bwd(rhs_contract_last, residuals, g_BxMxN):
  a16, b16, a_like, b_like = residuals
  g16 = g_BxMxN.astype(OPERAND_DTYPE)
  rank = g16.ndim
  # g·bᵀ: [(B,) M, N] · [(B,) N, K] (b as given when it contracts its last axis, else b's transpose as the product's
  # dimension numbers), both forms that the bf16 kernels take.
  g_a = jax.lax.dot_general(g16, b16, _dims(rank, -1, -2 if rhs_contract_last else -1),
                            preferred_element_type=jnp.float32)
  pad = jax.default_backend() == "cpu"
  g_b = _transposed_product(g16, a16, pad) if rhs_contract_last else _transposed_product(a16, g16, pad)  # gᵀa, aᵀg
  return g_a.astype(a_like.dtype), g_b.astype(b_like.dtype)


_bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def bf16_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None, preferred_element_type=None,
                     **unused) -> Array:
  """`jax.lax.dot_general` with bf16 operands and a float32 result, whatever the inputs' dtypes, and a gradient
  whose two products are bf16 × bf16 → float32 too (the cotangents come back in the inputs' dtypes).

  The signature is `jax.lax.dot_general`'s, so it can be handed to `flax.linen.Dense(dot_general=...)`; `precision`
  and `preferred_element_type` are accepted and ignored (the operands are bf16 and the result is float32 by
  construction).
  """
  del precision, preferred_element_type, unused
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  lhs_kept = _kept(lhs.ndim, lhs_contract, lhs_batch)
  rhs_kept = _kept(rhs.ndim, rhs_contract, rhs_batch)
  batch_shape = [lhs.shape[i] for i in lhs_batch]
  lhs_kept_shape, rhs_kept_shape = [lhs.shape[i] for i in lhs_kept], [rhs.shape[i] for i in rhs_kept]
  size = lambda axes, x: int(np.prod([x.shape[i] for i in axes], dtype=np.int64))  # noqa: E731
  lead = [size(lhs_batch, lhs)] if lhs_batch else []
  # Every product as a plain matmul [(B,) M, K] · [(B,) K, N] (or [(B,) N, K]), the forms XLA:CPU's bf16 kernels
  # take; other forms run in float32 or, for some layouts (a contraction over the leading axis of an operand with
  # several kept axes, as the q/k/v weight gradient), fail ("Unsupported element type for DotThunk").
  a = jax.lax.transpose(lhs, (*lhs_batch, *lhs_kept, *lhs_contract)).reshape(
      *lead, size(lhs_kept, lhs), size(lhs_contract, lhs))
  # The right operand stays [(B,) N, K] when it already contracts its trailing axes in order (a tied head's table,
  # attention's keys), else it becomes [(B,) K, N].
  contract_last = list(rhs_contract) == list(range(rhs.ndim - len(rhs_contract), rhs.ndim)) and \
      list(rhs_batch) + rhs_kept == list(range(rhs.ndim - len(rhs_contract)))
  rhs_order = (*rhs_batch, *rhs_kept, *rhs_contract) if contract_last else (*rhs_batch, *rhs_contract, *rhs_kept)
  rhs_sizes = (rhs_kept, rhs_contract) if contract_last else (rhs_contract, rhs_kept)
  b = jax.lax.transpose(rhs, rhs_order).reshape(*lead, *(size(axes, rhs) for axes in rhs_sizes))
  return _bf16_matmul(a, b, contract_last).reshape(*batch_shape, *lhs_kept_shape, *rhs_kept_shape)


def dot_general_for(dtype: str) -> DotGeneral:
  """The product of `model.dtype`: `jax.lax.dot_general` for float32, `bf16_dot_general` for bfloat16."""
  return bf16_dot_general if jnp.dtype(dtype) == jnp.bfloat16 else jax.lax.dot_general


def batched_matmul(dot_general: DotGeneral, a_BxHxMxK: Array, b_BxHxKxN: Array, *, contract_last: bool = False,
                   preferred_element_type=None) -> Array:
  """[B, H, M, K] · [B, H, K, N] → [B, H, M, N] (or · [B, H, N, K]ᵀ with `contract_last`), through `dot_general`:
  the two products of attention, "bhld,bhsd->bhls" and "bhls,bhsd->bhld", as the einsums lower them."""
  dims = (((3,), (3 if contract_last else 2,)), ((0, 1), (0, 1)))
  return dot_general(a_BxHxMxK, b_BxHxKxN, dims, preferred_element_type=preferred_element_type)
