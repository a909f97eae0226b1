"""A fork server for the tests' command-line calls (`tests.train_utils.cli`): `python -m experiments.X ARGS`, minus
the interpreter's start and the ~2 s of imports (JAX, Flax, Optax, Orbax, gensim, the library) every such process
spends before its first line of its own (docs/benchmarks.md, "Where the time goes now").

The server imports those modules once and then does nothing else: no JAX backend, no flags, no thread of its own. For
each call it forks a child, which takes the call's working directory, environment, argv, stdin (/dev/null) and
output files, then runs the command's module as `__main__` (`runpy`, as `python -m` does) and ends the way that
process would: through the interpreter's own exit (atexit handlers, its exit-time warnings and all). What the child
runs is the command's real code from its first line; only modules already imported are not imported again. So
`cli` falls back to a real subprocess where that could differ: a call whose environment changes a variable read at
interpreter start or at import (PYTHON*, JAX_*, XLA_*, GLIBC_TUNABLES, thread settings).

Protocol (one call at a time, newline-delimited JSON on stdin/stdout): the request {"module", "args", "cwd", "env",
"stdout", "stderr"} gets {"pid"} at once and {"status"} (os.waitpid's) when the child has ended.
"""

import json
import os
import sys

# What every command imports before its own code: the library and its dependencies (and with them JAX, Flax, Optax,
# Orbax, tokenizers, gensim, tensorboardX). Not the entry modules: each defines its absl flags when imported.
PRELOAD = ("research.train.loop", "research.evaluate.extrapolation", "research.evaluate.by_position",
           "research.sweeps", "research.supervisor", "research.analysis.quality", "research.embeddings.train_vectors",
           "research.report", "experiments.common")


def _child(request: dict) -> None:
  """In the forked child: become `python -m MODULE ARGS` in the request's directory and environment, and run it."""
  import runpy
  for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_TRUNC),
                          (2, request["stderr"], os.O_WRONLY | os.O_TRUNC)):
    f = os.open(path, flags)
    os.dup2(f, fd)
    os.close(f)
  os.chdir(request["cwd"])
  os.environ.clear()
  os.environ.update(request["env"])
  sys.path[0] = request["cwd"]  # `python -m` puts the working directory first, then PYTHONPATH's entries
  sys.path[1:1] = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
  sys.argv = ["-m", *request["args"]]  # runpy replaces argv[0] with the module's file, as `python -m` does
  sys.orig_argv = [sys.executable, "-m", request["module"], *request["args"]]  # a restart runs this command line
  runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


def serve() -> None:
  for name in PRELOAD:
    __import__(name)
  for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      _child(request)  # an exception or sys.exit ends the child through the interpreter's exit, as the command's
      return
    print(json.dumps({"pid": pid}), flush=True)
    print(json.dumps({"status": os.waitpid(pid, 0)[1]}), flush=True)


if __name__ == "__main__":
  serve()
