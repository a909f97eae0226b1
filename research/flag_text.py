"""What an absl flag parser accepts, in words: the one-line errors of the entry points (experiments/common.py) and of a
sweep file's EVALUATE block (research/sweeps.py) say it the same way. Imports absl alone (no JAX)."""

from __future__ import annotations

from absl import flags


def expected_flag_value(parser: flags.ArgumentParser) -> str | None:
  """What a flag's parser accepts, in words ('an integer', 'true or false', 'one of best, last'), or None."""
  if isinstance(parser, flags.BooleanParser):
    return "true or false"
  if isinstance(parser, flags.EnumParser):
    return f"one of {', '.join(parser.enum_values)}"
  if isinstance(parser, flags.EnumClassParser):
    return f"one of {', '.join(parser.enum_class.__members__)}"
  return getattr(parser, "syntactic_help", None) or None  # 'an integer', 'a positive integer', 'a number', ...
