"""build_report(directory): load the runs, write report.md, table.csv, table.tex and the PNG plots."""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re

from research.error_text import unwritable
from research.report import plots, tables
from research.report.runs import MISSING, RARE_BUCKET_METRICS, UNREAD, ReportError, RunSet, display, load_runs

REPORT_MD = "report.md"
TABLE_CSV = "table.csv"
TABLE_TEX = "table.tex"


@dataclasses.dataclass(frozen=True)
class Report:
  directory: pathlib.Path
  markdown_path: pathlib.Path
  csv_path: pathlib.Path
  latex_path: pathlib.Path
  plots: dict[str, pathlib.Path]  # file name -> path, for the plots written
  skipped: dict[str, str]  # file name -> why the plot was not drawn
  table: str  # the markdown table followed by its footnotes (what the CLI prints)
  runs: RunSet
  data: tables.Table

  @property
  def paths(self) -> list[pathlib.Path]:
    return [self.markdown_path, self.csv_path, self.latex_path, *self.plots.values()]


def _write(path: pathlib.Path, text: str) -> None:
  """`text` into `path` atomically (a temp file renamed over it), every name in it `display`ed (a name that is not
  UTF-8 would fail the encoding); a write that fails removes its temp file."""
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    tmp.write_text(display(text), encoding="utf-8")
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def check_writable(directory: str | os.PathLike) -> None:
  """One ReportError when `directory` cannot be written to (a read-only mount, another user's runs): the report's
  files go there, so this is said before any run file is read, not as a traceback at the first plot. The test is
  a real file created and removed there (permission bits say nothing for root, or on a read-only mount).
  The probe is `error_text.unwritable`, as for research-evaluate and research-analyze (`loop.check_writable`, not
  imported here: that module imports JAX). A path that is not a directory is left to `load_runs`."""
  path = pathlib.Path(directory)
  if not path.is_dir():
    return
  why = unwritable(path)
  if why:
    raise ReportError(f"{str(path)!r} is not writable ({why}); research-report writes report.md, table.csv, "
                      f"table.tex and the plots there")


def _one_line(text: str, limit: int = 500) -> str:
  text = re.sub(r"\s+", " ", str(text)).strip()
  return text if len(text) <= limit else text[:limit - 1] + "…"


def _evaluation_line(runs: RunSet, table: tables.Table) -> str | None:
  settings, masks, scalings = [], [], {}
  for t in runs.trials:
    if not t.finished:
      continue
    for e in (t.extrapolation, *t.scaled.values()):
      if e is None:
        continue
      s = f"mode={e.mode}" + (f", stride={e.stride}" if e.stride is not None else "")
      s += f", split={e.split}, train length={e.train_len}"
      if s not in settings:
        settings.append(s)
      # The masks of an MLM's perplexity (per row, or per batch in older files): a setting among MLM trials only, not
      # a difference between a causal LM's evaluation and a masked LM's made by the same command.
      mask = f"MLM masks={e.mlm_masks or 'per batch (evaluated before 2026-12-07)'}" \
          if t.field("objective") == "mlm" else None
      if mask is not None and mask not in masks:
        masks.append(mask)
      if e.rope_scaling is not None:
        factor = tables.factor_text(e.rope_factor)
        scalings.setdefault(e.rope_scaling, [])
        if factor not in scalings[e.rope_scaling]:
          scalings[e.rope_scaling].append(factor)
  if not settings:
    return None
  line = "Evaluation: " + "; ".join(settings) + (f" ({'; '.join(masks)})" if masks else "") + "."
  if len(settings) > 1 or len(masks) > 1:
    line += " **Warning:** the trials were evaluated with different settings."
  if scalings:
    line += (f" Rows labelled `{tables.scaling_label(table.short)}=S` are the same trials evaluated with RoPE "
             "scaling S switched on at evaluation time (`eval/extrapolation_S.json`: " + "; ".join(
                 f"{s}, {', '.join(f)}" for s, f in scalings.items()) + ").")
  return line


DTYPE_FIELD = "model.dtype"


def dtype_line(runs: RunSet, table: tables.Table) -> str:
  """report.md's one line on the trials' `model.dtype`, the operands of every product (research-evaluate scores a
  run in its own): a setting that changes every figure slightly, said even when it is not swept (the table's rows
  then never name it). A sweep's trial not started yet that does not override it runs with the base config's value,
  which a started trial that does not override it shows (as `runs.load_runs` groups it); a trial whose value is
  still unknown (a run directory without config.json) is counted as such."""
  base = next((t.field(DTYPE_FIELD) for t in runs.trials if t.config is not None and DTYPE_FIELD not in t.overrides),
              MISSING) if runs.layout == "sweep" else MISSING
  counts: dict[str, int] = {}
  for t in runs.trials:
    value = t.field(DTYPE_FIELD)
    if value == MISSING and t.config is None:
      value = base
    value = "unknown" if value in (MISSING, UNREAD) else str(value)
    counts[value] = counts.get(value, 0) + 1
  if len(counts) == 1:
    value = next(iter(counts))
    products = {"bfloat16": " (bf16 × bf16 → f32 products)", "float32": " (float32 products)"}.get(value, "")
    return f"Model dtype: `{DTYPE_FIELD}={value}` in every trial{products}."
  mixed = ", ".join(f"{value} in {n} trial{'s' if n > 1 else ''}" for value, n in counts.items())
  where = "; the rows show it" if DTYPE_FIELD in table.fields else ""
  return f"Model dtype: mixed, `{DTYPE_FIELD}` is {mixed}{where}."


def _duplicate_line(runs: RunSet, trial, kept: str) -> str:
  """A Duplicates entry: the copy, the trial kept in its place, and the evaluation files the copy has that the kept
  one lacks (not used: only the kept trial's files are read)."""
  line = f"- `{trial.name}` ({trial.status}): duplicates `{kept}`"
  kept_files = next((set(t.evaluation_files()) for t in runs.trials if t.name == kept), set())
  unused = [f for f in trial.evaluation_files() if f not in kept_files]
  if unused:
    line += f"; its evaluation files that `{kept}` lacks are not used: {', '.join(f'`{f}`' for f in unused)}"
  return line


def _has_by_position(runs: RunSet) -> bool:
  """Any trial evaluated with research-evaluate --by_position: only then is loss_by_position.png drawn (or
  explained)."""
  return any(t.by_position is not None or t.scaled_by_position for t in runs.trials)


def _has_rare(runs: RunSet) -> bool:
  """Any trial analyzed with research-analyze --rare: only then are the per-bucket plots drawn (or explained)."""
  return any(t.rare is not None for t in runs.trials)


def _best_sentence(table: tables.Table) -> str:
  """What the bold marks mean, per kind of column the table has: perplexities (lower is better; none marked when
  the rows differ in what a perplexity measures, `Table.incomparable`), higher-is-better figures, descriptive ones."""
  ppl = [c.header for c in table.columns if c.perplexity]
  higher = [c.header for c in table.columns if c.higher_is_better]
  descriptive = [c.header for c in table.columns if c.descriptive]
  if table.incomparable:
    parts = [f"perplexities ({', '.join(ppl)}): no best is marked, because the rows differ in "
             + ", ".join(f"`{f}`" for f in table.incomparable) + ", which change what a perplexity measures"]
  else:
    parts = [f"perplexities ({', '.join(ppl)}): lower is better, the lowest mean per column is in **bold**"]
    rare = [c.header for c in table.columns if c.key == tables.VALID_PPL_RARE]
    if rare and table.rare_incomparable:
      parts[0] += (f", but none in {rare[0]}: the rows differ in "
                   + ", ".join(f"`{f}`" for f in table.rare_incomparable)
                   + ", which changes which validation targets are rare (seen < 10 times in the run's training "
                   "stream)")
    if table.validation_rules:
      validation = [c.header for c in table.columns if c.key in tables.VALIDATION]
      parts[0] += (f", but none in {', '.join(validation)}: the rows' MLM validations masked the split by different "
                   f"rules, or by ones their files cannot tell (" + "; ".join(table.validation_rules)
                   + f"; {tables.RESCORE})")
  if higher:
    parts.append(f"{', '.join(higher)}: higher is better, the highest mean is in **bold**")
  if descriptive:
    parts.append(f"{', '.join(descriptive)}: descriptive, no best marked")
  return "; ".join(parts) + "."


def width_paragraph(widths: list[int]) -> str:
  """report.md's word on rows whose rare_tokens.json analysed tables of different `widths` (`Table.widths`): which
  of its figures depend on the width alone (measured on isotropic random tables: tables.WIDTH_GEOMETRY) and what
  compares them."""
  shares = " and ".join(tables.GEOMETRY_HEADERS[name] for name in tables.WIDTH_GEOMETRY)
  relative = " and ".join(tables.VS_ISOTROPIC_HEADERS[name] for name in tables.WIDTH_GEOMETRY)
  return (f"**Tables of different widths**: the rows analysed input tables of widths {', '.join(map(str, widths))} "
          f"(rare_tokens.json's `dim`; a factorized table's is `model.table_dim`). {shares} are shares of the width's "
          f"variance, which an isotropic table spreads evenly (1/width, min(10, width)/width), so they differ by the width alone "
          f"(footnoted); {relative} divide by that value (1 = isotropic) and compare across widths. The per-bucket "
          f"10-NN cosine plot depends on the width too (a random table of 4000 rows: 0.69 at width 16, 0.52 at 32, "
          f"0.27 at 128), and the mean row norm plot starts at std·√width (1 for a plain table, √(table_dim/d_model) "
          f"for a factorized one); anisotropy, isotropy and norm~freq ρ do not depend on the width.")


def render_markdown(runs: RunSet, table: tables.Table, written: dict[str, pathlib.Path],
                    skipped: dict[str, str]) -> tuple[str, str]:
  """(report.md text, the table with its footnotes)."""
  md_table, footnotes = tables.to_markdown(table)
  table_text = md_table + ("\n\n" + "\n".join(footnotes) if footnotes else "")
  counts: dict[str, int] = {}
  for t in runs.trials:
    counts[t.status] = counts.get(t.status, 0) + 1
  swept = ", ".join(f"`{f}`" for f in table.fields)
  seeds = ", ".join(f"`{f}`" for f in runs.replicate_fields)
  if swept:
    rows = f"Rows group the trials by the swept fields {swept}" + (f" (replicates, averaged over: {seeds})" if seeds
                                                                    else "")
  elif seeds:
    rows = f"The trials differ only in {seeds} (replicates, averaged over in one group)"
  else:
    rows = "No field is swept (one group)"
  out = [
      f"# Report: {runs.name}",
      "",
      f"Directory: `{runs.directory}` ({runs.layout}). Trials: {len(runs.trials)} ("
      + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"
      + (f", and {len(runs.duplicates)} duplicate(s), left out (below)." if runs.duplicates else "."),
      "",
      rows + ". Cells are mean ± sample std (ddof=1) over the finished trials of a row (`n`; a cell's own n is shown "
      "where it differs); " + _best_sentence(table) + " n/a = no value (footnotes say why).",
  ]
  if runs.skipped:
    out += ["", "Skipped directories (not reported here): "
            + "; ".join(f"`{name}`: {why}" for name, why in runs.skipped.items()) + "."]
  if runs.without_config:
    out += ["", "Trials without config.json (their fields are compared with no other trial's; rows show them as "
            "`(unset)`): " + ", ".join(f"`{name}`" for name in runs.without_config) + "."]
  out += ["", dtype_line(runs, table)]
  line = _evaluation_line(runs, table)
  if line:
    out += ["", line]
  if table.mixed:
    out += ["", "**Warning: mixed evaluation settings** (the table's cells averaging them carry a footnote and are "
            "not ranked for best; rerun research-evaluate with one setting):", ""] + [f"- {w}" for w in table.mixed]
  stale = [note for t in runs.trials for note in (*t.stale_evaluations(), *t.analysis_stale.values())]
  if stale:
    out += ["", "**Stale evaluations** (an older checkpoint than the one research-evaluate or research-analyze would "
            "score now, or a loss by position scored otherwise than the extrapolation.json beside it; left out of the "
            "means, the plots and the best marks, rerun the command each note names):",
            ""] + [f"- {n}" for n in stale]
  old_rare = [t.name for t in runs.trials if t.finished and t.rare is not None and not t.rare.markers_excluded]
  if old_rare:
    out += ["", "Rare tokens analysed under the old rule (eval/rare_tokens.json without `marker_rows`: the markers "
            "[PAD], [CLS], [SEP], [MASK] are counted in the frequency buckets, averaged here with the others; rerun "
            "research-analyze --rare): " + ", ".join(f"`{name}`" for name in old_rare) + "."]
  if table.widths:
    out += ["", width_paragraph(table.widths)]
  per_batch = [note for t in runs.trials if t.finished for note in t.by_position_notes()]
  if per_batch:
    out += ["", "**Loss by position of MLM masks per batch** (they moved with the batch size; left out of the plot):",
            ""] + [f"- {n}" for n in per_batch]
  out += ["", table_text, ""]
  not_finished = [t for t in runs.trials if not t.finished]
  out += ["## Failed and unfinished trials", ""]
  if not_finished:
    for t in not_finished:
      out.append(f"- `{t.name}`: {t.status}" + (f": {_one_line(t.error)}" if t.error else ""))
  else:
    out.append("None: every trial finished.")
  if runs.duplicates:
    out += ["", "## Duplicates", "",
            "Trials whose config.json trains the same model as another trial's, seed included (it differs at most "
            "in fields that do not change the model: when, how often or where a run works, or what neither model "
            "uses): a copied run directory, counted once. Left out of the table, the means and the plots:", ""]
    out += [_duplicate_line(runs, t, kept) for t, kept in runs.duplicates]
  out += ["", "## Plots", ""]
  titles = {plots.PPL_VS_LENGTH: "Perplexity vs evaluation length", plots.CURVES: "Training and validation loss",
            plots.TIED_VS_UNTIED: "Tied vs untied embeddings"}
  if _has_by_position(runs):
    titles[plots.LOSS_BY_POSITION] = "Loss by position"
  if _has_rare(runs):
    titles.update({plots.rare_plot_name(m): f"Rare tokens: {label} per frequency bucket"
                   for m, label in RARE_BUCKET_METRICS.items()})
  for name, title in titles.items():
    if name in written:
      out += [f"### {title}", "", f"![{title}]({name})", ""]
    else:
      out += [f"- {title} (`{name}`): skipped, {skipped[name]}.", ""]
  out += [f"Tables: [{TABLE_CSV}]({TABLE_CSV}), [{TABLE_TEX}]({TABLE_TEX}).", ""]
  return display("\n".join(out)), display(table_text)


def build_report(directory: str | os.PathLike) -> Report:
  """Reads the run files under `directory` and writes report.md, table.csv, table.tex and the PNGs into it.

  Raises `ReportError` (a ValueError) for a missing, empty, foreign or unwritable directory or malformed run files
  (the directory is checked before anything is read). A plot whose data is missing is skipped (the reason is in
  report.md) and a stale PNG of that name is removed.
  """
  check_writable(directory)
  runs = load_runs(directory)
  out_dir = runs.directory
  table = tables.build_table(runs)
  drawers = {
      plots.PPL_VS_LENGTH: lambda p: plots.plot_ppl_vs_length(table, p),
      plots.CURVES: lambda p: plots.plot_curves(table, runs, p),
      plots.TIED_VS_UNTIED: lambda p: plots.plot_tied_vs_untied(table, p),
  }
  if _has_by_position(runs):
    drawers[plots.LOSS_BY_POSITION] = lambda p: plots.plot_loss_by_position(table, p)
  else:  # not evaluated by position (any more): a plot from an earlier report would contradict this one
    (out_dir / plots.LOSS_BY_POSITION).unlink(missing_ok=True)
  for metric in RARE_BUCKET_METRICS:
    if _has_rare(runs):
      drawers[plots.rare_plot_name(metric)] = functools.partial(plots.plot_rare_bucket_metric, table, metric)
    else:  # not analyzed (any more): a per-bucket plot from an earlier report would contradict this one
      (out_dir / plots.rare_plot_name(metric)).unlink(missing_ok=True)
  written, skipped = {}, {}
  for name, draw in drawers.items():
    path = out_dir / name
    reason = draw(path)
    if reason is None:
      written[name] = path
    else:
      skipped[name] = reason
      path.unlink(missing_ok=True)  # a PNG from an earlier report would contradict this one
  csv_path, tex_path, md_path = out_dir / TABLE_CSV, out_dir / TABLE_TEX, out_dir / REPORT_MD
  _write(csv_path, tables.to_csv(table))
  _write(tex_path, tables.to_latex(table))
  markdown, table_text = render_markdown(runs, table, written, skipped)
  _write(md_path, markdown)
  return Report(directory=out_dir, markdown_path=md_path, csv_path=csv_path, latex_path=tex_path, plots=written,
                skipped=skipped, table=table_text, runs=runs, data=table)
