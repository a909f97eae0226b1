"""Multi-process runs: when a process is lost, every other one ends with one line naming it, instead of a C++ report.

JAX's distributed runtime finds a dead process by its missing heartbeats (`mesh.heartbeat_timeout_s`), or by the
coordinator's closed connection, and then ends every surviving process from one of its own C++ threads: a multi-line
report, a stack trace and `abort()`, which no Python code in that process can catch (the runtime's Python callback for
it cannot even receive its argument in jaxlib 0.10). So in a multi-process job `research-train` runs the trainer as a
child and relays its output (`maybe_supervise`):

- the child's stdout and stdin are this process's; its stderr comes through a pipe and is copied line by line, except
  that from a line that may start such a report (a glog line `F1201 11:40:51.82 ... file.cc:80] ...`, or a Python
  traceback) the lines are held back until `HOLD_S` pass without another one (then they are copied: it was not the
  end) or until the child ends; from a fatal glog line (`F...`, which always ends the process: its stack trace can
  take longer than `HOLD_S` to print on a loaded machine) or the coordination service's "Use error polling to
  propagate" (which ends every process with one) they are held until the child ends;
- when the child ends with the runtime's report (`lost_peer_message` reads it), this process prints instead one line,
  `error: lost process 1 of 2: no heartbeat for mesh.heartbeat_timeout_s seconds; process 0 stops too; rerun every
  process with the same command to resume from the last checkpoint` (research-evaluate's says `... to evaluate
  again`: `RERUN_EVALUATE`), and exits with `LOST_PEER_EXIT` (3); when the
  trainer had printed its own `error: ...` line first (it ended on an error, and the others could not end with it),
  that line stays the last one, with status 2; any other end passes through with the child's own exit status (128 + N
  for a signal N, with one line naming the signal).

The child dies with this process (Linux: `PR_SET_PDEATHSIG`), so a scheduler that kills the process it started also
kills the trainer. Signals INT and TERM are forwarded (the child has a process group of its own, so a Ctrl-C reaches it
once). With the child's stderr a pipe, the progress bar is off; `RESEARCH_SUPERVISE=0` runs the trainer directly (with
JAX's own report when a process is lost).
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from typing import BinaryIO, Mapping, Sequence

from research.train import mesh as mesh_lib

OPT_OUT = "RESEARCH_SUPERVISE"  # "0": no supervisor
CHILD_ENV = "RESEARCH_SUPERVISOR_PID"  # set in the child: the supervisor's pid
LOST_PEER_EXIT = 3
HOLD_S = 10.0
RERUN = "rerun every process with the same command to resume from the last checkpoint"  # research-train's remedy
# research-evaluate's: it writes its files only at its end, so a lost process leaves nothing to resume.
RERUN_EVALUATE = "nothing was written: rerun every process with the same command to evaluate again"

_REPORT_START = re.compile(rb"^([IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]|Traceback \(most recent call last\)|"
                           rb"terminate called after throwing an instance of 'gloo::)")
# glog's fatal line (abort() follows), the coordination service's error that makes every task end with one, and a
# C++ exception out of gloo (std::terminate, then abort()).
_FATAL_LINE = re.compile(rb"^F\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]|.*Use error polling to propagate|"
                         rb"^terminate called after throwing an instance of 'gloo::")
_FATAL = "JAX distributed service detected fatal errors"
_UNHEALTHY = re.compile(r"stopped sending heartbeats\)?:?\s*((?:\d+[ \t,]*\n?)+)")
_TASK = re.compile(r"/task:(\d+)")
_CONNECTION_LOST = ("Socket closed", "failed to connect", "Connection refused", "Connection reset", "UNAVAILABLE")
# A collective that failed because a peer went away: its connection closed, or (a peer killed while it sent) a message
# that arrived torn, which gloo reports as a size mismatch from an uncaught C++ exception. Every process of a job runs
# the same program (`loop.check_same_job`), so a real mismatch of collectives is not what that means here.
_GLOO = re.compile(r"Gloo [\w-]+ failed: .*?(Connection (?:reset|closed) by peer)|"
                   r"gloo::EnforceNotMet.*?(Received data size doesn't match expected size)", re.S)


def wanted(environ: Mapping[str, str] | None = None) -> bool:
  """Whether this process should supervise the trainer: a multi-process job (`mesh.multihost_reason`), not already
  the supervised child, and not turned off with RESEARCH_SUPERVISE=0."""
  env = os.environ if environ is None else environ
  return env.get(OPT_OUT, "1") != "0" and not env.get(CHILD_ENV) and mesh_lib.multihost_reason(env) is not None


def process_identity(environ: Mapping[str, str]) -> tuple[int | None, int | None]:
  """(this process's index, the number of processes) as the cluster's environment gives them, None where unknown."""
  def first(*keys):
    for key in keys:
      try:
        return int(environ[key])
      except (KeyError, ValueError):
        continue
    return None

  count = first("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
  hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if count is None and len(hosts) > 1:
    count = len(hosts)
  return first("JAX_PROCESS_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "TPU_WORKER_ID"), count


def _process(index: int | None, count: int | None) -> str:
  name = "process" if index is None else f"process {index}"
  return name if count is None else f"{name} of {count}"


def _lost_processes(report: str) -> list[int]:
  """The processes a report says stopped sending heartbeats."""
  unhealthy = _UNHEALTHY.search(report)
  if unhealthy:
    return sorted({int(i) for i in re.findall(r"\d+", unhealthy.group(1))})
  return sorted({int(i) for i in _TASK.findall(report)}) if "heartbeat" in report else []


def lost_peer_message(report: str, environ: Mapping[str, str], rerun: str = RERUN) -> str | None:
  """The one line (without 'error: ') for a child that ended with the distributed runtime's report `report` (the
  stderr lines held back at its end), naming the lost process where the report says which; None when `report` is
  not such a report (the child ended for another reason). `rerun` is the command's remedy (`RERUN` resumes a
  training, `RERUN_EVALUATE` scores again)."""
  index, count = process_identity(environ)
  me = f"{'this process' if index is None else f'process {index}'} stops too; {rerun}"
  gloo = _GLOO.search(report)
  if _FATAL not in report and not gloo:
    return None
  lost = _lost_processes(report)
  others = [i for i in lost if i != index]
  if lost and not others:
    return (f"this process ({_process(index, count)}) sent no heartbeat for mesh.heartbeat_timeout_s seconds and "
            f"was declared lost; the others stop too; {rerun}")
  if others:
    of = "" if count is None else f" of {count}"
    names = f"process{'es' if len(others) > 1 else ''} {', '.join(map(str, others))}{of}"
    return f"lost {names}: no heartbeat for mesh.heartbeat_timeout_s seconds; {me}"
  address = environ.get("JAX_COORDINATOR_ADDRESS")
  at = f" at {address}" if address else ""
  if "RegisterTask" in report and "DEADLINE_EXCEEDED" in report:
    # Two processes with one JAX_PROCESS_ID look the same from here: the coordinator counts one of them, and waits.
    every = "all" if count is None else f"all {count}"
    ids = "0 … JAX_NUM_PROCESSES − 1" if count is None else f"0 … {count - 1}"
    return (f"the job did not come together: not {every} processes reached the coordinator{at} within "
            f"mesh.init_timeout_s seconds (is every process started, with the same JAX_COORDINATOR_ADDRESS and its "
            f"own JAX_PROCESS_ID, one of {ids}?)")
  if "Shutdown barrier" in report:
    return (f"the processes did not end together: another one stopped early (its log says why) or could not "
            f"finish within mesh.heartbeat_timeout_s seconds; {me}")
  if index != 0 and "CoordinationService/" in report and any(s in report for s in _CONNECTION_LOST):
    return f"lost the coordinator, {_process(0, count)}{at} (its connection closed); {me}"
  if gloo:  # the collective does not say which peer failed it; in a job of two it can only be the other one
    peer = _process(1 - index, count) if count == 2 and index in (0, 1) else "a peer process"
    return f"lost {peer}: a collective failed ({gloo.group(1) or gloo.group(2)}); {me}"
  status = re.search(r"absl::Status: ([^\n]*)", report)
  return f"the distributed runtime stopped the run ({status.group(1) if status else 'see its log'}); {me}"


def _pump(stream: BinaryIO, lines: queue.Queue) -> None:
  for line in iter(stream.readline, b""):
    lines.put(line)
  lines.put(None)


def relay(stream: BinaryIO, out: BinaryIO, hold_s: float = HOLD_S) -> tuple[bytes, bool]:
  """Copies `stream` to `out` line by line until its end, holding back lines from one that may start a failure
  report (`_REPORT_START`) until `hold_s` seconds pass without another line, and from a fatal glog line
  (`_FATAL_LINE`) until the end. Returns what is held at the end, and whether an `error: ` line (the trainer's own
  one-line error) went through."""
  lines: queue.Queue = queue.Queue()
  threading.Thread(target=_pump, args=(stream, lines), daemon=True).start()
  held: list[bytes] = []
  last, errored, fatal = 0.0, False, False
  while True:
    try:
      line = lines.get(timeout=min(0.5, hold_s))
    except queue.Empty:
      if held and not fatal and time.monotonic() - last > hold_s:
        out.write(b"".join(held))
        out.flush()
        held = []
      continue
    if line is None:
      return b"".join(held), errored
    if held or _REPORT_START.match(line):
      held.append(line)
      last = time.monotonic()
      fatal = fatal or bool(_FATAL_LINE.match(line))
    else:
      errored = errored or line.startswith(b"error: ")
      out.write(line)
      out.flush()


def _libc():
  try:
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
  except OSError:
    return None


# Loaded once, in the parent: research-sweep calls _die_with_parent as a preexec_fn from pool threads, where the forked
# child should do no more than a system call (no dlopen, whose loader lock another thread may have held at the fork).
_LIBC = _libc()


def _die_with_parent(parent_pid: int) -> None:
  """Linux: this process gets SIGKILL when its parent (the supervisor, or research-sweep) dies, however it dies."""
  if _LIBC is None:
    return
  try:
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except AttributeError:
    return
  if os.getppid() != parent_pid:  # the supervisor died before prctl: nobody would stop this process
    os._exit(1)


def supervise(argv: Sequence[str], environ: Mapping[str, str] | None = None, rerun: str = RERUN) -> int:
  """Runs `argv` as the supervised child (see the module docstring) and returns the exit status to end with;
  `rerun` is the remedy a lost process's line names (`lost_peer_message`)."""
  env = {**(os.environ if environ is None else environ), CHILD_ENV: str(os.getpid())}
  child = subprocess.Popen(list(argv), env=env, stderr=subprocess.PIPE, process_group=0)
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda number, frame: child.send_signal(number))
  held, errored = relay(child.stderr, sys.stderr.buffer)
  code = child.wait()
  message = lost_peer_message(held.decode(errors="replace"), env, rerun) if code else None
  if message and errored:
    # The trainer ended on its own error, and the runtime's report came after it (the other processes did not reach
    # the end with it): its one line stays the last word, with the status of an error line.
    return 2
  if message:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return LOST_PEER_EXIT
  sys.stderr.buffer.write(held)
  if code < 0:
    index, count = process_identity(env)
    print(f"error: the supervised command ({_process(index, count)}) was ended by signal {signal.Signals(-code).name}",
          file=sys.stderr, flush=True)
    return 128 - code
  return code


def maybe_supervise(argv: Sequence[str] | None = None, rerun: str = RERUN) -> None:
  """Call it early in a command-line entry point, never from library code. In a multi-process job (`wanted`),
  reruns this command (`argv`, default the interpreter's original command line, as `hugepages.maybe_reexec` does) as
  a supervised child and exits with `supervise`'s status (`rerun`: the command's remedy for a lost process); in
  that child, ties its life to the supervisor's and returns; otherwise returns at once."""
  if os.environ.get(CHILD_ENV):
    _die_with_parent(int(os.environ[CHILD_ENV]))
    return
  if not wanted():
    return
  argv = list(sys.orig_argv if argv is None else argv)
  sys.stdout.flush()
  sys.stderr.flush()
  sys.exit(supervise([sys.executable, *argv[1:]], rerun=rerun))
