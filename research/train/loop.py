"""`train(config, workdir)`: the host loop around the jitted steps.

Run directory (docs/architecture.md):
  config.json     the fully resolved config (a rerun must match it outside schema.RESUMABLE_FIELDS)
  tokenizer.json  the tokenizer used (+ token_counts.npy: each id's count in one epoch of the training rows)
  metrics.jsonl   one JSON object per logged step: step, split, loss, ppl, lr, tokens_per_s, ...
  checkpoints/    Orbax (train state, data-iterator state, metadata)
  events.*        TensorBoard
  summary.json    final figures, written last: its presence means "finished"
  embedding_init.json   with model.embed_init=pretrained: the coverage report of the vectors and the file's
                        resolved path, size and sha256 (fresh start only)
  embedding_init.npy    the initial token table [V, table width] (fresh start only), so drift can be measured
  update_counts.npz     with train.count_updates: `present` and `nonzero` int32 [V], `step` (written at the end)
  data.json       SHA-256 and length of the train and valid token streams the run started on (a resume on other
                  data is refused)
  checkpoints_unreadable/  checkpoints a resume could not restore, moved aside (it resumes from the newest good one)

A rerun of the same command in the same workdir resumes from the latest checkpoint: parameters, optimizer state,
step, rng and the data iterator's position, so that it continues bit-identically.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import interrupts, run_fields, schema
from research.error_text import first_line, unwritable
from research.data import batches as batches_lib
from research.data import corpora
from research.data import tokenizers as tokenizers_lib
from research.embeddings import chars as chars_lib
from research.embeddings import pretrained as pretrained_lib
from research.embeddings.token import check_ids
from research.model.transformer import CHAR_MODULES, Transformer, count_embedding_params, count_params
from research.train import checkpoint as checkpoint_lib
from research.train import configuration, mesh as mesh_lib, optim, steps

CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "tokenizer.json", "metrics.jsonl", \
    "summary.json"
EMBEDDING_INIT_FILE = "embedding_init.json"
INIT_TABLE_FILE, UPDATE_COUNTS_FILE = "embedding_init.npy", "update_counts.npz"
DATA_FILE, UNREADABLE_DIR, LOCK_FILE = "data.json", "checkpoints_unreadable", ".lock"
# What RUN/data.json records: the streams the model and its best checkpoint depend on (train, valid), and the one
# research-evaluate --split=test scores. Runs written before the test stream was recorded hold train and valid only.
DATA_SPLITS = ("train", "valid", "test")
# valid_ppl_rare: the perplexity of the validation targets whose training count (token_counts.npy) is below this.
RARE_TRAIN_COUNT = 10


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss or gradient norm."""


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
  """`write(binary file)` into a temporary beside `path`, then renamed over it: a crash never leaves half a file."""
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    with tmp.open("wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)  # (a failed write or rename leaves no temporary behind)
    raise


def atomic_write_json(path: Path, obj: Any) -> None:
  _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()))


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
  _atomic_write(path, lambda f: np.save(f, array))


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
  _atomic_write(path, lambda f: np.savez(f, **arrays))


def host_array(x) -> np.ndarray:
  """A global jax array as numpy on every process (an all-gather when other hosts hold parts of it)."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def write_init_table(workdir: Path, state: "steps.TrainState") -> None:
  """RUN/embedding_init.npy: the table the run starts from (random or pretrained), for drift analyses."""
  table = host_array(steps.table_leaf(state.params))  # every process joins the gather; process 0 writes
  if jax.process_index() == 0:
    atomic_save_npy(Path(workdir) / INIT_TABLE_FILE, table.astype(np.float32))


def write_update_counts(workdir: Path, counts: dict[str, Any] | None, step: int) -> None:
  """RUN/update_counts.npz (`present`, `nonzero`: int32 [V]) from the train state's counts, and `step` (int64
  scalar), the step they count up to (the analyses compare a table with them at that step's checkpoint)."""
  if counts is None:
    return
  arrays = {key: host_array(counts[key]).astype(np.int32) for key in steps.COUNT_KEYS}
  arrays["step"] = np.asarray(step, np.int64)
  if jax.process_index() == 0:
    atomic_save_npz(Path(workdir) / UPDATE_COUNTS_FILE, **arrays)


# ------------------------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class RunData:
  tokenizer: Any
  splits: dict[str, np.ndarray]
  vocab_size: int
  train_counts: np.ndarray | None = None  # RUN/token_counts.npy (None: a run written before the file existed)
  counts_unsaved: bool = False  # a resume counted them again: `save_counts` writes the file once the run restored


def prepare_data(config: ml_collections.ConfigDict, workdir: Path) -> RunData:
  """Corpus → tokenizer (reused from the workdir when resuming) → memory-mapped token streams."""
  cache_dir = config.data.cache_dir or None
  check_cache_dir(config)
  check_corpus_excludes_run(config, workdir)
  corpus = corpora.load_corpus(config.data.corpus, errors=config.data.errors, cache_dir=cache_dir)
  # A tokenizer in the workdir is reused only by a run that saved a checkpoint (a resume, whose config was checked);
  # one left by a start that failed before its first checkpoint may belong to another config, and is rebuilt.
  resumed = (workdir / TOKENIZER_FILE).exists() and checkpoint_lib.has_checkpoint(workdir / "checkpoints")
  tokenizer = load_run_tokenizer(workdir) if resumed else fresh_tokenizer(config, corpus, workdir)
  splits = batches_lib.build_or_load_cache(config.data.corpus, tokenizer, cache_dir=cache_dir, corpus=corpus,
                                           errors=config.data.errors)
  check_splits(splits, tokenizer.get_vocab_size())
  splits = trained_splits(config, splits)
  check_same_streams(config, splits)  # every process of a job loaded the same text
  counts_file = tokenizers_lib.counts_path(workdir)
  counts, damaged = None, None
  if resumed and counts_file.exists():
    try:
      counts = tokenizers_lib.check_counts(np.load(counts_file), tokenizer.get_vocab_size(), "the array")
    except (OSError, ValueError, EOFError) as e:  # truncated by a full disk: one epoch of the stream, counted again
      counts, damaged = None, first_line(e)
  # A resumed run keeps the counts it started with (its valid_ppl_rare rule, its buckets); a damaged or missing file
  # (deleted, or a run from before the file existed) is counted again, so valid_ppl_rare does not silently go null.
  recounted = resumed and counts is None
  if not resumed or counts is None:
    if resumed and jax.process_index() == 0:
      why = f"is damaged ({damaged[:200]})" if damaged else "is missing"
      print(f"note: {str(counts_file)!r} {why}; counting the training stream again", flush=True)
    counts = batches_lib.stream_counts(splits["train"], tokenizer.get_vocab_size(), seq_len=config.data.seq_len,
                                       objective=config.objective)
    if not resumed:  # a resume's are written once its checkpoint restored (`save_counts`): a refused one adds nothing
      save_counts(workdir, counts)
    if jax.process_index() == 0 and not resumed:
      for line in data_notes(config, tokenizer, counts):
        print(line, flush=True)  # stdout: stderr holds errors alone
  if jax.process_index() == 0:
    for line in stream_notes(config, splits["train"]):
      print(line, flush=True)
  return RunData(tokenizer, splits, tokenizer.get_vocab_size(), counts, counts_unsaved=recounted)


def save_counts(workdir: Path, counts: np.ndarray) -> None:
  """RUN/token_counts.npy. Atomically: in a multi-process run every process writes it while the others may be
  reading it."""
  atomic_save_npy(tokenizers_lib.counts_path(workdir), counts)


def fresh_tokenizer(config: ml_collections.ConfigDict, corpus: corpora.Corpus, workdir: Path):
  """A fresh start's tokenizer (built, or loaded from the data cache), saved as RUN/tokenizer.json.

  In a multi-process run process 0 alone builds or loads it and writes RUN/tokenizer.json; the other processes
  wait for it and load that file (the workdir is shared: checkpoints need it). Each building its own would feed the
  shared model ids of different vocabularies: wordpiece and unigram training is not deterministic, and a host's
  data.cache_dir is its own. Process 0 broadcasts its outcome, which is also the barrier: an empty text, or the
  one line every process then raises."""
  tokenizer, error = None, ""
  if jax.process_index() == 0:
    try:
      tokenizer, _ = tokenizers_lib.build_or_load_tokenizer(config.data.tokenizer, corpus, config.data.vocab_size,
                                                            cache_dir=config.data.cache_dir or None)
      tokenizers_lib.save_tokenizer(tokenizer, workdir)
    except ValueError as e:  # e.g. a vocabulary too small for the alphabet: a user error, not a bug
      error = f"data.tokenizer={config.data.tokenizer!r}, data.vocab_size={config.data.vocab_size}: {e}"
    except Exception as e:
      if jax.process_count() > 1:  # the others stop too, in one line; this process reports its own error
        broadcast_text(f"process 0 could not build the tokenizer ({first_line(e)[:300]}); see its output")
      raise
  if jax.process_count() > 1:
    error = broadcast_text(error)
  if error:
    raise configuration.ConfigError(error)
  return tokenizer if tokenizer is not None else load_run_tokenizer(workdir)


def broadcast_text(text: str) -> str:
  """Process 0's `text`, on every process of the job (the others pass anything); every process waits for it."""
  from jax.experimental import multihost_utils
  data = text.encode("utf-8")
  size = int(multihost_utils.broadcast_one_to_all(np.array(len(data), np.int32)))
  if not size:
    return ""
  sent = multihost_utils.broadcast_one_to_all(np.frombuffer(data.ljust(size, b"\0")[:size], np.uint8))
  return bytes(np.asarray(sent, np.uint8)).decode("utf-8", "replace")


def trained_splits(config: ml_collections.ConfigDict, splits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The run's streams: the corpus's, with the train split cut to data.train_fraction's prefix (whole documents). What
  RUN/data.json records and the trainer reads; research-evaluate and research-analyze load the same."""
  return {**splits, "train": batches_lib.stream_prefix(splits["train"], config.data.train_fraction)}


def stream_notes(config: ml_collections.ConfigDict, train_ids: np.ndarray) -> list[str]:
  """A note (the run is legal) when the train stream packs into fewer rows than train.batch_size: every step then
  trains on those rows alone, the rest of the batch being padding that carries no loss, so a step sees fewer tokens
  than the config suggests (a tiny corpus, a small data.train_fraction)."""
  rows = batches_lib.num_rows(int(train_ids.size), int(config.data.seq_len), config.objective)
  if rows >= config.train.batch_size:
    return []
  return [f"note: the train split ({train_ids.size} tokens) packs into {rows} row{'s' if rows != 1 else ''} of "
          f"data.seq_len={config.data.seq_len}, fewer than train.batch_size={config.train.batch_size}: every step "
          f"trains on {'those rows' if rows != 1 else 'that row'} and pads the rest (no loss)"]


# A fresh tokenizer whose train split is more [UNK] than this is worth a note: the model would mostly learn [UNK].
UNK_NOTE_SHARE = 0.05


def data_notes(config: ml_collections.ConfigDict, tokenizer, counts: np.ndarray) -> list[str]:
  """Notes (not errors: the run is legal) on a freshly built tokenizer that is not what the config asked for: a
  vocabulary smaller than data.vocab_size (a corpus too small for it; the model's table has the tokenizer's size,
  which summary.json's vocab_size records), and a train split with more than UNK_NOTE_SHARE of [UNK] tokens (a share
  of the text's tokens: the [SEP] between documents and an MLM row's [CLS] / [SEP] are not text)."""
  notes = []
  size, asked = tokenizer.get_vocab_size(), config.data.vocab_size
  if size < asked:
    notes.append(f"note: data.tokenizer={config.data.tokenizer!r} learned {size} tokens from {config.data.corpus!r}, "
                 f"fewer than data.vocab_size={asked}; the model's table has {size} rows")
  markers = [i for i in tokenizers_lib.SPECIAL_IDS if i != tokenizers_lib.UNK_ID and i < counts.size]
  total = int(counts.sum()) - int(counts[markers].sum())
  if total and counts.size > tokenizers_lib.UNK_ID:
    share = float(counts[tokenizers_lib.UNK_ID]) / total
    if share > UNK_NOTE_SHARE:
      notes.append(f"note: {share:.1%} of the train split's tokens are [UNK] with data.tokenizer="
                   f"{config.data.tokenizer!r}, data.vocab_size={asked} (a larger vocabulary, or a tokenizer "
                   f"without [UNK] such as bpe or byte, keeps more of the text)")
  return notes


def load_run_tokenizer(workdir: str | os.PathLike):
  """RUN/tokenizer.json; a damaged one is one line (the tokenizers library raises a bare Exception)."""
  path = Path(workdir) / TOKENIZER_FILE
  if not path.exists():
    raise configuration.ConfigError(f"{str(workdir)!r} has no {TOKENIZER_FILE}: not a run directory, or a start "
                                    f"that failed before writing it")
  try:
    return tokenizers_lib.load_tokenizer(workdir)
  except Exception as e:  # noqa: BLE001
    raise configuration.ConfigError(f"{str(path)!r} cannot be read ({first_line(e)[:200]}); the run's token ids "
                                    f"depend on it: restore it from a copy, or use a new workdir") from None


def char_ids(config, tokenizer) -> "chars_lib.Constant | None":
  """With model.char_embeddings: the vocabulary's spellings as char ids [V, C] (chars.char_ids), for the model."""
  if config.model.get("char_embeddings", "none") == "none":
    return None
  return chars_lib.Constant(chars_lib.char_ids(tokenizers_lib.vocabulary(tokenizer), config.data.tokenizer,
                                              spelling_of=config.model.char_spelling))


def pretrained_table(config, data: RunData, workdir: Path) -> tuple[np.ndarray, dict[str, Any]]:
  """The aligned [V, table width] initial table and its coverage report; bad input is a one-line ConfigError."""
  p = config.model.pretrained
  model_cfg = configuration.model_config(config, data.vocab_size)
  counts_file = tokenizers_lib.counts_path(workdir)
  counts = np.load(counts_file) if counts_file.exists() else None
  try:
    return pretrained_lib.pretrained_table(
        p.path, tokenizers_lib.vocabulary(data.tokenizer), config.data.tokenizer, d_model=model_cfg.table_width,
        std=model_cfg.embed_init_std, format=p.format, oov=p.oov, dim_mismatch=p.dim_mismatch, scale=p.scale,
        seed=config.seed, counts=counts, width_option="model.table_dim" if model_cfg.table_dim else "model.d_model",
        unicode_errors=p.unicode_errors)
  except pretrained_lib.PretrainedError as e:
    raise configuration.ConfigError(str(e)) from None


def recorded_files(workdir: str | os.PathLike) -> dict[str, tuple[str, str]]:
  """{"model.pretrained.path": (the value the run read the vectors by, the file that named then)} from the run's
  RUN/embedding_init.json (`pretrained.file_record`'s `resolved_path`), for the resume check's `same_file`; {} for a
  run without the record (written before it existed, or random init) or with an unreadable one."""
  try:
    report = json.loads((Path(workdir) / EMBEDDING_INIT_FILE).read_text())
  except (OSError, ValueError, UnicodeDecodeError):
    return {}
  if not isinstance(report, dict) or not all(isinstance(report.get(k), str) for k in ("path", "resolved_path")):
    return {}
  return {"model.pretrained.path": (report["path"], report["resolved_path"])}


def with_table(state: steps.TrainState, table_VxD: np.ndarray) -> steps.TrainState:
  """`state` with the token table replaced, on the table's sharding. Set after init rather than passed as an
  initializer (`token.from_matrix`) so that the jitted init does not carry a V×d constant; the optimizer state
  does not depend on the initial values (moments start at zero)."""
  old = state.params["token_embed"]["embedding"]
  if old.shape != table_VxD.shape:
    raise ValueError(f"pretrained table has shape {table_VxD.shape}, the model's is {old.shape}")
  new = jax.make_array_from_callback(old.shape, old.sharding, lambda index: table_VxD[index].astype(old.dtype))
  params = {**state.params, "token_embed": {**state.params["token_embed"], "embedding": new}}
  return state.replace(params=params)


def check_splits(splits: dict[str, np.ndarray], vocab_size: int) -> None:
  """Every id of every split is in [0, V), checked once on the host: inside jit a bad input id would only show as
  NaN and a bad target id as a silently wrong (finite) loss."""
  for name, ids in splits.items():
    try:
      check_ids(ids, vocab_size, hint=f" (the vocabulary size) in the {name} split")
    except ValueError as e:
      raise configuration.ConfigError(f"{e}: the token cache does not match the tokenizer; delete the cache "
                                      f"(data.cache_dir) and rerun") from None


def train_batches(config, data: RunData) -> batches_lib.PackedBatches:
  return batches_lib.PackedBatches(
      data.splits["train"], config.data.seq_len, config.train.batch_size // jax.process_count(),
      objective=config.objective, seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count())


def valid_batches(config, ids: np.ndarray, batch_size: int) -> Iterator[dict]:
  """The validation split in order: CLM nonoverlapping windows, MLM [CLS] … [SEP] rows; optionally truncated."""
  if config.objective == "clm":
    it = batches_lib.eval_batches(ids, config.data.seq_len, batch_size, process_index=jax.process_index(),
                                  process_count=jax.process_count())
  else:
    it = batches_lib.PackedBatches(ids, config.data.seq_len, batch_size, objective="mlm", shuffle=False,
                                   num_epochs=1, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  for i, batch in enumerate(it):
    if config.train.eval_batches and i >= config.train.eval_batches:
      return
    yield batch


# ---------------------------------------------------------------------------------------------------- workdir


def state_bytes_per_device(abstract_state, shardings) -> int:
  """Bytes one device holds of a train state laid out by `shardings` (each leaf's shard), plus one more copy of the
  parameters' shards for their gradients."""
  def shard_bytes(leaf, sharding) -> int:
    return int(np.prod(sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize  # typed PRNG keys too
  def total(tree, tree_shardings) -> int:
    return sum(jax.tree.leaves(jax.tree.map(shard_bytes, tree, tree_shardings)))
  return total(abstract_state, shardings) + total(abstract_state.params, shardings.params)


def matrix_params(m) -> int:
  """A lower bound on a model's parameter count from its config alone: the token table (V × table width) and each
  block's attention (4 · width²) and MLP (2 · width · mlp_dim) matrices; biases, norms, positions and heads are
  left out."""
  width = int(m.width)
  return int(m.vocab_size) * int(m.table_width) + int(m.num_layers) * (4 * width * width + 2 * width * int(m.mlp_dim))


def residual_stream_bytes(rows: int, seq_len: int, m) -> int:
  """A lower bound on a micro-batch's activations: the float32 residual stream (rows × seq_len × width) at the input
  of each block and after the last, which the backward pass keeps with or without model.remat (a block's remat
  recomputes its inside from its input). Attention scores, MLP activations and logits come on top."""
  return int(rows) * int(seq_len) * int(m.width) * (int(m.num_layers) + 1) * 4


def largest_param(tree) -> str:
  """'the largest, PATH of shape (a, b), holds N; ' for the parameter with the most entries, so that the "does not
  fit" line names what made a model huge (a positional table of CoPE's or a learned scheme's many rows, a wide
  model.table_dim) and not only the fields that size the blocks."""
  path, leaf = max(jax.tree_util.tree_flatten_with_path(tree)[0], key=lambda item: int(np.prod(item[1].shape)))
  name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return f"the largest, {name} of shape {tuple(leaf.shape)}, holds {int(np.prod(leaf.shape)):,}; "


def device_memory_bytes(device) -> tuple[int | None, str]:
  """(bytes a train state may use on `device`, how to name it): an accelerator's `bytes_limit`; on CPU the host's
  MemAvailable (Linux /proc/meminfo) divided among this process's CPU devices. (None, ...) when unknown."""
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit")
    return (int(limit), f"{device.device_kind} {device.id}") if limit else (None, "")
  try:
    meminfo = Path("/proc/meminfo").read_text()
  except OSError:
    return None, ""
  for line in meminfo.splitlines():
    if line.startswith("MemAvailable:"):
      local = max(1, len([d for d in jax.local_devices() if d.platform == "cpu"]))
      available = int(line.split()[1]) * 1024
      return available // local, ("this host" if local == 1 else f"each of this host's {local} CPU devices")
  return None, ""


def check_no_brackets(path: Path) -> None:
  """A workdir whose absolute path holds '[' or ']' is one line: Orbax finds a checkpoint's per-process files with a
  glob over its directory, which reads the brackets as a pattern, so every save "succeeded" and none restores."""
  text = str(path.absolute())
  if "[" in text or "]" in text:
    raise configuration.ConfigError(f"workdir {str(path)!r}: a path with '[' or ']' cannot hold checkpoints (Orbax "
                                    f"reads them as a glob pattern, and its saves would never restore); rename it")


is_run_directory = corpora.is_run_directory  # config.json beside tokenizer.json or checkpoints/ (JAX-free there)


def check_not_a_file(workdir: str | os.PathLike) -> Path:
  """The workdir as a Path; one that exists and is not a directory (a file) is one line."""
  path = Path(workdir)
  if path.exists() and not path.is_dir():
    raise configuration.ConfigError(f"workdir {str(path)!r} exists and is not a directory")
  return path


CHAR_FIELDS = run_fields.CHAR_FIELDS  # the char CNN's settings (research/run_fields.py)
ROPE_SCALING_FIELDS = run_fields.ROPE_SCALING_FIELDS  # RoPE's scaling (research/run_fields.py)


def _rotates(config: Mapping[str, Any]) -> bool | None:
  """Whether the config's scheme rotates with RoPE's frequencies (rope, p_rope); None when it cannot be told (an
  external scheme that does not import here)."""
  return configuration.rotates_with_rope_or_none(config.get("model", {}).get("position", ""))


def unused_fields(previous: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[str, ...]:
  """Fields that may differ between a saved run's config and a rerun's because neither model uses them
  (`run_fields.unused_fields`, with the schemes imported here; its docstring lists every rule): e.g. the char CNN's
  when both have model.char_embeddings none; RoPE's scaling when neither scheme rotates with RoPE's frequencies; the
  MLM rates when both are causal LMs; an optimizer's setting neither optimizer reads. Without it every old run
  would need the legacy value of each char field added since (schema.LEGACY_VALUES) to resume, though it never had
  a CNN, and a run written with a scaling its scheme ignored (accepted before `configuration.validate_rope_scaling`)
  could not resume at all: validation refuses the saved value, the resume check the default."""
  return run_fields.unused_fields(previous, current, _rotates)


def unread_notes(config: ml_collections.ConfigDict, skip: tuple[str, ...] = ()) -> list[str]:
  """A note (the run is legal) for each field set to other than the schema's default that this run's model never
  reads (`unused_fields` of the config with itself; the reason from `run_fields.unread_reason`), e.g.
  p-RoPE's keep fraction in a rope run (only p_rope reads it): config.json records the value, and the run trains
  as it would at the default. Not refused: a user's base config may set a field of a scheme it does not always
  choose (research-sweep warns of trials that therefore train the same model). `skip`: fields whose value the
  resumed run chose, not the command (`chosen_by_the_run`)."""
  d, flat = config.to_dict(), configuration.flatten(config)
  default = configuration.flatten(schema.get_config())
  return [f"note: {field}={flat[field]!r} is {run_fields.unread_reason(field, d)}: it changes nothing in this run"
          for field in unused_fields(d, d) if field not in run_fields.SAME_MODEL_VALUES and field not in skip
          and field not in CHECKED_UNREAD and field in flat and flat[field] != default.get(field)]


# Fields that shape no model where `unused_fields` says so, yet are still checked: data.vocab_size under byte or char
# must hold their vocabulary (a smaller one is refused once the corpus is read), so no note calls it unread.
CHECKED_UNREAD = ("data.vocab_size",)


def chosen_by_the_run(command: ml_collections.ConfigDict, kept: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The fields `keep_saved_choices` took from the run rather than from the command (what a field the run's
  config.json lacks meant then, a backend choice, a path's first spelling): no note calls them set but unread."""
  given, run = configuration.flatten(command), configuration.flatten(kept)
  return tuple(f for f, value in run.items() if _json(value) != _json(given.get(f)))


def same_model_ignored(previous: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[str, ...]:
  """The fields in which two configs may differ and still train the same model (`run_fields.same_model_ignored`,
  with the schemes imported here): research-sweep's same-model warning."""
  return run_fields.same_model_ignored(previous, current, _rotates)


def check_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                  backend: str | Callable[[], str] | None = None) -> Path:
  """The workdir as a Path, checked and left untouched: not a URL, not a file, and, when it holds a run (its
  config.json), a config that differs from that run's only in `schema.RESUMABLE_FIELDS`. Every differing field is
  named in one line. Runs before the config is validated, so a value that would not even be valid is reported as
  what it is here: another run. `backend`: the backend the run trains on, for the fields decided per backend
  (`configuration.align_backend_choices`; default this process's)."""
  if configuration.is_url(workdir):
    raise configuration.ConfigError(
        f"workdir {str(workdir)!r} is a URL; run directories are local or shared-filesystem paths (mount a bucket "
        f"with gcsfuse, or use NFS / Filestore, and pass the mounted path)")
  path = check_not_a_file(workdir)
  check_no_brackets(path)
  for parent in path.absolute().parents:  # a run's files written among another run's (its checkpoints/, eval/)
    if is_run_directory(parent):
      raise configuration.ConfigError(f"workdir {str(path)!r} is inside the run {str(parent)!r}; give a directory "
                                      f"of its own")
  if (path / "sweep.json").is_file():
    raise configuration.ConfigError(f"workdir {str(path)!r} is a sweep directory (sweep.json); a run goes in a "
                                    f"directory of its own")
  check_outside_corpus(config, path, "workdir")
  saved = path / CONFIG_FILE
  if saved.exists():
    current, raw = config.to_dict(), read_saved_config(path)
    previous = configuration.align_backend_choices(configuration.with_defaults(raw), current, backend,
                                                   recorded_files(path))
    # Fields added since the run was written keep what they meant then (`keep_saved_choices`): not a difference.
    implied = configuration.lacking_fields(raw, current) if holds_a_run(path) else ()
    diffs = checkpoint_lib.config_differences(
        previous, current, ignore=schema.RESUMABLE_FIELDS + unused_fields(previous, current) + implied)
    if diffs and not holds_a_run(path):
      # A start that failed before its first checkpoint (a non-finite loss at step 1, a kill): nothing of that
      # model exists, so the corrected command starts over in the same workdir (its files are rewritten).
      print(f"note: workdir {str(path)!r} holds a start of another run that saved no checkpoint ({'; '.join(diffs)}); "
            f"starting over with this config", flush=True)
    elif diffs:
      raise configuration.ConfigError(
          f"workdir {str(path)!r} holds another run, and resuming it with this config would train another model: "
          f"{'; '.join(diffs)}. Only {', '.join(schema.RESUMABLE_FIELDS)} and fields neither model reads "
          f"(docs/training.md, \"Resume\") may change on resume; use a new workdir")
    rule = run_fields.outdated_mlm_validation(raw) if holds_a_run(path) else None
    if rule and finished_summary(path, config.train.steps) is None:
      raise configuration.ConfigError(
          f"workdir {str(path)!r} holds an MLM run whose validation used {rule}; today's code masks per row, so "
          f"training it on would pick its best step and draw its valid curve across two rules: score its checkpoints "
          f"with research-evaluate (one rule for all of them), or train again in a new workdir")
  elif checkpoint_lib.has_checkpoint(path / "checkpoints"):
    # Without config.json nothing says which model the checkpoints are; resuming them under any config (another
    # learning rate, another scheme) would continue them as that model, and config.json would then misdescribe them.
    raise configuration.ConfigError(
        f"workdir {str(path)!r} holds checkpoints but no {CONFIG_FILE}, so nothing says which run they are; restore "
        f"{CONFIG_FILE} from a copy (every checkpoint's meta/metadata holds the config it was trained with), or use "
        f"a new workdir")
  return path


def trained_as(workdir: Path) -> str | None:
  """The error the checks for new training only (`configuration.training_only_error`) give the config of the run in
  `workdir`, when it holds a model (a checkpoint or summary.json): a run trained before the check existed, which its
  rerun may continue (`configuration.validate`). None for a workdir without such a run, or a config.json that cannot
  be read (`check_workdir` says what is wrong with it)."""
  workdir = Path(workdir)
  if not holds_a_run(workdir) or not (workdir / CONFIG_FILE).is_file():
    return None
  try:
    saved = ml_collections.ConfigDict(configuration.with_defaults(read_saved_config(workdir)))
    return configuration.training_only_error(saved)
  except (ValueError, TypeError, KeyError, AttributeError, OSError):  # a config this version cannot build at all
    return None


def holds_a_run(path: Path) -> bool:
  """Whether the workdir holds a model: a checkpoint, or summary.json (a finished run). A config.json without either
  is a start that failed before its first checkpoint, which another config may replace."""
  return checkpoint_lib.has_checkpoint(path / "checkpoints") or (path / SUMMARY_FILE).exists()


def check_outside_corpus(config: ml_collections.ConfigDict, path: Path, what: str) -> None:
  """A one-line ConfigError when the run's `text:` corpus would read `path` (`corpora.reads_path`)."""
  corpus = config.data.corpus
  if corpora.reads_path(corpus, path):
    raise configuration.ConfigError(
        f"{what} {str(path)!r} is inside data.corpus={corpus!r}: the run's files (checkpoints, logs) would become "
        f"training text at its next start; give it a directory outside the corpus")


def cache_dir_name(config: ml_collections.ConfigDict) -> str:
  """How the data cache's directory was chosen, for a line about it."""
  if config.data.cache_dir:
    return "data.cache_dir"
  return "$RESEARCH_CACHE_DIR" if os.environ.get("RESEARCH_CACHE_DIR") else "the data cache (data.cache_dir)"


def check_cache_dir(config: ml_collections.ConfigDict) -> None:
  """A one-line ConfigError, before anything is written, when the data cache's directory (`corpora.cache_root`) is
  not a directory (it, or a directory above it, is a file) or lies where the run's `text:` corpus reads (its token
  streams and tokenizers would become training text at the next start, as a workdir's files would)."""
  root, name = corpora.cache_root(config.data.cache_dir or None), cache_dir_name(config)
  for above in (root, *root.parents):
    if above.exists() or above.is_symlink():
      if not above.is_dir():
        which = "" if above == root else f" ({str(above)!r} is a file)"
        raise configuration.ConfigError(f"{name} {str(root)!r} is not a directory{which}; give a writable directory")
      break
  if corpora.reads_path(config.data.corpus, root, corpora.CACHE_FILES):
    raise configuration.ConfigError(
        f"{name} {str(root)!r} is inside data.corpus={config.data.corpus!r}: the cache's files (tokenizers, token "
        f"streams) would become training text at the next start; give it a directory outside the corpus")


def in_cache_dir(e: OSError, config: ml_collections.ConfigDict, workdir: Path) -> bool:
  """Whether the file an OSError names is the data cache's directory, inside it, or a directory above it that its
  creation needed (and not the run directory's)."""
  if not e.filename:
    return False
  path, run = Path(os.path.abspath(os.fsdecode(e.filename))), Path(os.path.abspath(workdir))
  root = Path(os.path.abspath(corpora.cache_root(config.data.cache_dir or None)))
  if path == run or run in path.parents:
    return False
  return path == root or path in root.parents or root in path.parents


def check_corpus_excludes_run(config: ml_collections.ConfigDict, workdir: Path) -> None:
  """A one-line ConfigError when the run's `text:` corpus now reads files inside its workdir (`corpora.files_inside`):
  what `check_outside_corpus` could not foresee at the first start (a file name it does not know, a symlink made
  since). Moving the run directory out restores the corpus the run started on, so the rerun resumes. A corpus kept
  inside the run directory (`text:RUN/mydata.txt`) would move with it: the line says to keep it outside instead."""
  inside = corpora.files_inside(config.data.corpus, workdir)
  if inside:
    more = f" and {len(inside) - 1} more" if len(inside) > 1 else ""
    corpus, run = corpora.spec_root(config.data.corpus), Path(os.path.realpath(workdir))
    if corpus is not None and (corpus == run or run in corpus.parents):
      raise configuration.ConfigError(
          f"data.corpus={config.data.corpus!r} lies inside the run directory {str(workdir)!r} (it reads "
          f"{str(inside[0])!r}{more}), whose files are the run's own; keep the corpus outside the run directory (or "
          f"use another workdir) and rerun")
    raise configuration.ConfigError(
        f"data.corpus={config.data.corpus!r} reads this run's own files ({str(inside[0])!r}{more}) as training "
        f"text; move the run directory {str(workdir)!r} outside the corpus and rerun there (the corpus then reads "
        f"what it read at the run's start)")


def data_record(splits: dict[str, np.ndarray]) -> dict[str, Any]:
  """RUN/data.json's content: SHA-256 and length of the token streams in `DATA_SPLITS` as the run reads them (the
  train split after data.train_fraction's prefix: `trained_splits`). Token ids, not files: touching a corpus file
  changes nothing here, editing its text does. The test stream is recorded too: no model depends on it, but a
  research-evaluate --split=test of an edited test part would score other text under the run's name."""
  return {"splits": {name: {"sha256": hashlib.sha256(np.ascontiguousarray(splits[name]).tobytes()).hexdigest(),
                            "tokens": int(splits[name].size), "dtype": str(splits[name].dtype)}
                     for name in DATA_SPLITS}}


def changed_streams(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], str]:
  """The splits of `current` (entries of `data_record(splits)["splits"]`) whose stream differs from `saved`,
  RUN/data.json's "splits" (a split `saved` lacks differs), in DATA_SPLITS' order, and how to say it: "the train,
  valid and test token streams differ" (research-train's resume check and research-evaluate's share it)."""
  order = {name: i for i, name in enumerate(DATA_SPLITS)}  # train, valid, test, however the records were keyed
  changed = sorted((name for name in current if saved.get(name) != current[name]), key=lambda n: order.get(n, 99))
  if not changed:
    return changed, ""
  names = f"{', '.join(changed[:-1])} and {changed[-1]}" if len(changed) > 1 else changed[0]
  return changed, f"the {names} token stream{'s differ' if len(changed) > 1 else ' differs'}"


def check_not_shortened(config: ml_collections.ConfigDict, workdir: Path, remedy: str, who: str = "") -> None:
  """One line when config.train.steps is below the step of the run's newest checkpoint (a run is extended, never
  shortened): research-train's rule, which research-sweep applies to every trial before any runs. `remedy` (with
  `{step}` for that step) says what to do; `who` prefixes the line (a sweep's trial)."""
  saved = checkpoint_lib.checkpoint_steps(workdir / "checkpoints")
  if saved and config.train.steps < saved[-1]:
    raise configuration.ConfigError(
        f"{who}train.steps={config.train.steps} is below step {saved[-1]}, which the run in {str(workdir)!r} has "
        f"reached; a run is not shortened: {remedy.format(step=saved[-1])}")


NOT_SHORTENED_REMEDY = "pass train.steps >= {step} (research-evaluate --checkpoint=best|last scores its checkpoints)"


def check_resume(config: ml_collections.ConfigDict, workdir: Path, data: "RunData") -> dict[str, Any] | None:
  """Before config.json is written: a rerun of a run that saved checkpoints neither shortens it (train.steps below
  the newest checkpoint's step) nor continues it on other token streams than it started on (RUN/data.json: a corpus
  file edited in place). Each is one line. Returns the data.json to write where it is missing (a fresh start, or a
  run written before the file existed, which is checked from now on), else None; `write_run_records` writes it."""
  check_not_shortened(config, workdir, NOT_SHORTENED_REMEDY)
  saved_steps = checkpoint_lib.checkpoint_steps(workdir / "checkpoints")
  current = data_record(data.splits)
  path = workdir / DATA_FILE
  if saved_steps and path.exists():
    saved = read_data_record(workdir)  # a run's record of its start: train and valid only in runs before `test`
    changed, differ = changed_streams(saved, {name: v for name, v in current["splits"].items() if name in saved})
    if changed:
      what = "trained on other data" if set(changed) - {"test"} else "whose corpus changed in its test split"
      raise configuration.ConfigError(
          f"workdir {str(workdir)!r} holds a run {what}: {differ} from the "
          f"one{'s' if len(changed) > 1 else ''} it started on (was {config.data.corpus!r} edited?); restore the "
          f"corpus or use a new workdir")
  return current if not saved_steps or not path.exists() else None


def write_run_records(config: ml_collections.ConfigDict, workdir: Path, data: "RunData",
                      data_json: dict[str, Any] | None, resumed: bool) -> dict[str, Any]:
  """config.json, and data.json (`check_resume`'s) and token_counts.npy (`RunData.counts_unsaved`) where they are
  due: at a fresh start once the data and the model are built, at a resume once its checkpoint restored, so that a
  resume refused or failed on the way (no checkpoint restores, another data position) leaves the run's files as
  they were. A resume's config.json still lacks the fields the saved one lacked (`keep_saved_choices` gave them the
  values they meant then): written out, they would read as chosen, and the next rerun of the same command would be
  refused over them. Returns the config as written, which every checkpoint's metadata then holds too (the copy the
  docs name for restoring a lost config.json: written in full, it would be refused alike)."""
  if data.counts_unsaved:
    save_counts(workdir, data.train_counts)
  if data_json is not None and jax.process_index() == 0:
    atomic_write_json(workdir / DATA_FILE, data_json)
  omit = configuration.lacking_fields(read_saved_config(workdir)) \
      if resumed and (workdir / CONFIG_FILE).exists() else ()
  return write_config(config, workdir, omit)


def read_data_record(workdir: Path) -> dict[str, Any]:
  """RUN/data.json's "splits" ({split: {sha256, tokens, dtype}}); a damaged file is one line: it is the only record
  of the streams the run started on, so it is not rewritten from today's data unasked."""
  path = Path(workdir) / DATA_FILE
  try:
    splits = json.loads(path.read_text()).get("splits")
    if not isinstance(splits, dict) or not all(isinstance(v, dict) for v in splits.values()):
      raise ValueError(f"'splits' is {type(splits).__name__}, not an object of splits")
  except (ValueError, AttributeError, UnicodeDecodeError) as e:
    raise configuration.ConfigError(
        f"{str(path)!r} is damaged ({first_line(e)[:200]}); it records the token streams the run started on: "
        f"restore it from a copy, or delete it to accept the data the config gives now (it is written again from "
        f"those streams)") from None
  return splits


def read_saved_config(workdir: str | os.PathLike) -> dict[str, Any]:
  """RUN/config.json as a dict; a damaged one (truncated by a full disk, edited by hand) is one line naming the file
  and where the run's config is kept besides (every checkpoint's meta/metadata holds a copy under "config")."""
  path = Path(workdir) / CONFIG_FILE
  try:
    saved = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    saved, error = None, first_line(e)
  else:
    error = None if isinstance(saved, dict) else f"a JSON {type(saved).__name__}, not an object"
  if error:
    raise configuration.ConfigError(
        f"{str(path)!r} is damaged ({error}); every checkpoint keeps a copy of the run's config "
        f"(checkpoints/<step>/meta/metadata, under \"metadata\": {{\"config\": ...}}): restore it from there, or use a "
        f"new workdir")
  return saved


def start_distributed(config: ml_collections.ConfigDict) -> None:
  """jax.distributed.initialize() for a multi-process run (mesh.distributed; `mesh.maybe_initialize_distributed`),
  once: a later call does nothing."""
  distributed = str(config.mesh.distributed).lower()
  mesh_lib.maybe_initialize_distributed(None if distributed == "auto" else distributed == "true",
                                        heartbeat_timeout_s=config.mesh.heartbeat_timeout_s,
                                        init_timeout_s=config.mesh.init_timeout_s)


def _backend_after_distributed(config: ml_collections.ConfigDict) -> str:
  """jax.default_backend(), for the resume checks of backend-resolved fields (model.attention), asked only when such
  a field differs: the multi-process runtime is started first, since asking starts JAX's backend, which
  jax.distributed.initialize must precede."""
  start_distributed(config)
  return jax.default_backend()


def finished_summary(workdir: Path, step: int) -> dict[str, Any] | None:
  """RUN/summary.json when it records `step` (the run finished there), else None (missing, damaged, of another
  step). A rerun with no step left to train returns it as it is instead of evaluating again: the current code may
  score the same parameters otherwise (an MLM's masks changed since: valid_ppl 306.77 became 268.86 beside the
  unchanged best_valid_loss and metrics.jsonl), and summary.json is the run's record of its end."""
  try:
    summary = json.loads((Path(workdir) / SUMMARY_FILE).read_text())
  except (OSError, ValueError, UnicodeDecodeError):
    return None
  return summary if isinstance(summary, dict) and summary.get("step") == step else None


def keep_saved_choices(config: ml_collections.ConfigDict, workdir: Path,
                       backend: Callable[[], str] = jax.default_backend) -> ml_collections.ConfigDict:
  """`config` with each `configuration.BACKEND_RESOLVED` field (model.attention) and each `RESOLVED_PATHS` field
  (model.pretrained.path) set to the value of the run in `workdir` where the two mean the same here (the same choice
  on this backend, the same file): config.json then keeps saying what the run was trained with (an einsum run
  resumed under auto still evaluates with einsum on a GPU; the vector file keeps its first spelling). Where they
  differ (a start that saved no checkpoint, corrected: `check_workdir` lets it start over) the new value stands.

  A field the run's config.json lacks (added to the schema since the run was written) takes what it meant then
  (`configuration.with_defaults`: train.count_updates false, train.position.weight_decay true), whatever this
  config says: the run resumes as the model it is, with one note naming each such field that the run's model reads
  and whose value this config would have changed (a value given on the command line cannot be told from the
  default here)."""
  saved = Path(workdir) / CONFIG_FILE
  if not saved.exists():
    return config
  raw = read_saved_config(workdir)
  previous = configuration.with_defaults(raw)
  # The resume check's alignment the other way round: this config, with the saved value wherever the two mean the
  # same here. It asks the backend only where the values differ (asking starts JAX's backend, which a multi-process
  # run must not do before jax.distributed.initialize: `backend` starts that first).
  # The vector file's record counts only where the run is resumed: a fresh start reads the file by the value kept,
  # from here, so there the two must name one file from here.
  resumed = checkpoint_lib.has_checkpoint(Path(workdir) / "checkpoints")
  kept = configuration.flatten(configuration.align_backend_choices(config.to_dict(), previous, backend,
                                                                  recorded_files(workdir) if resumed else None))
  overrides = {f: kept[f] for f in (*configuration.BACKEND_RESOLVED, *configuration.RESOLVED_PATHS)}
  if holds_a_run(Path(workdir)):
    implied, current = configuration.flatten(previous), configuration.flatten(config.to_dict())
    changed = [f for f in configuration.lacking_fields(raw, config.to_dict())
               if _json(implied[f]) != _json(current.get(f))]
    overrides.update({f: implied[f] for f in changed})
    unused = unused_fields(previous, config.to_dict())  # and, below, choices that compute the same here (auto)
    noted = [f for f in changed if not any(f == u or f.startswith(u + ".") for u in unused)
             and _json(implied[f]) != _json(kept.get(f))]
    if noted and jax.process_index() == 0:
      print(f"note: the run in {str(workdir)!r} was written before {', '.join(noted)} existed; it resumes as the "
            f"model it is, with {', '.join(f'{f}={implied[f]!r}' for f in noted)} (docs/training.md, \"Resume\")",
            flush=True)
  return configuration.apply_overrides(config, overrides)


def _json(value: Any) -> Any:
  """`value` as JSON reads it back (tuples as lists), for comparing a config's value with a saved one."""
  return json.loads(json.dumps(value))


def write_config(config: ml_collections.ConfigDict, workdir: Path, omit: tuple[str, ...] = ()) -> dict[str, Any]:
  """RUN/config.json: `config`, without the fields in `omit`; returns what it holds."""
  values = config.to_dict()
  for field in omit:
    *parents, leaf = field.split(".")
    nodes = [values]  # nodes[i + 1] is nodes[i][parents[i]]
    for parent in parents:
      nodes.append(nodes[-1].get(parent, {}))
    nodes[-1].pop(leaf, None)
    for i in reversed(range(len(parents))):  # a section the saved config lacked whole stays absent
      if nodes[i].get(parents[i]) == {}:
        del nodes[i][parents[i]]
  if jax.process_index() == 0:
    atomic_write_json(Path(workdir) / CONFIG_FILE, values)
  return values


def restore_newest_good(checkpointer, workdir: Path, target, reopen: Callable[[], Any]):
  """(checkpointer, step, state, data state) of the newest checkpoint that restores. A damaged one (a truncated
  array file, a missing item: a disk that failed under a finalized save) is moved to RUN/checkpoints_unreadable/
  with a note, and the run resumes from the one before, bit-identically from there; when none restores, one line
  naming the first error. The checkpointer is closed and `reopen()`ed after a move, so it no longer lists them."""
  errors = []
  for step in reversed(checkpointer.all_steps()):
    try:
      state, saved = checkpointer.restore(step, target=target)
    except Exception as e:  # noqa: BLE001 — Orbax and TensorStore raise many types for a damaged file
      errors.append((step, first_line(e)))
      continue
    if errors:
      checkpointer.close()
      _move_unreadable(workdir, [s for s, _ in errors])
      checkpointer = reopen()
      for bad, why in errors:
        print(f"note: checkpoint step {bad} of {str(workdir)!r} could not be restored ({why[:300]}); moved to "
              f"{UNREADABLE_DIR}/{bad}; resuming from step {step}", flush=True)
    return checkpointer, step, state, saved
  checkpointer.close()
  step, why = errors[0]
  raise configuration.ConfigError(f"no checkpoint of {str(workdir / 'checkpoints')!r} restores (step {step}: "
                                  f"{why[:300]}); use a new workdir, or restore the checkpoints from a copy")


def open_checkpointer(workdir: Path, reopen: Callable[[], Any]):
  """`reopen()`, the run's Checkpointer; checkpoints whose metrics file is damaged (Orbax reads them all when it
  opens the directory, and one bad file fails it whole) are moved to RUN/checkpoints_unreadable/ with a note, as
  `restore_newest_good` moves a checkpoint that does not restore."""
  try:
    return reopen()
  except checkpoint_lib.DamagedCheckpoints as e:
    if not set(checkpoint_lib.checkpoint_steps(workdir / "checkpoints")) - set(e.steps):
      # Moving every one aside would start the run over from step 0 without a word (as `restore_newest_good`,
      # which refuses when no checkpoint restores).
      raise configuration.ConfigError(
          f"no checkpoint of {str(workdir / 'checkpoints')!r} is readable: {e}; restore the checkpoints from a copy, "
          f"or use a new workdir") from None
    _move_unreadable(workdir, e.steps)
    for step in e.steps:
      print(f"note: checkpoint step {step} of {str(workdir)!r} has a damaged metrics file ({e.why[:300]}); moved "
            f"to {UNREADABLE_DIR}/{step}", flush=True)
    return reopen()


def _move_unreadable(workdir: Path, bad_steps: list[int]) -> None:
  if jax.process_index() == 0:
    for step in bad_steps:
      target = workdir / UNREADABLE_DIR / str(step)
      if target.exists():  # a step moved once before: keep both
        target = target.with_name(f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(workdir / "checkpoints" / str(step)), str(target))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("research: unreadable checkpoints moved")


# The records of metrics.jsonl and summary.json: what research.report reads. Tests build report fixtures with these
# same functions, so a writer and its reader cannot drift apart unnoticed.


# The train line's figures averaged over the steps since the previous line; the others (lr, norms, tokens) are the
# line's own step's.
WINDOW_MEANS = ("loss", "nll", "accuracy")


def perplexity(mean_nll: float) -> float:
  """exp(mean NLL), capped at exp(700) ≈ 1e304: a diverged model's loss (a mean NLL above ~709) has no float64
  perplexity, and the figure is only ever read as "astronomical"."""
  return math.exp(min(mean_nll, 700.0))


def window_record(metrics: dict[str, float], progress: dict[str, Any], tokens_per_s: float) -> dict[str, float]:
  """A train line's figures: the step's `metrics` with loss, nll and accuracy the means over the steps of the log
  window that scored a target, whose sums `progress` holds (`window_<key>`, `window_count`: `accumulate_window`),
  ppl = exp(mean nll), and `tokens_per_s`. None (null) for each when no step of the window scored one."""
  count = int(progress["window_count"])
  record = {**metrics, **{key: progress[f"window_{key}"] / count if count else None for key in WINDOW_MEANS}}
  record["ppl"] = perplexity(record["nll"]) if count else None
  record["tokens_per_s"] = tokens_per_s
  return record


def accumulate_window(progress: dict[str, Any], metrics: dict[str, float]) -> None:
  """Adds a step's loss, nll and accuracy to the log window's sums, unless it scored no target (`tokens` 0: an MLM
  step that selected none), whose 0s are placeholders: averaged in, they pulled the line's loss down (59 of 100 steps
  of a batch-1, length-6 MLM run scored nothing, and its line said 2.6 where the scored steps averaged 6.4)."""
  if metrics.get("tokens", 1) == 0:
    return
  for key in WINDOW_MEANS:
    progress[f"window_{key}"] += metrics[key]
  progress["window_count"] += 1


def train_record(step: int, metrics: dict[str, float], tokens_seen: float) -> dict[str, Any]:
  """A `split: train` line: the step's metrics (loss, nll, accuracy averaged over the log window; tokens_per_s, lr,
  norms, ...)."""
  return {"step": step, "split": "train", **metrics, "tokens_seen": tokens_seen}


def valid_record(step: int, valid: dict[str, float], lr: float) -> dict[str, Any]:
  """A `split: valid` line: `Trainer.evaluate`'s loss, ppl, accuracy, tokens, tokens_per_s, and the lr."""
  return {"step": step, "split": "valid", **valid, "lr": lr}


def best_validation(metrics_path: Path, step: int, valid: dict[str, float]) -> dict[str, Any]:
  """The lowest validation loss of the run (metrics.jsonl's `split: valid` lines, which a resumed run rewrote from
  its restored step on, so an interrupted run finds the same), as `best_valid_loss`, `best_valid_ppl`, `best_step`:
  early stopping's figure, next to the final one (docs/training.md, "summary.json"). The latest step wins a tie, as
  in the Orbax ranking `Checkpointer.best_step()` and the BestN retention use (a stable sort, best last), so on a tie
  summary.json names the checkpoint that is kept and that research-evaluate and research-analyze read."""
  records = []
  if metrics_path.exists():
    records = [r for r in read_metrics(metrics_path) if r.get("split") == "valid" and r.get("step", 0) <= step]
  if not records:
    records = [{"step": step, **valid}]
  best = min(records, key=lambda r: (ranking_loss(r), -r["step"]))
  return {"best_valid_loss": best["loss"], "best_valid_ppl": best["ppl"], "best_step": best["step"]}


def ranking_loss(valid: dict[str, Any]) -> float:
  """The loss a validation ranks its checkpoint by: its loss, or the largest float when it scored no target
  (`tokens` 0: a split too small, an MLM that masked none of it), whose loss 0 is a placeholder that would otherwise
  be "the best". The summary's best and the Orbax ranking of the checkpoints use it alike. Finite, not +inf: Orbax
  writes it into JSON files, where `Infinity` is not standard JSON (Python reads it, other readers refuse it).
  Lines without `tokens` (older runs) rank by their loss."""
  return sys.float_info.max if valid.get("tokens", 1) == 0 else valid["loss"]


def summary_record(*, step: int, train_loss: float | None, valid: dict[str, float], tokens_seen: float,
                   num_params: int, num_embedding_params: int, vocab_size: int, wall_s: float,
                   best: dict[str, Any] | None = None, objective: str | None = None) -> dict[str, Any]:
  """summary.json's record. An MLM run's (`objective` mlm) has `mlm_masks`: the rule its validation masked the split
  by, "per_row" (`Trainer.evaluate`; the name and value eval/extrapolation.json records, extrapolation.MLM_MASKS),
  so that research-report can tell its valid ppl from one of a run validated otherwise (a summary without it was
  written before the field: masks per batch before b2cb295, one key for every batch before 059dd28)."""
  record = {"step": step, "train_loss": train_loss, "valid_loss": valid["loss"], "valid_ppl": valid["ppl"],
            **(best or {}), "valid_ppl_rare": valid.get("ppl_rare"),
            "valid_accuracy": valid["accuracy"], "tokens_seen": tokens_seen, "num_params": num_params,
            "num_embedding_params": num_embedding_params, "vocab_size": vocab_size, "wall_s": wall_s}
  return {**record, "mlm_masks": "per_row"} if objective == "mlm" else record


def write_summary(workdir: Path, summary: dict[str, Any]) -> None:
  """summary.json, written last by the trainer: its presence means "finished"."""
  if jax.process_index() == 0:
    atomic_write_json(Path(workdir) / SUMMARY_FILE, summary)


def read_metrics(path: Path) -> list[dict[str, Any]]:
  """The records of metrics.jsonl; a line that is not a JSON object (the torn last line of a crash or a full disk
  during an append) is skipped: the rerun rewrites what it held."""
  records = []
  for line in path.read_text(errors="replace").splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict):
      records.append(record)
  return records


class EventLog:
  """A TensorBoard event file (`events.out.tfevents.*`) written as tensorboardX's SummaryWriter writes it (its
  EventsWriter, `summary.scalar`, the Event protos, the purge event of `purge_step`), but from the calling thread.

  SummaryWriter writes from a background thread fed by a queue of 10 events: when a write fails there (a full disk),
  the thread dies with its traceback on stderr and the 11th event the run adds blocks it forever (seen on a full
  tmpfs). Here a failed write raises in the training loop, which ends in its one line (`StorageError`). Writes are
  buffered by the file and reach the disk at `flush` (every checkpoint) and `close`."""

  def __init__(self, workdir: Path, purge_step: int):
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2
    from tensorboardX.summary import scalar
    self._event, self._scalar = event_pb2.Event, scalar
    self._events = EventsWriter(str(workdir / "events"))  # its first event: the file version, as SummaryWriter's
    self._write(step=purge_step, file_version="brain.Event:2")  # SummaryWriter's purge_step: these two events
    self._write(step=purge_step, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))

  def _write(self, **fields) -> None:
    self._events.write_event(self._event(wall_time=time.time(), **fields))

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    self._write(step=int(step), summary=self._scalar(tag, value))

  def flush(self) -> None:
    self._events.flush()

  def close(self) -> None:
    self._events.close()


class MetricsLog:
  """metrics.jsonl (+ TensorBoard). On resume, lines past the restored step are dropped: they will be rewritten."""

  def __init__(self, workdir: Path, resume_step: int):
    self.path = workdir / METRICS_FILE
    self.enabled = jax.process_index() == 0
    if self.enabled and self.path.exists():
      kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
      _atomic_write(self.path, lambda f: f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode()))
    self.writer = None
    if self.enabled:
      # purge_step: TensorBoard drops the events of earlier processes from the restored step on, which this run
      # logs again (else a resumed curve shows those steps twice, zigzagging); from step 1 on a fresh start, which
      # may follow a start that failed before its first checkpoint.
      self.writer = EventLog(workdir, purge_step=resume_step + 1)

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    for key, value in record.items():
      if isinstance(value, (int, float)) and key not in ("step",):
        self.writer.add_scalar(f"{record['split']}/{key}", value, record["step"])

  def flush(self) -> None:
    """The TensorBoard events so far onto disk (at every checkpoint: a crash after it loses none of them)."""
    if self.writer is not None:
      self.writer.flush()

  def write_missing_valid(self, record: dict[str, Any]) -> None:
    """Appends the `split: valid` line of `record`'s step to metrics.jsonl unless it has one (after close: the
    TensorBoard writer is not used)."""
    if not self.enabled:
      return
    if any(r.get("split") == "valid" and r.get("step") == record["step"] for r in read_metrics(self.path)):
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _progress(total: int, initial: int):
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, disable=not sys.stderr.isatty(), dynamic_ncols=True, unit="step")


def _floats(metrics: dict) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


# ---------------------------------------------------------------------------------------------------- train


def make_mesh(config):
  """The run's mesh; sizes that do not fit the devices are a user error (one line, before anything is written)."""
  try:
    return mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
  except ValueError as e:
    raise configuration.ConfigError(f"mesh.data={config.mesh.data}, mesh.fsdp={config.mesh.fsdp}: {e}") from None


@dataclasses.dataclass
class Trainer:
  """What the loop needs, built once: model, optimizer, jitted steps, mesh and shardings."""

  config: ml_collections.ConfigDict
  model: Transformer
  mesh: Any
  optimizer: Any
  schedule: Any
  settings: steps.StepSettings
  rare_V: Any = None  # bool [V]: rows with training count < RARE_TRAIN_COUNT (for valid_ppl_rare), or None

  @classmethod
  def build(cls, config, vocab_size: int, mesh=None, char_ids=None, train_counts=None) -> "Trainer":
    model_cfg = configuration.model_config(config, vocab_size)
    mesh = mesh if mesh is not None else make_mesh(config)
    configuration.check_batch_devices(config, mesh.size)
    settings = steps.StepSettings(
        objective=config.objective, vocab_size=vocab_size, grad_accum=config.train.grad_accum,
        z_loss=config.train.z_loss, loss_chunk=config.train.loss_chunk,
        mlm_select_rate=config.data.mlm_select_rate, mlm_mask_rate=config.data.mlm_mask_rate,
        mlm_random_rate=config.data.mlm_random_rate, position_sampling=model_cfg.position_sampling,
        max_position=model_cfg.max_position, count_updates=bool(config.train.count_updates),
        lazy_rows=str(config.train.embedding.lazy_rows), **steps.document_settings(config.data))
    rare_V = None if train_counts is None else np.asarray(train_counts)[:vocab_size] < RARE_TRAIN_COUNT
    return cls(config, Transformer(model_cfg, char_ids=char_ids), mesh, optim.make_optimizer(config.train),
               optim.make_schedule(config.train), settings, rare_V)

  @functools.cached_property
  def abstract_state(self):
    """The train state's shapes and dtypes (jax.eval_shape: nothing is allocated or compiled)."""
    return jax.eval_shape(self._init, jax.random.key(0))

  @functools.cached_property
  def state_shardings(self):
    return mesh_lib.param_sharding(self.abstract_state, self.mesh)

  def check_memory(self) -> None:
    """One line, before anything allocates or compiles, when the train state alone cannot fit: per device, the
    shards of the parameters, the optimizer state and the gradients (`state_bytes_per_device`) against the device's
    memory (GPU / TPU: its `bytes_limit`; CPU: the host's MemAvailable shared by this process's devices). Without
    this, such a run fails inside XLA's allocator or is killed by the kernel with no word. Of the activations only
    a lower bound is counted, on its own (`residual_stream_bytes` of one micro-batch: an absurd train.batch_size is
    refused naming it, instead of a traceback after compiling), so passing this check does not promise that a run
    fits. The line names the largest parameter (`largest_param`) and a factorized table's model.table_dim.

    The memory is read first (tracing a very deep model takes memory of its own), and a lower bound from the config
    alone (`matrix_params`: the table and the blocks' matrices, float32, with their gradients, spread over every
    device) refuses an absurd model at once, before `jax.eval_shape` traces every layer."""
    device = self.mesh.devices.flat[0]
    have, where = device_memory_bytes(device)
    if have is None:
      return
    m = self.model.cfg
    def refuse(params: str, need: float, of_what: str, cnn: int = 0, largest: str = "") -> None:
      # The character CNN's size follows model.char_filters (its highway is (Σ counts)² wide): named when it is most.
      chars = (f"{cnn:,} of them in the character CNN: model.char_filters={m.char_filters!r}, model.char_dim="
               f"{m.char_dim}; ") if cnn else ""
      table = f"model.table_dim={m.table_dim}, " if m.table_width != m.d_model else ""
      raise configuration.ConfigError(
          f"the model does not fit: {params} parameters ({largest}{chars}{table}model.d_model={m.d_model}, "
          f"model.num_layers={m.num_layers}, model.mlp_dim={m.mlp_dim}, a vocabulary of {m.vocab_size:,}) need "
          f"{need / 2**30:.1f} GiB per device for {of_what}, and {where} has {have / 2**30:.1f} GiB; use a smaller "
          f"model, or more devices (mesh.fsdp shards the state)")
    lower = matrix_params(m)
    if lower * 8 / self.mesh.size > have:
      refuse(f"at least {lower:,}", lower * 8 / self.mesh.size, "the parameters and their gradients alone")
    t, seq_len = self.config.train, int(self.config.data.seq_len)
    rows = t.batch_size // t.grad_accum  # one micro-batch
    stream = residual_stream_bytes(rows, seq_len, m) / self.mesh.size
    if stream > have:
      raise configuration.ConfigError(
          f"train.batch_size={t.batch_size} does not fit: the residual stream of one micro-batch alone "
          f"({rows:,} rows of data.seq_len={seq_len}, float32, model width {m.width}, kept at "
          f"the input of each of model.num_layers={m.num_layers} blocks and after the last) needs "
          f"{stream / 2**30:.1f} GiB per device, and {where} has {have / 2**30:.1f} GiB; use a smaller "
          f"train.batch_size, a larger train.grad_accum, or more devices")
    need = state_bytes_per_device(self.abstract_state, self.state_shardings)
    if need > have:
      tree = self.abstract_state.params
      params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
      cnn = sum(int(np.prod(x.shape)) for x in jax.tree.leaves([tree[k] for k in CHAR_MODULES if k in tree]))
      refuse(f"{params:,}", need, "the parameters, the optimizer state and the gradients",
             cnn if 2 * cnn > params else 0, largest=largest_param(tree))

  def _init(self, rng):
    return steps.init_state(rng, model=self.model, optimizer=self.optimizer, seq_len=self.config.data.seq_len,
                            count_updates=self.settings.count_updates)

  def init_state(self) -> steps.TrainState:
    return jax.jit(self._init, out_shardings=self.state_shardings)(jax.random.key(self.config.seed))

  @functools.cached_property
  def train_step(self):
    step = functools.partial(steps.train_step, model=self.model, optimizer=self.optimizer, schedule=self.schedule,
                             settings=self.settings)
    return jax.jit(step, in_shardings=(self.state_shardings, mesh_lib.batch_sharding(self.mesh)),
                   out_shardings=(self.state_shardings, None), donate_argnums=0)

  @functools.cached_property
  def eval_step(self):
    rare_V = None if self.rare_V is None else jnp.asarray(self.rare_V)  # a small constant of the compiled step
    step = functools.partial(steps.eval_step, model=self.model, settings=self.settings, rare_V=rare_V)
    return jax.jit(step, in_shardings=(self.state_shardings.params, mesh_lib.batch_sharding(self.mesh), None))

  def evaluate(self, params, ids: np.ndarray) -> dict[str, float]:
    """Loss, perplexity and accuracy over the validation split. MLM masks row r of the split with
    `fold_in(steps.eval_key(seed, seq_len), r)`: other masks in every row, the same ones at every evaluation
    (comparable checkpoints) whatever train.batch_size, and those research-evaluate scores at 1x."""
    totals: dict[str, float] = {}
    start = time.time()
    rng = steps.eval_key(self.config.seed, self.config.data.seq_len)
    for i, batch in enumerate(valid_batches(self.config, ids, self.config.train.batch_size // jax.process_count())):
      batch = steps.with_row_indices(batch, i, jax.process_index(), jax.process_count())
      sums = jax.device_get(self.eval_step(params, mesh_lib.shard_batch(batch, self.mesh), rng))
      for key, value in sums.items():
        totals[key] = totals.get(key, 0.0) + float(value)
    weight = max(totals.get("weight_sum", 0.0), 1e-9)
    nll = totals.get("nll_sum", 0.0) / weight
    return {"loss": totals.get("loss_sum", 0.0) / weight, "ppl": perplexity(nll),
            "accuracy": totals.get("correct_sum", 0.0) / weight, "tokens": totals.get("weight_sum", 0.0),
            "tokens_per_s": totals.get("input_tokens", 0.0) / max(time.time() - start, 1e-9),
            **rare_perplexity(totals)}


def rare_perplexity(totals: dict[str, float]) -> dict[str, float | None]:
  """{'ppl_rare', 'tokens_rare'} from the evaluation sums: None without rare targets (or without counts)."""
  if "rare_weight_sum" not in totals:
    return {}
  weight = totals["rare_weight_sum"]
  ppl = perplexity(totals["rare_nll_sum"] / weight) if weight > 0 else None
  return {"ppl_rare": ppl, "tokens_rare": weight}


def check_finite(step: int, metrics: dict[str, float], last_saved: int | None) -> None:
  bad = [k for k in ("loss", "grad_norm/total") if k in metrics and not math.isfinite(metrics[k])]
  if bad:
    kept = f"the last good checkpoint (step {last_saved}) is kept" if last_saved else "no checkpoint was written"
    raise NonFiniteError(f"non-finite {' and '.join(bad)} at step {step} "
                         f"(loss={metrics.get('loss')}); stopping: {kept}")


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the summary written to summary.json."""
  start_time = time.time()
  configuration.check_fields(config)
  backend = functools.partial(_backend_after_distributed, config)
  workdir = check_workdir(config, workdir, backend)  # a rerun that would become another model is refused first
  command, config = config, keep_saved_choices(config, workdir, backend)
  configuration.validate(config, trained_as(workdir))  # a run trained before a training-only check goes on
  start_distributed(config)
  check_same_job(config, workdir)  # every process of a multi-process job was given the same command
  mesh = make_mesh(config)  # a mesh that does not fit the devices fails here, before the workdir is touched
  configuration.check_batch_devices(config, mesh.size)
  if not checkpoint_lib.has_checkpoint(workdir / "checkpoints"):  # a fresh start reads the vector file
    configuration.check_vector_file(config)
  check_not_shortened(config, workdir, NOT_SHORTENED_REMEDY)  # before the notes, which describe the run it makes
  if jax.process_index() == 0:
    for line in configuration.schedule_notes(config) + unread_notes(config, chosen_by_the_run(command, config)):
      print(line, flush=True)
  created = [d for d in (workdir, *workdir.parents) if not d.exists()]  # what this start makes, leaf first
  workdir.mkdir(parents=True, exist_ok=True)
  lock = lock_workdir(workdir)
  try:
    return _train_locked(config, workdir, mesh, start_time)
  except BaseException as e:
    if created:
      remove_unstarted(created)
    if not isinstance(e, Exception):
      raise
    full, denied = disk_full_reason(e), is_write_denied(e) or cache_not_created(e, config, workdir)
    if not (full or denied):
      raise
    ignore_abandoned_writes()
    saved = checkpoint_lib.checkpoint_steps(workdir / "checkpoints")
    resume = f"it resumes from step {saved[-1]}" if saved else "it starts over (no checkpoint was finished)"
    if full:
      what, remedy = DISK_FULL_MESSAGES[full]
      raise StorageError(f"{what.format(place=storage_place(e, workdir, config))} ({full}); what was written before "
                         f"is intact: {remedy} and rerun the command, {resume}") from None
    if in_cache_dir(denied, config, workdir):
      raise StorageError(f"{cache_dir_name(config)} {str(corpora.cache_root(config.data.cache_dir or None))!r} could "
                         f"not be written ({first_line(denied)[:200]}); give a writable directory (or make it "
                         f"writable) and rerun the command, {resume}") from None
    raise StorageError(f"a file of {str(workdir)!r} could not be written ({first_line(denied)[:200]}); what was "
                       f"written before is intact: make it writable and rerun the command, {resume}") from None
  finally:
    if lock is not None:
      lock.close()  # releases the lock (as the end of the process would)


# What a fresh start may have written before config.json (the data preparation's files, the lock, an empty
# checkpoint directory, an atomic write's temporary file): `remove_unstarted` removes these and nothing else.
UNSTARTED_FILES = (LOCK_FILE, TOKENIZER_FILE, tokenizers_lib.COUNTS_FILE, EMBEDDING_INIT_FILE, INIT_TABLE_FILE,
                   DATA_FILE)


def remove_unstarted(created: list[Path]) -> None:
  """Removes what a start that failed before writing config.json (a corpus refused once read, a tokenizer that
  cannot be trained, Ctrl-C during the data's preparation) left in the workdir this command created: the lock and
  the data preparation's files (`UNSTARTED_FILES`), then the directories of `created` (the workdir and the parents
  this command made, leaf first) that are then empty, so the corrected command starts afresh and no half-made run
  directory stays behind. Anything else in it (a data.cache_dir placed inside, which may hold a download) stays, and
  with it the directory. One process only: in a multi-process job the others share the directory."""
  workdir = created[0]
  if jax.process_count() != 1 or (workdir / CONFIG_FILE).exists():
    return
  for name in UNSTARTED_FILES:
    (workdir / name).unlink(missing_ok=True)
  for tmp in workdir.glob(".*.tmp*"):  # an atomic write cut short
    tmp.unlink(missing_ok=True)
  checkpoints = workdir / "checkpoints"
  if checkpoints.is_dir() and not checkpoint_lib.has_checkpoint(checkpoints):
    shutil.rmtree(checkpoints, ignore_errors=True)
  for directory in created:
    try:
      directory.rmdir()  # only when empty
    except OSError:
      return


# Fields a process may set for itself: where its host keeps the data cache, and how it joins the job (auto on one
# process and true on another start the same job; the timeouts are each process's own waits).
HOST_LOCAL_FIELDS = frozenset({"data.cache_dir", "mesh.distributed", "mesh.heartbeat_timeout_s", "mesh.init_timeout_s"})


def job_description(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
  """What every process of one job must agree on: the config's fields (but `HOST_LOCAL_FIELDS`), the run directory
  and this process's number of devices (the mesh and the checkpoints' layout assume equal shares)."""
  fields = {k: v for k, v in configuration.flatten(config).items() if k not in HOST_LOCAL_FIELDS}
  return {**{f"--config.{k}": v for k, v in fields.items()}, "--workdir": str(Path(workdir).resolve()),
          "local devices": jax.local_device_count()}


def job_differences(descriptions: list[dict[str, Any]], limit: int = 3) -> str | None:
  """None when every process's `job_description` equals process 0's; else one text naming the first process that
  differs and up to `limit` of its differences, each with process 0's value."""
  first = descriptions[0]
  for index, other in enumerate(descriptions[1:], start=1):
    keys = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
    if keys:
      shown = ", ".join(f"{k}={other.get(k)!r} (process 0: {first.get(k)!r})" for k in keys[:limit])
      more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
      return f"process {index} of {len(descriptions)} was started with {shown}{more}"
  return None


def check_same_job(config: ml_collections.ConfigDict, workdir: Path) -> None:
  """In a multi-process job, every process refuses in the same one line when any of them was given another config,
  run directory or number of devices: such a job would train a model that none of the configs describes (each
  process its own learning rate or seed, config.json only process 0's), or hang at its first checkpoint (two run
  directories), or fail in Orbax (unequal device shares). Before anything is written or compiled."""
  if jax.process_count() > 1:
    refuse_other_jobs(job_description(config, workdir))


# What a refusal of `refuse_other_jobs` ends with: research-evaluate passes its own.
SAME_JOB_RULE = ("every process of a job runs the same command with the same number of devices (docs/training.md, "
                 "\"Multi-process runs\")")


def refuse_other_jobs(description: dict[str, Any], rule: str = SAME_JOB_RULE,
                      error: type[Exception] = configuration.ConfigError) -> None:
  """`check_same_job`'s machinery, for any command (research-evaluate's too): every process of a multi-process job
  calls it with its own `description` (a JSON-able dict, `job_description`'s kind), and every one raises `error`
  with the same line (`job_differences`, then `rule`) when any description differs from process 0's. The device
  counts are compared first, from the device list every process sees (the all-gather needs equal shares)."""
  shares = [sum(d.process_index == i for d in jax.devices()) for i in range(jax.process_count())]
  _refuse_differences([{"local devices": share} for share in shares], rule, error)
  _refuse_differences(gather_descriptions(description), rule, error)


def gather_descriptions(description: dict[str, Any]) -> list[dict[str, Any]]:
  """Every process's `description` (JSON-able), in process order, on every process: one all-gather of its JSON,
  padded to the longest. Every process of the job must call it (each waits for the others)."""
  from jax.experimental import multihost_utils
  mine = json.dumps(description, sort_keys=True, default=repr).encode()
  longest = int(np.max(multihost_utils.process_allgather(np.array([len(mine)], np.int32))))
  padded = np.frombuffer(mine.ljust(longest, b" "), np.uint8)
  return [json.loads(row.tobytes()) for row in np.asarray(multihost_utils.process_allgather(padded))]


def _refuse_differences(descriptions: list[dict[str, Any]], rule: str = SAME_JOB_RULE,
                        error: type[Exception] = configuration.ConfigError) -> None:
  differences = job_differences(descriptions)
  if differences:
    raise error(f"{differences}: {rule}")


def stream_differences(records: list[dict[str, Any]], corpus: str) -> str | None:
  """None when every process's token streams (`data_record(splits)["splits"]`, one per process) equal process 0's;
  else the one line naming the first process whose streams differ, which ones, and `corpus` (data.corpus). The
  remedy is the corpus's, not a rerun: the same command would read the same text again."""
  for index, record in enumerate(records[1:], start=1):
    changed, differ = changed_streams(records[0], record)
    if changed:
      return (f"process {index} of {len(records)} loaded other data than process 0 from data.corpus={corpus!r}: "
              f"{differ} (a relative path read from another working directory, or a host's copy of the corpus "
              f"that differs?); make data.corpus read the same text on every host (an absolute path to one copy "
              f"on a shared file system, or identical copies), then start the job again")
  return None


def check_same_streams(config: ml_collections.ConfigDict, splits: dict[str, np.ndarray]) -> None:
  """In a multi-process job, every process refuses in the same one line (`stream_differences`) when the token
  streams it loaded differ from process 0's: each host reads data.corpus itself (a relative `text:` path resolves
  against each process's working directory, a host's local copy may differ), and each trains on its own share of
  every batch, so half of each batch would come from another text while RUN/data.json records only process 0's.
  At every start, fresh or resumed, before the token counts are written or anything trains (`gather_descriptions`
  exchanges what data.json records)."""
  if jax.process_count() == 1:
    return
  differences = stream_differences(gather_descriptions(data_record(splits)["splits"]), config.data.corpus)
  if differences:
    raise configuration.ConfigError(differences)


class StorageError(RuntimeError):
  """The run directory's device is full (or a file would exceed its size limit): a user's environment, one line."""


DISK_FULL_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
                    errno.EFBIG: "File too large"}
# What each reason says, and what to do: the errno text, as Python's OSError and TensorStore's message carry it.
DISK_FULL_MESSAGES = {
    "No space left on device": ("no space left on the device of {place}", "free space"),
    "Disk quota exceeded": ("the disk quota of {place} is exceeded", "free space or raise the quota"),
    "File too large": ("a file of {place} would exceed the largest file size allowed (the process's `ulimit -f` "
                       "or the file system's)", "raise the limit"),
    # numpy's tofile (np.save) on a short write: an OSError with no errno, so no telling which of the three it was.
    "a write was cut short": ("a write to {place} was cut short: its device is full, a quota is exceeded or a file "
                              "would exceed the largest file size allowed (`ulimit -f`)",
                              "free space or raise the limit"),
}
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def storage_place(e: BaseException, workdir: Path, config: ml_collections.ConfigDict) -> str:
  """Where a storage failure happened, for its line: the file an OSError of `e`'s chain names when it is outside the
  run directory (the data cache, often on another device), else the run directory, with the data cache beside it
  when nothing says which of the two it was (numpy's short writes name no file)."""
  named = next((x.filename for x in _exception_chain(e) if isinstance(x, OSError) and x.filename), None)
  run = Path(workdir).resolve()
  if named is not None:
    path = Path(os.fsdecode(named)).resolve()
    return repr(str(workdir)) if path == run or run in path.parents else repr(str(path))
  cache = corpora.cache_root(config.data.cache_dir or None).resolve()
  texts = " ".join(str(x) for x in _exception_chain(e))
  if str(run) in texts or cache == run or run in cache.parents:  # TensorStore's messages name the file
    return repr(str(workdir))
  if str(cache) in texts:
    return repr(str(cache))
  return f"{str(workdir)!r} or of data.cache_dir {str(cache)!r}"


def disk_full_reason(e: BaseException) -> str | None:
  """Why `e`, or an exception it was raised from or during, is a full device, as its errno text ("No space left on
  device", "Disk quota exceeded", "File too large"), or None: an OSError with ENOSPC, EDQUOT or EFBIG (Python's own
  writes), or the errno text in TensorStore's RESOURCE_EXHAUSTED / OUT_OF_RANGE messages that Orbax passes on as
  ValueError (a RESOURCE_EXHAUSTED write without it counts as a full device)."""
  for e in _exception_chain(e):
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
      return DISK_FULL_ERRNOS[e.errno]
    text = str(e)
    reason = next((t for t in DISK_FULL_ERRNOS.values() if t in text), None)
    if reason is None and "RESOURCE_EXHAUSTED" in text and "writing" in text.lower():
      reason = DISK_FULL_ERRNOS[errno.ENOSPC]
    if reason is None and isinstance(e, OSError) and e.errno is None and _SHORT_WRITE.search(text):
      reason = "a write was cut short"
    if reason is not None:
      return reason
  return None


def is_disk_full(e: BaseException) -> bool:
  """Whether `e` is a full device (`disk_full_reason`)."""
  return disk_full_reason(e) is not None


def _exception_chain(e: BaseException | None):
  """`e`, then the exceptions it was raised from or during (`__cause__`, else `__context__`), each once."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


WRITE_DENIED_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def is_write_denied(e: BaseException) -> BaseException | None:
  """The OSError of a denied write (permissions, a read-only mount) that `e` was raised from or during, or None."""
  return next((x for x in _exception_chain(e) if isinstance(x, OSError) and x.errno in WRITE_DENIED_ERRNOS), None)


def cache_not_created(e: BaseException, config: ml_collections.ConfigDict, workdir: Path) -> OSError | None:
  """The FileNotFoundError of a data cache directory that cannot be created where its parent exists (a directory of
  /proc, say: mkdir answers ENOENT there), for the cache's own one line; None for anything else."""
  return next((x for x in _exception_chain(e) if isinstance(x, FileNotFoundError)
               and in_cache_dir(x, config, workdir)), None)


class _OrbaxStorageNoise(logging.Filter):
  """Drops the errors Orbax's background save threads log (and asyncio's "Task exception was never retrieved" for
  the writes they abandon), traceback and all, when what failed is a full device or a denied write: the main
  thread's wait for the save raises the same exception, and `train` turns it into its one line (StorageError). Any
  other record, Orbax's other errors included, passes."""

  def filter(self, record: logging.LogRecord) -> bool:
    ours = record.name == "asyncio" or f"{os.sep}orbax{os.sep}" in record.pathname
    if record.levelno < logging.ERROR or not ours:
      return True
    exc = record.exc_info[1] if record.exc_info else ValueError(record.getMessage())
    return not (exc is not None and (is_disk_full(exc) or is_write_denied(exc)))


def _unraisable_without_closed_loops(default: Callable) -> Callable:
  """sys.unraisablehook that drops TensorStore's callbacks into the event loop Orbax closed after a failed write
  (RuntimeError "Event loop is closed", one traceback per pending write) and passes everything else to `default`."""
  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      default(unraisable)
  hook.quiet_closed_loops = True
  return hook


def quiet_storage_failures() -> None:
  """For research-train's process: a full device or a denied write in a checkpoint's background save prints the
  run's one line only, not Orbax's thread tracebacks before it (see `_OrbaxStorageNoise`). Idempotent."""
  from absl import logging as absl_logging
  for logger in (absl_logging.get_absl_logger(), logging.getLogger("asyncio")):
    if not any(isinstance(f, _OrbaxStorageNoise) for f in logger.filters):
      logger.addFilter(_OrbaxStorageNoise())
  if not getattr(sys.unraisablehook, "quiet_closed_loops", False):
    sys.unraisablehook = _unraisable_without_closed_loops(sys.unraisablehook)


def ignore_abandoned_writes() -> None:
  """After a failed write: Python's "coroutine ... was never awaited" warnings, printed when the interpreter collects
  the writes Orbax's serializer created and abandoned (`async_serialize_from_host`'s fragments; the exit is when,
  so the race decides whether any is left), are not printed after the run's one line."""
  warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)


def check_writable(directory: str | os.PathLike) -> None:
  """One line when `directory` (or, while it does not exist yet, its parent) cannot be written: a read-only mount,
  another user's run. research-evaluate and research-analyze call it for RUN/eval before they compute anything, so
  no evaluation is lost at the final write. A missing parent is left to the callers' own checks."""
  directory = Path(directory)
  if directory.exists() and not directory.is_dir():  # a file where RUN/eval goes: mkdir fails after the work
    raise configuration.ConfigError(f"{str(directory)!r} is not a directory; results are written in it: move the "
                                    f"file away")
  target = directory if directory.exists() else directory.parent
  if not target.is_dir():
    return
  why = unwritable(target)
  if why:
    raise configuration.ConfigError(f"{str(target)!r} is not writable ({why}); results are written there")


def lock_workdir(workdir: Path):
  """An exclusive lock on RUN/.lock for the trainer's lifetime (process 0 of a job: the other processes of a
  multi-process run share the workdir by design), so that a second research-train in the same workdir (the command
  launched twice) fails in one line instead of interleaving checkpoints and logs. flock: the kernel drops it when
  the process ends, kill -9 included, so no stale lock is ever left. Returns the open file, or None."""
  if jax.process_index() != 0:
    return None
  import fcntl
  import socket
  try:
    f = open(workdir / LOCK_FILE, "a+")
  except OSError as e:  # a read-only mount, a directory of another user: before anything is read or compiled
    raise configuration.ConfigError(f"workdir {str(workdir)!r} is not writable ({e.strerror}); a run writes its "
                                    f"checkpoints and logs there") from None
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip()
    f.close()
    raise configuration.ConfigError(f"workdir {str(workdir)!r} is in use by another research-train "
                                    f"({holder or 'a running process'}); wait for it to end, or use another workdir")
  f.truncate(0)
  f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
  f.flush()
  return f


def _train_locked(config: ml_collections.ConfigDict, workdir: Path, mesh, start_time: float) -> dict[str, Any]:
  data = prepare_data(config, workdir)
  trainer = Trainer.build(config, data.vocab_size, mesh, char_ids=char_ids(config, data.tokenizer),
                          train_counts=data.train_counts)
  trainer.check_memory()  # before the vector file is read, config.json written or anything compiled
  t = config.train
  table, table_report = None, None
  if config.model.embed_init == "pretrained" and not checkpoint_lib.has_checkpoint(workdir / "checkpoints"):
    # Fresh start only: a resumed run's table is in its checkpoint, and the vector file is never read again.
    table, table_report = pretrained_table(config, data, workdir)
  data_json = check_resume(config, workdir, data)
  reopen = functools.partial(checkpoint_lib.Checkpointer, workdir / "checkpoints", keep=t.keep_checkpoints,
                             keep_best=True, async_save=t.async_checkpoints)
  checkpointer = open_checkpointer(workdir, reopen)
  last_saved = checkpointer.latest_step()
  if last_saved is None:
    # (a resume's come once its checkpoint restored)
    run_config = write_run_records(config, workdir, data, data_json, resumed=False)
  if last_saved is None and table is None and config.model.embed_init == "pretrained":
    table, table_report = pretrained_table(config, data, workdir)  # only if the disk and Orbax ever disagree

  state = trainer.init_state()
  if table is not None:
    state = with_table(state, table)
    if jax.process_index() == 0:
      atomic_write_json(workdir / EMBEDDING_INIT_FILE, table_report)
      print(pretrained_lib.summary_line(table_report), flush=True)
  if last_saved is None:
    write_init_table(workdir, state)  # fresh start only: a resumed run's first table is already there
    if table is None and jax.process_index() == 0:  # a coverage report left by a failed start of another config
      (workdir / EMBEDDING_INIT_FILE).unlink(missing_ok=True)
  iterator = train_batches(config, data)
  # Host-side progress that a checkpoint carries, so that a resumed run reports the same figures: with the sums of
  # the log window open at the checkpoint (a checkpoint between two log lines), the next line averages the same steps.
  progress_state = {"tokens_seen": 0.0, "wall_s": 0.0, "train_loss": None,
                    **{f"window_{key}": 0.0 for key in WINDOW_MEANS}, "window_count": 0}
  if last_saved is not None:
    checkpointer, last_saved, state, saved = restore_newest_good(checkpointer, workdir, state, reopen)
    try:
      iterator.set_state(saved["iterator"])
    except ValueError as e:  # e.g. another data.train_fraction: the checkpoint's position is in other data
      checkpointer.close()
      raise configuration.ConfigError(f"workdir {str(workdir)!r} holds a run over other training data (was "
                                      f"data.train_fraction changed?); use a new workdir. {e}") from None
    progress_state.update({k: saved[k] for k in progress_state if k in saved})
    run_config = write_run_records(config, workdir, data, data_json, resumed=True)
  start_step = int(state.step)
  num_params = count_params(state.params)
  log = MetricsLog(workdir, start_step)
  bar = _progress(t.steps, start_step)
  schedule = optim.make_schedule(t)
  last_train: dict[str, float] = {}
  valid: dict[str, float] = {}
  pending = None  # (step, device metrics) of the step dispatched last: read only after the next dispatch
  clock = {"time": time.time(), "tokens": 0.0}  # tokens_per_s: input tokens over wall clock since the last line

  def drain():
    """Reads the pending step's metrics: accumulate, check finiteness, log at log_every."""
    nonlocal pending, last_train
    if pending is None:
      return
    step, device_metrics = pending
    pending = None
    m = _floats(device_metrics)
    check_finite(step, m, last_saved)
    progress_state["tokens_seen"] += m["input_tokens"]
    clock["tokens"] += m["input_tokens"]
    accumulate_window(progress_state, m)
    if step % t.log_every == 0 or step == t.steps:
      elapsed = max(time.time() - clock["time"], 1e-9)
      last_train = window_record(m, progress_state, tokens_per_s=clock["tokens"] / elapsed)
      progress_state["train_loss"] = last_train["loss"]
      log.write(train_record(step, last_train, progress_state["tokens_seen"]))
      bar.set_postfix(loss="n/a" if last_train["loss"] is None else f"{last_train['loss']:.3f}",
                      tok_s=f"{last_train['tokens_per_s']:.0f}")
      clock.update(time=time.time(), tokens=0.0)
      progress_state.update({f"window_{key}": 0.0 for key in WINDOW_MEANS}, window_count=0)

  try:
    for step in range(start_step + 1, t.steps + 1):
      interrupts.check()  # a Ctrl-C whose KeyboardInterrupt a callback swallowed (JAX's gc hook) still ends the run
      batch = next(iterator)
      check_ids(batch["inputs"], data.vocab_size)
      state, metrics = trainer.train_step(state, mesh_lib.shard_batch(batch, trainer.mesh))
      drain()  # step − 1, while step runs
      pending = (step, metrics)
      bar.update(1)
      evaluate_now = step % t.eval_every == 0 or step == t.steps
      save_now = step % t.checkpoint_every == 0 or step == t.steps
      # Every checkpoint carries its validation loss, so "the best by validation loss" is always defined.
      evaluate_now = evaluate_now or save_now
      if evaluate_now:
        drain()  # never evaluate or save a state whose loss we have not checked
        valid = trainer.evaluate(state.params, data.splits["valid"])
        log.write(valid_record(step, valid, float(schedule(step - 1))))  # the step's train line's lr
      if save_now:
        progress_state["wall_s"] += time.time() - start_time
        start_time = time.time()
        data_state = {"iterator": iterator.get_state(), **progress_state}
        checkpointer.save(step, state, data_state, {"valid_loss": ranking_loss(valid)},
                          metadata={"config": run_config})  # config.json's text: a copy to restore it from
        log.flush()
        last_saved = step
    drain()
  finally:
    bar.close()
    try:
      checkpointer.wait()  # raises what a background save met (a permission error, a full disk)
    finally:
      checkpointer.close()  # else its threads keep the process from ever exiting
      log.close()

  finished = finished_summary(workdir, start_step) if int(state.step) == start_step else None
  if finished is not None:  # a rerun of a finished run trains nothing: its figures stand as measured at its end
    if start_step > 0 and not any(r.get("split") == "valid" and r.get("step") == start_step
                                  for r in read_metrics(log.path)):
      # its final validation line was torn: written again (summary.json's best was drawn from the whole log), unless
      # today's code would score it otherwise than the lines before it (an MLM run validated under an older rule)
      rule = run_fields.outdated_mlm_validation(read_saved_config(workdir))
      if rule is None:
        valid = trainer.evaluate(state.params, data.splits["valid"])
        log.write_missing_valid(valid_record(start_step, valid, float(schedule(start_step - 1))))
      elif jax.process_index() == 0:
        print(f"note: metrics.jsonl lacks the final validation line (step {start_step}); not written again: this "
              f"run's validation used {rule}, today's code masks per row (summary.json holds the figure)", flush=True)
    return finished
  if not valid:  # e.g. steps == 0, or resumed at the end without summary.json (a crash after the last checkpoint)
    valid = trainer.evaluate(state.params, data.splits["valid"])
    if int(state.step) > 0:  # resumed at the end: a metrics.jsonl whose last line was torn lacks it
      log.write_missing_valid(valid_record(int(state.step), valid, float(schedule(int(state.step) - 1))))
  if not valid.get("tokens") and jax.process_index() == 0:
    why = " (an MLM scores only the tokens it masks, about data.mlm_select_rate of them)" \
        if config.objective == "mlm" else ""
    print(f"note: the validation split ({data.splits['valid'].size} tokens) gave no target to score{why}: "
          f"valid_loss=0 and valid_ppl=1 say nothing; use a larger corpus", flush=True)
  if int(state.step) > start_step:  # (else the checkpoint's: a finished run's summary.json is missing)
    progress_state["wall_s"] += time.time() - start_time
  summary = summary_record(step=int(state.step), train_loss=progress_state["train_loss"], valid=valid,
                           tokens_seen=progress_state["tokens_seen"], num_params=num_params,
                           num_embedding_params=count_embedding_params(state.params),
                           vocab_size=data.vocab_size, wall_s=progress_state["wall_s"],
                           best=best_validation(log.path, int(state.step), valid), objective=config.objective)
  write_update_counts(workdir, state.counts, int(state.step))
  write_summary(workdir, summary)  # last: its presence means "finished"
  return summary
