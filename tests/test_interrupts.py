"""research/interrupts.py in this process: a SIGINT is recorded until the command delivers it, then raised; one whose
KeyboardInterrupt was swallowed is raised again by `check`; an ignored SIGINT stays ignored."""

import os
import signal
import sys

import pytest

from research import interrupts


@pytest.fixture
def fresh_state(monkeypatch):
  """The module's state as a command starts, and this process's SIGINT handler restored afterwards."""
  previous = signal.getsignal(signal.SIGINT)
  monkeypatch.setattr(interrupts, "RECEIVED", [])
  monkeypatch.setattr(interrupts, "_raising", False)
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
  monkeypatch.setattr(interrupts, "_previous_unraisable", interrupts._previous_unraisable)
  yield
  signal.signal(signal.SIGINT, previous)


def _interrupt_self() -> None:
  os.kill(os.getpid(), signal.SIGINT)
  for _ in range(1000):  # the handler runs between bytecodes of the main thread
    pass


def test_a_sigint_before_deliver_is_recorded_and_raised_by_deliver(fresh_state):
  interrupts.record()
  _interrupt_self()  # nothing raised: the command is still importing
  assert interrupts.RECEIVED == [signal.SIGINT]
  with pytest.raises(KeyboardInterrupt):
    interrupts.deliver()


def test_after_deliver_a_sigint_raises_and_a_swallowed_one_is_raised_again_by_check(fresh_state):
  interrupts.record()
  interrupts.deliver()
  interrupts.check()  # none yet
  with pytest.raises(KeyboardInterrupt):
    _interrupt_self()

  class Swallows:
    def __del__(self):  # Python prints "Exception ignored in ..." and goes on, as JAX's gc hook does
      _interrupt_self()

  interrupts.RECEIVED.clear()
  reported = []
  sys.unraisablehook = reported.append  # (pytest's own, which warns)
  interrupts.record()
  Swallows()
  assert interrupts.RECEIVED == [signal.SIGINT] and reported == []  # no "Exception ignored" report for it
  with pytest.raises(KeyboardInterrupt):
    interrupts.check()

  class Fails:
    def __del__(self):
      raise ValueError("another error")

  Fails()
  assert [type(r.exc_value) for r in reported] == [ValueError]  # others are reported as before


def test_an_ignored_sigint_stays_ignored_unless_asked(fresh_state):
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # a shell's background job
  interrupts.record()
  assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  interrupts.record((signal.SIGINT,), even_ignored=True)  # research-sweep
  _interrupt_self()
  assert interrupts.RECEIVED == [signal.SIGINT]
