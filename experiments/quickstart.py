r"""The quickstart: a small positional-scheme / tying ablation on the built-in corpus, evaluated at 1×–8× the
training length, with its report — in under 10 minutes on 2 CPU cores.

  research-quickstart [--workdir=runs/quickstart] [--jobs=1] [--sweep=configs/sweeps/quickstart.py]

Equivalent to
  research-sweep --sweep=configs/sweeps/quickstart.py --workdir=runs/quickstart && research-report runs/quickstart
Rerunning skips the trials already finished. Exits with status 1 when a trial failed (after printing the report of
the others; the errors are in the report and in sweep.json).
"""

import signal

from research import interrupts

if __name__ == "__main__":  # `python -m`: signals are recorded before the imports below (seconds; launch.py)
  interrupts.record((signal.SIGINT, signal.SIGTERM), even_ignored=True)

import sys

from absl import app, flags

from experiments.common import exit_now, expand_home_flags, parse_flags, run_main
from research import sweeps
from research.report import build_report
from research.train.configuration import ConfigError

SWEEP = "configs/sweeps/quickstart.py"
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Sweep directory.")
_JOBS = flags.DEFINE_integer("jobs", 1, "Trials run at the same time.")
# Lets a test (or a user) run this same entry point on another, e.g. tiny, sweep.
_SWEEP = flags.DEFINE_string("sweep", SWEEP, "Sweep file.")


@run_main  # a SweepInterrupted (Ctrl-C or SIGTERM; sweep.json says which trials stopped): its line, 128 + signal
def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _JOBS.value < 1:
    raise ConfigError(f"--jobs={_JOBS.value} must be >= 1")
  sweep = sweeps.load_sweep(_SWEEP.value, directory=_WORKDIR.value or None)
  sweeps.check_directory(_WORKDIR.value)
  sweeps.check_not_interrupted()
  base = sweeps.load_base_config(sweep.base_config)
  corpora = list(dict.fromkeys(str(sweeps.trial_config(sweep, t, base).data.corpus) for t in sweep.trials))
  print(f"quickstart: {len(sweep.trials)} trials of {sweep.base_config} on {', '.join(corpora)} -> {_WORKDIR.value}")
  status = sweeps.run_sweep(sweep, _WORKDIR.value, jobs=_JOBS.value)
  # The report: a Ctrl-C or a TERM ends it at once (a KeyboardInterrupt: one line in `run`, 128 + the signal). Both
  # are recorded since `run` (sweeps.defer_signals; stopping_on_signals put that handler back).
  interrupts.deliver((signal.SIGINT, signal.SIGTERM))
  report = build_report(_WORKDIR.value)
  print()
  print(report.table)
  print()
  print(f"report: {report.markdown_path}")
  for path in report.plots.values():
    print(f"plot: {path}")
  failed = [name for name, record in status.items() if record["status"] == "failed"]
  if failed:
    print(f"error: {len(failed)} of {len(status)} trials failed ({', '.join(failed)}); their errors are in "
          f"{report.markdown_path} and {_WORKDIR.value}/sweep.json", file=sys.stderr)
    sys.exit(1)


def run():
  sys.argv = expand_home_flags(sys.argv)  # --workdir=~/runs/x: the home directory, not a directory named ~
  sweeps.defer_signals()  # a Ctrl-C while the sweep loads stops it before its first trial (never lost)
  try:
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:  # during the report: the trials are done, the report is written again by a rerun
    signum = interrupts.RECEIVED[-1] if interrupts.RECEIVED else signal.SIGINT
    by = "" if signum == signal.SIGINT else f" by {sweeps.signal_text(signum)}"
    print(f"error: interrupted{by} while writing the report; rerun the command to write it", file=sys.stderr,
          flush=True)
    exit_now(128 + signum)


if __name__ == "__main__":
  interrupts.run_command(run)  # (as launch.py's)
