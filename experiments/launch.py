"""The console scripts of the commands that restart with huge pages (research-train, research-evaluate,
research-analyze): each restarts first (`hugepages.maybe_reexec`), then imports its command. A console script imports
the module it names before calling it, so naming `experiments.train:run` itself made the imports (JAX's, ~2 s) twice,
once in the process the restart replaces. `python -m experiments.train` restarts at the top of the module instead.
"""

from research import hugepages, interrupts


def _restart_then(module: str) -> None:
  hugepages.maybe_reexec()
  interrupts.record()  # a Ctrl-C during the imports below is raised once the command can end in one line
  import importlib
  importlib.import_module(f"experiments.{module}").run()


def train() -> None:
  _restart_then("train")


def evaluate() -> None:
  _restart_then("evaluate")


def analyze() -> None:
  _restart_then("analyze")
