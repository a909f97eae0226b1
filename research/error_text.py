"""Exceptions in one line, for the one-line errors of every entry point: a library's exception as its type and the
first line of its message (`first_line`), and where a user's Python file (a config file, a sweep file) failed
(`file_error`), and why a directory cannot be written (`unwritable`). experiments/common.py, research/sweeps.py,
research/train/loop.py and the evaluator word them the same way through these. Standard library only (no JAX)."""

from __future__ import annotations

import os
import traceback


def first_line(error: BaseException, limit: int | None = None) -> str:
  """'Type: the first line of its message' (or 'Type' alone), the message cut at `limit` characters with '...'."""
  text = (error.msg if isinstance(error, SyntaxError) else str(error)).strip().splitlines()
  if not text:
    return type(error).__name__
  line = text[0] if limit is None or len(text[0]) <= limit else text[0][:limit] + "..."
  return f"{type(error).__name__}: {line}"


def unwritable(directory: str | os.PathLike) -> str | None:
  """Why no file can be created in the existing directory `directory` (its OSError's strerror: "Permission
  denied", "Read-only file system"), or None when one can. A real file is created and removed there: permission
  bits say nothing for root, or on a read-only mount. The one probe behind every entry point's "is not writable"
  line (research-train/evaluate/analyze, research-report, research-vectors), each worded for its own flag."""
  import tempfile
  try:
    tempfile.TemporaryFile(dir=directory).close()
  except OSError as e:
    return e.strerror or str(e)
  return None


def _same_file(a: str | os.PathLike | None, b: str | os.PathLike) -> bool:
  return a is not None and os.path.realpath(a) == os.path.realpath(b)


def file_error(path: str | os.PathLike, error: BaseException) -> str:
  """'line N: Type: message' for `error` raised while running the file `path`: N is the innermost line of that file
  in the traceback (the line of a SyntaxError in it), left out when the file is not in the traceback; the message's
  first line only."""
  line = error.lineno if isinstance(error, SyntaxError) and _same_file(error.filename, path) else None
  for frame in traceback.extract_tb(error.__traceback__):
    if _same_file(frame.filename, path):
      line = frame.lineno
  return (f"line {line}: " if line else "") + first_line(error)
