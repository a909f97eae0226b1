"""Checking an experiment config and turning it into the frozen model config, before anything compiles.

Every user error here is a `ConfigError` (a ValueError) whose message names the bad value and what is allowed;
the command-line entry points print it as one line.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from typing import Any, Callable, Mapping

import ml_collections

from research import run_fields, schema
from research.data import corpora, tokenizers
from research.embeddings import pretrained, registry, relative
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
  implied = {field: schema.saved_value(field, default) for field, default in flatten(reference_config()).items()}
  return run_fields.fill_lacking(saved, implied)[0]


def lacking_fields(saved: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> tuple[str, ...]:
  """The schema fields a saved run config (config.json) lacks: those added since the run was written, which
  `with_defaults` fills with what they meant then. With `current` (the rerun's config, nested dicts): only those it
  leaves at their schema default, which a resume replaces by the saved meaning (`loop.keep_saved_choices`); a
  value other than the default was asked for, and is compared as any other field (another model where the run's
  model reads it)."""
  present, defaults = flatten(saved), flatten(reference_config())
  lacking = [field for field in defaults if field not in present]
  if current is not None:
    now = flatten(current)
    same = lambda a, b: json.loads(json.dumps(a)) == json.loads(json.dumps(b))  # noqa: E731 (tuples as lists)
    lacking = [field for field in lacking if field in now and same(now[field], defaults[field])]
  return tuple(lacking)


# Fields whose value may name a choice made per backend ("auto"), with the function that makes it. A rerun's value
# and the saved one are the same run when they resolve to the same choice on this backend: a run written with
# model.attention=einsum resumes under the default auto on CPU (both einsum, bit for bit), and is refused on a GPU,
# where auto would switch it to jax.nn.dot_product_attention.
BACKEND_RESOLVED = {"model.attention": attention.resolve}


# Fields naming a file that only a fresh start reads (a resumed run has the vectors in its checkpoint): a rerun that
# names the same file by another spelling (relative to its working directory, through a symlink) is the same run.
RESOLVED_PATHS = ("model.pretrained.path",)


def same_file(saved: Any, current: Any, recorded: tuple[str, str] | None = None) -> bool:
  """Whether two path values name the same file. `recorded`: (the run's value, the file it named when the run read
  it, resolved then: RUN/embedding_init.json's `resolved_path`). When one value is the run's, the other is resolved
  against this process's working directory and compared with that file, so a saved relative path means what it
  meant to the run, wherever the rerun starts. Without a record (a run written before it existed) both are resolved
  here (`os.path.realpath`): right for a rerun started where the run was. Equal strings are the same file without
  a look at the disk (a resume never reads the file; it may be gone)."""
  if saved == current:
    return True
  if not isinstance(saved, str) or not isinstance(current, str) or not saved.strip() or not current.strip():
    return False
  if is_url(saved) or is_url(current):
    return False
  if recorded is not None and recorded[0] in (saved, current) and recorded[1]:
    other = current if saved == recorded[0] else saved
    return os.path.realpath(other) == recorded[1]
  return os.path.realpath(saved) == os.path.realpath(current)


def align_backend_choices(saved: Mapping[str, Any], current: Mapping[str, Any],
                          backend: str | Callable[[], str] | None = None,
                          recorded: Mapping[str, tuple[str, str]] | None = None) -> dict[str, Any]:
  """A copy of `saved` (nested dicts) in which each `BACKEND_RESOLVED` field takes `current`'s value where the two
  resolve to the same choice on `backend` (default: this process's, jax.default_backend()), and each
  `RESOLVED_PATHS` field where the two name the same file (`same_file`), so that a resume check compares what the
  runs compute with. `backend` may be a function giving the name, called only when such a field
  differs: a process that must not start a JAX client of its own (a sweep's parent, whose client would hold GPU
  memory its trials need) asks another process, and only when it has to. `recorded`: {RESOLVED_PATHS field: (the
  run's value, the file it named then)}, what the run recorded (`loop.recorded_files`), for `same_file`.
  (`loop.keep_saved_choices` calls it with the roles swapped: the rerun's config taking the saved values.)"""
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
  for field in RESOLVED_PATHS:  # the same file by another spelling: not a difference
    *parents, leaf = field.split(".")
    node, now = out, current
    for parent in parents:
      node, now = node.get(parent, {}), now.get(parent, {})
    if leaf in node and leaf in now and node[leaf] != now[leaf] and \
        same_file(node[leaf], now[leaf], (recorded or {}).get(field)):
      node[leaf] = now[leaf]
  return out


def check_fields(config: Any) -> None:
  """The config is an ml_collections.ConfigDict holding exactly the schema's fields: none unknown, none missing
  (a get_config() that builds a ConfigDict of a few fields, or replaces a section by one, would fail later with a
  KeyError or AttributeError traceback, or after files were written), and no value where the schema has a
  section. Missing fields are refused, not filled in: which defaults a config file meant to inherit is its
  author's to say, by starting from `research.schema.get_config()` (or a config of configs/)."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"the config is a {type(config).__name__}, not an ml_collections.ConfigDict: a config file's "
                      f"get_config() must return one (research.schema.get_config() or a config of configs/, with "
                      f"its values changed)")
  valid = flatten(reference_config())
  given = flatten(config)
  sections = _sections(valid)
  for name, value in given.items():
    if name in sections:
      raise ConfigError(f"{name}={value!r}: expected a section (an ml_collections.ConfigDict of the fields "
                        f"{name}.*), got a {type(value).__name__}")
  unknown = sorted(set(given) - set(valid))
  if unknown:
    raise ConfigError(unknown_field_message(unknown[0], valid))
  missing = [name for name in valid if name not in given]
  if missing:
    raise ConfigError(missing_fields_message(missing, valid))


def _sections(valid: Mapping[str, Any]) -> list[str]:
  """The schema's sections, sorted: 'data', 'model', 'model.pretrained', ..."""
  return sorted({".".join(name.split(".")[:i]) for name in valid for i in range(1, name.count(".") + 1)})


def missing_fields_message(missing: list[str], valid: Mapping[str, Any], shown: int = 8) -> str:
  """One line naming the fields a config lacks; a section that lacks all its fields is named once, as 'model.*'."""
  parts: list[str] = []
  for name in missing:
    section = name
    for candidate in _sections(valid):  # the outermost section whose every field is missing
      if name.startswith(candidate + ".") and all(v in missing for v in valid if v.startswith(candidate + ".")):
        section = candidate + ".*"
        break
    if section not in parts:
      parts.append(section)
  more = f" and {len(parts) - shown} more" if len(parts) > shown else ""
  return f"the config lacks {len(missing)} field{'s' if len(missing) != 1 else ''} of the schema: " \
         f"{', '.join(parts[:shown])}{more}; a config file's get_config() starts from research.schema.get_config() " \
         f"(or a config of configs/) and changes its values"


def unknown_field_message(name: str, valid: Mapping[str, Any]) -> str:
  close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
  hint = f" (did you mean {' or '.join(close)}?)" if close else ""
  sections = _sections(valid)
  if name in sections:  # --config.model=3, --set=model=3: a value for a whole section
    fields = sorted(v for v in valid if v.startswith(name + ".") and "." not in v[len(name) + 1:])
    return f"{name!r} is a section, not a field: set its fields one by one ({name}.FIELD=VALUE); its fields: " \
           f"{', '.join(fields)}"
  if "." not in name:
    top = sorted(v for v in valid if "." not in v)
    return f"unknown config field {name!r}{hint}; top-level fields: {', '.join(top)}; sections: " \
           f"{', '.join(s for s in sections if '.' not in s)}"
  section = name.rsplit(".", 1)[0]
  if section not in sections:
    return f"unknown config field {name!r}{hint}: there is no section {section!r}; sections: {', '.join(sections)}"
  siblings = sorted(v for v in valid if v.startswith(section + "."))
  return f"unknown config field {name!r}{hint}; valid fields in {section}: {', '.join(siblings)}"


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-name overrides ({'model.position': 'alibi'}); unknown names are an error, and so
  is a `config` that `check_fields` refuses (a sweep's base config: no KeyError on a section it lacks)."""
  check_fields(config)
  valid = flatten(reference_config())
  config = ml_collections.ConfigDict(_floats_where_floats(config.to_dict(), valid))
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
    _check_kind(name, value, default)  # the kinds `check_kinds` takes, a stricter rule than ml_collections'
    try:
      node[leaf] = value
    except (TypeError, ValueError):  # ml_collections' own type check, should it refuse what _check_kind took
      raise ConfigError(_kind_message(name, value, default)) from None
  return config


def _floats_where_floats(values: dict[str, Any], reference: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """`values` (nested dicts) with an int in each field whose schema default is a float made that float: a config
  built from a dict (or YAML) with `learning_rate = 1` holds an int, and ml_collections then refused 0.5 for it."""
  out = {}
  for key, value in values.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out[key] = _floats_where_floats(value, reference, f"{name}.")
    elif isinstance(reference.get(name), float) and isinstance(value, int) and not isinstance(value, bool):
      out[key] = float(value)
    else:
      out[key] = value
  return out


def kind_text(default: Any) -> str:
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
  """Every field holds a value of its schema default's kind (`_check_kind`). ml_collections checks kinds only on
  assignment to a field that already holds a value: a ConfigDict a config file builds from a dict (or from YAML)
  takes whatever it is given, and a string "false" for train.embedding.freeze trained a frozen table (a non-empty
  string is true). One line naming the field, as `apply_overrides` says it."""
  reference = flatten(reference_config())
  for name, value in flatten(config).items():
    _check_kind(name, value, reference.get(name))


def _kind_ok(value: Any, default: Any) -> bool:
  """Whether a field whose default is `default` takes `value`: a bool for a bool (not 1, not "false"), an int for an
  int (not True, not 2.5, not "1"), an int or a float for a float, a string for a string, a list or tuple for one."""
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, str):
    return isinstance(value, str)
  if isinstance(default, (list, tuple)):
    return isinstance(value, (list, tuple))
  return True  # a field without a default's kind (None): the field's own check decides


def _kind_message(name: str, value: Any, default: Any) -> str:
  if value is None:
    return f"{name}=None: expected {kind_text(default)}"
  return f"{name}={value!r}: expected {kind_text(default)}, got a {type(value).__name__}"


def _check_kind(name: str, value: Any, default: Any) -> None:
  """A value of another kind than the field's default (`_kind_ok`; None only where the default is None): one
  ConfigError line naming the field, the value and the kind expected."""
  if value is None and default is None:
    return
  if value is None or not _kind_ok(value, default):
    raise ConfigError(_kind_message(name, value, default))


# jax.random.key takes a uint32 seed (2**32 wraps to 0) and numpy's generators a non-negative one.
MAX_SEED = 2 ** 32 - 1


def validate(config: ml_collections.ConfigDict, trained_as: str | None = None) -> ModelConfig:
  """Every check that needs no data and no compilation. Returns the model config (with data.vocab_size).
  `trained_as`: the error the checks for new training only (`training_only_error`) give the run this config resumes
  (`loop.trained_as`: one trained before the check existed); a config that meets exactly that error goes on, as the
  model it is, and any other is refused (a rerun cannot add what a fresh start would be refused for)."""
  check_fields(config)
  check_kinds(config)
  if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed <= MAX_SEED:
    raise ConfigError(f"seed={config.seed!r} must be an integer in 0 ... {MAX_SEED}")
  _choice("objective", config.objective, OBJECTIVES)
  _choice("data.tokenizer", config.data.tokenizer, tokenizers.KINDS)
  _choice("data.errors", config.data.errors, ERROR_POLICIES)
  validate_corpus(config.data.corpus)
  if config.data.cache_dir and not config.data.cache_dir.strip():
    raise ConfigError(f"data.cache_dir={config.data.cache_dir!r} is blank: give a directory, or \"\" for the default "
                      f"($RESEARCH_CACHE_DIR or ~/.cache/research)")
  if registry.is_external(config.model.position):
    try:
      registry.get_scheme(config.model.position)  # imports it: a bad path fails here, naming the value
    except ValueError as e:
      raise ConfigError(str(e)) from None
  else:
    _choice("model.position", config.model.position, registry.names())
  _choice("train.optimizer", config.train.optimizer, optim.OPTIMIZERS)
  _choice("train.schedule", config.train.schedule, optim.SCHEDULES)
  _choice("train.head.projection_group", config.train.head.projection_group, optim.PROJECTION_GROUPS)
  _choice("train.embedding.lazy_rows", config.train.embedding.lazy_rows, optim.LAZY_ROWS)
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
  for name, value in (("train.steps", t.steps), ("train.warmup_steps", t.warmup_steps)):
    if value >= 2 ** 31:  # the schedule's step counts are int32 inside the jitted step (optax's schedules)
      raise ConfigError(f"{name}={value} is too large: at most {2 ** 31 - 1:,} (the schedule computes in int32)")
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
  if (config.model.position_sampling != "none" and isinstance(config.model.max_position, int)
      and 0 < config.model.max_position < config.data.seq_len):  # (negative: ModelConfig's own range line)
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
  error = training_only_error(config, cfg)
  if error is not None and error != trained_as:
    raise ConfigError(error)
  limit = cfg.scheme.max_length(cfg)
  if limit is not None and limit < config.data.seq_len and cfg.scheme.max_length_note(cfg) is not None:
    raise ConfigError(f"data.seq_len={config.data.seq_len} is longer than the {limit} positions "
                      f"model.position={config.model.position!r} can represent ({cfg.scheme.max_length_note(cfg)})")
  if limit is not None and limit < config.data.seq_len:
    raise ConfigError(f"model.max_len={config.model.max_len} is smaller than data.seq_len={config.data.seq_len}: "
                      f"model.position={config.model.position!r} represents positions 0 … {limit - 1} only; set "
                      f"model.max_len >= {config.data.seq_len} (0 = data.seq_len)")
  return cfg


def training_only_error(config: ml_collections.ConfigDict, cfg: ModelConfig | None = None) -> str | None:
  """The first error of the checks for new training only: RoPE scaling on a scheme that ignores it
  (`validate_rope_scaling`), a shape the scheme should not start training with (`validate_training`: Sandwich's head
  dimension) and document boundaries it should not (`validate_documents`: xpos's reset positions without the mask).
  None when the config passes them. A run trained before one of them existed still evaluates and analyses, and
  resumes (`validate`'s `trained_as`). `cfg`: the config's model config, when the caller has it."""
  cfg = cfg or model_config(config)
  try:
    validate_rope_scaling(cfg)
    cfg.scheme.validate_training(cfg)
    cfg.scheme.validate_documents(cfg, config.data.document_positions, config.data.document_mask)
  except ValueError as e:  # ConfigError included
    return str(e)
  return None


def validate_corpus(spec: str) -> None:
  """The syntax of data.corpus (`corpora.VALID_SPECS`), checked before the run directory is created: a name, or
  `text:` / `hf:` followed by what they read. Whether the files exist is `corpora.load_corpus`'s to say."""
  names = [v for v in corpora.VALID_SPECS if "<" not in v]
  forms = {v.split("<", 1)[0]: v for v in corpora.VALID_SPECS if "<" in v}  # {'text:': 'text:<path|glob|dir>'}
  prefix = next((p for p in forms if spec.startswith(p)), None)
  if spec not in names and prefix is None:
    raise ConfigError(f"unknown corpus spec {spec!r}; valid specs: {', '.join(corpora.VALID_SPECS)}")
  rest = spec[len(prefix):] if prefix is not None else spec
  if prefix is not None and not (rest.split("/", 1)[0] if prefix == "hf:" else rest):  # hf:<name>: the name first
    raise ConfigError(f"data.corpus={spec!r} lacks the {forms[prefix][len(prefix):]} part; the form is {forms[prefix]}")


def rotates_with_rope(position: str) -> bool:
  """Whether the scheme `position` names rotates with RoPE's frequencies (a subclass of `relative.RotaryPositions`:
  rope, p_rope), the only ones model.rope_scaling changes. Raises for a name that names no scheme."""
  return issubclass(registry.get_scheme(position), relative.RotaryPositions)


def rotates_with_rope_or_none(position: str) -> bool | None:
  """`rotates_with_rope`, or None when it cannot be told (an unknown name, or an external scheme whose module does
  not import here): for the checks that read a saved run's config, where that is not the place to fail."""
  try:
    return rotates_with_rope(position)
  except Exception:  # noqa: BLE001 (a user's module: whatever it raises means "cannot tell")
    return None


def unrotated_reason(cfg: ModelConfig) -> str | None:
  """Why the scheme of `cfg`, one that rotates with RoPE's frequencies (`rotates_with_rope`), rotates no channel
  pair, or None when it rotates at least one (the scheme's `unrotated_note`: p_rope's keep fraction may keep none
  of the frequencies). Pure Python: no JAX starts."""
  return registry.get_scheme(cfg.position).unrotated_note(cfg)


def trains_scaled(cfg: ModelConfig) -> bool:
  """Whether the model's own RoPE scaling changes its frequencies: a model.rope_scaling other than none with a
  model.rope_factor other than 1 (at factor 1 every scaling is plain RoPE: `relative.rope_frequencies` returns
  before scaling, YaRN's attention factor 0.1·ln 1 + 1 is 1)."""
  return cfg.rope_scaling != "none" and cfg.rope_factor != 1.0


def validate_rope_scaling(cfg: ModelConfig) -> None:
  """model.rope_scaling and model.rope_factor on a scheme that rotates with RoPE's frequencies (a subclass of
  `relative.RotaryPositions`: rope, p_rope); any other scheme would train unscaled while config.json says scaled.
  Checked for training only: research-evaluate still reads a run written before this check."""
  defaults = ModelConfig.experiment_fields()
  if cfg.rope_scaling == defaults["rope_scaling"] and cfg.rope_factor == defaults["rope_factor"]:
    return
  if rotates_with_rope(cfg.position):
    return
  rotary = [n for n in registry.names() if rotates_with_rope(n)]
  given = " with ".join(text for text, differs in (  # the fields set, not a default beside them
      (f"model.rope_scaling={cfg.rope_scaling!r}", cfg.rope_scaling != defaults["rope_scaling"]),
      (f"model.rope_factor={cfg.rope_factor:g}", cfg.rope_factor != defaults["rope_factor"])) if differs)
  raise ConfigError(f"{given} applies to model.position={' or '.join(rotary)} only; model.position={cfg.position!r} "
                    f"would ignore it: set model.rope_scaling={defaults['rope_scaling']!r} and "
                    f"model.rope_factor={defaults['rope_factor']:g}")


def check_batch_devices(config: ml_collections.ConfigDict, devices: int) -> None:
  """train.batch_size splits evenly over the mesh's `devices` (the trainer checks it once the mesh exists, before
  the run directory is created)."""
  if config.train.batch_size % devices:
    raise ConfigError(f"train.batch_size={config.train.batch_size} is not divisible by the {devices} devices of the "
                      f"mesh")


def check_vector_file(config: ml_collections.ConfigDict) -> None:
  """A fresh start's model.pretrained.path that names no file, before the run directory is created (the trainer
  reads the file only after the data; `pretrained.load_vectors` checks the rest of it)."""
  if config.model.embed_init != "pretrained":
    return
  try:
    pretrained.check_vector_path(str(config.model.pretrained.path))
  except pretrained.PretrainedError as e:
    raise ConfigError(str(e)) from None


def schedule_notes(config: ml_collections.ConfigDict) -> list[str]:
  """A note (the run is legal) when train.warmup_steps >= train.steps: the learning rate then rises for the whole
  run (the last update is step steps − 1's, at (steps − 1)/warmup_steps of the peak), never reaching
  train.learning_rate nor the schedule's decay; and when train.embedding.freeze_steps >= train.steps: the table
  never moves. Not refused: a short run of a config with a long warmup (a smoke test of configs/tiny.py) is meant,
  and a resumed run may raise train.steps past either."""
  t, notes = config.train, []
  if 0 < t.steps <= t.warmup_steps:
    than = "more than" if t.warmup_steps > t.steps else "equal to"
    notes.append(f"note: train.warmup_steps={t.warmup_steps} is {than} train.steps={t.steps}: the learning rate "
                 f"warms up for the whole run, to {(t.steps - 1) / t.warmup_steps:.0%} of train.learning_rate at the "
                 f"last step, and the {t.schedule} schedule after warmup never starts")
  freeze = t.embedding.freeze_steps
  if 0 < t.steps <= freeze and not t.embedding.freeze:  # (a frozen table: the field is unread, `unread_notes`)
    notes.append(f"note: train.embedding.freeze_steps={freeze} is {'more than' if freeze > t.steps else 'equal to'} "
                 f"train.steps={t.steps}: the token table stays frozen for the whole run")
  return notes


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
