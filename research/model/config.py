"""The frozen model config: every shape and choice of the network, nothing about training.

Separate from the experiment `ml_collections.ConfigDict` (STYLE.md "Borrow" 5): the experiment config is converted
once with `ModelConfig.from_dict`, and evaluation variants are derived with `dataclasses.replace`. Invalid combinations
fail here, at construction, with a message that names the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from research.embeddings import registry

KINDS = ("decoder", "encoder")
COMBINES = ("add", "concat")
NORMS = ("pre", "post")
DTYPES = ("float32", "bfloat16")
INITS = ("normal", "uniform")
ATTENTION_IMPLS = ("einsum", "xla")
ROPE_SCALINGS = ("none", "linear", "ntk", "yarn")
POSITION_SAMPLINGS = ("none", "randomized")


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

  vocab_size: int = 256
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  kind: str = "decoder"  # decoder = causal LM; encoder = bidirectional (masked LM)
  # Positions.
  position: str = "learned"
  combine: str = "add"
  pos_dim: int = 0  # width of the positional vector for combine=concat; 0 means d_model
  max_len: int = 128  # size of a learned position table; other schemes ignore it
  sinusoidal_wavelength: float = 10_000.0
  rope_base: float = 10_000.0
  rope_fraction: float = 1.0  # fraction of each head's dimensions that rotate
  rope_scaling: str = "none"
  rope_factor: float = 1.0  # s: the context-length ratio the scaling targets
  rope_original_len: int = 0  # training length the scaling extends from (YaRN's ramp); 0 = max_len
  t5_buckets: int = 32
  t5_max_distance: int = 128
  rope_keep_fraction: float = 1.0  # p-RoPE: fraction p of RoPE's frequencies kept (the highest); the rest are 0
  cope_max_pos: int = 64  # CoPE: size of each layer's position table; contextual positions clamp to it minus 1
  # Randomized positions (Ruoss et al. 2023): during training each row's positions are a sorted sample from
  # [0, max_position); evaluation uses arange. 0 = the training length (resolved by the training config).
  position_sampling: str = "none"
  max_position: int = 0
  # Embeddings.
  tie_embeddings: bool = True
  embed_init: str = "normal"
  embed_init_std: float = 0.02
  embed_scale: bool = False  # multiply token vectors by sqrt(d_model), as Vaswani et al.
  embedding_dropout: float = 0.0  # dropout on the embedded vectors
  token_dropout: float = 0.0  # AWD-LSTM: drop whole vocabulary rows for a step
  # Blocks.
  norm: str = "pre"
  dropout: float = 0.0
  dtype: str = "float32"  # compute dtype; parameters are always float32
  attention: str = "einsum"  # einsum = explicit reference path; xla = jax.nn.dot_product_attention

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"model.{name}={value!r} must be a positive integer")
    if self.max_len < 1:
      raise ValueError(f"model.max_len={self.max_len!r} must be >= 1 (the learned position table length)")
    _choice("model.kind", self.kind, KINDS)
    _choice("model.combine", self.combine, COMBINES)
    _choice("model.norm", self.norm, NORMS)
    _choice("model.dtype", self.dtype, DTYPES)
    _choice("model.embed_init", self.embed_init, INITS)
    _choice("model.attention", self.attention, ATTENTION_IMPLS)
    _choice("model.rope_scaling", self.rope_scaling, ROPE_SCALINGS)
    _choice("model.position_sampling", self.position_sampling, POSITION_SAMPLINGS)
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
    scheme = self.scheme
    scheme.validate(self)
    limit = scheme.max_length(self)
    if self.position_sampling == "randomized" and limit is not None and self.max_position > limit:
      raise ValueError(f"model.max_position={self.max_position} exceeds the {limit} positions that "
                       f"model.position={self.position!r} can represent (raise model.max_len or lower max_position)")

  @property
  def scheme(self) -> type[registry.PositionalScheme]:
    """The positional scheme's class (registered name or package.module:Class)."""
    return registry.get_scheme(self.position)

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
    return jnp.dtype(self.dtype)

  @property
  def causal(self) -> bool:
    return self.kind == "decoder"

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
    """Builds from a mapping (e.g. `config.model.to_dict()`); unknown keys are an error listing the valid ones."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f"unknown model field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(fields))}")
    return cls(**dict(values))


def _divisors(n: int) -> list[int]:
  return [h for h in range(1, min(n, 64) + 1) if n % h == 0]
