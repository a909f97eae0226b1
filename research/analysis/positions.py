"""Pictures of what a run's positional scheme does, and the numbers behind them (`research-analyze --positions`).

    report = analyze_run("runs/x")   # RUN/eval/positions.json and the PNGs below, from the best (or last) checkpoint

What is drawn follows the scheme's hooks (docs/architecture.md), never its name, so a scheme from outside the
library gets its pictures too. T = data.seq_len, the length the run trained at; every learned parameter is the
checkpoint's (a per-layer scheme: one panel or curve per layer).

  position_similarity.png  an input hook (learned, sinusoidal): cosine similarity of the positional vectors of
                           positions 0 … T−1 (every ⌈T/128⌉-th one when T > 128), a heatmap.
  rotary_kernel.png        a q/k transform (rope, p_rope, xpos): the score q·k after the transform of a query at
                           position d and a key at position 0 (d < 0 in an encoder: the query at 0, the key at −d),
                           for q = k = u, averaged over ROTARY_SAMPLES fixed random unit vectors u per head (seed 0).
                           For RoPE that is the rotary kernel Σ_i |u_i|²·cos(θ_i·d) over the D/2 rotated pairs u_i,
                           (2/D)·Σ_i cos(θ_i·d) in expectation: 1 at d = 0 (YaRN: its mscale²).
  bias_by_distance.png     a score bias (alibi, t5, kerple_*, fire, sandwich): per head, the mean bias over the
                           pairs (i, j) of positions 0 … T−1 at distance d = i − j (d < 0: keys after the query, in an
                           encoder only); Toeplitz schemes have one value per distance, so the mean is that value.
  attention.png            every scheme: mean attention distance Σ_j p_ij·|i − j| (in tokens of the row) and entropy
                           −Σ_j p_ij·log p_ij per layer and head, averaged over the real (non-padding) queries of the
                           first `batches` validation batches, as the run's evaluation feeds them (MLM: each row's
                           masks from `steps.eval_key`, the ones the evaluation scores; data.document_positions /
                           document_mask from the run's config). The model sows its attention probabilities only
                           when asked (`attention.INTERMEDIATES`).

CoPE's logit-dependent bias (`logit_bias`) depends on the content, so it has no picture against distance; its
attention statistics show what it does. `positions.json` holds every number drawn, plus the references a reader
needs: `max_entropy` (mean over the same queries of log(number of keys it may attend)), which bounds every entropy,
and `uniform_mean_distance` (the mean distance under uniform attention over those keys).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from research import figures

POSITIONS_FILE = "positions.json"
SIMILARITY_PLOT, ROTARY_PLOT = "position_similarity.png", "rotary_kernel.png"
BIAS_PLOT, ATTENTION_PLOT = "bias_by_distance.png", "attention.png"
ROTARY_SAMPLES = 64
MAX_SIMILARITY_POSITIONS = 128
# Attention probabilities of every layer of a batch are held at once: rows per batch keep them under this many floats.
MAX_PROBABILITY_FLOATS = 2 ** 26
DEFAULT_BATCHES = 4


# ------------------------------------------------------------------------------------------- the scheme's hooks


def scheme_scopes(model_cfg, params) -> list[tuple[str | int, dict]]:
  """[(layer, the scheme's parameters)]: ("shared", params['position_embed']) for a shared scheme, one entry per
  attention layer (i, block_i/attention/position_embed) for a per-layer one ({} for a parameter-free scheme)."""
  if not model_cfg.scheme.per_layer:
    return [("shared", params.get("position_embed", {}))]
  return [(i, params[f"block_{i}"]["attention"].get("position_embed", {})) for i in range(model_cfg.num_layers)]


def _call(model_cfg, scheme_params, fn, *args):
  """fn(scheme module, *args), bound to `scheme_params` (the hooks may close over parameters: use them inside)."""
  return model_cfg.scheme(model_cfg).apply({"params": scheme_params}, *args, method=fn)


def position_vectors(model_cfg, params, length: int) -> np.ndarray | None:
  """float [length, P]: the input hook's vector of every position 0 … length−1, or None without an input hook."""
  if not model_cfg.scheme.has_input:
    return None
  positions_1xL = np.arange(length, dtype=np.int32)[None]
  vectors = _call(model_cfg, scheme_scopes(model_cfg, params)[0][1], lambda m, p: m.embed(p), positions_1xL)
  return None if vectors is None else np.asarray(vectors[0], np.float64)


def cosine_similarity(vectors_NxP: np.ndarray) -> np.ndarray:
  unit = vectors_NxP / np.maximum(np.linalg.norm(vectors_NxP, axis=1, keepdims=True), 1e-12)
  return unit @ unit.T


def distances(length: int, causal: bool) -> np.ndarray:
  """The distances d = i − j drawn: 0 … length−1, and −(length−1) … −1 before them in an encoder."""
  return np.arange(0 if causal else -(length - 1), length)


def _rotary_scores(module, positions_NxL, u_NxHxD):
  """q·k of q = k = u after the module's q/k transform, as two [N, H, L]: the query at position d with the key at 0,
  and the query at 0 with the key at d; None when the scheme has no q/k transform."""
  import jax.numpy as jnp
  rotary = module.rotary(positions_NxL)
  if rotary is None:
    return None
  q_fn, k_fn = rotary if isinstance(rotary, tuple) else (rotary, rotary)
  x_NxLxHxD = jnp.broadcast_to(u_NxHxD[:, None], (u_NxHxD.shape[0], positions_NxL.shape[1], *u_NxHxD.shape[1:]))
  q, k = q_fn(x_NxLxHxD).astype(jnp.float32), k_fn(x_NxLxHxD).astype(jnp.float32)
  return jnp.einsum("nlhd,nhd->nhl", q, k[:, 0]), jnp.einsum("nhd,nlhd->nhl", q[:, 0], k)


def rotary_kernel(model_cfg, params, length: int, samples: int = ROTARY_SAMPLES, seed: int = 0) -> dict | None:
  """{'distance': [...], 'layers': [{'layer', 'score': [...]}], 'samples'} (see the module docstring), or None
  when the scheme has no q/k transform."""
  rng = np.random.default_rng(seed)
  u = rng.normal(size=(samples, model_cfg.num_heads, model_cfg.head_dim)).astype(np.float32)
  u /= np.linalg.norm(u, axis=-1, keepdims=True)
  positions_NxL = np.broadcast_to(np.arange(length, dtype=np.int32), (samples, length))
  d = distances(length, model_cfg.causal)
  layers = []
  for layer, scope in scheme_scopes(model_cfg, params):
    out = _call(model_cfg, scope, _rotary_scores, positions_NxL, u)
    if out is None:
      return None
    query_at_d, key_at_d = (np.asarray(x, np.float64).mean(axis=(0, 1)) for x in out)  # [L] each
    score = np.where(d >= 0, query_at_d[np.abs(d)], key_at_d[np.abs(d)])
    layers.append({"layer": layer, "score": score.tolist()})
  return {"distance": d.tolist(), "layers": layers, "samples": samples}


def diagonal_means(bias_HxLxL: np.ndarray, d: np.ndarray) -> np.ndarray:
  """[H, len(d)]: the mean of bias[h, i, i − d] over every i where both positions are in range."""
  return np.stack([np.diagonal(bias_HxLxL, offset=-int(k), axis1=1, axis2=2).mean(axis=-1) for k in d], axis=1)


def bias_by_distance(model_cfg, params, length: int) -> dict | None:
  """{'distance': [...], 'layers': [{'layer', 'bias': [H][len(distance)]}]} from the checkpoint's parameters, or
  None when the scheme adds no score bias."""
  positions_1xL = np.arange(length, dtype=np.int32)[None]
  d = distances(length, model_cfg.causal)
  layers = []
  for layer, scope in scheme_scopes(model_cfg, params):
    bias = _call(model_cfg, scope, lambda m, q, k: m.bias(q, k), positions_1xL, positions_1xL)
    if bias is None:
      return None
    bias_HxLxL = np.broadcast_to(np.asarray(bias, np.float64)[0], (model_cfg.num_heads, length, length))
    layers.append({"layer": layer, "bias": diagonal_means(bias_HxLxL, d).tolist()})
  return {"distance": d.tolist(), "layers": layers}


def has_logit_bias(model_cfg, params) -> bool:
  positions_1x1 = np.zeros((1, 1), np.int32)
  return _call(model_cfg, scheme_scopes(model_cfg, params)[0][1],
               lambda m, q, k: m.logit_bias(q, k) is not None, positions_1x1, positions_1x1)


# ------------------------------------------------------------------------------------------ attention statistics


def attention_sums(probabilities_BxHxLxS, mask, queries_BxL) -> dict[str, np.ndarray]:
  """Per head, sums over the real queries of Σ_j p·|i − j| and −Σ_j p·log p, and per query (heads alike) of
  log(allowed keys) and the mean allowed distance; `mask` is the model's boolean [B|1, 1, L, S] or None."""
  p = np.asarray(probabilities_BxHxLxS, np.float64)
  length, keys = p.shape[-2:]
  distance_LxS = np.abs(np.arange(length)[:, None] - np.arange(keys)[None, :]).astype(np.float64)
  allowed = np.ones((1, 1, length, keys), bool) if mask is None else np.asarray(mask, bool)
  allowed_BxLxS = np.broadcast_to(allowed, (p.shape[0], 1, length, keys))[:, 0]
  q = np.asarray(queries_BxL, bool) & allowed_BxLxS.any(axis=-1)  # a query with no key says nothing
  with np.errstate(divide="ignore", invalid="ignore"):
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  n_keys = allowed_BxLxS.sum(axis=-1)
  mean_allowed = (allowed_BxLxS * distance_LxS).sum(axis=-1) / np.maximum(n_keys, 1)
  return {"distance": ((p * distance_LxS).sum(axis=-1) * q[:, None]).sum(axis=(0, 2)),
          "entropy": (-plogp.sum(axis=-1) * q[:, None]).sum(axis=(0, 2)),
          "max_entropy": float((np.log(np.maximum(n_keys, 1)) * q).sum()),
          "uniform_distance": float((mean_allowed * q).sum()), "queries": int(q.sum())}


def attention_statistics(run, num_batches: int = DEFAULT_BATCHES) -> dict[str, Any]:
  """Mean attention distance and entropy per layer and head over the first `num_batches` validation batches."""
  import jax
  from research.data import batches as batches_lib
  from research.data.tokenizers import PAD_ID
  from research.model import attention
  from research.model.transformer import Transformer
  from research.train import steps
  cfg, config = run.model_cfg, run.config
  length = int(config.data.seq_len)
  settings = steps.StepSettings(objective=config.objective, vocab_size=cfg.vocab_size,
                                mlm_select_rate=config.data.mlm_select_rate, mlm_mask_rate=config.data.mlm_mask_rate,
                                mlm_random_rate=config.data.mlm_random_rate, **steps.document_settings(config.data))
  batch_size = max(1, min(16, MAX_PROBABILITY_FLOATS // (cfg.num_heads * length * length * cfg.num_layers)))
  ids = run.splits["valid"]
  if config.objective == "clm":
    it = batches_lib.eval_batches(ids, length, batch_size)
  else:
    it = batches_lib.PackedBatches(ids, length, batch_size, objective="mlm", shuffle=False, num_epochs=1)
  model = Transformer(cfg, char_ids=run.char_ids)

  @jax.jit
  def forward(params, batch, rng):
    inputs, _, _, positions, key_mask = steps.prepare_inputs(batch, rng, settings)
    segments = steps.segments(batch, settings)
    _, state = model.apply({"params": params}, inputs, positions, key_mask_BxL=key_mask, segments_BxL=segments,
                           return_hidden=True, mutable=[attention.INTERMEDIATES])
    mask = attention.attention_mask(length, length, cfg.causal, key_mask, segments)
    probabilities = [state[attention.INTERMEDIATES][f"block_{i}"]["attention"]["probabilities"][0]
                     for i in range(cfg.num_layers)]
    return probabilities, mask

  totals = [None] * cfg.num_layers
  rows = used = 0
  for i, batch in enumerate(it):
    if used == num_batches:
      break
    probabilities, mask = jax.device_get(forward(run.params, steps.with_row_indices(batch, i),
                                                 steps.eval_key(config.seed, length)))
    queries = batch["inputs"] != PAD_ID
    for layer, p in enumerate(probabilities):
      sums = attention_sums(p, mask, queries)
      totals[layer] = sums if totals[layer] is None else {k: totals[layer][k] + v for k, v in sums.items()}
    rows += int(queries.any(axis=1).sum())
    used += 1
  n = max(totals[0]["queries"], 1)
  return {"batches": used, "rows": rows, "queries": totals[0]["queries"], "length": length,
          "max_entropy": totals[0]["max_entropy"] / n, "uniform_mean_distance": totals[0]["uniform_distance"] / n,
          "layers": [{"layer": layer, "mean_distance": (t["distance"] / n).tolist(), "entropy": (t["entropy"] / n)
                      .tolist()} for layer, t in enumerate(totals)]}


# ---------------------------------------------------------------------------------------------------------- plots


def _layer_label(layer) -> str:
  return "shared by the layers" if layer == "shared" else f"layer {layer}"


def plot_similarity(similarity: dict, path: Path, title: str = "") -> None:
  fig = figures.figure((5.2, 4.4))
  ax = fig.add_subplot()
  pos = similarity["positions"]
  image = ax.imshow(np.asarray(similarity["cosine"]), vmin=-1, vmax=1, cmap="RdBu_r", origin="lower",
                    extent=(pos[0] - 0.5, pos[-1] + 0.5, pos[0] - 0.5, pos[-1] + 0.5))
  fig.colorbar(image, ax=ax, label="cosine")
  ax.set_xlabel("position")
  ax.set_ylabel("position")
  ax.set_title(f"{title}\ncosine similarity of the positional vectors".strip(), fontsize=10)
  figures.save_png(fig, path, dpi=110, tight=True)


def _layer_panels(layers, path: Path, title: str, ylabel: str, draw) -> None:
  columns = min(4, len(layers))
  rows = -(-len(layers) // columns)
  fig = figures.figure((4.2 * columns, 3.4 * rows))
  for i, entry in enumerate(layers):
    ax = fig.add_subplot(rows, columns, i + 1)
    draw(ax, entry)
    ax.set_xlabel("distance i − j (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(_layer_label(entry["layer"]), fontsize=9)
    ax.grid(True, alpha=0.3)
  fig.suptitle(title, fontsize=10)
  figures.save_png(fig, path, dpi=110, tight=True)


def plot_rotary(kernel: dict, path: Path, title: str = "") -> None:
  d = kernel["distance"]
  _layer_panels(kernel["layers"], path, f"{title}\nq·k after the q/k transform (random unit q = k)", "mean q·k",
                lambda ax, entry: ax.plot(d, entry["score"]))


def plot_bias(bias: dict, path: Path, title: str = "") -> None:
  d = bias["distance"]

  def draw(ax, entry):
    for h, values in enumerate(entry["bias"]):
      ax.plot(d, values, label=f"head {h}", lw=1)
    if len(entry["bias"]) <= 8:
      ax.legend(fontsize=6)

  _layer_panels(bias["layers"], path, f"{title}\nattention bias per head against distance", "bias", draw)


def plot_attention(stats: dict, path: Path, title: str = "") -> None:
  fig = figures.figure((10, 0.6 * len(stats["layers"]) + 2.6))
  for i, (key, label) in enumerate((("mean_distance", f"mean attention distance (tokens; uniform: "
                                                       f"{stats['uniform_mean_distance']:.1f})"),
                                    ("entropy", f"attention entropy (nats; uniform: {stats['max_entropy']:.2f})"))):
    ax = fig.add_subplot(1, 2, i + 1)
    values = np.asarray([layer[key] for layer in stats["layers"]])
    image = ax.imshow(values, aspect="auto", cmap="viridis", origin="lower")
    fig.colorbar(image, ax=ax)
    for (r, c), v in np.ndenumerate(values):
      ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.set_title(label, fontsize=9)
  fig.suptitle(f"{title}: {stats['queries']} queries of {stats['batches']} validation batches".strip(": "),
               fontsize=10)
  figures.save_png(fig, path, dpi=110, tight=True)


# ---------------------------------------------------------------------------------------------------- entry point


def similarity_record(model_cfg, params, length: int) -> dict | None:
  vectors = position_vectors(model_cfg, params, length)
  if vectors is None:
    return None
  positions = np.arange(0, length, max(1, math.ceil(length / MAX_SIMILARITY_POSITIONS)))
  return {"positions": positions.tolist(), "cosine": cosine_similarity(vectors[positions]).tolist()}


def positions_report(run, num_batches: int = DEFAULT_BATCHES) -> dict[str, Any]:
  """Every number behind the pictures of a loaded run (`extrapolation.load_run`)."""
  cfg, config = run.model_cfg, run.config
  length = int(config.data.seq_len)
  similarity = similarity_record(cfg, run.params, length)
  kernel = rotary_kernel(cfg, run.params, length)
  bias = bias_by_distance(cfg, run.params, length)
  return {"checkpoint_step": run.step, "position": cfg.position, "objective": config.objective, "length": length,
          "per_layer": bool(cfg.scheme.per_layer),
          "document_positions": str(config.data.document_positions), "document_mask": bool(config.data.document_mask),
          "hooks": {"input": similarity is not None, "rotary": kernel is not None, "bias": bias is not None,
                    "logit_bias": has_logit_bias(cfg, run.params)},
          "similarity": similarity, "rotary_kernel": kernel, "bias": bias,
          "attention": attention_statistics(run, num_batches)}


def analyze_run(workdir: str | os.PathLike, checkpoint: str = "best", num_batches: int = DEFAULT_BATCHES, *,
                run=None) -> dict[str, Any]:
  """RUN/eval/positions.json and the pictures its scheme has (module docstring); returns the report. `run`: that
  checkpoint already loaded (`quality.load_run`: one research-analyze call analyses one step)."""
  from research.analysis import quality
  from research.evaluate import extrapolation
  from research.train import loop
  if not isinstance(num_batches, int) or num_batches < 1:
    raise quality.AnalysisError(f"--positions_batches={num_batches!r} must be an integer >= 1")
  workdir = Path(workdir)
  report = positions_report(extrapolation.load_run(workdir, checkpoint) if run is None else run, num_batches)
  out_dir = workdir / quality.EVAL_DIR
  out_dir.mkdir(parents=True, exist_ok=True)
  title = f"{workdir.resolve().name} ({report['position']}, {report['objective']})"
  plots = []
  for key, name, plot in (("similarity", SIMILARITY_PLOT, plot_similarity), ("rotary_kernel", ROTARY_PLOT, plot_rotary),
                          ("bias", BIAS_PLOT, plot_bias), ("attention", ATTENTION_PLOT, plot_attention)):
    if report[key] is not None:
      plot(report[key], out_dir / name, title)
      plots.append(name)
  report["plots"] = plots
  loop.atomic_write_json(out_dir / POSITIONS_FILE, report)
  return report


def summary_lines(report: dict[str, Any]) -> list[str]:
  fmt = lambda xs: "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"  # noqa: E731
  drawn = [name for name, on in report["hooks"].items() if on] or ["no positional hook"]
  lines = [f"{report['position']} ({report['objective']}, T={report['length']}): {', '.join(drawn)}; "
           f"wrote {', '.join(report['plots'])}"]
  stats = report["attention"]
  for layer in stats["layers"]:
    lines.append(f"layer {layer['layer']}: mean distance {fmt(layer['mean_distance'])} (uniform "
                 f"{stats['uniform_mean_distance']:.2f}), entropy {fmt(layer['entropy'])} (max "
                 f"{stats['max_entropy']:.2f})")
  return lines
