"""Helpers shared by the benchmark scripts: the real model + train step at a given shape, FLOP counts, a matmul
peak measured on the spot, timing windows and peak RSS."""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from research.model.config import ModelConfig
from research.model.transformer import Transformer
from research.train import optim, steps

TRAIN_CFG = {"optimizer": "adamw", "learning_rate": 1e-3, "schedule": "constant", "warmup_steps": 0, "steps": 1000,
             "weight_decay": 0.1, "grad_clip": 1.0, "b1": 0.9, "b2": 0.95,
             "embedding": {"weight_decay": False, "lr_multiplier": 1.0, "freeze": False, "lazy": False}}


@dataclasses.dataclass(frozen=True)
class Shape:
  vocab: int = 8192
  d_model: int = 256
  layers: int = 4
  heads: int = 4
  mlp_dim: int = 1024
  seq_len: int = 256
  batch: int = 16
  dtype: str = "float32"

  def model_config(self, scheme: str, attention: str = "xla") -> ModelConfig:
    return ModelConfig(vocab_size=self.vocab, d_model=self.d_model, num_layers=self.layers, num_heads=self.heads,
                       mlp_dim=self.mlp_dim, position=scheme, kind="decoder", tie_embeddings=True,
                       max_len=self.seq_len, attention=attention, dtype=self.dtype)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> tuple[float, int]:
  """PaLM appendix B / nanoGPT's estimate_mfu: 6·N + 12·layers·heads·head_dim·T, with N = every parameter of the
  blocks (attention, MLP, layer norms) and the final norm, plus the tied output projection V·d counted once as a
  matmul (PaLM counts the output projection; the input lookup is not a matmul; a factorized V×e table counts V·e and
  its e×d projections, which are matmuls). Positional tables (learned
  positions, T5 bias buckets) are lookups and are left out. Returns (flops per token, N)."""
  params = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  n = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    top = str(optim.path_names(path)[0])
    if top.startswith("block_") or top in ("final_norm", "head_proj", "lm_head"):
      n += int(np.prod(leaf.shape))
  if cfg.tie_embeddings:
    n += cfg.vocab_size * cfg.table_width
  if cfg.factorized:  # ALBERT's projections are matmuls on every token: e → d at the input, d → e before a tied head
    n += cfg.table_width * cfg.d_model * (2 if cfg.tie_embeddings else 1)
  attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
  return 6.0 * n + attention, n


def matmul_peak(size: int = 2048, repeats: int = 10, dtype=jnp.float32) -> float:
  """Best-of-`repeats` FLOP/s of a size³ matmul through jax (2·size³ FLOPs), after a warm-up call. Operands in
  `dtype`, the result in float32 (`preferred_element_type`), as the model multiplies: a bf16 peak is bf16 × bf16 →
  f32, which on a CPU with AVX512-BF16 runs at about twice the float32 rate (a bf16 result runs slower than
  float32; docs/benchmarks.md)."""
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * size ** 3 / best


def make_batch(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, shape.vocab, (shape.batch, shape.seq_len + 1), dtype=np.int32)
  positions = np.broadcast_to(np.arange(shape.seq_len, dtype=np.int32), (shape.batch, shape.seq_len)).copy()
  return {"inputs": tokens[:, :-1].copy(), "targets": tokens[:, 1:].copy(), "positions": positions,
          "weights": np.ones((shape.batch, shape.seq_len), np.float32)}


def build_step(cfg: ModelConfig, settings: steps.StepSettings, seq_len: int, train_cfg=None):
  """(jitted train_step with donated state, initial state), exactly as the training loop builds them."""
  train_cfg = train_cfg or TRAIN_CFG
  model = Transformer(cfg)
  optimizer, schedule = optim.make_optimizer(train_cfg), optim.make_schedule(train_cfg)
  state = jax.jit(functools.partial(steps.init_state, model=model, optimizer=optimizer, seq_len=seq_len,
                                    count_updates=settings.count_updates))(jax.random.key(0))
  step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=optimizer, schedule=schedule,
                                   settings=settings), donate_argnums=0)
  return step, state


def compile_seconds(step, state, batch) -> tuple[float, object]:
  """Seconds to lower and compile the step (no execution); returns the compiled executable too."""
  t = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return time.perf_counter() - t, compiled


def best_window(run_steps, windows: int, steps_per_window: int) -> tuple[float, list[float]]:
  """Runs `windows` windows of `steps_per_window` steps; returns (best seconds per step, all window times)."""
  times = []
  for _ in range(windows):
    t = time.perf_counter()
    run_steps(steps_per_window)
    times.append((time.perf_counter() - t) / steps_per_window)
  return min(times), times


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
  """{'model': model name, 'family': CPU family, 'avx512_bf16': bool, 'amx_bf16': bool} of the first CPU listed
  (empty strings and False where the file or a field is missing, e.g. off Linux)."""
  fields = {}
  try:
    with open(path) as f:
      for line in f:
        if not line.strip():
          break  # the first processor's block ends here
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  flags = set(fields.get("flags", "").split())
  return {"model": fields.get("model name", ""), "family": fields.get("cpu family", ""),
          "model_number": fields.get("model", ""), "avx512": "avx512f" in flags,
          "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def cpu_text(info: dict) -> str:
  """'AMD EPYC (family 25, model 17, AVX-512)': a family alone names CPUs with opposite features (AMD family 25 is
  Zen 3, without AVX-512, and Zen 4, with it), and lscpu's model name can be just "AMD EPYC"."""
  return (f"{info['model'] or 'unknown CPU'} (family {info['family'] or '?'}, model {info.get('model_number') or '?'}, "
          f"{'AVX-512' if info.get('avx512') else 'no AVX-512'})")


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def commit() -> str:
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return f"{head} dirty" if dirty else head
