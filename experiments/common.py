"""What every entry point shares: one clear line for user errors, no traceback."""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, NoReturn, Sequence

from absl import flags

from research.flag_text import expected_flag_value
from research.error_text import file_error


# The exceptions that are a user's error (one line, no traceback), as (module, class). An exception of one of them can
# only have been raised once its module was imported, so `user_errors` looks them up among the loaded modules instead
# of importing them: a refusal that comes before JAX's import (research-report's, research-analyze's flag checks) ends
# without JAX's import too (it took about 1.3 s of every such refusal).
USER_ERRORS = (
    ("research.train.configuration", "ConfigError"), ("research.data.corpora", "CorpusError"),
    ("research.train.loop", "NonFiniteError"), ("research.train.loop", "StorageError"),
    ("research.evaluate.extrapolation", "EvaluationError"), ("research.report", "ReportError"),
    ("research.embeddings.pretrained", "PretrainedError"), ("research.embeddings.train_vectors", "VectorsError"),
    ("research.analysis.quality", "AnalysisError"), ("research.sweeps", "SweepInterrupted"),
)


def user_errors() -> tuple[type[Exception], ...]:
  """The exceptions that are a user's error: USER_ERRORS's classes of the modules already loaded, and the builtins
  FileNotFoundError and NotADirectoryError."""
  loaded = [getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules]
  return (*loaded, FileNotFoundError, NotADirectoryError)


def fail(message: str, code: int = 2) -> NoReturn:
  """The one line of a user error, on stderr, and exit status `code` (2; a stopped sweep's 128 + its signal)."""
  print("error: " + " ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr)
  exit_now(code)


def exit_now(code: int) -> NoReturn:
  """sys.exit(code); or, when a thread that is not a daemon is still alive (Orbax's signalling threads after a save
  that failed wait forever, and the interpreter would wait for them at exit), the streams flushed and os._exit."""
  import threading
  stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
  if stuck:
    import time
    deadline = time.monotonic() + 2.0  # for all of them together
    for t in stuck:
      try:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
      except Exception:  # noqa: BLE001 — Orbax's threads raise TimeoutError from join(timeout)
        pass
    if any(t.is_alive() for t in stuck):
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
  sys.exit(code)


def _bad_value(parser: flags.ArgumentParser, text: str) -> tuple[str, str] | None:
  """absl says `flag --NAME=VALUE: REASON`; `text` is 'VALUE: REASON'. The split whose VALUE, parsed again, fails
  with REASON (a value may hold ': ' too); None when none does."""
  for match in re.finditer(": ", text):
    value, reason = text[:match.start()], text[match.end():]
    try:
      parser.parse(value)
    except (TypeError, ValueError, OverflowError) as e:
      if str(e) == reason:
        return value, reason
  return None


def flag_error_message(error: flags.Error, flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """One line for a flag that did not parse: `--config.train.steps='abc': expected an integer` (the flag, the value
  as given, and what it accepts); `--workdir is required`; `unknown flag --foo`."""
  message = str(error)
  required = re.findall(r"Flag --(\S+) must have a value other than None", message)
  if len(required) > 1:  # flags.mark_flags_as_required, several missing: absl strings its messages together
    return f"{' and '.join(f'--{name}' for name in required)} are required"
  if isinstance(error, flags.UnrecognizedFlagError):
    tip = message.partition(". Did you mean: ")[2].rstrip(" ?")
    return f"unknown flag --{error.flagname}" + (f"; did you mean --{tip.replace(', ', ', --')}?" if tip else "")
  match = re.fullmatch(r"flag --([^=\s]+)=(.*)", message, re.S)
  if not match or match.group(1) not in flag_values:
    return message
  name, text = match.groups()
  if text.endswith(f"Flag --{name} must have a value other than None."):  # flags.mark_flags_as_required
    return f"--{name} is required"
  parser = flag_values[name].parser
  if "Error whilst parsing config file:" in text:  # before _bad_value: parsing the file again raises the same text
    # ml_collections: loading the config file or its get_config() raised; the traceback follows, the exception last.
    value, _, trace = text.partition(": Error whilst parsing config file:")
    lines = trace.strip().splitlines()
    path = value.split(":", 1)[0]
    frames = [m for m in (re.match(r'\s*File "(.*)", line (\d+), in (\S+)', line) for line in lines)
              if m and os.path.realpath(m.group(1)) == os.path.realpath(path)]
    where = f"line {frames[-1].group(2)}: " if frames else ""
    raised = "get_config() raised" if frames and frames[-1].group(3) == "get_config" else "loading it raised"
    return f"--{name}={value!r}: {where}{raised} {lines[-1].strip()}"
  found = _bad_value(parser, text)
  if found is None:
    return f"--{name}: {text}"
  value, reason = found
  expected = expected_flag_value(parser)
  return f"--{name}={value!r}: " + (f"expected {expected}" if expected else reason)


HELP_ARGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")
FULL_HELP_ARGS = ("--helpfull", "-helpfull")
_TRUE = ("", "=true", "=True", "=1")


def help_asked(argv: list[str]) -> str | None:
  """"short" for --help (`HELP_ARGS`, also written --help=true), "full" for --helpfull, else None."""
  for arg in argv[1:]:
    for names, kind in ((HELP_ARGS, "short"), (FULL_HELP_ARGS, "full")):
      if any(arg == name + value for name in names for value in _TRUE):
        return kind
  return None


def entry_module():
  """The entry point's module (experiments.<name>, not this one): the nearest caller in the stack that is one (its
  `run()` called app.run, which called `parse_flags`); None if none is."""
  frame = sys._getframe(1)
  while frame is not None:
    spec = frame.f_globals.get("__spec__")  # `python -m experiments.x` runs it as __main__
    name = spec.name if spec is not None else frame.f_globals.get("__name__", "")
    if name.startswith("experiments.") and name != __name__:
      return sys.modules.get(frame.f_globals.get("__name__", ""))
    frame = frame.f_back
  return None


def print_help(flag_values: flags.FlagValues = flags.FLAGS, full: bool = False) -> None:
  """--help: the entry point's docstring (what it does, how it is called) and its own flags, on stdout; --helpfull
  (`full`) every flag, absl's and JAX's included. absl's --help prints the docstring of `__main__`, which for a
  console script is an empty wrapper's, and exits with status 1. Output cut short by its reader (`| head`) is no
  error."""
  module = entry_module()
  doc = (module.__doc__ or "").strip() if module else ""
  own = flag_values.module_help(module.__name__) if module else ""
  if own:  # absl heads the list with the module's name ("__main__:" under python -m)
    own = "flags:\n" + own.strip("\n").split("\n", 1)[1]
  rest = "all flags:\n" + flag_values.get_help() if full else "--helpfull lists every flag, absl's own included."
  try:
    print("\n\n".join(part for part in (doc, own, rest) if part), flush=True)
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit


# Multi flags whose values are FIELD=VALUE: setting one FIELD twice is refused as a flag given twice is.
FIELD_FLAGS = ("set",)


def given_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[tuple[str, str]]:
  """(flag name, value as given) of every flag on the command line, in each spelling absl accepts: `--x=v`, `-x=v`,
  `--x v` (not a boolean), `--x` / `--nox` (a boolean: 'true' / 'false'). `--config.FIELD` overrides count as flags
  before ml_collections defines them (while --config is parsed): one without `=` takes the next argument when that
  is no flag, else is 'true'. A flag's short name is reported as its name. Arguments after `--`, positional ones
  and unknown flags (absl names those) are left out."""
  given, args, i = [], argv[1:], 0
  while i < len(args):
    arg, i = args[i], i + 1
    if arg == "--":
      break
    match = re.fullmatch(r"--?([A-Za-z_][\w.-]*)(?:=(.*))?", arg, re.S)
    if not match:
      continue
    name, value = match.groups()
    if name in flag_values:  # a short name (absl's `-v` for --verbosity) counts as the flag's own name
      name = flag_values[name].name
    if value is not None:
      given.append((name, value))
    elif name in flag_values and flag_values[name].boolean:
      given.append((name, "true"))
    elif name.startswith("no") and name[2:] in flag_values and flag_values[name[2:]].boolean:
      given.append((name[2:], "false"))
    elif name.startswith("noconfig."):
      given.append((name[2:], "false"))
    elif name in flag_values or name.startswith("config."):
      takes_next = i < len(args) and (name in flag_values or not args[i].startswith("-"))
      given.append((name, args[i] if takes_next else "true"))
      i += takes_next
  return given


def check_repeated_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One line for a flag given twice (absl keeps the last value silently, and two --config files with an override
  printed absl's 'defined twice' error): any flag but a multi one (`DEFINE_multi_*`), `--config.FIELD` overrides
  included, in any of its spellings (`given_flags`); and a multi flag of FIELD_FLAGS (--set) that sets one FIELD
  twice. The flags of `--flagfile`s count where the files stand (`FlagValues.read_flags_from_files`), so several
  flag files may be given, and a flag in one and on the command line is given twice. Call it where a command parses
  its flags, before anything else reads them."""
  try:  # each --flagfile's flags in its place, as absl reads them (the files themselves may be several)
    argv = flag_values.read_flags_from_files(argv, force_gnu=False)
  except (flags.Error, OSError):
    return  # a flag file that cannot be read: absl's parse says so in its own line
  first: dict[str, str] = {}
  for name, value in given_flags(argv, flag_values):
    if name in flag_values and isinstance(flag_values[name], flags.MultiFlag):
      if name not in FIELD_FLAGS:
        continue
      field = value.partition("=")[0].strip()
      key, what = (name, field), f"--{name} sets {field} twice"
    else:
      key, what = name, f"--{name} is given twice"
    if key in first:
      fail(f"{what} ({first[key]!r} and {value!r}): give it once")
    first[key] = value


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run(main, flags_parser=parse_flags)`: parses the command line as app.run does, but a flag that does not
  parse (a value of the wrong type, an unknown choice or flag, a required flag missing) prints one line `error:
  ...` and exits with status 2 instead of absl's two lines and status 1. --help (`HELP_ARGS`) prints the entry
  point's docstring and its own flags, --helpfull every flag (`print_help`), both with status 0. A flag given twice
  is refused first (`check_repeated_flags`)."""
  asked = help_asked(argv)
  if asked:
    print_help(full=asked == "full")
    sys.exit(0)
  check_repeated_flags(argv)
  from absl import logging
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # ml_collections' warning about a get_config() that returned None: see below
  try:
    rest = flags.FLAGS(argv)
    check_empty_paths()
    check_sweep_file()
    check_config_returned(argv)
    return rest
  except flags.Error as e:
    given = config_flag_value(argv)
    if given is not None and "Flag --config must have a value other than None" in str(e):
      fail(f"--config={given!r}: get_config() returned None; it must return the config (an "
           f"ml_collections.ConfigDict)")
    fail(flag_error_message(e))
  except Exception as e:  # noqa: BLE001 — the config file's own code (ml_collections runs it while parsing --config)
    given = config_flag_value(argv)
    path = given.split(":", 1)[0] if given else getattr(e, "filename", None) or "?"
    if isinstance(e, AttributeError) and "get_config" in str(e):
      fail(f"config file {path!r} defines no get_config()")
    if isinstance(e, AttributeError) and "FrozenConfigDict is immutable" in str(e):  # ml_collections locks it
      fail(f"--config={given!r}: get_config() returned a FrozenConfigDict; it must return the config (an "
           f"ml_collections.ConfigDict, which --config.FIELD overrides can change)")
    fail(f"config file {path!r} {file_error(path, e)}")
  finally:
    logging.set_verbosity(verbosity)


# Path flags of the entry points, and what each names: given empty (`--workdir=`), absl takes "" and the path would
# be the current directory (research-train trained a run into it), so an empty one is refused (`check_empty_paths`).
PATH_FLAGS = {"workdir": "a directory", "vectors": "a vector file", "output": "a file path",
              "export_word2vec": "a file path", "export_projector": "a directory", "sweep": "a sweep file"}


def check_empty_paths(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One line for a path flag of PATH_FLAGS given as an empty (or blank) string."""
  for name, what in PATH_FLAGS.items():
    if name in flag_values and flag_values[name].present and isinstance(flag_values[name].value, str) and \
        not flag_values[name].value.strip():
      fail(f"--{name} is empty: give {what}")


def check_sweep_file(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One line naming --sweep (research-sweep's, research-quickstart's) when it names no file: the sweep loader said
  "config file '/x.py' does not exist", naming no flag. A relative path is looked up as the loader looks it up
  (`sweeps.config_path`: the current directory, else this repository); research.sweeps (JAX) is imported only by a
  command that has the flag, and imports it anyway."""
  given = flag_values["sweep"].value if "sweep" in flag_values else None
  if not isinstance(given, str) or not given.strip():
    return  # absent (the required-flag check) or empty (check_empty_paths)
  from research import sweeps
  path = sweeps.config_path(given)
  if not path.is_file():
    what = "is a directory, not a sweep file" if path.is_dir() else "does not exist"
    where = "" if os.path.isabs(given) else f" (a relative path is a file of the current directory, {os.getcwd()}, " \
                                            f"else of this repository, {REPO_ROOT})"
    fail(f"--sweep={given!r}: sweep file {str(path)!r} {what}{where}")


def check_config_returned(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One line when a config file's get_config() returned something other than a ConfigDict (a dict, a list):
  ml_collections passes it on, and the trainer failed on its first attribute with a traceback. None has its own line
  in `parse_flags` (ml_collections' required-flag error)."""
  import ml_collections
  if "config" not in flag_values or not flag_values["config"].present:
    return
  value = flag_values["config"].value
  if value is not None and not isinstance(value, ml_collections.ConfigDict):
    fail(f"--config={config_flag_value(argv)!r}: get_config() returned a {type(value).__name__}; it must return the "
         f"config (an ml_collections.ConfigDict)")


def config_flag_value(argv: list[str], name: str = "config") -> str | None:
  """The value of `--config=VALUE` (or `--config VALUE`) on the command line, the last one given; None if absent."""
  given = None
  for i, arg in enumerate(argv[1:], 1):
    match = re.fullmatch(rf"--?{re.escape(name)}(=(.*))?", arg, re.S)
    if match:
      given = match.group(2) if match.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else None)
  return given


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expand_home_flags(argv: list[str], remote: Sequence[str] = ()) -> list[str]:
  """`argv` with a leading `~` (`~/runs`, `~`, `~user/x`) in a `--flag=VALUE` expanded to the home directory, as the
  shell expands it in `--flag ~/runs` but not after the `=`: `--workdir=~/runs` made a directory named `~` in the
  current directory (which a later `rm -rf ~` would take for the home directory). Not for the flags in `remote`
  (research-sweep's --repo_dir: a path on other machines, whose shells expand it). A path that exists as written
  (`./~/runs/x`, a run made before this expansion) stays as written, with a note, so that its rerun still resumes
  it. Call it first in a command's `run`, before anything reads sys.argv."""
  out = list(argv[:1])
  for arg in argv[1:]:
    match = re.match(r"--?([A-Za-z_][\w.-]*)=(~.*)", arg, re.S)
    if not match or match.group(1) in remote:
      out.append(arg)
    elif os.path.lexists(match.group(2)):
      print(f"note: {arg}: {os.path.join('.', match.group(2))!r} exists in the current directory (made before a "
            f"leading ~ was the home directory): using it; move it to {os.path.expanduser(match.group(2))!r} to "
            f"use the home directory's", file=sys.stderr, flush=True)
      out.append(arg)
    else:
      out.append(arg[:match.start(2)] + os.path.expanduser(match.group(2)))
  return out


def with_shipped_config(argv: list[str], name: str = "config") -> list[str]:
  """`argv` with a relative `--config=PATH[:ARGS]` that names no file in the current directory but one of this
  repository (the shipped configs/clm.py, ...) made that file's absolute path, so that the everyday commands work
  from any directory, as research-sweep's --sweep and BASE_CONFIG do; a file of the current directory wins."""
  out = list(argv)
  for i, arg in enumerate(out[1:], 1):
    match = re.fullmatch(rf"(--?{re.escape(name)}=)(.*)", arg, re.S)
    if match:
      prefix, value = match.group(1), match.group(2)
    elif re.fullmatch(rf"--?{re.escape(name)}", arg) and i + 1 < len(out):
      prefix, value, i = "", out[i + 1], i + 1
    else:
      continue
    path, colon, rest = value.partition(":")
    shipped = os.path.join(REPO_ROOT, path)
    if path and not os.path.isabs(path) and not os.path.exists(path) and os.path.isfile(shipped):
      out[i] = f"{prefix}{shipped}{colon}{rest}"
  return out


def check_config_file(argv: list[str], name: str = "config") -> None:
  """A `--config=PATH` (ml_collections' config file flag) that names no file fails here with one line; ml_collections
  would raise `OSError: Failed loading config file` with a traceback, while parsing flags or when the config is
  first read. A relative PATH is resolved against the current directory, as ml_collections does."""
  given = config_flag_value(argv, name)
  if given is None or help_asked(argv):
    return  # absent: the required-flag check reports it; with --help, help wins
  path = given.split(":", 1)[0]  # ml_collections passes what follows a colon to get_config()
  if not path:
    fail(f"--{name}={given!r}: expected a Python config file")
  if not os.path.isfile(path):
    what = "is a directory, not a config file" if os.path.isdir(path) else "does not exist"
    where = "" if os.path.isabs(path) else f" (a relative path is resolved against the current directory, " \
                                           f"{os.getcwd()}, then this repository, {REPO_ROOT})"
    fail(f"--{name}={given!r}: config file {path!r} {what}{where}")


def check_override_flags(argv: list[str]) -> None:
  """Unknown `--config.FIELD=...` names fail here with one line (ml_collections would raise with a traceback); absl
  takes `-config.FIELD=...` (one dash) as the same flag, and `--noconfig.FIELD` sets a bool one: checked too."""
  from research.train import configuration
  overrides = {}
  for arg in argv[1:]:
    match = re.match(r"--?(?:no)?config\.", arg)
    if match:
      name, _, value = arg[match.end():].partition("=")
      overrides[name] = value
  try:
    valid = configuration.flatten(configuration.reference_config())
    for name in overrides:
      if name not in valid:
        configuration.apply_overrides(configuration.reference_config(), {name: None})  # raises with the list
  except configuration.ConfigError as e:
    fail(str(e))


def end_interrupted(what: str) -> NoReturn:
  """After a Ctrl-C (KeyboardInterrupt) reached the top of a command: one line saying what is kept, instead of
  Python's traceback, then the process ends by SIGINT itself (status -2, 130 in a shell), so that a shell or a
  parent (research-sweep) sees what ended it."""
  import signal
  print(f"error: interrupted (Ctrl-C); {what}", file=sys.stderr, flush=True)
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  os.kill(os.getpid(), signal.SIGINT)
  exit_now(128 + signal.SIGINT)  # (where the signal does not end the process at once)


def run_main(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps an absl main: a user error prints `error: <message>` on stderr and exits with status 2."""

  def wrapped(argv):
    try:
      main(argv)
    except user_errors() as e:  # evaluated only when main raised
      fail(str(e), getattr(e, "exit_code", 2))  # SweepInterrupted: 128 + the signal that stopped the sweep
    except Exception:  # noqa: BLE001 — a bug's traceback, then the exit a stuck thread cannot hold up
      import traceback
      traceback.print_exc()
      exit_now(1)

  return wrapped
