"""The evaluation's user error, shared by its modules (and public as `extrapolation.EvaluationError`)."""


class EvaluationError(ValueError):
  """A user error: a directory that is not a finished or checkpointed run, a bad length, mode or option."""
