"""research/interrupts.py in this process: a SIGINT is recorded until the command delivers it, then raised; one whose
KeyboardInterrupt was swallowed is raised again by `check`; an ignored SIGINT stays ignored."""

import os
import signal
import sys
from pathlib import Path

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


def test_held_raises_a_signal_that_came_inside_it_after_it(fresh_state):
  """A KeyboardInterrupt inside a lazy import left half a module ("module 'jax' has no attribute 'core'")."""
  interrupts.record()
  interrupts.deliver()
  inside = []
  with pytest.raises(KeyboardInterrupt):
    with interrupts.held():
      _interrupt_self()  # not raised here
      inside.append("finished")
  assert inside == ["finished"]


def test_deliver_raises_for_the_signals_it_is_given_only(fresh_state):
  """research-quickstart's report: SIGTERM as well as SIGINT ends it in one line (it used to end by SIGTERM, no line)."""
  previous = signal.getsignal(signal.SIGTERM)
  try:
    interrupts.record((signal.SIGINT, signal.SIGTERM))
    interrupts.deliver((signal.SIGINT,))
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):
      pass
    assert interrupts.RECEIVED == [signal.SIGTERM]  # recorded, not raised
    with pytest.raises(KeyboardInterrupt):
      interrupts.deliver((signal.SIGINT, signal.SIGTERM))
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_a_sigint_across_the_huge_pages_restart_waits_for_the_new_process_to_record_it(tmp_path):
  """The restart (os.execve) started a second interpreter, whose start-up turned a Ctrl-C into a traceback (or
  "Fatal Python error: init_import_site"). Blocked across it, the signal is pending in the new process until its
  `record` unblocks it, and is then recorded, not lost."""
  import subprocess
  script = tmp_path / "restart.py"
  script.write_text(
      "import os, signal, sys\n"
      "from research import interrupts\n"
      "if len(sys.argv) == 1:\n"
      "  interrupts.record()\n"
      "  signal.raise_signal(signal.SIGINT)  # recorded in this process\n"
      "  interrupts.hold_across_exec()\n"
      "  os.execv(sys.executable, [sys.executable, __file__, 'restarted'])\n"
      "pending = signal.SIGINT in signal.sigpending()\n"
      "interrupts.record()  # unblocks it: recorded here\n"
      "print(pending, interrupts.RECEIVED == [signal.SIGINT], signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))\n")
  env = {**os.environ, "PYTHONPATH": str(Path(interrupts.__file__).parents[1])}
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
  assert result.returncode == 0 and result.stdout.split() == ["True", "True", "False"], result.stderr[-2000:]


def test_every_console_script_records_signals_before_it_imports_its_command():
  """A console script imports the module it names before calling it: naming the command's module made its imports
  (JAX's, seconds) run with Python's default handling of Ctrl-C (a traceback, or lost in a swallowing callback;
  research-sweep then trained every trial). Each goes through experiments/launch.py, which records first."""
  import ast
  import configparser
  from experiments import launch
  parser = configparser.ConfigParser()
  parser.read(Path(interrupts.__file__).parents[1] / "setup.cfg")
  scripts = dict(line.split(" = ") for line in parser["options.entry_points"]["console_scripts"].split("\n") if line)
  assert scripts and all(target.startswith("experiments.launch:") for target in scripts.values()), scripts
  tree = ast.parse(Path(launch.__file__).read_text())
  for target in scripts.values():
    function = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == target.split(":")[1])
    first = ast.unparse(function.body[0])
    assert first.startswith(("interrupts.record(", "_restart_then(")), (target, first)


def test_done_ignores_the_recorded_signals_from_then_on(fresh_state):
  """A Ctrl-C in the interpreter's shutdown, after the work was done, ended the command by SIGINT with no line."""
  previous = signal.getsignal(signal.SIGTERM)
  try:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not recorded: left as it is
    interrupts.record()
    interrupts.deliver()
    interrupts.done()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_a_multi_process_command_delivers_a_recorded_ctrl_c_before_the_supervisor_takes_the_signals():
  """The supervisor replaces the recording handler with one that forwards to the trainer: a Ctrl-C recorded before
  it (the first seconds of a multi-process research-train or research-evaluate) was dropped, and the job trained to
  its end with status 0. `deliver` comes first now."""
  import ast
  for name in ("train", "evaluate"):
    source = (Path(interrupts.__file__).parents[1] / "experiments" / f"{name}.py").read_text()
    run = next(f for f in ast.parse(source).body if isinstance(f, ast.FunctionDef) and f.name == "run")
    nodes = sorted((n for n in ast.walk(run) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
    calls = [ast.unparse(n.func) for n in nodes]
    assert calls.index("interrupts.deliver") < calls.index("supervisor.maybe_supervise"), (name, calls)
