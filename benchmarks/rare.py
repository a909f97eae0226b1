"""Speed of the rare-token analyses (research/analysis/rare.py) on a large table: goal < 60 s for 32 768 rows.

  python3 benchmarks/rare.py [--rows 32768] [--dim 256]

A random table with Zipf-distributed counts, an initial table, presence counts and an untied head of the same shape:
the buckets (with the chunked 10-NN search) and the geometry of both tables, as `research-analyze --rare` computes
them (the word benchmarks, which only the word tokenizer gets, are left out). Prints the seconds and the CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", type=int, default=32768)
  p.add_argument("--dim", type=int, default=256)
  args = p.parse_args(argv)
  import numpy as np

  from research.analysis import rare
  rng = np.random.default_rng(0)
  table = rng.normal(scale=args.dim ** -0.5, size=(args.rows, args.dim)).astype(np.float32)
  counts = (1e6 / np.arange(1, args.rows + 1)).astype(np.int64)  # Zipf: 1e6 down to ~30
  counts[-args.rows // 20:] = 0  # and some never seen
  init = table + rng.normal(scale=0.01, size=table.shape).astype(np.float32)
  start = time.perf_counter()
  report = rare.rare_report(table, counts, init_VxD=init, present_V=counts // 100, head_VxD=init)
  seconds = time.perf_counter() - start
  cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.split(":")[-1]
  print(f"{args.rows} x {args.dim}: {seconds:.1f} s ({len(report['buckets'])} buckets, geometry of 2 tables) on "
        f"{cpu.strip()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
