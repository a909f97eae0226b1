"""Loss by position: the mean loss of the scored targets at each position of the evaluation windows, bucketed
(`research-evaluate --by_position`, docs/reports.md "Loss by position"), written to `RUN/eval/loss_by_position.json`:

  {"train_len": T, "mode": ..., "stride": S | null, "split": "valid", "checkpoint_step": k, "checkpoint": "best",
   "objective": "clm", "rope_scaling": ..., "rope_factor": ..., "buckets": "log2, 2 per octave, + T",
   "mlm_masks": "per_row" (an MLM's only, as in extrapolation.json),
   "results": [{"multiple": m, "length": L, "edges": [0, 1, 2, 3, 4, 6, 8, ...], "tokens": [...], "loss": [...]},
               {"multiple": m, "length": L, "note": "..."}  (n/a, as in extrapolation.json), ...]}

Bucket b holds the window columns (0-based) p with edges[b] <= p < edges[b+1]; its `tokens` is the number of scored
targets there and `loss` their mean negative log-likelihood (nats; null for an empty bucket). The sums come from the
same forward pass as the length's perplexity (steps.eval_step with `by_position`), so the token-weighted mean of a
length's bucket losses is log(ppl) of that length in eval/extrapolation.json.

CLM: column p's target is token p + 1 of the window, predicted from p + 1 tokens of context. MLM: the masked
targets at column p (column 0 is [CLS], never a target). Sliding windows: the column inside the window, so only the
last `stride` columns of every window after the first are scored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from research.evaluate import previous
from research.train import loop

BUCKETS = "log2, 2 per octave, + T"  # what `bucket_edges` does, recorded in the file
FILE = "loss_by_position.json"


def bucket_edges(length: int, train_len: int) -> list[int]:
  """Edges 0 = e_0 < e_1 < … < e_k = length: every round(2^(i/2)) below `length` (0, 1, 2, 3, 4, 6, 8, 11, 16, 23,
  32, 45, 64, …) plus the training length, so no bucket mixes columns within the trained length with columns
  beyond it. Log-spaced because the loss changes fastest over the first tokens of context and extrapolation is
  read in multiples of T; half-octaves give ~2 buckets per doubling (20 for 1024 columns)."""
  edges = {0, length}
  i = 0
  while (e := int(round(2 ** (i / 2)))) < length:
    edges.add(e)
    i += 1
  if 0 < train_len < length:
    edges.add(int(train_len))
  return sorted(edges)


def bucket(nll_by_column: np.ndarray, tokens_by_column: np.ndarray, edges: list[int]) -> tuple[list[int], list]:
  """(tokens per bucket, mean loss per bucket or None where empty) from per-column sums over the split."""
  nll = np.add.reduceat(np.asarray(nll_by_column, np.float64), edges[:-1])
  tokens = np.add.reduceat(np.asarray(tokens_by_column, np.float64), edges[:-1])
  counts = [int(round(t)) for t in tokens]
  losses = [float(s / t) if t > 0 else None for s, t in zip(nll, tokens)]
  return counts, losses


def result_record(multiple: int, length: int, *, train_len: int | None = None, nll_by_column=None,
                  tokens_by_column=None, note: str | None = None) -> dict[str, Any]:
  """One length: its buckets (edges, tokens, mean loss), or just the `note` saying why it is n/a."""
  record: dict[str, Any] = {"multiple": int(multiple), "length": int(length)}
  if note:
    return {**record, "note": note}
  edges = bucket_edges(length, train_len)
  tokens, losses = bucket(nll_by_column, tokens_by_column, edges)
  if any(v is not None and not math.isfinite(v) for v in losses):
    raise ValueError(f"non-finite loss by position at length {length}")
  return {**record, "edges": edges, "tokens": tokens, "loss": losses}


def report_record(*, train_len: int, mode: str, stride: int | None, split: str, checkpoint_step: int, objective: str,
                  rope_scaling: str | None, rope_factor: float | None, results: list[dict],
                  checkpoint: str | None = None, mlm_masks: str | None = None) -> dict[str, Any]:
  """`mlm_masks` (an MLM run's only): the masking rule, `extrapolation.MLM_MASKS`; a file without it was scored with
  masks per batch (before 2026-12-07), which research-report leaves out of its plot and research-sweep evaluates
  again."""
  record = {"train_len": train_len, "mode": mode, "stride": stride if mode == "sliding" else None, "split": split,
            "checkpoint_step": checkpoint_step, "checkpoint": checkpoint, "objective": objective,
            "rope_scaling": rope_scaling,
            "rope_factor": rope_factor if rope_scaling else None, "buckets": BUCKETS, "results": results}
  return {**record, "mlm_masks": mlm_masks} if mlm_masks else record


def report_file(rope_scaling: str | None = None) -> str:
  return FILE if not rope_scaling else f"loss_by_position_{rope_scaling}.json"


def write_report(workdir: str | Path, report: dict[str, Any]) -> Path:
  """RUN/eval/loss_by_position.json (loss_by_position_<scaling>.json with a RoPE scaling), written atomically; the
  file it replaces is kept first (`previous.keep_previous`)."""
  path = Path(workdir) / "eval" / report_file(report["rope_scaling"])
  path.parent.mkdir(exist_ok=True)
  previous.keep_previous(path, report)
  loop.atomic_write_json(path, report)
  return path
