"""A Ctrl-C that is never lost: the commands' signal handling from their first line (docs/training.md, "Resume").

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to be. In the first second of a
command that is often inside an import (an extension's initialisation then fails with an ImportError, or the command
prints a traceback) or inside a callback that swallows exceptions: JAX's gc hook prints "Exception ignored in
_xla_gc_callback" and goes on, and research-train then trained its whole run (a sweep stopped by Ctrl-C waited for it).

So a command records signals from its first line (`record`), raises the KeyboardInterrupt only once its own
`except KeyboardInterrupt` is in place (`deliver`), and its long loops ask `check`, which raises again for a signal
whose KeyboardInterrupt something swallowed. research-sweep records SIGTERM as well (`record`'s `signals`) and
handles both itself. Standard library only: it is imported before anything else.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence

RECEIVED: list[int] = []  # the signals received since `record`, in order
_previous_unraisable = sys.unraisablehook
_raising = False  # set by `deliver`: a SIGINT raises KeyboardInterrupt (as Python's own handler does) once recorded


def _handler(signum, frame) -> None:
  RECEIVED.append(signum)
  if _raising and signum == signal.SIGINT:
    raise KeyboardInterrupt


def record(signals: Sequence[int] = (signal.SIGINT,), even_ignored: bool = False) -> None:
  """From now on, `signals` are recorded in RECEIVED and raise nothing (until `deliver`). A signal the process was
  started with ignored (a shell's background job) stays ignored, as Python leaves it, unless `even_ignored`
  (research-sweep, whose job is to stop its trials on one). Main thread only: elsewhere nothing changes."""
  if threading.current_thread() is not threading.main_thread():
    return
  for sig in signals:
    if even_ignored or signal.getsignal(sig) is not signal.SIG_IGN:
      signal.signal(sig, _handler)
  if sys.unraisablehook is not _unraisable:
    global _previous_unraisable
    _previous_unraisable = sys.unraisablehook
    sys.unraisablehook = _unraisable


def _unraisable(unraisable) -> None:
  """A swallowed KeyboardInterrupt is recorded (and raised again by `check`): no "Exception ignored" traceback for it.
  Any other unraisable exception is reported as before."""
  if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and signal.SIGINT in RECEIVED):
    _previous_unraisable(unraisable)


def deliver() -> None:
  """Call it inside the command's `try: ... except KeyboardInterrupt`: a SIGINT raises KeyboardInterrupt from now on,
  and one recorded earlier raises it now."""
  global _raising
  _raising = True
  check()


def check() -> None:
  """KeyboardInterrupt when a SIGINT came since `record` and the command is delivering them (`deliver`): the
  KeyboardInterrupt raised for it may have been swallowed by a callback. For long loops, once per step; a list
  lookup."""
  if _raising and signal.SIGINT in RECEIVED:
    raise KeyboardInterrupt
