"""The token embedding: a V×d lookup table, its initialisers, dropout, and the tied output head `attend`."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = Any
Initializer = Callable[..., Array]


def check_ids(ids: Array, size: int, what: str = "token id", hint: str = "") -> None:
  """Raises ValueError naming the first id outside [0, size); a no-op for traced (abstract) arrays.

  JAX gathers clamp out-of-range indices silently. Concrete inputs (eager calls, host batches) are checked here;
  under `jit` the lookups below fill out-of-range rows with NaN instead, so a bad id can never pass as a clamp.
  """
  if isinstance(ids, jax.core.Tracer):
    return
  ids = np.asarray(ids)
  if ids.size == 0:
    return
  low, high = int(ids.min()), int(ids.max())
  if low < 0 or high >= size:
    value = high if high >= size else low
    count = int(((ids < 0) | (ids >= size)).sum())
    raise ValueError(f"{what} {value} is outside [0, {size}){hint} ({count} such entries)")


def lookup(table_NxD: Array, ids: Array, what: str = "token id", hint: str = "") -> Array:
  """table[ids] that errors (eager) or yields NaN rows (traced) for ids outside the table, never a clamp.

  jnp.take normalises negative indices (−1 → the last row) before its fill mode looks at them, so a negative id's
  row is set to NaN afterwards (on the output, which is safe for any integer dtype of `ids`)."""
  check_ids(ids, table_NxD.shape[0], what, hint)
  ids = jnp.asarray(ids)
  rows = jnp.take(table_NxD, ids, axis=0, mode="fill", fill_value=jnp.nan)
  return jnp.where((ids < 0)[..., None], jnp.nan, rows).astype(rows.dtype)


def from_matrix(matrix: Array) -> Initializer:
  """An initializer that returns `matrix` (e.g. pretrained vectors aligned to the vocabulary)."""
  matrix = np.asarray(matrix, dtype=np.float32)

  def init(key, shape, dtype=jnp.float32):
    del key
    if tuple(shape) != matrix.shape:
      raise ValueError(f"pretrained matrix has shape {matrix.shape}, the embedding table needs {tuple(shape)}")
    return jnp.asarray(matrix, dtype)

  return init


def make_init(kind: str, std: float) -> Initializer:
  """normal(std), or uniform on [-a, a] with a = std·√3 so that both have standard deviation `std`.

  `pretrained` gives normal(std) too: the table's shape and placeholder values, which the trainer replaces with the
  aligned vectors at a fresh start (research/embeddings/pretrained.py) and a restore replaces with the checkpoint's.
  """
  if kind in ("normal", "pretrained"):
    return nn.initializers.normal(stddev=std)
  if kind == "uniform":
    a = std * np.sqrt(3.0)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -a, a)
  raise ValueError(f"embedding init {kind!r} is not one of normal, uniform, pretrained")


class TokenEmbedding(nn.Module):
  """V×d table. `__call__(ids)` embeds; `attend(h)` returns h·Eᵀ, the tied output head.

  Attributes:
    vocab_size, features: the table shape V×e (parameters always float32).
    out_features: the width d of the vectors it returns; 0 = features. When it differs (ALBERT's factorized
      embedding, Lan et al. 2020) a learned e→d `projection` follows the lookup, and `attend` first projects the
      hidden state d→e (`head_projection`) and then goes back through the same table: V·e + 2·e·d parameters
      instead of V·d. The table leaf stays ('token_embed', 'embedding'), so the optimizer's embedding group finds it;
      the projections are ordinary matrices (group 'other').
    embedding_init: any initializer; `make_init` or `from_matrix` give the usual ones.
    scale: multiply the looked-up rows by √d (Vaswani et al. 2017; d = out_features, before any projection).
    dropout: ordinary dropout on the output vectors.
    token_dropout: AWD-LSTM embedding dropout: each vocabulary row is zeroed for the whole step with this
      probability (every occurrence of that token loses its vector) and kept rows are scaled by 1/(1-p).
    dtype: compute dtype of the outputs.
    dot_general: the product of the projections and of `attend` (`jax.lax.dot_general`, or the model's
      `ModelConfig.dot_general`).
  """

  vocab_size: int
  features: int
  embedding_init: Initializer = nn.initializers.normal(stddev=0.02)
  scale: bool = False
  dropout: float = 0.0
  token_dropout: float = 0.0
  dtype: Any = jnp.float32
  out_features: int = 0
  dot_general: Callable = jax.lax.dot_general

  @property
  def width(self) -> int:
    return self.out_features or self.features

  def setup(self):
    self.embedding = self.param("embedding", self.embedding_init, (self.vocab_size, self.features), jnp.float32)
    self.drop = nn.Dropout(self.dropout)
    if self.width != self.features:
      dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,  # noqa: E731
                                       dot_general=self.dot_general, name=name)
      self.projection = dense(self.width, "projection")  # kernel [e, d]
      self.head_projection = dense(self.features, "head_projection")  # kernel [d, e]

  def __call__(self, ids_BxL: Array, *, deterministic: bool = True) -> Array:
    x_BxLxD = lookup(self.embedding, ids_BxL, "token id", " (the vocabulary size)").astype(self.dtype)
    if self.token_dropout > 0.0 and not deterministic:
      keep_V = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.token_dropout, (self.vocab_size,))
      keep_BxL = jnp.take(keep_V, ids_BxL, axis=0, mode="clip")  # ids are already checked above
      x_BxLxD = x_BxLxD * (keep_BxL[..., None] / (1.0 - self.token_dropout)).astype(self.dtype)
    if self.scale:
      x_BxLxD = x_BxLxD * jnp.sqrt(float(self.width)).astype(self.dtype)
    if self.width != self.features:
      x_BxLxD = self.projection(x_BxLxD)
    if self.dropout > 0.0:
      x_BxLxD = self.drop(x_BxLxD, deterministic=deterministic)
    return x_BxLxD

  def all_vectors(self) -> Array:
    """[V, d]: every row as the lookup returns it (scaled, projected), without dropout."""
    x_VxD = self.embedding.astype(self.dtype)
    if self.scale:
      x_VxD = x_VxD * jnp.sqrt(float(self.width)).astype(self.dtype)
    return self.projection(x_VxD) if self.width != self.features else x_VxD

  def dropout_vectors(self, x_BxLxD: Array, *, deterministic: bool = True) -> Array:
    return self.drop(x_BxLxD, deterministic=deterministic) if self.dropout > 0.0 else x_BxLxD

  def attend(self, h_BxLxD: Array) -> Array:
    """Logits h·Eᵀ through the same table (weight tying, Press & Wolf 2017; Inan et al. 2017); factorized, the
    hidden state is first projected d→e."""
    if self.width != self.features:
      h_BxLxD = self.head_projection(h_BxLxD)
    return attend_rows(h_BxLxD, self.embedding.astype(h_BxLxD.dtype), self.dot_general)


def attend_rows(h_BxLxD: Array, rows_VxD: Array, dot_general: Callable = jax.lax.dot_general) -> Array:
  """h·Rᵀ: "...d,vd->...v" (every leading axis of h kept, d contracted with the rows' last axis) through
  `dot_general`."""
  return dot_general(h_BxLxD, rows_VxD, (((h_BxLxD.ndim - 1,), (1,)), ((), ())))
