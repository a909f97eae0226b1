"""Discover and load run directories (JSON / JSONL files only) into plain dataclasses.

Three layouts are accepted:
  * a sweep directory: `sweep.json` plus one subdirectory per trial (the sweep runner's index is authoritative for
    the list of trials, their overrides, status and error);
  * a directory of runs without `sweep.json`: every subdirectory holding `config.json` or `summary.json` is a trial;
  * a single run directory: `config.json` and/or `summary.json` in the directory itself.

Besides `eval/extrapolation.json`, evaluations with RoPE scaling switched on (`eval/extrapolation_<scaling>.json`)
are loaded into `Trial.scaled` (passkey retrieval with RoPE scaling, `eval/passkey_<scaling>.json`, into
`Trial.scaled_passkey`), research-evaluate's `eval/loss_by_position.json` (`--by_position`) into
`Trial.by_position`, research-analyze's `eval/embedding_quality.json` into `Trial.quality`, its
`eval/embedding_quality_input.json` (`--vectors_of=input`) into `Trial.quality_input` and its
`eval/rare_tokens.json` (`--rare`) into `Trial.rare`.

Nothing here imports the model, the trainer, JAX or Flax: reports read run directories only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Any

from research import run_fields
from research.report.saved_fields import IMPLIED_VALUES

SWEEP_FILE = "sweep.json"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
EXTRAPOLATION_FILE = pathlib.Path("eval") / "extrapolation.json"
QUALITY_FILE = pathlib.Path("eval") / "embedding_quality.json"
# Figures of embedding_quality.json that reports show: name -> (block, benchmark, key); "benchmarks" is the trained
# table (higher is better), "benchmarks_init" the same words from the initial table (the floor: descriptive).
QUALITY_FIGURES = {"analogy": ("benchmarks", "analogy", "accuracy"),
                   "wordsim353": ("benchmarks", "wordsim353", "spearman"),
                   "simlex999": ("benchmarks", "simlex999", "spearman"),
                   "analogy_init": ("benchmarks_init", "analogy", "accuracy")}
QUALITY_FLOORS = ("analogy_init",)
# research-analyze --vectors_of=input: the same benchmarks on the vectors the model feeds its first block (a factorized
# table projected, combined with the character CNN); no floor (the initial CNN and projection are not kept).
QUALITY_INPUT_FILE = pathlib.Path("eval") / "embedding_quality_input.json"
QUALITY_INPUT_FIGURES = {f"{name}_input": QUALITY_FIGURES[name] for name in ("analogy", "wordsim353", "simlex999")}
RARE_FILE = pathlib.Path("eval") / "rare_tokens.json"
# Figures of rare_tokens.json that reports show (research/analysis/rare.py writes them; a test keeps the names in
# step): the input table's geometry, one table column each, and the per-bucket means, one plot each.
RARE_GEOMETRY = ("anisotropy", "variance_top1", "variance_top10", "isotropy", "norm_freq_spearman")
RARE_BUCKET_METRICS = {"mean_norm": "mean row norm", "mean_drift_l2": "mean L2 drift from init",
                       "mean_cosine_to_init": "mean cosine to the initial row",
                       "mean_knn_cosine": "mean cosine to the 10 nearest rows", "mean_present": "mean steps present"}
BY_POSITION_FILE = pathlib.Path("eval") / "loss_by_position.json"  # research-evaluate --by_position
BY_POSITION_PREFIX = "loss_by_position_"  # eval/loss_by_position_<scaling>.json: --by_position --rope_scaling=<s>
# absent_rows of rare_tokens.json: rows no batch held ("rows"), and the largest change of theirs from the initial
# table ("max_abs_change": exactly 0 when none moved), both at the step update_counts.npz counts up to.
RARE_ABSENT = ("rows", "max_abs_change", "updated_while_absent")
PASSKEY_FILE = pathlib.Path("eval") / "passkey.json"  # research-evaluate --passkey
PASSKEY_PREFIX = "passkey_"  # eval/passkey_<scaling>.json: research-evaluate --passkey --rope_scaling=<scaling>
SCALED_PREFIX = "extrapolation_"  # eval/extrapolation_<scaling>.json: research-evaluate --rope_scaling=<scaling>


def extrapolation_file(rope_scaling: str | None = None) -> pathlib.Path:
  """eval/extrapolation.json, or eval/extrapolation_<scaling>.json for an evaluation with RoPE scaling."""
  if rope_scaling is None:
    return EXTRAPOLATION_FILE
  return EXTRAPOLATION_FILE.with_name(f"{SCALED_PREFIX}{rope_scaling}.json")


def by_position_file(rope_scaling: str | None = None) -> pathlib.Path:
  """eval/loss_by_position.json, or eval/loss_by_position_<scaling>.json for an evaluation with RoPE scaling."""
  if rope_scaling is None:
    return BY_POSITION_FILE
  return BY_POSITION_FILE.with_name(f"{BY_POSITION_PREFIX}{rope_scaling}.json")


def passkey_file(rope_scaling: str | None = None) -> pathlib.Path:
  """eval/passkey.json, or eval/passkey_<scaling>.json for passkey retrieval with RoPE scaling."""
  if rope_scaling is None:
    return PASSKEY_FILE
  return PASSKEY_FILE.with_name(f"{PASSKEY_PREFIX}{rope_scaling}.json")

# What an evaluation file records of how it scored (its protocol, RoPE factor included) and which checkpoint: a
# loss_by_position.json counts beside the extrapolation.json of its scaling only where these agree
# (`protocol_differences`; research-evaluate moves one aside that no longer does).
PROTOCOL_FIELDS = ("mode", "stride", "split", "train_len", "rope_factor", "checkpoint_step")
_PROTOCOL_NAMES = {"train_len": "train length", "rope_factor": "factor", "checkpoint_step": "step"}


def protocol(data: dict[str, Any]) -> dict[str, Any]:
  """The PROTOCOL_FIELDS an evaluation file's JSON object records (a field an older file lacks is left out)."""
  return {k: data[k] for k in PROTOCOL_FIELDS if k in data}


def protocol_differences(by_position: dict[str, Any], extrapolation: dict[str, Any]) -> str | None:
  """How a loss_by_position file's `protocol` differs from that of the extrapolation file beside it, by-position
  first: "mode sliding, stride 1 vs mode nonoverlapping", "step 125 vs 200"; None when every field both record is
  equal (a field one of them lacks is not compared: nothing says it differs)."""
  def text(data: dict[str, Any], keys: list[str]) -> str:
    shown = [f"{_PROTOCOL_NAMES.get(k, k)} {_value_text(k, data[k])}" for k in keys
             if data[k] is not None or k == "rope_factor"]
    return ", ".join(shown) or ", ".join(f"{_PROTOCOL_NAMES.get(k, k)} null" for k in keys)
  differ = [k for k in PROTOCOL_FIELDS if k in by_position and k in extrapolation
            and by_position[k] != extrapolation[k]]
  parts = [[k for k in differ if k != "checkpoint_step"], [k for k in differ if k == "checkpoint_step"]]
  said = [f"{text(by_position, keys)} vs {text(extrapolation, keys)}" for keys in parts[:1] if keys]
  if parts[1]:
    said.append(f"step {by_position['checkpoint_step']} vs {extrapolation['checkpoint_step']}")
  return "; ".join(said) or None


def _value_text(key: str, value: Any) -> str:
  if key == "rope_factor" and value is None:
    return "= the multiple at each length"  # research-evaluate --rope_scaling without --rope_factor
  return f"{value:g}" if isinstance(value, float) else str(value)


CHECKPOINT_CHOICES = ("best", "last")  # research-evaluate --checkpoint
# The commit since which summary.json records an MLM run's validation masks (`mlm_masks`; `Trial.validation_masks`),
# and how a trial whose files cannot tell them is described.
VALIDATION_MASKS_RECORDED = "9487863, 2026-12-07"
UNTOLD_MASKS = "validation masks not recorded"
MISSING = "<missing>"  # value of a field a config does not have (when deriving swept fields from configs)
# The value of a field the trial's own model never reads (`Trial.unread`): runs that differ only there are one model.
UNREAD = "(unread)"
# The vector file's contents (the first 12 hex digits of the sha256 RUN/embedding_init.json records since
# `pretrained.file_record`): a row label, added only where trials that would share a row started from files of
# different bytes (`_with_vector_rows`), so that no mean mixes two initial tables.
VECTORS_FIELD = "vectors.sha256"
EMBEDDING_INIT_FILE = "embedding_init.json"


class ReportError(ValueError):
  """A directory that cannot be reported on: missing, empty, foreign or holding malformed run files."""


@dataclasses.dataclass(frozen=True)
class EvalPoint:
  """One evaluation length of `eval/extrapolation.json`; `ppl` is None where the scheme cannot run (see `note`)."""
  multiple: float
  length: int
  ppl: float | None
  tokens: int | None = None
  note: str | None = None


@dataclasses.dataclass(frozen=True)
class Extrapolation:
  train_len: int | None
  mode: str | None
  stride: int | None
  split: str | None
  points: tuple[EvalPoint, ...]
  rope_scaling: str | None = None
  rope_factor: float | None = None  # None with a scaling: the multiple itself at each length
  checkpoint_step: int | None = None  # the step of the checkpoint research-evaluate scored
  checkpoint: str | None = None  # the choice that selected it (best | last); None in files written before
  mlm_masks: str | None = None  # an MLM run's masking rule ("per_row"); None: a CLM run, or per batch (older files)
  protocol: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)  # `protocol` of the file


@dataclasses.dataclass(frozen=True)
class PositionCurve:
  """One length of eval/loss_by_position.json: bucket b holds window columns edges[b] <= p < edges[b+1], with
  tokens[b] scored targets of mean loss loss[b] (None where empty); n/a lengths have only the `note`."""
  multiple: float
  length: int
  edges: tuple[int, ...] = ()
  tokens: tuple[int, ...] = ()
  loss: tuple[float | None, ...] = ()
  note: str | None = None


@dataclasses.dataclass(frozen=True)
class PasskeyLength:
  """One length of eval/passkey.json: `accuracy` = the mean over depths of the scored cells' accuracy (n/a cells
  left out), None when every depth is n/a (then `note` is the file's note)."""
  multiple: float
  length: int
  accuracy: float | None
  note: str | None = None


@dataclasses.dataclass(frozen=True)
class Passkey:
  lengths: tuple[PasskeyLength, ...]  # sorted by length
  checkpoint_step: int | None = None
  checkpoint: str | None = None
  rope_factor: float | None = None  # with a scaling: None = the multiple at each length, as in Extrapolation
  depths: tuple[float, ...] | None = None  # --passkey_depths; None in a file without them
  trials: int | None = None  # --passkey_trials (keys per cell); None in a file without them


@dataclasses.dataclass(frozen=True)
class LossByPosition:
  train_len: int | None
  mode: str | None
  objective: str | None
  curves: tuple[PositionCurve, ...]  # sorted by length
  checkpoint_step: int | None = None  # the step of the checkpoint research-evaluate scored
  checkpoint: str | None = None  # the choice that selected it (best | last); None in files written before
  mlm_masks: str | None = None  # an MLM run's masking rule ("per_row"); None: a CLM run, or per batch (older files)
  protocol: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)  # `protocol` of the file


@dataclasses.dataclass(frozen=True)
class RareBucket:
  """One frequency bucket of eval/rare_tokens.json: training counts in [low, high), its RARE_BUCKET_METRICS."""
  label: str
  low: float
  high: float
  rows: int
  values: dict[str, float | None]


@dataclasses.dataclass(frozen=True)
class RareTokens:
  geometry: dict[str, float | None]  # RARE_GEOMETRY of the input table
  buckets: tuple[RareBucket, ...]
  # `absent_rows` of rare_tokens.json (rows no batch held: RARE_ABSENT figures, `note` when not measured); None for
  # a file written before it existed.
  absent: dict[str, Any] | None = None
  # Whether the markers ([PAD], [CLS], [SEP], [MASK]) are in no bucket: False for a file written before `marker_rows`
  # (bcf3d36), whose buckets count them (an MLM's [MASK] in "never seen").
  markers_excluded: bool = True
  # The step update_counts.npz counted up to when the file was written (`update_counts_step`: where training then
  # ended); None in a file without it. `Trial.analysis_stale` compares it with the finished run's step.
  update_counts_step: int | None = None
  # The analysed table's width (rare_tokens.json's `dim`: V × dim, a factorized table's model.table_dim); None in a
  # file without it. Shares of variance depend on it (`tables.WIDTH_GEOMETRY`).
  dim: int | None = None


@dataclasses.dataclass
class Trial:
  """One run. `status` is 'finished' exactly when `summary` is present (summary.json is written last)."""
  name: str
  path: pathlib.Path
  status: str  # finished | failed | pending | running | unfinished
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  error: str | None = None
  config: dict[str, Any] | None = None  # nested, as in config.json
  summary: dict[str, Any] | None = None
  metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  extrapolation: Extrapolation | None = None
  scaled: dict[str, Extrapolation] = dataclasses.field(default_factory=dict)  # rope scaling -> its evaluation
  quality: dict[str, float | None] | None = None  # QUALITY_FIGURES of eval/embedding_quality.json, if analyzed
  quality_input: dict[str, float | None] | None = None  # QUALITY_INPUT_FIGURES of eval/embedding_quality_input.json
  rare: RareTokens | None = None  # eval/rare_tokens.json, if analyzed with --rare
  by_position: LossByPosition | None = None  # eval/loss_by_position.json, if evaluated with --by_position
  passkey: Passkey | None = None  # eval/passkey.json, if evaluated with --passkey
  scaled_passkey: dict[str, Passkey] = dataclasses.field(default_factory=dict)  # rope scaling -> passkey_<s>.json
  # rope scaling -> eval/loss_by_position_<scaling>.json
  scaled_by_position: dict[str, LossByPosition] = dataclasses.field(default_factory=dict)
  # {analysis file (QUALITY_FILE, QUALITY_INPUT_FILE, RARE_FILE, as posix): (checkpoint_step, checkpoint choice)} of
  # the research-analyze files the trial has: `analysis_stale` judges them by the evaluations' rule.
  analysis_checkpoints: dict[str, tuple[int | None, str | None]] = dataclasses.field(default_factory=dict)
  # For a trial without config.json: the base config's values of fields other trials override (`_load_sweep`).
  defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
  # The fields its config.json lacks (written before they existed), which `config` holds with the value research-train's
  # resume rule reads them as (`with_implied`): the report compares and groups them as research-train would.
  implied: tuple[str, ...] = ()
  # In a directory of runs (`load_runs`), the fields its own model never reads (`run_fields.unused_fields` of its
  # config with itself: a factorized head's projection group in a plain table, lazy rows of a dense one): shown and
  # grouped as UNREAD, so that two runs of one model are one row whatever such a field says (an old run holds its
  # implied value there, a new one the default). A sweep's rows are its overrides, as the sweep file names them.
  unread: tuple[str, ...] = ()
  # The sha256 of the vector file the run started from (RUN/embedding_init.json); None where none is recorded.
  vectors_sha256: str | None = None

  def evaluation(self, rope_scaling: str | None = None) -> Extrapolation | None:
    return self.extrapolation if rope_scaling is None else self.scaled.get(rope_scaling)

  def passkey_evaluation(self, rope_scaling: str | None = None) -> Passkey | None:
    return self.passkey if rope_scaling is None else self.scaled_passkey.get(rope_scaling)

  def by_position_evaluation(self, rope_scaling: str | None = None) -> LossByPosition | None:
    return self.by_position if rope_scaling is None else self.scaled_by_position.get(rope_scaling)

  @property
  def finished(self) -> bool:
    return self.status == "finished" and self.summary is not None

  def stale_reason(self, checkpoint_step: int | None, file: str, checkpoint: str | None = None) -> str | None:
    """Why an evaluation of checkpoint `checkpoint_step` (written to `file`) no longer stands for the finished run,
    or None (`stale` says it with the trial's name and what the report does with it). research-evaluate scores the
    best checkpoint (lowest validation loss) or the last one.

    With the choice recorded (`checkpoint`, in files written since it is) and the run's checkpoints on disk, the
    evaluation is stale when that choice selects another step now: "last" a later checkpoint, "best" a kept one
    whose validation loss (metrics.jsonl, the loss the checkpoint was ranked by) is lower than the scored one's.
    Otherwise (an older file, or a run copied without its checkpoints/) only the final step (summary.json's `step`:
    the trainer always checkpoints it) is known to be a checkpoint, and the rule is: stale when `checkpoint_step` <
    `step` and the final checkpoint's validation loss is lower (then neither choice selects it); that rule misses a
    checkpoint beaten only by an intermediate one. Neither flags a fresh evaluation (docs/reports.md, "Stale
    evaluations")."""
    summary = self.summary if self.finished else None
    if summary is None or checkpoint_step is None or summary.get("step") is None:
      return None
    kept = self.checkpoint_steps()
    if checkpoint == "last" and not kept:
      kept = [int(summary["step"])]  # the final step is always checkpointed and kept: the last one
    if checkpoint is not None and kept:
      return self._stale_by_choice(checkpoint_step, file, checkpoint, kept)
    step = int(summary["step"])
    if checkpoint_step >= step:  # the last checkpoint (or a summary older than the evaluation: nothing to compare)
      return None
    losses = self.valid_losses()
    final = None if self.scored_nothing(step) else losses.get(step, _finite_or_none(summary.get("valid_loss")))
    scored = losses.get(checkpoint_step)
    if final is None or scored is None or not final < scored:
      return None
    low, high = _distinct(final, scored)
    return (f"{file} scored the checkpoint of step {checkpoint_step}; the run has since reached step {step}, whose "
            f"checkpoint has a lower validation loss ({low} < {high}), so neither --checkpoint=best nor "
            f"--checkpoint=last selects step {checkpoint_step} now")

  def checkpoint_steps(self) -> list[int]:
    """The steps of the run's finished checkpoints (RUN/checkpoints/<step>; Orbax's unfinished saves carry a
    suffix), ascending."""
    try:
      return sorted(int(p.name) for p in (self.path / "checkpoints").iterdir() if p.name.isdigit() and p.is_dir())
    except OSError:
      return []

  def _stale_by_choice(self, checkpoint_step: int, file: str, checkpoint: str, kept: list[int]) -> str | None:
    """`stale_reason` for a file that records its choice, given the kept checkpoint steps."""
    why = f"{file} scored the checkpoint of step {checkpoint_step} (--checkpoint={checkpoint}); "
    if checkpoint == "last":
      return None if checkpoint_step >= kept[-1] else f"{why}the last checkpoint is now step {kept[-1]}"
    losses = self.valid_losses()
    scored = losses.get(checkpoint_step)
    ranked = [(losses[s], s) for s in kept if s in losses]
    if scored is None or not ranked:
      return None  # nothing to rank by: not known to be stale
    best_loss, best = min(ranked)
    if not best_loss < scored:  # a tie with the scored step is no change of what "best" means
      return None
    low, high = _distinct(best_loss, scored)
    return f"{why}the best checkpoint is now step {best} (validation loss {low} < {high})"

  def valid_losses(self) -> dict[int, float]:
    """{step: validation loss} of metrics.jsonl's `split: valid` lines (the last line of a step wins); a validation
    that scored no target (`scored_nothing`) has no loss: its 0 is the trainer's placeholder."""
    out = {}
    for r in self.metrics:
      if r.get("split") == "valid" and isinstance(r.get("step"), int):
        loss = _finite_or_none(r.get("loss")) if isinstance(r.get("loss"), (int, float)) else None
        if loss is not None and not unscored(r):
          out[r["step"]] = loss
        else:
          out.pop(r["step"], None)
    return out

  def scored_nothing(self, step: Any) -> bool:
    """Whether the validation at `step` scored no target: the last `split: valid` line of that step in metrics.jsonl
    has `tokens` 0 (a tiny split; an MLM scores only the tokens it masks). Its loss 0 and perplexity 1 are the
    trainer's placeholders, and summary.json's figures of that step are too (summary.json does not record the
    tokens: metrics.jsonl is the only record). False where metrics.jsonl has no such line or no `tokens` (a run
    written before the figure): nothing says the figure is a placeholder."""
    lines = [r for r in self.metrics if r.get("split") == "valid" and r.get("step") == step]
    return bool(lines) and unscored(lines[-1])

  @functools.cached_property
  def stale_reasons(self) -> dict[str, str]:
    """{eval file (as `extrapolation_file`, BY_POSITION_FILE and PASSKEY_FILE name it): its `stale_reason`} for the
    trial's stale evaluations (extrapolation, RoPE-scaled, loss by position, passkey; a loss by position that does
    not match extrapolation.json, `by_position_mismatch`, too), judged once (the sweep runner evaluates these
    again)."""
    reasons = {f.as_posix(): self.stale_reason(e.checkpoint_step, f.as_posix(), e.checkpoint)
               for e, f in self._evaluations() if e is not None}
    for scaling in (None, *self.scaled_by_position):
      file = by_position_file(scaling).as_posix()
      if file in reasons and reasons[file] is None:
        reasons[file] = self.by_position_mismatch(scaling)
    return {file: reason for file, reason in reasons.items() if reason is not None}

  def by_position_mismatch(self, rope_scaling: str | None = None) -> str | None:
    """Why eval/loss_by_position.json (or that of a RoPE scaling) does not go with the eval/extrapolation.json of
    the same scaling beside it, or None: another protocol or checkpoint step (`protocol_differences`), as
    research-evaluate without --by_position leaves an earlier one behind. Its curves would be drawn under the other
    file's evaluation line, so it is stale."""
    by_position, evaluation = self.by_position_evaluation(rope_scaling), self.evaluation(rope_scaling)
    if by_position is None or evaluation is None:
      return None
    differ = protocol_differences(by_position.protocol, evaluation.protocol)
    if differ is None:
      return None
    return (f"{by_position_file(rope_scaling).as_posix()} does not match "
            f"{extrapolation_file(rope_scaling).as_posix()} beside it ({differ}; research-evaluate --by_position "
            f"with the options of the latter scores both again)")

  @functools.cached_property
  def stale(self) -> dict[str, str]:
    """{eval file: its stale note} (each of `stale_reasons` with the trial's name and what the report does): the
    table's cells, the plots and report.md look them up here."""
    return {file: f"{self.name}: {reason}: stale, left out of the means and plots (rerun research-evaluate)"
            for file, reason in self.stale_reasons.items()}

  def by_position_per_batch(self, rope_scaling: str | None = None) -> str | None:
    """The note for an MLM run's eval/loss_by_position.json (or that of a RoPE scaling) scored with masks drawn per
    batch (a file without `mlm_masks`, written before per-row masks), or None: its losses moved with the batch size,
    so they are left out of loss_by_position.png rather than drawn as if per row (docs/reports.md, "Loss by
    position")."""
    lbp = self.by_position_evaluation(rope_scaling)
    if lbp is None or lbp.mlm_masks is not None or (lbp.objective or self.field("objective")) != "mlm":
      return None
    return (f"{self.name}: {by_position_file(rope_scaling).as_posix()} was scored with MLM masks drawn per batch "
            f"(written before per-row masks, 2026-12-07): left out of loss_by_position.png (rerun research-evaluate "
            f"--by_position)")

  def by_position_notes(self) -> list[str]:
    """`by_position_per_batch`'s notes of every loss-by-position file of the trial, unscaled first."""
    notes = (self.by_position_per_batch(s) for s in (None, *sorted(self.scaled_by_position)))
    return [note for note in notes if note]

  @functools.cached_property
  def analysis_stale(self) -> dict[str, str]:
    """{analysis file: its stale note}: research-analyze's figures of a checkpoint the run has since moved past, by
    `stale_reason`'s rule, left out of the table and the plots like a stale evaluation. Apart from `stale`, which the
    sweep runner reads to evaluate again: only research-analyze rewrites these files."""
    notes = {}
    for file, (step, choice) in self.analysis_checkpoints.items():
      reason = self.stale_reason(step, file, choice)
      if reason is not None:
        notes[file] = f"{self.name}: {reason}: stale, left out of the means and plots (rerun research-analyze)"
    counted, end = None if self.rare is None else self.rare.update_counts_step, (self.summary or {}).get("step")
    if RARE_FILE.as_posix() not in notes and counted is not None and isinstance(end, int) and counted != end:
      # Trained on since (train.steps raised): its per-bucket presence and absent rows count an earlier end's steps.
      notes[RARE_FILE.as_posix()] = (
          f"{self.name}: {RARE_FILE.as_posix()} counts the updates up to step {counted} (update_counts_step), the "
          f"run ended at step {end}: stale, left out of the means and plots (rerun research-analyze --rare)")
    return notes

  def evaluation_files(self) -> list[str]:
    """The evaluation and analysis files of the trial that the report reads (eval/extrapolation*.json,
    loss_by_position.json, passkey.json, embedding_quality*.json, rare_tokens.json), as posix paths."""
    files = [*self._evaluations(), (self.quality, QUALITY_FILE), (self.quality_input, QUALITY_INPUT_FILE),
             (self.rare, RARE_FILE)]
    return [f.as_posix() for data, f in files if data is not None]

  def _evaluations(self) -> list[tuple[Any, pathlib.Path]]:
    """[(what was read, its file)] of research-evaluate's files (extrapolation, RoPE-scaled, loss by position,
    passkey), None where the trial has no such file."""
    return [(self.extrapolation, extrapolation_file(None)),
            *((e, extrapolation_file(s)) for s, e in self.scaled.items()), (self.by_position, BY_POSITION_FILE),
            *((b, by_position_file(s)) for s, b in self.scaled_by_position.items()),
            (self.passkey, PASSKEY_FILE), *((p, passkey_file(s)) for s, p in self.scaled_passkey.items())]

  def stale_evaluations(self) -> list[str]:
    """The stale notes of every evaluation file of the trial, in `stale`'s order."""
    return list(self.stale.values())

  @property
  def validation_masks(self) -> tuple[str, bool] | None:
    """How an MLM run's validation (summary.json's valid ppl, its best and rare figures) masked the split, as (text,
    told), or None for a causal LM. The rule changed twice, and each moved the figure (one run's parameters: valid
    ppl 274.86, 306.77, 268.86): `told` is False where the files cannot say which rule it was.

    summary.json's `mlm_masks` (`loop.summary_record`, since VALIDATION_MASKS_RECORDED) names it. A summary without
    it is told by the fields config.json lacks (`run_fields.OLD_MLM_VALIDATION`, which research-train reads too):
    without train.position.weight_decay (added with per-batch masks, 059dd28) the run drew every batch's masks from
    one key; without model.char_spelling (91bcc56, before per-row masks b2cb295) it drew them per batch. Any other
    was written per batch or per row: not told."""
    if self.field("objective") != "mlm":
      return None
    masks = (self.summary or {}).get("mlm_masks")
    if isinstance(masks, str):
      return f"validation masks {masks.replace('_', ' ')}", True
    for field, rule, commit, date in run_fields.OLD_MLM_VALIDATION:
      if self.config is not None and field in self.implied:
        return f"validation masks {rule} (trained before {commit}, {date})", True
    return (f"{UNTOLD_MASKS} (per batch before b2cb295, per row since; recorded since "
            f"{VALIDATION_MASKS_RECORDED})"), False

  def field(self, name: str) -> Any:
    """A dotted config field: the sweep override when there is one, else the resolved config's value
    (VECTORS_FIELD: the recorded vectors' hash, shortened)."""
    if name == VECTORS_FIELD:
      return self.vectors_sha256[:12] if self.vectors_sha256 else MISSING
    if name in self.overrides:
      return self.overrides[name]
    if name in self.unread:
      return UNREAD
    if self.config is None and name in self.defaults:
      return self.defaults[name]
    return lookup(self.config or {}, name, MISSING)


@dataclasses.dataclass
class RunSet:
  """Everything `report` knows about a directory."""
  directory: pathlib.Path
  name: str
  layout: str  # sweep | runs | single
  trials: list[Trial]
  swept_fields: list[str]  # dotted names whose values differ across trials, seeds included
  # A directory of runs: copies of a run (the same model, seed included), left out of `trials` and every mean:
  # [(the copy, the name of the trial it duplicates)], in listing order (`_duplicates`).
  duplicates: list[tuple[Trial, str]] = dataclasses.field(default_factory=list)
  # A directory of runs: the trials without config.json, whose fields are left out of the comparison.
  without_config: list[str] = dataclasses.field(default_factory=list)
  # A directory of runs: subdirectories not reported, {name: why} (a sweep directory among the runs, `_sweep_dirs`).
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)

  @property
  def replicate_fields(self) -> list[str]:
    return [f for f in self.swept_fields if is_seed_field(f)]

  @property
  def group_fields(self) -> list[str]:
    return [f for f in self.swept_fields if not is_seed_field(f)]


def unscored(record: dict[str, Any]) -> bool:
  """Whether a metrics.jsonl line is a validation that scored no target (`tokens` 0): its loss 0 and perplexity 1
  are placeholders, not figures (the trainer prints a note saying so)."""
  tokens = record.get("tokens")
  return record.get("split") == "valid" and isinstance(tokens, (int, float)) and not isinstance(tokens, bool) \
      and tokens == 0


def is_seed_field(name: str) -> bool:
  """`seed`, `data.seed`, ...: replicates, averaged over rather than grouped by."""
  return name.rsplit(".", 1)[-1] == "seed"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def lookup(tree: dict[str, Any], name: str, default: Any = None) -> Any:
  node: Any = tree
  for part in name.split("."):
    if not isinstance(node, dict) or part not in node:
      return default
    node = node[part]
  return node


def display(text: Any) -> str:
  """`text` as a report shows it: a name that is not valid UTF-8 (a directory name's undecodable bytes, which Python
  holds as surrogate escapes on POSIX) with those bytes written `\\xe9`, so that it can be written as UTF-8 text and
  drawn; any other text unchanged."""
  try:
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
  except UnicodeEncodeError:  # a lone surrogate no file name holds (JSON's "\\ud800"): escaped as itself
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def hashable(value: Any) -> Any:
  """A hashable stand-in for a JSON value (lists and dicts become canonical JSON text)."""
  if isinstance(value, (list, dict)):
    return json.dumps(value, sort_keys=True)
  return value


def _read_json(path: pathlib.Path) -> Any:
  try:
    text = path.read_text(encoding="utf-8")
  except OSError as e:
    raise ReportError(f"cannot read {path}: {e.strerror or e}") from None
  except UnicodeDecodeError as e:  # JSON is UTF-8 text: a damaged or foreign file is one line naming it
    raise ReportError(f"{path} is not valid JSON (not UTF-8 text: byte {e.object[e.start]:#04x} at offset "
                      f"{e.start})") from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ReportError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def _read_json_object(path: pathlib.Path) -> dict[str, Any]:
  value = _read_json(path)
  if not isinstance(value, dict):
    raise ReportError(f"{path} should hold a JSON object, found {type(value).__name__}")
  return value


def _read_metrics(path: pathlib.Path) -> list[dict[str, Any]]:
  """metrics.jsonl; a truncated last line (a run still writing) is ignored, a bad line elsewhere is an error."""
  if not path.is_file():
    return []
  try:  # undecodable bytes (a torn append, a damaged disk) become U+FFFD, as in the trainer's own reader: a bad
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()  # last line is ignored, others fail
  except OSError as e:
    raise ReportError(f"cannot read {path}: {e.strerror or e}") from None
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        break
      raise ReportError(f"{path} line {i + 1} is not valid JSON") from None
    if isinstance(record, dict):
      for key, kinds, what in (("step", (int,), "an integer"), ("loss", (int, float), "a number")):
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
          raise ReportError(f"{path} line {i + 1}: {key!r} must be {what}, got {value!r}")
      records.append(record)
  return records


def _short(value: Any, limit: int = 80) -> str:
  """`value`'s repr, cut to `limit` characters: a value quoted in a one-line error."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 1] + "…"


def _distinct(a: float, b: float) -> tuple[str, str]:
  """`a` and `b` printed with 4 significant digits, or as many more as it takes for two different numbers to read
  differently (5.6918 against 5.692, not 5.692 against 5.692)."""
  for digits in range(4, 18):
    x, y = f"{a:.{digits}g}", f"{b:.{digits}g}"
    if x != y or a == b:
      return x, y
  return repr(a), repr(b)


class _NotANumber(ReportError):
  """A figure that is not a JSON number; `_names_file` says which file it was in."""


def _finite_or_none(value: Any, key: str | None = None) -> float | None:
  """A JSON number as a float, None for null or a non-finite one; anything else (a string, a list) is an error
  (naming `key`, the figure's name in its file, when given)."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise _NotANumber(f"{key + ' ' if key else 'a figure '}must be a number, got {value!r}")
  value = float(value)
  return value if math.isfinite(value) else None


def _names_file(reader):
  """A reader of one file (its first argument) whose figures that are not numbers are one ReportError naming it."""
  @functools.wraps(reader)
  def read(path, *args, **kwargs):
    try:
      return reader(path, *args, **kwargs)
    except _NotANumber as e:
      raise ReportError(f"{path}: {e}") from None
  return read


# summary.json's figures that reports read: each a JSON number (or null), the steps integers.
SUMMARY_NUMBERS = ("valid_loss", "valid_ppl", "best_valid_loss", "best_valid_ppl", "valid_ppl_rare", "train_loss")
SUMMARY_STEPS = ("step", "best_step")


@_names_file
def _check_summary(path: pathlib.Path, summary: dict[str, Any]) -> dict[str, Any]:
  """`summary` (read from `path`), or one ReportError naming a figure of SUMMARY_NUMBERS / SUMMARY_STEPS that is
  not a number (an integer for the steps)."""
  for key in SUMMARY_NUMBERS:
    _finite_or_none(summary.get(key), repr(key))
  for key in SUMMARY_STEPS:
    _step_or_none(path, summary.get(key), key)
  return summary


def _step_or_none(path: pathlib.Path, value: Any, key: str = "checkpoint_step") -> int | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
      value != int(value):
    raise ReportError(f"{path}: {key!r} must be an integer, got {value!r}")
  return int(value)


def _choice_or_none(path: pathlib.Path, value: Any) -> str | None:
  if value is None:
    return None
  if value not in CHECKPOINT_CHOICES:
    raise ReportError(f"{path}: 'checkpoint' must be one of {', '.join(CHECKPOINT_CHOICES)}, got {value!r}")
  return value


@_names_file
def _read_extrapolation(path: pathlib.Path, rope_scaling: str | None = None) -> Extrapolation | None:
  if not path.is_file():
    return None
  data = _read_json_object(path)
  results = data.get("results")
  if not isinstance(results, list):
    raise ReportError(f"{path} has no 'results' list")
  train_len = data.get("train_len")
  points = []
  for r in results:
    try:
      multiple = float(r["multiple"])
      length = int(r["length"]) if r.get("length") is not None else int(round(multiple * train_len))
    except (KeyError, TypeError, ValueError):
      raise ReportError(f"{path}: every result needs 'multiple' and 'length', got {r!r}") from None
    raw = r.get("ppl")
    ppl = _finite_or_none(raw, "'ppl'")
    note = r.get("note")
    if ppl is None and note is None:
      note = "not evaluated" if raw is None else f"non-finite perplexity ({raw})"
    points.append(EvalPoint(multiple=multiple, length=length, ppl=ppl, tokens=r.get("tokens"),
                            note=None if ppl is not None else str(note)))
  return Extrapolation(train_len=train_len, mode=data.get("mode"), stride=data.get("stride"),
                       split=data.get("split"), points=tuple(sorted(points, key=lambda p: (p.length, p.multiple))),
                       rope_scaling=rope_scaling, rope_factor=_finite_or_none(data.get("rope_factor"), "'rope_factor'"),
                       checkpoint_step=_step_or_none(path, data.get("checkpoint_step")),
                       checkpoint=_choice_or_none(path, data.get("checkpoint")), mlm_masks=_mlm_masks(data),
                       protocol=protocol(data))


@_names_file
def _read_by_position(path: pathlib.Path) -> LossByPosition | None:
  if not path.is_file():
    return None
  data = _read_json_object(path)
  if not isinstance(data.get("results"), list):
    raise ReportError(f"{path} has no 'results' list")
  curves = []
  for r in data["results"]:
    try:
      multiple, length = float(r["multiple"]), int(r["length"])
      if r.get("note") is not None:
        curves.append(PositionCurve(multiple, length, note=str(r["note"])))
        continue
      edges, tokens = tuple(int(e) for e in r["edges"]), tuple(int(t) for t in r["tokens"])
      loss = tuple(_finite_or_none(v) for v in r["loss"])
    except (KeyError, TypeError, ValueError):
      raise ReportError(f"{path}: every result needs 'multiple', 'length' and a 'note' or 'edges', 'tokens' and "
                        f"'loss', got {r!r}") from None
    if not len(edges) - 1 == len(tokens) == len(loss) or list(edges) != sorted(set(edges)):
      raise ReportError(f"{path}: length {length} needs increasing 'edges' and one 'tokens' and 'loss' per bucket")
    curves.append(PositionCurve(multiple, length, edges, tokens, loss))
  return LossByPosition(train_len=data.get("train_len"), mode=data.get("mode"), objective=data.get("objective"),
                        curves=tuple(sorted(curves, key=lambda c: (c.length, c.multiple))),
                        checkpoint_step=_step_or_none(path, data.get("checkpoint_step")),
                        checkpoint=_choice_or_none(path, data.get("checkpoint")), mlm_masks=_mlm_masks(data),
                        protocol=protocol(data))


def _mlm_masks(data: dict[str, Any]) -> str | None:
  """An evaluation file's `mlm_masks` (an MLM's masking rule), or None: a CLM's file, or one written before it."""
  masks = data.get("mlm_masks")
  return masks if isinstance(masks, str) else None


@_names_file
def _read_passkey(path: pathlib.Path) -> Passkey | None:
  """eval/passkey.json: per length the mean over depths of the scored cells' accuracy."""
  if not path.is_file():
    return None
  data = _read_json_object(path)
  if not isinstance(data.get("results"), list):
    raise ReportError(f"{path} has no 'results' list")
  by_length: dict[tuple[int, float], tuple[list[float], list[str]]] = {}
  for i, r in enumerate(data["results"]):
    try:
      multiple, length = float(r["multiple"]), int(r["length"])
      accuracy = _finite_or_none(r.get("accuracy"), repr(f"results[{i}].accuracy"))
    except (KeyError, TypeError, ValueError):
      raise ReportError(f"{path}: every result needs 'multiple', 'length' and 'accuracy', got {_short(r)}") from None
    scored, notes = by_length.setdefault((length, multiple), ([], []))
    if accuracy is not None:
      scored.append(accuracy)
    elif r.get("note") is not None and str(r["note"]) not in notes:
      notes.append(str(r["note"]))
  lengths = tuple(PasskeyLength(multiple, length, math.fsum(scored) / len(scored) if scored else None,
                                None if scored else ("; ".join(notes) or "no depth scored"))
                  for (length, multiple), (scored, notes) in sorted(by_length.items()))
  depths, trials = data.get("depths"), data.get("trials")
  return Passkey(lengths=lengths, checkpoint_step=_step_or_none(path, data.get("checkpoint_step")),
                 checkpoint=_choice_or_none(path, data.get("checkpoint")),
                 rope_factor=_finite_or_none(data.get("rope_factor"), "'rope_factor'"),
                 depths=tuple(float(d) for d in depths) if isinstance(depths, list) and all(
                     _finite_or_none(d) is not None for d in depths) else None,
                 trials=trials if isinstance(trials, int) and not isinstance(trials, bool) else None)


def _read_scaled(path: pathlib.Path, prefix: str = SCALED_PREFIX, read=None) -> dict[str, Any]:
  """{scaling: evaluation} from eval/extrapolation_<scaling>.json (or, with PASSKEY_PREFIX and `_read_passkey`,
  eval/passkey_<scaling>.json); the file name names the scaling, as the evaluator names the file. Only the scalings
  research-evaluate writes (`run_fields.EVALUATION_SCALINGS`): another name (a user's extrapolation_backup.json) is
  not an evaluation of a scaling, and would be a row labelled as one."""
  eval_dir = path / EXTRAPOLATION_FILE.parent
  if not eval_dir.is_dir():
    return {}
  out = {}
  for file in sorted(eval_dir.glob(f"{prefix}*.json")):
    scaling = file.stem[len(prefix):]
    if scaling in run_fields.EVALUATION_SCALINGS:
      out[scaling] = _read_extrapolation(file, scaling) if read is None else read(file)
  return out


@_names_file
def _read_quality(path: pathlib.Path, data: dict[str, Any] | None,
                  figures: dict = QUALITY_FIGURES) -> dict[str, float | None] | None:
  """The figures of an embedding_quality*.json (`data`, read from `path`; None when there is none)."""
  if data is None:
    return None
  if not isinstance(data.get("benchmarks"), dict):
    raise ReportError(f"{path} has no 'benchmarks' object")
  out = {}
  for name, (block, section, key) in figures.items():  # benchmarks_init: null or absent in older files
    figures = data.get(block) if isinstance(data.get(block), dict) else {}
    value = figures.get(section, {}).get(key) if isinstance(figures.get(section), dict) else None
    if key == "accuracy" and isinstance(figures.get(section), dict) and figures[section].get("scored") == 0:
      value = None  # no question scored: a file written before research-analyze said null there holds 0.0 (0 / 0)
    out[name] = _finite_or_none(value, repr(f"{block}.{section}.{key}"))
    if name in QUALITY_FLOORS:  # was the initial table scored at all (else: scored, but no question covered)
      out[floor_scored(name)] = isinstance(data.get(block), dict)
  return out


def floor_scored(name: str) -> str:
  """The key of a quality dict that says whether the file scored the initial table at all (QUALITY_FLOORS)."""
  return f"{name}:scored"


@_names_file
def _read_rare(path: pathlib.Path, data: dict[str, Any] | None) -> RareTokens | None:
  """The figures of a rare_tokens.json (`data`, read from `path`; None when there is none)."""
  if data is None:
    return None
  geometry = data.get("geometry")
  geometry = geometry.get("input") if isinstance(geometry, dict) else None
  if not isinstance(geometry, dict) or not isinstance(data.get("buckets"), list):
    raise ReportError(f"{path} needs 'geometry.input' and a 'buckets' list")
  buckets = []
  for i, b in enumerate(data["buckets"]):
    if not isinstance(b, dict):
      raise ReportError(f"{path}: every bucket needs 'label', 'low', 'high' and 'rows', got {_short(b)}")
    try:
      label, low, high, rows = str(b["label"]), float(b["low"]), float(b["high"]), int(b["rows"])
    except (KeyError, TypeError, ValueError):
      raise ReportError(f"{path}: every bucket needs 'label', 'low', 'high' and 'rows', got {b!r}") from None
    values = {m: _finite_or_none(b.get(m), repr(f"buckets[{i}].{m}")) for m in RARE_BUCKET_METRICS}
    buckets.append(RareBucket(label=label, low=low, high=high, rows=rows, values=values))
  absent = data.get("absent_rows")
  if absent is not None and not isinstance(absent, dict):
    raise ReportError(f"{path}: 'absent_rows' must be an object, got {absent!r}")
  if absent is not None:
    absent = {**{m: _finite_or_none(absent.get(m), repr(f"absent_rows.{m}")) for m in RARE_ABSENT},
              "note": None if absent.get("note") is None else str(absent["note"])}
  dim = _step_or_none(path, data.get("dim"), "dim")
  if dim is not None and dim < 1:
    raise ReportError(f"{path}: 'dim' must be >= 1 (the table's width), got {dim}")
  return RareTokens(geometry={m: _finite_or_none(geometry.get(m), repr(f"geometry.input.{m}")) for m in RARE_GEOMETRY},
                    buckets=tuple(buckets),
                    absent=absent, markers_excluded="marker_rows" in data,
                    update_counts_step=_step_or_none(path, data.get("update_counts_step"), "update_counts_step"),
                    dim=dim)


def with_implied(config: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
  """(`config` with every IMPLIED_VALUES field it lacks filled in, as `configuration.with_defaults` fills it for the
  resume rule; the fields filled): a run written before a field existed means that value by it."""
  return run_fields.fill_lacking(config, IMPLIED_VALUES)


# Fields `run_fields.unused_fields` lists that are shown as they are, not as UNREAD: those whose two values name one
# model (`run_fields.SAME_MODEL_VALUES`), and data.vocab_size of a fixed vocabulary, which the tables group by the
# tokenizer's real size.
SHOWN_AS_THEY_ARE = (*run_fields.SAME_MODEL_VALUES, "data.vocab_size")


def _unread(config: dict[str, Any] | None) -> tuple[str, ...]:
  """The fields a run config's own model never reads (`Trial.unread`)."""
  if config is None:
    return ()
  return tuple(f for f in run_fields.unused_fields(config, config, run_fields.builtin_rotates)
               if f not in SHOWN_AS_THEY_ARE)


def _load_trial(path: pathlib.Path, name: str, status: str | None = None, overrides: dict | None = None,
                error: str | None = None) -> Trial:
  config, implied = with_implied(_read_json_object(path / CONFIG_FILE)) if (path / CONFIG_FILE).is_file() \
      else (None, ())
  summary = _check_summary(path / SUMMARY_FILE, _read_json_object(path / SUMMARY_FILE)) \
      if (path / SUMMARY_FILE).is_file() else None
  if status is None:  # no sweep index: summary.json is the only sign of completion
    status = "finished" if summary is not None else "unfinished"
  elif status != "failed" and summary is not None:
    status = "finished"  # summary.json is written last; a stale index may still say pending/running
  elif status == "finished" and summary is None:
    status, error = "unfinished", error or f"marked finished in {SWEEP_FILE} but {path / SUMMARY_FILE} is missing"
  steps = lookup(config, "train.steps") if config is not None else None
  if summary is not None and status != "failed" and isinstance(steps, int) and isinstance(summary.get("step"), int) \
      and summary["step"] < steps:
    # Trained on (train.steps raised) and not finished again: summary.json is the earlier end's.
    status, error = "unfinished", (f"training on to step {steps}: {path / SUMMARY_FILE} is of step "
                                   f"{summary['step']}, the end of an earlier train.steps")
  # research-analyze's files, each read once: its figures, and the checkpoint it analyzed (`analysis_stale`).
  analyzed = {file: _read_json_object(path / file) if (path / file).is_file() else None
              for file in (QUALITY_FILE, QUALITY_INPUT_FILE, RARE_FILE)}
  analysis = {file.as_posix(): (_step_or_none(path / file, data.get("checkpoint_step")),
                                _choice_or_none(path / file, data.get("checkpoint")))
              for file, data in analyzed.items() if data is not None}
  return Trial(name=name, path=path, status=status, overrides=dict(overrides or {}), error=error, config=config,
               summary=summary if status == "finished" else None, metrics=_read_metrics(path / METRICS_FILE),
               extrapolation=_read_extrapolation(path / EXTRAPOLATION_FILE), scaled=_read_scaled(path),
               quality=_read_quality(path / QUALITY_FILE, analyzed[QUALITY_FILE]),
               quality_input=_read_quality(path / QUALITY_INPUT_FILE, analyzed[QUALITY_INPUT_FILE],
                                           QUALITY_INPUT_FIGURES),
               rare=_read_rare(path / RARE_FILE, analyzed[RARE_FILE]),
               by_position=_read_by_position(path / BY_POSITION_FILE), passkey=_read_passkey(path / PASSKEY_FILE),
               scaled_passkey=_read_scaled(path, PASSKEY_PREFIX, _read_passkey),
               scaled_by_position=_read_scaled(path, BY_POSITION_PREFIX, _read_by_position),
               analysis_checkpoints=analysis,
               implied=implied, vectors_sha256=_vectors_sha256(path, config))


def _vectors_sha256(path: pathlib.Path, config: dict[str, Any] | None) -> str | None:
  """The sha256 of the vector file a pretrained run started from (its embedding_init.json), or None: another init,
  a run written before the hash was recorded, or an unreadable record (the report reads what it can)."""
  record = path / EMBEDDING_INIT_FILE
  if config is None or lookup(config, "model.embed_init") != "pretrained" or not record.is_file():
    return None
  try:
    sha = json.loads(record.read_text()).get("sha256")
  except (OSError, ValueError, UnicodeDecodeError, AttributeError):
    return None
  return sha if isinstance(sha, str) and sha else None


def _with_vector_rows(trials: list[Trial], swept: list[str]) -> list[str]:
  """`swept` and VECTORS_FIELD when two trials that the other fields put in one row (seeds aside) started from
  vector files of different contents (a file regenerated between a sweep's trials): the row is then split by the
  file's hash rather than averaging two initial tables. Trials without a recorded hash change nothing."""
  hashes: dict[tuple, set[str]] = {}
  for t in trials:
    if t.vectors_sha256:
      key = tuple(hashable(t.field(f)) for f in swept if not is_seed_field(f))
      hashes.setdefault(key, set()).add(t.vectors_sha256)
  return [*swept, VECTORS_FIELD] if any(len(h) > 1 for h in hashes.values()) else swept


def load_run(path: str | pathlib.Path) -> Trial:
  """One run directory as a Trial (finished when it has summary.json): what the sweep runner asks of a trial's
  evaluations (`Trial.stale`). A malformed file is a ReportError, as in `load_runs`."""
  path = pathlib.Path(path)
  return _load_trial(path, path.name)


def _is_run_dir(path: pathlib.Path) -> bool:
  return (path / CONFIG_FILE).is_file() or (path / SUMMARY_FILE).is_file()


def _differing_fields(trials: list[Trial], names: list[str]) -> list[str]:
  """The fields whose values differ among the trials that read them (a field one model never reads, UNREAD, sets no
  run apart from the others)."""
  return [n for n in names if len({hashable(t.field(n)) for t in trials if t.field(n) != UNREAD}) > 1]


def _load_sweep(directory: pathlib.Path) -> RunSet:
  index = _read_json_object(directory / SWEEP_FILE)
  entries = index.get("trials")
  if not isinstance(entries, list):
    raise ReportError(f"{directory / SWEEP_FILE} has no 'trials' list (expected the sweep runner's index)")
  trials = []
  override_names: list[str] = []
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
      raise ReportError(f"{directory / SWEEP_FILE}: trial #{i} has no 'name'")
    overrides = entry.get("overrides")
    if overrides is None:
      overrides = {}
    if not isinstance(overrides, dict):
      raise ReportError(f"{directory / SWEEP_FILE}: trial {entry['name']!r} has 'overrides' {_short(overrides)}; "
                        f"expected an object of dotted config fields and their values")
    for key in overrides:
      if key not in override_names:
        override_names.append(key)
    trials.append(_load_trial(directory / entry["name"], entry["name"], status=str(entry.get("status") or "pending"),
                              overrides=overrides, error=entry.get("error")))
  # A trial that has not written config.json yet runs with the base config where it overrides nothing: the value
  # any started trial that does not override the field has. So it groups with the finished trials of its arm
  # instead of under `(unset)` for a field only another arm overrides (no config is imported here).
  planned = [t for t in trials if t.config is None]
  base = {name: _base_value(trials, name) for name in override_names} if planned else {}
  for t in planned:
    t.defaults = {name: value for name, value in base.items() if name not in t.overrides}
  return RunSet(directory=directory, name=str(index.get("sweep") or directory.name), layout="sweep", trials=trials,
                swept_fields=_with_vector_rows(trials, _differing_fields(trials, override_names)))


def _base_value(trials: list[Trial], name: str) -> Any:
  """The base config's value of `name`, as the config.json of a trial that does not override it shows; MISSING when
  no such trial has started."""
  for t in trials:
    if t.config is not None and name not in t.overrides:
      return lookup(t.config, name, MISSING)
  return MISSING


def _config_fields(trials: list[Trial]) -> list[str]:
  names: list[str] = []
  seen = set()
  for t in trials:
    for key in flatten(t.config or {}):
      if key not in seen:
        seen.add(key)
        names.append(key)
  return names


def load_runs(directory: str | pathlib.Path) -> RunSet:
  """Loads a sweep directory, a directory of runs or a single run; anything else is a `ReportError`."""
  directory = pathlib.Path(directory)
  if not directory.exists():
    raise ReportError(f"{directory} does not exist (expected a sweep or run directory)")
  if not directory.is_dir():
    raise ReportError(f"{directory} is not a directory (expected a sweep or run directory)")
  if (directory / SWEEP_FILE).is_file():
    return _load_sweep(directory)
  if _is_run_dir(directory):
    trial = _load_trial(directory, directory.resolve().name)
    return RunSet(directory=directory, name=trial.name, layout="single", trials=[trial], swept_fields=[])
  subdirs = sorted(p for p in directory.iterdir() if p.is_dir() and _is_run_dir(p))
  skipped = _sweep_dirs(directory)
  if not subdirs:
    what = "is empty" if not any(directory.iterdir()) else "holds no runs"
    sweeps = "".join(f"; {name} is {why}" for name, why in skipped.items())
    raise ReportError(f"{directory} {what}: expected {SWEEP_FILE}, or {CONFIG_FILE}/{SUMMARY_FILE} in it or in its "
                      f"subdirectories{sweeps}")
  trials = [_load_trial(p, p.name) for p in subdirs]
  for t in trials:  # runs of no common plan: a field one model never reads sets it apart from none
    t.unread = _unread(t.config)
  configured = [t for t in trials if t.config is not None]
  ignored = _same_model_ignored(configured)
  trials, duplicates = _duplicates(trials, ignored)
  configured = [t for t in trials if t.config is not None]  # a trial without config.json has no field to compare
  fields = [f for f in _config_fields(configured) if f not in ignored]
  return RunSet(directory=directory, name=directory.resolve().name, layout="runs", trials=trials,
                swept_fields=_with_vector_rows(trials, _differing_fields(configured, fields)), duplicates=duplicates,
                without_config=[t.name for t in trials if t.config is None], skipped=skipped)


def _sweep_dirs(directory: pathlib.Path) -> dict[str, str]:
  """{name: why} of the subdirectories of a directory of runs that hold sweep.json: a sweep's trials are its own
  report's rows (its index says which they are, with their overrides and status), not runs of this directory, and
  merging them would mix two layouts; so they are named, not silently left out."""
  return {p.name: f"a sweep directory: report it on its own (research-report {p})"
          for p in sorted(directory.iterdir()) if p.is_dir() and (p / SWEEP_FILE).is_file() and not _is_run_dir(p)}


def _same_model_ignored(trials: list[Trial]) -> set[str]:
  """The config fields in which runs may differ and still train the same model (research-train's resume rule,
  `run_fields.same_model_ignored`: when, how often or where a run works, and what no model of them uses), judged
  over all of `trials` at once: not swept fields, and no reason to tell two runs apart."""
  if not trials:
    return set()
  configs = [t.config for t in trials]
  rotates = run_fields.builtin_rotates  # the report imports no scheme: an external one cannot be told (None)
  ignored = set(run_fields.same_model_ignored(configs[0], configs[0], rotates))
  for config in configs[1:]:
    ignored &= set(run_fields.same_model_ignored(configs[0], config, rotates))
  return ignored


def _duplicates(trials: list[Trial], ignored: set[str]) -> tuple[list[Trial], list[tuple[Trial, str]]]:
  """(the trials, each model once; [(a copy, the trial it duplicates)]): trials whose configs are equal but for
  `ignored` fields (seed included: a copied run directory, or a rerun of the same config) train the same model, so
  counting both would count one run twice. The finished one with the most evaluation and analysis files is kept
  (`Trial.evaluation_files`: a copy that was evaluated is not dropped for one that was not; ties: listing order),
  else the first. MLM runs validated by different masking rules (`Trial.validation_masks`) are no copies: their
  valid ppl measures other things (an old run and its rerun by today's code), nor are runs whose recorded vector
  files differ in contents (`Trial.vectors_sha256`: they started from other tables)."""
  same: dict[Any, list[Trial]] = {}
  for t in trials:
    if t.config is not None:
      key = json.dumps([{k: UNREAD if k in t.unread else v for k, v in flatten(t.config).items() if k not in ignored},
                        t.validation_masks],
                       sort_keys=True, default=str)
      same.setdefault(key, []).append(t)
  copies: dict[int, str] = {}
  for group in (part for group in same.values() for part in _by_vectors(group)):
    finished = [t for t in group if t.finished]
    kept = max(finished, key=lambda t: len(t.evaluation_files())) if finished else group[0]  # max: the first of ties
    copies.update({id(t): kept.name for t in group if t is not kept})
  return [t for t in trials if id(t) not in copies], [(t, copies[id(t)]) for t in trials if id(t) in copies]


def _by_vectors(group: list[Trial]) -> list[list[Trial]]:
  """`group` split by the recorded vector hash where it holds two (a trial without one joins the first part), else
  `group` itself: a run written before the hash was recorded stays a copy of its rerun."""
  hashes = list(dict.fromkeys(t.vectors_sha256 for t in group if t.vectors_sha256))
  if len(hashes) < 2:
    return [group]
  return [[t for t in group if t.vectors_sha256 == h or (i == 0 and not t.vectors_sha256)]
          for i, h in enumerate(hashes)]
