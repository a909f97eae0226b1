"""Shared test settings: one corpus/tokenizer/token cache for the whole run (and its xdist workers)."""

import os
import tempfile

# The data layer writes its caches atomically, so concurrent workers can share one directory; a fresh CI machine
# builds the default corpus once (about 10 s) instead of once per test.
os.environ.setdefault("RESEARCH_CACHE_DIR", os.path.join(tempfile.gettempdir(), "research-test-cache"))

# JAX's persistent compilation cache, for this process, its xdist workers and every CLI subprocess they start: the
# suite compiles the same tiny train steps, evaluators and models again and again (a new jit closure per test, a new
# process per CLI call), and a hit skips XLA's compilation. Keys are hashes of the compiled program, its options and
# the backend, so a hit runs the same executable a fresh compile would build. Measured on a 2-core AMD EPYC (CPU
# family 25), starting from an empty cache: tests/test_model.py 280 s -> 142 s; docs/benchmarks.md has the suite.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "research-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Subprocesses (the CLI tests) start with huge pages for XLA's buffers, as a sweep's trials do, instead of
# restarting themselves for them (research/hugepages.py; its own tests cover the restart).
from research import hugepages  # noqa: E402

os.environ.update(hugepages.environment())

# The Ctrl-C tests send SIGINT to this process and to the commands it starts, as a terminal does. A suite started
# with SIGINT ignored (a shell's background job: `pytest &`) passes that on to every child, and a command started so
# keeps ignoring it by design (research/interrupts.py): those tests then waited out their timeouts and failed. Take
# SIGINT back here, as a terminal's pytest has it; the children then start with the default action.
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)
