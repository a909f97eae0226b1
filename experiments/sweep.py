r"""Run a sweep: one process per trial, resumable, with a sweep.json index.

  research-sweep --sweep=configs/sweeps/positions.py --workdir=runs/positions [--jobs=N] [--dry_run]
                 [--evaluate | --noevaluate] [--set=FIELD=VALUE ...]
  research-sweep --sweep=configs/sweeps/positions.py --workdir=/mnt/shared/positions --print_commands \
                 --tpu=NAME --zone=ZONE [--repo_dir=~/research]

Rerunning skips finished trials (evaluating one again when EVALUATE asks for a length or options its evaluation
lacks) and resumes interrupted ones from their checkpoints; a trial directory holding a run of another config (the
sweep file's BASE_CONFIG or overrides edited) refuses the sweep in one line: use a new --workdir. --dry_run says
which trials are finished and would be skipped, and prints the others' commands, to paste in the directory it ran
in; a failed trial is recorded with its error (sweep.json, and <trial>/error.log) and does not stop the others.

Trials run in the current directory: a relative path in an override or the base config (a text: corpus, a vector
file) is read from there, as research-train reads it. A relative --sweep is a file in the current directory, else the
shipped one of that path (configs/sweeps/...); a relative BASE_CONFIG is looked up in the repository root, then in the
current directory. Ctrl-C (SIGINT) or SIGTERM stops the sweep: the running trials get the signal (a second one kills
them) and are recorded as interrupted, queued ones stay pending, and it exits with one line and status 128 + the
signal's number; rerunning resumes them. With --print_commands the workdir must be a filesystem every TPU worker
mounts (gcsfuse, NFS), not a gs:// URL. Multi-process trials (started with the same command on every host, in a
cluster's environment) run one at a time: --jobs > 1 is refused.

--set=FIELD=VALUE (repeatable) changes a field every trial shares, e.g. a shipped sweep run small:
--set=train.steps=40 --set=model.d_model=32. It replaces the value the sweep gives every trial (trial names say the
new value) or adds the field to each; a field the sweep varies is refused, since setting it would merge arms.
"""

import signal

from research import interrupts

if __name__ == "__main__":  # `python -m`: signals are recorded before the imports below (seconds; launch.py)
  interrupts.record((signal.SIGINT, signal.SIGTERM), even_ignored=True)

import dataclasses
import shlex
import sys
from pathlib import Path

from absl import app, flags

from experiments.common import exit_now, expand_home_flags, parse_flags, run_main
from research import sweeps
from research.train.configuration import ConfigError

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file defining get_sweep().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: one subdirectory per trial.")
_JOBS = flags.DEFINE_integer("jobs", 1, "Trials run at the same time (multi-process trials: 1, see docs/training.md).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the trials and their commands; run nothing.")
_EVALUATE = flags.DEFINE_bool("evaluate", None, "Run research-evaluate after each trial (default: the sweep "
                              "file's EVALUATE; --noevaluate turns it off).")
_PRINT = flags.DEFINE_bool("print_commands", False, "Print per-host TPU pod commands instead of running.")
_TPU = flags.DEFINE_string("tpu", None, "TPU VM name (with --print_commands).")
_ZONE = flags.DEFINE_string("zone", None, "TPU zone (with --print_commands).")
_SET = flags.DEFINE_multi_string("set", [], "FIELD=VALUE: a config field every trial shares, set for all of them "
                                  "(repeatable; a field the sweep varies is refused).")
_REPO_DIR = flags.DEFINE_string("repo_dir", "~/research", "This repository's clone on every TPU worker (with "
                                "--print_commands).")

DEFAULT_EVALUATE = {"lengths": [1, 2, 4, 8, 16]}  # --evaluate on a sweep whose file sets EVALUATE = None


@run_main  # a SweepInterrupted (Ctrl-C or SIGTERM; sweep.json says which trials stopped): its line, 128 + signal
def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _JOBS.value < 1:
    raise ConfigError(f"--jobs={_JOBS.value} must be >= 1")
  if not _PRINT.value:
    for flag in (_TPU, _ZONE, _REPO_DIR):  # were ignored, exit 0, with the sweep run here
      if flag.present:
        raise ConfigError(f"--{flag.name} is for --print_commands (the TPU pod's commands); without it the sweep "
                          f"runs on this machine")
  settings = dict(sweeps.parse_setting(text) for text in _SET.value)
  sweep = sweeps.load_sweep(_SWEEP.value, settings, _WORKDIR.value or None)
  sweeps.check_not_interrupted()
  for note in sweep.notes:
    print(f"warning: {note}", file=sys.stderr, flush=True)
  if _EVALUATE.value is False:
    sweep = dataclasses.replace(sweep, evaluate=None)
  elif _EVALUATE.value and not sweep.evaluate:
    sweep = dataclasses.replace(sweep, evaluate=dict(DEFAULT_EVALUATE))
  if _PRINT.value:
    if not _TPU.value or not _ZONE.value:
      raise ConfigError("--print_commands needs --tpu=NAME and --zone=ZONE")
    lines = sweeps.tpu_commands(sweep, _WORKDIR.value, _TPU.value, _ZONE.value, repo_dir=_REPO_DIR.value)
    sweeps.check_not_interrupted()
    for note in sweeps.tpu_notes(sweep, _WORKDIR.value):  # stderr: stdout stays the commands alone
      print(note, file=sys.stderr)
    for line in lines:
      print(line)
    return
  if _DRY_RUN.value:  # what the real run would refuse (sweeps.run_sweep's checks)
    sweeps.check_directory(_WORKDIR.value)
    sweeps.check_jobs(sweep, _JOBS.value)
    sweeps.check_trials_outside_corpus(sweep, Path(_WORKDIR.value).resolve())
    sweeps.check_trial_directories(sweep, _WORKDIR.value)
    sweeps.check_dropped_trials(sweep, _WORKDIR.value)
    sweeps.check_vector_files(sweep, Path(_WORKDIR.value))
    skipped, steps = 0, sweeps.trial_steps(sweep)
    for trial in sweep.trials:
      workdir = f"{_WORKDIR.value.rstrip('/')}/{trial.name}"
      plan, why = sweeps.trial_plan(sweep, Path(_WORKDIR.value) / trial.name, steps[trial.name])
      if plan == "skip":
        skipped += 1
        print(f"{trial.name}: finished (would be skipped)")
      elif plan == "evaluate":
        print(f"{trial.name}: finished; evaluated again ({why}), not trained: "
              f"{shlex.join(sweeps.evaluate_command(sweep, workdir))}")
      else:
        if why:
          print(f"{trial.name}: {why}: training continues")
        print(f"{trial.name}: {shlex.join(sweeps.train_command(sweep, trial, workdir))}")
        if sweep.evaluate:
          print(f"  then: {shlex.join(sweeps.evaluate_command(sweep, workdir))}")
    print(f"{len(sweep.trials)} trials, " + ("each evaluated after training" if sweep.evaluate else "no evaluation")
          + (f"; {skipped} finished (would be skipped)" if skipped else ""))
    sweeps.check_not_interrupted()
    return
  status = sweeps.run_sweep(sweep, _WORKDIR.value, jobs=_JOBS.value)
  failed = [name for name, record in status.items() if record["status"] == "failed"]
  print(f"{len(status) - len(failed)} of {len(status)} trials finished"
        f"{'; failed: ' + ', '.join(failed) if failed else ''}; sweep index: {_WORKDIR.value}/sweep.json")
  if failed:
    raise SystemExit(1)


def run():
  sys.argv = expand_home_flags(sys.argv, remote=("repo_dir",))  # --workdir=~/x: the home directory
  sweeps.defer_signals()  # a Ctrl-C while the sweep loads stops it before its first trial (never lost)
  flags.mark_flags_as_required(["sweep", "workdir"])
  try:
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:  # (signals are deferred from the start of run: only a caller's own raise gets here)
    print("error: interrupted before any trial started", file=sys.stderr, flush=True)
    exit_now(128 + signal.SIGINT)


if __name__ == "__main__":
  interrupts.run_command(run)  # (as launch.py's)
