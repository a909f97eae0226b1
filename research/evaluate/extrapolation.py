"""Length extrapolation: perplexity of a trained run at multiples of its training length.

`evaluate_run(workdir, lengths=(1, 2, 4, 8, 16), mode=..., stride=...)` scores every token of a split once at each
length (nonoverlapping windows, or strided sliding windows that score only the last `stride` tokens of each window;
docs/reports.md, "Evaluation protocol") and writes `RUN/eval/extrapolation.json`:

  {"train_len": T, "mode": ..., "stride": S | null, "split": "valid", "checkpoint_step": k, "checkpoint": "best",
   "rope_scaling": ..., "mlm_masks": "per_row" (an MLM's only),
   "results": [{"multiple": m, "length": m*T, "ppl": x, "tokens": n}, ...]}

A scheme that cannot represent a length (a learned table shorter than m·T), or whose parameters for it were never
trained (a learned table longer than the training length T), gets `"ppl": null` and a `"note"` with the reason:
reported as n/a, never a crash, never a clamped number and never a number from untrained rows. Memory stays bounded: the batch shrinks as the length
grows (`max_tokens_per_batch`), so at most one [H, L, L] score tensor per row is live.

Two diagnostics ride along: `by_position` (the same passes' loss per window column, eval/loss_by_position.json,
research/evaluate/by_position.py) and `passkey` (retrieval of a key hidden in filler text at the same lengths,
eval/passkey.json and eval/passkey.png, research/evaluate/passkey.py).

With more than one device (a GPU host, a TPU slice, simulated CPU devices) the evaluation runs on the run's mesh
(`evaluation_mesh`): parameters restored straight onto it with the trainer's sharding rule, every batch padded with
empty rows to a multiple of the devices and split over them, each process scoring its own share of the windows
(`jax.distributed` is started as in training, from `mesh.distributed`). Every target is still scored exactly once,
so the perplexity is the single-device one (a test checks it on 4 simulated devices, to 1e-5). An MLM masks each row
of the split from its own key (`steps.eval_key`), so its masks, like every other number here, do not depend on
`max_tokens_per_batch`, the devices or the processes, and at 1x they are those of the trainer's validation. The
processes of a job must be given the same command, which they check before anything is scored (`check_same_job`,
`check_same_step`: research-train's `loop.refuse_other_jobs`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from research.error_text import first_line
from research.data import batches as batches_lib
from research.data import corpora
from research.embeddings import registry, relative
from research.evaluate import by_position as by_position_lib, previous
from research.evaluate import passkey as passkey_lib
from research.evaluate.errors import EvaluationError  # noqa: F401 (public here: research.evaluate.extrapolation's)
from research.model import config as model_config_lib
from research.model.config import ModelConfig
from research.model.transformer import Transformer
from research.train import checkpoint as checkpoint_lib
from research.train import configuration, loop, steps
from research.train import mesh as mesh_lib

MODES = batches_lib.EVAL_MODES
CHECKPOINTS = ("best", "last")
ROPE_SCALINGS = tuple(s for s in model_config_lib.ROPE_SCALINGS if s != "none")  # switched on at evaluation
EVAL_DIR = "eval"
# An MLM's masking rule, recorded in its extrapolation.json: every row of the split masked from its own key
# (`steps.eval_key`), whatever the batch size. A file without it was scored with masks per batch, which moved with
# --max_tokens_per_batch (research-sweep evaluates such a file again: sweeps.evaluation_outdated).
MLM_MASKS = "per_row"


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  config: ml_collections.ConfigDict
  model_cfg: ModelConfig
  params: Any
  step: int
  splits: dict[str, np.ndarray]
  char_ids: Any = None  # with model.char_embeddings: the model's constant (loop.char_ids)
  mesh: Any = None  # `evaluation_mesh`: None = this process's first device


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
  workdir = Path(workdir)
  if not (workdir / loop.CONFIG_FILE).exists():
    raise EvaluationError(f"{str(workdir)!r} is not a run directory (no {loop.CONFIG_FILE})")
  # Fields added since the run was written take what they meant then (configuration.with_defaults).
  return ml_collections.ConfigDict(configuration.with_defaults(loop.read_saved_config(workdir)))


def evaluation_mesh(config: ml_collections.ConfigDict):
  """The run's mesh (mesh.data × mesh.fsdp, as the trainer builds it) over this job's devices when there is more
  than one, else None (the first device alone, as before meshes were used here). A run trained on more devices than
  are here does not fit its own sizes: then data parallelism with the run's fsdp, then data parallelism alone."""
  if jax.device_count() == 1:
    return None
  for data, fsdp in ((config.mesh.data, config.mesh.fsdp), (-1, config.mesh.fsdp), (-1, 1)):
    try:
      return mesh_lib.make_mesh(data, fsdp)
    except ValueError:
      continue
  return None


def start_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize()` where training would call it (mesh.distributed; auto = from the environment,
  with the run's heartbeat and start-up timeouts), so every host of a pod slice evaluates its share; before anything
  touches the devices."""
  distributed = str(config.mesh.distributed).lower()
  mesh_lib.maybe_initialize_distributed(None if distributed == "auto" else distributed == "true",
                                        heartbeat_timeout_s=config.mesh.heartbeat_timeout_s,
                                        init_timeout_s=config.mesh.init_timeout_s)


# What a job whose processes were given other options ends with (after `loop.job_differences`' text).
SAME_JOB_RULE = ("every process of a job runs the same research-evaluate command with the same number of devices "
                 "(docs/reports.md, \"Evaluation protocol\", Devices)")


def job_description(workdir: str | Path, multiples: Sequence[int], **options: Any) -> dict[str, Any]:
  """What every process of one research-evaluate job must agree on: each option that changes what is computed or
  written (`options`: evaluate_run's keywords, named as their flags), the multiples, the run directory resolved and
  this process's number of devices. `loop.job_description`'s kind, for `loop.refuse_other_jobs`."""
  shown = {f"--{k}": ",".join(f"{v:g}" for v in value) if k == "passkey_depths" else value
           for k, value in options.items()}
  return {**shown, "--lengths": ",".join(map(str, multiples)), "--workdir": str(Path(workdir).resolve()),
          "local devices": jax.local_device_count()}


def check_same_job(workdir: str | Path, multiples: Sequence[int], **options: Any) -> None:
  """In a multi-process job, every process refuses in the same one line (`loop.refuse_other_jobs`, exit status 2)
  when any of them was given other options, another run directory or another number of devices: each would score
  its share of other windows (another split, checkpoint or run) and process 0 would write one figure mixing them, or
  the processes would wait on each other's collectives until the runtime ended them. Right after the job comes
  together, before anything is loaded, scored or written."""
  if jax.process_count() > 1:
    loop.refuse_other_jobs(job_description(workdir, multiples, **options), SAME_JOB_RULE, EvaluationError)


def step_differences(steps: Sequence[int], checkpoint: str, workdir: str | Path) -> str | None:
  """None when every process resolved --checkpoint to process 0's step (`steps`, one per process); else the one
  line naming the first that did not: the processes read the run directory through different file systems (a copy
  per host), or a live trainer saved a checkpoint between their reads."""
  for index, step in enumerate(steps[1:], start=1):
    if step != steps[0]:
      return (f"process {index} of {len(steps)} resolved --checkpoint={checkpoint} to step {step} of "
              f"{str(workdir)!r} (process 0: step {steps[0]}): every process reads the same run directory (one "
              f"shared file system, not a copy per host); if the run is still training, rerun once it has saved")
  return None


def check_same_step(step: int, checkpoint: str, workdir: str | Path) -> None:
  """In a multi-process job, every process refuses in the same one line (`step_differences`) unless all resolved
  --checkpoint to the same step; before its parameters are restored (`loop.gather_descriptions` exchanges them)."""
  if jax.process_count() == 1:
    return
  steps = [d["step"] for d in loop.gather_descriptions({"step": int(step)})]
  differences = step_differences(steps, checkpoint, workdir)
  if differences:
    raise EvaluationError(differences)


def check_same_data(workdir: Path, config, splits, scored: str = "valid") -> None:
  """The token streams the run trained and chose its best checkpoint on (RUN/data.json), and the split `scored`, are
  the ones its config gives now: a corpus edited in place, or a relative `text:` path read from another working
  directory, would be scored silently otherwise (research-train refuses the same rerun). Runs written before
  data.json existed are not checked, nor the test split of runs written before data.json recorded it."""
  path = workdir / loop.DATA_FILE
  if not path.exists():
    return
  try:
    saved = loop.read_data_record(workdir)
  except configuration.ConfigError as e:
    raise EvaluationError(str(e)) from None
  checked = {"train", "valid", scored} & set(saved)
  current = {name: stream for name, stream in loop.data_record(splits)["splits"].items() if name in checked}
  changed, differ = loop.changed_streams(saved, current)
  if changed:
    what = "was trained on other data" if set(changed) - {"test"} else "has another test split than it started with"
    raise EvaluationError(
        f"run {str(workdir)!r} {what}: {differ} from RUN/{loop.DATA_FILE}'s record (was "
        f"data.corpus={config.data.corpus!r} edited, or is it a relative path read from another directory?); "
        f"restore the corpus, or evaluate from the directory the run was started in")


def load_run(workdir: str | Path, checkpoint: str = "best", scored: str = "valid") -> LoadedRun:
  """Config, tokenizer, token streams and the parameters of the run's best (or last) checkpoint. `scored`: the split
  the caller scores, whose stream is checked against RUN/data.json with the train and valid ones."""
  workdir = Path(workdir)
  config = read_config(workdir)
  try:
    loop.check_corpus_excludes_run(config, workdir)  # else "trained on other data", which hides why
    loop.check_cache_dir(config)  # a file there: one line naming data.cache_dir, not "[Errno 20] ...: .../tokens"
  except configuration.ConfigError as e:
    raise EvaluationError(f"run {str(workdir)!r}: {e}") from None
  tokenizer = loop.load_run_tokenizer(workdir)
  try:
    splits = batches_lib.build_or_load_cache(config.data.corpus, tokenizer, cache_dir=config.data.cache_dir or None,
                                             errors=config.data.errors)
  except OSError as e:  # the streams are not cached and the cache cannot be written (a read-only mount)
    if not loop.in_cache_dir(e, config, workdir):
      raise
    raise EvaluationError(f"run {str(workdir)!r}: {loop.cache_dir_name(config)} "
                          f"{str(corpora.cache_root(config.data.cache_dir or None))!r} could not be written "
                          f"({first_line(e)[:200]}) to tokenize the corpus into it; make it writable and "
                          f"rerun") from None
  ckpt_dir = workdir / "checkpoints"
  if not ckpt_dir.exists():
    raise EvaluationError(f"run {str(workdir)!r} has no checkpoints to evaluate")
  if not checkpoint_lib.has_checkpoint(ckpt_dir):  # read from disk: no CheckpointManager thread left at exit
    raise EvaluationError(f"run {str(workdir)!r} has no complete checkpoint")
  loop.check_splits(splits, tokenizer.get_vocab_size())
  splits = loop.trained_splits(config, splits)  # data.json records the train split after data.train_fraction's cut
  check_same_data(workdir, config, splits, scored)
  model_cfg = configuration.model_config(config, tokenizer.get_vocab_size())
  # Only the parameters, onto this process's first device or the evaluation mesh (with the trainer's rule), whatever
  # mesh the run was trained on and whatever its optimizer state looks like (counts, optimizer options); their
  # structure must be the model's.
  char_ids = loop.char_ids(config, tokenizer)
  mesh = evaluation_mesh(config)
  model = Transformer(model_cfg, char_ids=char_ids)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 1), "int32")))["params"]
  try:
    opened = checkpoint_lib.Checkpointer(ckpt_dir, keep=10**6, async_save=False, read_only=True)
  except checkpoint_lib.DamagedCheckpoints as e:
    raise EvaluationError(f"run {str(workdir)!r}: {e}; research-train moves such a checkpoint aside when the run is "
                          f"resumed, or move {str(ckpt_dir / str(e.steps[0]))!r} out of {str(ckpt_dir)!r} "
                          f"yourself") from None
  with opened as ckpt:
    step = (ckpt.best_step() if checkpoint == "best" else None) or ckpt.latest_step()
    if step is None:
      raise EvaluationError(f"run {str(workdir)!r} has no complete checkpoint")
    check_same_step(step, checkpoint, workdir)  # a multi-process job's processes restore one checkpoint
    try:
      params = ckpt.restore_params(step, None if mesh is None else functools.partial(mesh_lib.leaf_sharding,
                                                                                     mesh=mesh))
    except Exception as e:  # noqa: BLE001 (Orbax raises TypeError, ValueError or a bare Exception for missing files)
      raise EvaluationError(unrestorable_message(ckpt, ckpt_dir, int(step), checkpoint, e)) from None
  shapes = lambda tree: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)  # noqa: E731
  if shapes(params) != shapes(expected):
    raise EvaluationError(f"run {str(workdir)!r}: the checkpoint's parameters do not match the model its config.json "
                          f"describes")
  return LoadedRun(config, model_cfg, params, int(step), splits, char_ids, mesh)


def unrestorable_message(ckpt: checkpoint_lib.Checkpointer, ckpt_dir: Path, step: int, checkpoint: str,
                         error: Exception) -> str:
  """The one line for a checkpoint whose parameters cannot be read (files missing or damaged), with a way out. A
  checkpoint a live trainer rotated away between choosing it and reading it (`rotated_away`) is named as that, not
  as damaged: nothing is wrong with the run, a rerun picks a kept checkpoint."""
  if rotated_away(ckpt, ckpt_dir, step):
    return (f"checkpoint step {step} ({str(ckpt_dir / str(step))!r}, --checkpoint={checkpoint}) was deleted while it "
            f"was being read: the run is still writing checkpoints (research-train keeps the newest "
            f"train.keep_checkpoints and rotated this one away); rerun the command")
  detail = first_line(error, limit=100)
  best, latest = ckpt.best_step(), ckpt.latest_step()
  earlier = [s for s in ckpt.all_steps() if s < step]
  if checkpoint == "last" and best is not None and best != step:
    hint = f"try --checkpoint=best (step {best})"
  elif checkpoint == "best" and latest is not None and latest != step:
    hint = f"try --checkpoint=last (step {latest})"
  elif earlier:
    hint = (f"--checkpoint=best and --checkpoint=last both select it; move {str(ckpt_dir / str(step))!r} out of "
            f"{str(ckpt_dir)!r} to evaluate an earlier step ({', '.join(map(str, earlier))})")
  else:
    hint = "the run has no other checkpoint to evaluate"
  return (f"checkpoint step {step} ({str(ckpt_dir / str(step))!r}, --checkpoint={checkpoint}) cannot be restored, "
          f"its files are missing or damaged ({detail}); {hint}")


def rotated_away(ckpt: checkpoint_lib.Checkpointer, ckpt_dir: Path, step: int) -> bool:
  """Whether checkpoint `step`, which `ckpt` listed when it opened, has gone or is going under a live trainer: its
  directory is gone, or steps appeared on disk since the listing (the trainer saved, then its retention deletes the
  oldest: Orbax deletes after the new step is finalized, and a deletion in progress leaves a partial directory)."""
  return not (ckpt_dir / str(step)).is_dir() or \
      bool(set(checkpoint_lib.checkpoint_steps(ckpt_dir)) - set(ckpt.all_steps()))


def batch_rows(num_tokens: int, length: int, max_tokens_per_batch: int, objective: str = "clm",
               mode: str = "nonoverlapping", stride: int | None = None) -> int:
  """Rows of an evaluation batch: `max_tokens_per_batch // length`, but never more than the split has windows (rows
  for an MLM). A large --max_tokens_per_batch asked numpy for billions of padding rows; cut to the windows, the
  batch holds them all and scores as the larger one would (no row depends on the rows after it)."""
  windows = (batches_lib.num_eval_windows(num_tokens, length, mode, stride) if objective == "clm"
             else batches_lib.num_rows(num_tokens, length, "mlm"))
  return max(1, min(max_tokens_per_batch // length, windows))


@dataclasses.dataclass(frozen=True)
class SplitScores:
  """A split scored at one window length. With `by_position`, the NLL and target count summed per column of the
  window (float64 [length]), from the same forward passes as the totals."""
  ppl: float
  tokens: int
  nll_by_column: np.ndarray | None = None
  tokens_by_column: np.ndarray | None = None


def split_perplexity(run: LoadedRun, model_cfg: ModelConfig, ids: np.ndarray, length: int, *,
                     mode: str = "nonoverlapping", stride: int | None = None,
                     max_tokens_per_batch: int = 8192) -> tuple[float, int]:
  """(perplexity, tokens scored) of `ids` at window `length`; every target token is scored exactly once."""
  scores = split_scores(run, model_cfg, ids, length, mode=mode, stride=stride,
                        max_tokens_per_batch=max_tokens_per_batch)
  return scores.ppl, scores.tokens


def split_scores(run: LoadedRun, model_cfg: ModelConfig, ids: np.ndarray, length: int, *,
                 mode: str = "nonoverlapping", stride: int | None = None, max_tokens_per_batch: int = 8192,
                 by_position: bool = False) -> SplitScores:
  """`split_perplexity`'s scores, and with `by_position` the per-column sums of the same passes."""
  model = Transformer(model_cfg, char_ids=run.char_ids)
  settings = steps.StepSettings(objective=run.config.objective, vocab_size=model_cfg.vocab_size,
                                mlm_select_rate=run.config.data.mlm_select_rate,
                                mlm_mask_rate=run.config.data.mlm_mask_rate,
                                mlm_random_rate=run.config.data.mlm_random_rate,
                                **steps.document_settings(run.config.data))
  step = jax.jit(functools.partial(steps.eval_step, model=model, settings=settings, by_position=by_position))
  batch_size = batch_rows(len(ids), length, max_tokens_per_batch, run.config.objective, mode, stride)
  # On a mesh each process takes its share of the windows (all of them in one process) and pads its rows to a
  # multiple of its devices; the sums are global.
  index, count = (jax.process_index(), jax.process_count()) if run.mesh is not None else (0, 1)
  batch_size = -(-batch_size // count)
  if run.config.objective == "clm":
    it = batches_lib.eval_batches(ids, length, batch_size, mode, stride, process_index=index, process_count=count)
  else:
    if mode != "nonoverlapping":
      raise EvaluationError(f"mode={mode!r} is for causal LMs; a masked LM is evaluated nonoverlapping")
    it = batches_lib.PackedBatches(ids, length, batch_size, objective="mlm", shuffle=False, num_epochs=1,
                                   process_index=index, process_count=count)
  nll, tokens = 0.0, 0.0
  nll_by_column = np.zeros(length) if by_position else None
  tokens_by_column = np.zeros(length) if by_position else None
  rng = steps.eval_key(run.config.seed, length)  # row r masked with fold_in(rng, r): whatever the batch size
  for i, batch in enumerate(it):
    batch = steps.with_row_indices(batch, i, index, count)  # before the padding rows, which score nothing
    if run.mesh is not None:
      batch = mesh_lib.shard_batch(batches_lib.pad_rows(batch, jax.local_device_count()), run.mesh)
    sums = jax.device_get(step(run.params, batch, rng))
    nll += float(sums["nll_sum"])
    tokens += float(sums["weight_sum"])
    if by_position:
      nll_by_column += np.asarray(sums["nll_by_segment"], np.float64)
      tokens_by_column += np.asarray(sums["weight_by_segment"], np.float64)
  if not math.isfinite(nll):  # never report a number computed from NaN rows
    raise EvaluationError(f"non-finite loss at length {length} ({mode}): the checkpoint's parameters or the "
                          f"inputs are not finite")
  return SplitScores(loop.perplexity(nll / max(tokens, 1.0)), int(round(tokens)), nll_by_column, tokens_by_column)


def unscorable_note(model_cfg: ModelConfig, length: int, train_len: int) -> str | None:
  """Why the run's scheme cannot be scored at `length` (reported as n/a), or None when it can."""
  scheme = registry.get_scheme(model_cfg.position)
  limit = scheme.max_length(model_cfg)
  if limit is not None and length > limit:
    # The same text at every length, so a report shows one footnote for the row, not one per column.
    why = scheme.max_length_note(model_cfg) or "model.max_len"
    return f"{model_cfg.position} positions are defined up to {limit} tokens ({why})"
  trained = scheme.trained_length(model_cfg, train_len)
  if trained is not None and length > trained:
    return (f"{model_cfg.position} positions beyond {trained} were never trained (model.max_len={model_cfg.max_len} "
            f"> data.seq_len={train_len})")
  return None


def short_split_note(objective: str, num_tokens: int, length: int, split: str) -> str | None:
  """n/a at a length the split cannot fill one window of: its one (partial) window would be scored at every such
  length, the same number under each (a 32x column of a split shorter than 16x would repeat 16x's score)."""
  # A CLM window of L inputs scores L targets (stream[1:]); an MLM row holds L - 2 stream tokens ([CLS] ... [SEP]).
  fits = num_tokens - 1 if objective == "clm" else num_tokens
  needed = length if objective == "clm" else length - 2
  if fits >= needed:
    return None
  what = "targets" if objective == "clm" else "tokens"
  return (f"the {split} split holds {fits} {what}, fewer than one window of {length} (it would be scored at a "
          f"shorter length)")


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _show(value: Any) -> str:
  """A value as its flag would be written: 2 for 2.0, nan, inf; repr for anything that is not a number."""
  return f"{value:g}" if _is_number(value) else repr(value)


def check_options(lengths: Sequence[int], *, mode: str = "nonoverlapping", stride: int | None = None,
                  split: str = "valid", checkpoint: str = "best", rope_scaling: str | None = None,
                  rope_factor: float | None = None, max_tokens_per_batch: int = 8192) -> list[int]:
  """One-line errors for options that are wrong whatever the run; returns the multiples, each once, in the order
  first given. Called before anything is read, loaded or compiled."""
  if mode not in MODES:
    raise EvaluationError(f"mode={mode!r} is not one of {', '.join(MODES)}")
  if not lengths or any(int(m) < 1 for m in lengths):
    raise EvaluationError(f"lengths={list(lengths)!r} must be positive multiples of the training length")
  multiples = list(dict.fromkeys(int(m) for m in lengths))  # a repeated multiple is scored once
  if checkpoint not in CHECKPOINTS:
    raise EvaluationError(f"checkpoint={checkpoint!r} is not one of {', '.join(CHECKPOINTS)}")
  if split not in batches_lib.SPLITS:
    raise EvaluationError(f"split={split!r} is not one of {', '.join(batches_lib.SPLITS)}")
  if rope_scaling is not None and rope_scaling not in ROPE_SCALINGS:
    raise EvaluationError(f"rope_scaling={rope_scaling!r} is not one of {', '.join(ROPE_SCALINGS)}")
  if stride is not None and mode != "sliding":  # its range needs the training length: check_run_options
    raise EvaluationError(f"--stride={stride} applies to --mode=sliding only (--mode={mode} scores every token of "
                          f"each window once)")
  if rope_factor is not None:
    if rope_scaling is None:
      raise EvaluationError(f"--rope_factor={_show(rope_factor)} applies with "
                            f"--rope_scaling={'|'.join(ROPE_SCALINGS)} only")
    if not _is_number(rope_factor) or not 1 <= rope_factor <= relative.MAX_ROPE_FACTOR:
      raise EvaluationError(f"--rope_factor={_show(rope_factor)} must be a number in [1, "
                            f"{relative.MAX_ROPE_FACTOR}]; leave it out for the multiple at each length")
  if not _is_int(max_tokens_per_batch) or max_tokens_per_batch < 1:
    raise EvaluationError(f"--max_tokens_per_batch={max_tokens_per_batch} must be an integer >= 1 (batch = this // "
                          f"length, at least one window)")
  return multiples


def _check_scaling_option(workdir: str | Path, config: ml_collections.ConfigDict, rope_scaling: str) -> None:
  """`check_run_options`'s one-line errors for `--rope_scaling` on the run of `config`."""
  position = config.model.position
  flag = f"--rope_scaling={rope_scaling}"
  if not configuration.rotates_with_rope_or_none(position):  # None: loading the run names it
    # Only the schemes that scale RoPE's frequencies (rope, p_rope) read the scaling: another would run unchanged
    # and extrapolation_<scaling>.json would hold plain numbers labelled as scaled ones. xPos rotates with RoPE's
    # frequencies but never scales them (its validation refuses model.rope_scaling): its decay is its length control.
    why = (" (it rotates with RoPE's frequencies but never scales them: its decay ζ^((n−m)/B) controls long-range "
           "scores instead)" if position == "xpos" else "")
    raise EvaluationError(f"{flag} needs a run whose scheme scales RoPE's frequencies (rope, p_rope), but "
                          f"{str(workdir)!r} was trained with model.position={position!r}, which does not{why}")
  model_cfg = configuration.model_config(config)
  unrotated = configuration.unrotated_reason(model_cfg)
  if unrotated:
    # The scaled frequencies would all be 0 (or absent): linear and NTK give the plain numbers, YaRN the plain model
    # with its attention factor, each labelled as scaled.
    raise EvaluationError(f"{flag} has nothing to scale in {str(workdir)!r}: its model.position={position!r} "
                          f"rotates nothing ({unrotated})")
  if configuration.trains_scaled(model_cfg):
    # The evaluation's scaling replaces the model's (factor = the multiple): the run's trained one would be dropped,
    # and extrapolation_<scaling>.json would hold another model's numbers. At model.rope_factor=1 the run trained
    # plain RoPE whatever model.rope_scaling says, so nothing is dropped.
    raise EvaluationError(f"{flag} would replace the scaling {str(workdir)!r} was trained with "
                          f"(model.rope_scaling={model_cfg.rope_scaling!r}, model.rope_factor="
                          f"{model_cfg.rope_factor:g}); its plain evaluation already applies that one")
  try:  # the factor is the multiple (> 1 past 1x) unless --rope_factor says otherwise
    relative.check_scaling(model_cfg, rope_scaling)
  except ValueError as e:
    # check_scaling names the model's field (RoPE's validation asks it of model.rope_scaling): the user gave the flag
    field, reason = f"model.rope_scaling={rope_scaling!r} ", str(e)
    reason = f"it {reason[len(field):]}" if reason.startswith(field) else reason
    raise EvaluationError(f"{flag} does not suit {str(workdir)!r}: {reason}") from None


def check_run_options(workdir: str | Path, config: ml_collections.ConfigDict, multiples: Sequence[int], *,
                      mode: str, stride: int | None, rope_scaling: str | None, passkey: bool) -> None:
  """One-line errors for options the run's config.json rules out; before its checkpoint is restored (and before a
  sweep trains the run: research/sweeps.py `check_evaluate_options`)."""
  if rope_scaling:
    _check_scaling_option(workdir, config, rope_scaling)
  if passkey and config.objective != "clm":
    raise EvaluationError(f"passkey retrieval needs a causal LM, but {str(workdir)!r} was trained with "
                          f"objective={config.objective!r} (a masked LM does not generate the key left to right)")
  if passkey:
    passkey_lib.check_tokenizer(config.data.tokenizer)
  if mode != "nonoverlapping" and config.objective != "clm":
    raise EvaluationError(f"--mode={mode} is for causal LMs, but {str(workdir)!r} was trained with "
                          f"objective={config.objective!r}: a masked LM is evaluated nonoverlapping")
  train_len = int(config.data.seq_len)
  shortest = min(multiples) * train_len
  if stride is not None and (not _is_int(stride) or not 1 <= stride <= shortest):
    # Against the shortest length asked for, so that no length is scored before another one fails.
    raise EvaluationError(f"--stride={stride} must be an integer between 1 and {shortest}, the shortest window asked "
                          f"for (multiple {min(multiples)} x data.seq_len={train_len}); leave it out for the default, "
                          f"{max(1, train_len // 2)} (half the training length)")


def evaluate_run(workdir: str | Path, lengths: Sequence[int] = (1, 2, 4, 8, 16), *, mode: str = "nonoverlapping",
                 stride: int | None = None, split: str = "valid", checkpoint: str = "best",
                 rope_scaling: str | None = None, rope_factor: float | None = None, by_position: bool = False,
                 passkey: bool = False, passkey_depths: Sequence[float] = passkey_lib.DEPTHS,
                 passkey_trials: int = passkey_lib.TRIALS, max_tokens_per_batch: int = 8192,
                 output: str | None = None) -> dict[str, Any]:
  """Perplexity at each multiple in `lengths` of the training length; writes and returns the JSON described above.

  `rope_scaling` (linear | ntk | yarn) switches RoPE scaling on at evaluation time; `rope_factor` None means "the
  multiple itself" at each length (scale so that the evaluated length maps onto the trained one).
  `by_position` also writes eval/loss_by_position.json (research/evaluate/by_position.py) from the same passes;
  `passkey` also runs passkey retrieval at the same lengths (research/evaluate/passkey.py: eval/passkey.json and
  its heatmap; causal LMs only). With a scaling, both files carry its name as extrapolation_<scaling>.json does.
  They are written before extrapolation.json, whose presence therefore means that the whole evaluation finished.
  """
  # Every option is checked first, for every length at once: nothing is read, loaded or scored before.
  multiples = check_options(lengths, mode=mode, stride=stride, split=split, checkpoint=checkpoint,
                            rope_scaling=rope_scaling, rope_factor=rope_factor,
                            max_tokens_per_batch=max_tokens_per_batch)
  if passkey:
    passkey_depths = passkey_lib.check_options(passkey_depths, passkey_trials)  # each once, -0 as 0
  config = read_config(workdir)
  start_distributed(config)
  # Then the processes of a job compare their options, before the checks of the run's options: a process given
  # another option that one of those refuses would otherwise end alone, the others waiting for it in a collective.
  check_same_job(workdir, multiples, mode=mode, stride=stride, split=split, checkpoint=checkpoint,
                 rope_scaling=rope_scaling, rope_factor=rope_factor, by_position=by_position, passkey=passkey,
                 passkey_depths=passkey_depths, passkey_trials=passkey_trials,
                 max_tokens_per_batch=max_tokens_per_batch)
  loop.check_writable(Path(workdir) / "eval")  # before the evaluation, not at its final write
  check_run_options(workdir, config, multiples, mode=mode, stride=stride, rope_scaling=rope_scaling,
                    passkey=passkey)
  train_len = int(config.data.seq_len)
  # Prompts first (tokenization only): a tokenizer that cannot spell the keys fails before anything loads.
  prompts = passkey_prompts(workdir, config, multiples, passkey_depths, passkey_trials) if passkey else None
  run = load_run(workdir, checkpoint, split)
  if split not in run.splits:
    raise EvaluationError(f"split={split!r} is not one of {', '.join(run.splits)}")
  if mode == "sliding" and stride is None:
    stride = max(1, train_len // 2)  # T/2 at every multiple; the ALiBi paper's Appendix B uses 1
  results, position_results, passkey_results = [], [], []
  for multiple in multiples:
    length = int(multiple) * train_len
    model_cfg = run.model_cfg
    if rope_scaling:
      factor = max(1.0, float(multiple)) if rope_factor is None else float(rope_factor)
      model_cfg = dataclasses.replace(model_cfg, rope_scaling=rope_scaling, rope_factor=factor,
                                      rope_original_len=train_len)
    unscorable = unscorable_note(model_cfg, length, train_len)
    note = unscorable or short_split_note(run.config.objective, len(run.splits[split]), length, split)
    if note:
      results.append(result_record(int(multiple), length, note=note))
      position_results.append(by_position_lib.result_record(int(multiple), length, note=note))
    else:
      scores = split_scores(run, model_cfg, run.splits[split], length, mode=mode, stride=stride,
                            max_tokens_per_batch=max_tokens_per_batch, by_position=by_position)
      if scores.tokens:
        results.append(result_record(int(multiple), length, scores.ppl, scores.tokens))
      else:  # exp(0 / 0) would read as a perfect 1.00
        rate = float(run.config.data.mlm_select_rate)
        results.append(result_record(int(multiple), length, note=f"no target to score in the {split} split at this "
                                     f"length (an MLM selects ~{100 * rate:g} % of a split's tokens, "
                                     f"data.mlm_select_rate: a tiny split may give none)"))
      if by_position:
        position_results.append(by_position_lib.result_record(
            int(multiple), length, train_len=train_len, nll_by_column=scores.nll_by_column,
            tokens_by_column=scores.tokens_by_column))
    if passkey:  # only the scheme's limit applies: the prompts are generated text and never read the split
      passkey_results += passkey_cells(run, model_cfg, int(multiple), length, prompts[length], unscorable,
                                       max_tokens_per_batch)
  masks = MLM_MASKS if run.config.objective == "mlm" else None  # recorded in every file an MLM's masks scored
  if by_position:
    by_position_lib.write_report(workdir, by_position_lib.report_record(
        train_len=train_len, mode=mode, stride=stride, split=split, checkpoint_step=run.step, checkpoint=checkpoint,
        objective=run.config.objective, rope_scaling=rope_scaling, rope_factor=rope_factor, results=position_results,
        mlm_masks=masks))
  if passkey:
    passkey_lib.write_report(workdir, passkey_lib.report_record(
        train_len=train_len, checkpoint_step=run.step, checkpoint=checkpoint, seed=int(run.config.seed),
        trials=passkey_trials, depths=passkey_depths, rope_scaling=rope_scaling, rope_factor=rope_factor,
        results=passkey_results))
  report = report_record(train_len=train_len, mode=mode, stride=stride, split=split, checkpoint_step=run.step,
                         checkpoint=checkpoint, rope_scaling=rope_scaling, rope_factor=rope_factor, results=results,
                         mlm_masks=masks)
  write_report(workdir, report, output)
  if not by_position and output is None:
    set_aside_unmatched_by_position(workdir, report)
  return report


def set_aside_unmatched_by_position(workdir: str | Path, report: dict[str, Any]) -> Path | None:
  """Moves eval/loss_by_position(_<scaling>).json to eval/previous/<UTC time>/ (where research-sweep keeps the files
  an evaluation rewrites) when it no longer matches `report`, the extrapolation file of its scaling just written
  without --by_position: another protocol or checkpoint step (`report_runs.protocol_differences`). Left beside it,
  its curves would read as this evaluation's. A matching one stays; prints one line. Returns where it went."""
  path = Path(workdir) / EVAL_DIR / by_position_lib.report_file(report["rope_scaling"])
  if jax.process_index() != 0 or not path.is_file():
    return None
  try:
    old = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):  # unreadable: research-report names it; nothing says what it was scored with
    return None
  if not isinstance(old, dict):
    return None
  from research.report import runs as report_runs  # here: the report package imports matplotlib (0.2 s)
  differ = report_runs.protocol_differences(report_runs.protocol(old), report_runs.protocol(report))
  if differ is None:
    return None
  target = previous.folder(Path(workdir) / EVAL_DIR, [path.name])
  os.replace(path, target / path.name)
  print(f"note: moved eval/{path.name} to {target / path.name}: it was scored otherwise than the "
        f"eval/{report_file(report['rope_scaling'])} just written ({differ}); add --by_position to score both")
  return target / path.name


def passkey_prompts(workdir: str | Path, config: ml_collections.ConfigDict, lengths: Sequence[int],
                    depths: Sequence[float], trials: int) -> dict[int, dict[float, list | None]]:
  """{length: {depth: the cell's prompts, or None when not even the needle and question fit}}; keys seeded by
  (config.seed, length, depth)."""
  tokenizer = loop.load_run_tokenizer(workdir)
  train_len, out = int(config.data.seq_len), {}
  for multiple in lengths:
    length = int(multiple) * train_len
    out[length] = {}
    for depth in depths:
      cell = [passkey_lib.build_prompt(tokenizer, key, length, float(depth), config.data.tokenizer)
              for key in passkey_lib.keys(config.seed, length, depth, trials)]
      out[length][float(depth)] = None if any(p is None for p in cell) else cell
  return out


def passkey_cells(run: LoadedRun, model_cfg: ModelConfig, multiple: int, length: int,
                  prompts: dict[float, list | None], note: str | None, max_tokens_per_batch: int) -> list[dict]:
  """The passkey records of one length: one per depth, n/a where the scheme cannot run or the prompt cannot fit."""
  records = []
  for depth, cell in prompts.items():
    if note or cell is None:
      why = note or f"{length} tokens cannot hold the needle and the question"
      records.append(passkey_lib.cell_record(multiple, length, depth, note=why))
      continue
    correct = passkey_lib.score_prompts(run.params, model_cfg, cell, length, char_ids=run.char_ids,
                                        max_tokens_per_batch=max_tokens_per_batch)
    records.append(passkey_lib.cell_record(multiple, length, depth, prompts=cell, correct=correct))
  return records


# The records of eval/extrapolation*.json, what research.report reads (tests build report fixtures with them).


def result_record(multiple: int, length: int, ppl: float | None = None, tokens: int = 0,
                  note: str | None = None) -> dict[str, Any]:
  """One length: its perplexity and tokens scored, or ppl None with the `note` saying why (n/a)."""
  record = {"multiple": int(multiple), "length": int(length), "ppl": ppl, "tokens": int(tokens)}
  return {**record, "note": note} if note else record


def report_record(*, train_len: int, mode: str, stride: int | None, split: str, checkpoint_step: int,
                  rope_scaling: str | None, rope_factor: float | None, results: list[dict],
                  checkpoint: str | None = None, mlm_masks: str | None = None) -> dict[str, Any]:
  """`checkpoint`: the choice (best | last) that selected `checkpoint_step`, so that a report can tell when the
  same choice would select another step now (docs/reports.md, "Stale evaluations"). `mlm_masks` (an MLM run's
  only): the masking rule, `MLM_MASKS`."""
  record = {"train_len": train_len, "mode": mode, "stride": stride if mode == "sliding" else None, "split": split,
            "checkpoint_step": checkpoint_step, "checkpoint": checkpoint, "rope_scaling": rope_scaling,
            "rope_factor": rope_factor if rope_scaling else None, "results": results}
  return {**record, "mlm_masks": mlm_masks} if mlm_masks else record


def report_file(rope_scaling: str | None = None) -> str:
  return "extrapolation.json" if not rope_scaling else f"extrapolation_{rope_scaling}.json"


def write_report(workdir: str | Path, report: dict[str, Any], output: str | None = None) -> Path:
  """Writes the report (process 0 only: every process of a multi-host evaluation holds the same one); the file it
  replaces is kept first (`previous.keep_previous`)."""
  out_dir = Path(workdir) / EVAL_DIR
  path = out_dir / (output or report_file(report["rope_scaling"]))
  if jax.process_index() == 0:
    out_dir.mkdir(exist_ok=True)
    previous.keep_previous(path, report)
    loop.atomic_write_json(path, report)
  return path

