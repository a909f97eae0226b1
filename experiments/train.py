r"""Train (or resume) one run.

  research-train --config=configs/clm.py --workdir=runs/clm [--config.model.position=alibi ...]
  python -m experiments.train --config=configs/tiny.py --workdir=/tmp/run

Rerunning the same command in the same workdir resumes from the latest checkpoint. In a multi-process job the
command runs the trainer under a supervisor (research/supervisor.py): when a process is lost, the others end with one
line naming it (exit status 3) instead of hanging or printing the runtime's C++ report.
"""

from research import hugepages, interrupts

if __name__ == "__main__":  # `python -m`: restart first, before the imports below (JAX's) are made twice
  interrupts.record()  # a Ctrl-C from here on is raised once the command can end in one line (`run`)
  hugepages.maybe_reexec()

import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.common import (check_config_file, check_override_flags, check_repeated_flags, end_interrupted,
                                expand_home_flags, parse_flags, run_main, with_shipped_config)
from research import supervisor
from research.error_text import unwritable
from research.train import configuration, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file with get_config().",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed when it holds a run).")


def check_workdir_creatable(workdir: str) -> None:
  """One line naming --workdir when a workdir that does not exist cannot be created: its nearest existing parent is a
  file, or no directory can be made there (`/proc/x`: the trainer's mkdir said only `[Errno 2] No such file or
  directory: '/proc/x'`). An existing workdir is research.train.loop's to check; a URL too."""
  path = Path(workdir).absolute()
  if configuration.is_url(workdir) or path.exists():
    return
  for link in (path, *path.parents):  # a link to nothing: exists() is False, and mkdir fails (File exists)
    if link.is_symlink() and not link.exists():
      raise configuration.ConfigError(f"--workdir={workdir!r} cannot be created: {str(link)!r} is a symbolic link "
                                      f"to {os.readlink(link)!r}, which does not exist")
  parent = next(p for p in path.parents if p.exists())
  if not parent.is_dir():
    raise configuration.ConfigError(f"--workdir={workdir!r} cannot be created: {str(parent)!r} is a file, not a "
                                    f"directory")
  why = unwritable(parent)
  if why:
    raise configuration.ConfigError(f"--workdir={workdir!r} cannot be created: no directory can be made in "
                                    f"{str(parent)!r} ({why})")


@run_main
def main(argv):
  if len(argv) > 1:
    raise configuration.ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)  # Orbax logs every save (and saves without metrics) at INFO/WARNING
  loop.quiet_storage_failures()  # a full disk: the one line, not Orbax's thread tracebacks before it
  check_workdir_creatable(_WORKDIR.value)
  summary = loop.train(_CONFIG.value, _WORKDIR.value)
  print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))


def run():
  hugepages.maybe_reexec()  # first: restarts the process with huge pages for XLA's buffers (Linux)
  sys.argv = expand_home_flags(sys.argv)  # --workdir=~/runs/x: the home directory, not a directory named ~
  sys.argv = with_shipped_config(sys.argv)  # configs/clm.py from any directory (a file here wins)
  check_repeated_flags(sys.argv)  # (again in parse_flags, as every command's): before the config files are read
  check_config_file(sys.argv)
  check_override_flags(sys.argv)
  flags.mark_flags_as_required(["config", "workdir"])
  try:
    interrupts.deliver()  # (a Ctrl-C recorded since the first line is raised here)
    # Multi-process jobs: a lost process ends the others with one line (the supervisor exits here). After `deliver`:
    # the supervisor's own handlers forward later signals to the trainer, and would drop one recorded before.
    supervisor.maybe_supervise()
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:
    end_interrupted("the checkpoints written so far are kept (a new workdir stopped before its run started is "
                    "removed): rerun the same command to resume from the last one, or start")


if __name__ == "__main__":
  interrupts.run_command(run)  # (as launch.py's)
