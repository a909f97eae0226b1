"""Sweeps: a list of override dicts, run as one process per trial, resumable.

A sweep file (`configs/sweeps/NAME.py`) defines

    BASE_CONFIG = "configs/clm.py"            # the config every trial starts from (`config_path`: repo root first)
    EVALUATE = {"lengths": [1, 2, 4, 8, 16]}   # optional: research-evaluate arguments run after each trial
    def get_sweep():                           # a list of {"dotted.field": value} overrides
      return product(seeds(3), {"model.position": ["none", "alibi"]})

as big_vision's sweep functions do. `product`, `zip_` and `seeds` build the lists. Every override key is validated
against the base config, and every EVALUATE key and value as research-evaluate would check it (for each trial's
config), before any trial starts; a sweep file that does not load or has no trials, or a BASE_CONFIG research-train
would refuse, fails in one line too. Each trial runs in its own process under `DIR/<trial>/`, named by its
overrides, in the directory research-sweep runs in (a relative path in an override means what it means to the user,
as for research-train); `DIR/sweep.json` records trials, overrides, status (pending, running, finished, failed,
interrupted) and errors. A trial with `summary.json` (and its
evaluation files, when the sweep evaluates) is finished and skipped on a rerun, unless its evaluation lacks a
file, length or option EVALUATE now asks for, or scored a checkpoint the run has since moved past
(`trial_plan`, `evaluation_outdated`): then only the evaluation runs again (the previous files are kept under
RUN/eval/previous/); one whose train.steps the sweep raised (in BASE_CONFIG: an override is part of the name)
trains on; one whose train.steps was lowered below its newest checkpoint refuses the sweep (`check_not_shortened`).
An interrupted one resumes from its checkpoints; a failed one is recorded with its error and does not stop the
others. SIGINT / SIGTERM stop the sweep (`stopping_on_signals`): no trial starts after it, running ones get the
signal, and research-sweep ends with one line.
A trial directory holding a run of another config (BASE_CONFIG or an override edited since) refuses the whole sweep
in one line before any trial runs (`check_trial_directories`, research-train's own check), and so does a vector
file whose bytes differ from those another trial recorded reading (`check_vector_files`), or a sweep.json listing
trials this sweep lacks whose directories hold runs (`check_dropped_trials`: they would drop out of it and of the
report). Trial processes die with
the sweep (Linux). Multi-process trials (the
environment describes a multi-process job, or a trial sets mesh.distributed=true) run one at a time: `jobs` > 1 is
refused in one line (`check_jobs`), since trials side by side would share one coordinator address and process ids.
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import io
import importlib.machinery
import importlib.util
import inspect
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from absl import flags
import ml_collections

from research import hugepages, interrupts, supervisor
from research.flag_text import expected_flag_value
from research.error_text import file_error
from research.embeddings import pretrained, registry
from research.evaluate import by_position, extrapolation, passkey
from research.evaluate import previous as previous_files
from research.report import runs as report_runs
from research.train import checkpoint as checkpoint_lib, configuration, loop, mesh as mesh_lib

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = "sweep.json"


# ------------------------------------------------------------------------------------------------ sweep helpers


def product(*axes: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Cartesian product. Each argument is either {field: [values]} (one axis per field) or a list of override
  dicts (one axis whose points are those dicts). product({"a": [1, 2]}, {"b": [3]}) = [{a:1,b:3}, {a:2,b:3}]."""
  expanded: list[list[dict[str, Any]]] = []
  for axis in axes:
    if isinstance(axis, Mapping):
      for field, values in axis.items():
        expanded.append([{field: v} for v in values])
    else:
      expanded.append([dict(point) for point in axis])
  out = []
  for combo in itertools.product(*expanded):
    merged: dict[str, Any] = {}
    for point in combo:
      merged.update(point)
    out.append(merged)
  return out


def zip_(**fields: Sequence[Any]) -> list[dict[str, Any]]:
  """Points that vary together: zip_(a=[1, 2], b=[3, 4]) = [{a:1,b:3}, {a:2,b:4}]."""
  lengths = {len(v) for v in fields.values()}
  if len(lengths) > 1:
    raise ValueError(f"zip_ needs equally long lists, got lengths {sorted(lengths)} for {', '.join(fields)}")
  return [dict(zip(fields, values)) for values in zip(*fields.values())]


def seeds(n: int, start: int = 0) -> list[dict[str, int]]:
  return [{"seed": s} for s in range(start, start + n)]


# ------------------------------------------------------------------------------------------------ sweep files


@dataclasses.dataclass(frozen=True)
class Trial:
  name: str
  overrides: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  base_config: str
  trials: list[Trial]
  evaluate: dict[str, Any] | None
  notes: tuple[str, ...] = ()  # warnings printed before the sweep runs (`same_model_notes`)


def _value_text(value: Any) -> str:
  text = str(value)
  return re.sub(r"[^A-Za-z0-9.+-]", "_", text)


def short_field_name(field: str, fields: Sequence[str] | None = None) -> str:
  """The shortest dotted suffix of `field` that no other field of the schema (or of `fields`) ends with:
  `model.position` → `position`, but `train.weight_decay` → `train.weight_decay` and `train.embedding.weight_decay` →
  `embedding.weight_decay`, which both end in `weight_decay`."""
  names = list(fields) if fields is not None else list(configuration.flatten(configuration.reference_config()))
  names = set(names) | {field}
  parts = field.split(".")
  for k in range(1, len(parts) + 1):
    suffix = ".".join(parts[-k:])
    if not any(other != field and (other == suffix or other.endswith("." + suffix)) for other in names):
      return suffix
  return field


# The longest trial name: a directory name, which most filesystems limit to 255 bytes (names are ASCII). A longer
# one, which could never be created, keeps its first characters and ends in a hash of the overrides (`_capped`);
# every name that worked before keeps it.
MAX_TRIAL_NAME = 255


def trial_name(overrides: Mapping[str, Any]) -> str:
  """position=alibi,seed=1 — each field by its shortest unambiguous name (`short_field_name`), filesystem-safe,
  stable; one longer than MAX_TRIAL_NAME is cut and ends in `~` and 16 hex digits of the overrides' hash."""
  if not overrides:
    return "base"
  return _capped(",".join(f"{short_field_name(k)}={_value_text(v)}" for k, v in overrides.items()), overrides)


def legacy_trial_name(overrides: Mapping[str, Any]) -> str:
  """The name sweeps gave a trial before names were unambiguous: the last component of every field."""
  if not overrides:
    return "base"
  return _capped(",".join(f"{k.split('.')[-1]}={_value_text(v)}" for k, v in overrides.items()), overrides)


def _capped(name: str, overrides: Mapping[str, Any]) -> str:
  """`name` (ASCII: `_value_text`), or, when longer than MAX_TRIAL_NAME, its start + `~` + a hash of the overrides
  (fields, values and their order, as the full name depends on them), so that two long names stay apart."""
  if len(name) <= MAX_TRIAL_NAME:
    return name
  text = json.dumps([[k, v] for k, v in overrides.items()], default=repr)
  return f"{name[:MAX_TRIAL_NAME - 17]}~{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def config_path(path: str | Path, root_first: bool = False) -> Path:
  """Where a config or sweep file named `path` is, as an absolute path: a relative one in the current directory
  (where research-sweep runs: a user's own file wins), else in the repository root (the shipped configs/..., from any
  directory). `root_first` looks in the repository root first: BASE_CONFIG's documented lookup, so that a shipped
  sweep's "configs/clm.py" is the library's config whatever directory it runs in."""
  path = Path(path)
  if path.is_absolute():
    return path
  here, shipped = path.resolve(), ROOT / path
  first, second = (shipped, here) if root_first else (here, shipped)
  return first if first.exists() else second if second.exists() else here


def load_config_file(path: str | Path, root_first: bool = False):
  """A config or sweep file as a module, read as Python source whatever its name ends in (research-train's --config
  takes a file without `.py` too). One that does not exist, or does not run (a syntax error, an exception at
  import), is a ConfigError naming the file and the line."""
  path = config_path(path, root_first)
  if not path.is_file():
    raise configuration.ConfigError(f"config file {str(path)!r} does not exist")
  name = f"_config_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
  loader = importlib.machinery.SourceFileLoader(name, str(path))
  spec = importlib.util.spec_from_file_location(name, path, loader=loader)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 (a user's file: whatever it raises is reported in one line)
    raise configuration.ConfigError(f"file {str(path)!r} cannot be loaded: {file_error(path, e)}") from None
  return module


def load_base_config(path: str | Path) -> ml_collections.ConfigDict:
  """The config a BASE_CONFIG file's get_config() returns, or research-train's one line for a file it would refuse:
  no get_config(), one that raises (`line N: get_config() raised Type: message`), one that returns no ConfigDict
  (None, a dict), or one whose fields `configuration.check_fields` refuses (unknown, missing, a section given a
  value)."""
  module = load_config_file(path, root_first=True)
  file = Path(module.__file__)
  if not callable(getattr(module, "get_config", None)):
    raise configuration.ConfigError(f"config file {str(file)!r} defines no get_config()")
  try:
    config = module.get_config()
  except Exception as e:  # noqa: BLE001 (a user's file: whatever it raises is reported in one line)
    where = file_error(file, e)
    line = re.match(r"line \d+: ", where)
    prefix = line.group(0) if line else ""
    raise configuration.ConfigError(f"config file {str(file)!r}: {prefix}get_config() raised "
                                    f"{where[len(prefix):]}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    got = "None" if config is None else f"a {type(config).__name__}"
    raise configuration.ConfigError(f"config file {str(file)!r}: get_config() returned {got}; it must return the "
                                    f"config (an ml_collections.ConfigDict)")
  try:  # a typo'd field in the file is named with the file, not as if the sweep's overrides had it
    configuration.check_fields(config)
  except configuration.ConfigError as e:
    raise configuration.ConfigError(f"config file {str(file)!r}: {e}") from None
  return config


def parse_setting(text: str) -> tuple[str, Any]:
  """One `research-sweep --set=FIELD=VALUE` as (field, value), the value of the field's kind in the schema (an
  integer, a number, true or false, a string, a Python list); one line naming the setting when it is not."""
  field, sep, raw = str(text).partition("=")
  valid = configuration.flatten(configuration.reference_config())
  if not sep or not field:
    raise configuration.ConfigError(f"--set={text!r} is not FIELD=VALUE (e.g. --set=train.steps=20)")
  if field not in valid:
    raise configuration.ConfigError(f"--set={text!r}: {configuration.unknown_field_message(field, valid)}")
  default = valid[field]
  try:
    if isinstance(default, bool):
      value = {"true": True, "1": True, "false": False, "0": False}[raw.strip().lower()]
    elif isinstance(default, int):
      value = int(raw)
    elif isinstance(default, float):
      value = float(raw)
    elif isinstance(default, (list, tuple)):
      value = ast.literal_eval(raw)
      if not isinstance(value, (list, tuple)):
        raise ValueError(raw)
      value = list(value)
    else:
      value = raw
  except (KeyError, ValueError, SyntaxError):
    raise configuration.ConfigError(f"--set={text!r}: {raw!r} is not {configuration.kind_text(default)} (the kind "
                                    f"of {field})") from None
  return field, value


def _trial_value(point: Mapping[str, Any], field: str, base: ml_collections.ConfigDict) -> Any:
  """The value of `field` in the config of a trial with overrides `point`: its override as the config holds it (1
  becomes 1.0 in a float field), else the base config's."""
  config = configuration.apply_overrides(base, {field: point[field]}) if field in point else base
  return configuration.flatten(config)[field]


def with_settings(points: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], path: str | Path,
                  base: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """The sweep's trials with `research-sweep --set` applied to each: a field the sweep sets to one value (a shared
  budget such as train.steps, a width) takes the new value in place, so that the trial's name says it; a field it
  does not set is added at the end. A field the sweep gives several values is refused: setting it would merge its
  arms. A trial that does not set the field has `base`'s value of it (the sweep's BASE_CONFIG): a field set in some
  trials only (rare_tokens' plain-SGD arm, momentum 0 against the default 0.9) varies too."""
  for field in settings:
    given = {json.dumps(_trial_value(p, field, base), sort_keys=True, default=repr) for p in points}
    if len(given) > 1:
      raise configuration.ConfigError(
          f"--set={field}=...: sweep {str(path)!r} varies {field} ({', '.join(sorted(given))}); --set changes "
          f"only a field every trial has the same value of (or none)")
  return [{**{k: settings.get(k, v) for k, v in p.items()}, **{k: v for k, v in settings.items() if k not in p}}
          for p in points]


def load_sweep(path: str | Path, settings: Mapping[str, Any] | None = None, directory: str | Path | None = None
               ) -> Sweep:
  """Reads a sweep file and validates every trial's overrides against its base config (no trial runs yet).
  `settings` ({field: value}, from `research-sweep --set`) change a field every trial shares (`with_settings`).
  `directory`: the sweep directory, where a trial trained before a check for new training only existed resumes
  as research-train resumes it (`loop.trained_as`)."""
  module = load_config_file(path)
  if not hasattr(module, "get_sweep"):
    raise configuration.ConfigError(f"sweep file {str(path)!r} defines no get_sweep()")
  base = getattr(module, "BASE_CONFIG", "configs/clm.py")
  if not isinstance(base, (str, os.PathLike)):
    raise configuration.ConfigError(f"sweep {str(path)!r}: BASE_CONFIG must be a config file's path, got "
                                    f"{_short_repr(base)}")
  # Absolute, so that the trials (run in this directory) and the printed commands find it from there.
  base = str(config_path(base, root_first=True))
  try:
    base_config = load_base_config(base)
  except configuration.ConfigError as e:
    raise configuration.ConfigError(f"sweep {str(path)!r}: BASE_CONFIG: {e}") from None
  try:
    points = module.get_sweep()
  except Exception as e:  # noqa: BLE001 (a user's file: whatever it raises is reported in one line)
    file = Path(module.__file__)
    raise configuration.ConfigError(f"sweep {str(path)!r}: get_sweep() fails: {file_error(file, e)}") from None
  if not isinstance(points, Sequence) or isinstance(points, (str, bytes)) or \
      not all(isinstance(p, Mapping) for p in points):
    raise configuration.ConfigError(f"sweep {str(path)!r}: get_sweep() must return a list of {{field: value}} "
                                    f"override dicts, got {_short_repr(points)}")
  if not points:
    raise configuration.ConfigError(f"sweep {str(path)!r}: get_sweep() returned no trials (an empty grid: is one "
                                    f"axis an empty list?)")
  if settings:
    points = with_settings(points, settings, path, base_config)
  trials, names, configs, same = [], set(), {}, {}
  for overrides in points:
    config = configuration.apply_overrides(base_config, overrides)  # unknown fields fail here
    name = trial_name(overrides)
    trained_as = loop.trained_as(Path(directory) / name) if directory is not None else None
    try:
      configuration.validate(config, trained_as)  # unknown choices, bad numbers, bad shapes fail here
    except configuration.ConfigError as e:
      raise configuration.ConfigError(f"sweep {str(path)!r}: trial {name!r}: {e}") from None
    if name in names:
      raise configuration.ConfigError(f"sweep {str(path)!r} has two trials named {name!r}")
    key = json.dumps(config.to_dict(), sort_keys=True, default=repr)
    if key in same:
      raise configuration.ConfigError(
          f"sweep {str(path)!r}: trials {same[key]!r} and {name!r} are the same config (the same overrides in "
          f"another order or spelling, e.g. 1 and 1.0); keep one")
    names.add(name)
    same[key] = name
    trials.append(Trial(name, dict(overrides)))
    configs[name] = config
  evaluate = getattr(module, "EVALUATE", None)
  if evaluate:
    check_evaluate_options(evaluate, path, configs)
  return Sweep(Path(path).stem, base, trials, dict(evaluate) if evaluate else None,
               notes=tuple(same_model_notes(configs)))


def same_model_notes(configs: Mapping[str, Any]) -> list[str]:
  """A warning for each group of trials that train the same model: their configs differ only in fields that change
  when, how often or where a run works (`schema.RESUMABLE_FIELDS` but train.steps), e.g. a sweep over
  train.log_every or model.remat, or that neither model uses (`loop.unused_fields`: the char CNN's without one, a
  causal LM's MLM rates, train.momentum but under sgd, a scheme's field under another scheme, model.table_dim 0 vs
  d_model, ...);
  the rule is research/run_fields.py's, which research-report's duplicate runs use too.
  Such a sweep is legitimate to measure speed or memory, so it is said, not refused; as an ablation it would report
  one model twice (its arms' losses differ only by float rounding, if at all)."""
  dicts = {name: config.to_dict() for name, config in configs.items()}

  def same(a, b) -> bool:  # research-train's resume rule, unused fields included
    a, b = dicts[a], dicts[b]
    return not checkpoint_lib.config_differences(a, b, ignore=loop.same_model_ignored(a, b))

  groups: list[list[str]] = []
  for name in configs:
    group = next((g for g in groups if same(g[0], name)), None)
    if group is None:
      groups.append([name])
    else:
      group.append(name)
  notes = []
  for group in (g for g in groups if len(g) > 1):
    fields = sorted({diff.split(":", 1)[0] for name in group[1:]
                     for diff in checkpoint_lib.config_differences(dicts[group[0]], dicts[name])})
    notes.append(f"trials {', '.join(map(repr, group))} train the same model: they differ only in "
                 f"{', '.join(fields)} (when, how often or where a run works, or what neither model uses)")
  return notes


def _short_repr(value: Any, limit: int = 80) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


# The research-evaluate flags with a fixed set of values (experiments/evaluate.py's enums).
EVALUATE_CHOICES = {"mode": tuple(extrapolation.MODES), "checkpoint": extrapolation.CHECKPOINTS,
                    "rope_scaling": extrapolation.ROPE_SCALINGS}
# The parser of each research-evaluate flag (experiments/evaluate.py; tests/test_sweeps.py checks that they are the
# same kinds): an EVALUATE value becomes the text of `--key=value` (`evaluate_command`), which must parse.
EVALUATE_PARSERS: dict[str, flags.ArgumentParser] = {
    "lengths": flags.ListParser(), "stride": flags.IntegerParser(), "split": flags.ArgumentParser(),
    "rope_factor": flags.FloatParser(), "by_position": flags.BooleanParser(), "passkey": flags.BooleanParser(),
    "passkey_depths": flags.ListParser(), "passkey_trials": flags.IntegerParser(),
    "max_tokens_per_batch": flags.IntegerParser(),
    **{key: flags.EnumParser(list(choices)) for key, choices in EVALUATE_CHOICES.items()}}


def evaluate_options() -> list[str]:
  """The EVALUATE keys a sweep may set: evaluate_run's keywords that are also research-evaluate flags (`workdir` is
  the trial's own directory and `output` has no flag, so neither can be set per sweep)."""
  params = inspect.signature(extrapolation.evaluate_run).parameters
  return [name for name in params if name not in ("workdir", "output")]


def _flag_text(value: Any) -> str:
  """An EVALUATE value as `evaluate_command` writes it after `--key=`: lists comma-separated."""
  return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def check_evaluate_options(evaluate: Any, path: str | Path, configs: Mapping[str, Any] | None = None) -> None:
  """Every EVALUATE key and value that research-evaluate would refuse, refused here in one line before any trial
  trains (it would otherwise fail in every trial's evaluate step, after all the training): a key that is no option,
  a value whose flag does not parse, what `extrapolation.check_options` / `passkey.check_options` refuse, and, for
  each trial's config in `configs` ({name: config}), what `extrapolation.check_run_options` refuses (RoPE scaling
  of another scheme, passkey or sliding windows for a masked LM, passkey with a tokenizer kind that cannot spell
  its keys, a stride longer than the shortest window). One refusal is left to the evaluation, since only the trained
  tokenizer tells: passkey with a tokenizer whose learned alphabet lacks a digit (`passkey.tokenize_prompt`)."""
  where = f"sweep {str(path)!r}: EVALUATE"
  options, multiples = resolved_evaluate_options(evaluate, where)
  for name, config in (configs or {}).items():
    try:
      extrapolation.check_run_options(name, config, multiples, mode=options["mode"],
                                      stride=options["stride"], rope_scaling=options["rope_scaling"],
                                      passkey=options["passkey"])
    except extrapolation.EvaluationError as e:
      raise configuration.ConfigError(f"{where} does not suit trial {name!r}: {e}") from None


def resolved_evaluate_options(evaluate: Any, where: str = "EVALUATE") -> tuple[dict[str, Any], list[int]]:
  """({option: value} as research-evaluate would run with it, defaults filled in; the checked multiples), or the
  one-line ConfigError research-evaluate's checks give (`where` prefixes it)."""
  if not isinstance(evaluate, Mapping):
    raise configuration.ConfigError(f"{where} must be a dict of research-evaluate options or None, got "
                                    f"{type(evaluate).__name__}")
  allowed = evaluate_options()
  options = {name: p.default for name, p in inspect.signature(extrapolation.evaluate_run).parameters.items()
             if name in allowed}
  for key, value in evaluate.items():
    if key not in allowed:
      raise configuration.ConfigError(f"{where} key {key!r} is not a research-evaluate option; allowed: "
                                      f"{', '.join(allowed)}")
    if value is None:  # research-evaluate's default: `evaluate_command` passes no flag
      continue
    parser = EVALUATE_PARSERS[key]
    try:
      options[key] = parser.parse(_flag_text(value))
    except (TypeError, ValueError):
      raise configuration.ConfigError(f"{where}[{key!r}]={value!r} is not {expected_flag_value(parser)} "
                                      f"(research-evaluate --{key})") from None
  # As experiments/evaluate.py converts its list flags.
  for key, convert, what in (("lengths", int, "positive integers: multiples of the training length"),
                             ("passkey_depths", float, "numbers in [0, 1]")):
    try:
      options[key] = [convert(v) for v in options[key]]
    except (TypeError, ValueError):
      raise configuration.ConfigError(f"{where}[{key!r}]={evaluate[key]!r} must be {what}") from None
  try:
    passkey.check_given(options["passkey"], [key for key in ("passkey_depths", "passkey_trials")
                                             if evaluate.get(key) is not None])
    multiples = extrapolation.check_options(
        options["lengths"], mode=options["mode"], stride=options["stride"], split=options["split"],
        checkpoint=options["checkpoint"], rope_scaling=options["rope_scaling"], rope_factor=options["rope_factor"],
        max_tokens_per_batch=options["max_tokens_per_batch"])
    if options["passkey"]:  # as research-evaluate runs them: each depth once, -0 as 0 (what passkey.json records)
      options["passkey_depths"] = passkey.check_options(options["passkey_depths"], options["passkey_trials"])
  except extrapolation.EvaluationError as e:
    raise configuration.ConfigError(f"{where}: {e}") from None
  return options, [int(m) for m in multiples]


# ------------------------------------------------------------------------------------------------ commands


def _flag_value(value: Any) -> str:
  return str(value)


def script(name: str) -> str:
  """The installed console script `name` (research-train, research-evaluate): the one beside this interpreter (the
  same environment), else the one on PATH. Trials run through it, so the library never names its entry points."""
  beside = Path(sys.executable).parent / name
  if beside.exists():
    return str(beside)
  found = shutil.which(name)
  if not found:
    raise configuration.ConfigError(f"the console script {name!r} is not installed beside {sys.executable} nor on "
                                    f"PATH; install this package (pip install -e .)")
  return found


def train_command(sweep: Sweep, trial: Trial, workdir: str, train: str | None = None) -> list[str]:
  return [train or script("research-train"), f"--config={sweep.base_config}", f"--workdir={workdir}",
          *(f"--config.{k}={_flag_value(v)}" for k, v in trial.overrides.items())]


def evaluate_command(sweep: Sweep, workdir: str, evaluate: str | None = None) -> list[str]:
  args = [evaluate or script("research-evaluate"), f"--workdir={workdir}"]
  for key, value in (sweep.evaluate or {}).items():
    if value is not None:  # None: research-evaluate's default
      args.append(f"--{key}={_flag_text(value)}")
  return args


def _options(sweep: Sweep) -> dict[str, Any]:
  """The sweep's EVALUATE as research-evaluate parses it (`"passkey": "t"` is on, as `--passkey=t` is), defaults
  filled in; {} when the sweep does not evaluate."""
  return resolved_evaluate_options(sweep.evaluate)[0] if sweep.evaluate else {}


def eval_file(sweep: Sweep) -> str:
  return extrapolation.report_file(_options(sweep).get("rope_scaling"))


def eval_files(sweep: Sweep) -> list[str]:
  """The files under RUN/eval/ that the sweep's evaluation writes: extrapolation.json, and loss_by_position.json /
  passkey.json when EVALUATE asks for them (a trial evaluated before they were asked for is evaluated again)."""
  options = _options(sweep)
  scaling = options.get("rope_scaling")
  files = [eval_file(sweep)]
  if options.get("by_position"):
    files.append(by_position.report_file(scaling))
  if options.get("passkey"):
    files.append(passkey.report_file(scaling))
  return files


def missing_eval_files(sweep: Sweep, trial_dir: Path) -> list[str]:
  """The files of `eval_files` the trial's eval/ lacks (none when the sweep does not evaluate)."""
  return [f for f in eval_files(sweep) if not (trial_dir / "eval" / f).exists()] if sweep.evaluate else []


def is_finished(sweep: Sweep, trial_dir: Path) -> bool:
  """Trained to the end (summary.json) and evaluated with every file the sweep's EVALUATE writes."""
  return (trial_dir / "summary.json").exists() and not missing_eval_files(sweep, trial_dir)


def trial_config(sweep: Sweep, trial: Trial, base: Any = None):
  """The config research-train resolves for `trial` (`train_command`: the base config file with the trial's
  overrides); `base`, the base config already loaded, saves reading it again for every trial."""
  base = load_base_config(sweep.base_config) if base is None else base
  return configuration.apply_overrides(base, trial.overrides)


@functools.cache
def trial_backend() -> str:
  """The JAX backend the trials train on (jax.default_backend() in a process with their environment). Asked of a
  child process, once per sweep and only when a field decided per backend differs (`check_trial_directories`): a
  JAX client started in the sweep's own process would hold, on a GPU, memory its trials need."""
  result = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], cwd=ROOT,
                          env=trial_environment(), capture_output=True, text=True)
  if result.returncode != 0:
    raise configuration.ConfigError(f"could not start JAX to learn the trials' backend: {_last_error(result.stderr)}")
  return result.stdout.strip().splitlines()[-1]


def check_trial_directories(sweep: Sweep, directory: str | Path) -> None:
  """Refuses the sweep in one line, before any trial runs, when a trial's directory holds a run (its config.json)
  that the trial's config would not resume: research-train's own check (`loop.check_workdir`: every field but
  `schema.RESUMABLE_FIELDS`), for a finished trial too, which would otherwise be skipped and reported as this
  sweep's. A directory without config.json, or one holding only a start that saved no checkpoint (research-train
  starts such a one over), is no conflict."""
  directory = Path(directory)
  base = None
  for trial in sweep.trials:
    workdir = directory / trial.name
    if not (workdir / loop.CONFIG_FILE).is_file():
      continue
    base = load_base_config(sweep.base_config) if base is None else base
    config = trial_config(sweep, trial, base)
    try:
      with contextlib.redirect_stdout(io.StringIO()):  # research-train's note about a start it would replace
        loop.check_workdir(config, workdir, backend=trial_backend)
    except configuration.ConfigError as e:
      raise configuration.ConfigError(
          f"trial {trial.name!r} of this sweep was run with another config (were BASE_CONFIG or the sweep's "
          f"overrides edited?): {e} (--workdir of research-sweep)") from None
    check_not_shortened(trial.name, config, workdir)


def check_dropped_trials(sweep: Sweep, directory: str | Path) -> None:
  """Refuses the sweep in one line, before any trial runs, when the directory's sweep.json lists a trial this sweep
  lacks whose directory holds a run (a checkpoint or summary.json): the rerun would rewrite sweep.json without it,
  and research-report, which reads the trials sweep.json lists, would leave its results out with no word (another
  sweep file, another `--set`, reordered axes or `1` for `1.0`, all of which name trials anew). A trial whose
  directory holds no run (never started, failed before its first checkpoint) may drop out; so may a trial listed
  under its legacy name (`adopt_legacy_trial_dirs` renames it). An unreadable sweep.json is not checked."""
  directory = Path(directory)
  try:
    listed = [t.get("name") for t in json.loads((directory / SWEEP_FILE).read_text())["trials"]]
  except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
    return
  kept = {t.name for t in sweep.trials} | {legacy_trial_name(t.overrides) for t in sweep.trials}
  dropped = [name for name in listed if isinstance(name, str) and name and "/" not in name and name not in kept
             and loop.holds_a_run(directory / name)]
  if dropped:
    more = f" and {len(dropped) - 1} more" if len(dropped) > 1 else ""
    raise configuration.ConfigError(
        f"--workdir={str(directory)!r} holds trials of another sweep (its {SWEEP_FILE}) that this one lacks, with "
        f"their runs: {dropped[0]!r}{more}; run here, this sweep would rewrite {SWEEP_FILE} without them and "
        f"research-report would leave their results out: give this sweep a new --workdir (or run the sweep that "
        f"lists them)")


def check_not_shortened(name: str, config: ml_collections.ConfigDict, workdir: Path) -> None:
  """research-train's rule (`loop.check_not_shortened`) before any trial runs: a trial's train.steps below the step
  of its newest checkpoint is refused in one line. The trial would otherwise count as finished and be skipped, its
  model trained longer than the sweep now says (or, unfinished, fail on its own after the others trained)."""
  loop.check_not_shortened(config, workdir, "set train.steps >= {step} (BASE_CONFIG or the sweep's overrides), or "
                           "give the shorter sweep a new --workdir", who=f"trial {name!r}: ")


def check_trials_outside_corpus(sweep: Sweep, directory: Path) -> None:
  """research-train's `loop.check_outside_corpus` for every trial before any runs: a sweep directory inside a trial's
  `text:` corpus would otherwise fail every trial, one by one."""
  base = load_base_config(sweep.base_config)
  for trial in sweep.trials:
    try:  # the trials run in this process's directory: a relative text: path is read from here, as they read it
      loop.check_outside_corpus(trial_config(sweep, trial, base), Path(directory).absolute() / trial.name,
                                "trial directory")
    except configuration.ConfigError as e:
      raise configuration.ConfigError(f"sweep directory {str(directory)!r}: {e} (--workdir of research-sweep)") \
          from None


def check_vector_files(sweep: Sweep, directory: Path) -> None:
  """research-train's check of model.pretrained.path (`configuration.check_vector_file`) for every trial that would
  start fresh (no checkpoint yet: a resumed run never reads the file), before any trial runs: a missing vector file
  would otherwise fail its trials one by one, after the trials before them trained. Then the file's contents: a
  trial that would start from a file another trial of the sweep (one holding a checkpoint) read with other bytes
  (the sha256 of its RUN/embedding_init.json, `recorded_vectors`) refuses the sweep, since its seeds would average
  runs from different vectors; each such file is hashed once."""
  base = load_base_config(sweep.base_config)
  directory = Path(directory)
  recorded = None
  digests: dict[str, str] = {}
  for trial in sweep.trials:
    if checkpoint_lib.has_checkpoint(directory / trial.name / "checkpoints"):
      continue
    config = trial_config(sweep, trial, base)
    try:  # the trials run in this process's directory: a relative path is read from here, as they read it
      configuration.check_vector_file(config)
    except configuration.ConfigError as e:
      raise configuration.ConfigError(f"trial {trial.name!r}: {e}; no trial was run") from None
    if config.model.embed_init != "pretrained":
      continue
    recorded = recorded_vectors(sweep, directory) if recorded is None else recorded
    path = str(config.model.pretrained.path)
    resolved = os.path.realpath(path)
    # The trials that read this file, or read a file by this name: a symbolic link moved to other bytes between
    # trials resolves elsewhere, but the sweep still names the file it named.
    records = recorded.get(resolved, []) + recorded.get(GIVEN_PATH + path, [])
    if not records:
      continue
    if resolved not in digests:
      try:
        digests[resolved] = pretrained.file_record(path)["sha256"]
      except OSError:  # unreadable: research-train names it in its own line
        continue
    other = next(((name, sha) for name, sha in records if sha != digests[resolved]), None)
    if other is not None:
      raise configuration.ConfigError(
          f"trial {trial.name!r}: model.pretrained.path={path!r} now holds other vectors (sha256 "
          f"{digests[resolved][:12]}) than trial {other[0]!r} of this sweep started from (sha256 {other[1][:12]}, its "
          f"{loop.EMBEDDING_INIT_FILE}): restore that file, or give the sweep a new --workdir; no trial was run")


GIVEN_PATH = "path:"  # `recorded_vectors`' key prefix for model.pretrained.path as the trial gave it


def recorded_vectors(sweep: Sweep, directory: Path) -> dict[str, list[tuple[str, str]]]:
  """{resolved vector file: [(trial, the sha256 of the bytes it read)]} of the sweep's trials that hold a checkpoint
  and recorded the file (RUN/embedding_init.json since `pretrained.file_record`; a trial written before records
  nothing, and a start without a checkpoint will read the file again); the same under GIVEN_PATH + the path as the
  trial gave it (the trials run in research-sweep's directory, so one name means one place to all of them)."""
  out: dict[str, list[tuple[str, str]]] = {}
  for trial in sweep.trials:
    workdir = Path(directory) / trial.name
    if not checkpoint_lib.has_checkpoint(workdir / "checkpoints"):
      continue
    try:
      report = json.loads((workdir / loop.EMBEDDING_INIT_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
      continue
    if isinstance(report, dict) and all(isinstance(report.get(k), str) for k in ("resolved_path", "sha256")):
      out.setdefault(report["resolved_path"], []).append((trial.name, report["sha256"]))
      if isinstance(report.get("path"), str):
        out.setdefault(GIVEN_PATH + report["path"], []).append((trial.name, report["sha256"]))
  return out


def saved_objective(trial_dir: Path) -> str | None:
  """The objective the trial's RUN/config.json records, or None when it cannot be read."""
  try:
    saved = json.loads((trial_dir / loop.CONFIG_FILE).read_text())
  except (OSError, ValueError):
    return None
  return saved.get("objective") if isinstance(saved, dict) else None


def evaluation_outdated(sweep: Sweep, trial_dir: Path) -> str | None:
  """Why a trial evaluated before (every file of `eval_files` exists) must be evaluated again for this sweep's
  EVALUATE, or None: its extrapolation file lacks a requested length, or records other options (mode, stride, split,
  RoPE factor, and `checkpoint` where the file records it, as files written since it does; the scaling is in the
  file's name), or its passkey file other depths, trials, lengths or RoPE factor (`passkey_outdated`), or an MLM
  trial's file lacks `mlm_masks` (scored with masks per batch, which moved with the batch size:
  `extrapolation.MLM_MASKS`), its loss_by_position file too when EVALUATE asks for by_position. What the files do
  not record is not compared: `max_tokens_per_batch` (batching only); by_position's other options by the file's
  presence (`missing_eval_files`)."""
  if not sweep.evaluate:
    return None
  path = trial_dir / "eval" / eval_file(sweep)
  try:
    report = json.loads(path.read_text())
    recorded = [int(r["multiple"]) for r in report["results"]]
    train_len = int(report["train_len"])
  except (OSError, ValueError, TypeError, KeyError, OverflowError):  # "train_len": Infinity
    return f"eval/{path.name} cannot be read"
  options, multiples = resolved_evaluate_options(sweep.evaluate)
  missing = [m for m in multiples if m not in recorded]
  if missing:
    return f"eval/{path.name} lacks length{'s' if len(missing) > 1 else ''} {', '.join(f'{m}x' for m in missing)}"
  stride = options["stride"]
  if options["mode"] == "sliding" and stride is None:
    stride = max(1, train_len // 2)  # as evaluate_run fills it in
  wanted = {"mode": options["mode"], "stride": stride if options["mode"] == "sliding" else None,
            "split": options["split"]}
  if options["rope_scaling"]:
    wanted["rope_factor"] = options["rope_factor"]
  if report.get("checkpoint") is not None:
    wanted["checkpoint"] = options["checkpoint"]
  differ = [f"{key}={report.get(key)!r} (now {value!r})" for key, value in wanted.items() if report.get(key) != value]
  if differ:
    return f"eval/{path.name} was made with {', '.join(differ)}"
  mlm = saved_objective(trial_dir) == "mlm"
  per_batch = (lambda name: f"eval/{name} was scored with MLM masks drawn per batch (they moved with "  # noqa: E731
               f"max_tokens_per_batch); masks are now drawn per row (mlm_masks={extrapolation.MLM_MASKS!r})")
  if report.get("mlm_masks") != extrapolation.MLM_MASKS and mlm:
    return per_batch(path.name)
  if options["by_position"] and mlm:  # its losses by position were scored with the same masks
    lbp = trial_dir / "eval" / by_position.report_file(options["rope_scaling"])
    try:
      masks = json.loads(lbp.read_text()).get("mlm_masks")
    except (OSError, ValueError, AttributeError):  # AttributeError: JSON that is not an object
      return f"eval/{lbp.name} cannot be read"
    if masks != extrapolation.MLM_MASKS:
      return per_batch(lbp.name)
  if options["passkey"]:
    why = passkey_outdated(trial_dir / "eval" / passkey.report_file(options["rope_scaling"]), options, multiples)
    if why:
      return why
  # The run trained on after it was evaluated (a sweep killed while evaluating a trial that had trained on): the
  # checkpoint it scored is no longer the one --checkpoint selects. research-report's rule (docs/reports.md, "Stale
  # evaluations"), so that what the report leaves out as stale the rerun evaluates again.
  try:
    stale = report_runs.load_run(trial_dir).stale_reasons
  except report_runs.ReportError:
    return None  # a file the evaluation does not write (an analysis, the summary): evaluating again cannot mend it
  return next((stale[f"eval/{f}"] for f in eval_files(sweep) if f"eval/{f}" in stale), None)


def passkey_outdated(path: Path, options: Mapping[str, Any], multiples: Sequence[int]) -> str | None:
  """Why an existing eval/passkey(_<scaling>).json does not answer EVALUATE's passkey options, or None: it lacks a
  length, or records other depths or another number of trials (passkey_depths, passkey_trials), or, scaled, another
  RoPE factor (rope_factor; None: the multiple at each length), as `evaluation_outdated` compares the extrapolation
  file's (the scaling is in the file's name)."""
  try:
    report = json.loads(path.read_text())
    recorded = {int(r["multiple"]) for r in report["results"]}
    got = {"depths": [float(d) for d in report["depths"]], "trials": report["trials"]}
  except (OSError, ValueError, TypeError, KeyError, OverflowError):
    return f"eval/{path.name} cannot be read"
  missing = [m for m in multiples if m not in recorded]
  if missing:
    return f"eval/{path.name} lacks length{'s' if len(missing) > 1 else ''} {', '.join(f'{m}x' for m in missing)}"
  wanted = {"depths": [float(d) for d in options["passkey_depths"]], "trials": options["passkey_trials"]}
  if options["rope_scaling"]:
    wanted["rope_factor"], got["rope_factor"] = options["rope_factor"], report.get("rope_factor")
  differ = [f"{key}={got[key]!r} (now {value!r})" for key, value in wanted.items() if got[key] != value]
  return f"eval/{path.name} was made with {', '.join(differ)}" if differ else None


def trial_plan(sweep: Sweep, trial_dir: Path, steps: int | None = None) -> tuple[str, str | None]:
  """What a (re)run does with a trial:
  - ("run", None): not trained to the end (no summary.json): train, resuming from its checkpoints, then evaluate;
  - ("run", why): trained, but to fewer steps than the trial's `train.steps` (`steps`; the sweep was edited to
    train longer, a resumable change): research-train continues it from its last checkpoint, then it is evaluated;
  - ("evaluate", why): trained to the end, but its evaluation lacks a file EVALUATE now writes (by_position,
    passkey; or an evaluation that never ran) or was made with other options (`evaluation_outdated`): only the
    evaluation runs (again), the old files kept in eval/previous/ (`keep_previous_evaluation`);
  - ("skip", None): finished."""
  if not (trial_dir / "summary.json").exists():
    return "run", None
  if steps is not None:
    reached = summary_step(trial_dir)
    if reached is not None and reached < steps:
      return "run", f"trained to step {reached}, train.steps is now {steps}"
  if not sweep.evaluate:
    return "skip", None
  missing = missing_eval_files(sweep, trial_dir)
  if missing:
    return "evaluate", f"eval/{missing[0]} is missing"
  why = evaluation_outdated(sweep, trial_dir)
  return ("evaluate", why) if why else ("skip", None)


def trial_steps(sweep: Sweep) -> dict[str, int]:
  """{trial name: its train.steps}, from the configs research-train would resolve (`trial_plan`'s `steps`)."""
  base = load_base_config(sweep.base_config)
  return {t.name: int(trial_config(sweep, t, base).train.steps) for t in sweep.trials}


def repo_relative(path: str) -> str:
  """`path` relative to the repository root when it is inside it (a shipped config: the TPU workers' commands run in
  their own clone, `repo_dir`), else as it is."""
  try:
    return Path(path).relative_to(ROOT).as_posix()
  except ValueError:
    return path


def remote_path(path: str) -> str:
  """`path` as one word for a worker's shell: quoted (a space, a quote or a `$` stays part of the path), except a
  leading `~` or `~/`, left bare so that the worker's shell expands it to the home directory there
  (`~/my repo` -> `~/'my repo'`)."""
  if path == "~" or path == "~/":
    return path
  if path.startswith("~/"):
    return "~/" + shlex.quote(path[2:])
  return shlex.quote(path)


def tpu_notes(sweep: Sweep, directory: str) -> list[str]:
  """Notes (stderr, beside the printed commands) on paths the TPU workers would not share: a relative --workdir, which
  each worker resolves under its own clone (`repo_dir`), a per-host directory, not the shared filesystem every host
  must see; a BASE_CONFIG outside this repository, a path on this machine that the workers' clones do not have."""
  notes = []
  if not Path(directory).expanduser().is_absolute():
    notes.append(f"note: --workdir={directory!r} is relative: each worker resolves it in its own clone (--repo_dir), "
                 f"so the hosts would not share the run directories; give the shared filesystem's absolute path")
  if Path(repo_relative(sweep.base_config)).is_absolute():
    notes.append(f"note: BASE_CONFIG {sweep.base_config!r} is outside this repository: each worker needs the file at "
                 f"that path (put it in the repository's clones, or on the shared filesystem)")
  return notes


def tpu_commands(sweep: Sweep, directory: str, tpu: str, zone: str, repo_dir: str = "~/research") -> list[str]:
  """One line per trial: train on every host of a TPU VM pod slice, then evaluate on worker 0.

  Every host runs the same training program (the trainer calls jax.distributed.initialize(), which finds the slice's
  coordinator by itself), so `directory` must be a filesystem shared by all workers (gcsfuse, NFS), and `repo_dir`
  this repository's clone on each, installed there (`pip install -e .`, which puts research-train and
  research-evaluate on PATH; quoted for the worker's shell, its leading `~` left to expand there: `remote_path`).
  Evaluation is one process on one host; a single host cannot bring up a slice's TPU runtime without the others
  (JAX waits for them), so it runs on that host's CPUs (JAX_PLATFORMS=cpu). It starts only after training
  succeeded on every host (`&&`).
  """
  if configuration.is_url(directory):
    raise configuration.ConfigError(f"workdir {directory!r} is a URL; TPU workers need a shared filesystem path "
                                    f"(mount the bucket with gcsfuse, or use NFS / Filestore)")
  out = []
  sweep = dataclasses.replace(sweep, base_config=repo_relative(sweep.base_config))
  ssh = f"gcloud compute tpus tpu-vm ssh {shlex.quote(tpu)} --zone={shlex.quote(zone)}"
  repo = remote_path(repo_dir)
  for trial in sweep.trials:
    workdir = f"{directory.rstrip('/')}/{trial.name}"
    train = f"cd {repo} && {shlex.join(train_command(sweep, trial, workdir, train='research-train'))}"
    line = f"{ssh} --worker=all --command={shlex.quote(train)}"
    if sweep.evaluate:
      evaluate = (f"cd {repo} && JAX_PLATFORMS=cpu "
                  f"{shlex.join(evaluate_command(sweep, workdir, evaluate='research-evaluate'))}")
      line += f" && {ssh} --worker=0 --command={shlex.quote(evaluate)}"
    out.append(line)
  return out


# ------------------------------------------------------------------------------------------------ running


def write_index(directory: Path, sweep: Sweep, status: dict[str, dict[str, Any]]) -> None:
  index = {"sweep": sweep.name, "base_config": sweep.base_config, "evaluate": sweep.evaluate,
           "trials": [{"name": t.name, "overrides": t.overrides, **status[t.name]} for t in sweep.trials]}
  tmp = directory / f".{SWEEP_FILE}.tmp{os.getpid()}"  # per process: two sweeps may share a directory
  tmp.write_text(json.dumps(index, indent=1) + "\n")
  os.replace(tmp, directory / SWEEP_FILE)


def signal_text(number: int) -> str:
  """"signal SIGKILL" (the number where Python knows no name)."""
  try:
    return f"signal {signal.Signals(number).name}"
  except ValueError:
    return f"signal {number}"


def _last_error(stderr: str, returncode: int | None = None) -> str:
  """A failed process's error in one line: its last `error: ` line, else, when a signal ended it (`returncode` < 0:
  a kill -9, the kernel's out-of-memory killer), which one, else the first line of the exception its traceback ends
  in (`_exception_line`), else its last line of stderr, else its exit status."""
  lines = [line for line in stderr.strip().splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error: ")]
  if errors:
    return errors[-1][len("error: "):][:2000]
  if returncode is not None and returncode < 0:
    cause = " (from outside the sweep, or the kernel's out-of-memory killer)" if -returncode == signal.SIGKILL else ""
    return f"ended by {signal_text(-returncode)}{cause}"
  raised = _exception_line(lines)
  if raised is not None:
    return raised[:2000]
  if lines:
    return lines[-1][:2000]
  return "unknown error" if returncode is None else f"exit status {returncode} and nothing on stderr"


def _exception_line(lines: Sequence[str]) -> str | None:
  """The first line of the exception a Python traceback ends in (`Type: message`: the first unindented line after
  the last `Traceback (most recent call last):`, whose frames are indented), or None without a traceback. What
  follows it (a message's further lines, JAX's 'See https://...' and filtering note) is left out."""
  starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
  if not starts:
    return None
  return next((line for line in lines[starts[-1] + 1:] if not line.startswith((" ", "\t"))), None)


def trial_environment() -> dict[str, str]:
  """The trials' environment: huge pages for XLA's buffers (they need not restart themselves for them), and the
  directory the sweep was started from as `registry.SCHEME_PATH_ENV`, so that a user's
  `model.position=my_pkg.mod:Scheme` imports in every trial as it did when the sweep file was validated (a console
  script's sys.path does not hold its working directory). Not PYTHONPATH: a folder there would shadow installed
  packages, this library's own included."""
  env = hugepages.environment()
  paths = [os.getcwd()] + [p for p in env.get(registry.SCHEME_PATH_ENV, "").split(os.pathsep) if p]
  return {**env, registry.SCHEME_PATH_ENV: os.pathsep.join(dict.fromkeys(paths))}


def keep_previous_evaluation(sweep: Sweep, workdir: Path) -> Path | None:
  """Copies the eval files an evaluation is about to rewrite to RUN/eval/previous/<UTC time>/ (a folder
  research-report does not read), so that evaluating a trial again loses none of what it wrote: `eval_files` and
  the plot research-evaluate draws beside them (passkey.png, passkey_<scaling>.png; it draws no other)."""
  options = _options(sweep)
  plots = [passkey.plot_file(options.get("rope_scaling"))] if options.get("passkey") else []
  files = [workdir / "eval" / f for f in eval_files(sweep) + plots if (workdir / "eval" / f).is_file()]
  if not files:
    return None
  target = previous_files.folder(workdir / "eval", [file.name for file in files])
  for file in files:
    shutil.copy2(file, target / file.name)
  return target


class SweepInterrupted(Exception):
  """A sweep stopped by SIGINT or SIGTERM (`run_sweep`): its message is the one line research-sweep ends with,
  `exit_code` 128 + the signal's number, as a shell reports a process that a signal ended."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class TrialProcesses:
  """The trial processes running now, each in a process group of its own (its trainer and whatever it starts, a
  supervised trainer included), and the signal that stopped the sweep, if one did. `stop` forwards that signal to
  every group (a second one kills them); once stopped, `start` starts nothing. One lock orders the two, so that no
  trial starts after a stop: only worker threads and the signal handler take it, never the main thread's own code,
  which the handler interrupts."""

  def __init__(self):
    self._lock = threading.Lock()
    self._running: set[subprocess.Popen] = set()
    self.signum: int | None = None

  def start(self, command: Sequence[str], **kwargs) -> subprocess.Popen | None:
    """`command` started in a new process group (None once the sweep was stopped)."""
    with self._lock:
      if self.signum is not None:
        return None
      proc = subprocess.Popen(command, process_group=0, **kwargs)
      self._running.add(proc)
      return proc

  def done(self, proc: subprocess.Popen) -> None:
    with self._lock:
      self._running.discard(proc)

  def stop(self, signum: int) -> int:
    """Forwards `signum` to every running trial's process group, SIGKILL from the second stop on; returns how many
    groups were signalled."""
    with self._lock:
      again = self.signum is not None
      self.signum = self.signum if again else signum
      running = list(self._running)
    for proc in running:
      try:
        os.killpg(proc.pid, signal.SIGKILL if again else signum)
      except (ProcessLookupError, PermissionError):  # ended (and reaped) meanwhile
        pass
    return len(running)


def defer_signals() -> None:
  """For research-sweep's and research-quickstart's process, from the start of their `run`: SIGINT and SIGTERM are
  recorded (`interrupts.record`), not raised, until `stopping_on_signals` takes over (which then stops the sweep
  before any trial starts). A KeyboardInterrupt raised while the sweep loads can land in a callback that swallows it
  (JAX's gc hook prints "Exception ignored" and goes on), and the sweep then trained every trial and exited 0."""
  interrupts.record((signal.SIGINT, signal.SIGTERM), even_ignored=True)


def check_not_interrupted() -> None:
  """SweepInterrupted (research-sweep's one line and status) when `defer_signals` recorded a signal: for the paths
  that start no trial (a dry run, the printed commands, the checks before the first trial)."""
  if interrupts.RECEIVED:
    signum = interrupts.RECEIVED[0]
    raise SweepInterrupted(f"interrupted by {signal_text(signum)} before any trial started", signum)


@contextlib.contextmanager
def stopping_on_signals(processes: TrialProcesses, log: Callable[[str], None]):
  """Within it, SIGINT (Ctrl-C) and SIGTERM stop the sweep (`TrialProcesses.stop`) instead of raising in this
  process: the running trials get the signal (their process groups are their own, so a Ctrl-C reaches them only
  this way, once), queued ones do not start, and `run_sweep` returns only when the running ones have ended. A second
  signal kills them. Only in the main thread, where Python runs signal handlers."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handler(signum, frame):
    again = processes.signum is not None
    count = processes.stop(signum)
    # os.write, not print: the handler may interrupt this thread inside a print of its own.
    os.write(sys.stderr.fileno(), (
        f"research-sweep: {signal_text(signum)}: killing {count} running trial(s)\n" if again else
        f"research-sweep: {signal_text(signum)}: stopping {count} running trial(s) (a checkpointed trial resumes on "
        f"a rerun), starting no more; send it again to kill them\n").encode())

  previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
  if interrupts.RECEIVED:  # a signal came while the command was loading (`defer_signals`): stop before any trial
    handler(interrupts.RECEIVED[0], None)  # starts
  try:
    yield
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)


def run_trial(sweep: Sweep, trial: Trial, directory: Path, train: bool = True,
              processes: TrialProcesses | None = None) -> dict[str, Any]:
  """Trains (resuming if interrupted; with `train` False, only evaluates) and evaluates one trial in subprocesses,
  in this process's working directory (relative paths in the trial's config mean what they mean to the user who
  started the sweep); returns its status record: "interrupted" when the sweep was stopped (`processes`) during it,
  "pending" when it was stopped before the trial's first process started. The subprocesses die with this process
  (`supervisor._die_with_parent`, Linux), so a sweep killed however it is leaves no trainer behind to collide with
  the rerun's."""
  processes = processes or TrialProcesses()
  workdir = directory / trial.name
  start = time.time()
  commands = [train_command(sweep, trial, str(workdir))] if train else []
  if sweep.evaluate:
    keep_previous_evaluation(sweep, workdir)  # a trial evaluated before (then trained longer, or evaluated again)
    commands.append(evaluate_command(sweep, str(workdir)))
  for i, command in enumerate(commands):
    # With huge pages already in their environment, the trials need not restart themselves for them.
    proc = processes.start(command, env=trial_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=functools.partial(supervisor._die_with_parent, os.getpid()))
    if proc is None:  # the sweep was stopped before this command started
      return {"status": "interrupted" if i else "pending", "error": None, "wall_s": time.time() - start}
    try:
      _, stderr = proc.communicate()
    finally:
      processes.done(proc)
    if proc.returncode != 0 and train and i == 0 and trained_to_end(sweep, trial, workdir):
      continue  # the signal came after research-train wrote summary.json (its last act): the trial is trained
    if proc.returncode != 0:
      stopped = processes.signum is not None
      error = f"stopped by {signal_text(processes.signum)} to research-sweep" if stopped else \
          _last_error(stderr, proc.returncode)
      workdir.mkdir(parents=True, exist_ok=True)
      ended = f"\nresearch-sweep: {Path(command[0]).name} {error}\n" if proc.returncode < 0 or stopped else ""
      (workdir / "error.log").write_text(stderr + ended)
      return {"status": "interrupted" if stopped else "failed", "error": error, "wall_s": time.time() - start}
  return {"status": "finished", "error": None, "wall_s": time.time() - start}


def summary_step(trial_dir: Path) -> int | None:
  """The step the trial's summary.json (written last by research-train) records, or None when it cannot be read."""
  try:
    return int(json.loads((trial_dir / "summary.json").read_text())["step"])
  except (OSError, ValueError, TypeError, KeyError, OverflowError):
    return None


def trained_to_end(sweep: Sweep, trial: Trial, workdir: Path) -> bool:
  """Does the trial's summary.json say it reached the trial's train.steps?"""
  reached = summary_step(workdir)
  return reached is not None and reached >= int(trial_config(sweep, trial).train.steps)


def adopt_legacy_trial_dirs(sweep: Sweep, directory: Path, log: Callable[[str], None] = print) -> None:
  """A trial directory written under its legacy name (`legacy_trial_name`) is renamed to the trial's current name,
  so that a sweep started before names were unambiguous resumes and skips what it finished instead of starting
  over. Only when the legacy name is no other trial's name and its config.json holds the trial's overrides."""
  names = {t.name for t in sweep.trials}
  for trial in sweep.trials:
    old, new = directory / legacy_trial_name(trial.overrides), directory / trial.name
    if old == new or old.name in names or new.exists() or not (old / "config.json").exists():
      continue
    saved = configuration.flatten(json.loads((old / "config.json").read_text()))
    if all(saved.get(k) == v for k, v in trial.overrides.items()):
      os.replace(old, new)
      log(f"{old.name}: renamed to {new.name} (trial names are now unambiguous)")


def multiprocess_trials(sweep: Sweep, environ: Mapping[str, str] | None = None) -> str | None:
  """Why the sweep's trials are multi-process jobs (each joins a distributed runtime), or None: the environment the
  trials inherit describes one (`mesh.multihost_reason`), or a trial sets mesh.distributed=true."""
  reason = mesh_lib.multihost_reason(environ)
  if reason:
    return f"{reason} in the environment"
  base = load_base_config(sweep.base_config)
  for trial in sweep.trials:
    if str(configuration.apply_overrides(base, trial.overrides).mesh.distributed).lower() == "true":
      return f"trial {trial.name!r} sets mesh.distributed=true"
  return None


def check_jobs(sweep: Sweep, jobs: int, environ: Mapping[str, str] | None = None) -> None:
  """Multi-process trials run one at a time: trials side by side on a host would all start with the same coordinator
  address and process id (the environment is the sweep's), so they would join one another's job or fail to bind
  the coordinator's port. A one-line ConfigError before anything starts."""
  reason = multiprocess_trials(sweep, environ) if jobs > 1 else None
  if reason:
    raise configuration.ConfigError(
        f"--jobs={jobs} cannot run multi-process trials ({reason}): trials side by side would share one coordinator "
        f"address and process ids; use --jobs=1 and start the same research-sweep command on every host")


def check_directory(directory: str | Path) -> None:
  """A sweep directory that is an existing file, a run directory (`loop.is_run_directory`: the sweep's sweep.json
  and report would go among the run's files, and research-train refuses a workdir holding sweep.json) or a
  directory inside a run fails in one line, before anything is written (research-train's own checks of its
  workdir; the rest of `loop.check_workdir` does not apply: it refuses a sweep directory). A URL too."""
  if configuration.is_url(directory):
    raise configuration.ConfigError(f"workdir {str(directory)!r} is a URL; a sweep directory is a local or shared "
                                    f"filesystem path (mount a bucket with gcsfuse)")
  path = loop.check_not_a_file(directory)
  loop.check_no_brackets(path)  # the trials' workdirs are inside it
  for run in (path.absolute(), *path.absolute().parents):
    if loop.is_run_directory(run):
      where = "is the run" if run == path.absolute() else "is inside the run"
      raise configuration.ConfigError(f"sweep directory {str(directory)!r} {where} {str(run)!r}; give the sweep a "
                                      f"directory of its own (--workdir)")


def run_sweep(sweep: Sweep, directory: str | Path, jobs: int = 1,
              log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
  """Runs the unfinished trials (`jobs` at a time), in this process's working directory; returns {trial: status}.
  One progress line per trial, skipped ones included. SIGINT / SIGTERM stop it (`stopping_on_signals`): the running
  trials are stopped and recorded as "interrupted", the queued ones stay "pending", and SweepInterrupted is raised
  once the running ones have ended (a rerun resumes them all)."""
  check_directory(directory)
  check_jobs(sweep, jobs)
  directory = Path(directory).resolve()
  check_trials_outside_corpus(sweep, directory)
  directory.mkdir(parents=True, exist_ok=True)
  adopt_legacy_trial_dirs(sweep, directory, log)
  check_trial_directories(sweep, directory)  # a trial directory holding another model refuses the whole sweep
  check_dropped_trials(sweep, directory)  # trials of another sweep here would drop out of sweep.json
  check_vector_files(sweep, directory)
  status: dict[str, dict[str, Any]] = {}
  todo, evaluate_again = [], {}
  total, done = len(sweep.trials), 0
  steps = trial_steps(sweep)
  for trial in sweep.trials:
    plan, why = trial_plan(sweep, directory / trial.name, steps[trial.name])
    if plan == "skip":
      status[trial.name] = {"status": "finished", "error": None}
      done += 1
      log(f"[{done}/{total}] {trial.name}: finished (skipped)")
    else:
      status[trial.name] = {"status": "pending", "error": None}
      todo.append(trial)
      if plan == "evaluate":
        evaluate_again[trial.name] = why
      elif why:
        log(f"{trial.name}: {why}: training continues")
  write_index(directory, sweep, status)
  lock = threading.Lock()  # worker threads and this one both update `status` and rewrite sweep.json
  processes = TrialProcesses()

  def start(trial: Trial) -> dict[str, Any]:
    if processes.signum is not None:  # stopped while it was queued: it stays "pending"
      return {"status": "pending", "error": None, "wall_s": 0.0}
    # "running" only once a worker picks the trial up: with jobs < pending trials the rest stay "pending".
    with lock:
      status[trial.name] = {"status": "running", "error": None}
      write_index(directory, sweep, status)
    return run_trial(sweep, trial, directory, train=trial.name not in evaluate_again, processes=processes)

  with stopping_on_signals(processes, log), \
      concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
    futures = {pool.submit(start, trial): trial for trial in todo}
    for future in concurrent.futures.as_completed(futures):
      trial = futures[future]
      record = future.result()
      with lock:
        status[trial.name] = record
        if record["status"] != "pending":
          done += 1
        write_index(directory, sweep, status)
      if record["status"] == "pending":
        continue
      detail = f" (evaluated again, not trained: {evaluate_again[trial.name]})" if trial.name in evaluate_again else ""
      summary_path = directory / trial.name / "summary.json"
      if record["status"] == "finished" and summary_path.exists():
        detail += f" valid_ppl={json.loads(summary_path.read_text())['valid_ppl']:.2f}"
      elif record["error"]:
        detail += f" ({record['error']})" if record["status"] == "interrupted" else f" error: {record['error']}"
      log(f"[{done}/{total}] {trial.name}: {record['status']}{detail} ({record['wall_s']:.0f} s)")
  if processes.signum is not None:
    stopped = [name for name, r in status.items() if r["status"] == "interrupted"]
    queued = sum(r["status"] == "pending" for r in status.values())
    failed = [name for name, r in status.items() if r["status"] == "failed"]
    raise SweepInterrupted(
        f"sweep stopped by {signal_text(processes.signum)}: {len(stopped)} running trial(s) interrupted"
        f"{' (' + ', '.join(stopped) + ')' if stopped else ''}, {queued} not started"
        f"{'; failed: ' + ', '.join(failed) if failed else ''}; rerun the same command to resume them (sweep index: "
        f"{directory / SWEEP_FILE})", processes.signum)
  return status
