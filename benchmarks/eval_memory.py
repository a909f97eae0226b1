r"""Peak memory of length-extrapolation evaluation at long windows.

  python benchmarks/eval_memory.py [--schemes=none,sinusoidal,rope,alibi,t5] [--length=4096]
                                   [--attention=einsum|xla] [--json]

Builds the benchmark model (V=8192, d=256, 4 layers, 4 heads, trained length 256), and scores a synthetic token
stream of 3 windows at `--length` through the real evaluation path (`research.evaluate.extrapolation
.split_perplexity`), each scheme in a fresh process, and reports the process's peak RSS. Goal (issue): under 4 GB
at 16 × 256 = 4096 tokens. `--attention` defaults to the model's default (einsum), i.e. what research-evaluate runs
on a run trained with the default config.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SCHEMES = ["none", "sinusoidal", "rope", "alibi", "t5"]


def measure(scheme: str, length: int, attention: str) -> dict:
  import jax
  import numpy as np

  from research import schema
  from research.evaluate import extrapolation
  from research.model.config import ModelConfig
  from research.model.transformer import Transformer

  cfg = ModelConfig(vocab_size=8192, d_model=256, num_layers=4, num_heads=4, mlp_dim=1024, position=scheme,
                    max_len=256, attention=attention)
  params = jax.jit(Transformer(cfg).init)(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
  config = schema.get_config()  # the library's defaults (CLM, continuous document positions, ...)
  config.objective, config.seed = "clm", 0
  run = extrapolation.LoadedRun(config, cfg, params, 0, {})
  ids = np.random.default_rng(0).integers(5, 8192, 3 * length + 1).astype(np.uint16)
  start = time.perf_counter()
  ppl, tokens = extrapolation.split_perplexity(run, cfg, ids, length)
  seconds = time.perf_counter() - start
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return {"scheme": scheme, "length": length, "attention": attention, "tokens": tokens, "ppl": ppl,
          "seconds": seconds, "peak_rss_mb": peak_mb}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--schemes", default=",".join(SCHEMES))
  parser.add_argument("--length", type=int, default=4096)
  # The model's default, so that the benchmark measures what research-evaluate runs on a default-config run.
  from research.model.config import ATTENTION_IMPLS, ModelConfig
  parser.add_argument("--attention", choices=list(ATTENTION_IMPLS), default=ModelConfig.attention)
  parser.add_argument("--json", action="store_true")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(args.child, args.length, args.attention)))
    return
  if args.length < 1:
    parser.error(f"--length={args.length}: must be at least 1")
  rows = []
  for scheme in [s for s in args.schemes.split(",") if s]:
    out = subprocess.run([sys.executable, __file__, f"--child={scheme}", f"--length={args.length}",
                          f"--attention={args.attention}"], capture_output=True, text=True)
    if out.returncode:  # the child's own last line says why (an unknown scheme, a length it cannot run)
      last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
      raise SystemExit(f"error: scheme {scheme!r} failed: {last}")
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  if args.json:
    for row in rows:
      print(json.dumps(row))
    return
  print(f"attention={args.attention}")
  print(f"{'scheme':<11} {'length':>6} {'tokens':>7} {'eval s':>7} {'peak RSS MB':>12}")
  for r in rows:
    print(f"{r['scheme']:<11} {r['length']:>6} {r['tokens']:>7} {r['seconds']:>7.1f} {r['peak_rss_mb']:>12.0f}")


if __name__ == "__main__":
  main()
