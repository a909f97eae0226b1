r"""The quickstart: a small positional-scheme / tying ablation on the built-in corpus, evaluated at 1×–8× the
training length, with its report — in under 10 minutes on 2 CPU cores.

  research-quickstart [--workdir=runs/quickstart] [--jobs=1]

Equivalent to
  research-sweep --sweep=configs/sweeps/quickstart.py --workdir=runs/quickstart && research-report runs/quickstart
Rerunning skips the trials already finished.
"""

from absl import app, flags

from experiments.common import run_main
from research import sweeps
from research.report import build_report
from research.train.configuration import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Sweep directory.")
_JOBS = flags.DEFINE_integer("jobs", 1, "Trials run at the same time.")
SWEEP = "configs/sweeps/quickstart.py"


@run_main
def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  sweep = sweeps.load_sweep(sweeps.ROOT / SWEEP)
  print(f"quickstart: {len(sweep.trials)} trials of {sweep.base_config} on the built-in corpus -> {_WORKDIR.value}")
  sweeps.run_sweep(sweep, _WORKDIR.value, jobs=_JOBS.value)
  report = build_report(_WORKDIR.value)
  print()
  print(report.table)
  print()
  print(f"report: {report.markdown_path}")
  for path in report.plots.values():
    print(f"plot: {path}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
