"""Sweeps: expansion, validation before any trial, dry runs, jobs and statuses, resumability, failures, TPU
commands. (Evaluation itself: tests/test_evaluate.py.)"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from research import sweeps
from research.report import build_report
from research.train import configuration
from tests.train_utils import ROOT, cli

FAST = {"train.steps": 24, "train.eval_every": 12, "train.checkpoint_every": 12, "train.log_every": 6,
        "data.seq_len": 32, "train.eval_batches": 4}


def write_sweep(path: Path, trials, evaluate=None, base="configs/tiny.py") -> Path:
  path.write_text(
      f"BASE_CONFIG = {base!r}\nEVALUATE = {evaluate!r}\n\n"
      f"def get_sweep():\n  return {trials!r}\n")
  return path


def test_product_zip_and_seeds():
  points = sweeps.product({"model.position": ["rope", "alibi"]}, sweeps.seeds(2))
  assert points == [{"model.position": "rope", "seed": 0}, {"model.position": "rope", "seed": 1},
                    {"model.position": "alibi", "seed": 0}, {"model.position": "alibi", "seed": 1}]
  assert sweeps.zip_(a=[1, 2], b=[3, 4]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  assert sweeps.product(sweeps.zip_(a=[1, 2], b=[3, 4]), {"c": [5]}) == [{"a": 1, "b": 3, "c": 5},
                                                                          {"a": 2, "b": 4, "c": 5}]
  with pytest.raises(ValueError, match="equally long"):
    sweeps.zip_(a=[1], b=[1, 2])
  assert sweeps.trial_name({"model.position": "alibi", "seed": 1}) == "position=alibi,seed=1"


def test_trial_names_are_unambiguous_and_legacy_directories_are_adopted(tmp_path):
  names = {f: sweeps.short_field_name(f) for f in ("train.weight_decay", "train.embedding.weight_decay",
                                                    "train.position.weight_decay", "model.d_model", "seed")}
  assert names == {"train.weight_decay": "train.weight_decay", "train.embedding.weight_decay": "embedding.weight_decay",
                   "train.position.weight_decay": "position.weight_decay", "model.d_model": "d_model", "seed": "seed"}
  a, b = {"train.weight_decay": 0.0}, {"train.embedding.weight_decay": True, "train.weight_decay": 0.1}
  assert sweeps.trial_name(a) != sweeps.trial_name({"train.embedding.weight_decay": 0.0})
  # Every field of the schema gets a name no other field could also be read as.
  fields = list(configuration.flatten(configuration.reference_config()))
  short = [sweeps.short_field_name(f) for f in fields]
  assert len(set(short)) == len(short)
  # A sweep begun under the old names resumes in its directories.
  path = write_sweep(tmp_path / "s.py", [a, b])
  sweep = sweeps.load_sweep(path)
  out = tmp_path / "out"
  legacy = out / sweeps.legacy_trial_name(a)
  legacy.mkdir(parents=True)
  (legacy / "config.json").write_text(json.dumps({"train": {"weight_decay": 0.0}}))
  logged = []
  sweeps.adopt_legacy_trial_dirs(sweep, out, logged.append)
  assert not legacy.exists() and (out / sweeps.trial_name(a) / "config.json").exists() and len(logged) == 1


@pytest.mark.parametrize("name", ["positions", "positions_extended", "tying", "mlm_vs_clm", "quickstart",
                                  "fire_length"])
def test_shipped_sweeps_expand_and_validate(name):
  sweep = sweeps.load_sweep(ROOT / "configs" / "sweeps" / f"{name}.py")
  assert len({t.name for t in sweep.trials}) == len(sweep.trials) > 1
  if name == "quickstart":
    positions = {t.overrides["model.position"] for t in sweep.trials}
    assert {"none", "learned", "sinusoidal", "rope", "alibi"} <= positions
    assert {t.overrides["model.tie_embeddings"] for t in sweep.trials} == {True, False}
    assert sweep.evaluate["lengths"] == [1, 2, 4, 8]
  if name == "positions":
    assert {t.overrides["model.position"] for t in sweep.trials} == {"none", "learned", "sinusoidal", "rope",
                                                                     "alibi", "t5"}
    assert max(sweep.evaluate["lengths"]) == 16 and {t.overrides["seed"] for t in sweep.trials} == {0, 1, 2}
  if name == "fire_length":  # FIRE's L_init is the one swept field, on positions_extended.py's budget and evaluation
    base = sweeps.load_config_file(sweep.base_config).get_config()
    resolved = [configuration.flatten(configuration.apply_overrides(base, t.overrides)) for t in sweep.trials]
    differing = {f for f in resolved[0] if len({json.dumps(r[f]) for r in resolved}) > 1}
    assert differing == {"model.fire_init_length", "seed"} and {r["model.position"] for r in resolved} == {"fire"}
    assert {r["model.fire_init_length"] for r in resolved} == {16.0, 64.0, 512.0, 2048.0}  # 512: the extended arm
    extended = sweeps.load_sweep(ROOT / "configs" / "sweeps" / "positions_extended.py")
    fire_arm = [t.overrides for t in extended.trials if t.overrides["model.position"] == "fire"]
    assert [{k: v for k, v in t.overrides.items() if k != "model.fire_init_length"} for t in sweep.trials
            if t.overrides["model.fire_init_length"] == 512.0] == fire_arm
    assert sweep.evaluate == extended.evaluate


def test_the_extended_positions_sweep_differs_only_in_the_swept_fields():
  from research.embeddings import registry
  sweep = sweeps.load_sweep(ROOT / "configs" / "sweeps" / "positions_extended.py")
  base = sweeps.load_config_file(sweep.base_config).get_config()
  resolved = [configuration.flatten(configuration.apply_overrides(base, t.overrides)) for t in sweep.trials]
  differing = {f for f in resolved[0] if len({json.dumps(r[f]) for r in resolved}) > 1}
  assert differing == {"model.position", "model.position_sampling", "model.max_position", "model.rope_keep_fraction",
                       "seed"}
  # p-RoPE at the paper's p = 0.75 (its default, 1.0, is RoPE); every other arm keeps the neutral default.
  assert {r["model.rope_keep_fraction"] for r in resolved if r["model.position"] == "p_rope"} == {0.75}
  assert {r["model.rope_keep_fraction"] for r in resolved if r["model.position"] != "p_rope"} == {1.0}
  arms = {(r["model.position"], r["model.position_sampling"], r["model.max_position"]) for r in resolved}
  anchors = {"none", "learned", "sinusoidal", "rope", "alibi", "t5"}  # positions.py's six
  assert {p for p, _, _ in arms} == (set(registry.names()) - anchors) | {"none", "rope", "alibi"}
  assert ("rope", "randomized", 16 * 64) in arms and ("rope", "none", 0) in arms and len(arms) == 13
  assert all(sampling == "none" and top == 0 for p, sampling, top in arms if p != "rope")
  for arm in arms:  # 3 seeds each
    assert sorted(r["seed"] for r in resolved if (r["model.position"], r["model.position_sampling"],
                                                 r["model.max_position"]) == arm) == [0, 1, 2]
  # positions.py's training budget, so that the two tables compare.
  anchor = sweeps.load_sweep(ROOT / "configs" / "sweeps" / "positions.py")
  shared = ("data.seq_len", "train.steps", "train.eval_every", "train.checkpoint_every")
  assert {tuple(r[f] for f in shared) for r in resolved} == {(64, 800, 400, 400)} == {
      tuple(t.overrides[f] for f in shared) for t in anchor.trials}
  assert sweep.evaluate == {"lengths": [1, 2, 4, 8, 16], "by_position": True}
  assert sweeps.evaluate_command(sweep, "W", evaluate="research-evaluate")[2:] == ["--lengths=1,2,4,8,16",
                                                                                  "--by_position=True"]


def test_a_trial_is_finished_only_with_every_file_its_evaluation_writes(tmp_path):
  path = write_sweep(tmp_path / "s.py", [{"model.position": "rope"}], evaluate={"lengths": [1], "by_position": True,
                                                                              "passkey": True})
  sweep = sweeps.load_sweep(path)
  assert sweeps.eval_files(sweep) == ["extrapolation.json", "loss_by_position.json", "passkey.json"]
  trial = tmp_path / "t"
  (trial / "eval").mkdir(parents=True)
  for name in ("summary.json", "eval/extrapolation.json", "eval/loss_by_position.json"):
    (trial / name).write_text("{}")
    assert not sweeps.is_finished(sweep, trial)  # evaluated before passkey was asked for: evaluated again
  (trial / "eval" / "passkey.json").write_text("{}")
  assert sweeps.is_finished(sweep, trial)


@pytest.mark.parametrize("trials,message", [
    ([{"model.positon": "rope"}], "unknown config field 'model.positon'"),
    ([{"model.position": "rope"}, {"model.position": "bogus"}], "model.position='bogus' is not one of"),
    ([{"train.steps": -1}], "train.steps=-1 must be an integer >= 0"),
])
def test_every_override_is_validated_before_any_trial_starts(tmp_path, trials, message):
  path = write_sweep(tmp_path / "bad.py", trials)
  result = cli("experiments.sweep", f"--sweep={path}", f"--workdir={tmp_path / 'out'}")
  assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


def test_a_trial_trained_before_a_training_only_check_is_validated_as_research_train_resumes_it(tmp_path):
  """Sandwich at a head dimension of 2 is refused for new training; a sweep whose trial directory already holds a
  run of it (trained before the check: its config.json and summary.json, by the trainer's writers) loads, as
  research-train resumes that run, and another trial of the same shape without a run is still refused."""
  from research.train import loop
  from tests.train_utils import mark_finished, tiny_config
  trial = {"model.position": "sandwich", "model.num_heads": 32}  # tiny's d_model 64: head dimension 2
  path = write_sweep(tmp_path / "s.py", [trial])
  with pytest.raises(configuration.ConfigError, match=r"sandwich' needs a head dimension of at least 4"):
    sweeps.load_sweep(path, directory=tmp_path / "out")
  run = tmp_path / "out" / sweeps.trial_name(trial)
  run.mkdir(parents=True)
  loop.write_config(tiny_config(**trial), run)
  mark_finished(run)
  assert [t.name for t in sweeps.load_sweep(path, directory=tmp_path / "out").trials] == [run.name]
  with pytest.raises(configuration.ConfigError, match=r"sandwich' needs a head dimension of at least 4"):
    sweeps.load_sweep(path)  # no directory: every trial is a new one


@pytest.mark.parametrize("evaluate,message", [
    ({"length": [1, 2]}, "EVALUATE key 'length' is not a research-evaluate option; allowed: lengths, mode, stride, "
                         "split, checkpoint, rope_scaling, rope_factor, by_position, passkey, passkey_depths, "
                         "passkey_trials, max_tokens_per_batch"),
    ({"lengths": [1, 2], "workdir": "/elsewhere"}, "EVALUATE key 'workdir' is not a research-evaluate option"),
    ({"mode": "sliding_window"}, "EVALUATE['mode']='sliding_window' is not one of nonoverlapping, sliding"),
    ({"rope_scaling": "dynamic"}, "EVALUATE['rope_scaling']='dynamic' is not one of linear, ntk, yarn"),
])
def test_evaluate_options_are_validated_before_any_trial_starts(tmp_path, evaluate, message):
  path = write_sweep(tmp_path / "bad.py", [{"model.position": "rope"}], evaluate=evaluate)
  result = cli("experiments.sweep", f"--sweep={path}", f"--workdir={tmp_path / 'out'}")
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
      result.stderr
  assert not (tmp_path / "out").exists()


def test_evaluate_options_are_the_evaluate_flags():
  """What load_sweep allows is what research-evaluate accepts: each key becomes a --key= flag of that CLI."""
  from absl import flags
  import experiments.evaluate  # noqa: F401 (defines the flags)
  assert set(sweeps.evaluate_options()) <= set(flags.FLAGS) and "workdir" not in sweeps.evaluate_options()


def _one_error_line(result) -> str:
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


@pytest.mark.parametrize("evaluate,message", [
    ({"lengths": [0]}, "EVALUATE: lengths=[0] must be positive multiples of the training length"),
    ({"lengths": []}, "EVALUATE: lengths=[] must be positive multiples of the training length"),
    ({"lengths": [1.5]}, "EVALUATE['lengths']=[1.5] must be positive integers"),
    ({"stride": "abc"}, "EVALUATE['stride']='abc' is not an integer (research-evaluate --stride)"),
    ({"rope_factor": "big"}, "EVALUATE['rope_factor']='big' is not a number"),
    ({"by_position": "yes"}, "EVALUATE['by_position']='yes' is not true or false"),
    ({"checkpoint": "first"}, "EVALUATE['checkpoint']='first' is not one of best, last"),
    ({"max_tokens_per_batch": "lots"}, "EVALUATE['max_tokens_per_batch']='lots' is not an integer"),
    ({"passkey_depths": ["x"]}, "EVALUATE['passkey_depths']=['x'] must be numbers in [0, 1]"),
    ({"split": "dev"}, "EVALUATE: split='dev' is not one of train, valid, test"),
    ({"passkey": True, "passkey_depths": [2]}, "EVALUATE: passkey_depths=[2.0] must be fractions in [0, 1]"),
    ({"passkey": True, "passkey_trials": 0}, "EVALUATE: passkey_trials=0 must be an integer >= 1"),
    ({"passkey_trials": 3}, "EVALUATE: --passkey_trials applies with --passkey only"),
    ({"passkey": False, "passkey_depths": [0.5]}, "EVALUATE: --passkey_depths applies with --passkey only"),
    # What only a trial's config rules out: named with the trial.
    ({"rope_scaling": "linear"}, "EVALUATE does not suit trial 'position=alibi': --rope_scaling=linear needs a run "
                                 "whose scheme scales RoPE's frequencies"),
    ({"mode": "sliding", "stride": 1000}, "EVALUATE does not suit trial 'position=rope': --stride=1000 must be an "
                                          "integer between 1 and 64"),
])
def test_every_evaluate_value_research_evaluate_would_refuse_is_refused_when_the_sweep_loads(tmp_path, evaluate,
                                                                                              message):
  path = write_sweep(tmp_path / "bad.py", [{"model.position": "rope"}, {"model.position": "alibi"}],
                     evaluate=evaluate)
  with pytest.raises(configuration.ConfigError, match=re.escape(f"sweep {str(path)!r}: {message}")):
    sweeps.load_sweep(path)


def test_a_rope_scaling_for_a_trial_that_rotates_nothing_is_refused_when_the_sweep_loads(tmp_path):
  """p_rope with model.rope_keep_fraction=0 rotates nothing: every trial would train, then write plain numbers
  labelled as scaled (research-evaluate now refuses it); a trial that keeps some frequencies loads."""
  trials = [{"model.position": "p_rope", "model.rope_keep_fraction": keep} for keep in (0.5, 0.0)]
  path = write_sweep(tmp_path / "bad.py", trials, evaluate={"rope_scaling": "yarn", "passkey": True})
  with pytest.raises(configuration.ConfigError, match=re.escape(
      f"sweep {str(path)!r}: EVALUATE does not suit trial 'position=p_rope,rope_keep_fraction=0.0': "
      f"--rope_scaling=yarn has nothing to scale in 'position=p_rope,rope_keep_fraction=0.0': its "
      f"model.position='p_rope' rotates nothing (model.rope_keep_fraction=0 keeps none of its 8 rotary frequencies)")):
    sweeps.load_sweep(path)
  sweeps.load_sweep(write_sweep(tmp_path / "good.py", trials[:1], evaluate={"rope_scaling": "yarn"}))


def test_evaluate_for_a_masked_lm_trial_is_refused_when_the_sweep_loads(tmp_path):
  path = write_sweep(tmp_path / "bad.py", [{"objective": "clm"}, {"objective": "mlm"}], evaluate={"passkey": True})
  with pytest.raises(configuration.ConfigError, match="EVALUATE does not suit trial 'objective=mlm': passkey "
                                                      "retrieval needs a causal LM"):
    sweeps.load_sweep(path)


def test_passkey_for_a_trial_whose_tokenizer_cannot_spell_the_keys_is_refused_when_the_sweep_loads(tmp_path):
  """The word kind can never spell a random key: research-evaluate refused it only after the trial had trained."""
  evaluate = {"lengths": [1], "passkey": True, "passkey_trials": 2}
  path = write_sweep(tmp_path / "bad.py", [{"data.tokenizer": "bpe"}, {"data.tokenizer": "word"}], evaluate=evaluate)
  with pytest.raises(configuration.ConfigError, match=re.escape(
      f"sweep {str(path)!r}: EVALUATE does not suit trial 'tokenizer=word': passkey retrieval needs a tokenizer that "
      f"spells digits, but data.tokenizer='word' cannot spell the random keys: a word-level vocabulary encodes a "
      f"number it did not hold as a word to [UNK]; allowed kinds: bpe, bpe-char, wordpiece, unigram, char, byte")):
    sweeps.load_sweep(path)
  sweeps.load_sweep(write_sweep(tmp_path / "good.py", [{"data.tokenizer": "bpe"}, {"data.tokenizer": "char"}],
                                evaluate=evaluate))  # kinds that spell digits load


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_bad_evaluate_value_fails_in_one_line_before_any_trial(tmp_path, dry_run):
  path = write_sweep(tmp_path / "bad.py", [{"model.position": "rope", "train.steps": 2}], evaluate={"lengths": [0]})
  result = cli("experiments.sweep", f"--sweep={path}", f"--workdir={tmp_path / 'out'}",
               *(["--dry_run"] if dry_run else []))
  assert _one_error_line(result) == (f"error: sweep {str(path)!r}: EVALUATE: lengths=[0] must be positive multiples "
                                     f"of the training length")
  assert not (tmp_path / "out").exists() and result.stdout == ""


def test_an_evaluate_value_of_none_is_research_evaluates_default(tmp_path):
  path = write_sweep(tmp_path / "s.py", [{"model.position": "rope"}],
                     evaluate={"lengths": [1, 2], "rope_scaling": None, "stride": None})
  sweep = sweeps.load_sweep(path)
  assert sweeps.evaluate_command(sweep, "RUN", evaluate="E") == ["E", "--workdir=RUN", "--lengths=1,2"]
  assert sweeps.eval_files(sweep) == ["extrapolation.json"]


def test_evaluate_parsers_are_those_of_the_evaluate_flags():
  """An EVALUATE value is checked with the parser its research-evaluate flag has: the same kind, the same choices."""
  from absl import flags
  import experiments.evaluate  # noqa: F401 (defines the flags)
  assert set(sweeps.EVALUATE_PARSERS) == set(sweeps.evaluate_options())
  for key, parser in sweeps.EVALUATE_PARSERS.items():
    theirs = flags.FLAGS[key].parser
    assert type(parser) is type(theirs), key
    assert getattr(parser, "enum_values", None) == getattr(theirs, "enum_values", None), key


@pytest.mark.parametrize("source,message", [
    ("BASE_CONFIG = 'configs/tiny.py'\ndef get_sweep(:\n  return []\n",
     "cannot be loaded: line 2: SyntaxError: invalid syntax"),
    ("BASE_CONFIG = 'configs/tiny.py'\nfrom research.sweeps import product\n\n"
     "def get_sweep():\n  return product({'model.position': []})\n",
     "get_sweep() returned no trials (an empty grid: is one axis an empty list?)"),
    ("BASE_CONFIG = 'configs/tiny.py'\nfrom research.sweeps import zip_\n\n"
     "def get_sweep():\n  return zip_(seed=[1], **{'model.position': ['rope', 'alibi']})\n",
     "get_sweep() fails: line 5: ValueError: zip_ needs equally long lists"),
    ("BASE_CONFIG = 'configs/tiny.py'\n\ndef get_sweep():\n  return {'model.position': ['rope']}\n",
     "get_sweep() must return a list of {field: value} override dicts, got {'model.position': ['rope']}"),
])
def test_a_sweep_file_that_does_not_load_or_has_no_trials_fails_in_one_line(tmp_path, source, message):
  path = tmp_path / "s.py"
  path.write_text(source)
  with pytest.raises(configuration.ConfigError, match=re.escape(message)) as error:
    sweeps.load_sweep(path)
  assert str(path) in str(error.value)
  if "SyntaxError" in message or "empty grid" in message:  # and the command line's one line
    line = _one_error_line(cli("experiments.sweep", f"--sweep={path}", f"--workdir={tmp_path / 'out'}"))
    assert str(path) in line and line.endswith(message) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("module,args", [
    ("experiments.sweep", ["--sweep=configs/sweeps/positions.py"]),
    ("experiments.sweep", ["--sweep=configs/sweeps/positions.py", "--dry_run"]),
    ("experiments.quickstart", []),
])
def test_a_workdir_that_is_a_file_fails_in_one_line(tmp_path, module, args):
  workdir = tmp_path / "somefile"
  workdir.write_text("not a directory")
  line = _one_error_line(cli(module, *args, f"--workdir={workdir}"))
  assert line == f"error: workdir {str(workdir)!r} exists and is not a directory"  # research-train's words
  assert workdir.read_text() == "not a directory"


def _dry_run(path, out, *flags):
  result = cli("experiments.sweep", f"--sweep={path}", f"--workdir={out}", "--dry_run", *flags)
  assert result.returncode == 0, result.stderr
  return result.stdout.strip().splitlines()


def test_dry_run_lists_the_trials_and_their_commands_and_runs_nothing(tmp_path):
  trials = [{"model.position": p, "train.steps": 5} for p in ("rope", "alibi", "t5")]
  path = write_sweep(tmp_path / "s.py", trials, evaluate={"lengths": [1, 4], "mode": "sliding"})
  out = tmp_path / "out dir"  # a space: the printed commands must survive copy-paste into a shell
  lines = _dry_run(path, out)
  assert lines[-1] == "3 trials, each evaluated after training" and len(lines) == 7
  for trial, train, evaluate in zip(trials, lines[0:6:2], lines[1:6:2]):
    name = sweeps.trial_name(trial)
    assert train.startswith(f"{name}: ") and evaluate.startswith("  then: ")
    args = shlex.split(train[len(name) + 2:])
    assert args[0].endswith("research-train") and os.access(args[0], os.X_OK)  # the console script
    assert args[1:] == [f"--config={ROOT / 'configs' / 'tiny.py'}", f"--workdir={out}/{name}",
                        f"--config.model.position={trial['model.position']}", "--config.train.steps=5"]
    args = shlex.split(evaluate[len("  then: "):])
    assert args[0].endswith("research-evaluate") and os.access(args[0], os.X_OK)
    assert args[1:] == [f"--workdir={out}/{name}", "--lengths=1,4", "--mode=sliding"]
  assert not out.exists()

  lines = _dry_run(path, out, "--noevaluate")
  assert lines[-1] == "3 trials, no evaluation" and len(lines) == 4
  assert not any("research-evaluate" in line for line in lines)


def test_evaluate_flag_turns_evaluation_on_for_a_sweep_without_it(tmp_path):
  path = write_sweep(tmp_path / "s.py", [{"model.position": "rope"}, {"model.position": "alibi"}], evaluate=None)
  lines = _dry_run(path, tmp_path / "out")
  assert lines[-1] == "2 trials, no evaluation" and not any("research-evaluate" in line for line in lines)
  lines = _dry_run(path, tmp_path / "out", "--evaluate")
  assert lines[-1] == "2 trials, each evaluated after training"
  evaluates = [line for line in lines if line.startswith("  then: ")]
  assert len(evaluates) == 2 and all(line.endswith("research-evaluate --workdir=" + str(tmp_path / "out") +
                                                   f"/position={p} --lengths=1,2,4,8,16")
                                     for line, p in zip(evaluates, ("rope", "alibi")))


def test_jobs_run_trials_concurrently_and_queued_ones_stay_pending(tmp_path, monkeypatch):
  """Two workers for three trials: two run at once, the third is 'pending' (not 'running') until one ends; a
  rerun skips all three with one line each. run_trial is replaced: this tests the scheduling, not training."""
  path = write_sweep(tmp_path / "s.py", [{"model.position": p} for p in ("rope", "alibi", "t5")])
  sweep = sweeps.load_sweep(path)
  out = tmp_path / "out"
  lock, both_started = threading.Lock(), threading.Event()
  running, seen = [], {}

  def fake_run_trial(sweep_, trial, directory, train=True, processes=None):
    with lock:
      running.append(trial.name)
      seen[trial.name] = (len(running), json.loads((directory / "sweep.json").read_text()))
      if len(running) == 2:
        both_started.set()
    try:
      if len(seen) <= 2:  # the first two wait for each other: proof that they overlap
        assert both_started.wait(timeout=30), "the second worker never started"
      (directory / trial.name).mkdir()
      (directory / trial.name / "summary.json").write_text(json.dumps({"valid_ppl": 10.0 + len(seen)}))
      return {"status": "finished", "error": None, "wall_s": 0.0}
    finally:
      with lock:
        running.remove(trial.name)

  monkeypatch.setattr(sweeps, "run_trial", fake_run_trial)
  logs = []
  status = sweeps.run_sweep(sweep, out, jobs=2, log=logs.append)
  assert {r["status"] for r in status.values()} == {"finished"}
  names = [t.name for t in sweep.trials]
  concurrent, index = seen[names[1]]
  assert concurrent == 2  # rope and alibi ran at the same time
  assert _statuses_from(index) == {names[0]: "running", names[1]: "running", names[2]: "pending"}
  assert _statuses(out) == dict.fromkeys(names, "finished")
  assert len(logs) == 3 and all(re.fullmatch(r"\[\d/3\] position=\w+: finished valid_ppl=1\d\.00 \(0 s\)", line)
                                for line in logs), logs

  monkeypatch.setattr(sweeps, "run_trial", lambda *a, **k: pytest.fail("a finished trial was run again"))
  logs = []
  sweeps.run_sweep(sweep, out, jobs=2, log=logs.append)
  assert logs == [f"[{k}/3] {name}: finished (skipped)" for k, name in enumerate(names, 1)]


def _tpu_sweep(tmp_path):
  return write_sweep(tmp_path / "s.py", [{"model.position": "rope", **FAST}, {"model.position": "alibi", **FAST}],
                     evaluate={"lengths": [1, 4]})


def test_tpu_commands_train_on_every_host_and_evaluate_on_worker_0(tmp_path):
  path = _tpu_sweep(tmp_path)
  result = cli("experiments.sweep", f"--sweep={path}", "--workdir=/mnt/shared/runs", "--print_commands",
               "--tpu=my-v4-32", "--zone=us-central2-b", "--repo_dir=/opt/research")
  assert result.returncode == 0 and result.stderr == "", result.stderr  # an absolute workdir, a shipped config
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 2
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32", "--zone=us-central2-b"]
  for line, scheme in zip(lines, ["rope", "alibi"]):
    words = shlex.split(line)  # exactly what the local shell will run
    assert words.count("&&") == 1, line  # train, and only if it succeeded, evaluate
    train, evaluate = words[:words.index("&&")], words[words.index("&&") + 1:]
    assert train[:-1] == ssh + ["--worker=all"] and evaluate[:-1] == ssh + ["--worker=0"]
    remote_train, remote_eval = train[-1].removeprefix("--command="), evaluate[-1].removeprefix("--command=")
    workdir = f"/mnt/shared/runs/{sweeps.trial_name({'model.position': scheme, **FAST})}"
    assert remote_train.startswith("cd /opt/research && research-train --config=configs/tiny.py ")
    assert f"--config.model.position={scheme}" in remote_train and f"--workdir={workdir}" in remote_train
    assert "research-evaluate" not in remote_train
    assert remote_eval == (f"cd /opt/research && JAX_PLATFORMS=cpu research-evaluate "
                           f"--workdir={workdir} --lengths=1,4")


def test_tpu_notes_name_a_relative_workdir_and_a_base_config_outside_the_repository(tmp_path):
  sweep = sweeps.load_sweep(_tpu_sweep(tmp_path))  # BASE_CONFIG configs/tiny.py: in the repository
  assert sweeps.tpu_notes(sweep, "/mnt/shared/runs") == []
  relative = sweeps.tpu_notes(sweep, "runs/tpu")
  assert len(relative) == 1 and relative[0].startswith("note: --workdir='runs/tpu' is relative: each worker "), relative
  base = tmp_path / "mybase.py"
  base.write_text((ROOT / "configs" / "tiny.py").read_text())
  outside = sweeps.load_sweep(write_sweep(tmp_path / "o.py", [{"seed": 0}], base=str(base)))
  assert sweeps.tpu_notes(outside, "/mnt/shared/runs") == [
      f"note: BASE_CONFIG {str(base)!r} is outside this repository: each worker needs the file at that path (put it "
      f"in the repository's clones, or on the shared filesystem)"]


def test_tpu_commands_default_repo_dir_and_refuse_urls(tmp_path):
  sweep = sweeps.load_sweep(_tpu_sweep(tmp_path))
  lines = sweeps.tpu_commands(sweep, "/mnt/shared/runs/", "tpu", "zone")
  # `~` reaches the worker's shell unquoted, so that it expands there
  for line in lines:
    remotes = [w.removeprefix("--command=") for w in shlex.split(line) if w.startswith("--command=")]
    assert len(remotes) == 2 and all(r.startswith("cd ~/research && ") for r in remotes), remotes
  assert "/mnt/shared/runs/position=rope," in lines[0] and "runs//" not in lines[0]
  result = cli("experiments.sweep", f"--sweep={tmp_path / 's.py'}", "--workdir=gs://bucket/runs",
               "--print_commands", "--tpu=t", "--zone=z")
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1 and "'gs://bucket/runs' is a URL" in lines[0], result.stderr
  assert "gcsfuse" in lines[0] and result.stdout == ""


@pytest.mark.parametrize("repo_dir, expected", [
    ("~/my repo/it's $HOME", "{home}/my repo/it's $HOME"), ("~", "{home}"),
    ("/opt/a b/`x` $y;z", "/opt/a b/`x` $y;z"), ("/opt/research", "/opt/research")])
def test_tpu_commands_repo_dir_reaches_the_workers_shell_as_one_path(tmp_path, repo_dir, expected):
  """A repo_dir with a space (or a quote, a `$`) used to be pasted unquoted: `cd ~/my repo && ...` on the worker."""
  sweep = sweeps.load_sweep(_tpu_sweep(tmp_path))
  home = tmp_path / "home"
  for line in sweeps.tpu_commands(sweep, "/mnt/shared/runs", "tpu", "zone", repo_dir=repo_dir):
    remotes = [w.removeprefix("--command=") for w in shlex.split(line) if w.startswith("--command=")]
    assert len(remotes) == 2
    for remote in remotes:  # the worker's shell, its cd and commands replaced by ones that print their arguments
      out = subprocess.run(["bash", "-c", "cd() { printf '<%s>\\n' \"$@\"; }; research-train() { :; }; "
                            "research-evaluate() { :; }; " + remote], capture_output=True, text=True,
                           env={**os.environ, "HOME": str(home)})
      assert out.returncode == 0 and out.stdout == f"<{expected.format(home=home)}>\n", (remote, out)


def _statuses_from(index):
  return {t["name"]: t["status"] for t in index["trials"]}


def _statuses(directory):
  return _statuses_from(json.loads((directory / "sweep.json").read_text()))


def _step_dirs(workdir):
  ckpt = workdir / "checkpoints"
  return sorted(int(p.name) for p in ckpt.iterdir() if re.fullmatch(r"\d+", p.name)) if ckpt.is_dir() else []


def _lines_up_to(workdir, step):
  return [line for line in (workdir / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]


@pytest.mark.slow
def test_killed_sweep_resumes_the_interrupted_trial_and_records_failures(tmp_path):
  # The failing trial comes first, so the first run shows that a failure does not stop the trials after it.
  trials = [{"model.position": "none", "data.tokenizer": "byte", "data.vocab_size": 100, **FAST},  # fails
            {"model.position": "learned", **FAST},
            # longer, so that it is caught between its first checkpoint and its summary
            {"model.position": "alibi", **FAST, "train.steps": 60}]
  path = write_sweep(tmp_path / "s.py", trials, evaluate={"lengths": [1, 2]})
  out = tmp_path / "out"
  names = [sweeps.trial_name(t) for t in trials]
  failed, finished, killed = (out / name for name in names)
  proc = subprocess.Popen([sys.executable, "-m", "experiments.sweep", f"--sweep={path}", f"--workdir={out}"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not (_step_dirs(killed)
                                                                and not (killed / "summary.json").exists()):
    time.sleep(0.02)
  os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the trial it was running
  stdout, stderr = proc.communicate()
  assert proc.returncode == -signal.SIGKILL, (stdout, stderr[-2000:])
  assert not (killed / "summary.json").exists(), "the trial finished before it could be killed"
  checkpointed = _step_dirs(killed)[-1]
  assert 0 < checkpointed < 60
  assert _statuses(out) == {names[0]: "failed", names[1]: "finished", names[2]: "running"}
  before = _lines_up_to(killed, checkpointed)
  assert any(json.loads(line)["split"] == "train" for line in before)
  finished_mtimes = [(finished / f).stat().st_mtime_ns for f in ("summary.json", "eval/extrapolation.json")]

  result = cli("experiments.sweep", f"--sweep={path}", f"--workdir={out}", timeout=600)
  assert result.returncode == 1, result.stderr[-2000:]  # one trial failed
  progress = [line for line in result.stdout.splitlines() if line.startswith("[")]
  assert progress[0] == f"[1/3] {names[1]}: finished (skipped)" and len(progress) == 3, result.stdout
  assert progress[1].startswith(f"[2/3] {names[0]}: failed error: ") and progress[2].startswith(f"[3/3] {names[2]}: "
                                                                                                  "finished")
  assert [(finished / f).stat().st_mtime_ns for f in ("summary.json", "eval/extrapolation.json")] == finished_mtimes
  # Resumed, not restarted: the logged lines up to the checkpoint (train lines carry their wall-clock tokens/s) are
  # kept byte for byte, and the steps after it were logged again up to the end.
  assert _lines_up_to(killed, checkpointed) == before
  steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(steps) and steps[-1] == 60
  assert json.loads((killed / "summary.json").read_text())["step"] == 60
  assert _statuses(out) == {names[0]: "failed", names[1]: "finished", names[2]: "finished"}
  index = json.loads((out / "sweep.json").read_text())
  error = index["trials"][0]["error"]
  assert "vocab_size=100 is too small" in error and "minimum is 261" in error
  assert "minimum is 261" in (failed / "error.log").read_text()
  assert (killed / "eval" / "extrapolation.json").exists()

  # The report of this real sweep: n/a beyond the learned table, numbers for ALiBi, the failure listed.
  report = build_report(out)
  rows = {line.split("|")[1].strip(): line for line in report.table.splitlines() if line.startswith("| position=")}
  learned = [c.strip() for c in rows[next(k for k in rows if "learned" in k)].split("|")[2:-1]]
  alibi = [c.strip() for c in rows[next(k for k in rows if "alibi" in k)].split("|")[2:-1]]
  assert "n/a" in learned[-1] and "n/a" not in "".join(alibi)
  summary = json.loads((killed / "summary.json").read_text())
  assert f"{summary['valid_ppl']:.2f}" in "".join(alibi)
  markdown = report.markdown_path.read_text()
  assert "minimum is 261" in markdown and (out / "ppl_vs_length.png").exists() and (out / "table.tex").exists()


@pytest.mark.slow
def test_quickstart_entry_prints_the_report_and_fails_when_a_trial_failed(tmp_path):
  trials = [{"model.position": p, **FAST} for p in ("rope", "alibi")]
  path = write_sweep(tmp_path / "tiny.py", trials, evaluate={"lengths": [1, 2]})
  out = tmp_path / "qs"
  result = cli("experiments.quickstart", f"--sweep={path}", f"--workdir={out}", timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith(f"quickstart: 2 trials of {ROOT / 'configs' / 'tiny.py'} on wikipedia-sample -> {out}\n")
  assert "| group | n | valid ppl | 1× (32) | 2× (64) |" in result.stdout
  assert sum(line.startswith("| position=") for line in result.stdout.splitlines()) == 2
  assert f"report: {out / 'report.md'}" in result.stdout and (out / "report.md").is_file()
  plots = [line[len("plot: "):] for line in result.stdout.splitlines() if line.startswith("plot: ")]
  assert {Path(p).name for p in plots} == {"ppl_vs_length.png", "curves.png"} and all(Path(p).is_file() for p in plots)

  # One more trial that fails: the finished ones are skipped, the table of them is still printed, the exit is 1.
  trials.append({"model.position": "none", "data.tokenizer": "byte", "data.vocab_size": 100, **FAST})
  write_sweep(path, trials, evaluate={"lengths": [1, 2]})
  result = cli("experiments.quickstart", f"--sweep={path}", f"--workdir={out}", timeout=600)
  assert result.returncode == 1
  assert result.stdout.count(": finished (skipped)") == 2 and "| group | n | valid ppl |" in result.stdout
  assert f"report: {out / 'report.md'}" in result.stdout
  assert result.stderr.strip().splitlines()[-1].startswith("error: 1 of 3 trials failed (position=none,")
  assert "minimum is 261" in (out / "report.md").read_text()



def _write_indexes(directory: str, label: str) -> None:
  trials = [sweeps.Trial(name=f"t{i}", overrides={"train.seed": i}) for i in range(3)]
  sweep = sweeps.Sweep(f"writer_{label}", "configs/tiny.py", trials, None)
  for _ in range(300):
    sweeps.write_index(Path(directory), sweep, {t.name: {"status": "pending", "error": None} for t in trials})


# The forked writers call no JAX (json and the filesystem only), so JAX's warning about fork does not apply; a child
# that hung anyway would fail the exit-code check after the join's timeout rather than hang the suite.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_two_sweeps_in_one_directory_do_not_break_each_others_index(tmp_path):
  # Two research-sweep processes over one workdir (e.g. one seed each, pinned to one core each) rewrite sweep.json
  # side by side; with one shared temporary name one process's rename finds the other's file gone and dies.
  # Forked writers (no second import of the library); they touch only json and the filesystem.
  import multiprocessing
  context = multiprocessing.get_context("fork")
  procs = [context.Process(target=_write_indexes, args=(str(tmp_path), label)) for label in "ab"]
  for p in procs:
    p.start()
  for p in procs:
    p.join(timeout=120)
  codes = [p.exitcode for p in procs]  # None: still running after the timeout
  for p in procs:
    if p.is_alive():
      p.kill()
  assert codes == [0, 0]
  index = json.loads((tmp_path / sweeps.SWEEP_FILE).read_text())  # the last complete write of one of them
  assert index["sweep"] in ("writer_a", "writer_b") and len(index["trials"]) == 3
  assert [p.name for p in tmp_path.iterdir()] == [sweeps.SWEEP_FILE]  # no temporary left behind


TINY = {"train.steps": 4, "train.eval_every": 4, "train.checkpoint_every": 4, "train.log_every": 2,
        "data.seq_len": 32, "train.eval_batches": 1}


def _sweep_cli(path, out, *flags):
  return cli("experiments.sweep", f"--sweep={path}", f"--workdir={out}", *flags, timeout=600)


def test_a_rerun_evaluates_new_lengths_again_and_refuses_a_trial_of_another_config(tmp_path):
  trials = [{"seed": 0, **TINY}]
  name = sweeps.trial_name(trials[0])
  path = write_sweep(tmp_path / "s.py", trials, evaluate={"lengths": [1]})
  out = tmp_path / "out"
  run = out / name
  result = _sweep_cli(path, out)
  assert result.returncode == 0, result.stderr[-2000:]
  assert _dry_run(path, out)[0] == f"{name}: finished (would be skipped)"
  trained = {f: (run / f).stat().st_mtime_ns for f in ("summary.json", "config.json", "metrics.jsonl")}

  # EVALUATE asks for one more length: only the evaluation runs again; the previous file is kept.
  write_sweep(path, trials, evaluate={"lengths": [1, 2]})
  lines = _dry_run(path, out)
  assert lines[0].startswith(f"{name}: finished; evaluated again (eval/extrapolation.json lacks length 2x), not "
                             f"trained: ") and "--lengths=1,2" in lines[0]
  result = _sweep_cli(path, out)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"[1/1] {name}: finished (evaluated again, not trained: eval/extrapolation.json lacks length 2x)" \
      in result.stdout, result.stdout
  report = json.loads((run / "eval" / "extrapolation.json").read_text())
  assert [r["multiple"] for r in report["results"]] == [1, 2]
  assert {f: (run / f).stat().st_mtime_ns for f in trained} == trained  # not trained again
  previous = list((run / "eval" / "previous").glob("*/extrapolation.json"))
  assert len(previous) == 1 and [r["multiple"] for r in json.loads(previous[0].read_text())["results"]] == [1]
  assert f"[1/1] {name}: finished (skipped)" in _sweep_cli(path, out).stdout  # now up to date
  # Other options than the file records (sliding windows) are evaluated again too.
  write_sweep(path, trials, evaluate={"lengths": [1, 2], "mode": "sliding"})
  assert "was made with mode='nonoverlapping' (now 'sliding')" in _dry_run(path, out)[0]

  # BASE_CONFIG now another model: refused up front, dry run included, nothing touched.
  base = tmp_path / "smaller.py"
  base.write_text(f"import importlib.util\nspec = importlib.util.spec_from_file_location('tiny', "
                  f"{str(ROOT / 'configs' / 'tiny.py')!r})\ntiny = importlib.util.module_from_spec(spec)\n"
                  f"spec.loader.exec_module(tiny)\n\ndef get_config():\n  c = tiny.get_config()\n"
                  f"  c.model.d_model = 32\n  c.train.learning_rate = 1e-3\n  return c\n")
  write_sweep(path, trials, evaluate={"lengths": [1, 2]}, base=str(base))
  index = (out / "sweep.json").read_text()
  for flags in ((), ("--dry_run",)):
    line = _one_error_line(_sweep_cli(path, out, *flags))
    assert f"trial {name!r}" in line and "model.d_model" in line and "train.learning_rate" in line, line
    assert "new workdir" in line and "finished" not in line
  assert (out / "sweep.json").read_text() == index
  assert {f: (run / f).stat().st_mtime_ns for f in trained} == trained
  assert json.loads((run / "config.json").read_text())["model"]["d_model"] == 64


def _one_trial_directory(tmp_path):
  """(sweep file, sweep, its trial's directory, created empty): a sweep of one TINY trial into tmp_path/out."""
  path = write_sweep(tmp_path / "s.py", [{"seed": 0, **TINY}])
  sweep = sweeps.load_sweep(path)
  run = tmp_path / "out" / sweep.trials[0].name
  run.mkdir(parents=True)
  return path, sweep, run


def test_a_trial_directory_without_a_saved_run_is_no_conflict(tmp_path):
  _, sweep, run = _one_trial_directory(tmp_path)
  other = configuration.apply_overrides(sweeps.trial_config(sweep, sweep.trials[0]), {"model.d_model": 32})
  (run / "config.json").write_text(json.dumps(other.to_dict()))
  sweeps.check_trial_directories(sweep, tmp_path / "out")  # a start that saved no checkpoint: replaced
  (run / "summary.json").write_text("{}")
  with pytest.raises(configuration.ConfigError, match=r"model\.d_model"):
    sweeps.check_trial_directories(sweep, tmp_path / "out")
  (run / "config.json").write_text(json.dumps(sweeps.trial_config(sweep, sweep.trials[0]).to_dict()))
  sweeps.check_trial_directories(sweep, tmp_path / "out")  # its own config


def test_a_sweep_that_would_drop_another_sweeps_trained_trials_from_sweep_json_is_refused(tmp_path):
  """A rerun with another --set (or sweep file, or reordered axes) names every trial anew: it was accepted, rewrote
  sweep.json without the earlier trials, and research-report left their results out with no word. Refused now when
  a dropped trial holds a run; one that never saved a checkpoint may drop out, and a superset of the trials runs."""
  path, sweep, run = _one_trial_directory(tmp_path)
  out = tmp_path / "out"
  sweeps.write_index(out, sweep, {t.name: {"status": "finished", "error": None} for t in sweep.trials})
  other = sweeps.Sweep("other", sweep.base_config, [
      sweeps.Trial(name=sweeps.trial_name(o), overrides=o) for o in ({"seed": 0, **TINY, "model.dtype": "bfloat16"},
                                                                    {"seed": 1, **TINY, "model.dtype": "bfloat16"})],
                       None)
  sweeps.check_dropped_trials(other, out)  # the dropped trial holds no run: nothing is lost
  (run / "summary.json").write_text("{}")
  with pytest.raises(configuration.ConfigError) as err:
    sweeps.check_dropped_trials(other, out)
  assert str(err.value).startswith(f"--workdir={str(out)!r} holds trials of another sweep (its sweep.json) that this "
                                   f"one lacks, with their runs: {sweep.trials[0].name!r};")
  wider = sweeps.Sweep("wider", sweep.base_config, [*sweep.trials, *other.trials], None)
  sweeps.check_dropped_trials(wider, out)  # every listed trial is still one of this sweep's
  write_sweep(path, [{"seed": 0, **TINY, "model.dtype": "bfloat16"}])
  index = (out / "sweep.json").read_text()
  line = _one_error_line(_sweep_cli(path, out, "--dry_run"))
  assert "holds trials of another sweep" in line and "new --workdir" in line
  assert (out / "sweep.json").read_text() == index


def test_a_trial_written_before_fields_were_added_is_no_conflict_and_keeps_its_name(tmp_path):
  _, sweep, run = _one_trial_directory(tmp_path)
  saved = sweeps.trial_config(sweep, sweep.trials[0]).to_dict()
  del saved["train"]["count_updates"], saved["train"]["position"]  # an old version's trial: it had neither field
  (run / "config.json").write_text(json.dumps(saved))
  (run / "summary.json").write_text("{}")
  sweeps.check_trial_directories(sweep, tmp_path / "out")  # was refused: "train.count_updates: False (saved) != ..."
  saved["model"]["d_model"] = 32  # another model is still refused
  (run / "config.json").write_text(json.dumps(saved))
  with pytest.raises(configuration.ConfigError, match=r"model\.d_model") as err:
    sweeps.check_trial_directories(sweep, tmp_path / "out")
  assert "count_updates" not in str(err.value) and "position" not in str(err.value)


def _alive(pid: int) -> bool:
  try:
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
  except OSError:
    return False
  return state not in ("Z", "X")  # a zombie nobody reaped has ended


def _trainer_in(workdir: Path) -> int | None:
  """The pid of the research-train whose --workdir is `workdir` (a /proc scan: RUN/.lock is written only once the
  trainer has set up)."""
  for entry in Path("/proc").iterdir():
    try:
      args = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
    except OSError:
      continue
    if f"--workdir={workdir}".encode() in args and any(a.endswith(b"research-train") for a in args):
      return int(entry.name)
  return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_sweep_takes_its_trainer_with_it(tmp_path):
  trials = [{"seed": 0, **TINY, "train.steps": 100000, "train.eval_every": 100000, "train.checkpoint_every": 100000}]
  path = write_sweep(tmp_path / "s.py", trials)
  lock = tmp_path / "out" / sweeps.trial_name(trials[0]) / ".lock"
  proc = subprocess.Popen([sys.executable, "-m", "experiments.sweep", f"--sweep={path}", f"--workdir={tmp_path / 'out'}"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
  pid = None
  try:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and pid is None:
      match = re.match(r"pid (\d+) on ", lock.read_text()) if lock.exists() else None
      pid = int(match.group(1)) if match else _trainer_in(lock.parent)
      time.sleep(0.05)
    assert pid is not None and _alive(pid), "the trainer never started"
    os.kill(proc.pid, signal.SIGKILL)  # the sweep alone, not its process group
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(pid):
      time.sleep(0.05)
    assert not _alive(pid), "the trainer outlived the sweep"
  finally:
    if proc.poll() is None:
      proc.kill()
    if pid is not None and _alive(pid):
      os.kill(pid, signal.SIGKILL)


def test_the_sweep_parent_starts_no_jax_client_to_compare_per_backend_fields(tmp_path):
  # A finished trial saved with model.attention=einsum, the sweep now asking for the default "auto". Which run that
  # is depends on the backend the trials train on; the parent learns it from a child process, so no JAX client (on a
  # GPU, memory the trials need) starts in the parent. On CPU auto is einsum: the same run. "xla" is another one.
  path, sweep, run = _one_trial_directory(tmp_path)
  saved = sweeps.trial_config(sweep, sweep.trials[0]).to_dict()
  assert saved["model"]["attention"] == "auto"
  (run / "summary.json").write_text("{}")
  for attention in ("einsum", "xla"):
    (tmp_path / f"{attention}.json").write_text(
        json.dumps({**saved, "model": {**saved["model"], "attention": attention}}))
  # One process for both saved configs (the backend is asked of a child once, `trial_backend`'s cache).
  script = ("import shutil\nfrom research import sweeps\nfrom research.train import configuration\n"
            "from jax._src import xla_bridge\n"
            f"sweep = sweeps.load_sweep({str(path)!r})\n"
            "for attention in ('einsum', 'xla'):\n"
            f"  shutil.copy({str(tmp_path)!r} + f'/{{attention}}.json', {str(run / 'config.json')!r})\n"
            "  try:\n"
            f"    sweeps.check_trial_directories(sweep, {str(tmp_path / 'out')!r})\n"
            "    print(attention, 'accepted')\n"
            "  except configuration.ConfigError as e:\n"
            "    print(attention, 'refused', e)\n"
            "print('clients', len(xla_bridge._backends))\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == "einsum accepted" and lines[2] == "clients 0", result.stdout
  assert lines[1].startswith("xla refused") and "model.attention" in lines[1], result.stdout


def test_an_evaluation_that_records_another_checkpoint_choice_is_outdated(tmp_path):
  """EVALUATE's checkpoint against the one an evaluation file records (research-evaluate's writer); a file written
  before the choice was recorded is not compared on it."""
  from research.evaluate import extrapolation
  trial_dir = tmp_path / "t"
  (trial_dir / "eval").mkdir(parents=True)
  results = [extrapolation.result_record(m, m * 64, 30.0 * m, 4096) for m in (1, 2)]
  for recorded, evaluate, outdated in (("best", {"lengths": [1, 2]}, False),
                                       ("best", {"lengths": [1, 2], "checkpoint": "last"}, True),
                                       ("last", {"lengths": [1, 2], "checkpoint": "last"}, False),
                                       (None, {"lengths": [1, 2], "checkpoint": "last"}, False)):
    extrapolation.write_report(trial_dir, extrapolation.report_record(
        train_len=64, mode="nonoverlapping", stride=None, split="valid", checkpoint_step=40, rope_scaling=None,
        rope_factor=None, results=results, checkpoint=recorded))
    sweep = sweeps.load_sweep(write_sweep(tmp_path / "s.py", [{"seed": 0, **TINY}], evaluate=evaluate))
    why = sweeps.evaluation_outdated(sweep, trial_dir)
    assert (why is not None) == outdated, (recorded, evaluate, why)
    if outdated:
      assert f"checkpoint={recorded!r} (now 'last')" in why


def _write_trained_and_evaluated(run, *, step, valid_loss, checkpoint_step):
  """summary.json of a run trained to `step` and its eval/extrapolation.json of `checkpoint_step` (--checkpoint=best,
  1× only), through the trainer's and the evaluator's own writers."""
  import math
  from research.evaluate import extrapolation
  from research.train import loop
  valid = {"loss": valid_loss, "ppl": math.exp(valid_loss), "accuracy": 0.3}
  loop.write_summary(run, loop.summary_record(step=step, train_loss=3.0, valid=valid, tokens_seen=4096.0,
                                              num_params=1000, num_embedding_params=100, vocab_size=512,
                                              wall_s=1.0))
  extrapolation.write_report(run, extrapolation.report_record(
      train_len=32, mode="nonoverlapping", stride=None, split="valid", checkpoint_step=checkpoint_step,
      rope_scaling=None, rope_factor=None, results=[extrapolation.result_record(1, 32, 20.0, 100)],
      checkpoint="best"))


def test_a_trained_trial_is_evaluated_for_a_new_eval_file_and_trained_on_when_steps_grow(tmp_path):
  """A finished trial whose evaluation lacks a file EVALUATE now writes (by_position) is evaluated, not trained
  again (research-train would rewrite its summary); one whose train.steps the sweep raised trains on."""
  from research.evaluate import extrapolation
  path = write_sweep(tmp_path / "s.py", [{"seed": 0, **TINY}], evaluate={"lengths": [1]})
  sweep = sweeps.load_sweep(path)
  trial = sweep.trials[0]
  run = tmp_path / "out" / trial.name
  run.mkdir(parents=True)
  _write_trained_and_evaluated(run, step=4, valid_loss=3.0, checkpoint_step=4)
  assert sweeps.trial_steps(sweep) == {trial.name: 4}
  assert sweeps.trial_plan(sweep, run, 4) == ("skip", None)
  assert sweeps.trial_plan(sweep, run, 8) == ("run", "trained to step 4, train.steps is now 8")
  by_position = sweeps.load_sweep(write_sweep(tmp_path / "s2.py", [{"seed": 0, **TINY}],
                                              evaluate={"lengths": [1], "by_position": True}))
  assert sweeps.trial_plan(by_position, run, 4) == ("evaluate", "eval/loss_by_position.json is missing")
  (run / "eval" / "extrapolation.json").unlink()  # trained, never evaluated (killed in between): evaluate only
  assert sweeps.trial_plan(sweep, run, 4) == ("evaluate", "eval/extrapolation.json is missing")


@pytest.mark.parametrize("final_loss,outdated", [(2.5, True), (3.5, False)])
def test_an_evaluation_of_a_checkpoint_the_run_trained_past_is_evaluated_again(tmp_path, final_loss, outdated):
  """A sweep killed while evaluating a trial that had trained on (4 → 8 steps) leaves the old evaluation of step 4
  beside the new summary: the rerun evaluates it again exactly when research-report would call it stale (step 8's
  checkpoint has the lower validation loss, so --checkpoint=best no longer selects step 4)."""
  import math
  from research.report.runs import ReportError, load_run
  from research.train import loop
  sweep = sweeps.load_sweep(write_sweep(tmp_path / "s.py", [{"seed": 0, **TINY}], evaluate={"lengths": [1]}))
  run = tmp_path / "out" / sweep.trials[0].name
  run.mkdir(parents=True)
  log = loop.MetricsLog(run, resume_step=0)
  for step, loss in ((4, 3.0), (8, final_loss)):
    log.write(loop.valid_record(step, {"loss": loss, "ppl": math.exp(loss), "accuracy": 0.3}, 1e-3))
  log.close()
  _write_trained_and_evaluated(run, step=8, valid_loss=final_loss, checkpoint_step=4)
  (run / "eval" / "embedding_quality.json").write_text('{"benchmarks": {"analogy": {"accuracy": "n/a"}}}')
  with pytest.raises(ReportError, match=r"'benchmarks.analogy.accuracy' must be a number"):
    load_run(run)  # a damaged file the evaluation does not write: research-report names it ...
  assert sweeps.trial_plan(sweep, run, 8) == ("skip", None)  # ... and evaluating again would not mend it
  (run / "eval" / "embedding_quality.json").unlink()
  plan, why = sweeps.trial_plan(sweep, run, 8)
  assert (plan == "evaluate") == outdated and bool(load_run(run).stale) == outdated, why
  if outdated:
    assert why.startswith("eval/extrapolation.json scored the checkpoint of step 4") and "stale" not in why


def test_overrides_of_the_wrong_type_fail_in_one_line_before_any_trial(tmp_path):
  """What ml_collections refuses to assign (a string for a number, a float for an integer, None), and a bool for a
  number, which it would take: one line naming the field, the value and what it takes."""
  for trials, message in (([{1: 2}], "override key 1 is not a field name"),([{"train.learning_rate": "1e-3"}], "train.learning_rate='1e-3': expected a number"),
                          ([{"model.tie_embeddings": "true"}], "model.tie_embeddings='true': expected true or false"),
                          ([{"seed": 1.0}], "seed=1.0: expected an integer"),
                          ([{"seed": True}], "seed=True: expected an integer"),
                          ([{"train.learning_rate": None}], "train.learning_rate=None: expected a number")):
    path = write_sweep(tmp_path / "bad.py", trials)
    result = cli("experiments.sweep", f"--sweep={path}", f"--workdir={tmp_path / 'out'}", "--dry_run")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
  # An integer for a float field is the float (the same config, so the same trial as 1.0 would be).
  config = configuration.apply_overrides(configuration.reference_config(), {"train.learning_rate": 1})
  assert isinstance(config.train.learning_rate, float)


def test_trials_that_train_the_same_model_are_named_in_a_warning(tmp_path):
  # Arms that differ only in when or where a run works (here model.remat, train.log_every) are one model twice:
  # said before anything runs, not refused (a remat sweep measures memory). Another step count is another model.
  trials = [{"seed": s, "model.remat": r} for s in (0, 1) for r in ("none", "block")]
  trials += [{"seed": 2, "train.log_every": 3}, {"seed": 2, "train.log_every": 5, "mesh.data": 1},
             {"seed": 3, "train.steps": 7}, {"seed": 3, "train.steps": 8},
             {"seed": 4, "model.char_dim": 8}, {"seed": 4, "model.char_dim": 12},  # no CNN: unused
             {"seed": 5, "model.char_dim": 8, "model.char_embeddings": "sum"},
             {"seed": 5, "model.char_dim": 12, "model.char_embeddings": "sum"}]
  sweep = sweeps.load_sweep(write_sweep(tmp_path / "same.py", trials))
  assert len(sweep.notes) == 4, sweep.notes
  assert "'seed=4,char_dim=8', 'seed=4,char_dim=12' train the same model" in sweep.notes[3]
  assert "'seed=0,remat=none', 'seed=0,remat=block' train the same model" in sweep.notes[0]
  assert "differ only in model.remat " in sweep.notes[0] and "seed=1" in sweep.notes[1]
  assert "differ only in mesh.data, train.log_every " in sweep.notes[2]
  assert not any("steps" in note for note in sweep.notes)
  assert not sweeps.load_sweep(write_sweep(tmp_path / "other.py", [{"seed": 0}, {"seed": 1}])).notes
  result = cli("experiments.sweep", f"--sweep={tmp_path / 'same.py'}", f"--workdir={tmp_path / 'out'}", "--dry_run")
  assert result.returncode == 0 and result.stderr.count("warning: trials ") == 4, result.stderr


def test_fields_a_run_does_not_read_make_no_other_model(tmp_path):
  """A causal LM never reads the MLM rates, and a byte or char tokenizer ignores data.vocab_size (the same ids for
  any size it accepts): trials differing only there are one model (the sweep's warning, research-train's resume
  rule and research-report's duplicates all read run_fields.unused_fields). An MLM's rates and a BPE's size count."""
  from research import run_fields
  from research.data import tokenizers
  texts = ["hello world, ça va? 日本語"] * 3
  for kind in run_fields.FIXED_VOCAB_TOKENIZERS:  # the premise, on a real tokenizer of each kind
    small, large = (tokenizers.train_tokenizer(kind, texts, size) for size in (300, 5000))
    assert small.get_vocab() == large.get_vocab(), kind
  trials = [{"seed": 0, "data.mlm_select_rate": 0.1}, {"seed": 0, "data.mlm_select_rate": 0.2},
            {"seed": 1, "objective": "mlm", "data.mlm_select_rate": 0.1},
            {"seed": 1, "objective": "mlm", "data.mlm_select_rate": 0.2},
            {"seed": 2, "data.tokenizer": "byte", "data.vocab_size": 512},
            {"seed": 2, "data.tokenizer": "byte", "data.vocab_size": 1024},
            {"seed": 3, "data.tokenizer": "char", "data.vocab_size": 300},
            {"seed": 3, "data.tokenizer": "char", "data.vocab_size": 400},
            {"seed": 4, "data.tokenizer": "bpe", "data.vocab_size": 512},
            {"seed": 4, "data.tokenizer": "bpe", "data.vocab_size": 1024}]
  notes = sweeps.load_sweep(write_sweep(tmp_path / "unused.py", trials)).notes
  assert len(notes) == 3, notes
  assert "differ only in data.mlm_select_rate " in notes[0] and "'seed=0,mlm_select_rate=0.1'" in notes[0]
  assert all("differ only in data.vocab_size " in n for n in notes[1:])
  assert "seed=2" in notes[1] and "seed=3" in notes[2]


def _config(**overrides):
  """The schema's defaults as a nested dict (what config.json holds), with dotted `overrides`."""
  from research import schema
  config = schema.get_config().to_dict()
  for field, value in overrides.items():
    *sections, name = field.split(".")
    section = config
    for key in sections:
      section = section[key]
    section[name] = value
  return config


# (fields, a config that does not read them, one that does): each rule of run_fields.unused_fields added for the
# optimizer, the schedule, a frozen table, the pretrained options, concatenation, randomized positions.
UNREAD = [
    (("train.momentum",), {"train.optimizer": "adamw"}, {"train.optimizer": "sgd"}),
    (("train.momentum",), {"train.optimizer": "adafactor"}, {"train.optimizer": "sgd"}),
    (("train.b1", "train.b2"), {"train.optimizer": "sgd"}, {"train.optimizer": "adam"}),
    (("train.b1", "train.b2"), {"train.optimizer": "adafactor"}, {"train.optimizer": "lion"}),
    (("train.min_lr_ratio",), {"train.schedule": "constant"}, {"train.schedule": "cosine"}),
    (("train.min_lr_ratio",), {"train.schedule": "rsqrt"}, {"train.schedule": "linear"}),
    (("train.embedding.lr_multiplier", "train.embedding.freeze_steps", "train.embedding.lazy",
      "train.embedding.weight_decay"), {"train.embedding.freeze": True}, {"train.embedding.freeze": False}),
    (("model.pretrained.path", "model.pretrained.oov"), {"model.embed_init": "uniform"},
     {"model.embed_init": "pretrained"}),
    (("model.pos_dim",), {"model.combine": "add"}, {"model.combine": "concat"}),
    (("model.max_position",), {"model.position_sampling": "none"}, {"model.position_sampling": "randomized"}),
    (("model.t5_buckets", "model.t5_max_distance"), {"model.position": "alibi"}, {"model.position": "t5"}),
    (("data.vocab_size",), {"data.tokenizer": "char"}, {"data.tokenizer": "word"}),  # word's vocabulary is its size
    (("data.vocab_size",), {"data.tokenizer": "byte"}, {"data.tokenizer": "bpe"}),
    (("data.mlm_select_rate", "data.mlm_mask_rate", "data.mlm_random_rate"), {"objective": "clm"},
     {"objective": "mlm"}),
    (("train.position.weight_decay",), {"model.position": "alibi"}, {"model.position": "learned"}),
    (("model.rope_base", "model.rope_fraction"), {"model.position": "learned"}, {"model.position": "xpos"}),
    (("model.rope_keep_fraction",), {"model.position": "rope"}, {"model.position": "p_rope"}),
    (("model.sinusoidal_wavelength",), {"model.position": "t5"}, {"model.position": "sinusoidal"}),
    (("model.cope_max_pos",), {"model.position": "fire"}, {"model.position": "cope"}),
    (("model.fire_init_length",), {"model.position": "cope"}, {"model.position": "fire"}),
    (("model.t5_buckets",), {"model.position": "alibi"}, {"model.position": "my_pkg.schemes:Mine"}),  # unknown
    (("model.table_dim",), {"model.table_dim": 0}, {"model.table_dim": 32}),  # the plain table, a factorized one
    (("model.max_len",), {"model.max_len": 0}, {"model.max_len": 1024}),  # the training length, a longer table
]


def test_the_values_that_name_the_plain_table_or_the_training_length_are_one_model():
  from research import run_fields
  d, seq_len = _config()["model"]["d_model"], _config()["data"]["seq_len"]
  assert {"model.table_dim", "model.max_len"} <= set(run_fields.unused_fields(
      _config(**{"model.table_dim": 0, "model.max_len": 0}),
      _config(**{"model.table_dim": d, "model.max_len": seq_len})))
  # A factorized table of half the width is another model, whichever side spells the plain one how.
  for plain in (0, d):
    assert "model.table_dim" not in run_fields.unused_fields(
        _config(**{"model.table_dim": plain}), _config(**{"model.table_dim": d // 2}))


@pytest.mark.parametrize("fields, unread, reads", UNREAD, ids=[f"{f[0]}-{next(iter(u.values()))}-"
                                                                f"{next(iter(r.values()))}" for f, u, r in UNREAD])
def test_a_field_is_unused_only_when_neither_config_reads_it(fields, unread, reads):
  """Both directions of each rule: unused when neither config reads the field (the two may differ in it and train
  one model), used as soon as one of them does (then a difference is another model)."""
  from research import run_fields
  assert set(fields) <= set(run_fields.unused_fields(_config(**unread), _config(**unread)))
  for pair in ((_config(**unread), _config(**reads)), (_config(**reads), _config(**unread)),
               (_config(**reads), _config(**reads))):
    assert not set(fields) & set(run_fields.unused_fields(*pair)), pair
  assert set(fields) <= set(run_fields.same_model_ignored(_config(**unread), _config(**unread)))


def test_the_scheme_fields_table_is_what_the_built_in_schemes_read():
  """run_fields.SCHEME_FIELDS (JAX-free) against the source: every registered scheme is a BUILTIN_SCHEMES name, and
  a field is listed as read by exactly the schemes whose class (or a base) reads `cfg.<field>`; nothing outside the
  schemes and ModelConfig's own checks reads these fields (the trainer, the evaluator, the attention)."""
  import inspect

  from research import run_fields
  from research.embeddings import registry
  assert sorted(registry.names()) == sorted(run_fields.BUILTIN_SCHEMES)
  assert sorted(run_fields.ROTARY_SCHEMES) == sorted(n for n in registry.names() if configuration.rotates_with_rope(n))
  assert sorted(run_fields.INPUT_SCHEMES) == sorted(n for n in registry.names() if registry.get_scheme(n).has_input)
  assert run_fields.builtin_rotates({"model": {"position": "my_pkg.schemes:Mine"}}) is None
  for name in registry.names():
    source = "".join(inspect.getsource(c) for c in registry.get_scheme(name).__mro__
                     if c.__module__.startswith("research."))
    for field, readers in run_fields.SCHEME_FIELDS.items():
      reads = re.search(rf"cfg\.{field.split('.')[-1]}\b", source) is not None
      assert reads == (name in readers), (name, field)
  allowed = {"research/model/config.py", "research/run_fields.py",
             "research/report/saved_fields.py"}  # (the schema's values as data, for the JAX-free report)
  for path in sorted((ROOT / "research").rglob("*.py")):
    relative = path.relative_to(ROOT).as_posix()
    if relative in allowed or relative.startswith("research/embeddings/"):
      continue
    text = path.read_text()
    for field in run_fields.SCHEME_FIELDS:
      assert not re.search(rf"\.{field.split('.')[-1]}\b", text), (relative, field)


def test_the_parameterless_schemes_own_no_parameters_and_their_runs_ignore_the_position_group(tmp_path):
  """run_fields.PARAMETERLESS_SCHEMES against the models (no leaf under a `position_embed` module, which is all the
  optimizer's position group reaches, `optim.is_position_path`); every other built-in owns some. Between two of them
  train.position.weight_decay is unused (a RoPE or ALiBi run, old or new, was refused over it); with a scheme that
  has parameters, or an external one, it is compared."""
  import jax
  import jax.numpy as jnp

  from research import run_fields
  from research.model.transformer import Transformer
  from research.train import loop, optim
  from tests.train_utils import tiny_config
  for name in run_fields.BUILTIN_SCHEMES:
    model = Transformer(configuration.model_config(tiny_config(**{"model.position": name}), 64))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
    owned = [p for p, _ in jax.tree_util.tree_flatten_with_path(shapes)[0] if optim.is_position_path(p)]
    assert (not owned) == (name in run_fields.PARAMETERLESS_SCHEMES), (name, owned)
  reference = configuration.flatten(configuration.reference_config())
  assert sorted(run_fields.POSITION_GROUP_FIELDS) == sorted(f for f in reference if f.startswith("train.position."))
  unused = lambda a, b: run_fields.unused_fields(_config(**{"model.position": a}),  # noqa: E731
                                                 _config(**{"model.position": b}))
  assert "train.position.weight_decay" in unused("rope", "alibi")
  for pair in (("rope", "learned"), ("t5", "t5"), ("alibi", "my_pkg.schemes:Mine")):
    assert "train.position.weight_decay" not in unused(*pair), pair
  for scheme in ("alibi", "learned"):  # runs that set it, rerun under the default
    saved = tiny_config(**{"model.position": scheme, "train.position.weight_decay": True})
    (tmp_path / "config.json").write_text(json.dumps(saved.to_dict()))
    (tmp_path / "summary.json").write_text("{}")
    current = tiny_config(**{"model.position": scheme})
    if scheme == "alibi":
      assert loop.check_workdir(current, tmp_path) == tmp_path  # it was refused: "True (saved) != False (current)"
    else:
      with pytest.raises(configuration.ConfigError, match=r"train.position.weight_decay: True \(saved\)"):
        loop.check_workdir(current, tmp_path)


def test_optimizer_settings_the_rules_call_unused_change_no_update():
  """The optimizer rules measured on optax itself (optim.make_optimizer, four steps on a real parameter tree):
  momentum under adamw, adam, lion and adafactor, b1 and b2 under sgd and adafactor, min_lr_ratio under constant and
  rsqrt, and a frozen table's own settings give bit-identical updates; under the optimizers that read them, not."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from research import run_fields
  from research.train import optim
  params = {"token_embed": {"embedding": jnp.linspace(-1, 1, 15).reshape(5, 3)},
            "block": {"kernel": jnp.linspace(0.5, 2, 9).reshape(3, 3), "bias": jnp.ones(3)}}
  rng = np.random.default_rng(0)  # another gradient each step: a sign-based update (lion) still sees its moments
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params) for _ in range(4)]

  def updates(**overrides):
    train = _config(**{"train.warmup_steps": 0, "train.steps": 4, **overrides})["train"]
    tx = optim.make_optimizer(train)
    state, out = tx.init(params), []
    for g in grads:
      u, state = tx.update(g, state, params)
      out += [np.asarray(x) for x in jax.tree.leaves(u)]
    return out

  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(updates(**a), updates(**b)))  # noqa: E731
  changes = {"train.momentum": 0.5, "train.b1": 0.7, "train.b2": 0.9, "train.min_lr_ratio": 0.5,
             "train.embedding.lr_multiplier": 3.0, "train.embedding.freeze_steps": 2, "train.embedding.lazy": True,
             "train.embedding.weight_decay": True}
  for optimizer in run_fields.OPTIMIZERS:
    for field, readers in run_fields.OPTIMIZER_FIELDS.items():
      assert same({"train.optimizer": optimizer}, {"train.optimizer": optimizer, field: changes[field]}) \
          == (optimizer not in readers), (optimizer, field)
  for schedule in run_fields.SCHEDULES:
    assert same({"train.schedule": schedule}, {"train.schedule": schedule, "train.min_lr_ratio": 0.5}) \
        == (schedule not in run_fields.FLOOR_SCHEDULES), schedule
  for field in run_fields.FROZEN_TABLE_FIELDS:
    assert same({"train.embedding.freeze": True}, {"train.embedding.freeze": True, field: changes[field]}), field
    if field != "train.embedding.lazy":  # lazy rows need the batch's rows (the trainer passes them): not here
      assert not same({}, {field: changes[field]}), field


def test_two_trials_of_one_config_are_refused_and_long_names_are_cut_with_a_hash(tmp_path):
  for trials in ([{"seed": 0, "model.position": "rope"}, {"model.position": "rope", "seed": 0}],
                 [{"train.learning_rate": 1}, {"train.learning_rate": 1.0}]):
    with pytest.raises(configuration.ConfigError, match="are the same config"):
      sweeps.load_sweep(write_sweep(tmp_path / "dup.py", trials))
  long_a = {"data.corpus": "text:" + "a" * 300, "seed": 0}
  long_b = {"data.corpus": "text:" + "a" * 300 + "b", "seed": 0}
  names = [sweeps.trial_name(o) for o in (long_a, long_b)]
  assert len(set(names)) == 2 and all(len(n) <= sweeps.MAX_TRIAL_NAME for n in names)
  assert names[0] == sweeps.trial_name(dict(long_a))  # stable
  assert len(sweeps.legacy_trial_name(long_a)) <= sweeps.MAX_TRIAL_NAME
  assert sweeps.trial_name({"seed": 0}) == "seed=0"  # a short name is unchanged
  fits = {"data.corpus": "text:" + "a" * 220}  # 231 characters: a directory name that always worked keeps its name
  assert sweeps.trial_name(fits) == "corpus=text_" + "a" * 220
  (tmp_path / "out" / names[0]).mkdir(parents=True)  # a directory of that name can be made


def test_a_relative_base_config_from_the_current_directory_reaches_the_trials(tmp_path, monkeypatch):
  """Found from the current directory (none of that name in the repository root): the trials get its whole path, as
  they get a shipped one's."""
  (tmp_path / "mybase.py").write_text((ROOT / "configs" / "tiny.py").read_text())
  path = write_sweep(tmp_path / "s.py", [{"seed": 0}], base="mybase.py")
  monkeypatch.chdir(tmp_path)
  sweep = sweeps.load_sweep(path)
  assert sweep.base_config == str(tmp_path / "mybase.py")
  assert f"--config={tmp_path / 'mybase.py'}" in sweeps.train_command(sweep, sweep.trials[0], "w", train="t")
  assert sweeps.load_sweep(write_sweep(tmp_path / "s2.py", [{"seed": 0}])).base_config == \
      str(ROOT / "configs" / "tiny.py")


def test_a_sweep_directory_inside_a_trials_text_corpus_is_refused_before_anything_is_written(tmp_path):
  """The trials' run files would become their corpus's text (each trial failed on its own, after the sweep began)."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "a.txt").write_text((ROOT / "README.md").read_text())
  path = write_sweep(tmp_path / "s.py", [{"seed": 0, **TINY, "data.corpus": f"text:{corpus}"}])
  result = cli("experiments.sweep", f"--sweep={path}", f"--workdir={corpus / 'sweep'}")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert f"is inside data.corpus='text:{corpus}'" in result.stderr and "trial directory" in result.stderr
  assert sorted(p.name for p in corpus.iterdir()) == ["a.txt"]
  # A relative corpus is read where the trials run: the directory the sweep was started in, the dry run's too.
  relative = write_sweep(tmp_path / "rel.py", [{"seed": 0, **TINY, "data.corpus": "text:corpus"}])
  for dry_run in ([], ["--dry_run"]):
    result = cli("experiments.sweep", f"--sweep={relative}", "--workdir=corpus/sweep", *dry_run, cwd=tmp_path)
    assert result.returncode == 2 and "is inside data.corpus='text:corpus'" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and sorted(p.name for p in corpus.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("where", ["run", "inside", "brackets"])
def test_a_sweep_directory_that_is_a_run_or_inside_one_is_refused_before_anything_is_written(tmp_path, where):
  """sweep.json and the report among a run's files made the run refuse to resume (research-train refuses a workdir
  holding sweep.json)."""
  from research.train import loop
  run = tmp_path / "run"
  run.mkdir()
  loop.write_config(configuration.apply_overrides(configuration.reference_config(), {}), run)
  (run / "tokenizer.json").write_text("{}")  # a start that got as far as its tokenizer
  before = sorted(p.name for p in run.iterdir())
  target = {"run": run, "inside": run / "eval" / "sweep", "brackets": tmp_path / "s[1]"}[where]
  path = write_sweep(tmp_path / "s.py", [{"seed": 0, **TINY}])
  for dry_run in ([], ["--dry_run"]):
    result = cli("experiments.sweep", f"--sweep={path}", f"--workdir={target}", *dry_run)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    expected = {"run": f"is the run {str(run)!r}", "inside": f"is inside the run {str(run)!r}",
                "brackets": "a path with '[' or ']' cannot hold checkpoints"}[where]
    assert expected in result.stderr
  assert sorted(p.name for p in run.iterdir()) == before and not (tmp_path / "s[1]").exists()
  # A summary.json or config.json alone above a directory is anyone's file, not a run.
  (tmp_path / "project").mkdir()
  (tmp_path / "project" / "summary.json").write_text("{}")
  (tmp_path / "project" / "config.json").write_text("{}")
  sweeps.check_directory(tmp_path / "project" / "sweeps" / "s1")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_sweep_its_running_trial_and_every_queued_one(tmp_path, signum):
  """SIGINT (Ctrl-C) or SIGTERM to research-sweep alone: the running trial gets it, no other trial starts, sweep.json
  says interrupted / pending, and the sweep ends at once with one line and 128 + the signal (it used to train and
  evaluate every remaining trial, then print a traceback, its index still 'running')."""
  trials = [{"seed": s, **TINY, "train.steps": 100000, "train.eval_every": 100000, "train.checkpoint_every": 100000}
            for s in (0, 1)]
  path = write_sweep(tmp_path / "s.py", trials, evaluate={"lengths": [1]})
  out = tmp_path / "out"
  first, second = (out / sweeps.trial_name(t) for t in trials)
  proc = subprocess.Popen([sys.executable, "-m", "experiments.sweep", f"--sweep={path}", f"--workdir={out}"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  pid = None
  try:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and pid is None:
      pid = _trainer_in(first)
      time.sleep(0.05)
    assert pid is not None, "the trainer never started"
    os.kill(proc.pid, signum)  # the sweep alone: its trials have process groups of their own
    stdout, stderr = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    if pid is not None and _alive(pid):
      os.kill(pid, signal.SIGKILL)
  assert proc.returncode == 128 + signum, stderr[-2000:]
  lines = stderr.strip().splitlines()
  assert "Traceback" not in stderr and lines[-1].startswith(f"error: sweep stopped by signal {signum.name}: 1 running "
                                                            f"trial(s) interrupted ({first.name}), 1 not started")
  assert not _alive(pid) and not second.exists()
  assert _statuses(out) == {first.name: "interrupted", second.name: "pending"}
  assert f"[1/2] {first.name}: interrupted (stopped by signal {signum.name} to research-sweep)" in stdout
  assert "research-sweep: research-train stopped by" in (first / "error.log").read_text()
  # A rerun trains both (resuming the first from its checkpoints, if it saved any).
  lines = _dry_run(path, out)
  assert lines[0].startswith(f"{first.name}: ") and lines[2].startswith(f"{second.name}: ")
  assert "finished" not in lines[0]


@pytest.mark.parametrize("command", ["experiments.sweep", "experiments.quickstart"])
def test_a_ctrl_c_while_the_sweep_loads_is_never_lost(tmp_path, command):
  """A Ctrl-C that lands in a callback which swallows exceptions (JAX's gc hook prints "Exception ignored" and goes
  on; here an object's __del__, during get_sweep) was lost: the sweep then trained every trial and exited 0. Signals
  are recorded from the start of the command, and the sweep stops before its first trial with one line."""
  trials = [{"seed": 0, **TINY}]
  path = tmp_path / "s.py"
  path.write_text(
      "import os, signal\n\nBASE_CONFIG = 'configs/tiny.py'\nEVALUATE = None\n\n\n"
      "class Swallows:\n  def __del__(self):\n    os.kill(os.getpid(), signal.SIGINT)\n"
      "    for _ in range(100000):  # the handler runs here, where a KeyboardInterrupt is 'ignored'\n      pass\n\n\n"
      f"def get_sweep():\n  Swallows()\n  return {trials!r}\n")
  out = tmp_path / "out"
  result = cli(command, f"--sweep={path}", f"--workdir={out}", timeout=240)
  assert result.returncode == 128 + signal.SIGINT, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == "error: interrupted by signal SIGINT before any trial started"
  assert not (out / sweeps.trial_name(trials[0])).exists()


def _base_with_steps(directory: Path, steps: int) -> Path:
  """A BASE_CONFIG file: configs/tiny.py at TINY's sizes, trained for `steps` (a checkpoint every 4)."""
  path = directory / "base.py"
  sets = "".join(f"  c.{field} = {value!r}\n" for field, value in {**TINY, "train.steps": steps}.items()
                 if field != "seed")
  path.write_text(f"from configs import tiny\n\ndef get_config():\n  c = tiny.get_config()\n{sets}  return c\n")
  return path


def test_trials_run_in_the_directory_the_sweep_started_in_and_a_lowered_step_count_is_refused(tmp_path):
  """A relative `text:` path is the user's file, as for research-train (trials ran in the repository root and read
  the library's README.md); the printed commands work there. Lowering BASE_CONFIG's train.steps below a
  trial's newest checkpoint is refused in one line, as research-train refuses it (the trial was skipped as
  finished)."""
  mine = (ROOT / "docs" / "data.md").read_text()  # the user's README.md, not the library's
  (tmp_path / "README.md").write_text(mine)
  trials = [{"seed": 0, "data.corpus": "text:README.md", "data.tokenizer": "char"}]
  path = write_sweep(tmp_path / "s.py", trials, base=str(_base_with_steps(tmp_path, 4)))
  name = sweeps.trial_name(trials[0])
  result = cli("experiments.sweep", f"--sweep={path}", "--workdir=out", "--dry_run", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  args = shlex.split(result.stdout.splitlines()[0][len(name) + 2:])
  assert args[1:3] == [f"--config={tmp_path / 'base.py'}", f"--workdir=out/{name}"]
  result = cli("experiments.sweep", f"--sweep={path}", "--workdir=out", cwd=tmp_path, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  run = tmp_path / "out" / name
  assert _statuses(tmp_path / "out") == {name: "finished"} and _step_dirs(run) == [4]
  tokens = sum(split["tokens"] for split in json.loads((run / "data.json").read_text())["splits"].values())
  assert abs(tokens - len(mine)) < abs(tokens - len((ROOT / "README.md").read_text())), tokens  # a character each

  _base_with_steps(tmp_path, 2)
  index = (tmp_path / "out" / "sweep.json").read_text()
  for flags in ((), ("--dry_run",)):
    line = _one_error_line(cli("experiments.sweep", f"--sweep={path}", "--workdir=out", *flags, cwd=tmp_path))
    assert line.startswith(f"error: trial {name!r}: train.steps=2 is below step 4, which the run in ") and \
        "a run is not shortened" in line, line
  assert (tmp_path / "out" / "sweep.json").read_text() == index


def test_an_evaluation_with_other_passkey_depths_or_trials_is_evaluated_again(tmp_path):
  """eval/passkey.json records its depths and trials: a sweep asking for others evaluates again (it skipped the trial).
  `"passkey": "t"` is on, as research-evaluate --passkey=t is (the passkey file was never asked for)."""
  from research.evaluate import passkey
  run = tmp_path / "out" / "seed=0"
  run.mkdir(parents=True)
  _write_trained_and_evaluated(run, step=4, valid_loss=3.0, checkpoint_step=4)
  record = passkey.report_record(train_len=32, checkpoint_step=4, seed=0, trials=2, depths=[0, 1], rope_scaling=None,
                                 rope_factor=None, checkpoint="best",
                                 results=[passkey.cell_record(1, 32, d, note="too short") for d in (0, 1)])
  (run / "eval" / "passkey.json").write_text(json.dumps(record))

  def plan(evaluate):
    return sweeps.trial_plan(sweeps.load_sweep(write_sweep(tmp_path / "s.py", [{"seed": 0, **TINY}], evaluate)), run, 4)

  same = {"lengths": [1], "passkey": True, "passkey_trials": 2, "passkey_depths": [0, 1]}
  assert plan(same) == ("skip", None)
  assert plan({**same, "passkey_trials": 3}) == ("evaluate", "eval/passkey.json was made with trials=2 (now 3)")
  assert plan({**same, "passkey_depths": [0, 0.5, 1]}) == (
      "evaluate", "eval/passkey.json was made with depths=[0.0, 1.0] (now [0.0, 0.5, 1.0])")
  # Repeated depths are scored once and -0 is 0, as research-evaluate records them: nothing to evaluate again.
  assert plan({**same, "passkey_depths": [0, 1, 0, -0.0, 1]}) == ("skip", None)
  assert plan({**same, "passkey_depths": [1, 0]}) == (
      "evaluate", "eval/passkey.json was made with depths=[0.0, 1.0] (now [1.0, 0.0])")
  (run / "eval" / "passkey.json").unlink()
  assert plan({"lengths": [1], "passkey": "t"}) == ("evaluate", "eval/passkey.json is missing")


def test_a_scaled_passkey_file_of_another_rope_factor_is_evaluated_again(tmp_path):
  """passkey_<scaling>.json records its RoPE factor (None: the multiple at each length), a protocol setting as the
  extrapolation file's is: one scored with another factor than EVALUATE asks for was kept, "finished (skipped)"."""
  from research.evaluate import extrapolation, passkey
  run = tmp_path / "out" / "trial"
  run.mkdir(parents=True)
  _write_trained_and_evaluated(run, step=4, valid_loss=3.0, checkpoint_step=4)

  def write(factor_extrapolation, factor_passkey):
    extrapolation.write_report(run, extrapolation.report_record(
        train_len=32, mode="nonoverlapping", stride=None, split="valid", checkpoint_step=4, rope_scaling="linear",
        rope_factor=factor_extrapolation, results=[extrapolation.result_record(1, 32, 20.0, 100)], checkpoint="best"))
    record = passkey.report_record(train_len=32, checkpoint_step=4, seed=0, trials=2, depths=[0.5],
                                   rope_scaling="linear", rope_factor=factor_passkey, checkpoint="best",
                                   results=[passkey.cell_record(1, 32, 0.5, note="too short")])
    (run / "eval" / passkey.report_file("linear")).write_text(json.dumps(record))

  def plan(**evaluate):
    evaluate = {"lengths": [1], "passkey": True, "passkey_trials": 2, "passkey_depths": [0.5],
                "rope_scaling": "linear", **evaluate}
    sweep = sweeps.load_sweep(write_sweep(tmp_path / "s.py", [{"model.position": "rope", **TINY}], evaluate))
    return sweeps.trial_plan(sweep, run, 4)

  write(None, None)
  assert plan() == ("skip", None)
  assert plan(rope_factor=2) == ("evaluate", "eval/extrapolation_linear.json was made with rope_factor=None (now "
                                             "2.0)")
  write(2.0, None)  # the extrapolation file was evaluated again, the passkey file kept from the other factor
  assert plan(rope_factor=2) == ("evaluate", "eval/passkey_linear.json was made with rope_factor=None (now 2.0)")
  write(2.0, 2.0)
  assert plan(rope_factor=2) == ("skip", None)
  write(None, 2.0)
  assert plan() == ("evaluate", "eval/passkey_linear.json was made with rope_factor=2.0 (now None)")


@pytest.mark.parametrize("scaling", [None, "linear"])
def test_evaluating_again_keeps_the_passkey_heatmap_it_redraws(tmp_path, scaling):
  """keep_previous_evaluation copied only the JSON files: passkey.png (passkey_<scaling>.png), which research-evaluate
  --passkey redraws, was overwritten without a copy. It draws no other plot."""
  from research.evaluate import extrapolation, passkey
  evaluate = {"lengths": [1], "passkey": True, "passkey_trials": 2, "rope_scaling": scaling}
  sweep = sweeps.load_sweep(write_sweep(tmp_path / "s.py", [{"model.position": "rope", **TINY}], evaluate))
  run = tmp_path / "out" / sweep.trials[0].name
  run.mkdir(parents=True)
  extrapolation.write_report(run, extrapolation.report_record(
      train_len=32, mode="nonoverlapping", stride=None, split="valid", checkpoint_step=4, rope_scaling=scaling,
      rope_factor=None, results=[extrapolation.result_record(1, 32, 20.0, 100)], checkpoint="best"))
  record = passkey.report_record(train_len=32, checkpoint_step=4, seed=0, trials=2, depths=[0.5], rope_scaling=scaling,
                                 rope_factor=None, checkpoint="best",
                                 results=[passkey.cell_record(1, 32, 0.5, note="too short")])
  written = passkey.write_report(run, record)
  assert [p.name for p in written] == [passkey.report_file(scaling), passkey.plot_file(scaling)]
  (run / "eval" / "unrelated.png").write_bytes(b"not the evaluation's")
  previous = sweeps.keep_previous_evaluation(sweep, run)
  suffix = f"_{scaling}" if scaling else ""
  assert sorted(p.name for p in previous.iterdir()) == sorted(
      [f"extrapolation{suffix}.json", f"passkey{suffix}.json", f"passkey{suffix}.png"])
  assert (previous / f"passkey{suffix}.png").read_bytes() == written[1].read_bytes()


def test_a_sweep_file_of_the_current_directory_wins_over_the_shipped_one_of_that_path(tmp_path, monkeypatch):
  mine = tmp_path / "configs" / "sweeps" / "quickstart.py"
  mine.parent.mkdir(parents=True)
  write_sweep(mine, [{"seed": 7}])
  monkeypatch.chdir(tmp_path)
  assert [t.name for t in sweeps.load_sweep("configs/sweeps/quickstart.py").trials] == ["seed=7"]
  monkeypatch.chdir(tmp_path / "configs")  # no such file here: the shipped sweep, from any directory
  assert len(sweeps.load_sweep("configs/sweeps/quickstart.py").trials) == 6


@pytest.mark.parametrize("source,message", [
    ("def get_config():\n  raise ValueError('bad base')\n", "line 2: get_config() raised ValueError: bad base"),
    ("X = 1\n", "defines no get_config()"),
    ("def get_config():\n  return None\n",
     "get_config() returned None; it must return the config (an ml_collections.ConfigDict)"),
    ("def get_config():\n  return {'model': {'position': 'rope'}}\n",
     "get_config() returned a dict; it must return the config (an ml_collections.ConfigDict)"),
])
def test_a_broken_base_config_fails_in_research_trains_one_line(tmp_path, source, message):
  base = tmp_path / "base.py"
  base.write_text(source)
  path = write_sweep(tmp_path / "s.py", [{"seed": 0}], base=str(base))
  line = _one_error_line(cli("experiments.sweep", f"--sweep={path}", f"--workdir={tmp_path / 'out'}", "--dry_run"))
  assert line == f"error: sweep {str(path)!r}: BASE_CONFIG: config file {str(base)!r}" + \
      (" " if message.startswith("defines") else ": ") + message


def test_a_typo_in_the_base_config_is_named_with_the_base_config_file(tmp_path):
  base = tmp_path / "base.py"
  base.write_text("from research import schema\ndef get_config():\n  c = schema.get_config()\n"
                  "  c.model.d_modle = 32\n  return c\n")
  path = write_sweep(tmp_path / "s.py", [{"seed": 0}], base=str(base))
  with pytest.raises(configuration.ConfigError) as info:
    sweeps.load_sweep(path)
  assert str(info.value).startswith(f"sweep {str(path)!r}: BASE_CONFIG: config file {str(base)!r}: unknown config "
                                    f"field 'model.d_modle' (did you mean model.d_model"), str(info.value)


def test_a_sweep_file_and_a_base_config_without_py_load_as_research_train_loads_them(tmp_path):
  base = tmp_path / "base.cfg"
  base.write_text((ROOT / "configs" / "tiny.py").read_text())
  sweep = sweeps.load_sweep(write_sweep(tmp_path / "sweep.txt", [{"seed": 3}], base=str(base)))
  from configs import tiny
  assert [t.name for t in sweep.trials] == ["seed=3"] and sweep.base_config == str(base)
  assert sweeps.load_base_config(base).to_dict() == tiny.get_config().to_dict()


def test_a_failed_trial_is_named_and_a_trainer_ended_by_a_signal_says_which(tmp_path):
  assert sweeps._last_error("", -signal.SIGKILL).startswith("ended by signal SIGKILL (")
  assert sweeps._last_error("error: bad\n", -signal.SIGKILL) == "bad"
  assert sweeps._last_error("", 1) == "exit status 1 and nothing on stderr"
  # An exception raised in traced code: JAX prints a note after the exception's line; the error is the exception.
  code = "import jax\ndef f(x):\n  raise RuntimeError('deliberate failure in a scheme')\njax.jit(f)(1.0)\n"
  traced = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert traced.returncode == 1 and "JAX" in traced.stderr.strip().splitlines()[-1]
  assert sweeps._last_error(traced.stderr, 1) == "RuntimeError: deliberate failure in a scheme"
  # JAX's own errors end in a 'See https://...' line, and a message may span lines: the exception's first line.
  code = ("import jax, jax.numpy as jnp\ndef f(x):\n  if jnp.sum(x) > 0:\n    return x\n  return -x\n"
          "jax.jit(f)(jnp.ones(2))\n")
  traced = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert sweeps._last_error(traced.stderr, 1).startswith("jax.errors.TracerBoolConversionError: "), traced.stderr
  two = subprocess.run([sys.executable, "-c", "raise ValueError('first line\\nsecond line')"], capture_output=True,
                       text=True, timeout=60)
  assert sweeps._last_error(two.stderr, 1) == "ValueError: first line"
  trials = [{"model.position": "none", "data.tokenizer": "byte", "data.vocab_size": 100, **TINY}]  # fails at once
  path = write_sweep(tmp_path / "s.py", trials)
  result = _sweep_cli(path, tmp_path / "out")
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == (f"0 of 1 trials finished; failed: {sweeps.trial_name(trials[0])}; "
                                                    f"sweep index: {tmp_path / 'out'}/sweep.json")


def test_a_dry_run_refuses_what_the_run_refuses(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "a.txt").write_text("text")
  path = write_sweep(tmp_path / "s.py", [{"seed": 0, "data.corpus": f"text:{corpus}"}])
  line = _one_error_line(cli("experiments.sweep", f"--sweep={path}", f"--workdir={corpus / 'sweep'}", "--dry_run"))
  assert "trial directory" in line and f"is inside data.corpus='text:{corpus}'" in line
  path = write_sweep(tmp_path / "s.py", [{"seed": s, "mesh.distributed": "true"} for s in (0, 1)])
  line = _one_error_line(cli("experiments.sweep", f"--sweep={path}", f"--workdir={tmp_path / 'out'}", "--jobs=2",
                             "--dry_run"))
  assert line.startswith("error: --jobs=2 cannot run multi-process trials (trial 'seed=0,distributed=true' sets ")


def test_set_changes_a_field_every_trial_shares_and_refuses_one_the_sweep_varies(tmp_path):
  trials = [{"model.position": p, "train.steps": 800, "seed": 0} for p in ("rope", "alibi")]
  path = write_sweep(tmp_path / "s.py", trials)
  sweep = sweeps.load_sweep(path, dict(map(sweeps.parse_setting, ["train.steps=20", "model.d_model=32",
                                                                    "train.embedding.lazy=true"])))
  # In place where the sweep sets it (the name says the new value), added at the end where it does not.
  assert [t.name for t in sweep.trials] == [f"position={p},steps=20,seed=0,d_model=32,lazy=True"
                                            for p in ("rope", "alibi")]
  for trial in sweep.trials:
    config = sweeps.trial_config(sweep, trial)
    assert (config.train.steps, config.model.d_model, config.train.embedding.lazy) == (20, 32, True)
  lines = _dry_run(path, tmp_path / "out", "--set=train.steps=20", "--set=train.learning_rate=1e-3")
  assert lines[0].endswith("--config.train.steps=20 --config.seed=0 --config.train.learning_rate=0.001")
  for setting, message in [
      ("model.position=t5", f"error: --set=model.position=...: sweep {str(path)!r} varies model.position "
                            "(\"alibi\", \"rope\"); --set changes only a field every trial has the same value of"),
      ("train.steps=x", "error: --set='train.steps=x': 'x' is not an integer (the kind of train.steps)"),
      ("train.embedding.lazy=maybe", "error: --set='train.embedding.lazy=maybe': 'maybe' is not true or false"),
      ("model.dmodel=32", "error: --set='model.dmodel=32': unknown config field 'model.dmodel'"),
      ("train.steps", "error: --set='train.steps' is not FIELD=VALUE")]:
    line = _one_error_line(cli("experiments.sweep", f"--sweep={path}", f"--workdir={tmp_path / 'out'}",
                               f"--set={setting}", "--dry_run"))
    assert line.startswith(message), line
  assert not (tmp_path / "out").exists()
  # A field set in some trials only varies too: the others have the base config's value (momentum 0.9 here).
  some = write_sweep(tmp_path / "some.py", [{"train.optimizer": "sgd"}, {"train.optimizer": "sgd", "train.momentum": 0}])
  with pytest.raises(configuration.ConfigError, match=r"varies train.momentum \(0.0, 0.9\)"):
    sweeps.load_sweep(some, {"train.momentum": 0.5})
  # ... and one that only spells the base value another way (1 for 1.0) does not.
  same = write_sweep(tmp_path / "same.py", [{"seed": 0}, {"seed": 1, "train.embedding.lr_multiplier": 1}])
  assert sweeps.load_sweep(same, {"train.embedding.lr_multiplier": 2.0}).trials[1].overrides == {
      "seed": 1, "train.embedding.lr_multiplier": 2.0}


def test_a_missing_vector_file_refuses_the_sweep_before_any_trial_trains(tmp_path):
  vectors = tmp_path / "vectors.txt"
  trials = [{"seed": 0}, {"seed": 1, "model.embed_init": "pretrained", "model.pretrained.path": str(vectors)}]
  path = write_sweep(tmp_path / "s.py", trials)
  for flags in (["--dry_run"], []):
    line = _one_error_line(cli("experiments.sweep", f"--sweep={path}", f"--workdir={tmp_path / 'out'}", *flags))
    assert line.startswith("error: trial 'seed=1,embed_init=pretrained,") and "no such file" in line, line
  assert not (tmp_path / "out" / "seed=0").exists()  # the trial before it did not train


def test_a_trial_whose_trainer_ends_non_zero_after_writing_its_summary_is_finished(tmp_path, monkeypatch):
  path = write_sweep(tmp_path / "s.py", [{"seed": 0, "train.steps": 20}])
  sweep = sweeps.load_sweep(path)
  trial, workdir = sweep.trials[0], tmp_path / "out" / sweep.trials[0].name
  workdir.mkdir(parents=True)
  # A stop that landed after research-train's last act (summary.json) ends it with status 130, as a SIGINT would.
  monkeypatch.setattr(sweeps, "train_command", lambda *a, **k: [sys.executable, "-c", "raise SystemExit(130)"])
  for step, status in ((12, "failed"), (20, "finished")):
    (workdir / "summary.json").write_text(json.dumps({"step": step, "valid_ppl": 9.0}))
    assert sweeps.run_trial(sweep, trial, tmp_path / "out")["status"] == status, step


def test_a_trial_that_would_start_from_a_rewritten_vector_file_refuses_the_sweep_and_the_report_splits_its_row(
    tmp_path):
  """A vector file regenerated between a sweep's trials (stopped after trial 1, research-vectors run again, resumed)
  gave the seeds of one row different initial tables, and research-report averaged them silently. A trial that would
  start from the file now refuses the sweep when another trial recorded other bytes of it (RUN/embedding_init.json's
  sha256); a trial that holds a checkpoint never reads it again and is not checked. Where trials of one row did
  start from different contents, the report gives each its own row, labelled by the file's hash."""
  from gensim.models import KeyedVectors
  from research.report import build_table, load_runs, runs as report_runs
  from research.train import loop

  vectors = tmp_path / "w2v.txt"

  def write_vectors(offset):
    words = "the of and to a in is it that was".split()
    kv = KeyedVectors(4)
    kv.add_vectors(words, [[i + offset, 1.0, -1.0, 0.5] for i in range(len(words))])
    kv.save_word2vec_format(str(vectors))
    return vectors.read_bytes()

  original = write_vectors(0.0)
  shared = {"model.embed_init": "pretrained", "model.pretrained.path": str(vectors), "data.tokenizer": "word",
            "model.pretrained.dim_mismatch": "project", **TINY}
  sweep = sweeps.load_sweep(write_sweep(tmp_path / "s.py", [{"seed": s, **shared} for s in (0, 1)]))
  out, (first, second) = tmp_path / "out", sweep.trials
  loop.train(sweeps.trial_config(sweep, first), out / first.name)  # the sweep stopped after its first trial
  sweeps.check_vector_files(sweep, out)  # the same bytes
  write_vectors(0.5)
  with pytest.raises(configuration.ConfigError) as info:
    sweeps.check_vector_files(sweep, out)
  line = str(info.value)
  assert line.startswith(f"trial {second.name!r}: model.pretrained.path={str(vectors)!r} now holds other vectors ")
  assert f"than trial {first.name!r} of this sweep started from" in line and "\n" not in line
  assert line.endswith("restore that file, or give the sweep a new --workdir; no trial was run"), line
  vectors.write_bytes(original)
  sweeps.check_vector_files(sweep, out)  # restored
  # The name made a symbolic link to a file of other bytes: it resolves elsewhere, but it is the file the sweep names.
  vectors.rename(tmp_path / "kept.txt")
  write_vectors(0.5)
  vectors.rename(tmp_path / "other.txt")
  vectors.symlink_to(tmp_path / "other.txt")
  with pytest.raises(configuration.ConfigError, match="now holds other vectors"):
    sweeps.check_vector_files(sweep, out)
  vectors.unlink()
  (tmp_path / "kept.txt").rename(vectors)
  # The second trial started from other contents anyway (before this check existed): once both hold checkpoints
  # nothing reads the file again, and the report splits their row by the file's hash instead of averaging them.
  write_vectors(0.5)
  loop.train(sweeps.trial_config(sweep, second), out / second.name)
  sweeps.check_vector_files(sweep, out)
  sweeps.write_index(out, sweep, {t.name: {"status": "finished", "error": None} for t in sweep.trials})
  runs = load_runs(out)
  assert runs.group_fields == [report_runs.VECTORS_FIELD]
  labels = sorted(g.label for g in build_table(runs).groups)
  hashes = sorted(json.loads((out / t.name / "embedding_init.json").read_text())["sha256"][:12]
                  for t in sweep.trials)
  assert labels == [f"sha256={h}" for h in hashes] and hashes[0] != hashes[1]
  # In a directory of runs, two runs of one seed from different contents are two models, not a run and its copy.
  import shutil
  for name, trial in (("x", first), ("y", second)):
    shutil.copytree(out / trial.name, tmp_path / "runs" / name)
  config = json.loads((tmp_path / "runs" / "y" / "config.json").read_text())
  (tmp_path / "runs" / "y" / "config.json").write_text(json.dumps({**config, "seed": 0}))
  runs = load_runs(tmp_path / "runs")
  assert runs.duplicates == [] and runs.group_fields == [report_runs.VECTORS_FIELD]
  (out / second.name / "embedding_init.json").write_text("{}")  # a run written before the hash: no split
  assert load_runs(out).group_fields == [] and len(build_table(load_runs(out)).groups) == 1
