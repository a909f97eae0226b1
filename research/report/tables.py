"""Ablation tables: group trials by the swept fields (seeds are replicates), mean ± std per column, md / csv / tex.

Rows are groups (one per combination of the swept fields other than seed), columns are `valid ppl` (summary.json),
`best valid ppl` (summary.json's best evaluation) when any trial's best evaluation came before its last,
`valid ppl (rare)` when any trial has summary.json's `valid_ppl_rare`, one per evaluation length (eval/extrapolation.json) and, when any trial was analyzed (eval/embedding_quality.json),
analogy accuracy and the WordSim-353 / SimLex-999 Spearman correlations of its table (plus `analogy acc at init`,
the same analogies on its initial table when any trial has that figure: the floor a subword table's composed
vectors reach from spelling alone; descriptive), and, when any trial was
analyzed with `--rare` (eval/rare_tokens.json), the input table's geometry (anisotropy, variance share of the top 1
and 10 components, Mu & Viswanath's isotropy, Spearman of norm with frequency; descriptive: no best is marked; rows
of tables of different widths get the two shares footnoted and divided by an isotropic table's, `WIDTH_GEOMETRY`) and,
when rare_tokens.json has `absent_rows`, the rows no batch held and the largest change of theirs from the initial
table (`absent rows`, `absent max Δ` = max |Δ|: three significant digits, so an exact 0 reads `0` and a tiny
change does not; descriptive too).
A group whose trials were also evaluated with RoPE scaling (eval/extrapolation_<scaling>.json) gets one more row per
scaling, right below it, labelled `..., rope_scaling=S`.
A cell is the mean and sample standard deviation (ddof=1) over the group's finished trials; the best mean per column
is marked: the lowest perplexity, the highest quality figure. A cell whose trials' files differ in a setting the rows
do not group by (a scaled row's RoPE factor, passkey depths and keys per cell: `_settings`) is footnoted and not
ranked, and `Table.mixed` says so for report.md.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from typing import Any

from research.report.runs import (MISSING, QUALITY_FIGURES, QUALITY_FILE, QUALITY_FLOORS, QUALITY_INPUT_FIGURES,
                                  QUALITY_INPUT_FILE, RARE_ABSENT, RARE_FILE, RARE_GEOMETRY, UNTOLD_MASKS, RunSet,
                                  Trial, display, extrapolation_file, floor_scored, hashable, passkey_file)

VALID_PPL = "valid_ppl"
BEST_VALID_PPL = "best_valid_ppl"  # summary.json: the run's best evaluation (early stopping's figure)
VALID_PPL_RARE = "valid_ppl_rare"  # summary.json: validation targets seen < 10 times in training (docs/rare_tokens.md)
VALIDATION = (VALID_PPL, BEST_VALID_PPL, VALID_PPL_RARE)  # the trainer's validation figures (summary.json)
QUALITY_HEADERS = {"analogy": "analogy acc", "wordsim353": "WordSim ρ", "simlex999": "SimLex ρ",
                   "analogy_init": "analogy acc at init", "analogy_input": "analogy acc (input)",
                   "wordsim353_input": "WordSim ρ (input)", "simlex999_input": "SimLex ρ (input)"}
QUALITY_LATEX = {"analogy": "analogy acc.", "wordsim353": "WordSim $\\rho$", "simlex999": "SimLex $\\rho$",
                 "analogy_init": "analogy acc.\\ at init", "analogy_input": "analogy acc.\\ (input)",
                 "wordsim353_input": "WordSim $\\rho$ (input)", "simlex999_input": "SimLex $\\rho$ (input)"}
# The input table's geometry (eval/rare_tokens.json): no direction is better, so no column marks a best.
GEOMETRY_HEADERS = {"anisotropy": "anisotropy", "variance_top1": "var top-1", "variance_top10": "var top-10",
                    "isotropy": "isotropy", "norm_freq_spearman": "norm~freq ρ"}
GEOMETRY_LATEX = {"anisotropy": "anisotropy", "variance_top1": "var.\\ top-1", "variance_top10": "var.\\ top-10",
                  "isotropy": "isotropy", "norm_freq_spearman": "norm--freq.\\ $\\rho$"}
# Geometry figures that depend on the table's width alone: {name: k}, the share of the centred variance in the top k
# principal components, which an isotropic table of width w spreads evenly, min(k, w) / w. Measured on random normal
# tables of 4000 rows at widths 8 to 128 (any std): var top-1 × w = 1.07 to 1.39 and var top-10 × w / 10 = 1.04 to 1.32
# (finite rows lift the top eigenvalue), while anisotropy (|mean cosine| < 0.01), isotropy (0.98 to 1.00) and norm~freq
# ρ (|ρ| < 0.03) do not move with the width. Rows of tables of different widths read these through
# `<name>_vs_isotropic` columns (share / its isotropic value: 1 = isotropic), and their own cells carry a footnote.
WIDTH_GEOMETRY = {"variance_top1": 1, "variance_top10": 10}
VS_ISOTROPIC = "_vs_isotropic"  # the suffix of those columns' keys
VS_ISOTROPIC_HEADERS = {name: f"{GEOMETRY_HEADERS[name]} / isotropic" for name in WIDTH_GEOMETRY}
VS_ISOTROPIC_LATEX = {name: f"{GEOMETRY_LATEX[name]} / isotropic" for name in WIDTH_GEOMETRY}
# Rows absent from every batch (eval/rare_tokens.json's absent_rows): descriptive, no best.
# (max |Δ|: a "|" in a header would split the markdown cell)
ABSENT_HEADERS = {"rows": "absent rows", "max_abs_change": "absent max Δ",
                  "updated_while_absent": "moved while absent"}
ABSENT_LATEX = {"rows": "absent rows", "max_abs_change": "absent max $|\\Delta|$", "updated_while_absent": "moved while absent"}


# Fields that change what a perplexity measures (another objective, vocabulary, text or masking): rows that differ
# in one have perplexities that are not comparable, so no best is marked in the perplexity columns.
PPL_MEANING = ("objective", "data.tokenizer", "data.vocab_size", "data.corpus")
MLM_MEANING = ("data.mlm_select_rate", "data.mlm_mask_rate", "data.mlm_random_rate")  # only among MLM trials
# Fields that change which validation targets valid ppl (rare) scores (those seen < 10 times in the run's training
# stream): rows that differ in one score other token sets there, so no best is marked in that column.
RARE_MEANING = ("data.train_fraction",)


def incomparable_fields(trials: list[Trial]) -> list[str]:
  """The PPL_MEANING (and, among MLM trials, MLM_MEANING) fields whose values differ across `trials` (their configs
  or overrides: a field need not be a swept field's label to differ); a trial without the field is not counted.
  data.vocab_size is the vocabulary the run really has (`real_vocab_size`): a byte or char tokenizer ignores the
  field, and a corpus too small for it gives fewer ids."""
  mlm = [t for t in trials if t.field("objective") == "mlm"]
  return [f for f in PPL_MEANING if _differs(f, trials)] + [f for f in MLM_MEANING if _differs(f, mlm)]


def _differs(name: str, trials: list[Trial]) -> bool:
  """Whether `trials` hold more than one value of field `name` (a trial without it not counted; data.vocab_size: the
  vocabulary the run really has, `real_vocab_size`)."""
  value = real_vocab_size if name == "data.vocab_size" else lambda t: t.field(name)
  return len({hashable(v) for t in trials if (v := value(t)) != MISSING}) > 1


def real_vocab_size(trial: Trial) -> Any:
  """summary.json's `vocab_size` (the tokenizer's size, the rows of the model's table), else data.vocab_size (a
  summary written without it, or none)."""
  size = (trial.summary or {}).get("vocab_size")
  return size if isinstance(size, int) and not isinstance(size, bool) else trial.field("data.vocab_size")


@dataclasses.dataclass(frozen=True)
class Column:
  key: str  # machine name: valid_ppl | ppl_1x_64
  header: str  # valid ppl | 1× (64)
  multiple: float | None = None
  length: int | None = None
  quality: str | None = None  # a QUALITY_FIGURES name: higher is better (a QUALITY_FLOORS one: descriptive)
  geometry: str | None = None  # a RARE_GEOMETRY name: descriptive, no best
  vs_isotropic: bool = False  # a WIDTH_GEOMETRY figure divided by an isotropic table's value at the table's width
  absent: str | None = None  # a RARE_ABSENT name: descriptive, no best
  passkey: bool = False  # eval/passkey.json's mean accuracy over depths at (multiple, length): higher is better

  @property
  def descriptive(self) -> bool:
    return self.geometry is not None or self.absent is not None or self.quality in QUALITY_FLOORS

  @property
  def perplexity(self) -> bool:
    return self.key in VALIDATION or (self.length is not None and not self.passkey)

  @property
  def higher_is_better(self) -> bool:
    return self.passkey or (self.quality is not None and self.quality not in QUALITY_FLOORS)


@dataclasses.dataclass(frozen=True)
class Cell:
  values: tuple[float, ...]  # one per trial that has a value
  notes: tuple[str, ...] = ()  # why the group's other trials have none (and `mixed`'s note first)
  # Whether the values come from files of different settings (`_mixed_note`): footnoted and not ranked for best.
  mixed: bool = False
  # A RoPE-scaled row's perplexity where every trial applied factor 1 (`applied_factor`: no --rope_factor, at 1x):
  # no scaling at all, so the unscaled row's value; footnoted and not ranked (it would tie with that row for best).
  unscaled: bool = False

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float | None:
    return math.fsum(self.values) / self.n if self.values else None

  @property
  def std(self) -> float | None:
    """Sample standard deviation (ddof=1); None for fewer than two values."""
    if self.n < 2:
      return None
    m = self.mean
    return math.sqrt(math.fsum((v - m)**2 for v in self.values) / (self.n - 1))


@dataclasses.dataclass
class Group:
  label: str
  values: dict[str, Any]  # dotted swept field -> value
  trials: list[Trial]  # every trial of the group, finished or not
  rope_scaling: str | None = None  # a row of the same trials evaluated with this RoPE scaling

  @property
  def finished(self) -> list[Trial]:
    return [t for t in self.trials if t.finished]

  @property
  def n(self) -> int:
    return len(self.finished)


@dataclasses.dataclass
class Table:
  title: str
  fields: list[str]  # dotted group fields (swept, seeds excluded)
  short: dict[str, str]  # dotted -> display name
  columns: list[Column]
  groups: list[Group]
  cells: dict[tuple[int, str], Cell]  # (group index, column key) -> cell
  best: dict[str, set[int]]  # column key -> group indices with the lowest mean
  # PPL_MEANING fields the rows' trials differ in: no best is marked in the perplexity columns (`incomparable_fields`)
  incomparable: list[str] = dataclasses.field(default_factory=list)
  # RARE_MEANING fields the rows' trials differ in: no best is marked in valid ppl (rare) (`rare_incomparable`)
  rare_incomparable: list[str] = dataclasses.field(default_factory=list)
  # report.md's warnings of mixed settings: rows averaging trials of different RoPE factors or passkey depths and
  # keys per cell, and trials whose scaled files of one scaling differ in factor (`_mixed_warnings`)
  mixed: list[str] = dataclasses.field(default_factory=list)
  # The MLM validation masking rules of rows that differ in them (or cannot tell them): no best is marked in the
  # VALIDATION columns (`_validation_rules`)
  validation_rules: list[str] = dataclasses.field(default_factory=list)
  # The widths of the tables the rows' rare_tokens.json analysed, when there are several (`table_widths`): the
  # WIDTH_GEOMETRY cells are footnoted and their `_vs_isotropic` columns shown; [] otherwise
  widths: list[int] = dataclasses.field(default_factory=list)

  def cell(self, group_index: int, column: Column | str) -> Cell:
    return self.cells[(group_index, column if isinstance(column, str) else column.key)]


def short_names(fields: list[str]) -> dict[str, str]:
  """Last path component (`model.position` -> `position`) unless two fields share it."""
  last = [f.rsplit(".", 1)[-1] for f in fields]
  return {f: (s if last.count(s) == 1 else f) for f, s in zip(fields, last)}


def format_value(value: Any) -> str:
  if isinstance(value, str):
    return "(unset)" if value == MISSING else value
  if isinstance(value, (list, dict)):
    return hashable(value)
  return str(value)


def _multiple_text(m: float) -> str:
  return f"{m:g}"


def _overfit(trial: Trial) -> bool:
  """Did the run's best evaluation come before its last (so that best and final perplexity differ)?"""
  summary = trial.summary or {}
  return summary.get("best_step") is not None and summary["best_step"] != summary.get("step")


def _shown_rare(trial: Trial) -> bool:
  """Whether the table shows `trial`'s rare_tokens.json figures (finished, analysed, not stale)."""
  return trial.finished and trial.rare is not None and RARE_FILE.as_posix() not in trial.analysis_stale


def table_widths(trials: list[Trial]) -> list[int]:
  """The widths of the tables whose geometry the table shows (rare_tokens.json's `dim`), ascending, when there are
  several; [] when they are one width (or unknown: a file without `dim`)."""
  widths = sorted({t.rare.dim for t in trials if _shown_rare(t) and t.rare.dim is not None})
  return widths if len(widths) > 1 else []


def width_note(name: str, widths: list[int]) -> str:
  """The footnote of a WIDTH_GEOMETRY cell of a table whose rows analysed tables of `widths`."""
  k = WIDTH_GEOMETRY[name]
  isotropic = "1/width" if k == 1 else f"min({k}, width)/width"
  full = [w for w in widths if w <= k]  # the top k directions hold all of such a table's variance: 1 whatever it is
  blind = (f"; at width {', '.join(map(str, full))} ≤ {k} both are 1 by construction and tell nothing"
           if full and k > 1 else "")
  return (f"{GEOMETRY_HEADERS[name]} depends on the table's width (an isotropic table: {isotropic}), and the rows "
          f"analysed tables of widths {', '.join(map(str, widths))}: compare {VS_ISOTROPIC_HEADERS[name]} (1 = "
          f"isotropic){blind}")


def _columns(trials: list[Trial]) -> list[Column]:
  evaluations = [e for t in trials for e in (t.extrapolation, *t.scaled.values()) if e is not None]
  pairs = sorted({(p.length, p.multiple) for e in evaluations for p in e.points})
  columns = [Column(VALID_PPL, "valid ppl")]
  if any(_overfit(t) for t in trials):
    columns.append(Column(BEST_VALID_PPL, "best valid ppl"))
  if any((t.summary or {}).get(VALID_PPL_RARE) is not None for t in trials):
    columns.append(Column(VALID_PPL_RARE, "valid ppl (rare)"))
  for length, multiple in pairs:
    columns.append(Column(f"ppl_{_multiple_text(multiple)}x_{length}", f"{_multiple_text(multiple)}× ({length})",
                          multiple=multiple, length=length))
  passkey = sorted({(p.length, p.multiple) for t in trials for k in (t.passkey, *t.scaled_passkey.values())
                     if k is not None for p in k.lengths})
  for length, multiple in passkey:
    columns.append(Column(f"passkey_{_multiple_text(multiple)}x_{length}",
                          f"passkey {_multiple_text(multiple)}× ({length})", multiple=multiple, length=length,
                          passkey=True))
  if any(t.quality is not None for t in trials):
    columns += [Column(f"quality_{name}", QUALITY_HEADERS[name], quality=name) for name in QUALITY_FIGURES
                if name not in QUALITY_FLOORS or any((t.quality or {}).get(name) is not None for t in trials)]
  if any(t.quality_input is not None for t in trials):
    columns += [Column(f"quality_{name}", QUALITY_HEADERS[name], quality=name) for name in QUALITY_INPUT_FIGURES]
  if any(t.rare is not None for t in trials):
    widths = table_widths(trials)
    for name in RARE_GEOMETRY:
      columns.append(Column(f"geometry_{name}", GEOMETRY_HEADERS[name], geometry=name))
      if widths and name in WIDTH_GEOMETRY:  # beside the share it divides
        columns.append(Column(f"geometry_{name}{VS_ISOTROPIC}", VS_ISOTROPIC_HEADERS[name], geometry=name,
                              vs_isotropic=True))
  if any(t.rare is not None and t.rare.absent is not None for t in trials):
    columns += [Column(f"absent_{name}", ABSENT_HEADERS[name], absent=name) for name in RARE_ABSENT]
  return columns


def unscored_note(trial: Trial, step: int) -> str:
  """Why `trial`'s validation perplexity of `step` is n/a: its validation scored no target."""
  return (f"{trial.name}: the validation at step {step} scored no target (metrics.jsonl: tokens 0; a split too "
          f"small, or an MLM that masked none of it): summary.json's perplexity 1 of that step is a placeholder, "
          f"not a figure; use a larger validation split")


def _trial_value(trial: Trial, column: Column, rope_scaling: str | None = None) -> tuple[float | None, str | None]:
  """(value, None) or (None, why not)."""
  if column.key == VALID_PPL_RARE:
    if rope_scaling is not None:
      return None, "RoPE scaling is switched on at evaluation only: valid ppl is in the row without rope_scaling"
    raw = (trial.summary or {}).get(VALID_PPL_RARE)
    if raw is None or not math.isfinite(float(raw)):
      return None, "no validation target seen fewer than 10 times in training (or a run without the figure)"
    return float(raw), None
  if column.key == BEST_VALID_PPL:
    if rope_scaling is not None:
      return None, "RoPE scaling is switched on at evaluation only: best valid ppl is in the row without rope_scaling"
    raw = (trial.summary or {}).get(BEST_VALID_PPL)
    if raw is None or not math.isfinite(float(raw)):
      return None, "best_valid_ppl missing in summary.json (a run written before the figure existed)"
    step = (trial.summary or {}).get("best_step")
    if trial.scored_nothing(step):
      return None, unscored_note(trial, step)
    return float(raw), None
  if column.key == VALID_PPL:
    if rope_scaling is not None:  # the trainer's figure is the unscaled row's; repeating it would tie for best
      return None, "RoPE scaling is switched on at evaluation only: valid ppl is in the row without rope_scaling"
    raw = (trial.summary or {}).get("valid_ppl")
    if raw is None or not math.isfinite(float(raw)):
      return None, f"valid_ppl missing or non-finite in summary.json ({raw})"
    step = (trial.summary or {}).get("step")
    if trial.scored_nothing(step):
      return None, unscored_note(trial, step)
    return float(raw), None
  if column.quality is not None:
    if rope_scaling is not None:
      return None, "the table's quality does not depend on RoPE scaling: it is in the row without rope_scaling"
    if column.quality in QUALITY_INPUT_FIGURES:
      figures, file, command = trial.quality_input, QUALITY_INPUT_FILE, "research-analyze --vectors_of=input"
    else:
      figures, file, command = trial.quality, QUALITY_FILE, "research-analyze"
    if figures is None:
      return None, f"not analyzed (no {file.as_posix()}; run {command})"
    stale = trial.analysis_stale.get(file.as_posix())
    if stale is not None:
      return None, stale
    value = figures.get(column.quality)
    if value is None and column.quality in QUALITY_FLOORS:
      if figures.get(floor_scored(column.quality)):
        return None, "the initial table was scored, but no analogy question was covered"
      return None, "no initial table scored (a run without RUN/embedding_init.npy, or analyzed before the figure)"
    return (value, None) if value is not None else (None, f"{column.quality} not scored (no covered items)")
  if column.geometry is not None:
    if rope_scaling is not None:
      return None, "the table's geometry does not depend on RoPE scaling: it is in the row without rope_scaling"
    if trial.rare is None:
      return None, f"not analyzed (no {RARE_FILE.as_posix()}; run research-analyze --rare)"
    if RARE_FILE.as_posix() in trial.analysis_stale:
      return None, trial.analysis_stale[RARE_FILE.as_posix()]
    value = trial.rare.geometry.get(column.geometry)
    if value is None:
      return None, f"{column.geometry} undefined for this table"
    if column.vs_isotropic:
      width = trial.rare.dim
      if width is None:
        return None, f"{RARE_FILE.as_posix()} has no 'dim' (the table's width): rerun research-analyze --rare"
      return value * width / min(WIDTH_GEOMETRY[column.geometry], width), None
    return value, None
  if column.absent is not None:
    if rope_scaling is not None:
      return None, "the table does not depend on RoPE scaling: its absent rows are in the row without rope_scaling"
    if trial.rare is None:
      return None, f"not analyzed (no {RARE_FILE.as_posix()}; run research-analyze --rare)"
    if RARE_FILE.as_posix() in trial.analysis_stale:
      return None, trial.analysis_stale[RARE_FILE.as_posix()]
    if trial.rare.absent is None:
      return None, f"no absent_rows in {RARE_FILE.as_posix()} (analyzed before it existed: rerun --rare)"
    value = trial.rare.absent.get(column.absent)
    if trial.rare.absent.get("note") and not (column.absent == "updated_while_absent" and value is not None):
      # The note n/a's the figures that need the tables; updated_while_absent is the counts' alone (rare.py).
      return None, f"absent rows not measured: {trial.rare.absent['note']}"
    if value is None and column.absent == "updated_while_absent":
      return None, f"not in {RARE_FILE.as_posix()} (analyzed before the figure existed: rerun --rare)"
    return (value, None) if value is not None else (None, "no row was absent from every batch")
  if column.passkey:
    evaluated, file = trial.passkey_evaluation(rope_scaling), passkey_file(rope_scaling).as_posix()
    objective = trial.field("objective")
    if evaluated is None and objective not in ("clm", MISSING):  # research-evaluate refuses --passkey for it
      return None, f"not applicable: passkey retrieval needs a causal LM (objective={objective})"
    if evaluated is None:
      flags = "--passkey" + (f" --rope_scaling={rope_scaling}" if rope_scaling is not None else "")
      return None, f"not evaluated (no {file}; run research-evaluate {flags})"
    stale = trial.stale.get(file)
    if stale is not None:
      return None, stale
    for p in evaluated.lengths:
      if p.length == column.length and p.multiple == column.multiple:
        return (p.accuracy, None) if p.accuracy is not None else (None, f"passkey: {p.note}")
    return None, f"passkey: length {column.length} not evaluated"
  evaluation = trial.evaluation(rope_scaling)
  if evaluation is None:
    return None, f"not evaluated (no {extrapolation_file(rope_scaling).as_posix()})"
  stale = trial.stale.get(extrapolation_file(rope_scaling).as_posix())
  if stale is not None:  # an old checkpoint's figures next to the final ones: out of the mean, said in a footnote
    return None, stale
  for p in evaluation.points:
    if p.length == column.length and p.multiple == column.multiple:
      return (p.ppl, None) if p.ppl is not None else (None, p.note or "not evaluated")
  return None, f"length {column.length} not evaluated"


def factor_text(factor: float | None) -> str:
  """A RoPE-scaled file's factor as report.md names it (None: `--rope_factor` left out)."""
  return f"factor {factor:g}" if factor is not None else "factor = the multiple at each length"


def applied_factor(factor: float | None, multiple: float | None) -> float | None:
  """The RoPE factor a scaled file applied at a length of `multiple` × the training length: its `rope_factor`, or,
  where that was left out (None), the multiple itself. Two files that name their factor differently applied the same
  one at a length where these agree (None and 2 at 2×)."""
  return factor if factor is not None or multiple is None else float(multiple)


def _settings(trial: Trial, column: Column, rope_scaling: str | None) -> str | None:
  """The settings of the file `trial`'s value in `column` comes from that the report does not group by, and in
  which the trials of one cell may differ (research-sweep evaluates a trial again for either: its
  `evaluation_outdated`): a scaled row's RoPE factor at the column's length (`applied_factor`); passkey's depths
  and keys per cell; an MLM's validation masks (summary.json's figures: `Trial.validation_masks`). None where none
  apply."""
  parts = []
  if column.key in VALIDATION:
    masks = trial.validation_masks
    return None if masks is None else masks[0]
  if column.passkey:
    evaluated = trial.passkey_evaluation(rope_scaling)
    if evaluated is None:
      return None
    if rope_scaling is not None:
      parts.append(factor_text(applied_factor(evaluated.rope_factor, column.multiple)))
    if evaluated.depths is not None:
      parts.append("depths [" + ", ".join(f"{d:g}" for d in evaluated.depths) + "]")
    if evaluated.trials is not None:
      parts.append(f"{evaluated.trials} key{'s' if evaluated.trials != 1 else ''} per cell")
  elif column.length is not None and rope_scaling is not None and trial.evaluation(rope_scaling) is not None:
    parts.append(factor_text(applied_factor(trial.evaluation(rope_scaling).rope_factor, column.multiple)))
  return ", ".join(parts) or None


# What compares MLM runs validated by different masking rules: research-evaluate scores any run by today's.
RESCORE = ("research-evaluate at 1x scores every run with today's per-row masks: compare its column, or retrain "
           "the older runs")


def _untold(settings: dict[str, str]) -> bool:
  """Whether a cell of more than one trial has one whose settings its files cannot tell (an MLM's validation masks
  before summary.json recorded them): its mean may mix rules, so it is treated as mixed."""
  return len(settings) > 1 and any(s.startswith(UNTOLD_MASKS) for s in settings.values())


def _mixed_note(settings: dict[str, str]) -> str | None:
  """The footnote of a cell whose trials' values come from files of different `_settings` ({trial: settings}), or
  of settings that cannot be told (`_untold`)."""
  if len(set(settings.values())) < 2 and not _untold(settings):
    return None
  how = "different or untold settings" if _untold(settings) else "different settings"
  return (f"mean of trials evaluated with {how} (" + "; ".join(f"{n}: {s}" for n, s in settings.items())
          + "): not ranked, see report.md")


def _mixed_warnings(groups: list[Group], columns: list[Column],
                    mixed: dict[tuple[int, str], dict[str, str]]) -> list[str]:
  """report.md's lines for `Table.mixed`: each row whose perplexity or passkey cells mix settings (once per row and
  kind, with the trials and their settings), and each trial whose extrapolation_S.json and passkey_S.json were
  made with different factors (two columns, so no cell mixes them, but one row reads them side by side)."""
  out = []
  kinds = (("validation perplexities", lambda c: c.key in VALIDATION),
           ("perplexities", lambda c: c.key not in VALIDATION and not c.passkey),
           ("passkey accuracies", lambda c: c.passkey))
  for gi, g in enumerate(groups):
    for kind, of_kind in kinds:
      settings = next((mixed[(gi, c.key)] for c in columns if of_kind(c) and (gi, c.key) in mixed), None)
      if settings is not None:
        how = "whose settings differ or cannot be told" if _untold(settings) else "evaluated with different settings"
        out.append(f"row `{g.label}` averages {kind} of trials {how}: "
                   + "; ".join(f"`{n}` {s}" for n, s in settings.items())
                   + (f" ({RESCORE})" if kind.startswith("validation") else ""))
  trials = {t.name: t for g in groups for t in g.finished}
  for t in trials.values():
    for s in t.scaled:
      if s in t.scaled_passkey and t.scaled[s].rope_factor != t.scaled_passkey[s].rope_factor:
        out.append(f"`{t.name}`: {passkey_file(s).as_posix()} was made with "
                   f"{factor_text(t.scaled_passkey[s].rope_factor)}, {extrapolation_file(s).as_posix()} with "
                   f"{factor_text(t.scaled[s].rope_factor)}")
  return out


def _validation_rules(groups: list[Group], cells: dict[tuple[int, str], Cell]) -> list[str]:
  """The MLM validation masking rules (`Trial.validation_masks`) of the rows ranked in valid ppl, when two such rows
  differ in them or a rule cannot be told: their valid ppl compares masking rules, not models, so no best is marked
  in the VALIDATION columns. [] otherwise."""
  rules: dict[str, bool] = {}
  rows = 0
  for gi, g in enumerate(groups):
    cell = cells.get((gi, VALID_PPL))
    if cell is None or not cell.n or cell.mixed:
      continue
    masks = [t.validation_masks for t in g.finished if t.validation_masks is not None]
    rows += bool(masks)
    rules.update(masks)
  return list(rules) if rows > 1 and (len(rules) > 1 or not all(rules.values())) else []


def scaling_name(short: dict[str, str]) -> str:
  """The name of the evaluation's RoPE scaling in labels and table.csv: `rope_scaling`, or `eval_rope_scaling` when
  a swept field is itself labelled `rope_scaling` (model.rope_scaling: the training's, another value in the row)."""
  return "eval_rope_scaling" if "rope_scaling" in short.values() else "rope_scaling"


def scaling_label(short: dict[str, str]) -> str:
  """`scaling_name` as row labels write it: `rope_scaling`, or `eval rope_scaling`."""
  return scaling_name(short).replace("eval_", "eval ")


UNSCALED_NOTE = "factor 1 here applies no scaling: the unscaled row's value, not ranked"


def _applies_no_scaling(group: Group, column: Column) -> bool:
  """Whether every finished trial of a scaled row that has a file of its scaling applied factor 1 at `column`."""
  files = [e for t in group.finished if (e := t.evaluation(group.rope_scaling)) is not None]
  return bool(files) and all(applied_factor(e.rope_factor, column.multiple) == 1.0 for e in files)


def _with_scaled_rows(groups: list[Group], short: dict[str, str]) -> list[Group]:
  """Each group followed by one row per RoPE scaling that any of its trials was evaluated with."""
  name = scaling_label(short)
  out = []
  for g in groups:
    out.append(g)
    scalings = dict.fromkeys(s for t in g.trials for s in (*t.scaled, *t.scaled_passkey))
    for s in scalings:
      out.append(Group(label=f"{g.label}, {name}={s}", values=g.values, trials=g.trials, rope_scaling=s))
  return out


def build_table(runs: RunSet) -> Table:
  fields = runs.group_fields
  short = short_names(fields)
  groups: list[Group] = []
  index: dict[tuple, int] = {}
  for t in runs.trials:
    key = tuple(hashable(t.field(f)) for f in fields)
    if key not in index:
      index[key] = len(groups)
      values = {f: t.field(f) for f in fields}
      label = display(", ".join(f"{short[f]}={format_value(v)}" for f, v in values.items()) or runs.name)
      groups.append(Group(label=label, values=values, trials=[]))
    groups[index[key]].trials.append(t)
  groups = _with_scaled_rows(groups, short)

  columns = _columns([t for t in runs.trials if t.finished])
  cells: dict[tuple[int, str], Cell] = {}
  mixed: dict[tuple[int, str], dict[str, str]] = {}  # the mixed cells: {trial: its `_settings`}
  for gi, g in enumerate(groups):
    for c in columns:
      values, notes, settings = [], [], {}
      for t in g.finished:
        v, why = _trial_value(t, c, g.rope_scaling)
        if v is None:
          notes.append(why)
        else:
          values.append(v)
          if (setting := _settings(t, c, g.rope_scaling)) is not None:
            settings[t.name] = setting
      if not g.finished:
        notes.append("no finished trial (see the failed and unfinished trials)")
      note = _mixed_note(settings)
      if note is not None:
        notes.insert(0, note)
        mixed[(gi, c.key)] = settings
      unscaled = (g.rope_scaling is not None and c.length is not None and not c.passkey and bool(values)
                  and note is None and _applies_no_scaling(g, c))
      if unscaled:
        notes.insert(0, UNSCALED_NOTE)
      cells[(gi, c.key)] = Cell(tuple(values), tuple(dict.fromkeys(notes)), mixed=note is not None,
                                unscaled=unscaled)

  finished = [t for t in runs.trials if t.finished]
  widths = table_widths(finished)
  if widths:  # shares of other widths' variance side by side: each cell says so, the _vs_isotropic columns compare
    for c in columns:
      if c.geometry in WIDTH_GEOMETRY and not c.vs_isotropic:
        for gi in range(len(groups)):
          cell = cells[(gi, c.key)]
          if cell.n:
            cells[(gi, c.key)] = dataclasses.replace(cell, notes=(width_note(c.geometry, widths), *cell.notes))
  incomparable = incomparable_fields(finished)
  rare_incomparable = [f for f in RARE_MEANING if _differs(f, finished)]
  rules = _validation_rules(groups, cells)
  best: dict[str, set[int]] = {}
  for c in columns:
    means = {gi: cells[(gi, c.key)].mean for gi in range(len(groups))  # a mean of mixed settings is no result
             if cells[(gi, c.key)].n and not cells[(gi, c.key)].mixed and not cells[(gi, c.key)].unscaled}
    if c.perplexity and incomparable:  # another objective, vocabulary or text: lower is not better
      continue
    if c.key in VALIDATION and rules:  # MLM validations of other (or untold) masks: lower is not better
      continue
    if c.key == VALID_PPL_RARE and rare_incomparable:  # other training streams: other targets are rare
      continue
    if len(means) >= 2 and not c.descriptive:  # bolding the only number in a column says nothing
      top = max(means.values()) if c.higher_is_better else min(means.values())
      best[c.key] = {gi for gi, m in means.items() if m == top}
  return Table(title=display(runs.name), fields=fields, short=short, columns=columns, groups=groups, cells=cells,
               best=best, incomparable=incomparable, rare_incomparable=rare_incomparable,
               mixed=_mixed_warnings(groups, columns, mixed),
               validation_rules=rules, widths=widths)


def format_number(x: float, digits: int = 2) -> str:
  return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.3g}"


COUNT = -1  # `_digits` of a column of counts


def _digits(column: Column) -> int | None:
  """Decimals of a column's cells: 3 for accuracies, correlations, cosines and shares in [-1, 1], 2 for perplexity,
  None (three significant digits) for the absent rows' largest change, where 0 must read differently from 2e-06,
  and COUNT for their row counts (means over seeds of whole numbers: 3, 2016.5, never 2.02e+03)."""
  if column.absent is not None:
    return None if column.absent == "max_abs_change" else COUNT
  return 3 if column.quality or column.geometry else 2


def _number(x: float, digits: int | None) -> str:
  if digits == COUNT:  # every digit of the whole part, at most two decimals, no trailing zeros
    return f"{x:.2f}".rstrip("0").rstrip(".")
  return f"{x:.3g}" if digits is None else format_number(x, digits)


def _cell_text(cell: Cell, row_n: int, pm: str, digits: int | None = 2) -> str:
  if not cell.n:
    return "n/a"
  text = _number(cell.mean, digits)
  if cell.std is not None:
    text += f" {pm} {_number(cell.std, digits)}"
  if cell.n != row_n:
    text += f" (n={cell.n})"
  return text


def to_markdown(table: Table) -> tuple[str, list[str]]:
  """The markdown table and its footnotes (`[^k]: note`), numbered in order of first use."""
  notes: dict[str, int] = {}
  header = ["group", "n"] + [c.header for c in table.columns]
  lines = ["| " + " | ".join(header) + " |", "|:--|--:|" + "--:|" * len(table.columns)]
  for gi, g in enumerate(table.groups):
    row = [g.label.replace("|", "\\|"), str(g.n)]
    for c in table.columns:
      cell = table.cell(gi, c)
      text = _cell_text(cell, g.n, "±", _digits(c))
      if gi in table.best.get(c.key, ()):
        text = f"**{text}**"
      for note in cell.notes:
        text += f"[^{notes.setdefault(note, len(notes) + 1)}]"
      row.append(text.replace("|", "\\|"))
    lines.append("| " + " | ".join(row) + " |")
  footnotes = [f"[^{k}]: {note}" for note, k in notes.items()]
  return "\n".join(lines), footnotes


def to_csv(table: Table) -> str:
  """One row per group: the raw swept values, the label, n, then mean / std / n per column (empty where n/a)."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  scaled = any(g.rope_scaling for g in table.groups)  # the column exists only when there are such rows
  header = [table.short[f] for f in table.fields] + ([scaling_name(table.short)] if scaled else []) + ["group", "n"]
  for c in table.columns:
    header += [f"{c.key}_mean", f"{c.key}_std", f"{c.key}_n"]
  writer.writerow(header)
  for gi, g in enumerate(table.groups):
    row = [format_value(g.values[f]) for f in table.fields] + ([g.rope_scaling or ""] if scaled else [])
    row += [g.label, g.n]
    for c in table.columns:
      cell = table.cell(gi, c)
      row += ["" if cell.mean is None else repr(cell.mean), "" if cell.std is None else repr(cell.std), cell.n]
    writer.writerow(row)
  return out.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
  return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_ppl_best(table: Table) -> str:
  """The caption's word on the perplexity columns: lower is better, or why no best is marked."""
  if table.incomparable:
    return ("no best marked: the rows differ in " + ", ".join(latex_escape(f) for f in table.incomparable)
            + ", which change what a perplexity measures")
  if table.validation_rules:
    return "lower is better; none marked in valid ppl: the rows' MLM validations masked by different rules"
  return "lower is better"


def to_latex(table: Table) -> str:
  """A booktabs table (needs `\\usepackage{booktabs}`); every label and header is escaped."""
  headers = ["group", "$n$", "valid ppl"]
  for c in table.columns[1:]:
    if c.quality is not None:
      headers.append(QUALITY_LATEX[c.quality])
    elif c.geometry is not None:
      headers.append((VS_ISOTROPIC_LATEX if c.vs_isotropic else GEOMETRY_LATEX)[c.geometry])
    elif c.absent is not None:
      headers.append(ABSENT_LATEX[c.absent])
    elif c.key in (VALID_PPL_RARE, BEST_VALID_PPL):
      headers.append(c.header)
    elif c.passkey:
      headers.append(f"passkey ${_multiple_text(c.multiple)}\\times$ ({c.length})")
    else:
      headers.append(f"${_multiple_text(c.multiple)}\\times$ ({c.length})")
  lines = [
      "% generated by research-report; needs \\usepackage{booktabs}",
      "\\begin{table}[t]",
      "\\centering",
      f"\\caption{{{latex_escape(table.title)}: perplexity, mean $\\pm$ sample std over seeds ("
      f"{_latex_ppl_best(table)}; "
      f"{'embedding quality: higher is better; ' if any(c.quality for c in table.columns) else ''}"
      f"{'passkey accuracy: higher is better; ' if any(c.passkey for c in table.columns) else ''}"
      f"best per column in bold).}}",
      f"\\label{{tab:{re.sub(r'[^A-Za-z0-9:-]+', '-', table.title)}}}",
      "\\begin{tabular}{l" + "r" * (len(table.columns) + 1) + "}",
      "\\toprule",
      " & ".join(headers) + " \\\\",
      "\\midrule",
  ]
  for gi, g in enumerate(table.groups):
    row = [latex_escape(g.label), str(g.n)]
    for c in table.columns:
      cell = table.cell(gi, c)
      text = _cell_text(cell, g.n, "$\\pm$", _digits(c)).replace("(n=", "($n$=")
      if gi in table.best.get(c.key, ()):
        text = f"\\textbf{{{text}}}"
      row.append(text)
    lines.append(" & ".join(row) + " \\\\")
  lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
  return "\n".join(lines) + "\n"
