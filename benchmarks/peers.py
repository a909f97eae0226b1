"""Our float32 train step against a PyTorch peer, x-transformers, at the same shape, timed side by side in one run.

  /path/to/venv/bin/python benchmarks/peers.py [--schemes none,learned,...] [--steps 2] [--windows 8] [--json]

What it measures: per positional scheme, the tokens/s of OUR train step (benchmarks/throughput.py's, built by
`throughput.scheme_step`: V=8192, d=256, 4 layers, 4 heads, MLP 1024, T=256, batch 16, float32, AdamW, tied
embeddings, loss chunk 512, einsum attention, jitted by XLA) and of the same model's train step in x-transformers
(`TransformerWrapper` + `Decoder`, eager PyTorch: forward, cross-entropy over all logits, backward, grad-norm clipping
to `train.grad_clip`, `torch.optim.AdamW`), both on the same random ids. After `--warmup` steps of each, `--windows`
rounds each time one window of `--steps` steps of ours and then of theirs (the first of the pair alternates from one
round to the next), so load from other work on the machine hits both alike. Reported per scheme: the median tokens/s
of each and ours/theirs as the median of the per-round ratios (our tokens/s over theirs within a round, i.e. their
step time over ours), with its range; also whether that median reaches `--target` (the issue's 2.0). The header
names the commit, the CPU (model and family, /proc/cpuinfo), the load average before and after, the jax, torch and
x-transformers versions and the torch thread count (`--threads`, default os.cpu_count(): XLA:CPU uses every core).
`--json` prints one object per scheme (with the header's fields in each).

Against the machine's ceiling: before the workers start, the parent measures the float32 matmul peak (best of 10
`--peak-size`³ products through jax, as throughput.py; `--peak` gives it instead). Each row then reports both sides'
MFU, counted with the same model FLOPs per token (throughput.py's `common.flops_per_token`), and `bar needs`: the
MFU our step would need for ours/theirs to reach `--target` at their measured rate (target × their MFU). Above
100 %, no implementation of this step reaches the target on this machine, so the row says what the code can and
cannot change.

Neither torch nor x-transformers is a dependency of the project: install them in a separate virtual environment
that sees the project's packages,
  python -m venv --system-site-packages VENV && VENV/bin/pip install torch==2.13.0 x-transformers
(torch pinned: the plain package may be a multi-GB CUDA build). Without them the script exits 2 with one line.

The x-transformers model (`peer_kwargs`; option names checked against x-transformers 2.31.10's source):
  Decoder(dim=d, depth=layers, heads=heads, attn_dim_head=d/heads, ff_mult=mlp/d, ff_no_bias=True,
          ff_custom_activation=nn.GELU(approximate="tanh"))  pre-norm LayerNorm, final norm, causal, no dropout
  TransformerWrapper(num_tokens=V, max_seq_len=T, tie_embedding=True, emb_dropout=0)
  per scheme (SCHEME_OPTIONS):
    none        use_abs_pos_emb=False
    learned     the default absolute table (AbsolutePositionalEmbedding: a T × d table, times d^-1/2)
    sinusoidal  scaled_sinu_pos_emb=True (ScaledSinusoidalEmbedding, base 10000: the only sinusoidal table the
                wrapper offers; it multiplies the sinusoids by one learned scalar, initially d^-1/2)
    rope        use_abs_pos_emb=False, rotary_pos_emb=True, rotary_emb_dim=head_dim (the whole head rotates, as
                ours; x-transformers' default rotates half of it), base 10000
    alibi       use_abs_pos_emb=False (ALiBi alone does not switch the absolute table off), alibi_pos_bias=True
    t5          use_abs_pos_emb=False, rel_pos_bias=True, rel_pos_num_buckets=32, rel_pos_max_distance=128
  Attention: x-transformers' default path (explicit q·kᵀ, mask, softmax) unless `--flash` (attn_flash=True:
  torch's scaled_dot_product_attention), which its T5 bias refuses, so t5 stays on the default path there.
  Optimizer: AdamW with our lr (constant), betas, eps 1e-8 and weight decay on every ≥2-D parameter except the token
  table (our decay mask: the positional tables are decayed, norms are not); clip_grad_norm_ to our grad_clip first;
  the fused AdamW kernel where torch has one.

Remaining differences (the rows are the same size and depth, but not bit-for-bit the same model):
  - LayerNorm: theirs has a gain (stored as an offset from 1) and no bias; ours has a scale and a bias (9 × d more
    parameters at this shape, 4 blocks × 2 + the final norm).
  - Tied head and input scale: theirs feeds the raw table row and multiplies the logits by d^-1/2; ours multiplies
    the table row by √d at the input and takes h·Eᵀ unscaled. Initialisations differ (theirs: a Kaiming-normal
    table), which changes no cost.
  - Attention projections: theirs are three d × d matrices (q, k, v), ours one fused d × 3d matrix.
  - RoPE pairs adjacent channels (GPT-J); ours pairs channel i with i + head_dim/2 (GPT-NeoX). Same cost.
  - Sinusoidal: theirs concatenates [sin, cos] halves times a learned scalar; ours interleaves them at unit size.
  - T5: theirs multiplies the bucket bias by √head_dim before adding it; ours adds it as it is.
  - Execution, not architecture: ours is one XLA program (jit, donated state); the cross-entropy goes in chunks of
    `--loss-chunk` tokens (theirs materialises all B·T × V logits); our einsum attention skips the all-masked
    blocks of causal scores (theirs computes every score and masks; with `--flash`, torch's causal kernel skips
    them too where no score bias is added); theirs runs eager (no torch.compile). Our step also computes per-group gradient, parameter and update norms for its metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import throughput  # noqa: E402  (the shape flags, DEFAULT_SCHEMES and our step: scheme_step)

INSTALL = "pip install torch==2.13.0 x-transformers"
# Per scheme: (TransformerWrapper options, Decoder options) of x-transformers; peer_kwargs adds the ones that depend
# on the shape (rotary_emb_dim, T5's buckets).
SCHEME_OPTIONS = {
    "none": ({"use_abs_pos_emb": False}, {}),
    "learned": ({}, {}),
    "sinusoidal": ({"scaled_sinu_pos_emb": True}, {}),
    "rope": ({"use_abs_pos_emb": False}, {"rotary_pos_emb": True}),
    "alibi": ({"use_abs_pos_emb": False}, {"alibi_pos_bias": True}),
    "t5": ({"use_abs_pos_emb": False}, {"rel_pos_bias": True}),
}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--schemes", default=throughput.DEFAULT_SCHEMES, help="comma-separated: " + ", ".join(SCHEME_OPTIONS))
  p.add_argument("--json", action="store_true", help="one JSON object per scheme instead of a table")
  throughput.add_shape_args(p)
  p.add_argument("--attention", default="einsum", choices=("xla", "einsum"), help="our attention path")
  p.add_argument("--loss-chunk", type=int, default=512, help="our tokens per LM-head/cross-entropy chunk; 0 = off")
  p.add_argument("--flash", action="store_true",
                 help="theirs with attn_flash=True (torch's scaled_dot_product_attention; not for t5)")
  p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = os.cpu_count()")
  p.add_argument("--warmup", type=int, default=3, help="steps of each run before timing")
  p.add_argument("--steps", type=int, default=2, help="steps per timing window")
  p.add_argument("--settle", type=int, default=1,
                 help="untimed steps at the start of each window (the switch from the other side costs the first)")
  p.add_argument("--windows", type=int, default=8, help="rounds, each one window of ours and one of theirs")
  p.add_argument("--target", type=float, default=2.0, help="the ours/theirs ratio each scheme should reach")
  p.add_argument("--peak-size", type=int, default=2048, help="n of the n³ float32 matmul that measures the peak")
  p.add_argument("--peak", type=float, default=0.0,
                 help="use this float32 matmul peak (FLOP/s) instead of measuring it before the workers start")
  p.add_argument("--no-huge-pages", action="store_true",
                 help="run without glibc's malloc huge pages (research/hugepages.py; on by default, as throughput.py)")
  p.add_argument("--side", default="", choices=("", "ours", "theirs"), help=argparse.SUPPRESS)
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  for name in ("warmup", "steps", "windows"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be at least 1")
  if args.settle < 0:
    p.error(f"--settle={args.settle}: must be 0 or more (untimed steps per window)")
  if args.peak_size < 1 or args.peak < 0:
    p.error(f"--peak-size={args.peak_size} --peak={args.peak:g}: the size must be at least 1 and the peak 0 (measure "
            "it) or more")
  args.dtype = "float32"  # the step; throughput.shape_from reads it
  return args


def scheme_list(text: str) -> list[str]:
  """The comma-separated schemes, each one SCHEME_OPTIONS knows (SystemExit naming the others otherwise)."""
  schemes = [s for s in text.split(",") if s]
  unknown = [s for s in schemes if s not in SCHEME_OPTIONS]
  if unknown or not schemes:
    raise SystemExit(f"--schemes: {', '.join(unknown) or 'none given'}; x-transformers has equivalents of "
                     f"{', '.join(SCHEME_OPTIONS)} only")
  return schemes


def peer_kwargs(scheme: str, cfg) -> tuple[dict, dict]:
  """(TransformerWrapper options, Decoder options) of x-transformers for our `scheme` at our ModelConfig `cfg`'s
  shape, without the activation (a torch module: `build_theirs` adds it). ValueError for a scheme it has no
  equivalent of."""
  if scheme not in SCHEME_OPTIONS:
    raise ValueError(f"no x-transformers equivalent of scheme {scheme!r}; known: {', '.join(SCHEME_OPTIONS)}")
  if cfg.mlp_dim % cfg.d_model:
    raise ValueError(f"x-transformers' MLP is ff_mult × d: mlp_dim={cfg.mlp_dim} is not a multiple of "
                     f"d_model={cfg.d_model}")
  wrapper, layers = (dict(options) for options in SCHEME_OPTIONS[scheme])
  wrapper.update(num_tokens=cfg.vocab_size, tie_embedding=True, emb_dropout=0.0)
  layers.update(dim=cfg.d_model, depth=cfg.num_layers, heads=cfg.num_heads, attn_dim_head=cfg.head_dim,
                ff_mult=cfg.mlp_dim // cfg.d_model, ff_no_bias=True)
  if scheme == "rope":
    layers["rotary_emb_dim"] = cfg.head_dim
  if scheme == "t5":
    layers.update(rel_pos_num_buckets=cfg.t5_buckets, rel_pos_max_distance=cfg.t5_max_distance)
  return wrapper, layers


def missing_peers() -> list[str]:
  """The modules among torch and x_transformers (or what they import) that cannot be imported here."""
  missing = []
  for module in ("torch", "x_transformers"):
    if missing and module == "x_transformers":
      try:  # without torch it cannot import; say only whether it is there
        found = importlib.util.find_spec(module) is not None
      except ValueError:  # sys.modules holds None for it (blocked)
        found = False
      if not found:
        missing.append(module)
      continue
    try:
      importlib.import_module(module)
    except ImportError as e:
      name = (e.name or module).split(".")[0]
      missing.append(module if name == module else f"{name} (imported by {module})")
  return missing


def require_peers() -> None:
  """Exits 2 with one line when torch or x-transformers is missing."""
  missing = missing_peers()
  if missing:
    sys.stderr.write(f"benchmarks/peers.py needs torch and x-transformers, missing: {', '.join(missing)}; "
                     f"install them (in a separate venv, not the project's dependencies): {INSTALL}\n")
    raise SystemExit(2)


def build_theirs(scheme: str, cfg, shape, batch: dict, flash: bool):
  """x-transformers' model, AdamW and a `run(k)` that takes k train steps on `batch` and returns the last loss;
  plus its description (parameter count, attention path, AdamW kernel)."""
  import torch
  import torch.nn.functional as F
  import x_transformers

  from common import TRAIN_CFG

  torch.manual_seed(0)
  wrapper, layers = peer_kwargs(scheme, cfg)
  flash = flash and scheme != "t5"  # x-transformers asserts: its T5 bias is not compatible with flash attention
  model = x_transformers.TransformerWrapper(
      max_seq_len=shape.seq_len, **wrapper,
      attn_layers=x_transformers.Decoder(**layers, attn_flash=flash,
                                         ff_custom_activation=torch.nn.GELU(approximate="tanh")))
  model.train()
  params = dict(model.named_parameters())
  assert all(p.dtype == torch.float32 for p in params.values())
  table = model.token_emb.emb.weight
  decay = [p for p in params.values() if p.ndim >= 2 and p is not table]
  no_decay = [p for p in params.values() if not (p.ndim >= 2 and p is not table)]
  groups = [{"params": decay, "weight_decay": TRAIN_CFG["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
  options = {"lr": TRAIN_CFG["learning_rate"], "betas": (TRAIN_CFG["b1"], TRAIN_CFG["b2"]), "eps": 1e-8}
  try:
    optimizer, kernel = torch.optim.AdamW(groups, fused=True, **options), "fused"
  except (RuntimeError, TypeError):
    optimizer, kernel = torch.optim.AdamW(groups, **options), "default"
  inputs = torch.from_numpy(batch["inputs"]).long()
  targets = torch.from_numpy(batch["targets"]).long().reshape(-1)
  every = list(params.values())

  def run(k: int) -> float:
    for _ in range(k):
      logits = model(inputs)
      loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(every, TRAIN_CFG["grad_clip"])
      optimizer.step()
    return float(loss.detach())  # eager on CPU: the step has finished

  info = {"params": sum(p.numel() for p in every), "flash": flash, "adamw": kernel}
  return run, info


def build_ours(args, scheme: str):
  """Our jitted step for `scheme` exactly as benchmarks/throughput.py builds it, and a `run(k)` that takes k steps
  and returns the last loss."""
  import jax

  from research.model.transformer import count_params

  cfg, shape, step, state, batch = throughput.scheme_step(args, scheme)
  holder = {"state": state}

  def run(k: int) -> float:
    for _ in range(k):
      holder["state"], metrics = step(holder["state"], batch)
    jax.block_until_ready(holder["state"])
    return float(metrics["loss"])

  return cfg, shape, batch, run, {"params": count_params(state.params)}


def serve(args) -> None:
  """Worker (`--side ours|theirs --worker SCHEME`): builds one side's step, takes `--warmup` steps, prints one JSON
  line {"ready": ...}, then for each line N read from stdin takes N steps and prints {"s": seconds, "loss": ...}
  (the time of the steps alone, measured here, so the pipe costs nothing)."""
  scheme = args.worker
  if args.side == "theirs":
    import torch

    torch.set_num_threads(args.threads or os.cpu_count())
    import common

    shape = throughput.shape_from(args)  # our shape and model config, without building our step in this process
    cfg = shape.model_config(scheme, args.attention)
    batch = common.make_batch(shape)
    run, info = build_theirs(scheme, cfg, shape, batch, args.flash)
    info["threads"] = torch.get_num_threads()
  else:
    _, _, _, run, info = build_ours(args, scheme)
  loss = run(args.warmup)  # the first call compiles ours
  print(json.dumps({"ready": info, "loss": loss}), flush=True)
  for line in sys.stdin:
    k = int(line)
    if args.settle:
      run(args.settle)  # untimed: the first step after waiting on the other side pays for the switch (see measure)
    start = time.perf_counter()
    loss = run(k)
    print(json.dumps({"s": time.perf_counter() - start, "loss": loss}), flush=True)


def worker_argv(args, side: str, scheme: str) -> list[str]:
  flags = ["--attention", args.attention, "--loss-chunk", args.loss_chunk, "--threads", args.threads,
           "--warmup", args.warmup, "--settle", args.settle]
  return [sys.executable, os.path.abspath(__file__), "--side", side, "--worker", scheme, *throughput.shape_argv(args),
          *map(str, flags)] + \
      (["--flash"] if args.flash else []) + (["--no-huge-pages"] if args.no_huge_pages else [])


def measure(args, scheme: str) -> dict:
  """Both steps for one scheme, each in its own worker process, warmed up, then `args.windows` alternating rounds
  (one worker steps while the other waits on its pipe); the scheme's row. Separate processes because in one the two
  runtimes disturb each other: measured in one process at `bf6c5fa`, our step ran at 4,600–7,500 tokens/s against
  7,200–7,600 alone (the two thread pools and one malloc heap shared). In separate processes the first step of a
  window that follows the other side's is still slow (ours 770–1,090 ms against 535–550 ms after its own window, at
  `bf6c5fa`): each window therefore starts with `--settle` untimed steps, so the figures are each step's steady
  state, as in a training run, where no other framework runs in between."""
  import subprocess

  procs = {side: subprocess.Popen(worker_argv(args, side, scheme), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True) for side in ("ours", "theirs")}
  try:
    def ask(side: str, line: str | None = None) -> dict:
      proc = procs[side]
      if line is not None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
      out = proc.stdout.readline()
      if not out:
        raise SystemExit(f"benchmarks/peers.py: the {side} worker for {scheme} ended (exit {proc.wait()})")
      return json.loads(out)

    ready = {side: ask(side) for side in procs}  # both built and warmed up (they warm up side by side)
    loss = {side: ready[side]["loss"] for side in procs}
    times = {"ours": [], "theirs": []}
    load_before = os.getloadavg()
    for r in range(args.windows):
      for side in (("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")):
        reply = ask(side, str(args.steps))
        times[side].append(reply["s"] / args.steps)
        loss[side] = reply["loss"]
  finally:
    for proc in procs.values():
      proc.stdin.close()
      proc.wait()
  ours_info, theirs_info = ready["ours"]["ready"], ready["theirs"]["ready"]
  tokens = args.batch * args.seq_len
  ratios = [t / o for o, t in zip(times["ours"], times["theirs"])]  # our tokens/s over theirs, round by round
  ratio = statistics.median(ratios)
  return {"scheme": scheme, "ours_tokens_per_s": tokens / statistics.median(times["ours"]),
          "theirs_tokens_per_s": tokens / statistics.median(times["theirs"]), "ratio": ratio,
          "ratio_min": min(ratios), "ratio_max": max(ratios), "meets_target": ratio >= args.target,
          "ours_step_ms": [t * 1e3 for t in times["ours"]], "theirs_step_ms": [t * 1e3 for t in times["theirs"]],
          "ours_loss": loss["ours"], "theirs_loss": loss["theirs"], "ours_params": ours_info["params"],
          "theirs_params": theirs_info["params"], "theirs_flash": theirs_info["flash"],
          "theirs_adamw": theirs_info["adamw"], "theirs_threads": theirs_info["threads"],
          "load_before": load_before[0], "load_after": os.getloadavg()[0]}


def ceiling(row: dict, flops_per_token: float, peak: float, target: float) -> dict:
  """What the row's tokens/s are as a share of the machine's float32 matmul peak, both sides counted with the same
  model FLOPs per token (`common.flops_per_token`, as throughput.py's MFU), and the share our step would need for
  ours/theirs to reach `target` at their measured rate: `bar_mfu` = target × theirs_mfu. A `bar_mfu` above 1
  means no implementation of this model's step reaches the target on this machine (its products alone would have
  to run faster than the best large matmul measured there), whatever the code."""
  ours = row["ours_tokens_per_s"] * flops_per_token / peak
  theirs = row["theirs_tokens_per_s"] * flops_per_token / peak
  return {"flops_per_token": flops_per_token, "peak_gflops": peak / 1e9, "ours_mfu": ours, "theirs_mfu": theirs,
          "bar_mfu": target * theirs}


def run_header(args) -> dict:
  """What the figures are recorded with: commit, CPU, versions, threads, shape and timing plan."""
  import importlib.metadata

  import jax
  import torch

  import common

  cpu = common.cpu_info()
  shape = throughput.shape_from(args)
  return {"commit": common.commit(), "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_model": cpu["model"] or "unknown",
          "cpu_family": cpu["family"] or "?", "cpu": common.cpu_text(cpu), "cpus": os.cpu_count(), "jax": jax.__version__,
          "torch": torch.__version__, "x_transformers": importlib.metadata.version("x-transformers"),
          "torch_threads": args.threads or os.cpu_count(), "shape": dataclasses.asdict(shape), "attention": args.attention,
          "loss_chunk": args.loss_chunk, "warmup": args.warmup, "steps": args.steps, "windows": args.windows,
          "target": args.target, "peak_size": args.peak_size, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


def print_table(header: dict, rows: list[dict], load_before, load_after) -> None:
  h, s = header, header["shape"]
  print(f"commit {h['commit']}  {h['date']}  CPU: {h['cpu']}, {h['cpus']} CPUs  "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
  print(f"jax {h['jax']}  torch {h['torch']} ({h['torch_threads']} threads)  x-transformers {h['x_transformers']}  "
        f"GLIBC_TUNABLES={h['glibc_tunables']!r}")
  print(f"shape V={s['vocab']} d={s['d_model']} L={s['layers']} H={s['heads']} mlp={s['mlp_dim']} T={s['seq_len']} "
        f"B={s['batch']} {s['dtype']}  ours: attention={h['attention']} loss_chunk={h['loss_chunk']}  theirs: eager, "
        f"AdamW {rows[0]['theirs_adamw'] if rows else '?'}  {h['windows']} rounds × {h['steps']} steps, alternating")
  print(f"float32 matmul peak {h['peak_gflops']:.0f} GFLOP/s ({h['peak_size']}³, best of 10, or --peak); MFU = tokens/s "
        f"× model FLOPs per token / peak, the same FLOPs for both sides; 'bar needs' = {h['target']:g} × theirs MFU")
  target = f">= {h['target']:g}x"
  print(f"{'scheme':<11} {'ours tok/s':>10} {'theirs tok/s':>12} {'ours/theirs':>11} {'range':>13} {target:>7} "
        f"{'MFU ours':>8} {'theirs':>6} {'bar needs':>9} {'flash':>5} {'loss ours':>9} {'theirs':>7} "
        f"{'params ours':>11} {'theirs':>9}")
  for r in rows:
    print(f"{r['scheme']:<11} {r['ours_tokens_per_s']:10.0f} {r['theirs_tokens_per_s']:12.0f} {r['ratio']:11.2f} "
          f"{r['ratio_min']:6.2f}–{r['ratio_max']:<6.2f} {'yes' if r['meets_target'] else 'NO':>7} "
          f"{r['ours_mfu']:8.1%} {r['theirs_mfu']:6.1%} {r['bar_mfu']:9.1%} "
          f"{'yes' if r['theirs_flash'] else 'no':>5} {r['ours_loss']:9.3f} {r['theirs_loss']:7.3f} "
          f"{r['ours_params']:11,} {r['theirs_params']:9,}")


def main(argv=None) -> None:
  args = parse_args(argv)
  schemes = scheme_list(args.schemes)
  require_peers()  # before the restart below and before jax: the missing-dependency line comes at once
  from research import hugepages
  # As throughput.py (and research-train): restart with glibc's malloc huge pages, which both steps then get.
  hugepages.maybe_reexec(enabled=not args.no_huge_pages)
  if args.side:
    serve(args)
    return
  header = run_header(args)
  import common

  # Measured before the workers start, so nothing else of this script runs beside it.
  header["peak_gflops"] = (args.peak or common.matmul_peak(args.peak_size)) / 1e9
  shape = throughput.shape_from(args)
  load_before = os.getloadavg()
  rows = []
  for scheme in schemes:
    row = measure(args, scheme)
    fpt, _ = common.flops_per_token(shape.model_config(scheme, args.attention), shape.seq_len)
    row.update(ceiling(row, fpt, header["peak_gflops"] * 1e9, args.target))
    rows.append(row)
    if args.json:
      print(json.dumps({**header, **row}), flush=True)
  if not args.json:
    print_table(header, rows, load_before, os.getloadavg())


if __name__ == "__main__":
  main()
