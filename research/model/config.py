"""The frozen model config: every shape and choice of the network, nothing about training.

Separate from the experiment `ml_collections.ConfigDict` (docs/architecture.md, "Configs"): the experiment config is
converted once with `ModelConfig.from_dict`, and evaluation variants are derived with `dataclasses.replace`. Invalid
combinations fail here, at construction, with a message that names the bad value and what is allowed.

These field defaults ARE the defaults of the experiment config's `model` section (`research.schema` builds that
section from them), so a model built here without arguments is the model a run builds. Two fields are set from
the rest of the experiment config instead: `vocab_size` (the tokenizer's size) and `kind` (from `objective`); and
the experiment's `model.max_len = 0` means `data.seq_len`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax.numpy as jnp

from research.embeddings import chars, registry
from research.model import precision

KINDS = ("decoder", "encoder")
COMBINES = ("add", "concat")
NORMS = ("pre", "post")
DTYPES = ("float32", "bfloat16")
INITS = ("normal", "uniform", "pretrained")  # pretrained: the trainer sets the table
ATTENTION_IMPLS = ("auto", "einsum", "xla")  # auto: attention.resolve picks per backend
REMATS = ("none", "block", "dots_saveable")
ROPE_SCALINGS = ("none", "linear", "ntk", "yarn")
CHAR_EMBEDDINGS = ("none", "concat", "sum")
CHAR_PADDINGS = ("zero", "learned")
DERIVED_FIELDS = ("vocab_size", "kind")  # set from the tokenizer and the objective, not by the experiment config
POSITION_SAMPLINGS = ("none", "randomized")
# The largest model.embed_init_std. The tables are float32: 1e40 is inf there, and from about 1e15 (post-LN) the
# loss or its gradients overflow at step 1, a non-finite loss that named no field. Up to 1e10 both norms stay finite.
MAX_EMBED_INIT_STD = 1e6
# The largest model.max_position: the schemes compute with positions as float32 (exact integers up to 2^24), and
# `positions.randomized_positions` permutes all of [0, max_position) for every row of every step (int32 indices:
# 3e9 was an OverflowError once the run had written its files).
MAX_POSITION = 2 ** 24


def _float_fields() -> tuple[str, ...]:
  """ModelConfig's fields whose default is a float: each must be a finite number (`__post_init__`)."""
  return tuple(f.name for f in dataclasses.fields(ModelConfig) if isinstance(f.default, float))


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"{field}={value!r} is not one of {', '.join(allowed)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and choices of the transformer.

  Widths: `d_model` is the token-embedding width. With `combine="add"` it is also the transformer width. With
  `combine="concat"` an absolute scheme contributes `pos_dim` more channels, so the transformer width is
  `d_model + pos_dim` (see `width`), and the parameter count grows accordingly.
  """

  vocab_size: int = 256  # set from the tokenizer in a run
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  kind: str = "decoder"  # decoder = causal LM; encoder = bidirectional (masked LM); set from `objective` in a run
  # Positions.
  position: str = "learned"  # none | learned | sinusoidal | rope | alibi | t5 (or any registered scheme)
  combine: str = "add"  # add | concat
  pos_dim: int = 0  # width of the positional vector for combine=concat; 0 means d_model
  max_len: int = 128  # size of a learned position table; other schemes ignore it (experiments: 0 = data.seq_len)
  sinusoidal_wavelength: float = 10_000.0
  rope_base: float = 10_000.0
  rope_fraction: float = 1.0  # fraction of each head's dimensions that rotate
  rope_scaling: str = "none"  # none | linear | ntk | yarn
  rope_factor: float = 1.0  # s: the context-length ratio the scaling targets
  rope_original_len: int = 0  # training length the scaling extends from (YaRN's ramp); 0 = max_len (= data.seq_len)
  t5_buckets: int = 32
  t5_max_distance: int = 128
  rope_keep_fraction: float = 1.0  # p-RoPE: fraction p of RoPE's frequencies kept (the highest); the rest are 0
  cope_max_pos: int = 64  # CoPE: size of each layer's position table; contextual positions clamp to it minus 1
  # FIRE: L_init, the fixed length of its threshold L = |L_mult| · L_init (the paper's 512, set for training at 2,048
  # tokens; distances are normalised by ψ(max(L, i)), so a run on shorter windows only sees inputs up to ψ(T)/ψ(L)).
  fire_init_length: float = 512.0
  # Randomized positions (Ruoss et al. 2023): during training each row's positions are a sorted sample from
  # [0, max_position); evaluation uses arange. 0 = the training length (resolved by the training config).
  position_sampling: str = "none"
  max_position: int = 0
  # Embeddings.
  tie_embeddings: bool = True
  embed_init: str = "normal"  # normal | uniform | pretrained (vectors from model.pretrained.path, set by the trainer)
  # Unit-scale token vectors, as fairseq / Vaswani et al.: table ~ N(0, 1/d), multiplied by sqrt(d) at the input.
  # A table of std 0.02 without the scale is swamped by unit-amplitude sinusoids (docs/results.md).
  embed_init_std: float = 0.0  # 0 = d_model ** -0.5 (resolved at construction); also the learned / T5 tables' std
  embed_scale: bool = True  # multiply token vectors by sqrt(d_model), as Vaswani et al.
  # ALBERT's factorized embedding: a V×table_dim table and a learned table_dim→d_model projection (the tied head
  # projects d_model→table_dim and goes back through the same table). 0 = d_model: the plain V×d table.
  table_dim: int = 0
  # Kim et al. 2016's character CNN over every vocabulary entry's spelling (research/embeddings/chars.py), combined
  # with the token vectors: none | sum (CNN → d_model, added) | concat ([token; CNN] → d_model by a learned map).
  # The tied head then uses the combined vectors. The trainer passes the spellings' char ids to the model.
  char_embeddings: str = "none"
  char_dim: int = 16  # width of a character's embedding
  # The padding character's vector: zero (Kim et al.'s code holds it at zero, no gradient) | learned (an ordinary
  # row, what runs before the field existed did: schema.LEGACY_VALUES).
  char_padding: str = "zero"
  # How a piece that stands for no text (a byte of a multi-byte character, whitespace alone) is spelled: marked (a
  # reserved mark, then its raw token string, never a text piece's spelling) | raw (the raw string alone, which can
  # be a text piece's: what runs before the field existed did, schema.LEGACY_VALUES). research/embeddings/chars.py.
  char_spelling: str = "marked"
  char_filters: str = chars.DEFAULT_FILTERS  # "width:count,...": one convolution per width (Kim et al.'s small model)
  embedding_dropout: float = 0.0  # dropout on the embedded vectors
  token_dropout: float = 0.0  # AWD-LSTM: drop whole vocabulary rows for a step
  # Blocks.
  norm: str = "pre"
  dropout: float = 0.0
  # Matmul operands: float32 | bfloat16 (bf16 operands, float32 results, in the forward and backward pass:
  # research/model/precision.py). Activations, softmax, norms, the loss and the parameters are float32 in both.
  dtype: str = "float32"
  # einsum = explicit reference path (fastest on CPU); xla = jax.nn.dot_product_attention; auto (default) = einsum on
  # CPU, xla on GPU / TPU (research.model.attention.resolve). Runs before auto existed ran einsum (schema.LEGACY_VALUES).
  attention: str = "auto"
  # Gradient checkpointing per block (flax nn.remat): none | block (keep each block's inputs, recompute the rest in
  # the backward pass) | dots_saveable (keep the matmul outputs too, recompute the elementwise work). Same values and
  # gradients; on a GPU / TPU less activation memory for more compute, on XLA:CPU the recomputation and no memory
  # saved (measured: docs/architecture.md, "Gradient checkpointing").
  remat: str = "none"

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"model.{name}={value!r} must be a positive integer")
    if not self.embed_init_std:  # frozen: the resolved std is set once here, so every reader sees the same number
      object.__setattr__(self, "embed_init_std", float(self.d_model) ** -0.5)
    if self.embed_init_std < 0:
      raise ValueError(f"model.embed_init_std={self.embed_init_std!r} must be >= 0 (0 = d_model ** -0.5)")
    if self.embed_init_std > MAX_EMBED_INIT_STD:
      raise ValueError(f"model.embed_init_std={self.embed_init_std!r} must be at most {MAX_EMBED_INIT_STD:g} (larger "
                       f"float32 tables overflow the loss or its gradient; 0 = d_model ** -0.5)")
    if not isinstance(self.rope_original_len, int) or self.rope_original_len < 0:
      raise ValueError(f"model.rope_original_len={self.rope_original_len!r} must be an integer >= 0 (0 = max_len)")
    for name in ("rope_base", "sinusoidal_wavelength"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"model.{name}={value!r} must be a finite number > 0 (the base of the wavelengths)")
    if self.max_len < 1:
      raise ValueError(f"model.max_len={self.max_len!r} must be >= 1 (the learned position table length)")
    length = self.fire_init_length  # checked for every scheme: a sweep that switches FIRE on meets it
    if isinstance(length, bool) or not isinstance(length, (int, float)) or not 0 < length < float("inf"):
      raise ValueError(f"model.fire_init_length={length!r} must be a finite number > 0 (FIRE's L_init)")
    _choice("model.kind", self.kind, KINDS)
    _choice("model.combine", self.combine, COMBINES)
    _choice("model.norm", self.norm, NORMS)
    _choice("model.dtype", self.dtype, DTYPES)
    _choice("model.embed_init", self.embed_init, INITS)
    _choice("model.attention", self.attention, ATTENTION_IMPLS)
    _choice("model.remat", self.remat, REMATS)
    _choice("model.rope_scaling", self.rope_scaling, ROPE_SCALINGS)
    _choice("model.position_sampling", self.position_sampling, POSITION_SAMPLINGS)
    if not isinstance(self.table_dim, int) or self.table_dim < 0:
      raise ValueError(f"model.table_dim={self.table_dim!r} must be an integer >= 0 (0 = d_model)")
    _choice("model.char_embeddings", self.char_embeddings, CHAR_EMBEDDINGS)
    _choice("model.char_padding", self.char_padding, CHAR_PADDINGS)
    _choice("model.char_spelling", self.char_spelling, chars.SPELLINGS)
    chars.parse_filters(self.char_filters)  # checked even when unused: a sweep that switches the CNN on meets it
    if not isinstance(self.char_dim, int) or self.char_dim < 1:
      raise ValueError(f"model.char_dim={self.char_dim!r} must be a positive integer")
    if self.char_embeddings != "none":
      if self.token_dropout:
        raise ValueError("model.token_dropout drops table rows; with model.char_embeddings it is not supported")
    if self.pos_dim < 0:
      raise ValueError(f"model.pos_dim={self.pos_dim} must be >= 0")
    for name in ("dropout", "embedding_dropout", "token_dropout"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise ValueError(f"model.{name}={value!r} must be in [0, 1)")
    if self.width % self.num_heads:
      raise ValueError(
          f"model.num_heads={self.num_heads} does not divide the model width {self.width}; "
          f"allowed head counts: {', '.join(str(h) for h in _divisors(self.width))}")
    if not isinstance(self.max_position, int) or self.max_position < 0:
      raise ValueError(f"model.max_position={self.max_position!r} must be an integer >= 0 (0 = the training length)")
    if self.position_sampling == "randomized" and self.max_position > MAX_POSITION:
      raise ValueError(f"model.max_position={self.max_position} is too large: at most {MAX_POSITION:,} (2^24: "
                       f"positions are float32 in every scheme, exact up to 2^24, and randomized positions draw "
                       f"each row's sample from a permutation of [0, max_position))")
    for name in _float_fields():  # after the fields' own checks: what NaN or inf passed (`nan < 1` is False), and a
      value = getattr(self, name)  # NaN field never equals itself on resume
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"model.{name}={value!r} must be a finite number")
    scheme = self.scheme
    scheme.validate(self)
    limit = scheme.max_length(self)
    if self.position_sampling == "randomized" and limit is not None and self.max_position > limit:
      note = scheme.max_length_note(self)
      fix = "raise model.max_len or lower max_position" if note is None else f"{note}; lower max_position"
      raise ValueError(f"model.max_position={self.max_position} exceeds the {limit} positions that "
                       f"model.position={self.position!r} can represent ({fix})")

  @property
  def scheme(self) -> type[registry.PositionalScheme]:
    """The positional scheme's class (registered name or package.module:Class)."""
    return registry.get_scheme(self.position)

  @property
  def table_width(self) -> int:
    """Width e of the token table's rows (model.table_dim, or d_model)."""
    return self.table_dim or self.d_model

  @property
  def uses_chars(self) -> bool:
    return self.char_embeddings != "none"

  @property
  def factorized(self) -> bool:
    return self.table_width != self.d_model

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def positional_width(self) -> int:
    """Channels that an absolute scheme concatenates to the token vector (0 when adding)."""
    if self.combine != "concat" or not self.scheme.has_input:
      return 0
    return self.pos_dim or self.d_model

  @property
  def width(self) -> int:
    return self.d_model + self.positional_width

  @property
  def compute_dtype(self):
    """The dtype of activations, norms and softmax: float32 whatever `dtype` says (bf16 enters the products only,
    through `dot_general`)."""
    return jnp.dtype(jnp.float32)

  @property
  def dot_general(self):
    """The product every matmul of the model uses (`precision.dot_general_for(dtype)`)."""
    return precision.dot_general_for(self.dtype)

  @property
  def causal(self) -> bool:
    return self.kind == "decoder"

  @classmethod
  def experiment_fields(cls) -> dict[str, Any]:
    """{field: default} of the fields an experiment config sets (all but vocab_size and kind)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in DERIVED_FIELDS}

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
    """Builds from a mapping (e.g. `config.model.to_dict()`); unknown keys are an error listing the valid ones."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f"unknown model field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(fields))}")
    return cls(**dict(values))


def _divisors(n: int) -> list[int]:
  return [h for h in range(1, n + 1) if n % h == 0]
