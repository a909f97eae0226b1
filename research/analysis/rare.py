"""Rare tokens: how a table's rows depend on their training frequency, and the table's geometry.

    report = analyze_run("runs/x")   # RUN/eval/rare_tokens.json, RUN/eval/norm_vs_frequency.png, RUN/eval/buckets.png
    report = rare_report(table_VxD, counts_V, init_VxD=..., present_V=...)   # the same figures for arrays

Frequency buckets are log-spaced over the training counts (`RUN/token_counts.npy`): bucket 0 holds the rows never
seen in training (count 0), bucket k ≥ 1 the rows with count in [base^(k-1), base^k) (base 10 by default), so a
hand-built table's buckets can be checked by eye. Per bucket: rows, training tokens, mean count, mean presence
(steps whose batch held the row, `RUN/update_counts.npz`), mean row norm, mean drift from the initial table
(`RUN/embedding_init.npy`: L2 distance and cosine to the initial row), mean cosine to the row's 10 nearest
neighbours (over the whole table, itself excluded) and, for the word tokenizer, gensim's analogy / word-pair scores
of the KeyedVectors restricted to the bucket's words (`quality.benchmarks`).

Geometry (`geometry`), for the input table and, when untied, the output head's columns (`lm_head/kernel`ᵀ):
  anisotropy          mean cosine between random row pairs (Ethayarajh 2019): 0 for isotropic rows, 1 for one direction
  variance_top1/10    share of the (centred) variance in the first 1 / 10 principal components
  isotropy            Mu & Viswanath 2018: min_c Z(c) / max_c Z(c) over the eigenvectors c of WᵀW (uncentred),
                      Z(c) = Σ_w exp(c·w); 1 for a perfectly isotropic table, → 0 when one direction dominates.
                      Both signs ±c of each (unit) eigenvector are used: a solver's sign choice changes nothing
  norm_freq_spearman  Spearman correlation of the row norm with log(1 + training count) (rank-based: the log only
                      documents what is meant)

Everything is numpy / scipy; neighbours are searched in chunks of rows (no V×V matrix, and each pair of rows is
compared once), so a 32 768-row table is analysed in well under a minute on two cores (benchmarks/rare.py,
benchmarks/embedding_quality.py --rare).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from research import figures
from research.analysis import blas

RARE_FILE = "rare_tokens.json"
NORM_PLOT, BUCKETS_PLOT = "norm_vs_frequency.png", "buckets.png"
NUM_NEIGHBOURS = 10
NUM_PAIRS = 10_000
CHUNK_ROWS = 512
TOP_COMPONENTS = (1, 10)
# The per-bucket figures a report plots (one line per group): name -> axis label.
BUCKET_METRICS = {"mean_norm": "mean row norm", "mean_drift_l2": "mean L2 drift from init",
                  "mean_cosine_to_init": "mean cosine to the initial row", "mean_knn_cosine": "mean cosine to 10-NN",
                  "mean_present": "mean steps present"}
GEOMETRY_METRICS = ("anisotropy", "variance_top1", "variance_top10", "isotropy", "norm_freq_spearman")


# -------------------------------------------------------------------------------------------------- buckets


def bucket_index(counts_V: np.ndarray, base: float = 10.0) -> np.ndarray:
  """int [V]: 0 for count 0, k >= 1 for counts in [base^(k-1), base^k)."""
  counts_V = np.asarray(counts_V, np.float64)
  out = np.zeros(counts_V.shape, np.int64)
  seen = counts_V > 0
  # floor(log_base(c)) + 1: the float estimate, then moved so that base^(k-1) <= c < base^k holds against the same
  # powers `bucket_bounds` reports (the logarithm alone puts exact powers, or counts just below one, a bucket off).
  c = counts_V[seen]
  k = np.floor(np.log(c) / np.log(base)).astype(np.int64)
  k -= np.power(base, k.astype(np.float64)) > c
  k += np.power(base, (k + 1).astype(np.float64)) <= c
  out[seen] = k + 1
  return out


def bucket_bounds(k: int, base: float = 10.0) -> tuple[float, float]:
  """[low, high) of bucket k in training counts."""
  return (0.0, 1.0) if k == 0 else (float(base ** (k - 1)), float(base ** k))


def bucket_label(k: int, base: float = 10.0) -> str:
  low, high = bucket_bounds(k, base)
  return "0" if k == 0 else f"[{low:g}, {high:g})"


def _unit(x_NxD: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(x_NxD, axis=1, keepdims=True)
  return x_NxD / np.maximum(norms, 1e-12)


def _top_k(x_NxM: np.ndarray, k: int) -> np.ndarray:
  """The k largest entries of each row (in no order), partitioning x in place."""
  x_NxM.partition(x_NxM.shape[1] - k, axis=1)
  return x_NxM[:, -k:]


def knn_cosine(table_VxD: np.ndarray, k: int = NUM_NEIGHBOURS, chunk: int = CHUNK_ROWS) -> np.ndarray:
  """float [V]: each row's mean cosine to its k nearest rows (by cosine, itself excluded), chunk rows at a time.

  Cosine is symmetric, so a chunk is compared with itself and the rows after it only (half the products of a full
  search): its rows merge those columns into their running top k, and the later rows merge the chunk's rows into
  theirs (the transposed block). Never more than a chunk × V block of similarities at once."""
  unit_VxD = _unit(np.asarray(table_VxD, np.float32))
  v = unit_VxD.shape[0]
  k = min(k, v - 1)
  if k < 1:
    return np.zeros(v, np.float64)
  top_VxK = np.full((v, k), -np.inf, np.float32)
  for start in range(0, v, chunk):
    stop = min(start + chunk, v)
    sims_CxR = unit_VxD[start:stop] @ unit_VxD[start:].T  # this chunk against itself and every later row
    rows = np.arange(stop - start)
    sims_CxR[rows, rows] = -np.inf  # not its own neighbour
    top_VxK[start:stop] = _top_k(np.concatenate([top_VxK[start:stop], sims_CxR], axis=1), k)
    if stop < v:
      top_VxK[stop:] = _top_k(np.concatenate([top_VxK[stop:], sims_CxR[:, stop - start:].T], axis=1), k)
  return top_VxK.mean(axis=1, dtype=np.float64)


def _mean(x: np.ndarray) -> float | None:
  return float(np.mean(x)) if x.size else None


def buckets(table_VxD: np.ndarray, counts_V: np.ndarray, *, init_VxD: np.ndarray | None = None,
            present_V: np.ndarray | None = None, words: Sequence[str] | None = None,
            base: float = 10.0, scorer: str = "batched", exclude_rows: Sequence[int] = ()) -> list[dict[str, Any]]:
  """One record per non-empty bucket, in order of frequency (see the module docstring); `scorer`: the analogy
  scorer of the word benchmarks (`quality.benchmarks`). Rows in `exclude_rows` are in no bucket (a run's marker
  tokens: their counts say nothing about text); they are still neighbours of the others."""
  table_VxD = np.asarray(table_VxD, np.float64)
  counts_V = np.asarray(counts_V, np.float64)
  index_V = bucket_index(counts_V, base)
  index_V[np.asarray(exclude_rows, np.int64)] = -1
  norms_V = np.linalg.norm(table_VxD, axis=1)
  knn_V = knn_cosine(table_VxD)
  if init_VxD is not None:
    init_VxD = np.asarray(init_VxD, np.float64)
    drift_V = np.linalg.norm(table_VxD - init_VxD, axis=1)
    cos_V = np.sum(_unit(table_VxD) * _unit(init_VxD), axis=1)
  out = []
  for k in np.unique(index_V[index_V >= 0]):
    rows = np.flatnonzero(index_V == k)
    low, high = bucket_bounds(int(k), base)
    record: dict[str, Any] = {
        "bucket": int(k), "label": bucket_label(int(k), base), "low": low, "high": high, "rows": int(rows.size),
        "tokens": float(counts_V[rows].sum()), "mean_count": _mean(counts_V[rows]),
        "mean_present": None if present_V is None else _mean(np.asarray(present_V, np.float64)[rows]),
        "mean_norm": _mean(norms_V[rows]), "mean_knn_cosine": _mean(knn_V[rows]),
        "mean_drift_l2": None if init_VxD is None else _mean(drift_V[rows]),
        "mean_cosine_to_init": None if init_VxD is None else _mean(cos_V[rows])}
    if words is not None:
      record["benchmarks"] = bucket_benchmarks(table_VxD, rows, words, scorer)
    out.append(record)
  return out


def bucket_benchmarks(table_VxD: np.ndarray, rows: np.ndarray, words: Sequence[str],
                      scorer: str = "batched") -> dict[str, Any]:
  """gensim's analogy and word-pair scores of the KeyedVectors restricted to these rows' words (word tokenizer)."""
  from research.analysis import quality
  keys, picked, seen = [], [], set()
  for r in rows:
    w = words[r]
    if w and w not in seen:
      seen.add(w)
      keys.append(w)
      picked.append(r)
  if not keys:
    return {}
  vectors_NxD = np.asarray(table_VxD, np.float32)[np.asarray(picked)]
  return quality.benchmarks(quality.keyed_vectors(keys, vectors_NxD), scorer=scorer)


# ------------------------------------------------------------------------------------------------- geometry


def anisotropy(table_VxD: np.ndarray, pairs: int = NUM_PAIRS, seed: int = 0) -> float:
  """Mean cosine of `pairs` random pairs of distinct rows (seeded)."""
  v = table_VxD.shape[0]
  rng = np.random.default_rng(seed)
  i = rng.integers(0, v, pairs)
  j = (i + rng.integers(1, v, pairs)) % v  # j != i
  unit = _unit(np.asarray(table_VxD, np.float64))
  return float(np.mean(np.sum(unit[i] * unit[j], axis=1)))


def variance_shares(table_VxD: np.ndarray, top: Sequence[int] = TOP_COMPONENTS) -> dict[int, float]:
  """{k: share of the centred variance in the first k principal components}."""
  x = np.asarray(table_VxD, np.float64)
  x = x - x.mean(axis=0)
  with blas.one_thread():  # a d × d eigenproblem: docs/benchmarks.md on OpenBLAS threads
    eig = np.sort(np.linalg.eigvalsh(x.T @ x))[::-1]
  total = max(float(eig.sum()), 1e-300)
  return {k: float(eig[:k].sum() / total) for k in top}


def _logsumexp_columns(x_VxD: np.ndarray, sign: float) -> np.ndarray:
  """log Σ_v exp(sign · x[v, d]) per column d, shifted by the column's maximum so that nothing overflows."""
  peak_D = (x_VxD.max(axis=0) if sign > 0 else -x_VxD.min(axis=0))
  return peak_D + np.log(np.exp(sign * x_VxD - peak_D).sum(axis=0))


def isotropy(table_VxD: np.ndarray) -> float:
  """Mu & Viswanath 2018: min_c Z(c) / max_c Z(c), c over ± the eigenvectors of WᵀW, Z(c) = Σ_w exp(c·w); in log
  space (shifted by the maximum), so large norms do not overflow."""
  w = np.asarray(table_VxD, np.float64)
  with blas.one_thread():
    _, vectors_DxD = np.linalg.eigh(w.T @ w)
  proj_VxD = w @ vectors_DxD
  # An eigenvector's sign is the solver's choice: both c and -c are used, so the figure does not depend on it.
  log_z = np.concatenate([_logsumexp_columns(proj_VxD, 1.0), _logsumexp_columns(proj_VxD, -1.0)])
  return float(np.exp(log_z.min() - log_z.max()))


def norm_frequency_spearman(table_VxD: np.ndarray, counts_V: np.ndarray) -> float | None:
  from scipy.stats import spearmanr
  norms = np.linalg.norm(np.asarray(table_VxD, np.float64), axis=1)
  logf = np.log1p(np.asarray(counts_V, np.float64))
  if np.ptp(norms) == 0 or np.ptp(logf) == 0:
    return None
  return float(spearmanr(norms, logf).statistic)


def kept_rows(num_rows: int, exclude_rows: Sequence[int]) -> np.ndarray:
  """bool [num_rows]: False at `exclude_rows` (the markers), True elsewhere."""
  keep = np.ones(num_rows, bool)
  keep[np.asarray(exclude_rows, np.int64)] = False
  return keep


def geometry(table_VxD: np.ndarray, counts_V: np.ndarray | None = None,
             exclude_rows: Sequence[int] = ()) -> dict[str, float | None]:
  """The table's geometry (every row), and the norm-frequency correlation over the rows not in `exclude_rows` (the
  markers: their counts are no word's frequency, as for the buckets)."""
  shares = variance_shares(table_VxD)
  keep = kept_rows(len(table_VxD), exclude_rows)
  spearman = None if counts_V is None else norm_frequency_spearman(np.asarray(table_VxD)[keep],
                                                                   np.asarray(counts_V)[keep])
  return {"anisotropy": anisotropy(table_VxD), "variance_top1": shares[1], "variance_top10": shares[10],
          "isotropy": isotropy(table_VxD), "norm_freq_spearman": spearman}


# ------------------------------------------------------------------------------------------- absent rows


def absent_rows(table_VxD: np.ndarray, init_VxD: np.ndarray, present_V: np.ndarray) -> dict[str, Any]:
  """The rows no batch held (present == 0): `rows` (how many), `rows_changed` (how many differ from their initial
  value in any element) and `max_abs_change` (the largest |w − w₀| over their elements; exactly 0.0 when none
  moved, None when no row is absent). The table must be the one the counts describe (same step)."""
  absent_V = np.asarray(present_V) == 0
  change_AxD = np.abs(np.asarray(table_VxD, np.float64)[absent_V] - np.asarray(init_VxD, np.float64)[absent_V])
  return {"rows": int(absent_V.sum()), "rows_changed": int((change_AxD > 0).any(axis=1).sum()),
          "max_abs_change": float(change_AxD.max()) if change_AxD.size else None}


def updated_while_absent(present_V: np.ndarray, nonzero_V: np.ndarray) -> dict[str, int]:
  """The per-step form of "rows for tokens not present remain unchanged", from the counts alone: a row whose update
  was non-zero in more steps than a batch held it was updated in at least (nonzero − present) steps without being in
  the batch. `updated_while_absent`: how many rows that is (0 is what the claim needs; any other value disproves it
  for that many rows); `updated_while_absent_steps`: Σ max(nonzero − present, 0), a lower bound on the row-steps
  updated while absent (a row can also keep still in a step that held it: untied, present only as a target)."""
  excess_V = np.asarray(nonzero_V, np.int64) - np.asarray(present_V, np.int64)
  return {"updated_while_absent": int((excess_V > 0).sum()),
          "updated_while_absent_steps": int(np.maximum(excess_V, 0).sum())}


def rare_report(table_VxD: np.ndarray, counts_V: np.ndarray, *, init_VxD: np.ndarray | None = None,
                present_V: np.ndarray | None = None, head_VxD: np.ndarray | None = None,
                words: Sequence[str] | None = None, base: float = 10.0, scorer: str = "batched",
                exclude_rows: Sequence[int] = ()) -> dict[str, Any]:
  """The figures of rare_tokens.json for arrays: buckets of the input table (without `exclude_rows`), geometry of it
  (every row, but the norm-frequency correlation without `exclude_rows`; and of the head)."""
  report: dict[str, Any] = {
      "vocab_size": int(table_VxD.shape[0]), "dim": int(table_VxD.shape[1]), "bucket_base": base,
      "buckets": buckets(table_VxD, counts_V, init_VxD=init_VxD, present_V=present_V, words=words, base=base,
                         scorer=scorer, exclude_rows=exclude_rows),
      "geometry": {"input": geometry(table_VxD, counts_V, exclude_rows)}}
  if head_VxD is not None:
    report["geometry"]["output"] = geometry(head_VxD, counts_V, exclude_rows)
  return report


# ---------------------------------------------------------------------------------------------------- plots


def plot_norm_vs_frequency(table_VxD: np.ndarray, counts_V: np.ndarray, path: Path, title: str = "",
                           exclude_rows: Sequence[int] = ()) -> None:
  """Row norm against training count (log x; never-seen rows drawn at 0.5, left of 1), without `exclude_rows`."""
  keep = kept_rows(len(counts_V), exclude_rows)
  norms = np.linalg.norm(np.asarray(table_VxD, np.float64), axis=1)[keep]
  counts = np.asarray(counts_V, np.float64)[keep]
  fig = figures.figure((6, 4))
  ax = fig.add_subplot()
  ax.scatter(np.where(counts > 0, counts, 0.5), norms, s=3, alpha=0.4, linewidths=0)
  ax.set_xscale("log")
  ax.set_xlabel("training count (log; never seen at 0.5)")
  ax.set_ylabel("row norm")
  ax.set_title(f"{title}\nrow norm vs training frequency".strip(), fontsize=10)
  ax.grid(True, alpha=0.3)
  figures.save_png(fig, path, dpi=110, tight=True)


def plot_buckets(report: dict[str, Any], path: Path, title: str = "") -> None:
  """One panel per bucket metric, x = frequency bucket."""
  rows = report["buckets"]
  fig = figures.figure((4 * len(BUCKET_METRICS), 3.6))
  for i, (metric, label) in enumerate(BUCKET_METRICS.items()):
    ax = fig.add_subplot(1, len(BUCKET_METRICS), i + 1)
    pts = [(j, r[metric]) for j, r in enumerate(rows) if r.get(metric) is not None]
    if pts:
      xs, ys = zip(*pts)
      ax.plot(xs, ys, marker="o")
    else:  # e.g. no embedding_init.npy / update_counts.npz (a run from before they existed, counts off)
      ax.text(0.5, 0.5, "not available for this run", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["label"] for r in rows], rotation=30, fontsize=7)
    ax.set_xlabel("training count bucket")
    ax.set_title(label, fontsize=9)
    ax.grid(True, alpha=0.3)
  fig.suptitle(title, fontsize=10)
  figures.save_png(fig, path, dpi=110, tight=True)


# ----------------------------------------------------------------------------------------------- entry point


def update_counts(workdir: Path, vocab_size: int) -> dict[str, Any] | None:
  """RUN/update_counts.npz as {'present', 'nonzero', 'step' (None in a file written before it had one)}, or None
  without the file; a damaged file (unreadable, or not two [vocab_size] counts and a step) is an AnalysisError
  naming it (a rerun of research-train writes it again)."""
  from research.analysis import quality
  from research.data import tokenizers as tokenizers_lib
  from research.train import loop
  path = workdir / loop.UPDATE_COUNTS_FILE
  if not path.exists():
    return None
  remedy = "rerun research-train in that workdir with its config: a finished run writes it again"
  with quality.damaged_file(path, remedy), np.load(path) as npz:
    out = {"present": tokenizers_lib.check_counts(npz["present"], vocab_size, "'present'"),
           "nonzero": tokenizers_lib.check_counts(npz["nonzero"], vocab_size, "'nonzero'"), "step": None}
    if "step" in npz.files:
      step = npz["step"]
      if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
        raise ValueError(f"'step' is {step.dtype}{list(step.shape)}, not a step number")
      out["step"] = int(step)
    return out


def run_arrays(workdir: Path, params: Any, table_shape: tuple[int, ...],
               counts: dict[str, Any] | None) -> dict[str, Any]:
  """(init table or None, present counts or None, head [V, width] or None) from a run's files, its `update_counts`
  and its parameters; the init table is None when it is not this table's start (an older run's file)."""
  from research.analysis import quality
  head = params.get("lm_head", {}).get("kernel") if isinstance(params.get("lm_head"), dict) else None
  return {"init_VxD": quality.initial_table(workdir, table_shape),
          "present_V": None if counts is None else counts["present"],
          "head_VxD": None if head is None else np.asarray(head, np.float32).T}


def _table_at(workdir: Path, step: int) -> tuple[np.ndarray | None, str | None]:
  """(the token table of the run's checkpoint at `step`, None) or (None, why not): that checkpoint is not kept, or its
  files are missing or damaged (the analysed checkpoint's damage is load_run's one line; this one only costs the
  figures measured from it, so the rest of the analysis is still written)."""
  from research.error_text import first_line
  from research.train import checkpoint as checkpoint_lib
  from research.train import loop
  ckpt_dir = workdir / "checkpoints"
  what = f"step {step}, the step {loop.UPDATE_COUNTS_FILE} counts up to"
  with checkpoint_lib.Checkpointer(ckpt_dir, keep=10**6, async_save=False, read_only=True) as ckpt:
    if step not in ckpt.all_steps():
      return None, f"no checkpoint of {what}"
    try:
      return np.asarray(ckpt.restore_params(step)["token_embed"]["embedding"], np.float32), None
    except Exception as e:  # noqa: BLE001 (Orbax raises TypeError, ValueError or a bare Exception for missing files)
      return None, (f"the checkpoint of {what} ({str(ckpt_dir / str(step))!r}) cannot be restored, its files are "
                    f"missing or damaged ({first_line(e, limit=100)})")


def run_absent_rows(workdir: Path, run_step: int, table_VxD: np.ndarray, init_VxD: np.ndarray | None,
                    counts: dict[str, Any] | None) -> dict[str, Any]:
  """`absent_rows` of a run, measured at the step its update_counts.npz counts up to (its `step`; the summary's
  step for a file written before it had one: both are written at the end of training): the analysed checkpoint's
  table when that is the step (a finished run's last checkpoint), else the checkpoint of that step. Also `step`
  and `note`: why the figures are None, when they are."""
  from research.train import loop
  out: dict[str, Any] = {"rows": None, "rows_changed": None, "max_abs_change": None, "updated_while_absent": None,
                         "updated_while_absent_steps": None, "step": None, "note": None}
  if counts is None:  # `update_counts`: no file
    return {**out, "note": f"no {loop.UPDATE_COUNTS_FILE} (train.count_updates off, or the run did not finish)"}
  present_V, step = counts["present"], counts_step(workdir, counts)
  out.update(updated_while_absent(present_V, counts["nonzero"]))  # counts only: no table needed
  if init_VxD is None:
    return {**out, "note": f"no {loop.INIT_TABLE_FILE} of this table's shape"}
  if step is None:
    return {**out, "note": f"the step {loop.UPDATE_COUNTS_FILE} counts up to is unknown"}
  table, why = (table_VxD, None) if step == run_step else _table_at(workdir, step)
  if table is None:
    return {**out, "step": step, "note": why}
  return {**out, **absent_rows(table, init_VxD, present_V), "step": step, "note": None}


def check_run_files(workdir: str | os.PathLike) -> None:
  """The files the analysis cannot do without (a run directory's token counts), before anything else runs."""
  from research.analysis import quality
  from research.data import tokenizers as tokenizers_lib
  if Path(workdir).is_dir() and (Path(workdir) / "config.json").exists() and \
      not tokenizers_lib.counts_path(workdir).exists():
    raise quality.AnalysisError(f"run {str(workdir)!r} has no token_counts.npy: frequency buckets need it")


def marker_rows(vocab_size: int) -> list[int]:
  """The rows no bucket holds: the tokenizer's markers ([PAD], [CLS], [SEP], [MASK]), which stand for no text, so
  their training counts say nothing about a word's frequency ([MASK] counts 0 and is read at every MLM step). [UNK]
  stands for words and stays."""
  from research.data import tokenizers as tokenizers_lib
  return [i for i in tokenizers_lib.SPECIAL_IDS if i != tokenizers_lib.UNK_ID and i < vocab_size]


def counts_step(workdir: Path, counts: dict[str, Any] | None) -> int | None:
  """The step update_counts.npz counts up to: its own `step`, else (a file written before it had one) summary.json's,
  written in the same call at the end of training."""
  import json

  from research.train import loop
  if counts is None:
    return None
  if counts["step"] is not None:
    return counts["step"]
  summary_file = workdir / loop.SUMMARY_FILE
  return json.loads(summary_file.read_text()).get("step") if summary_file.exists() else None


def analyze_run(workdir: str | os.PathLike, checkpoint: str = "best", base: float = 10.0, *, run=None
                ) -> dict[str, Any]:
  """The rare-token figures of the run's best (or last) checkpoint: RUN/eval/rare_tokens.json and two plots. `run`:
  that checkpoint already loaded (`quality.load_run`: one research-analyze call analyses one step)."""
  from research.analysis import quality
  from research.data import tokenizers as tokenizers_lib
  from research.embeddings import pretrained
  workdir = Path(workdir)
  run, table_VxD, tokenizer, counts = quality.run_table(workdir, checkpoint, run)
  check_run_files(workdir)  # counts is None without the file
  kind = run.config.data.tokenizer
  tokens = tokenizers_lib.vocabulary(tokenizer)
  updates = update_counts(workdir, table_VxD.shape[0])  # read once: buckets, absent rows, its step
  arrays = run_arrays(workdir, run.params, table_VxD.shape, updates)
  init = arrays["init_VxD"]  # None for an older run's file: no drift rather than a wrong one
  words = pretrained.token_words(tokens, kind) if kind == "word" else None
  if words is not None:  # the five special tokens are not words
    words = ["" if t in tokenizers_lib.SPECIAL_TOKENS else w for t, w in zip(tokens, words)]
  markers = marker_rows(table_VxD.shape[0])
  report = {"checkpoint_step": run.step, "checkpoint": checkpoint, "tokenizer": kind,
            "tied": bool(run.config.model.tie_embeddings),
            **rare_report(table_VxD, counts, init_VxD=init, present_V=arrays["present_V"],
                          head_VxD=arrays["head_VxD"], words=words, base=base, exclude_rows=markers),
            "marker_rows": markers, "has_init": init is not None, "has_update_counts": arrays["present_V"] is not None,
            "update_counts_step": counts_step(workdir, updates),
            "absent_rows": run_absent_rows(workdir, run.step, table_VxD, init, updates)}
  out_dir = write_rare(workdir, report).parent
  plot_norm_vs_frequency(table_VxD, counts, out_dir / NORM_PLOT, title=workdir.resolve().name, exclude_rows=markers)
  plot_buckets(report, out_dir / BUCKETS_PLOT, title=workdir.resolve().name)
  return report


def write_rare(workdir: str | os.PathLike, report: dict[str, Any]) -> Path:
  """RUN/eval/rare_tokens.json (what research.report reads; its tests write fixtures through this)."""
  from research.analysis import quality
  from research.train import loop
  out_dir = Path(workdir) / quality.EVAL_DIR
  out_dir.mkdir(parents=True, exist_ok=True)
  loop.atomic_write_json(out_dir / RARE_FILE, report)
  return out_dir / RARE_FILE


def summary_lines(report: dict[str, Any]) -> list[str]:
  num = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
  lines = []
  for side, g in report["geometry"].items():
    lines.append(f"{side}: " + ", ".join(f"{k} {num(g[k])}" for k in GEOMETRY_METRICS))
  for b in report["buckets"]:
    lines.append(f"count {b['label']}: {b['rows']} rows, norm {num(b['mean_norm'])}, drift {num(b['mean_drift_l2'])}"
                 f", 10-NN cosine {num(b['mean_knn_cosine'])}")
  absent = report.get("absent_rows")
  if absent and absent["note"]:
    lines.append(f"rows absent from every batch: not measured ({absent['note']})")
  elif absent:
    change = "n/a" if absent["max_abs_change"] is None else f"{absent['max_abs_change']:.3g}"
    lines.append(f"rows absent from every batch (to step {absent['step']}): {absent['rows']}, of which "
                 f"{absent['rows_changed']} moved from init; max |change| {change}")
  counted = report.get("update_counts_step")
  if absent and absent.get("updated_while_absent") is not None:
    lines.append(f"rows updated in a step no batch held them{'' if counted is None else f' (to step {counted})'}: "
                 f"{absent['updated_while_absent']} (at least {absent['updated_while_absent_steps']} row-steps)")
  if counted is not None and counted != report["checkpoint_step"]:
    lines.append(f"note: the update counts are those of step {counted} (where training last ended), not of the "
                 f"analysed step {report['checkpoint_step']}: mean_present and the per-step figures count steps "
                 f"1-{counted}")
  return lines
