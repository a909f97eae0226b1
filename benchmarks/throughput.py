"""Training throughput and MFU of the real model and train step, per positional scheme.

  python3 benchmarks/throughput.py [--schemes learned,rope,alibi,...] [--json] [--loss-chunk N] [--attention xla]

Shape (the issue's): V=8192, d=256, 4 layers, 4 heads, MLP 1024, T=256, batch 16, float32, AdamW, tied embeddings.
Each scheme runs in its own process (so compile time and peak RSS are its own); the parent first measures the
matmul peak of the compute dtype (`--dtype`) on the spot (best of several 2048³ matmuls through jax).

Per scheme: tokens/s from the best of `--windows` windows of `--steps` steps after warm-up (the machine is shared,
so the best window is the one least disturbed by other work; the median is printed too), MFU = tokens/s × FLOPs per
token / peak with FLOPs per token = 6·N + 12·layers·heads·head_dim·T (PaLM appendix B, nanoGPT's estimate_mfu; N is
defined in `common.flops_per_token`), compile seconds (lower + compile of the train step) and the worker's peak RSS.
`--json` prints one object per scheme: scheme, tokens_per_s, mfu, compile_s, peak_rss_mb (and a few more keys).
`--count_updates` measures, per scheme, the step with and without `train.count_updates` (the per-row update counts)
side by side in one worker: both steps compiled, their timing windows interleaved (so machine load hits both alike),
and prints both step times and their ratio.
`--dtypes=float32,bfloat16` measures every scheme in each dtype side by side in one worker: one step compiled per
dtype, their timing windows interleaved (A B, then B A, ...; `--windows` rounds of `--steps` steps), and prints the
median tokens/s of each, the bf16/f32 ratio (the median of the per-round ratios, the ratio of the best windows, and
the median ratio of the process's CPU seconds per step, which waiting for a core on a shared machine affects less) and MFU
against each dtype's own peak (the bf16 peak is bf16 × bf16 → f32, as the model multiplies). The output names the
CPU and whether it has AVX512-BF16 (without it XLA emulates bf16 products and bf16 is not expected to be faster).
Like `research-train`, the script restarts itself with glibc's malloc huge pages (research/hugepages.py);
`--no-huge-pages` measures without them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEFAULT_SCHEMES = "none,learned,sinusoidal,rope,alibi,t5"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--schemes", default=DEFAULT_SCHEMES, help="comma-separated registered scheme names")
  p.add_argument("--json", action="store_true", help="one JSON object per scheme instead of a table")
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--d-model", type=int, default=256)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--mlp-dim", type=int, default=1024)
  p.add_argument("--seq-len", type=int, default=256)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--attention", default="einsum", choices=("xla", "einsum"))
  p.add_argument("--loss-chunk", type=int, default=512, help="tokens per LM-head/cross-entropy chunk; 0 = off")
  p.add_argument("--warmup", type=int, default=3, help="steps run before timing")
  p.add_argument("--steps", type=int, default=2, help="steps per timing window")
  p.add_argument("--windows", type=int, default=6, help="timing windows; the best one is reported")
  p.add_argument("--peak-size", type=int, default=2048, help="n of the n³ matmul that measures the peak")
  p.add_argument("--peak", type=float, default=0.0,
                 help="use this matmul peak (FLOP/s, in --dtype) instead of measuring it")
  p.add_argument("--no-huge-pages", action="store_true",
                 help="run without glibc's malloc huge pages (research/hugepages.py), to measure their effect")
  p.add_argument("--count_updates", action="store_true",
                 help="time the step with and without train.count_updates, interleaved, and print the ratio")
  p.add_argument("--dtypes", default="",
                 help="comma-separated dtypes (e.g. float32,bfloat16) timed side by side per scheme; overrides --dtype")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def shape_from(args):
  from common import Shape
  return Shape(vocab=args.vocab, d_model=args.d_model, layers=args.layers, heads=args.heads, mlp_dim=args.mlp_dim,
               seq_len=args.seq_len, batch=args.batch, dtype=args.dtype)


def run_scheme(args) -> dict:
  """Worker: compile and time one scheme in this process; returns the result row."""
  import jax

  import common
  from research.train import steps

  if args.dtypes:
    return dtypes_row(args)
  shape = shape_from(args)
  cfg = shape.model_config(args.worker, args.attention)
  fpt, n = common.flops_per_token(cfg, shape.seq_len)
  settings = steps.StepSettings(objective="clm", vocab_size=shape.vocab, loss_chunk=args.loss_chunk)
  step, state = common.build_step(cfg, settings, shape.seq_len)
  batch = common.make_batch(shape)
  compile_s, compiled = common.compile_seconds(step, state, batch)
  del compiled  # the jitted function compiles again on first call (cache hit for the persistent cache only)

  def run(k):
    nonlocal state
    for _ in range(k):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    return metrics

  if args.count_updates:
    return count_updates_row(args, cfg, shape, batch, step, state)
  metrics = run(args.warmup)
  best, times = common.best_window(run, args.windows, args.steps)
  tokens = shape.batch * shape.seq_len
  return {"scheme": args.worker, "tokens_per_s": tokens / best, "mfu": tokens / best * fpt / args.peak,
          "compile_s": compile_s, "peak_rss_mb": common.peak_rss_mb(),
          "median_tokens_per_s": tokens / statistics.median(times), "step_ms": best * 1e3,
          "flops_per_token": fpt, "n_params_counted": n, "loss": float(metrics["loss"])}


def count_updates_row(args, cfg, shape, batch, step_off, state_off) -> dict:
  """Best-window step time without and with the update counts, windows interleaved (off, on, off, on, ...)."""
  import jax

  import common
  from research.train import steps

  settings_on = steps.StepSettings(objective="clm", vocab_size=shape.vocab, loss_chunk=args.loss_chunk,
                                   count_updates=True)
  step_on, state_on = common.build_step(cfg, settings_on, shape.seq_len)
  states = {"off": state_off, "on": state_on}
  fns = {"off": step_off, "on": step_on}

  def run(which, k):
    for _ in range(k):
      states[which], metrics = fns[which](states[which], batch)
    jax.block_until_ready(states[which])

  for which in fns:
    run(which, args.warmup)
  times = {"off": [], "on": []}
  for _ in range(args.windows):
    for which in fns:
      t = time.perf_counter()
      run(which, args.steps)
      times[which].append((time.perf_counter() - t) / args.steps)
  off, on = min(times["off"]), min(times["on"])
  return {"scheme": args.worker, "step_ms_off": off * 1e3, "step_ms_on": on * 1e3, "ratio": on / off,
          "median_ratio": statistics.median(times["on"]) / statistics.median(times["off"]),
          "tokens_per_s": shape.batch * shape.seq_len / off, "peak_rss_mb": common.peak_rss_mb()}


def dtypes_row(args) -> dict:
  """Worker: the step in each dtype of `--dtypes`, compiled in this process, timed in interleaved windows (round r
  runs the dtypes in order, or reversed for odd r, so a drift in machine load hits all alike)."""
  import dataclasses

  import jax

  import common
  from research.train import steps

  dtypes = [d for d in args.dtypes.split(",") if d]
  settings = steps.StepSettings(objective="clm", vocab_size=args.vocab, loss_chunk=args.loss_chunk)
  runs = {}
  for dtype in dtypes:
    shape = dataclasses.replace(shape_from(args), dtype=dtype)
    cfg = shape.model_config(args.worker, args.attention)
    step, state = common.build_step(cfg, settings, shape.seq_len)
    batch = common.make_batch(shape)
    compile_s, _ = common.compile_seconds(step, state, batch)
    runs[dtype] = {"step": step, "state": state, "batch": batch, "compile_s": compile_s, "times": [], "cpu": []}
  fpt, n = common.flops_per_token(cfg, shape.seq_len)

  def run(dtype, k):
    r = runs[dtype]
    for _ in range(k):
      r["state"], r["metrics"] = r["step"](r["state"], r["batch"])
    jax.block_until_ready(r["state"])

  for dtype in dtypes:
    run(dtype, args.warmup)
  for i in range(args.windows):
    for dtype in (dtypes if i % 2 == 0 else dtypes[::-1]):
      t, cpu = time.perf_counter(), time.process_time()
      run(dtype, args.steps)
      runs[dtype]["times"].append((time.perf_counter() - t) / args.steps)
      runs[dtype]["cpu"].append((time.process_time() - cpu) / args.steps)
  tokens = shape.batch * shape.seq_len
  out = {"scheme": args.worker, "flops_per_token": fpt, "n_params_counted": n, "tokens": tokens,
         "peak_rss_mb": common.peak_rss_mb(), "dtypes": {}}
  for dtype, r in runs.items():
    out["dtypes"][dtype] = {"times_s": r["times"], "cpu_s": r["cpu"],
                            "median_tokens_per_s": tokens / statistics.median(r["times"]),
                            "best_tokens_per_s": tokens / min(r["times"]), "compile_s": r["compile_s"],
                            "loss": float(r["metrics"]["loss"])}
  base = dtypes[0]
  for dtype in dtypes[1:]:
    paired = [b / t for b, t in zip(runs[base]["times"], runs[dtype]["times"])]
    out["dtypes"][dtype]["ratio"] = statistics.median(paired)  # speed-up over the first dtype, paired by round
    out["dtypes"][dtype]["best_ratio"] = min(runs[base]["times"]) / min(runs[dtype]["times"])
    # The same from the process's CPU seconds per step (all threads): less sensitive to waiting for a core on a
    # loaded machine, though not to contention for memory bandwidth and caches.
    out["dtypes"][dtype]["cpu_ratio"] = statistics.median(
        [b / t for b, t in zip(runs[base]["cpu"], runs[dtype]["cpu"])])
  return out


def bf16_support_line(info: dict) -> str:
  """One line naming the CPU and whether bf16 products can be fast on it."""
  cpu = f"CPU: {info['model'] or 'unknown'} (family {info['family'] or '?'})"
  if info["avx512_bf16"] or info["amx_bf16"]:
    units = ", ".join(u for u in ("avx512_bf16", "amx_bf16") if info[u])
    return f"{cpu}, {units}: bf16 × bf16 → f32 products run in hardware"
  return (f"{cpu}, no avx512_bf16: this CPU has no bf16 dot-product instructions, so XLA emulates bf16 products "
          f"and bfloat16 is not expected to be faster than float32 here")


def print_dtypes_table(args, rows, peaks) -> None:
  import common
  dtypes = [d for d in args.dtypes.split(",") if d]
  shape = shape_from(args)
  print(f"commit {common.commit()}  {time.strftime('%Y-%m-%d %H:%M')}  shape V={shape.vocab} d={shape.d_model} "
        f"L={shape.layers} H={shape.heads} mlp={shape.mlp_dim} T={shape.seq_len} B={shape.batch}  "
        f"attention={args.attention} loss_chunk={args.loss_chunk}  {' vs '.join(dtypes)}, interleaved: "
        f"{args.windows} rounds × {args.steps} steps, medians  GLIBC_TUNABLES="
        f"{os.environ.get('GLIBC_TUNABLES', '')!r}")
  print(bf16_support_line(common.cpu_info()))
  print(f"matmul peaks ({args.peak_size}³, operands → float32, best of 3 × 10 interleaved): " + ", ".join(
      f"{d} {peaks[d] / 1e9:.0f} GFLOP/s" for d in dtypes))
  base = dtypes[0]
  head = f"{'scheme':<11}" + "".join(f" {d + ' tok/s':>16}" for d in dtypes)
  head += "".join(f" {d + '/' + base:>18} {'(best)':>7} {'(CPU s)':>8}" for d in dtypes[1:])
  head += "".join(f" {'MFU ' + d:>14}" for d in dtypes)
  print(head)
  for r in rows:
    cells = r["dtypes"]
    line = f"{r['scheme']:<11}" + "".join(f" {cells[d]['median_tokens_per_s']:16.0f}" for d in dtypes)
    line += "".join(f" {cells[d]['ratio']:18.2f} {cells[d]['best_ratio']:7.2f} {cells[d]['cpu_ratio']:8.2f}"
                    for d in dtypes[1:])
    line += "".join(f" {cells[d]['median_tokens_per_s'] * r['flops_per_token'] / peaks[d]:14.1%}" for d in dtypes)
    print(line)


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    print(json.dumps(run_scheme(args)))
    return
  from research import hugepages
  # Restarts this process (and so its workers) with huge pages on, as the training entry points do, or off.
  hugepages.maybe_reexec(enabled=not args.no_huge_pages)
  import common

  import jax.numpy as jnp
  if args.dtypes:
    dtypes_main(args, argv)
    return
  # MFU is against the peak of the compute dtype: a bf16 run divided by the f32 peak would overstate it (GPUs).
  peak = args.peak or common.matmul_peak(args.peak_size, dtype=jnp.dtype(args.dtype))
  rows = []
  passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
  for scheme in [s for s in args.schemes.split(",") if s]:
    cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--worker", scheme, "--peak", repr(peak)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
      sys.stderr.write(out.stderr)
      raise SystemExit(f"scheme {scheme} failed (exit {out.returncode})")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["peak_gflops"] = peak / 1e9
    rows.append(row)
    if args.json:
      print(json.dumps(row), flush=True)
  if args.json:
    return
  shape = shape_from(args)
  if args.count_updates:
    print(f"commit {common.commit()}  {time.strftime('%Y-%m-%d %H:%M')}  shape V={shape.vocab} d={shape.d_model} "
          f"L={shape.layers} T={shape.seq_len} B={shape.batch} {shape.dtype}  train.count_updates off vs on")
    print(f"{'scheme':<11} {'off ms':>8} {'on ms':>8} {'ratio':>7} {'(median)':>9}")
    for r in rows:
      print(f"{r['scheme']:<11} {r['step_ms_off']:8.1f} {r['step_ms_on']:8.1f} {r['ratio']:7.4f} "
            f"{r['median_ratio']:9.4f}")
    return
  print(f"commit {common.commit()}  {time.strftime('%Y-%m-%d %H:%M')}  shape V={shape.vocab} d={shape.d_model} "
        f"L={shape.layers} H={shape.heads} mlp={shape.mlp_dim} T={shape.seq_len} B={shape.batch} {shape.dtype}  "
        f"attention={args.attention} loss_chunk={args.loss_chunk}  XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}  "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  print(f"{args.dtype} matmul peak {peak / 1e9:.0f} GFLOP/s ({args.peak_size}³, best of 10)  "
        f"FLOPs/token {rows[0]['flops_per_token'] / 1e6:.2f} M (N={rows[0]['n_params_counted']:,})" if rows else "")
  print(f"{'scheme':<11} {'tokens/s':>9} {'(median)':>9} {'MFU':>6} {'step ms':>8} {'compile s':>9} {'RSS MB':>7}")
  for r in rows:
    print(f"{r['scheme']:<11} {r['tokens_per_s']:9.0f} {r['median_tokens_per_s']:9.0f} {r['mfu']:6.1%} "
          f"{r['step_ms']:8.0f} {r['compile_s']:9.1f} {r['peak_rss_mb']:7.0f}")


def dtypes_main(args, argv) -> None:
  """Parent of `--dtypes`: the peak of each dtype, then one worker per scheme."""
  import jax.numpy as jnp

  import common
  dtypes = [d for d in args.dtypes.split(",") if d]
  for dtype in dtypes:
    if dtype not in ("float32", "bfloat16"):
      raise SystemExit(f"--dtypes: {dtype!r} is not one of float32, bfloat16")
  # Interleaved, best of 3 rounds of best-of-10 each, so a busy moment does not land on one dtype only.
  peaks = {d: 0.0 for d in dtypes}
  for _ in range(3):
    for d in dtypes:
      peaks[d] = max(peaks[d], common.matmul_peak(args.peak_size, dtype=jnp.dtype(d)))
  passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
  rows = []
  for scheme in [s for s in args.schemes.split(",") if s]:
    cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--worker", scheme]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
      sys.stderr.write(out.stderr)
      raise SystemExit(f"scheme {scheme} failed (exit {out.returncode})")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["peak_gflops"] = {d: peaks[d] / 1e9 for d in dtypes}
    rows.append(row)
    if args.json:
      print(json.dumps(row), flush=True)
  if not args.json:
    print_dtypes_table(args, rows, peaks)


if __name__ == "__main__":
  main()
