"""Checking an experiment config and turning it into the frozen model config, before anything compiles.

Every user error here is a `ConfigError` (a ValueError) whose message names the bad value and what is allowed;
the command-line entry points print it as one line.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

import ml_collections

from research.data import tokenizers
from research.embeddings import registry
from research.model.config import ModelConfig
from research.train import optim

OBJECTIVES = ("clm", "mlm")
DISTRIBUTED = ("auto", "true", "false")
ERROR_POLICIES = ("strict", "replace", "ignore")

# Fields that change the shapes of the parameters, the optimizer state or the data: a workdir written with other
# values cannot be resumed with these (checkpoint.check_config_compatible names the differences).
SHAPE_FIELDS = (
    "objective", "data.corpus", "data.tokenizer", "data.vocab_size", "data.seq_len", "model.d_model",
    "model.num_layers", "model.num_heads", "model.mlp_dim", "model.position", "model.combine", "model.pos_dim",
    "model.max_len", "model.tie_embeddings", "model.t5_buckets", "model.cope_max_pos", "train.optimizer",
    "train.batch_size", "train.embedding.freeze", "train.embedding.lazy")


class ConfigError(ValueError):
  """A user error in the config or the command line."""


def is_url(path: Any) -> bool:
  """gs://bucket/run and the like: pathlib would quietly turn one into a local folder gs:/bucket/run."""
  return "://" in str(path)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
  """{'model.d_model': 128, ...} from a ConfigDict / dict."""
  items = config.items() if isinstance(config, Mapping) or hasattr(config, "items") else []
  out: dict[str, Any] = {}
  for key, value in items:
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def reference_config() -> ml_collections.ConfigDict:
  from configs import default  # the schema: every valid field, with its type
  return default.get_config()


def with_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
  """A saved run config (nested dicts) with every field it lacks set to today's default: a run written before a
  field existed ran as that default does (e.g. model.cope_max_pos, model.position_sampling)."""
  merged = reference_config().to_dict()

  def fill(into, source):
    for key, value in source.items():
      if isinstance(value, Mapping) and isinstance(into.get(key), Mapping):
        fill(into[key], value)
      else:
        into[key] = value

  fill(merged, values)
  return merged


def check_fields(config: ml_collections.ConfigDict) -> None:
  valid = flatten(reference_config())
  unknown = sorted(set(flatten(config)) - set(valid))
  if unknown:
    raise ConfigError(unknown_field_message(unknown[0], valid))


def unknown_field_message(name: str, valid: Mapping[str, Any]) -> str:
  close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
  hint = f" (did you mean {' or '.join(close)}?)" if close else ""
  section = name.rsplit(".", 1)[0] + "." if "." in name else ""
  siblings = sorted(v for v in valid if section and v.startswith(section)) or sorted(valid)
  return f"unknown config field {name!r}{hint}; valid fields{' in ' + section[:-1] if section and siblings else ''}: " \
         f"{', '.join(siblings)}"


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-name overrides ({'model.position': 'alibi'}); unknown names are an error."""
  config = ml_collections.ConfigDict(config.to_dict())
  valid = flatten(reference_config())
  for name, value in overrides.items():
    if name not in valid:
      raise ConfigError(unknown_field_message(name, valid))
    node = config
    *parents, leaf = name.split(".")
    for parent in parents:
      node = node[parent]
    default = valid[name]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    node[leaf] = value
  return config


def _choice(name: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")


def model_config(config: ml_collections.ConfigDict, vocab_size: int | None = None) -> ModelConfig:
  """The frozen model config of a run; `vocab_size` is the tokenizer's real size (defaults to data.vocab_size)."""
  values = config.model.to_dict()
  values["max_len"] = values["max_len"] or config.data.seq_len
  values["rope_original_len"] = values["rope_original_len"] or config.data.seq_len
  values["max_position"] = values["max_position"] or config.data.seq_len
  values["kind"] = "decoder" if config.objective == "clm" else "encoder"
  values["vocab_size"] = int(vocab_size or config.data.vocab_size)
  values["embed_init_std"] = values["embed_init_std"] or values["d_model"] ** -0.5
  try:
    return ModelConfig.from_dict(values)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def validate(config: ml_collections.ConfigDict) -> ModelConfig:
  """Every check that needs no data and no compilation. Returns the model config (with data.vocab_size)."""
  check_fields(config)
  _choice("objective", config.objective, OBJECTIVES)
  _choice("data.tokenizer", config.data.tokenizer, tokenizers.KINDS)
  _choice("data.errors", config.data.errors, ERROR_POLICIES)
  if registry.is_external(config.model.position):
    try:
      registry.get_scheme(config.model.position)  # imports it: a bad path fails here, naming the value
    except ValueError as e:
      raise ConfigError(str(e)) from None
  else:
    _choice("model.position", config.model.position, registry.names())
  _choice("train.optimizer", config.train.optimizer, optim.OPTIMIZERS)
  _choice("train.schedule", config.train.schedule, optim.SCHEDULES)
  _choice("mesh.distributed", str(config.mesh.distributed).lower(), DISTRIBUTED)
  t = config.train
  for name, value, low in (("train.steps", t.steps, 0), ("train.batch_size", t.batch_size, 1),
                           ("train.grad_accum", t.grad_accum, 1), ("train.warmup_steps", t.warmup_steps, 0),
                           ("train.checkpoint_every", t.checkpoint_every, 1), ("train.eval_every", t.eval_every, 1),
                           ("train.log_every", t.log_every, 1), ("train.keep_checkpoints", t.keep_checkpoints, 1),
                           ("train.eval_batches", t.eval_batches, 0)):
    if not isinstance(value, int) or value < low:
      raise ConfigError(f"{name}={value!r} must be an integer >= {low}")
  if t.batch_size % t.grad_accum:
    raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
  if not t.learning_rate > 0:
    raise ConfigError(f"train.learning_rate={t.learning_rate!r} must be > 0")
  if config.data.seq_len < 2:
    raise ConfigError(f"data.seq_len={config.data.seq_len!r} must be >= 2")
  if config.objective == "mlm" and config.data.seq_len < 3:
    raise ConfigError(f"data.seq_len={config.data.seq_len!r} must be >= 3 for mlm ([CLS] … [SEP])")
  if config.model.max_position and config.model.max_position < config.data.seq_len:
    raise ConfigError(f"model.max_position={config.model.max_position} is smaller than data.seq_len="
                      f"{config.data.seq_len}: randomized positions draw seq_len distinct positions from it")
  minimum = len(tokenizers.SPECIAL_TOKENS) + 1
  if config.data.vocab_size < minimum:
    raise ConfigError(f"data.vocab_size={config.data.vocab_size!r} is too small: at least {minimum} "
                      f"({len(tokenizers.SPECIAL_TOKENS)} special tokens + 1), and the tokenizer kind may need more")
  return model_config(config)
