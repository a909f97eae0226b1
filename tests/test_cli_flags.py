"""Command lines that do not parse: every entry point answers one line `error: ...` naming the flag, the value as
given and what it accepts, with exit status 2 and no traceback (experiments/common.py: parse_flags,
check_config_file), before anything compiles. --help prints what the command does and its flags, status 0."""

import subprocess
import sys

import pytest
from absl import flags

from experiments import common
from research import sweeps
from tests.train_utils import ROOT, cli


def error_line(result) -> str:
  """The one stderr line of a refused command line (exit status 2)."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
      (result.returncode, result.stderr)
  return lines[0]


@pytest.mark.parametrize("override,message", [
    ("train.steps=abc", "--config.train.steps='abc': expected an integer"),
    ("train.steps=2.5", "--config.train.steps='2.5': expected an integer"),
    ("train.learning_rate=fast", "--config.train.learning_rate='fast': expected a number"),
    ("model.tie_embeddings=yes", "--config.model.tie_embeddings='yes': expected true or false"),
])
def test_a_config_override_of_the_wrong_type_is_one_line(tmp_path, override, message):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", f"--config.{override}")
  assert error_line(result) == f"error: {message}"
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("module,args,message", [
    ("experiments.sweep", ["--sweep=configs/sweeps/positions.py", "--workdir=OUT", "--jobs=two"],
     "--jobs='two': expected an integer"),
    ("experiments.sweep", ["--sweep=configs/sweeps/positions.py", "--workdir=OUT", "--job=2"],
     "unknown flag --job; did you mean --jobs?"),
    ("experiments.sweep", ["--workdir=OUT"], "--sweep is required"),
    ("experiments.quickstart", ["--workdir=OUT", "--jobs=x"], "--jobs='x': expected an integer"),
    ("experiments.vectors", ["--out=OUT", "--method=glove"], "--method='glove': expected one of word2vec, fasttext"),
    ("experiments.report", ["--verbosity=loud", "OUT"], "--verbosity='loud': expected an integer"),
    ("experiments.analyze", ["--workdir=OUT", "--checkpoint=bogus"],
     "--checkpoint='bogus': expected one of best, last"),
    ("experiments.analyze", ["--workdir=OUT", "--rare=maybe"], "--rare='maybe': expected true or false"),
])
def test_every_entry_point_refuses_a_flag_that_does_not_parse_in_one_line(tmp_path, module, args, message):
  out = tmp_path / "out"
  result = cli(module, *[a.replace("OUT", str(out)) for a in args])
  assert error_line(result) == f"error: {message}"
  assert not out.exists()


@pytest.mark.parametrize("module,args,message", [
    ("experiments.train", ["--config=ROOT/configs/tiny.py", "--workdir="], "--workdir is empty: give a directory"),
    ("experiments.evaluate", ["--workdir="], "--workdir is empty: give a directory"),
    ("experiments.analyze", ["--workdir=OUT", "--export_word2vec="], "--export_word2vec is empty: give a file path"),
    ("experiments.sweep", ["--sweep=ROOT/configs/sweeps/positions.py", "--workdir= "],
     "--workdir is empty: give a directory"),
])
def test_an_empty_path_flag_is_refused_not_read_as_the_current_directory(tmp_path, module, args, message):
  """absl takes `--workdir=` as "", which a path reads as the current directory: research-train trained a run into
  it. The command runs in a directory of its own here, so that anything it wrote would show."""
  out, cwd = tmp_path / "out", tmp_path / "cwd"
  cwd.mkdir()
  result = cli(module, *[a.replace("OUT", str(out)).replace("ROOT", str(ROOT)) for a in args], cwd=cwd)
  assert error_line(result) == f"error: {message}"
  assert not out.exists() and not list(cwd.iterdir())


@pytest.mark.parametrize("line,message", [
    ("c.train.steps = True", "train.steps=True: expected an integer, got a bool"),  # trained 1 step
    ("c.train.learning_rate = None", "train.learning_rate=None: expected a number"),  # a TypeError traceback
    # a ConfigDict built from a dict (from YAML, say) takes any kind: 'false' trained a frozen table
    ("import ml_collections; d = c.to_dict(); d['train']['embedding']['freeze'] = 'false'; "
     "c = ml_collections.ConfigDict(d)", "train.embedding.freeze='false': expected true or false, got a str"),
])
def test_what_ml_collections_lets_a_config_file_assign_is_refused_by_validation(tmp_path, line, message):
  path = tmp_path / "mine.py"
  path.write_text(f"from configs import tiny\ndef get_config():\n  c = tiny.get_config()\n  {line}\n  return c\n")
  assert error_line(cli(f"--config={path}", f"--workdir={tmp_path / 'run'}")) == f"error: {message}"
  assert not (tmp_path / "run").exists()


def test_research_report_refuses_an_empty_directory_argument(tmp_path):
  result = cli("experiments.report", "", cwd=tmp_path)
  assert error_line(result).startswith("error: DIR is empty; usage: research-report DIR")
  assert not list(tmp_path.iterdir())


def test_research_evaluate_refuses_a_bad_choice_in_one_line_with_parse_flags(tmp_path):
  """What experiments/evaluate.py gets from `app.run(main, flags_parser=parse_flags)`."""
  code = ("from absl import app; from experiments import common, evaluate; "
          "app.run(evaluate.main, flags_parser=common.parse_flags)")
  result = subprocess.run([sys.executable, "-c", code, f"--workdir={tmp_path}", "--checkpoint=bogus"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert error_line(result) == "error: --checkpoint='bogus': expected one of best, last"


def test_a_value_holding_a_colon_is_named_whole():
  """absl's message is `flag --NAME=VALUE: REASON`; the value is found by parsing it again, not by the first ': '."""
  values = flags.FlagValues()
  flags.DEFINE_integer("n", 1, "", flag_values=values)
  flags.DEFINE_enum("mode", "a", ["a", "b"], "", flag_values=values)
  for argv, message in ((["x", "--n=a: b"], "--n='a: b': expected an integer"),
                        (["x", "--mode=c: d"], "--mode='c: d': expected one of a, b")):
    with pytest.raises(flags.Error) as error:
      values(argv)
    assert common.flag_error_message(error.value, values) == message


def test_help_still_prints_the_usage():
  result = cli("experiments.sweep", "--helpfull")
  assert "--jobs" in result.stdout and "--dry_run" in result.stdout and "error:" not in result.stderr


def test_helpfull_help_true_and_help_beside_a_bad_config_are_help_and_two_missing_flags_one_line(tmp_path):
  full = cli("experiments.train", "--helpfull")
  assert full.returncode == 0 and full.stdout.startswith("Train (or resume) one run.")
  assert "all flags:" in full.stdout and "--workdir" in full.stdout
  for args in (["--help=true"], [f"--config={tmp_path / 'missing.py'}", "--help"]):
    result = cli("experiments.train", *args)
    assert result.returncode == 0 and result.stdout.startswith("Train (or resume) one run."), result.stderr
  assert error_line(cli("experiments.train")) == "error: --config and --workdir are required"
  piped = subprocess.run(f"{sys.executable} -m experiments.train --help | head -1", shell=True, cwd=ROOT,
                         capture_output=True, text=True)
  assert piped.stdout.strip() == "Train (or resume) one run." and "Traceback" not in piped.stderr


@pytest.mark.parametrize("module,flag,own", [
    ("experiments.train", "--help", ["--config", "--workdir"]), ("experiments.sweep", "-h", ["--jobs", "--dry_run"]),
    ("experiments.evaluate", "--helpshort", ["--lengths", "--checkpoint"]), ("experiments.report", "--help", [])])
def test_help_prints_what_the_command_does_and_its_own_flags_with_status_0(module, flag, own):
  """absl's --help printed __main__'s docstring (a console script's wrapper has none) and exited with status 1. Even
  with a required flag missing, --help is help, not an error."""
  import ast
  source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
  result = cli(module, flag)
  assert result.returncode == 0 and result.stderr == "", (result.returncode, result.stderr)
  assert result.stdout.startswith(ast.get_docstring(ast.parse(source)).splitlines()[0])
  assert all(name in result.stdout for name in own) and "--helpfull" in result.stdout
  assert "--jax_" not in result.stdout  # only its own flags: --helpfull lists the rest


def test_a_config_file_that_does_not_exist_is_one_line(tmp_path):
  missing = tmp_path / "nowhere.py"
  result = cli(f"--config={missing}", f"--workdir={tmp_path / 'run'}", "--config.train.steps=3")
  assert error_line(result) == f"error: --config='{missing}': config file '{missing}' does not exist"
  # A relative path is resolved against the current directory, then the repository (the shipped configs/ from any
  # directory, as research-sweep finds them): both are named when neither has it.
  run = lambda config, *flags: subprocess.run(  # noqa: E731
      [sweeps.script("research-train"), config, f"--workdir={tmp_path / 'run'}", *flags], cwd=tmp_path,
      capture_output=True, text=True, timeout=300)
  assert error_line(run("--config=configs/nothere.py")) == (
      "error: --config='configs/nothere.py': config file 'configs/nothere.py' does not exist (a relative path is "
      f"resolved against the current directory, {tmp_path}, then this repository, {ROOT})")
  # The shipped file, found from tmp_path: it loads (the refusal is of the value, after the file was read).
  assert error_line(run("--config=configs/tiny.py", "--config.train.steps=-1")).startswith("error: train.steps=-1")
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "tiny.py").write_text("def get_config():\n  raise ValueError('the local one')\n")
  line = error_line(run("--config=configs/tiny.py", "--config.train.steps=-1"))  # a file of the current directory wins
  assert "the local one" in line, line
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["-config.model.bogus=1", "--noconfig.model.bogus", "-noconfig.model.bogus"])
def test_a_single_dash_or_no_config_override_is_checked_as_the_double_dash_one(flag, tmp_path):
  """absl takes `-config.FIELD=...` as `--config.FIELD=...`, and `--noconfig.FIELD` sets a bool field false; an
  unknown FIELD printed "config file ... AttributeError: 'bogus'" (with an escaped newline)."""
  line = error_line(cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", flag))
  assert line.startswith("error: unknown config field 'model.bogus' (did you mean "), line
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("source,message", [
    ("def get_config(:\n  pass\n", "line 1: SyntaxError: invalid syntax"),
    ("def get_config():\n  raise ValueError('no such model')\n", "get_config() raised ValueError: no such model"),
    ("def get_config():\n  return undefined_name\n", "line 2: NameError: name 'undefined_name' is not defined"),
    ("import no_such_module_here\n", "line 1: ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("raise ValueError('top level boom')\ndef get_config():\n  pass\n",
     "line 1: loading it raised ValueError: top level boom"),
    ("def get_config():\n  return None\n",
     "get_config() returned None; it must return the config (an ml_collections.ConfigDict)"),
    ("x = 1\n", "defines no get_config()"),
    # ml_collections passes these on: the trainer failed on their first attribute with a traceback
    ("def get_config():\n  return {'seed': 0}\n",
     "get_config() returned a dict; it must return the config (an ml_collections.ConfigDict)"),
    ("def get_config():\n  return [1, 2]\n",
     "get_config() returned a list; it must return the config (an ml_collections.ConfigDict)"),
    ("import ml_collections\nfrom configs import tiny\n"
     "def get_config():\n  return ml_collections.FrozenConfigDict(tiny.get_config())\n",
     "get_config() returned a FrozenConfigDict; it must return the config (an ml_collections.ConfigDict, which "
     "--config.FIELD overrides can change)"),
    # ml_collections' type check inside get_config(): its message, not the whole traceback on one line
    ("from configs import tiny\ndef get_config():\n  c = tiny.get_config()\n  c.model.d_model = 64.0\n  return c\n",
     "line 4: get_config() raised TypeError: Could not override field 'd_model' (reference). 64.0 is of original "
     "type <class 'float'> and cannot be casted to type <class 'int'>"),
])
def test_a_config_file_that_does_not_load_is_one_line(tmp_path, source, message):
  path = tmp_path / "broken.py"
  path.write_text(source)
  line = error_line(cli(f"--config={path}", f"--workdir={tmp_path / 'run'}"))
  assert str(path) in line and line.endswith(message), line


def test_a_tilde_after_a_flags_equals_sign_is_the_home_directory(tmp_path, monkeypatch):
  """`--workdir=~/runs/x` (the shell expands `~` in `--workdir ~/runs/x`, not after the `=`) made a directory named
  `~` in the current directory; every command's run() now expands it first."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  argv = ["prog", "--workdir=~/runs/x", "--out=~", "--config.data.cache_dir=~/c", "--name=a~b", "~/positional",
          "--flag", "~/separate", "--x=~nosuchuser_zz/y"]
  assert common.expand_home_flags(argv) == [
      "prog", f"--workdir={tmp_path}/home/runs/x", f"--out={tmp_path}/home", f"--config.data.cache_dir={tmp_path}/home/c",
      "--name=a~b", "~/positional", "--flag", "~/separate", "--x=~nosuchuser_zz/y"]
  assert common.expand_home_flags(["prog", "--repo_dir=~/research", "--workdir=~/w"], remote=("repo_dir",)) == [
      "prog", "--repo_dir=~/research", f"--workdir={tmp_path}/home/w"]  # a path on TPU workers: theirs to expand
  monkeypatch.chdir(tmp_path)
  (tmp_path / "~" / "oldrun").mkdir(parents=True)  # a run made before the expansion: its rerun still resumes it
  assert common.expand_home_flags(["prog", "--workdir=~/oldrun"]) == ["prog", "--workdir=~/oldrun"]
  # A real command: the run directory it names is the home directory's.
  (tmp_path / "home").mkdir()
  result = cli("experiments.evaluate", "--workdir=~/nowhere", "--lengths=1", cwd=tmp_path,
               env={"HOME": str(tmp_path / "home")})
  assert result.returncode == 2 and f"{tmp_path}/home/nowhere" in result.stderr.strip().splitlines()[-1], \
      result.stderr[-2000:]
  assert not (tmp_path / "~" / "nowhere").exists()


def test_the_user_error_classes_are_looked_up_among_loaded_modules_without_importing_jax():
  """`run_main` asks `user_errors` for the exceptions that are one line: each name is a real exception class, and
  asking imports nothing (research-analyze's flag refusals imported JAX for it, ~1.3 s of every refusal)."""
  import importlib
  for module, name in common.USER_ERRORS:
    assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)
  assert set(common.user_errors()) >= {getattr(sys.modules[m], n) for m, n in common.USER_ERRORS}
  probe = ("import sys; from experiments import common; errors = common.user_errors(); "
           "print(sorted(m for m in ('jax', 'research.train.loop', 'research.report') if m in sys.modules), "
           "[e.__name__ for e in errors])")
  out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.stdout.strip() == "[] ['FileNotFoundError', 'NotADirectoryError']", out.stderr[-2000:]


@pytest.mark.parametrize("module, args", [
    ("experiments.evaluate", ["--workdir=missing"]),
    ("experiments.train", ["--config=configs/tiny.py", "--workdir=run", "--config.train.stepz=3"]),
    ("experiments.report", ["--sweep_dir=."]),
])
def test_the_fork_server_gives_what_a_subprocess_gives(module, args, tmp_path, monkeypatch):
  """tests/cli_server.py runs most of the suite's command lines: the same output and status as `python -m` in a
  process of its own, in another working directory too (relative paths and the output files are that directory's)."""
  from tests import train_utils
  monkeypatch.setenv(train_utils.SUBPROCESS_ONLY, "0")  # (a suite run with RESEARCH_TESTS_SUBPROCESS=1 too)
  forked = cli(module, *args, cwd=tmp_path)
  assert train_utils._server is not None and train_utils._server.poll() is None  # it ran there
  monkeypatch.setenv(train_utils.SUBPROCESS_ONLY, "1")
  alone = cli(module, *args, cwd=tmp_path)
  assert (forked.returncode, forked.stdout, forked.stderr) == (alone.returncode, alone.stdout, alone.stderr)
  assert forked.returncode != 0 and forked.stderr.startswith("error: ")


@pytest.mark.parametrize("module,args,message", [
    ("experiments.train", ["--config=ROOT/configs/tiny.py", "--config=ROOT/configs/tiny.py",
                           "--config.train.steps=3", "--workdir=OUT"],
     "--config is given twice ('ROOT/configs/tiny.py' and 'ROOT/configs/tiny.py'): give it once"),
    ("experiments.train", ["--config=ROOT/configs/tiny.py", "--config.train.steps", "3", "-config.train.steps=4",
                           "--workdir=OUT"], "--config.train.steps is given twice ('3' and '4'): give it once"),
    ("experiments.train", ["--config=ROOT/configs/tiny.py", "--config.model.tie_embeddings",
                           "--noconfig.model.tie_embeddings", "--workdir=OUT"],
     "--config.model.tie_embeddings is given twice ('true' and 'false'): give it once"),
    ("experiments.evaluate", ["--workdir=OUT", "--lengths=1", "--lengths", "2"],
     "--lengths is given twice ('1' and '2'): give it once"),
    ("experiments.evaluate", ["--workdir=OUT", "--by_position", "--noby_position"],
     "--by_position is given twice ('true' and 'false'): give it once"),
    ("experiments.sweep", ["--sweep=ROOT/configs/sweeps/positions.py", "--workdir=OUT", "--set=train.steps=5",
                           "--set=model.d_model=32", "--set=train.steps=6"],
     "--set sets train.steps twice ('train.steps=5' and 'train.steps=6'): give it once"),
    ("experiments.analyze", ["--workdir=OUT", "-workdir=OUT"],
     "--workdir is given twice ('OUT' and 'OUT'): give it once"),
    ("experiments.report", ["OUT", "-v", "1", "--verbosity=1"],  # absl's short name of one flag
     "--verbosity is given twice ('1' and '1'): give it once"),
])
def test_a_flag_given_twice_is_refused_naming_both_values(tmp_path, module, args, message):
  """absl kept the last value silently (two --config files with an override printed its 'defined twice' error);
  --set=FIELD=... twice kept the last too. A multi flag may repeat with other fields (--set above)."""
  out = tmp_path / "out"
  fill = lambda text: text.replace("OUT", str(out)).replace("ROOT", str(ROOT))  # noqa: E731
  result = cli(module, *map(fill, args))
  assert error_line(result) == f"error: {fill(message)}"
  assert not out.exists()


def test_flag_files_count_where_they_stand_and_several_may_be_given(tmp_path, capsys):
  """absl reads every --flagfile in turn: two files are no flag given twice, but a flag in a file and again on the
  command line (or in both files) is."""
  from absl import flags as absl_flags
  values = absl_flags.FlagValues()
  absl_flags.DEFINE_string("lengths", None, "", flag_values=values)
  absl_flags.DEFINE_string("mode", None, "", flag_values=values)
  (tmp_path / "a.flags").write_text("--lengths=1,2\n")
  (tmp_path / "b.flags").write_text("--mode=sliding\n")
  files = [f"--flagfile={tmp_path / 'a.flags'}", f"--flagfile={tmp_path / 'b.flags'}"]
  common.check_repeated_flags(["prog", *files], values)  # no error
  for argv in (["prog", *files, "--lengths=4"], ["prog", files[0], files[0]]):
    with pytest.raises(SystemExit):
      common.check_repeated_flags(argv, values)
    assert "error: --lengths is given twice ('1,2' and " in capsys.readouterr().err


def test_given_flags_reads_every_spelling_absl_accepts():
  from absl import flags as absl_flags
  values = absl_flags.FlagValues()
  absl_flags.DEFINE_string("name", None, "", flag_values=values)
  absl_flags.DEFINE_bool("fast", False, "", flag_values=values)
  absl_flags.DEFINE_multi_string("set", [], "", flag_values=values)
  absl_flags.DEFINE_integer("verbosity", 0, "", short_name="v", flag_values=values)
  argv = ["prog", "--name", "a", "-name=b", "--fast", "--nofast", "--fast=false", "pos", "--set=x=1", "--set", "y=2",
          "--config.a.b", "--noconfig.c", "--config.d", "4", "-v", "1", "--verbosity=2", "--", "--name=z"]
  assert common.given_flags(argv, values) == [
      ("name", "a"), ("name", "b"), ("fast", "true"), ("fast", "false"), ("fast", "false"), ("set", "x=1"),
      ("set", "y=2"), ("config.a.b", "true"), ("config.c", "false"), ("config.d", "4"), ("verbosity", "1"),
      ("verbosity", "2")]


@pytest.mark.parametrize("layout,target,refused", [
    (["config.json", "tokenizer.json"], "config.json", True),
    (["config.json", "checkpoints/30/meta"], "checkpoints/30/meta", True),  # a run by its checkpoints, deeper
    (["config.json", "tokenizer.json", "eval/extrapolation.json"], "eval/extrapolation.json", True),
    (["config.json", "tokenizer.json"], "new.txt", False),  # a new file in a run
    (["config.json", "tokenizer.json", "vectors.txt"], "vectors.txt", False),  # an earlier export of one's own
    (["config.json", "tokenizer.json"], "eval/embedding_quality.json", True),  # the analysis writes it first
    (["config.json", "tokenizer.json"], "summary.json", True),  # an unfinished run's summary, written later
    (["config.json"], "config.json", False),  # a config.json alone is anyone's file (loop.is_run_directory)
])
def test_analyze_refuses_to_overwrite_a_file_of_a_run(tmp_path, layout, target, refused):
  """--export_word2vec=RUN/config.json (or --output= any file a run wrote) replaced the run's file and broke the
  run; refused before the analysis, whichever run it is in. Overwriting a file outside a run stays allowed."""
  run = tmp_path / "run"
  for name in layout:
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    (run / name).write_text("kept")
  other = tmp_path / "other"
  (other / "config.json").parent.mkdir()
  (other / "config.json").write_text("{}")
  (other / "tokenizer.json").write_text("{}")
  for flag, args in (("export_word2vec", [f"--workdir={other}"]), ("output", [f"--vectors={tmp_path / 'none.txt'}"])):
    result = cli("experiments.analyze", *args, f"--{flag}={run / target}")
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert (f"--{flag}={str(run / target)!r} is the file {target!r} of the run {str(run)!r}, one its commands "
            f"write" in line) == refused, line
    if refused and (run / target).exists():
      assert (run / target).read_text() == "kept"


def test_the_run_files_analyze_protects_are_what_a_run_holds():
  """research-analyze's list of a run's own files (JAX-free) against a real run's: every file and directory a tiny
  run leaves, and what research-train names, is protected; an export of one's own is not."""
  from pathlib import Path
  from research.data import corpora
  from research.train import loop
  for name in (loop.CONFIG_FILE, loop.TOKENIZER_FILE, loop.METRICS_FILE, loop.SUMMARY_FILE, loop.DATA_FILE,
               loop.INIT_TABLE_FILE, loop.EMBEDDING_INIT_FILE, loop.UPDATE_COUNTS_FILE, loop.LOCK_FILE,
               "token_counts.npy", "events.out.tfevents.1.host", f"{loop.UNREADABLE_DIR}/1/x", "checkpoints/7/state",
               "eval/rare_tokens.json"):
    assert corpora.is_run_file(Path(name)), name
  assert not corpora.is_run_file(Path("vectors.txt")) and not corpora.is_run_file(Path("exports/vectors.bin"))


@pytest.mark.parametrize("args,message", [
    (["--dry_run", "--tpu=pod"], "--tpu is for --print_commands (the TPU pod's commands); without it the sweep "
                                 "runs on this machine"),
    (["--dry_run", "--zone=us-central2-b"], "--zone is for --print_commands (the TPU pod's commands); without it the "
                                            "sweep runs on this machine"),
    (["--dry_run", "--repo_dir=/srv/research"], "--repo_dir is for --print_commands (the TPU pod's commands); "
                                                "without it the sweep runs on this machine"),
    (["--dry_run", "--workdir=gs://bucket/sweep"], "workdir 'gs://bucket/sweep' is a URL; a sweep directory is a "
                                                   "local or shared filesystem path (mount a bucket with gcsfuse)"),
])
def test_sweep_refuses_what_it_would_ignore_or_refuse_when_run(tmp_path, args, message):
  """--tpu, --zone and --repo_dir without --print_commands were ignored (exit 0, the sweep ran here); --dry_run
  printed commands for a gs:// workdir that the real run refuses."""
  workdir = [] if any(a.startswith("--workdir") for a in args) else [f"--workdir={tmp_path / 'sweep'}"]
  result = cli("experiments.sweep", f"--sweep={ROOT / 'configs/sweeps/positions.py'}", *workdir, *args)
  assert error_line(result) == f"error: {message}" and result.stdout == ""
  assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("module,args,message", [
    ("experiments.sweep", ["--sweep=/nonexistent/sweep.py", "--workdir=OUT"],
     "--sweep='/nonexistent/sweep.py': sweep file '/nonexistent/sweep.py' does not exist"),
    ("experiments.quickstart", ["--sweep=/nonexistent/sweep.py", "--workdir=OUT"],
     "--sweep='/nonexistent/sweep.py': sweep file '/nonexistent/sweep.py' does not exist"),
    ("experiments.sweep", ["--sweep=TMP", "--workdir=OUT"], "--sweep='TMP': sweep file 'TMP' is a directory, not a "
                                                            "sweep file"),
    ("experiments.vectors", ["--out=TMP/v.txt", "--cache_dir=FILE"],
     "--cache_dir='FILE' is a file; give a directory (it is created)"),
    ("experiments.vectors", ["--out=TMP/v.txt", "--cache_dir=FILE/cache"],
     "--cache_dir='FILE/cache' is inside the file 'FILE'; give a directory (it is created)"),
    ("experiments.train", ["--config=ROOT/configs/tiny.py", "--workdir=FILE/run"],
     "--workdir='FILE/run' cannot be created: 'FILE' is a file, not a directory"),
])
def test_a_path_that_cannot_be_used_is_refused_naming_its_flag(tmp_path, module, args, message):
  """Each said no flag: 'config file ... does not exist' for --sweep, `[Errno 20] Not a directory:
  '/etc/passwd/corpora'` after seconds for --cache_dir, a bare `[Errno 20]` (or, under /proc, `[Errno 2]`) for
  --workdir."""
  (tmp_path / "file").write_text("x")
  fill = lambda text: (text.replace("OUT", str(tmp_path / "out")).replace("TMP", str(tmp_path))  # noqa: E731
                       .replace("FILE", str(tmp_path / "file")).replace("ROOT", str(ROOT)))
  result = cli(module, *map(fill, args))
  assert error_line(result) == f"error: {fill(message)}"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_research_train_names_a_workdir_where_no_directory_can_be_made(tmp_path):
  from research.error_text import unwritable
  why = unwritable("/proc")
  if why is None:
    pytest.skip("a directory can be made in /proc here")
  result = cli("--config=configs/tiny.py", "--workdir=/proc/no_such_run")
  assert error_line(result) == f"error: --workdir='/proc/no_such_run' cannot be created: no directory can be made " \
                               f"in '/proc' ({why})"


def test_research_train_names_a_workdir_behind_a_link_to_nothing(tmp_path):
  """A symbolic link to a path that does not exist (the workdir itself, or a parent): exists() says no, and the
  trainer's mkdir failed with a traceback (File exists)."""
  (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
  for workdir in (tmp_path / "dangling", tmp_path / "dangling" / "run"):
    result = cli("--config=configs/tiny.py", f"--workdir={workdir}")
    assert error_line(result) == f"error: --workdir={str(workdir)!r} cannot be created: " \
                                 f"{str(tmp_path / 'dangling')!r} is a symbolic link to " \
                                 f"{str(tmp_path / 'nothing')!r}, which does not exist"
