r"""Write an ablation report for a sweep (or run) directory.

  research-report runs/positions
  python -m experiments.report runs/positions

Writes DIR/report.md, DIR/table.csv, DIR/table.tex and PNG plots, prints the table and the paths written. A missing,
empty, foreign or unwritable directory, or a malformed run file, prints `error: <message>` and exits with status 2.
"""

from research import interrupts

if __name__ == "__main__":  # `python -m`: a Ctrl-C is recorded before the imports below (seconds; launch.py)
  interrupts.record()

import signal
import sys

from absl import app

from experiments.common import end_interrupted, parse_flags
from research.report import ReportError, build_report
from research.report.runs import display

USAGE = "usage: research-report DIR (a sweep directory with sweep.json, a directory of runs, or one run)"


def main(argv):
  if len(argv) != 2:
    print(f"error: {USAGE}", file=sys.stderr)
    sys.exit(2)
  if not argv[1].strip():  # "" reads as the current directory, where the report's files would be written
    print(f"error: DIR is empty; {USAGE}", file=sys.stderr)
    sys.exit(2)
  try:
    report = build_report(argv[1])
  except ReportError as e:
    print(display(f"error: {e}"), file=sys.stderr)
    sys.exit(2)
  print(report.table)
  print()  # paths as report.md shows names: undecodable bytes escaped (`runs.display`), printable on any stdout
  print(display(f"report: {report.markdown_path}"))
  print(display(f"tables: {report.csv_path} {report.latex_path}"))
  for path in report.plots.values():
    print(display(f"plot: {path}"))
  for name, reason in report.skipped.items():
    print(display(f"skipped {name}: {reason}"))


def run():
  if hasattr(signal, "SIGPIPE"):  # `research-report DIR | head` ends quietly
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
  try:
    interrupts.deliver()  # (a Ctrl-C recorded since the first line is raised here)
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:
    end_interrupted("no file is left half-written; rerun the command to write the report")


if __name__ == "__main__":
  interrupts.run_command(run)  # (as launch.py's)
