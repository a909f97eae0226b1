"""Checking an experiment config and turning it into the frozen model config, before anything compiles.

Every user error here is a `ConfigError` (a ValueError) whose message names the bad value and what is allowed;
the command-line entry points print it as one line.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Any, Callable, Mapping

import ml_collections

from research import schema
from research.data import tokenizers
from research.embeddings import pretrained, registry
from research.model import attention
from research.model.config import ModelConfig
from research.train import optim

OBJECTIVES = ("clm", "mlm")
DISTRIBUTED = ("auto", "true", "false")
ERROR_POLICIES = ("strict", "replace", "ignore")
DOCUMENT_POSITIONS = ("continuous", "reset")

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
  """The schema: every valid field, with its default and type."""
  return schema.get_config()


def with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
  """A saved run config (nested dicts, config.json) with every schema field it lacks filled in with what it meant
  when the run was written, before the field existed (`schema.saved_value`: the field's default, or its entry in
  `schema.LEGACY_VALUES` where the default changes what such a run did)."""
  out = json.loads(json.dumps(saved))
  for field, default in flatten(reference_config()).items():
    *parents, leaf = field.split(".")
    node = out
    for parent in parents:
      node = node.setdefault(parent, {})
      if not isinstance(node, dict):
        break
    else:
      node.setdefault(leaf, schema.saved_value(field, default))
  return out


# Fields whose value may name a choice made per backend ("auto"), with the function that makes it. A rerun's value
# and the saved one are the same run when they resolve to the same choice on this backend: a run written with
# model.attention=einsum resumes under the default auto on CPU (both einsum, bit for bit), and is refused on a GPU,
# where auto would switch it to jax.nn.dot_product_attention.
BACKEND_RESOLVED = {"model.attention": attention.resolve}


def align_backend_choices(saved: Mapping[str, Any], current: Mapping[str, Any],
                          backend: str | Callable[[], str] | None = None) -> dict[str, Any]:
  """A copy of `saved` (nested dicts) in which each `BACKEND_RESOLVED` field takes `current`'s value where the two
  resolve to the same choice on `backend` (default: this process's, jax.default_backend()), so that a resume check
  compares what the runs compute with. `backend` may be a function giving the name, called only when such a field
  differs: a process that must not start a JAX client of its own (a sweep's parent, whose client would hold GPU
  memory its trials need) asks another process, and only when it has to."""
  out = json.loads(json.dumps(saved))
  for field, resolve in BACKEND_RESOLVED.items():
    *parents, leaf = field.split(".")
    node, now = out, current
    for parent in parents:
      node, now = node.get(parent, {}), now.get(parent, {})
    if leaf in node and leaf in now and node[leaf] != now[leaf]:
      backend = backend() if callable(backend) else backend
      if resolve(node[leaf], backend) == resolve(now[leaf], backend):
        node[leaf] = now[leaf]
  return out


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
    if not isinstance(name, str):
      raise ConfigError(f"override key {name!r} is not a field name (a dotted string such as 'model.position')")
    if name not in valid:
      raise ConfigError(unknown_field_message(name, valid))
    node = config
    *parents, leaf = name.split(".")
    for parent in parents:
      node = node[parent]
    default = valid[name]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    _check_kind(name, value, default)  # what ml_collections would take
    try:
      node[leaf] = value
    except (TypeError, ValueError):  # ml_collections' type check: '1e-3' for a float, 'true' for a bool
      raise ConfigError(f"{name}={value!r}: expected {_kind_text(default)}, got a {type(value).__name__}") from None
  return config


def _kind_text(default: Any) -> str:
  """What a field holding `default` accepts, in words, as the command line's errors say it."""
  if isinstance(default, bool):
    return "true or false"
  if isinstance(default, float):
    return "a number"
  if isinstance(default, int):
    return "an integer"
  if isinstance(default, str):
    return "a string"
  if isinstance(default, (list, tuple)):
    return "a list"
  return f"a {type(default).__name__}"


def _choice(name: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")


def model_config(config: ml_collections.ConfigDict, vocab_size: int | None = None) -> ModelConfig:
  """The frozen model config of a run; `vocab_size` is the tokenizer's real size (defaults to data.vocab_size)."""
  values = config.model.to_dict()
  # The vector-file options are read by the trainer at a fresh start, not by the model: not a ModelConfig field.
  values.pop("pretrained", None)
  values["max_len"] = values["max_len"] or config.data.seq_len
  values["rope_original_len"] = values["rope_original_len"] or config.data.seq_len
  values["max_position"] = values["max_position"] or config.data.seq_len
  values["kind"] = "decoder" if config.objective == "clm" else "encoder"
  values["vocab_size"] = int(vocab_size or config.data.vocab_size)
  try:
    return ModelConfig.from_dict(values)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def check_kinds(config: ml_collections.ConfigDict) -> None:
  """What a config file may assign that ml_collections lets through: None to a field whose default is not None, and
  a bool to a number field (True would train 1 step). One line naming the field, as `apply_overrides` says it."""
  reference = flatten(reference_config())
  for name, value in flatten(config).items():
    _check_kind(name, value, reference.get(name))


def _check_kind(name: str, value: Any, default: Any) -> None:
  """None for a field whose default is not None, or a bool for a number field: one ConfigError line."""
  if value is None and default is not None:
    raise ConfigError(f"{name}=None: expected {_kind_text(default)}")
  if isinstance(value, bool) and not isinstance(default, bool) and isinstance(default, (int, float)):
    raise ConfigError(f"{name}={value!r}: expected {_kind_text(default)}, got a bool")


# jax.random.key takes a uint32 seed (2**32 wraps to 0) and numpy's generators a non-negative one.
MAX_SEED = 2 ** 32 - 1


def validate(config: ml_collections.ConfigDict) -> ModelConfig:
  """Every check that needs no data and no compilation. Returns the model config (with data.vocab_size)."""
  check_fields(config)
  check_kinds(config)
  if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed <= MAX_SEED:
    raise ConfigError(f"seed={config.seed!r} must be an integer in 0 ... {MAX_SEED}")
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
                           ("train.eval_batches", t.eval_batches, 0),
                           ("mesh.heartbeat_timeout_s", config.mesh.heartbeat_timeout_s, 1),
                           ("mesh.init_timeout_s", config.mesh.init_timeout_s, 1)):
    if not isinstance(value, int) or value < low:
      raise ConfigError(f"{name}={value!r} must be an integer >= {low}")
  for name, value, low, high, what in (
      ("train.grad_clip", t.grad_clip, 0.0, math.inf, ">= 0 (0 = off)"),
      ("train.weight_decay", t.weight_decay, 0.0, math.inf, ">= 0"),
      ("train.b1", t.b1, 0.0, 1.0 - 1e-12, "in [0, 1)"), ("train.b2", t.b2, 0.0, 1.0 - 1e-12, "in [0, 1)"),
      ("train.momentum", t.momentum, 0.0, 1.0 - 1e-12, "in [0, 1)"),
      ("train.min_lr_ratio", t.min_lr_ratio, 0.0, 1.0, "in [0, 1] (the floor as a share of the peak)"),
      ("train.z_loss", t.z_loss, 0.0, math.inf, ">= 0"),
      ("train.embedding.lr_multiplier", t.embedding.lr_multiplier, 0.0, math.inf,
       ">= 0 (a negative one would ascend the loss)")):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
        not low <= value <= high:
      raise ConfigError(f"{name}={value!r} must be a finite number {what}")
  if isinstance(t.loss_chunk, bool) or not isinstance(t.loss_chunk, int) or t.loss_chunk < 0:
    raise ConfigError(f"train.loss_chunk={t.loss_chunk!r} must be an integer >= 0 (0 = all tokens at once)")
  validate_mlm_rates(config.data)
  if t.batch_size % t.grad_accum:
    raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
  if not t.learning_rate > 0:
    raise ConfigError(f"train.learning_rate={t.learning_rate!r} must be > 0")
  if not 0.0 < config.data.train_fraction <= 1.0:
    raise ConfigError(f"data.train_fraction={config.data.train_fraction!r} must be in (0, 1]")
  if config.data.seq_len < 2:
    raise ConfigError(f"data.seq_len={config.data.seq_len!r} must be >= 2")
  if config.objective == "mlm" and config.data.seq_len < 3:
    raise ConfigError(f"data.seq_len={config.data.seq_len!r} must be >= 3 for mlm ([CLS] … [SEP])")
  validate_documents(config.data)
  validate_pretrained(config)
  if config.model.max_position and config.model.max_position < config.data.seq_len:
    raise ConfigError(f"model.max_position={config.model.max_position} is smaller than data.seq_len="
                      f"{config.data.seq_len}: randomized positions draw seq_len distinct positions from it")
  minimum = len(tokenizers.SPECIAL_TOKENS) + 1
  if config.data.vocab_size < minimum:
    raise ConfigError(f"data.vocab_size={config.data.vocab_size!r} is too small: at least {minimum} "
                      f"({len(tokenizers.SPECIAL_TOKENS)} special tokens + 1), and the tokenizer kind may need more")
  if config.data.vocab_size > tokenizers.MAX_VOCAB_SIZE:
    raise ConfigError(f"data.vocab_size={config.data.vocab_size!r} is too large: at most {tokenizers.MAX_VOCAB_SIZE:,} "
                      f"(2^24; Hugging Face's trainers reserve memory per requested id, and ids are 32-bit)")
  reference = flatten(reference_config())
  for name, value in flatten(config).items():  # after the fields' own checks: what NaN or inf passed (`nan < 1` is
    # False, a learning rate of inf is > 0); a NaN in config.json would also never equal itself on resume
    if isinstance(reference.get(name), float) and isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{name}={value!r} must be a finite number")
  cfg = model_config(config)
  limit = cfg.scheme.max_length(cfg)
  if limit is not None and limit < config.data.seq_len:
    raise ConfigError(f"model.max_len={config.model.max_len} is smaller than data.seq_len={config.data.seq_len}: "
                      f"model.position={config.model.position!r} represents positions 0 … {limit - 1} only; set "
                      f"model.max_len >= {config.data.seq_len} (0 = data.seq_len)")
  return cfg


def validate_mlm_rates(data: ml_collections.ConfigDict) -> None:
  """BERT's masking rates (checked for CLM runs too: a sweep that switches the objective meets them)."""
  select, mask, random = data.mlm_select_rate, data.mlm_mask_rate, data.mlm_random_rate
  for name, value in (("data.mlm_select_rate", select), ("data.mlm_mask_rate", mask),
                      ("data.mlm_random_rate", random)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
      raise ConfigError(f"{name}={value!r} must be a number in [0, 1]")
  if select == 0:
    raise ConfigError("data.mlm_select_rate=0 selects no token to predict: an MLM run would score nothing; it must "
                      "be in (0, 1]")
  if mask + random > 1.0 + 1e-9:
    raise ConfigError(f"data.mlm_mask_rate={mask!r} + data.mlm_random_rate={random!r} = {mask + random:g} must be "
                      f"<= 1 (the shares of the selected tokens replaced by [MASK] and by a random token)")


def validate_documents(data: ml_collections.ConfigDict) -> None:
  """data.document_positions and data.document_mask (research-evaluate reads them from a run's saved config)."""
  _choice("data.document_positions", data.document_positions, DOCUMENT_POSITIONS)
  if not isinstance(data.document_mask, bool):
    raise ConfigError(f"data.document_mask={data.document_mask!r} must be true or false")


def validate_pretrained(config: ml_collections.ConfigDict) -> None:
  """The pretrained-init options and `train.embedding.freeze_steps`. The vector file itself is read (and its
  existence checked) only at a fresh start, before anything compiles: a resumed run has its table in the
  checkpoint and needs no file."""
  p = config.model.pretrained
  _choice("model.pretrained.format", p.format, pretrained.FORMATS)
  _choice("model.pretrained.oov", p.oov, pretrained.OOV_POLICIES)
  _choice("model.pretrained.dim_mismatch", p.dim_mismatch, pretrained.DIM_MISMATCH_POLICIES)
  _choice("model.pretrained.scale", p.scale, pretrained.SCALES)
  _choice("model.pretrained.unicode_errors", p.unicode_errors, pretrained.UNICODE_ERRORS)
  if config.model.embed_init == "pretrained" and not str(p.path).strip():
    raise ConfigError("model.embed_init='pretrained' needs model.pretrained.path (a word2vec, GloVe or fastText "
                      "file)")
  emb = config.train.embedding
  k = emb.freeze_steps
  if not isinstance(k, int) or isinstance(k, bool) or k < 0:
    raise ConfigError(f"train.embedding.freeze_steps={k!r} must be an integer >= 0")
  if emb.lazy and not emb.freeze and config.train.optimizer == "adafactor":  # optim.make_optimizer's own rule
    raise ConfigError("train.embedding.lazy=True is not supported with train.optimizer='adafactor': its factored "
                      "second moment mixes all rows; use adamw, adam, sgd or lion")
