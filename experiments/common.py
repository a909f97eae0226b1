"""What every entry point shares: one clear line for user errors, no traceback."""

from __future__ import annotations

import sys
from typing import Callable

from research.analysis.quality import AnalysisError
from research.data.corpora import CorpusError
from research.embeddings.pretrained import PretrainedError
from research.embeddings.train_vectors import VectorsError
from research.evaluate.extrapolation import EvaluationError
from research.report import ReportError
from research.train.configuration import ConfigError
from research.train.loop import NonFiniteError

USER_ERRORS = (ConfigError, CorpusError, NonFiniteError, EvaluationError, ReportError, PretrainedError, VectorsError,
               AnalysisError,
               FileNotFoundError, NotADirectoryError)


def check_override_flags(argv: list[str]) -> None:
  """Unknown `--config.FIELD=...` names fail here with one line (ml_collections would raise with a traceback)."""
  from research.train import configuration
  overrides = {}
  for arg in argv[1:]:
    if arg.startswith("--config."):
      name, _, value = arg[len("--config."):].partition("=")
      overrides[name] = value
  try:
    valid = configuration.flatten(configuration.reference_config())
    for name in overrides:
      if name not in valid:
        configuration.apply_overrides(configuration.reference_config(), {name: None})  # raises with the list
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run_main(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps an absl main: a user error prints `error: <message>` on stderr and exits with status 2."""

  def wrapped(argv):
    try:
      main(argv)
    except USER_ERRORS as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapped
