r"""Peak memory of length-extrapolation evaluation at long windows.

  python benchmarks/eval_memory.py [--schemes=none,sinusoidal,rope,alibi,t5] [--length=4096] [--json]

Builds the benchmark model (V=8192, d=256, 4 layers, 4 heads, trained length 256), and scores a synthetic token
stream of 3 windows at `--length` through the real evaluation path (`research.evaluate.extrapolation
.split_perplexity`), each scheme in a fresh process, and reports the process's peak RSS. Goal (issue): under 4 GB
at 16 × 256 = 4096 tokens.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SCHEMES = ["none", "sinusoidal", "rope", "alibi", "t5"]


def measure(scheme: str, length: int) -> dict:
  import jax
  import ml_collections
  import numpy as np

  from research.evaluate import extrapolation
  from research.model.config import ModelConfig
  from research.model.transformer import Transformer

  cfg = ModelConfig(vocab_size=8192, d_model=256, num_layers=4, num_heads=4, mlp_dim=1024, position=scheme,
                    max_len=256, attention="xla")
  params = jax.jit(Transformer(cfg).init)(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
  config = ml_collections.ConfigDict({"objective": "clm", "seed": 0, "data": {
      "mlm_select_rate": 0.15, "mlm_mask_rate": 0.8, "mlm_random_rate": 0.1}})
  run = extrapolation.LoadedRun(config, cfg, params, 0, {})
  ids = np.random.default_rng(0).integers(5, 8192, 3 * length + 1).astype(np.uint16)
  start = time.perf_counter()
  ppl, tokens = extrapolation.split_perplexity(run, cfg, ids, length)
  seconds = time.perf_counter() - start
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return {"scheme": scheme, "length": length, "tokens": tokens, "ppl": ppl, "seconds": seconds,
          "peak_rss_mb": peak_mb}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--schemes", default=",".join(SCHEMES))
  parser.add_argument("--length", type=int, default=4096)
  parser.add_argument("--json", action="store_true")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(args.child, args.length)))
    return
  rows = []
  for scheme in args.schemes.split(","):
    out = subprocess.run([sys.executable, __file__, f"--child={scheme}", f"--length={args.length}"],
                         capture_output=True, text=True, check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  if args.json:
    for row in rows:
      print(json.dumps(row))
    return
  print(f"{'scheme':<11} {'length':>6} {'tokens':>7} {'eval s':>7} {'peak RSS MB':>12}")
  for r in rows:
    print(f"{r['scheme']:<11} {r['length']:>6} {r['tokens']:>7} {r['seconds']:>7.1f} {r['peak_rss_mb']:>12.0f}")


if __name__ == "__main__":
  main()
