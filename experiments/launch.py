"""The console scripts: each records Ctrl-C from its first line (research/interrupts.py), before it imports its
command (JAX's imports take seconds), and the ones whose processes run XLA (research-train, research-evaluate,
research-analyze) then restart with huge pages (`hugepages.maybe_reexec`). A console script imports the module it
names before calling it: naming `experiments.train:run` itself made the imports (JAX's, ~2 s) twice, once in the
process the restart replaces, and left a Ctrl-C during them to Python's default handling (a traceback, or lost in a
callback that swallows it). `python -m experiments.train` does the same at the top of the module instead.
"""

import signal

from research import hugepages, interrupts


def _restart_then(module: str) -> None:
  interrupts.record()  # a Ctrl-C from here on is raised once the command can end in one line
  hugepages.maybe_reexec()
  _run(module)


def _run(module: str) -> None:
  import importlib
  # (then interrupts.done: a signal in the interpreter's shutdown does not end a finished command)
  interrupts.run_command(importlib.import_module(f"experiments.{module}").run)


def train() -> None:
  _restart_then("train")


def evaluate() -> None:
  _restart_then("evaluate")


def analyze() -> None:
  _restart_then("analyze")


def vectors() -> None:
  interrupts.record()
  _run("vectors")


def report() -> None:
  interrupts.record()
  _run("report")


def sweep() -> None:
  interrupts.record((signal.SIGINT, signal.SIGTERM), even_ignored=True)  # as sweeps.defer_signals, from here on
  _run("sweep")


def quickstart() -> None:
  interrupts.record((signal.SIGINT, signal.SIGTERM), even_ignored=True)
  _run("quickstart")
