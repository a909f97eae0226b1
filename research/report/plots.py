"""PNG plots from a table and its runs. Uses matplotlib's object API with the Agg canvas (no pyplot, no global
backend state), so it works headless and from threads.

Each plot function writes its file and returns None, or returns the reason it was skipped (and writes nothing).
"""

from __future__ import annotations

import math
import pathlib
import textwrap

from matplotlib.ticker import FuncFormatter

from research import figures
from research.report.runs import RARE_BUCKET_METRICS, RARE_FILE, RunSet, Trial, by_position_file, unscored
from research.report.tables import VALID_PPL, Table, applied_factor, format_value

PPL_VS_LENGTH = "ppl_vs_length.png"
LOSS_BY_POSITION = "loss_by_position.png"
CURVES = "curves.png"
TIED_VS_UNTIED = "tied_vs_untied.png"


def rare_plot_name(metric: str) -> str:
  """rare_<metric>.png: one per RARE_BUCKET_METRICS entry, drawn when a trial has eval/rare_tokens.json."""
  return f"rare_{metric}.png"


def _color(i: int) -> str:
  return f"C{i % 10}"


def _any_stale(table: Table) -> bool:
  """Whether a finished trial of the table has a stale evaluation (left out of the plots; report.md names it)."""
  return any(t.stale for g in table.groups for t in g.finished)


def _wrapped(text: str, inches: float, fontsize: float = 10) -> str:
  """`text` with each line wrapped to the width of `inches` at `fontsize` (about 0.55 em a character): a long sweep
  name or group label would otherwise run past the figure's edge and be clipped."""
  width = max(20, int(inches * 72 / (0.55 * fontsize)))
  return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _n_text(counts) -> str:
  """A legend's n: how many trials a line averages, `2` or, when its points average different numbers (a length
  or bucket some trials lack), the range `1–2`."""
  counts = sorted(set(counts))
  return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def ppl_series(table: Table) -> list[tuple]:
  """[(group index, group, sorted [(length, mean, min, max)], legend n)] of the groups with an evaluated length: the
  lines of ppl_vs_length.png (the table's cells, so stale and n/a values are left out as there, and so is a mean
  of trials scored with different settings, which the table does not rank: `Cell.mixed`)."""
  eval_columns = [c for c in table.columns if c.length is not None and not c.passkey]
  series = []
  for gi, g in enumerate(table.groups):
    cells = [(c, cell) for c in eval_columns if (cell := table.cell(gi, c)).n and not cell.mixed]
    pts = [(c.length, cell.mean, min(cell.values), max(cell.values)) for c, cell in cells]
    if pts:
      series.append((gi, g, sorted(pts), _n_text(cell.n for _, cell in cells)))
  return series


def plot_ppl_vs_length(table: Table, path: pathlib.Path) -> str | None:
  """Mean perplexity per group against evaluation length (log-log), shaded min..max over seeds; n/a skipped."""
  eval_columns = [c for c in table.columns if c.length is not None and not c.passkey]
  series = ppl_series(table)
  if not series:
    return "no finished trial has an evaluated length (eval/extrapolation.json with a perplexity" + \
        ("; stale evaluations are left out, see report.md" if _any_stale(table) else "") + ")"
  fig = figures.figure((7, 4.5), layout="constrained")
  ax = fig.add_subplot()
  for gi, g, pts, n in series:
    xs, means, lows, highs = zip(*pts)
    ax.plot(xs, means, marker="o", color=_color(gi), label=f"{g.label} (n={n})",
            linestyle="--" if g.rope_scaling else "-")
    if len(xs) == 1 and lows[0] != highs[0]:  # a band needs two points: one point shows its spread as an error bar
      ax.errorbar(xs, means, yerr=[[means[0] - lows[0]], [highs[0] - means[0]]], fmt="none", color=_color(gi),
                  capsize=4)
    elif any(lo != hi for lo, hi in zip(lows, highs)):
      ax.fill_between(xs, lows, highs, color=_color(gi), alpha=0.2, linewidth=0)
  train_lens = {c.length for c in eval_columns if c.multiple == 1}
  for t in train_lens:
    ax.axvline(t, color="0.6", linestyle=":", linewidth=1)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xticks(sorted({c.length for c in eval_columns}))
  ax.set_xticklabels([str(x) for x in sorted({c.length for c in eval_columns})])
  ax.set_xlabel("evaluation length (tokens)" + ("; dotted: training length" if train_lens else ""))
  plain = FuncFormatter(lambda v, _: f"{v:g}")
  ax.yaxis.set_major_formatter(plain)
  ax.yaxis.set_minor_formatter(plain)
  ax.tick_params(axis="y", which="minor", labelsize=7)
  ax.set_ylabel("perplexity (log scale)")
  scaled = "; dashed: RoPE scaling at evaluation" if any(g.rope_scaling for g in table.groups) else ""
  ax.set_title(_wrapped(f"{table.title}\nperplexity vs evaluation length (line: mean; band or error bar: min..max over "
                        f"seeds{scaled})", fig.get_figwidth()), fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  figures.save_png(fig, path, dpi=120)
  return None


def loss_curves(trial: Trial) -> dict[str, list[tuple[int, float]]]:
  """{split: sorted [(step, loss)]} of the trial's metrics.jsonl, train and valid, for the splits it has: the lines
  of curves.png. A validation that scored no target (`runs.unscored`: its loss 0 is a placeholder) is left out."""
  curves = {}
  for split in ("train", "valid"):
    pts = sorted((r["step"], r["loss"]) for r in trial.metrics
                 if r.get("split") == split and r.get("step") is not None and r.get("loss") is not None
                 and not unscored(r))
    if pts:
      curves[split] = pts
  return curves


def plot_curves(table: Table, runs: RunSet, path: pathlib.Path) -> str | None:
  """Training and validation loss against step, one line per trial, colored by group."""
  # A trial's training curve belongs to its own group, not to the rows of its RoPE-scaled evaluations.
  by_trial = {id(t): gi for gi, g in enumerate(table.groups) if g.rope_scaling is None for t in g.trials}
  lines = [(t, curves) for t in runs.trials if (curves := loss_curves(t))]
  if not lines:
    return "no trial has a metrics.jsonl with losses"
  fig = figures.figure((10, 4), layout="constrained")
  axes = {"train": fig.add_subplot(1, 2, 1), "valid": fig.add_subplot(1, 2, 2)}
  labelled = set()
  for t, curves in lines:
    gi = by_trial.get(id(t), 0)
    for split, pts in curves.items():
      steps, losses = zip(*pts)
      label = None
      if (gi, split) not in labelled:
        labelled.add((gi, split))
        label = table.groups[gi].label
      axes[split].plot(steps, losses, color=_color(gi), alpha=0.8, linewidth=1.2, label=label,
                       linestyle="-" if t.finished else "--", marker="o" if split == "valid" else None, markersize=3)
  for split, ax in axes.items():
    ax.set_title(_wrapped(f"{split} loss (one line per trial; dashed = not finished)", fig.get_figwidth() / 2),
                 fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7)
  figures.save_png(fig, path, dpi=120)
  return None


def tie_field(table: Table) -> str | None:
  return next((f for f in table.fields if f.rsplit(".", 1)[-1] == "tie_embeddings"), None)


def tied_bars(table: Table) -> dict[tuple, dict[bool, tuple[float, float | None]]]:
  """{values of the other swept fields: {tied: (mean, sample std)}}: the bars of tied_vs_untied.png (the table's
  valid ppl cells). The std is None for a one-trial arm: undefined, so that bar gets no error bar (a zero-length
  one would read as "no spread")."""
  field = tie_field(table)
  others = [f for f in table.fields if f != field]
  pairs: dict[tuple, dict[bool, tuple[float, float | None]]] = {}
  for gi, g in enumerate(table.groups):
    if g.rope_scaling is not None:  # same trials as their unscaled row, no validation perplexity of their own
      continue
    cell = table.cell(gi, VALID_PPL)
    key = tuple(format_value(g.values[f]) for f in others)
    pairs.setdefault(key, {})
    if cell.n:
      pairs[key][bool(g.values[field])] = (cell.mean, cell.std)
  return {k: v for k, v in pairs.items() if v}


def plot_tied_vs_untied(table: Table, path: pathlib.Path) -> str | None:
  """Validation perplexity, tied vs untied bars per combination of the other swept fields, error bars = sample
  std over seeds (none for a one-seed arm)."""
  field = tie_field(table)
  if field is None:
    return "tie_embeddings is not among the swept fields"
  others = [f for f in table.fields if f != field]
  pairs = tied_bars(table)
  if not pairs:
    return "no finished trial has a validation perplexity"
  fig = figures.figure((max(5, 1.3 * len(pairs) + 2), 4), layout="constrained")
  ax = fig.add_subplot()
  width = 0.38
  labels = [", ".join(f"{table.short[f]}={v}" for f, v in zip(others, k)) or "all" for k in pairs]
  for offset, tied, color in ((-width / 2, True, "C0"), (width / 2, False, "C1")):
    bars = [(i + offset, *v[tied]) for i, v in enumerate(pairs.values()) if tied in v]
    if bars:
      xs, ys, _ = zip(*bars)
      ax.bar(xs, ys, width, color=color, label="tied" if tied else "untied")
      spread = [(x, y, std) for x, y, std in bars if std is not None]
      if spread:
        ax.errorbar([x for x, _, _ in spread], [y for _, y, _ in spread], yerr=[s for *_, s in spread], fmt="none",
                    ecolor="k", capsize=4)
  ax.set_xticks(range(len(pairs)))
  ax.set_xticklabels(labels, rotation=20 if len(pairs) > 3 else 0, ha="right" if len(pairs) > 3 else "center",
                     fontsize=8)
  ax.set_ylabel("validation perplexity")
  ax.set_title(_wrapped(f"{table.title}\ntied vs untied embeddings (error bars: sample std over seeds; none for one "
                        f"seed)", fig.get_figwidth()), fontsize=10)
  ax.grid(True, axis="y", alpha=0.3)
  ax.legend()
  figures.save_png(fig, path, dpi=120)
  return None


def plot_rare_bucket_metric(table: Table, metric: str, path: pathlib.Path) -> str | None:
  """One line per group: the bucket mean of `metric` (eval/rare_tokens.json) against the bucket's lowest training
  count (log x; the never-seen bucket at 0.5), averaged over the group's finished trials."""
  series = []
  for gi, g in enumerate(table.groups):
    if g.rope_scaling is not None:
      continue
    by_low: dict[float, list[float]] = {}
    for t in g.finished:
      if t.rare is None or RARE_FILE.as_posix() in t.analysis_stale:  # a stale analysis: left out, as in the table
        continue
      for b in t.rare.buckets:
        if b.values.get(metric) is not None:
          by_low.setdefault(b.low if b.low > 0 else 0.5, []).append(b.values[metric])
    if by_low:
      series.append((gi, g, sorted((x, sum(v) / len(v)) for x, v in by_low.items()),
                     _n_text(len(v) for v in by_low.values())))
  if not series:
    return f"no finished trial has {metric} in eval/rare_tokens.json (research-analyze --rare)"
  fig = figures.figure((7, 4.5), layout="constrained")
  ax = fig.add_subplot()
  for gi, g, pts, n in series:
    xs, ys = zip(*pts)
    ax.plot(xs, ys, marker="o", color=_color(gi), label=f"{g.label} (n={n})")
  ax.set_xscale("log")
  ax.set_xlabel("training count bucket: lowest count (log; never seen at 0.5)")
  ax.set_ylabel(RARE_BUCKET_METRICS[metric])
  ax.set_title(_wrapped(f"{table.title}\n{RARE_BUCKET_METRICS[metric]} per frequency bucket (mean over seeds)",
                        fig.get_figwidth()), fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  figures.save_png(fig, path, dpi=120)
  return None


def position_series(table: Table) -> dict[int, dict[str, list]]:
  """{length: {"lines": [(group index, group, xs, mean losses, train_len)], "na": [(group, note)], "n": {group index:
  trials averaged}}} from the groups' finished trials' eval/loss_by_position.json (a RoPE-scaled row's: that
  scaling's eval/loss_by_position_<scaling>.json). A bucket's x is the 1-based centre of its columns ((lo + hi + 1) /
  2: a CLM target there has that many tokens of context); its y the mean over trials of the bucket's mean loss
  (empty buckets left out). Trials of a group whose buckets at a length differ from its first trial's are left out
  there (another training length). A scaled row whose trials applied different RoPE factors at a length
  (`tables.applied_factor`) has no line there but an n/a note, as the table does not rank such a mean."""
  out: dict[int, dict[str, list]] = {}
  for gi, g in enumerate(table.groups):
    file = by_position_file(g.rope_scaling).as_posix()
    by_length: dict[int, tuple[tuple[int, ...], list[list[float]], int | None]] = {}
    notes: dict[int, str] = {}
    factors: dict[int, set] = {}
    for t in g.finished:
      lbp = t.by_position_evaluation(g.rope_scaling)
      if lbp is None or file in t.stale or t.by_position_per_batch(g.rope_scaling):
        continue  # a stale evaluation (an old checkpoint's, an MLM's masks per batch) is left out; report.md names it
      for c in lbp.curves:
        if c.note is not None:
          notes.setdefault(c.length, c.note)
          continue
        edges, values, train_len, used = by_length.setdefault(c.length, (c.edges, [[] for _ in c.loss],
                                                                         lbp.train_len, []))
        if c.edges == edges:
          factors.setdefault(c.length, set()).add(applied_factor(lbp.protocol.get("rope_factor"), c.multiple))
          used.append(t.name)
          for b, v in enumerate(c.loss):
            if v is not None:
              values[b].append(v)
    for length in [n for n, applied in factors.items() if g.rope_scaling is not None and len(applied) > 1]:
      del by_length[length]
      notes[length] = "its trials applied different RoPE factors (see report.md)"
    for length, (edges, values, train_len, used) in by_length.items():
      pts = [((edges[b] + edges[b + 1] + 1) / 2, sum(v) / len(v)) for b, v in enumerate(values) if v]
      if pts:
        xs, ys = zip(*pts)
        entry = out.setdefault(length, {"lines": [], "na": [], "n": {}})
        entry["lines"].append((gi, g, xs, ys, train_len))
        entry["n"][gi] = len(used)
    for length, note in notes.items():
      if length not in by_length:
        out.setdefault(length, {"lines": [], "na": [], "n": {}})["na"].append((g, note))
  return dict(sorted(out.items()))


def plot_loss_by_position(table: Table, path: pathlib.Path) -> str | None:
  """One panel per evaluated length: mean loss against position in the window (log x), one line per group = mean
  over its finished trials, dotted line at the training length; groups that are n/a at a length are named there."""
  series = {length: s for length, s in position_series(table).items() if s["lines"]}
  if not series:
    if _any_stale(table) or any(t.by_position_notes() for g in table.groups for t in g.finished):
      return "no finished trial has a loss by position that is not stale (see report.md: rerun research-evaluate)"
    return "no finished trial has a loss by position (eval/loss_by_position.json: research-evaluate --by_position)"
  cols = min(3, len(series))
  rows = math.ceil(len(series) / cols)
  fig = figures.figure((5.2 * cols, 3.9 * rows), layout="constrained")
  for i, (length, s) in enumerate(series.items()):
    ax = fig.add_subplot(rows, cols, i + 1)
    for gi, g, xs, ys, _ in s["lines"]:
      ax.plot(xs, ys, marker=".", markersize=4, linewidth=1.2, color=_color(gi), label=f"{g.label} (n={s['n'][gi]})",
              linestyle="--" if g.rope_scaling else "-")
    for t in sorted({train_len for *_, train_len in s["lines"] if train_len and train_len < length}):
      ax.axvline(t + 0.5, color="0.4", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_title(f"evaluated at {length} tokens", fontsize=9)
    ax.set_xlabel("position in the window (1-based; dotted: training length)", fontsize=8)
    ax.set_ylabel("mean loss (nats)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="both", alpha=0.3)
    if s["na"]:
      ax.text(0.01, 0.01, "n/a: " + "; ".join(g.label for g, _ in s["na"]), transform=ax.transAxes, fontsize=6,
              va="bottom", color="0.3")
    if i == 0:
      ax.legend(fontsize=6)
  scaled = "; dashed: RoPE scaling at evaluation" if any(g.rope_scaling for s in series.values()
                                                         for _, g, *_ in s["lines"]) else ""
  fig.suptitle(_wrapped(f"{table.title}: loss by position (line: mean over seeds{scaled})", fig.get_figwidth()),
               fontsize=10)
  figures.save_png(fig, path, dpi=120)
  return None
