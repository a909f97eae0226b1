"""Multi-head attention that applies whatever the positional scheme hands it, never asking which scheme it is.

Two numerically equivalent paths (tests check it): an explicit einsum reference, and `jax.nn.dot_product_attention`
(XLA's fused implementation; supports every scheme here since all of them are q/k transforms or additive biases).
A bias that depends on the logits themselves (CoPE's `logit_bias` hook) is computed here from q·kᵀ before either
path runs and handed to it as an ordinary additive bias: that costs one more q·kᵀ per layer for such schemes only,
and keeps both paths unaware of it.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.embeddings.registry import AttentionHooks
from research.model import precision

Array = Any
_NEG_INF = -1e30  # finite, so a fully masked row gives a uniform softmax instead of NaN
CAUSAL_BLOCK = 128  # query block of the causal einsum path (benchmarks/throughput.py: 128 and 64 tie at T=256)
MAX_CAUSAL_BLOCKS = 8
# A per-layer scheme's bias (FIRE, Kerple) depends on positions and its own parameters alone, so XLA is free to compute
# every layer's bias at the start of the forward pass and does: all of them are live at once (4 layers of FIRE at
# 1,024 tokens: 152 MiB of temporaries against 92 for one layer). Above this many bias elements per row ([H, L, S],
# 64 MiB of float32) the bias is computed inside a conditional on a value of the layer's input, which cannot run
# before that input exists, so each layer's bias lives during its layer only (docs/benchmarks.md, "Per-layer biases
# in layer order"). Every training shape here stays below it (configs/gpt2_small.py: 12 · 1024² = 12.6 M) and is
# compiled as before; the conditional changes XLA's fusions, so values agree to rounding, not bit for bit.
LAYER_ORDER_BUDGET = 1 << 24


def attention_mask(length_q: int, length_k: int, causal: bool, key_mask_BxL: Array | None = None,
                   segments_BxL: Array | None = None) -> Array | None:
  """Boolean [B or 1, 1, Lq, Lk], True where attention is allowed. Causality is by index within the row (token
  order), not by position value, so packed rows and offset positions need nothing special. `segments_BxL` (int
  document ids of a self-attention's tokens, data.document_mask) allows only pairs of the same document: a causal
  mask stays lower-triangular with its diagonal, so every query keeps a key."""
  mask = None
  if causal:
    mask = jnp.tril(jnp.ones((length_q, length_k), bool), k=length_k - length_q)[None, None]
  if key_mask_BxL is not None:
    keys = key_mask_BxL.astype(bool)[:, None, None, :]
    mask = keys if mask is None else mask & keys
  if segments_BxL is not None:
    same_BxLxL = segments_BxL[:, :, None] == segments_BxL[:, None, :]
    mask = same_BxLxL[:, None] if mask is None else mask & same_BxLxL[:, None]
  return mask


def _softmax_attention(q_BxHxLxD, k_BxHxSxD, v_BxHxSxD, bias=None, mask=None, dot_general=jax.lax.dot_general):
  """softmax(q·kᵀ/√d + bias)·v on head-major [B, H, L, D] arrays; scores and softmax in float32; both products
  through `dot_general` (`ModelConfig.dot_general`).

  Two rearrangements that change no value beyond rounding, each measured faster on XLA:CPU (forward + backward of
  the T=256 causal attention ~37 → ~28 ms): q is scaled before the product ([L, D] multiplies rather than
  [L, S]), and the softmax is normalised after the product with v, exp(s − max)·v / Σ exp(s − max) (as flash
  attention does), so the division touches [L, D] rather than [L, S].
  """
  q_BxHxLxD = q_BxHxLxD * jnp.asarray(q_BxHxLxD.shape[-1] ** -0.5, q_BxHxLxD.dtype)
  # Products accumulated and returned in float32 (with model.dtype=bfloat16: bf16 operands, f32 scores).
  scores_BxHxLxS = precision.batched_matmul(dot_general, q_BxHxLxD, k_BxHxSxD, contract_last=True,
                                            preferred_element_type=jnp.float32)
  if bias is not None:
    scores_BxHxLxS = scores_BxHxLxS + bias.astype(jnp.float32)
  if mask is not None:
    scores_BxHxLxS = jnp.where(mask, scores_BxHxLxS, _NEG_INF)
  # The row maximum is only a shift for stability (any value gives the same softmax), hence stop_gradient, as in
  # jax.nn.softmax. A fully masked row has max −1e30 and becomes uniform, as before.
  row_max_BxHxLx1 = jax.lax.stop_gradient(jnp.max(scores_BxHxLxS, axis=-1, keepdims=True))
  unnormalised_BxHxLxS = jnp.exp(scores_BxHxLxS - row_max_BxHxLx1)
  denominator_BxHxLx1 = jnp.sum(unnormalised_BxHxLxS, axis=-1, keepdims=True)
  out_BxHxLxD = precision.batched_matmul(dot_general, unnormalised_BxHxLxS.astype(v_BxHxSxD.dtype), v_BxHxSxD,
                                         preferred_element_type=jnp.float32)
  return (out_BxHxLxD / denominator_BxHxLx1).astype(v_BxHxSxD.dtype)


def attention_logits(q_BxLxHxD, k_BxSxHxD, dot_general=jax.lax.dot_general):
  """q·kᵀ/√d as [B, H, L, S] in float32, with the operations and order of `_softmax_attention` (q scaled first)."""
  q_BxLxHxD = q_BxLxHxD * jnp.asarray(q_BxLxHxD.shape[-1] ** -0.5, q_BxLxHxD.dtype)
  # "blhd,bshd->bhls": batch (b, h), contract d; dot_general puts the batch axes first, then l, then s.
  return dot_general(q_BxLxHxD, k_BxSxHxD, (((3,), (3,)), ((0, 2), (0, 2))), preferred_element_type=jnp.float32)


def causal_blocks(length: int, block: int) -> list[tuple[int, int]]:
  """Query blocks [start, stop) of a causal self-attention of `length` tokens: at most `block` queries each, but
  never more than `MAX_CAUSAL_BLOCKS` blocks (long evaluations would otherwise unroll into many small ones)."""
  block = max(block, -(-length // MAX_CAUSAL_BLOCKS))
  return [(start, min(start + block, length)) for start in range(0, length, block)]


def _rows(x, start: int, stop: int):
  """Query rows [start, stop) and key columns [0, stop) of a [.., L or 1, S or 1] bias or mask (None stays None)."""
  if x is None:
    return None
  if x.shape[-2] > 1:
    x = x[..., start:stop, :]
  return x[..., :stop] if x.shape[-1] > 1 else x


def einsum_attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, bias_BxHxLxS=None, mask=None, *, causal=False,
                     block=None, dot_general=jax.lax.dot_general):
  """Reference softmax(q·kᵀ/√d + bias)·v, scores and softmax in float32, the products through `dot_general`.

  With `causal=True` (the caller vouches that `mask` is lower-triangular and leaves every query at least one key,
  i.e. a causal mask without key padding), queries go in blocks of `block` and each block reads only the keys up to
  its last query: the skipped scores are all masked, and a masked score adds exactly 0 to a softmax whose row has
  an allowed key, so the result is the same, for ~1/4 fewer score FLOPs at two blocks (more with more).
  `block` defaults to `CAUSAL_BLOCK`.
  """
  block = block or CAUSAL_BLOCK
  # Head-major copies first: each (b, h) matrix is then contiguous, and XLA:CPU's batched matmuls run faster than on
  # the strided [B, L, H, D] views (forward ~2x, forward+backward ~15%; same products and sums, bitwise the same).
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (q_BxLxHxD, k_BxSxHxD, v_BxSxHxD))
  length = q.shape[2]
  if not causal or k.shape[2] != length or length <= block:
    return _softmax_attention(q, k, v, bias_BxHxLxS, mask, dot_general).transpose(0, 2, 1, 3)
  outs = [_softmax_attention(q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop], _rows(bias_BxHxLxS, start, stop),
                             _rows(mask, start, stop), dot_general)
          for start, stop in causal_blocks(length, block)]
  return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)


def xla_attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, bias_BxHxLxS=None, mask=None, *, causal=False,
                  dot_general=jax.lax.dot_general):
  """The same through `jax.nn.dot_product_attention` (`causal` is unused: the mask already carries causality).

  `jax.nn.dot_product_attention` makes its own products, so `dot_general` only says which operands they get: with
  `precision.bf16_dot_general`, q, k, v enter as bf16 and the result returns to their dtype (its XLA implementation
  then computes the scores as bf16 × bf16 → f32, but the probabilities·v as bf16 → bf16, and its backward pass
  mixes f32 and bf16 operands; the einsum path's products are all bf16 × bf16 → f32).

  The bias stays float32 even when q, k, v are bf16: its default (XLA) implementation computes the scores in float32
  (bf16 products, f32 accumulation) and adds the bias there, so rounding ALiBi or T5 biases to bf16 first (8
  significant bits: between 128 and 256 the spacing is 1) would only lose precision. (`implementation="cudnn"`, which
  we do not request, would want the bias in q's dtype.)
  """
  if dot_general is precision.bf16_dot_general:
    dtype = q_BxLxHxD.dtype
    q16, k16, v16 = (x.astype(precision.OPERAND_DTYPE) for x in (q_BxLxHxD, k_BxSxHxD, v_BxSxHxD))
    return jax.nn.dot_product_attention(q16, k16, v16, bias=bias_BxHxLxS, mask=mask).astype(dtype)
  return jax.nn.dot_product_attention(q_BxLxHxD, k_BxSxHxD, v_BxSxHxD, bias=bias_BxHxLxS, mask=mask)


ATTENTION_FNS: dict[str, Callable] = {"einsum": einsum_attention, "xla": xla_attention}
# The collection attention probabilities are sown into when the caller asks for it (analysis only): apply(...,
# mutable=[INTERMEDIATES]) returns them at intermediates/block_{i}/attention/probabilities, a 1-tuple of
# float32 [B, H, L, S] per layer. Otherwise nothing is computed or stored (is_mutable_collection is a trace-time check).
INTERMEDIATES = "intermediates"


def attention_probabilities(q_BxLxHxD, k_BxSxHxD, bias=None, mask=None, dot_general=jax.lax.dot_general):
  """softmax(q·kᵀ/√d + bias) over the allowed keys, float32 [B, H, L, S] (0 exactly on masked keys; a query with no
  allowed key gets a uniform row, as both attention paths do). q·kᵀ goes through `dot_general`, the model's product
  (`ModelConfig.dot_general`): with model.dtype=bfloat16 these are the probabilities of the bf16 scores the forward
  pass computes, not of a float32 q·kᵀ it never made."""
  scores_BxHxLxS = attention_logits(q_BxLxHxD, k_BxSxHxD, dot_general)
  if bias is not None:
    scores_BxHxLxS = scores_BxHxLxS + bias.astype(jnp.float32)
  if mask is not None:
    scores_BxHxLxS = jnp.where(mask, scores_BxHxLxS, _NEG_INF)
  return jax.nn.softmax(scores_BxHxLxS, axis=-1)

# `model.attention=auto`: the path per backend (jax.default_backend()'s name). The einsum path is the faster one on
# XLA:CPU (docs/benchmarks.md); on GPU and TPU jax.nn.dot_product_attention is the one XLA (and, with
# `implementation="cudnn"`, cuDNN) fuses. A backend not named here gets the fused path too.
AUTO_ATTENTION = {"cpu": "einsum", "gpu": "xla", "cuda": "xla", "rocm": "xla", "tpu": "xla"}


def resolve(kind: str, backend: str | None = None) -> str:
  """The attention path `model.attention=kind` runs on `backend` (default: jax.default_backend()): "auto" becomes
  einsum on CPU and xla on GPU / TPU (`AUTO_ATTENTION`); "einsum" and "xla" stay what they are. The one place that
  decides: the model calls it, and so does whatever needs to know what a run computes with (resume checks)."""
  if kind != "auto":
    return kind
  backend = (backend or jax.default_backend()).lower()
  return AUTO_ATTENTION.get(backend, "xla")


def bias_in_layer_order(own: nn.Module, x_BxLxD: Array, positions_BxL: Array) -> Array:
  """`own`'s bias, computed only once the layer's input `x_BxLxD` exists: both branches of the conditional compute
  the same bias, and its predicate reads x (NaN there takes the other branch, which gives the same bias), so the
  value is the scheme's own and only the schedule changes (see LAYER_ORDER_BUDGET). The bias the caller computed
  outside is unused and removed by XLA."""
  def bias(module, positions):
    return module.attention_hooks(positions, positions).bias
  return nn.cond(jnp.isnan(x_BxLxD[0, 0, 0]), bias, bias, own, positions_BxL)


class MultiHeadAttention(nn.Module):
  """Self-attention. The positional scheme's `hooks` (q/k transforms, a score bias, a logit-dependent bias, each
  possibly None) are computed once by the transformer for a shared scheme; a per-layer scheme (`per_layer`) is
  built here as the submodule `position_embed` and computes them from `positions_BxL`. `causal=True` says the mask
  is causal with no key padding (see `einsum_attention`)."""

  cfg: Any

  @nn.compact
  def __call__(self, x_BxLxD, *, hooks: AttentionHooks | None = None, positions_BxL=None, mask=None, causal=False):
    cfg = self.cfg
    dense = lambda features, axis, name: nn.DenseGeneral(  # noqa: E731
        features, axis=axis, use_bias=False, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
        dot_general=cfg.dot_general, name=name)
    batch, length = x_BxLxD.shape[:2]
    # Projections over [tokens, ...] rather than [B, L, ...]: a weight gradient that contracts one flattened token
    # axis is a plain matmul on XLA:CPU; contracting (B, L) makes it materialise transposed copies.
    x_NxD = x_BxLxD.reshape(batch * length, x_BxLxD.shape[-1])
    qkv_Nx3xHxDh = dense((3, cfg.num_heads, cfg.head_dim), -1, "qkv")(x_NxD)
    qkv_BxLx3xHxDh = qkv_Nx3xHxDh.reshape(batch, length, *qkv_Nx3xHxDh.shape[1:])
    q, k, v = (qkv_BxLx3xHxDh[:, :, i] for i in range(3))
    scheme = cfg.scheme
    if scheme.per_layer:
      own = scheme(cfg, name="position_embed")
      hooks = own.attention_hooks(positions_BxL, positions_BxL)
      bias = hooks.bias
      row_size = 0 if bias is None else bias.size // bias.shape[0] if bias.ndim == 4 else bias.size  # [H, L, S]
      if row_size > LAYER_ORDER_BUDGET and not self.is_initializing():
        hooks = hooks._replace(bias=bias_in_layer_order(own, x_BxLxD, positions_BxL))
    hooks = hooks or AttentionHooks()
    if hooks.q_fn is not None:
      q = hooks.q_fn(q)
    if hooks.k_fn is not None:
      k = hooks.k_fn(k)
    bias = hooks.bias
    if hooks.logit_bias is not None:
      scores_BxHxLxS = attention_logits(q, k, cfg.dot_general)
      if bias is not None:
        scores_BxHxLxS = scores_BxHxLxS + bias.astype(jnp.float32)
      extra = hooks.logit_bias(q, scores_BxHxLxS, mask).astype(jnp.float32)
      bias = extra if bias is None else bias.astype(jnp.float32) + extra
    if self.is_mutable_collection(INTERMEDIATES):  # analysis asked for the probabilities (research.analysis)
      self.sow(INTERMEDIATES, "probabilities", attention_probabilities(q, k, bias, mask, cfg.dot_general))
    out_BxLxHxDh = ATTENTION_FNS[resolve(cfg.attention)](q, k, v, bias, mask, causal=causal,
                                                         dot_general=cfg.dot_general)
    out_NxHxDh = out_BxLxHxDh.reshape(batch * length, *out_BxLxHxDh.shape[2:])
    return dense(cfg.width, (-2, -1), "out")(out_NxHxDh).reshape(batch, length, cfg.width)
