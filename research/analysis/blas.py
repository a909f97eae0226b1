"""One BLAS thread for small dense linear algebra: the d × d eigenproblems and Gram matrices of the geometry figures.

OpenBLAS parallelises LAPACK's symmetric eigensolvers as many small level-2 calls, each ending in a barrier where
its threads spin. On a 2-core machine that other jobs keep busy, a barrier waits for a descheduled thread: numpy's
`eigvalsh` of a 512 × 512 matrix took 9.3 s with OpenBLAS's 2 threads and 0.04 s with one (docs/benchmarks.md).
`one_thread()` sets every OpenBLAS the process has loaded (numpy and scipy each bring their own copy) to one thread
for the duration of a block and then restores each one's previous count. It finds them by their exported
`*openblas_set_num_threads*` symbols in the shared objects listed in /proc/self/maps; where there are none (another
BLAS, another platform) it does nothing, and the results never depend on it (only the speed does).
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Iterator

# (setter, getter) symbol pairs: scipy-openblas wheels (64-bit and 32-bit integers), then plain OpenBLAS builds.
_SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
            ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
            ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
            ("openblas_set_num_threads", "openblas_get_num_threads"))


def _loaded_openblas() -> list[tuple]:
  """[(set_num_threads, get_num_threads)] of every OpenBLAS loaded in this process."""
  try:
    with open("/proc/self/maps") as f:
      paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
  except OSError:
    return []
  found = []
  for path in paths:
    try:
      lib = ctypes.CDLL(path)  # already loaded: this only looks its symbols up
    except OSError:
      continue
    for setter, getter in _SYMBOLS:
      if hasattr(lib, setter) and hasattr(lib, getter):
        found.append((getattr(lib, setter), getattr(lib, getter)))
        break
  return found


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
  """Within the block, every loaded OpenBLAS runs on one thread (see the module docstring)."""
  libs = _loaded_openblas()
  previous = [get() for _, get in libs]
  for set_threads, _ in libs:
    set_threads(1)
  try:
    yield
  finally:
    for (set_threads, _), n in zip(libs, previous):
      set_threads(n)
