"""Sweeps: expansion, validation before any trial, resumability, failures, TPU commands; evaluation coverage."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from research import sweeps
from research.evaluate import extrapolation
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


@pytest.mark.parametrize("name", ["positions", "tying", "mlm_vs_clm", "quickstart"])
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


@pytest.mark.parametrize("trials,message", [
    ([{"model.positon": "rope"}], "unknown config field 'model.positon'"),
    ([{"model.position": "rope"}, {"model.position": "fire"}], "model.position='fire' is not one of"),
    ([{"train.steps": -1}], "train.steps=-1 must be an integer >= 0"),
])
def test_every_override_is_validated_before_any_trial_starts(tmp_path, trials, message):
  path = write_sweep(tmp_path / "bad.py", trials)
  result = cli("experiments.sweep", f"--sweep={path}", f"--workdir={tmp_path / 'out'}")
  assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


def test_tpu_commands_run_every_trial_on_every_host(tmp_path):
  path = write_sweep(tmp_path / "s.py", [{"model.position": "rope", **FAST}, {"model.position": "alibi", **FAST}],
                     evaluate={"lengths": [1, 4]})
  result = cli("experiments.sweep", f"--sweep={path}", "--workdir=gs://bucket/runs", "--print_commands",
               "--tpu=my-v4-32", "--zone=us-central2-b")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 2
  for line, scheme in zip(lines, ["rope", "alibi"]):
    assert line.startswith("gcloud compute tpus tpu-vm ssh my-v4-32 --zone=us-central2-b --worker=all --command=")
    assert f"--config.model.position={scheme}" in line and f"--workdir=gs://bucket/runs/position={scheme}," in line
    assert "python3 -m experiments.train --config=configs/tiny.py" in line
    assert "python3 -m experiments.evaluate" in line and "--lengths=1,4" in line
  assert not Path("gs:").exists()


def _statuses(directory):
  return {t["name"]: t["status"] for t in json.loads((directory / "sweep.json").read_text())["trials"]}


@pytest.mark.slow
def test_killed_sweep_reruns_only_unfinished_trials_and_records_failures(tmp_path):
  trials = [{"model.position": p, **FAST} for p in ("learned", "alibi")]
  trials.append({"model.position": "none", "data.tokenizer": "byte", "data.vocab_size": 100, **FAST})  # fails
  path = write_sweep(tmp_path / "s.py", trials, evaluate={"lengths": [1, 2]})
  out = tmp_path / "out"
  names = [sweeps.trial_name(t) for t in trials]
  proc = subprocess.Popen([sys.executable, "-m", "experiments.sweep", f"--sweep={path}", f"--workdir={out}"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
  first = out / names[0] / "eval" / "extrapolation.json"
  deadline = time.time() + 300
  while time.time() < deadline and not first.exists() and proc.poll() is None:
    time.sleep(0.1)
  assert first.exists(), proc.communicate()[1][-2000:] if proc.poll() is not None else "timeout"
  os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the trial it was running
  proc.wait()
  assert not (out / names[1] / "summary.json").exists()
  finished_mtime = (out / names[0] / "summary.json").stat().st_mtime_ns

  result = cli("experiments.sweep", f"--sweep={path}", f"--workdir={out}", timeout=600)
  assert result.returncode == 1  # one trial failed
  assert "[1/3] already finished, skipped" in result.stdout
  assert (out / names[0] / "summary.json").stat().st_mtime_ns == finished_mtime  # untouched
  assert _statuses(out) == {names[0]: "finished", names[1]: "finished", names[2]: "failed"}
  index = json.loads((out / "sweep.json").read_text())
  failed = [t for t in index["trials"] if t["status"] == "failed"][0]
  assert "vocab_size=100 is too small" in failed["error"] and "minimum is 261" in failed["error"]
  assert (out / names[1] / "eval" / "extrapolation.json").exists()
  assert sum(1 for line in result.stdout.splitlines() if line.startswith("[")) == 3  # one line per trial

  # The report of this real sweep: n/a beyond the learned table, numbers for ALiBi, the failure listed.
  report = build_report(out)
  rows = {line.split("|")[1].strip(): line for line in report.table.splitlines() if line.startswith("| position=")}
  learned = [c.strip() for c in rows[next(k for k in rows if "learned" in k)].split("|")[2:-1]]
  alibi = [c.strip() for c in rows[next(k for k in rows if "alibi" in k)].split("|")[2:-1]]
  assert "n/a" in learned[-1] and "n/a" not in "".join(alibi)
  summary = json.loads((out / names[1] / "summary.json").read_text())
  assert f"{summary['valid_ppl']:.2f}" in "".join(alibi)
  markdown = report.markdown_path.read_text()
  assert "minimum is 261" in markdown and (out / "ppl_vs_length.png").exists() and (out / "table.tex").exists()


@pytest.mark.slow
def test_extrapolation_scores_every_token_once_and_reports_na_beyond_a_learned_table(tmp_path):
  for position in ("learned", "alibi"):
    workdir = tmp_path / position
    result = cli("--config=configs/tiny.py", f"--workdir={workdir}", f"--config.model.position={position}",
                 *(f"--config.{k}={v}" for k, v in FAST.items()))
    assert result.returncode == 0, result.stderr[-2000:]
    run = extrapolation.load_run(workdir)
    targets = len(run.splits["valid"]) - 1
    for mode, stride in (("nonoverlapping", None), ("sliding", 24)):
      report = extrapolation.evaluate_run(workdir, (1, 2, 4), mode=mode, stride=stride)
      assert report["train_len"] == 32 and report["mode"] == mode
      for r in report["results"]:
        if position == "learned" and r["multiple"] > 1:
          assert r["ppl"] is None and "learned positions are defined up to 32, not" in r["note"]
        else:
          assert r["tokens"] == targets and np.isfinite(r["ppl"]) and r["ppl"] > 1
    saved = json.loads((workdir / "eval" / "extrapolation.json").read_text())
    assert saved["mode"] == "sliding" and saved["stride"] == 24


def test_evaluating_a_non_run_is_a_clear_error(tmp_path):
  result = cli("experiments.evaluate", f"--workdir={tmp_path}")
  assert result.returncode == 2 and result.stderr.strip() == f"error: '{tmp_path}' is not a run directory (no " \
                                                             "config.json)"


@pytest.mark.slow
def test_rope_scaling_switched_on_at_evaluation(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.model.position=rope",
               *(f"--config.{k}={v}" for k, v in FAST.items()))
  assert result.returncode == 0, result.stderr[-2000:]
  plain = extrapolation.evaluate_run(tmp_path, (1, 2))
  out = cli("experiments.evaluate", f"--workdir={tmp_path}", "--lengths=1,2", "--rope_scaling=yarn")
  assert out.returncode == 0, out.stderr[-2000:]
  yarn = json.loads((tmp_path / "eval" / "extrapolation_yarn.json").read_text())
  assert yarn["rope_scaling"] == "yarn" and json.loads(
      (tmp_path / "eval" / "extrapolation.json").read_text())["rope_scaling"] is None
  # Factor "auto" = the multiple: at 1× nothing is scaled, at 2× the frequencies (and the temperature) change.
  assert yarn["results"][0]["ppl"] == pytest.approx(plain["results"][0]["ppl"], rel=1e-6)
  assert yarn["results"][1]["ppl"] != pytest.approx(plain["results"][1]["ppl"], rel=1e-4)
  assert "ppl" in out.stdout.splitlines()[0] and len(out.stdout.strip().splitlines()) == 3
