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

`--interleave` runs every row in ONE worker instead: all steps compiled first, then `--windows` rounds in which each
row times one window of `--steps` steps, the rows in turn (the first row of each round rotates), so load from
other work hits every row alike. A row is a scheme name, optionally with model fields after `+`
(`rope+position_sampling=randomized+max_position=1024`, `none+table_dim=64`). Per row: best and median tokens/s
and the step time relative to the first row, as the median over rounds of the ratio within each round (the most
robust figure on a shared machine), with its range. The header names the CPU (model and family) and the load.

`--preset=gpt2-small` times instead the train step of configs/gpt2_small.py (124 M parameters, T = 1024,
V = 50,304), built by the trainer itself (`loop.Trainer`: the config's optimizer, loss chunking, update counts and
mesh over every device), on random ids: no corpus is read. It reports tokens/s, step time, MFU and memory. The peak
is measured on the spot on CPU (the `--dtype` matmul, as above) and taken from the table of published dense bf16
peaks in benchmarks/hardware.py on a GPU or TPU (chosen by `jax.devices()[0].device_kind`; `--peak` overrides).
On CPU it runs a few steps of one sequence (`PRESET_RUNS`) so that the path is exercised; the shape flags
(`--seq-len`, `--batch`, `--layers`, ...) and `--attention`, `--remat`, `--loss-chunk` change the preset only when
given. `--dtype` is the compute dtype (float32 unless given; bfloat16 on accelerators). The preset's config is
validated before anything runs (one line: `--heads=5` does not divide 768); the flags it would ignore (`--schemes`,
`--interleave`, `--count_updates`, `--dtypes`) are refused with it, as `--remat` is without it. Flags are not
abbreviated (which ones were given is read from the command line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEFAULT_SCHEMES = "none,learned,sinusoidal,rope,alibi,t5"
PRESETS = {"gpt2-small": "gpt2_small"}  # --preset → configs/<module>.py
# How a preset runs: on CPU a few steps of one sequence (a 124 M step at T = 1024 takes seconds there; the point is
# to exercise the path), on an accelerator a micro-batch of 16 sequences per device, as nanoGPT's, in bfloat16 (the
# dtype of the published peak it is measured against).
PRESET_RUNS = {"cpu": {"batch": 1, "warmup": 1, "steps": 1, "windows": 2, "dtype": "float32"},
               "accelerator": {"batch": 16, "warmup": 3, "steps": 10, "windows": 5, "dtype": "bfloat16"}}
# Command-line flags that override a preset's config field, only when given.
PRESET_FIELDS = {"--vocab": ("vocab", "data.vocab_size"), "--d-model": ("d_model", "model.d_model"),
                 "--layers": ("layers", "model.num_layers"), "--heads": ("heads", "model.num_heads"),
                 "--mlp-dim": ("mlp_dim", "model.mlp_dim"), "--seq-len": ("seq_len", "data.seq_len"),
                 "--attention": ("attention", "model.attention"), "--remat": ("remat", "model.remat"),
                 "--loss-chunk": ("loss_chunk", "train.loss_chunk")}


# The benchmark shape's flags and defaults (the issue's shape); benchmarks/peers.py takes the same ones.
SHAPE_FLAGS = (("--vocab", 8192), ("--d-model", 256), ("--layers", 4), ("--heads", 4), ("--mlp-dim", 1024),
               ("--seq-len", 256), ("--batch", 16))


def add_shape_args(p: argparse.ArgumentParser) -> None:
  for flag, default in SHAPE_FLAGS:
    p.add_argument(flag, type=int, default=default)


def shape_argv(args) -> list[str]:
  """The shape flags of `args` as command-line words (for a worker process)."""
  return [word for flag, _ in SHAPE_FLAGS for word in (flag, str(getattr(args, flag[2:].replace("-", "_"))))]


class OneLineParser(argparse.ArgumentParser):
  """argparse, whose error is one line `error: ...` on stderr (exit status 2), as the research-* commands' are, not
  the usage block (eleven lines) before it; --help still prints the usage."""

  def error(self, message: str):
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None):
  from research.model.config import REMATS

  argv = list(sys.argv[1:] if argv is None else argv)
  # No abbreviations (--inter for --interleave): which flags were given is read from argv's words (`_given`).
  p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
  p.add_argument("--schemes", default=DEFAULT_SCHEMES, help="comma-separated registered scheme names")
  p.add_argument("--json", action="store_true", help="one JSON object per scheme instead of a table")
  add_shape_args(p)
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
  p.add_argument("--interleave", action="store_true",
                 help="all rows in one worker, timing windows in turn each round; ratios to the first row")
  p.add_argument("--preset", default="", choices=("",) + tuple(PRESETS),
                 help="time a named model's train step on random ids (configs/gpt2_small.py) instead of the schemes")
  p.add_argument("--remat", default="", choices=REMATS, help="--preset only: the preset's model.remat")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  check_args(p, args, argv)
  return args


# Flags that one way of timing never reads, and why: given there, each is refused (it would be silently ignored).
PRESET_IGNORES = {"--schemes": "the preset times its own model, not the schemes",
                  "--interleave": "the preset times one train step, not rows in turn",
                  "--count_updates": "the preset's config sets train.count_updates",
                  "--dtypes": "the preset times one dtype (--dtype)"}
SCHEMES_IGNORE = {"--remat": "only --preset reads it (the schemes' rows take remat as a row field: --interleave "
                             "--schemes=none+remat=block)"}


def check_args(p: argparse.ArgumentParser, args, argv=()) -> None:
  """One line (argparse's `error`, exit 2) for a value the timing cannot use, or a flag it would ignore, before any
  worker starts: each would otherwise end in a worker's traceback, print a table of nonsense (0 tokens/s, a negative
  MFU), or time something other than what was asked for. `argv` is the command line (which flags were given)."""
  if not args.worker:
    ignored = PRESET_IGNORES if args.preset else SCHEMES_IGNORE
    for flag, why in ignored.items():
      if _given(argv, flag):
        p.error(f"{flag} with{'' if args.preset else 'out'} --preset: {why}")
  for flag, _ in SHAPE_FLAGS:
    if getattr(args, flag[2:].replace("-", "_")) < 1:
      p.error(f"{flag}={getattr(args, flag[2:].replace('-', '_'))}: must be at least 1")
  for name in ("warmup", "steps", "windows"):
    if getattr(args, name) < 1:
      p.error(f"--{name}={getattr(args, name)}: must be at least 1")
  if args.peak_size < 1:
    p.error(f"--peak-size={args.peak_size}: must be at least 1")
  if _given(argv, "--peak") and not (math.isfinite(args.peak) and args.peak > 0):  # nan or inf: an MFU of nan or 0
    p.error(f"--peak={args.peak:g}: give a finite matmul peak > 0 in FLOP/s (leave --peak out to measure it)")
  if args.loss_chunk < 0:
    p.error(f"--loss-chunk={args.loss_chunk}: must be 0 (off) or a number of tokens")
  if args.dtypes and (not dtype_list(args.dtypes)
                      or any(d not in ("float32", "bfloat16") for d in dtype_list(args.dtypes))):
    p.error(f"--dtypes={args.dtypes!r}: give a comma-separated list of float32, bfloat16")
  modes = [flag for flag, on in (("--dtypes", bool(args.dtypes)), ("--interleave", args.interleave),
                                  ("--count_updates", args.count_updates)) if on]
  if len(modes) > 1 and not args.worker:  # each is its own way of timing; one would silently be ignored
    p.error(f"{' and '.join(modes)}: choose one (each times the rows its own way)")
  if args.preset and not args.worker:
    from research.train import configuration
    try:  # the preset's config as the run builds it, with the CPU's batch: no device is touched before the re-exec
      given = {name: getattr(args, name) for name in PRESET_RUNS["cpu"] if _given(argv, f"--{name}")}
      preset_config(args, argv, {**PRESET_RUNS["cpu"], **given})
    except configuration.ConfigError as e:
      p.error(f"--preset={args.preset}: {' '.join(str(e).split())}")
  if not args.preset and not args.worker:
    specs = [s for s in args.schemes.split(",") if s]
    if not specs:
      p.error(f"--schemes={args.schemes!r}: give at least one scheme")
    for spec in specs:  # the model config of every row, as the workers will build it (ModelConfig validates)
      if "+" in spec and not args.interleave:
        p.error(f"--schemes: {spec!r}: a row spec with fields (scheme+field=value) needs --interleave")
      try:
        row_config(args, spec)
      except (ValueError, TypeError) as e:
        p.error(f"--schemes: {spec!r}: {' '.join(str(e).split())}")


def dtype_list(text: str) -> list[str]:
  return [d for d in text.split(",") if d]


def shape_from(args):
  from common import Shape
  return Shape(vocab=args.vocab, d_model=args.d_model, layers=args.layers, heads=args.heads, mlp_dim=args.mlp_dim,
               seq_len=args.seq_len, batch=args.batch, dtype=args.dtype)


def scheme_step(args, scheme: str):
  """(model config, shape, jitted train step, initial state, batch) of one scheme at the benchmark shape: the step
  this script times (benchmarks/peers.py builds ours with it too)."""
  import common
  from research.train import steps

  shape = shape_from(args)
  cfg = shape.model_config(scheme, args.attention)
  settings = steps.StepSettings(objective="clm", vocab_size=shape.vocab, loss_chunk=args.loss_chunk)
  step, state = common.build_step(cfg, settings, shape.seq_len)
  return cfg, shape, step, state, common.make_batch(shape)


def run_scheme(args) -> dict:
  """Worker: compile and time one scheme in this process; returns the result row."""
  import jax

  import common

  if args.dtypes:
    return dtypes_row(args)
  cfg, shape, step, state, batch = scheme_step(args, args.worker)
  fpt, n = common.flops_per_token(cfg, shape.seq_len)
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


def row_config(args, spec: str):
  """The ModelConfig of a row spec: `scheme[+field=value...]` at the benchmark shape (values typed as the field's
  default)."""
  import dataclasses

  from research.model.config import ModelConfig

  scheme, *fields = spec.split("+")
  cfg = shape_from(args).model_config(scheme, args.attention)
  defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  overrides = {}
  for item in fields:
    name, _, value = item.partition("=")
    if name not in defaults:
      raise ValueError(f"{name!r} is not a model field")
    kind = type(defaults[name])
    if kind is bool and value.lower() not in ("true", "false"):
      raise ValueError(f"{name}={value!r}: expected true or false")
    overrides[name] = value.lower() == "true" if kind is bool else kind(value)
  return dataclasses.replace(cfg, **overrides)


def run_interleaved(args, specs: list[str], peak: float) -> list[dict]:
  """Every row's step compiled in this process, then `args.windows` rounds of one window per row, in turn."""
  import jax

  import common
  from research.train import steps

  shape = shape_from(args)
  batch = common.make_batch(shape)
  rows = []
  for spec in specs:
    cfg = row_config(args, spec)
    settings = steps.StepSettings(objective="clm", vocab_size=shape.vocab, loss_chunk=args.loss_chunk,
                                  position_sampling=cfg.position_sampling, max_position=cfg.max_position)
    step, state = common.build_step(cfg, settings, shape.seq_len)
    compile_s, _ = common.compile_seconds(step, state, batch)
    fpt, n = common.flops_per_token(cfg, shape.seq_len)
    rows.append({"row": spec, "step": step, "state": state, "compile_s": compile_s, "flops_per_token": fpt,
                 "n_params_counted": n, "times": []})

  def run(row, k):
    for _ in range(k):
      row["state"], metrics = row["step"](row["state"], batch)
    jax.block_until_ready(row["state"])
    return metrics

  for row in rows:
    row["loss"] = float(run(row, args.warmup)["loss"])
  for r in range(args.windows):
    for row in rows[r % len(rows):] + rows[:r % len(rows)]:
      start = time.perf_counter()
      run(row, args.steps)
      row["times"].append((time.perf_counter() - start) / args.steps)
  tokens = shape.batch * shape.seq_len
  base = rows[0]["times"]
  out = []
  for row in rows:
    ratios = [t / b for t, b in zip(row["times"], base)]
    best = min(row["times"])
    out.append({"row": row["row"], "tokens_per_s": tokens / best,
                "median_tokens_per_s": tokens / statistics.median(row["times"]), "step_ms": best * 1e3,
                "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "best_ratio": best / min(base), "mfu": tokens / best * row["flops_per_token"] / peak,
                "flops_per_token": row["flops_per_token"], "n_params_counted": row["n_params_counted"],
                "compile_s": row["compile_s"], "loss": row["loss"], "step_ms_all": [t * 1e3 for t in row["times"]]})
  return out


def print_interleaved(args, rows: list[dict], peak: float, load_before, load_after) -> None:
  import common
  import hardware

  shape = shape_from(args)
  print(f"commit {common.commit()}  {time.strftime('%Y-%m-%d %H:%M')}  {hardware.cpu_description()}  load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
  print(f"shape V={shape.vocab} d={shape.d_model} L={shape.layers} H={shape.heads} mlp={shape.mlp_dim} "
        f"T={shape.seq_len} B={shape.batch} {shape.dtype}  attention={args.attention} loss_chunk={args.loss_chunk}  "
        f"{args.windows} rounds × {args.steps} steps, interleaved  {args.dtype} matmul peak {peak / 1e9:.0f} GFLOP/s")
  base, width = rows[0]["row"], max(len(r["row"]) for r in rows)
  print(f"{'row':<{width}} {'tokens/s':>9} {'(median)':>9} {'step ms':>8} {'MFU':>6} {'vs ' + base:>10} {'range':>13} "
        f"{'best/best':>9}")
  for r in rows:
    print(f"{r['row']:<{width}} {r['tokens_per_s']:9.0f} {r['median_tokens_per_s']:9.0f} {r['step_ms']:8.0f} "
          f"{r['mfu']:6.1%} {r['ratio']:10.3f} {r['ratio_min']:6.3f}–{r['ratio_max']:<6.3f} {r['best_ratio']:9.3f}")


def _given(argv, flag: str) -> bool:
  return any(a == flag or a.startswith(flag + "=") for a in argv)


def preset_config(args, argv, run=None):
  """The preset's experiment config: configs/<preset>.py, the shape flags given on the command line, `--dtype`,
  one micro-batch per step (no accumulation) and a data-parallel mesh over every device. Validated (a
  `configuration.ConfigError` names a bad value). `run` is `preset_run`'s (this platform's, asked of jax when
  None); its batch must split over the devices only when it is None (`check_preset_batch`)."""
  import importlib

  from research.train import configuration

  config = importlib.import_module(f"configs.{PRESETS[args.preset]}").get_config()
  overrides = {field: getattr(args, dest) for flag, (dest, field) in PRESET_FIELDS.items() if _given(argv, flag)}
  check_devices = run is None
  run = preset_run(args, argv) if run is None else run
  overrides.update({"model.dtype": run["dtype"], "train.batch_size": run["batch"], "train.grad_accum": 1,
                    "mesh.data": -1, "mesh.fsdp": 1})
  config = configuration.apply_overrides(config, overrides)
  configuration.validate(config)
  if check_devices:
    import jax
    check_preset_batch(run["batch"], jax.device_count(), _given(argv, "--batch"))
  return config


def check_preset_batch(batch: int, devices: int, given: bool) -> None:
  """Exits with one line when the preset's batch does not split over the devices, naming where the batch came from:
  `--batch`, or the preset's own for CPU (PRESET_RUNS: one sequence, which a multi-device CPU cannot split; an
  accelerator's is a multiple of the device count)."""
  if batch % devices:
    source = f"--batch={batch}" if given else f"the preset's batch on CPU ({batch}, PRESET_RUNS['cpu'])"
    raise SystemExit(f"error: {source} is not divisible by the {devices} devices: give --batch=N with N a multiple "
                     f"of {devices}")


def preset_run(args, argv) -> dict:
  """Batch (all devices together), warm-up steps, steps per window, windows and compute dtype: PRESET_RUNS for this
  platform, each replaced by its flag when given."""
  import jax

  platform = "cpu" if jax.devices()[0].platform == "cpu" else "accelerator"
  run = dict(PRESET_RUNS[platform])
  if platform == "accelerator":
    run["batch"] *= jax.device_count()
  for name in run:
    if _given(argv, f"--{name}"):
      run[name] = getattr(args, name)
  return run


def device_peak(args) -> tuple[float, str]:
  """(peak FLOP/s of all devices together, where it comes from): `--peak`, a matmul measured here on CPU, or the
  published dense bf16 peak of the accelerator's kind (benchmarks/hardware.py) times the device count."""
  import jax
  import jax.numpy as jnp

  import common
  import hardware

  if args.peak:
    return args.peak, "--peak"
  device = jax.devices()[0]
  if device.platform == "cpu":
    peak = common.matmul_peak(args.peak_size, dtype=jnp.dtype(args.dtype))
    return peak, f"measured here: {args.dtype} {args.peak_size}³ matmul, best of 10"
  found = hardware.published_peak(device.device_kind)
  if found is None:
    raise SystemExit(f"no published peak for device kind {device.device_kind!r} (benchmarks/hardware.py); "
                     f"pass --peak=FLOP/s")
  flops, name = found
  return flops * jax.device_count(), f"published {name} dense bf16 {flops / 1e12:.0f} TFLOP/s × {jax.device_count()}"


def run_preset(args, argv) -> dict:
  """Builds the preset's train step with the trainer (loop.Trainer), times it on random ids and returns the row."""
  import jax
  import numpy as np

  import common
  import hardware
  from research.model import attention
  from research.train import loop
  from research.train import mesh as mesh_lib

  config = preset_config(args, argv)
  run = preset_run(args, argv)
  vocab, seq_len, batch_size = config.data.vocab_size, config.data.seq_len, config.train.batch_size
  trainer = loop.Trainer.build(config, vocab, loop.make_mesh(config))
  model_cfg = trainer.model.cfg
  peak, peak_source = device_peak(args)
  fpt, n = common.flops_per_token(model_cfg, seq_len)
  tokens = np.random.default_rng(0).integers(0, vocab, (batch_size, seq_len + 1), dtype=np.int32)
  batch = mesh_lib.shard_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                                "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                                             (batch_size, seq_len)).copy(),
                                "weights": np.ones((batch_size, seq_len), np.float32)}, trainer.mesh)
  state = trainer.init_state()
  compile_s, _ = common.compile_seconds(trainer.train_step, state, batch)

  def steps(k):
    nonlocal state
    for _ in range(k):
      state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    return metrics

  metrics = steps(run["warmup"])
  best, times = common.best_window(steps, run["windows"], run["steps"])
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  return {"preset": args.preset, "device": device_description(), "devices": jax.device_count(),
          "dtype": model_cfg.dtype, "attention": attention.resolve(model_cfg.attention), "remat": model_cfg.remat,
          "seq_len": seq_len, "batch": batch_size, "n_params": configuration_params(trainer),
          "n_params_counted": n, "flops_per_token": fpt, "peak_flops": peak, "peak_source": peak_source,
          "tokens_per_s": batch_size * seq_len / best, "step_ms": best * 1e3,
          "median_step_ms": float(np.median(times)) * 1e3, "mfu": batch_size * seq_len / best * fpt / peak,
          "compile_s": compile_s, "peak_rss_mb": common.peak_rss_mb(),
          "peak_device_mb": stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None,
          "loss": float(metrics["loss"]), "commit": common.commit(), "cpu": hardware.cpu_description(),
          **{k: run[k] for k in ("warmup", "steps", "windows")}}


def configuration_params(trainer) -> int:
  import jax
  import jax.numpy as jnp

  from research.model.transformer import count_params
  return count_params(jax.eval_shape(trainer.model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])


def device_description() -> str:
  import jax
  device = jax.devices()[0]
  return f"{device.platform}: {device.device_kind}"


def print_preset(row: dict) -> None:
  memory = f"peak device memory {row['peak_device_mb']:.0f} MB" if row["peak_device_mb"] is not None else \
      f"peak RSS {row['peak_rss_mb']:.0f} MB"
  print(f"commit {row['commit']}  {time.strftime('%Y-%m-%d %H:%M')}  preset {row['preset']}  {row['device']} × "
        f"{row['devices']}  host CPU: {row['cpu']}")
  print(f"T={row['seq_len']} B={row['batch']} {row['dtype']} attention={row['attention']} remat={row['remat']}  "
        f"parameters {row['n_params']:,}  FLOPs/token {row['flops_per_token'] / 1e6:.1f} M "
        f"(6·N + 12·layers·heads·head_dim·T, N={row['n_params_counted']:,})")
  print(f"peak {row['peak_flops'] / 1e12:.3f} TFLOP/s ({row['peak_source']})")
  print(f"tokens/s {row['tokens_per_s']:.0f}  step {row['step_ms']:.0f} ms (median {row['median_step_ms']:.0f})  "
        f"MFU {row['mfu']:.1%}  compile {row['compile_s']:.1f} s  {memory}  loss {row['loss']:.3f}  "
        f"({row['warmup']} warm-up steps, best of {row['windows']} windows of {row['steps']})")


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
  import common
  cpu = f"CPU: {common.cpu_text(info)}"
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
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.preset and not args.worker:
    from research import hugepages
    hugepages.maybe_reexec(enabled=not args.no_huge_pages)
    row = run_preset(args, argv)
    print(json.dumps(row)) if args.json else print_preset(row)
    return
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
  if args.interleave:
    specs = [s for s in args.schemes.split(",") if s]
    load_before = os.getloadavg()
    rows = run_interleaved(args, specs, peak)
    if args.json:
      for row in rows:
        print(json.dumps({**row, "peak_gflops": peak / 1e9}))
    else:
      print_interleaved(args, rows, peak, load_before, os.getloadavg())
    return
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
