"""One interface for every positional scheme, and the registry that names them.

A scheme can act at four places (docs/architecture.md, "Positional schemes"):

1. `embed(positions)`: a vector per position for the input, added to or concatenated with the token vector;
2. `rotary(positions)`: a position-dependent transform of queries and keys, returned as a pure function applied to
   both, or as a pair `(q_fn, k_fn)` when queries and keys transform differently (xPos);
3. `bias(q_positions, k_positions)`: an additive bias on attention scores, one per head;
4. `logit_bias(q_positions, k_positions)`: a pure function `(q, scores, mask) -> bias` for a bias that depends on
   the layer's queries and attention logits (CoPE); attention computes the logits and adds what it returns.

Every hook has a no-op default (None), so a scheme implements only what it needs and attention never branches on
which scheme is running. A scheme is a `flax.linen.Module` whose only attribute is `cfg`, the model config (read by
attribute, so this package does not depend on `research.model`). Register a new one with `@register("name")`, or
name it as `model.position=package.module:Class` (`get_scheme` imports it).

Where a scheme lives: by default the transformer builds one instance, `position_embed`, calls `embed` at the input
and computes the attention hooks once per forward pass for every layer (a T5 table is shared, as in T5). A scheme
with `per_layer = True` is instead built inside every attention layer, again named `position_embed`
(`block_{i}/attention/position_embed/...`), and its attention hooks are computed there, so each layer owns its
parameters (FIRE, Kerple, CoPE). The optimizer and the docs find positional parameters by that path component.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Any, Callable, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = Any
RotaryFn = Callable[[Array], Array]  # x_BxLxHxDh -> x_BxLxHxDh, applied to queries and to keys
# (q_BxLxHxDh after the q/k transform, scores_BxHxLxS = q·kᵀ/√d + bias in float32 before masking, boolean mask
# [B|1, 1, L, S] or None) -> an additive float32 bias broadcastable to [B, H, L, S].
LogitBiasFn = Callable[[Array, Array, Array | None], Array]


class AttentionHooks(NamedTuple):
  """What one attention layer applies: q/k transforms, a score bias, a logit-dependent bias (each may be None)."""

  q_fn: RotaryFn | None = None
  k_fn: RotaryFn | None = None
  bias: Array | None = None
  logit_bias: LogitBiasFn | None = None

_SCHEMES: dict[str, type["PositionalScheme"]] = {}


class PositionalScheme(nn.Module):
  """Base class: all hooks are no-ops."""

  cfg: Any
  has_input: ClassVar[bool] = False  # True when `embed` contributes channels (then `combine` applies)
  # True: one instance per attention layer (its own parameters), hooks computed there; `embed` is then never called.
  per_layer: ClassVar[bool] = False
  # Box constraints on the scheme's own parameters, {param name: (low, high or None)}: the train step projects each
  # such leaf onto its box after every optimizer update (`project_params`: projected gradient descent, what a
  # reference's in-place `.data.clamp_` before each use amounts to). Empty: unconstrained.
  param_bounds: ClassVar[dict[str, tuple[float, float | None]]] = {}

  @classmethod
  def validate(cls, cfg) -> None:
    """Raises ValueError for a model config this scheme cannot run with."""

  @classmethod
  def validate_training(cls, cfg) -> None:
    """Raises ValueError for a model config this scheme runs but should not start training with (a shape that makes
    it another scheme in all but name). Checked for new training only (`configuration.validate`): a run written
    before the check still evaluates and analyses."""

  @classmethod
  def validate_documents(cls, cfg, document_positions: str, document_mask: bool) -> None:
    """Raises ValueError for document boundaries (data.document_positions, data.document_mask) this scheme should
    not start training with. Checked for new training only, as `validate_training`."""

  @classmethod
  def max_length(cls, cfg) -> int | None:
    """The longest sequence the scheme can represent, or None when unbounded."""
    return None

  @classmethod
  def max_length_note(cls, cfg) -> str | None:
    """What sets `max_length` when it is not model.max_len (None: it is), for the lines that refuse or leave out a
    longer sequence."""
    return None

  @classmethod
  def trained_length(cls, cfg, train_len: int) -> int | None:
    """The longest sequence whose every positional parameter training updated, when that is shorter than
    `max_length` (a learned table longer than the training windows has rows no step touched), else None.
    Evaluation reports longer lengths as n/a rather than score untrained rows as if they were real."""
    return None

  def embed(self, positions_BxL: Array) -> Array | None:
    return None

  def rotary(self, positions_BxL: Array) -> RotaryFn | tuple[RotaryFn, RotaryFn] | None:
    """One function for queries and keys, or a pair (q_fn, k_fn)."""
    return None

  def bias(self, q_positions_BxL: Array, k_positions_BxL: Array) -> Array | None:
    return None

  def logit_bias(self, q_positions_BxL: Array, k_positions_BxL: Array) -> LogitBiasFn | None:
    return None

  def attention_hooks(self, q_positions_BxL: Array, k_positions_BxL: Array) -> AttentionHooks:
    """The three attention hooks in the form attention applies them (a single rotary function serves q and k)."""
    rotary = self.rotary(q_positions_BxL)
    q_fn, k_fn = rotary if isinstance(rotary, tuple) else (rotary, rotary)
    return AttentionHooks(q_fn, k_fn, self.bias(q_positions_BxL, k_positions_BxL),
                          self.logit_bias(q_positions_BxL, k_positions_BxL))

  def input_width(self) -> int:
    """Channels of `embed`'s output: d_model when adding, the positional width when concatenating."""
    if self.cfg.combine == "concat":
      return self.cfg.pos_dim or self.cfg.d_model
    return self.cfg.d_model


def bias_for_shared_rows(module: nn.Module, bias_fn: Callable[..., Array], q_positions_BxL: Array,
                         k_positions_BxL: Array) -> Array:
  """`bias_fn(module, q_positions, k_positions)` (a bias [rows, H, L, S] that is a function of each row's positions
  alone) computed for the first row only and broadcast over the batch when every row has the first row's
  positions, the usual case (arange rows, in training and evaluation), else row by row; decided at run time with
  `nn.cond`, since positions are arrays. The same values either way; the work of a per-layer bias whose cost is
  per (query, key) pair (FIRE's MLP, Kerple's kernels) falls by the batch size (docs/benchmarks.md)."""
  rows = q_positions_BxL.shape[0]
  if rows == 1 or k_positions_BxL.shape[0] != rows:
    return bias_fn(module, q_positions_BxL, k_positions_BxL)
  shared = jnp.all(q_positions_BxL == q_positions_BxL[:1]) & jnp.all(k_positions_BxL == k_positions_BxL[:1])

  def first_row(mdl, q_BxL, k_BxL):
    bias_1xHxLxS = bias_fn(mdl, q_BxL[:1], k_BxL[:1])
    return jnp.broadcast_to(bias_1xHxLxS, (rows, *bias_1xHxLxS.shape[1:]))

  return nn.cond(shared, first_row, bias_fn, module, q_positions_BxL, k_positions_BxL)


def project_params(params, scheme: type[PositionalScheme]):
  """`params` with every leaf of `scheme.param_bounds` clipped into its box: the leaves named so directly under a
  `position_embed` module (the shared instance or each layer's). Other leaves are returned as they are."""
  bounds = scheme.param_bounds
  if not bounds:
    return params

  def project(path, leaf):
    names = [getattr(key, "key", getattr(key, "name", None)) for key in path]
    if len(names) >= 2 and names[-2] == "position_embed" and names[-1] in bounds:
      low, high = bounds[names[-1]]
      return jnp.clip(leaf, low, high)
    return leaf

  return jax.tree_util.tree_map_with_path(project, params)


def register(name: str) -> Callable[[type[PositionalScheme]], type[PositionalScheme]]:
  """Class decorator: makes a scheme available as `model.position=name`."""

  def wrap(cls: type[PositionalScheme]) -> type[PositionalScheme]:
    if not (isinstance(cls, type) and issubclass(cls, PositionalScheme)):
      raise TypeError(f"{cls!r} must subclass PositionalScheme to be registered as {name!r}")
    _check_scheme_class(cls)
    if name in _SCHEMES and _SCHEMES[name] is not cls:
      raise ValueError(f"positional scheme {name!r} is already registered by {_SCHEMES[name].__qualname__}")
    _SCHEMES[name] = cls
    return cls

  return wrap


def _check_scheme_class(cls: type[PositionalScheme]) -> None:
  if cls.per_layer and cls.has_input:
    # The shared instance that would compute `embed` would also create the per-layer parameters once more.
    raise TypeError(f"{cls.__qualname__}: a per-layer scheme (per_layer=True) cannot have an input hook "
                    "(has_input=True); split it into two schemes or make it shared")
  bounds = cls.param_bounds
  if not isinstance(bounds, dict):
    raise TypeError(f"{cls.__qualname__}.param_bounds={bounds!r} must be a dict {{param name: (low, high or None)}}")
  for name, box in bounds.items():
    ok = isinstance(name, str) and isinstance(box, tuple) and len(box) == 2 and _is_bound(box[0]) and (
        box[1] is None or (_is_bound(box[1]) and box[1] > box[0]))
    if not ok:
      raise TypeError(f"{cls.__qualname__}.param_bounds[{name!r}]={box!r} must be (low, high or None): finite "
                      f"numbers with low < high")


def _is_bound(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def unregister(name: str) -> None:
  """Removes a scheme (for tests and notebooks that register toy schemes)."""
  _SCHEMES.pop(name, None)


def _load_builtin() -> None:
  # The built-in schemes register themselves on import; importing here keeps `registry` the one entry point.
  from research.embeddings import cope, fire, kerple, positions, relative  # noqa: F401


SCHEME_PATH_ENV = "RESEARCH_SCHEME_PATH"  # extra directories `module:Class` schemes are imported from


def is_external(name: str) -> bool:
  """True for `package.module:Class`, a scheme imported by path rather than registered by name."""
  return ":" in name


def _import_scheme(spec: str) -> type[PositionalScheme]:
  """The class named by `package.module:Class` (Class may be dotted), imported with importlib; any failure is a
  one-line ValueError naming the value, since it ends up in `model.position` on a command line."""
  module_name, _, attribute = spec.partition(":")
  where = f"model.position={spec!r}"
  if not module_name or not attribute:
    raise ValueError(f"{where} must be a registered name or package.module:Class")
  # As `python -m` would: a module in the current directory is importable, also from a console script (whose
  # sys.path starts at its bin directory), and so is one in the directories a sweep started its trials from
  # (SCHEME_PATH_ENV). Appended, so that an installed package of the same name wins.
  for path in [os.getcwd(), *os.environ.get(SCHEME_PATH_ENV, "").split(os.pathsep)]:
    if path and path not in sys.path:
      sys.path.append(path)
  try:
    obj = importlib.import_module(module_name)
  except Exception as e:  # noqa: BLE001 - any import failure (missing module, syntax error, its own ImportError)
    detail = (str(e).splitlines() or [""])[0]
    raise ValueError(f"{where}: cannot import module {module_name!r} ({type(e).__name__}: {detail})") from None
  for part in attribute.split("."):
    if not hasattr(obj, part):
      raise ValueError(f"{where}: module {module_name!r} has no attribute {attribute!r}")
    obj = getattr(obj, part)
  if not (isinstance(obj, type) and issubclass(obj, PositionalScheme)):
    raise ValueError(f"{where}: {module_name}.{attribute} is {obj!r}, not a PositionalScheme subclass")
  try:
    _check_scheme_class(obj)
  except TypeError as e:
    raise ValueError(f"{where}: {e}") from None
  return obj


def get_scheme(name: str) -> type[PositionalScheme]:
  """The scheme class registered as `name`, or imported from `package.module:Class`."""
  _load_builtin()
  if is_external(name):
    return _import_scheme(name)
  if name not in _SCHEMES:
    raise ValueError(f"unknown positional scheme {name!r}; registered schemes: {', '.join(names())}")
  return _SCHEMES[name]


def names() -> list[str]:
  _load_builtin()
  return sorted(_SCHEMES)
