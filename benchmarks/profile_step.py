"""Where the train step's time goes: a `jax.profiler` trace of the real step, attributed to matmuls, softmax, norms,
GELU, the loss, AdamW and the host.

  python3 benchmarks/profile_step.py [--scheme none] [--dtype float32|bfloat16] [--steps 6] [--json]

Builds the benchmark's model and train step (benchmarks/throughput.py's shape and `common.build_step`), compiles
it, runs `--warmup` steps, then traces `--steps` steps with `jax.profiler.trace` into a temporary directory, with
XLA:CPU's per-operation trace events on (`--xla_cpu_enable_xprof_traceme`; the script restarts itself with the flag
and with huge pages, like throughput.py). Every event of the compiled step names its HLO instruction; the compiled
HLO (`Compiled.as_text()`) says what each instruction is:

  matmul      a fusion that holds a dot (XLA:CPU's YNNPACK fusions hold a dot and its fused producers/consumers)
  softmax     other work of an attention layer: scaling, mask, exp, max, sums, normalisation, head transposes
  norms       the layer norms (norm_attention, norm_mlp, final_norm)
  gelu        other work of an MLP (GELU forward and backward)
  loss        cross-entropy over the vocabulary (logsumexp, target gather, accuracy), inside the chunked loss
  adamw       the optimizer: gradient clipping, moments, the update (everything outside the model's gradient that
              is not a metric)
  metrics     gradient / parameter / update norms and the loss metrics the step returns
  embedding   the token lookup and its gradient (scatter-add)
  copies      fusions that only move or retype data: dtype converts, transposes, pads, slices, copies
  other       residual adds and the rest
  host        wall-clock time of a step not covered by any operation: dispatch, argument handling, waiting

Each category is split into forward and backward (the HLO metadata's `transpose(jvp(...))` marks backward work).
XLA:CPU may run two operations at once on the two cores, so the operation times are summed per category (thread
time) and the table also reports their union (the busy wall time) against the step's wall time. On a shared
machine the figures are medians: each operation's median duration (times the number of times a step runs it), the
median busy time and the median wall time of the traced steps, each step timed alone (dispatch to result), so
"host" (wall − busy) also holds the time the step waited for a core.
`--json` prints the table as one JSON object. `Compiled.cost_analysis()` gives the step's FLOPs and bytes; the
matmul FLOPs are counted per dot from its shapes, so the table shows the matmuls' achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
CATEGORIES = ("matmul", "softmax", "norms", "gelu", "loss", "adamw", "metrics", "embedding", "copies", "other")
CONTAINERS = ("while", "call", "conditional")  # their events span their bodies' events: not counted themselves
# Operations that move or retype data without arithmetic: a fusion of only these is a copy (dtype converts, layout
# transposes, pads, slices).
DATA_MOVEMENT = {"parameter", "constant", "convert", "bitcast", "bitcast-convert", "transpose", "copy", "pad", "slice",
                 "reshape", "broadcast", "dynamic-slice", "dynamic-update-slice", "concatenate", "tuple",
                 "get-tuple-element", "iota"}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--scheme", default="none")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--attention", default="einsum", choices=("einsum", "xla"))
  p.add_argument("--loss-chunk", type=int, default=512)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--steps", type=int, default=6, help="steps traced")
  p.add_argument("--json", action="store_true")
  p.add_argument("--top", type=int, default=15, help="also list this many of the slowest operations")
  p.add_argument("--keep-trace", default="", help="write the trace here instead of a temporary directory")
  for name, default in (("vocab", 8192), ("d-model", 256), ("layers", 4), ("heads", 4), ("mlp-dim", 1024),
                        ("seq-len", 256), ("batch", 16)):
    p.add_argument(f"--{name}", type=int, default=default)
  return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ the compiled HLO


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str  # the result type, e.g. "f32[4096,256]{1,0}"
  opcode: str
  operands: list[str]
  calls: list[str]
  op_name: str
  frame: int
  attrs: str


_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")


def _result_and_opcode(rest: str) -> tuple[str, str, str] | None:
  """'f32[2,3]{1,0} dot(%a, %b), ...' → (shape, opcode, text after the opening parenthesis). Tuple shapes hold
  spaces and parentheses, so the shape ends at the last ' opcode(' outside brackets."""
  depth = 0
  for i, ch in enumerate(rest):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == " " and depth == 0:
      m = re.match(r" ([\w\-]+)\(", rest[i:])
      if m:
        return rest[:i], m.group(1), rest[i + len(m.group(0)):]
  return None


def parse_hlo(text: str):
  """(instructions by name, {computation: [instruction names]}, {stack frame id: [function names, innermost
  first]}) from `Compiled.as_text()`."""
  instructions: dict[str, Instruction] = {}
  computations: dict[str, list[str]] = {}
  current = None
  tables: dict[str, dict[int, str]] = collections.defaultdict(dict)
  table = None
  for line in text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      table = line
      continue
    if table and re.match(r"^\d+ ", line):
      key, value = line.split(" ", 1)
      tables[table][int(key)] = value
      continue
    table = None
    m = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
    if m and not line.startswith(" "):
      current = m.group(1)
      computations[current] = []
      continue
    m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$", line)
    if not m or current is None:
      continue
    parsed = _result_and_opcode(m.group(2))
    if parsed is None:
      continue
    shape, opcode, rest = parsed
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        end = i
        break
    operands = re.findall(r"%([\w.\-]+)", rest[:end])
    attrs = rest[end + 1:]
    calls = re.findall(r"(?:calls|body|condition|to_apply|branch_computations)=\{?%([\w.\-]+)", attrs)
    calls += re.findall(r"calls=\{([^}]*)\}", attrs) and [c.strip("% ") for c in re.findall(
        r"calls=\{([^}]*)\}", attrs)[0].split(",")]
    op_name = (re.search(r'op_name="([^"]*)"', attrs) or [None, ""])[1]
    frame = int((re.search(r"stack_frame_id=(\d+)", attrs) or [None, 0])[1])
    name = m.group(1)
    instructions[name] = Instruction(name, shape, opcode, operands, calls, op_name, frame, attrs)
    computations[current].append(name)
  frames = {}
  for fid in tables["StackFrames"]:
    chain, seen = [], set()
    f = fid
    while f and f not in seen:
      seen.add(f)
      entry = tables["StackFrames"].get(f, "")
      loc = int((re.search(r"file_location_id=(\d+)", entry) or [None, 0])[1])
      parent = int((re.search(r"parent_frame_id=(\d+)", entry) or [None, 0])[1])
      func_id = int((re.search(r"function_name_id=(\d+)", tables["FileLocations"].get(loc, "")) or [None, 0])[1])
      chain.append(tables["FunctionNames"].get(func_id, "").strip('"'))
      f = parent if parent != f else 0
    frames[fid] = chain
  return instructions, computations, frames


def _dims(shape: str) -> list[int]:
  m = re.search(r"\[([\d,]*)\]", shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def dot_flops(instr: Instruction, instructions: dict[str, Instruction]) -> float:
  """2 · (result elements) · (contracted size) of a dot, from its result and its lhs operand's shapes."""
  lhs = instructions.get(instr.operands[0]) if instr.operands else None
  contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr.attrs)
  if lhs is None or contract is None:
    return 0.0
  lhs_dims = _dims(lhs.shape)
  k = 1
  for d in (int(x) for x in contract.group(1).split(",") if x):
    k *= lhs_dims[d]
  out = 1
  for d in _dims(instr.shape):
    out *= d
  return 2.0 * out * k


def dots_inside(name: str, instructions, computations, memo=None) -> list[Instruction]:
  """The dot instructions an instruction runs, through the computations it calls (fusions)."""
  memo = {} if memo is None else memo
  if name in memo:
    return memo[name]
  instr = instructions[name]
  found = [instr] if instr.opcode == "dot" else []
  if instr.opcode not in CONTAINERS:
    for comp in instr.calls:
      for inner in computations.get(comp, []):
        found += dots_inside(inner, instructions, computations, memo)
  memo[name] = found
  return found


def only_moves_data(name: str, instructions, computations) -> bool:
  """Whether an instruction (through the computations it calls) only moves or retypes data."""
  instr = instructions[name]
  if instr.opcode == "fusion":
    return all(only_moves_data(inner, instructions, computations)
               for comp in instr.calls for inner in computations.get(comp, []))
  return instr.opcode in DATA_MOVEMENT


def category(instr: Instruction, has_dot: bool, frames: dict[int, list[str]], moves_data: bool = False
             ) -> tuple[str, str]:
  """(category, 'fwd' | 'bwd') of one instruction (see the module docstring)."""
  op = instr.op_name
  direction = "bwd" if "transpose(jvp" in op else "fwd"
  functions = frames.get(instr.frame, [])
  if has_dot:
    return "matmul", direction
  if moves_data:
    return "copies", direction
  if any(f in ("group_norms", "loss_metrics") for f in functions):
    return "metrics", direction
  if re.search(r"/(norm_attention|norm_mlp|final_norm)/", op):
    return "norms", direction
  if "/mlp/" in op:
    return "gelu", direction
  if "/attention/" in op:
    return "softmax", direction
  if "token_embed" in op and "logits" not in op and "attend" not in op:
    return "embedding", direction
  if "/while/" in op or any(f in ("cross_entropy", "chunked_cross_entropy") for f in functions):
    return "loss", direction
  if op.startswith("jit(train_step)/") and "jvp(" not in op and "transpose(" not in op:
    return "adamw", "-"
  return "other", direction


# ------------------------------------------------------------------------------------------------------ the trace


def trace_events(trace_dir: str, module: str) -> list[dict]:
  """The complete ('X') events of the compiled `module` from the trace's *.trace.json.gz."""
  events = []
  for path in glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True):
    with gzip.open(path, "rt") as f:
      data = json.load(f)
    for e in data.get("traceEvents", data if isinstance(data, list) else []):
      args = e.get("args") or {}
      if e.get("ph") == "X" and args.get("hlo_module") == module and "hlo_op" in args:
        events.append(e)
  return events


def union_us(intervals: list[tuple[float, float]]) -> float:
  total, end = 0.0, float("-inf")
  for start, stop in sorted(intervals):
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def attribute(events, instructions, computations, frames, steps: int):
  """Per (category, direction): thread ms per step, and the FLOPs of its dots per step; plus the busy (union) ms of
  a step. Robust to a shared machine: an operation's time per step is its median duration times the number of
  times a step runs it (the loss's chunks run 8 times), and the busy time is the median over the traced steps
  (events carry their execution's `run_id`)."""
  memo = {}
  durations = collections.defaultdict(list)
  runs = collections.defaultdict(list)
  for e in events:
    name = e["args"]["hlo_op"]
    instr = instructions.get(name)
    if instr is None or instr.opcode in CONTAINERS:
      continue
    durations[name].append(e["dur"])
    runs[e["args"].get("run_id", "")].append((e["ts"], e["ts"] + e["dur"]))
  rows = collections.defaultdict(lambda: {"ms": 0.0, "flops": 0.0, "count": 0})
  ops = []
  for name, durs in durations.items():
    dots = dots_inside(name, instructions, computations, memo)
    key = category(instructions[name], bool(dots), frames, only_moves_data(name, instructions, computations))
    per_step = len(durs) / steps
    ms, flops = statistics.median(durs) * per_step / 1e3, sum(dot_flops(d, instructions) for d in dots) * per_step
    rows[key]["ms"] += ms
    rows[key]["flops"] += flops
    rows[key]["count"] += per_step
    ops.append({"op": name, "category": "/".join(key), "ms": ms, "flops": flops, "per_step": per_step,
                "op_name": instructions[name].op_name})
  busy = [union_us(intervals) / 1e3 for intervals in runs.values()]
  ops.sort(key=lambda o: -o["ms"])
  return dict(rows), (statistics.median(busy) if busy else 0.0), ops


# ------------------------------------------------------------------------------------------------------- the run


def profile(args) -> dict:
  import jax

  import common
  from research.train import steps

  shape = common.Shape(vocab=args.vocab, d_model=args.d_model, layers=args.layers, heads=args.heads,
                       mlp_dim=args.mlp_dim, seq_len=args.seq_len, batch=args.batch, dtype=args.dtype)
  cfg = shape.model_config(args.scheme, args.attention)
  settings = steps.StepSettings(objective="clm", vocab_size=shape.vocab, loss_chunk=args.loss_chunk)
  step, state = common.build_step(cfg, settings, shape.seq_len)
  batch = common.make_batch(shape)
  compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  instructions, computations, frames = parse_hlo(compiled.as_text())
  for _ in range(args.warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(state)
  trace_dir = args.keep_trace or tempfile.mkdtemp(prefix="profile_step_")
  walls = []
  with jax.profiler.trace(trace_dir):
    for _ in range(args.steps):
      t = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready(state)
      walls.append((time.perf_counter() - t) * 1e3)
  wall_ms = statistics.median(walls)
  module = compiled.as_text().split(",", 1)[0].split()[-1]  # "HloModule jit_train_step, ..." → jit_train_step
  rows, busy_ms, ops = attribute(trace_events(trace_dir, module), instructions, computations, frames, args.steps)
  return {"scheme": args.scheme, "dtype": args.dtype, "wall_ms": wall_ms, "busy_ms": busy_ms,
          "flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0)),
          "rows": {f"{c}/{d}": v for (c, d), v in sorted(rows.items())}, "trace_dir": trace_dir,
          "tokens": shape.batch * shape.seq_len, "ops": ops[:args.top]}


def print_table(result: dict) -> None:
  import common
  rows = result["rows"]
  thread_ms = sum(r["ms"] for r in rows.values())
  wall, busy = result["wall_ms"], result["busy_ms"]
  print(f"commit {common.commit()}  {time.strftime('%Y-%m-%d %H:%M')}  scheme={result['scheme']} "
        f"dtype={result['dtype']}  step wall {wall:.0f} ms, operations busy {busy:.0f} ms (union), "
        f"{thread_ms:.0f} ms thread time  cost_analysis {result['flops'] / 1e9:.1f} GFLOP, "
        f"{result['bytes'] / 1e9:.2f} GB per step")
  print(f"{'category':<10} {'fwd ms':>8} {'bwd ms':>8} {'total ms':>9} {'% thread':>9} {'GFLOP/s':>8}")
  for cat in CATEGORIES:
    parts = {d: rows.get(f"{cat}/{d}", {"ms": 0.0, "flops": 0.0}) for d in ("fwd", "bwd", "-")}
    total = sum(p["ms"] for p in parts.values())
    if not total:
      continue
    flops = sum(p["flops"] for p in parts.values())
    rate = f"{flops / total / 1e6:8.0f}" if flops else f"{'':>8}"
    fwd = parts["fwd"]["ms"] + parts["-"]["ms"]
    print(f"{cat:<10} {fwd:8.1f} {parts['bwd']['ms']:8.1f} {total:9.1f} {total / thread_ms:9.1%} {rate}")
  print(f"{'host':<10} {'':>8} {'':>8} {max(wall - busy, 0.0):9.1f} {'':>9}   (wall − busy)")
  if result["ops"]:
    print("\nslowest operations: ms per step (times run per step), category, GFLOP/s, the HLO op_name's tail")
  for o in result["ops"]:
    rate = f"{o['flops'] / o['ms'] / 1e6:6.0f}" if o["flops"] else f"{'':>6}"
    print(f"{o['ms']:8.1f} (x{o['per_step']:g}) {o['category']:<13} {rate}  {o['op_name'][-90:]}")


def main(argv=None):
  args = parse_args(argv)
  flags = os.environ.get("XLA_FLAGS", "")
  if TRACE_FLAG not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {TRACE_FLAG}".strip()
  from research import hugepages
  hugepages.maybe_reexec(enabled=True)  # restarts with the flag above (exported) and huge pages, as throughput.py
  result = profile(args)
  if args.json:
    print(json.dumps(result))
  else:
    print_table(result)


if __name__ == "__main__":
  main()
