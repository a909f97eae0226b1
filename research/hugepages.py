"""Transparent huge pages for XLA:CPU's buffers (Linux, glibc): 8–21 % more tokens/s on CPU.

XLA:CPU allocates a step's temporary buffers with malloc on every execution. Large blocks are fresh mmap'd memory,
so every step touches its working set (~650 MB for the benchmark model) anew, one 4 KiB page fault at a time:
~160,000 faults and ~0.4 s of kernel time per step on the 2-core benchmark machine. With glibc's tunable
`glibc.malloc.hugetlb=1`, malloc asks for transparent huge pages (`madvise(MADV_HUGEPAGE)`) where the kernel's THP
mode is `madvise`, and the faults drop to ~700 per step (benchmarks/throughput.py, docs/benchmarks.md).

glibc reads tunables only when a process starts, so the training and evaluation entry points re-execute themselves
once with the tunable added to `GLIBC_TUNABLES` (`maybe_reexec`), and the sweep runner gives it to its trials
(`environment`). Nothing happens when the tunable is already set, off Linux/glibc, when the kernel's THP mode is
not `madvise` (with `always` every process already has huge pages, with `never` none can), or with
`RESEARCH_HUGE_PAGES=0`.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Sequence

from research import interrupts

TUNABLE = "glibc.malloc.hugetlb=1"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
OPT_OUT = "RESEARCH_HUGE_PAGES"


def thp_mode(path: str = THP_ENABLED) -> str:
  """The kernel's transparent-huge-page mode ('always', 'madvise' or 'never'); '' when unknown (not Linux)."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return ""
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else ""


def wanted(env: Mapping[str, str], mode: str, libc: str) -> bool:
  """Whether processes started with `env` should get the tunable added."""
  if env.get(OPT_OUT, "1") == "0" or mode != "madvise" or libc != "glibc":
    return False
  return "glibc.malloc.hugetlb" not in env.get("GLIBC_TUNABLES", "")


def environment(env: Mapping[str, str] | None = None, enabled: bool = True) -> dict[str, str]:
  """A copy of `env` (default os.environ) with the tunable appended to GLIBC_TUNABLES where it helps; with
  `enabled=False`, with any `glibc.malloc.hugetlb` setting removed instead (to measure without huge pages)."""
  env = dict(os.environ if env is None else env)
  tunables = [t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t]
  if not enabled:
    tunables = [t for t in tunables if not t.startswith("glibc.malloc.hugetlb")]
  elif wanted({**env, "GLIBC_TUNABLES": ":".join(tunables)}, thp_mode(), platform.libc_ver()[0]):
    tunables.append(TUNABLE)
  if tunables:
    env["GLIBC_TUNABLES"] = ":".join(tunables)
  return env


def maybe_reexec(argv: Sequence[str] | None = None, enabled: bool = True) -> None:
  """Re-executes this Python process with the tunable when it would help (or, with `enabled=False`, without it when
  it is set; see the module docstring); returns otherwise. Call it first thing in a command-line entry point, never
  from library code or tests: `os.execve` replaces the process. `argv` defaults to the interpreter's original
  command line (`sys.orig_argv`), so `python -m experiments.train ...` and the `research-train` console script
  both restart as they were started."""
  env = environment(enabled=enabled)
  if env.get("GLIBC_TUNABLES") == os.environ.get("GLIBC_TUNABLES"):
    return
  argv = list(sys.orig_argv if argv is None else argv)
  sys.stdout.flush()
  sys.stderr.flush()
  interrupts.hold_across_exec()  # a Ctrl-C during the new interpreter's start-up waits for its interrupts.record
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)
