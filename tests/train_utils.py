"""Helpers for tests that train real (tiny) runs."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from configs import tiny
from research.analysis import positions
from research.train import configuration

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  return configuration.apply_overrides(tiny.get_config(), overrides)


# Variables read when an interpreter starts or a module is imported: a call that sets one to another value than the
# fork server started with runs in a real subprocess (tests/cli_server.py).
_START_VARIABLES = ("PYTHON", "JAX_", "XLA_", "TF_", "GLIBC_", "LD_", "OMP_", "OPENBLAS_", "MKL_", "TPU_", "CUDA_")
SUBPROCESS_ONLY = "RESEARCH_TESTS_SUBPROCESS"  # =1: every call in a subprocess of its own, as before the fork server
_server = None


def _server_process():
  """This process's fork server (tests/cli_server.py), started at the first call, again if it died."""
  global _server
  if _server is None or _server.poll() is not None:
    _server = subprocess.Popen([sys.executable, "-m", "tests.cli_server"], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=dict(os.environ))
    _server.env, _server.pending = dict(os.environ), b""
  return _server


def _reply(server, timeout=None):
  """The server's next reply line as a dict; None when `timeout` seconds pass first."""
  import select
  import time
  deadline = None if timeout is None else time.monotonic() + timeout
  while b"\n" not in server.pending:
    left = None if deadline is None else max(deadline - time.monotonic(), 0)
    if not select.select([server.stdout], [], [], left)[0]:
      return None
    chunk = os.read(server.stdout.fileno(), 65536)
    if not chunk:
      raise RuntimeError("the tests' fork server (tests/cli_server.py) ended")
    server.pending += chunk
  line, server.pending = server.pending.split(b"\n", 1)
  return json.loads(line)


def _forked(module, args, cwd, env, timeout):
  """`python -m module args` run by the fork server: a CompletedProcess, or TimeoutExpired as subprocess.run."""
  import signal
  import tempfile
  server = _server_process()
  with tempfile.TemporaryDirectory() as tmp:
    out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
    for path in (out, err):
      open(path, "w").close()
    request = {"module": module, "args": list(args), "cwd": str(cwd), "env": env, "stdout": out, "stderr": err}
    server.stdin.write(json.dumps(request).encode() + b"\n")
    server.stdin.flush()
    pid = _reply(server)["pid"]
    reply = _reply(server, timeout)
    timed_out = reply is None
    if timed_out:
      os.kill(pid, signal.SIGKILL)
      reply = _reply(server)
    stdout, stderr = (open(path, errors="replace").read() for path in (out, err))
  cmd = [sys.executable, "-m", module, *args]
  if timed_out:
    raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
  return subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(reply["status"]), stdout, stderr)


def cli(*args, env=None, timeout=300, **kwargs):
  """Runs `python -m experiments.train ...` (or another module given as the first arg): in a child of this process's
  fork server (tests/cli_server.py), which skips the interpreter's start and imports, or, when the environment
  changes what those read (`_START_VARIABLES`) or subprocess.run is given other options, in a subprocess."""
  module = args[0] if args and args[0].startswith("experiments.") else "experiments.train"
  args = args[1:] if args and args[0].startswith("experiments.") else args
  full_env = {**os.environ, **(env or {})}
  cwd = kwargs.pop("cwd", ROOT)
  if cwd != ROOT:  # the repository's packages importable from elsewhere too
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH")) if p)
  server_env = _server.env if _server is not None else os.environ
  changed = {k for k in {*full_env, *server_env} if full_env.get(k) != server_env.get(k)}
  forked = not kwargs and os.environ.get(SUBPROCESS_ONLY, "0") == "0"
  if forked and not any(k.startswith(_START_VARIABLES) for k in changed - {"PYTHONPATH"}):
    return _forked(module, args, cwd, full_env, timeout)
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True,
                        text=True, timeout=timeout, **kwargs)


def mark_finished(workdir):
  """Marks `workdir`, where a test wrote a config.json by hand, as a run that trained (summary.json through the
  trainer's writer): a config.json alone is a start that saved nothing, which another config may replace."""
  from research.train import loop
  loop.write_summary(workdir, loop.summary_record(step=2, train_loss=6.0, valid={"loss": 6.0, "ppl": 403.4,
                                                                                   "accuracy": 0.05},
                                                  tokens_seen=2048.0, num_params=1, num_embedding_params=1,
                                                  vocab_size=512, wall_s=1.0))


def read_metrics(workdir, split="train"):
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


def dot_generals(jaxpr) -> list:
  """Every dot_general equation of a jaxpr, including those in nested jaxprs (jit, scan, custom_vjp, ...)."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(eqn)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr wraps a Jaxpr
        if hasattr(sub, "eqns"):
          found += dot_generals(sub)
  return found


def check_pictures(workdir, report, plots):
  """research-analyze --positions wrote the PNGs of `plots` (and no other family's); positions.json is the report."""
  assert report["plots"] == plots
  for png in plots:
    assert (workdir / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  others = {positions.SIMILARITY_PLOT, positions.ROTARY_PLOT, positions.BIAS_PLOT} - set(plots)
  assert not any((workdir / "eval" / png).exists() for png in others)
  assert json.loads((workdir / "eval" / "positions.json").read_text()) == json.loads(json.dumps(report))


def check_attention_bounds(stats, length, heads, batches):
  """Entropy between 0 and log(keys allowed) <= log(length); mean distance between 0 and length − 1."""
  assert stats["batches"] == batches and stats["queries"] > 0
  assert 0 < stats["max_entropy"] <= math.log(length) + 1e-9 and 0 < stats["uniform_mean_distance"] <= length - 1
  for layer in stats["layers"]:
    assert len(layer["entropy"]) == len(layer["mean_distance"]) == heads
    assert all(0 <= e <= stats["max_entropy"] + 1e-6 for e in layer["entropy"])
    assert all(0 <= d <= length - 1 for d in layer["mean_distance"])
