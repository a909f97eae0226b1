"""One interface for every positional scheme, and the registry that names them.

A scheme can act at three places (docs/architecture.md, "Positional schemes"):

1. `embed(positions)`: a vector per position for the input, added to or concatenated with the token vector;
2. `rotary(positions)`: a position-dependent transform of queries and keys, returned as a pure function;
3. `bias(q_positions, k_positions)`: an additive bias on attention scores, one per head.

Every hook has a no-op default (None), so a scheme implements only what it needs and attention never branches on
which scheme is running. A scheme is a `flax.linen.Module` whose only attribute is `cfg`, the model config (read by
attribute, so this package does not depend on `research.model`). Register a new one with `@register("name")`.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import flax.linen as nn

Array = Any
RotaryFn = Callable[[Array], Array]  # x_BxLxHxDh -> x_BxLxHxDh, applied to queries and to keys

_SCHEMES: dict[str, type["PositionalScheme"]] = {}


class PositionalScheme(nn.Module):
  """Base class: all hooks are no-ops."""

  cfg: Any
  has_input: ClassVar[bool] = False  # True when `embed` contributes channels (then `combine` applies)

  @classmethod
  def validate(cls, cfg) -> None:
    """Raises ValueError for a model config this scheme cannot run with."""

  @classmethod
  def max_length(cls, cfg) -> int | None:
    """The longest sequence the scheme can represent, or None when unbounded."""
    return None

  @classmethod
  def trained_length(cls, cfg, train_len: int) -> int | None:
    """The longest sequence whose every positional parameter training updated, when that is shorter than
    `max_length` (a learned table longer than the training windows has rows no step touched), else None.
    Evaluation reports longer lengths as n/a rather than score untrained rows as if they were real."""
    return None

  def embed(self, positions_BxL: Array) -> Array | None:
    return None

  def rotary(self, positions_BxL: Array) -> RotaryFn | None:
    return None

  def bias(self, q_positions_BxL: Array, k_positions_BxL: Array) -> Array | None:
    return None

  def input_width(self) -> int:
    """Channels of `embed`'s output: d_model when adding, the positional width when concatenating."""
    if self.cfg.combine == "concat":
      return self.cfg.pos_dim or self.cfg.d_model
    return self.cfg.d_model


def register(name: str) -> Callable[[type[PositionalScheme]], type[PositionalScheme]]:
  """Class decorator: makes a scheme available as `model.position=name`."""

  def wrap(cls: type[PositionalScheme]) -> type[PositionalScheme]:
    if not (isinstance(cls, type) and issubclass(cls, PositionalScheme)):
      raise TypeError(f"{cls!r} must subclass PositionalScheme to be registered as {name!r}")
    if name in _SCHEMES and _SCHEMES[name] is not cls:
      raise ValueError(f"positional scheme {name!r} is already registered by {_SCHEMES[name].__qualname__}")
    _SCHEMES[name] = cls
    return cls

  return wrap


def unregister(name: str) -> None:
  """Removes a scheme (for tests and notebooks that register toy schemes)."""
  _SCHEMES.pop(name, None)


def _load_builtin() -> None:
  # The built-in schemes register themselves on import; importing here keeps `registry` the one entry point.
  from research.embeddings import positions, relative  # noqa: F401


def get_scheme(name: str) -> type[PositionalScheme]:
  _load_builtin()
  if name not in _SCHEMES:
    raise ValueError(f"unknown positional scheme {name!r}; registered schemes: {', '.join(names())}")
  return _SCHEMES[name]


def names() -> list[str]:
  _load_builtin()
  return sorted(_SCHEMES)
