"""A Ctrl-C that is never lost: the commands' signal handling from their first line (docs/training.md, "Resume").

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to be. In the first second of a
command that is often inside an import (an extension's initialisation then fails with an ImportError, or the command
prints a traceback) or inside a callback that swallows exceptions: JAX's gc hook prints "Exception ignored in
_xla_gc_callback" and goes on, and research-train then trained its whole run (a sweep stopped by Ctrl-C waited for it).

So a command records signals from its first line (`record`), raises the KeyboardInterrupt only once its own
`except KeyboardInterrupt` is in place (`deliver`), holds it again around lazy imports (`held`), and its long loops
ask `check`, which raises again for a signal whose KeyboardInterrupt something swallowed. Across the huge-pages
restart (hugepages.maybe_reexec) the signal is blocked, so one that comes while the new interpreter starts waits for
its `record` (`hold_across_exec`); once the command's `run` is over, they are ignored (`done`, by `run_command`:
one in the shutdown would end finished work by the signal). research-sweep records SIGTERM as well (`record`'s `signals`) and handles
both itself. Standard library only: it is imported before anything else.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

RECEIVED: list[int] = []  # the signals received since `record`, in order
_previous_unraisable = sys.unraisablehook
_delivered: frozenset[int] = frozenset()  # set by `deliver`: these raise KeyboardInterrupt once recorded
_raising = False  # False inside `held`


def _handler(signum, frame) -> None:
  RECEIVED.append(signum)
  if _raising and signum in _delivered:
    raise KeyboardInterrupt


def record(signals: Sequence[int] = (signal.SIGINT,), even_ignored: bool = False) -> None:
  """From now on, `signals` are recorded in RECEIVED and raise nothing (until `deliver`). A signal the process was
  started with ignored (a shell's background job) stays ignored, as Python leaves it, unless `even_ignored`
  (research-sweep, whose job is to stop its trials on one). One blocked across a restart (`hold_across_exec`)
  arrives now. Main thread only: elsewhere nothing changes."""
  if threading.current_thread() is not threading.main_thread():
    return
  for sig in signals:
    if even_ignored or signal.getsignal(sig) is not signal.SIG_IGN:
      signal.signal(sig, _handler)
  if sys.unraisablehook is not _unraisable:
    global _previous_unraisable
    _previous_unraisable = sys.unraisablehook
    sys.unraisablehook = _unraisable
  signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def _unraisable(unraisable) -> None:
  """A swallowed KeyboardInterrupt is recorded (and raised again by `check`): no "Exception ignored" traceback for it.
  Any other unraisable exception is reported as before."""
  if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and set(RECEIVED) & _delivered):
    _previous_unraisable(unraisable)


def deliver(signals: Sequence[int] = (signal.SIGINT,)) -> None:
  """Call it inside the command's `try: ... except KeyboardInterrupt`: `signals` (recorded ones: `record`) raise
  KeyboardInterrupt from now on, and one recorded earlier raises it now."""
  global _delivered, _raising
  _delivered, _raising = frozenset(signals), True
  check()


@contextlib.contextmanager
def held() -> Iterator[None]:
  """Around a lazy import (JAX's takes seconds): a signal inside is recorded, and its KeyboardInterrupt raised after
  the import, not inside it (a KeyboardInterrupt there leaves half a module: "module 'jax' has no attribute ...")."""
  global _raising
  before, _raising = _raising, False
  try:
    yield
  finally:
    _raising = before
  check()


def check() -> None:
  """KeyboardInterrupt when a delivered signal came since `record` (`deliver`): the KeyboardInterrupt raised for it
  may have been swallowed by a callback. For long loops, once per step; a set lookup."""
  if _raising and set(RECEIVED) & _delivered:
    raise KeyboardInterrupt


def done() -> None:
  """The command's work is over (its `run` returned or raised): the signals it records are ignored from now on, so
  that one landing in the interpreter's shutdown (JAX's and Orbax's teardown) no longer ends a finished command by
  the signal, with no line (status 130 for work that completed)."""
  for sig in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(sig) is _handler:
      signal.signal(sig, signal.SIG_IGN)


def run_command(run: Callable[[], None]) -> None:
  """A command's `run` (the console script's, experiments/launch.py, or `python -m`'s), then `done` however it ends."""
  try:
    run()
  finally:
    done()


def hold_across_exec() -> None:
  """Just before os.execve, when this process records SIGINT (`record`): SIGINT is blocked, so that one sent while
  the new interpreter starts stays pending (the mask and the calling thread's pending signals survive execve) until
  its own `record` unblocks it, instead of a traceback from the interpreter's start-up; one recorded here is raised
  again, blocked, to be pending there. Otherwise nothing."""
  if signal.getsignal(signal.SIGINT) is not _handler:
    return
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  if signal.SIGINT in RECEIVED:
    signal.raise_signal(signal.SIGINT)
