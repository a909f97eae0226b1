"""Token cache, packed training batches with a saveable position, evaluation batches, MLM masking.

Token stream. Each split is cached as ONE flat id array: `[SEP] doc1 [SEP] doc2 [SEP] … docN [SEP]`. The leading
[SEP] makes the first token of every document a CLM target, conditioned on a separator, like GPT's <|endoftext|>.

Batch format (every iterator here yields dicts of numpy arrays, B = batch size, L = sequence length):
  inputs     int32   [B, L]  token ids fed to the model ([PAD]=0 where a row or a window ends early)
  targets    int32   [B, L]  CLM: the next token; MLM: the same as inputs (mask with `mask_tokens`)
  positions  int32   [B, L]  arange(L) in every row; NOT reset at document boundaries inside a packed row (the train
                             step resets them with data.document_positions=reset: `document_positions` below)
  weights    float32 [B, L]  1 where the target is scored, 0 on padding

CLM packing: window k covers stream[k·L : k·L + L + 1]; inputs = window[:-1], targets = window[1:]. Windows
overlap by one token, so every target (stream[1:]) belongs to exactly one window; the last window is padded.
MLM packing: row k is `[CLS] stream[k·(L-2) : (k+1)·(L-2)] [SEP]`, the last one padded after its [SEP].
Training order: each epoch, a permutation of all rows seeded by (seed, epoch); host h of P takes rows h, h+P, …
of it; every host then pads to the same number of full batches with empty rows (weights 0). So within an
epoch, over all hosts, every target token is scored exactly once, and all hosts take the same number of steps.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.data import passkey
from research.data.corpora import (CORPUS_VERSION, SPLITS, Corpus, CorpusError, atomic_write_text, cache_root,
                                   corpus_fingerprint, load_corpus)
from research.data.tokenizers import (CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_IDS, encode_ids, fingerprint)

# Bump whenever the stream layout or encoding changes: part of the token-cache key.
TOKEN_CACHE_VERSION = "1"
OBJECTIVES = ("clm", "mlm")
EVAL_MODES = ("nonoverlapping", "sliding")
Batch = dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------------------------
# token cache


def id_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def encode_split(tokenizer, docs: Sequence[str]) -> np.ndarray:
  """One flat stream `[SEP] doc1 [SEP] … docN [SEP]` in the smallest unsigned dtype that holds the vocabulary."""
  dtype = id_dtype(tokenizer.get_vocab_size(with_added_tokens=True))
  pieces = [np.array([SEP_ID], dtype)]
  for ids in encode_ids(tokenizer, list(docs)):
    pieces.append(np.asarray(ids, dtype))
    pieces.append(np.array([SEP_ID], dtype))
  return np.concatenate(pieces)


def encode_splits(corpus: Corpus, tokenizer) -> dict[str, np.ndarray]:
  return {s: encode_split(tokenizer, corpus.split(s)) for s in SPLITS}


def cache_key(corpus_spec: str, tokenizer_key: str, errors: str = "strict", *, corpus: Corpus | None = None) -> str:
  """Hash of (corpus spec, tokenizer settings, code versions, and for `text:` the errors policy and the files'
  fingerprint): any change gives a new cache directory. The fingerprint is `corpus.fingerprint` when the loaded
  corpus is given (the bytes its documents were cut from: a file edited since then must not file these documents'
  tokens under the new content's key), else the files are read for it (`corpora.corpus_fingerprint`)."""
  parts = {"corpus": corpus_spec, "tokenizer": tokenizer_key, "corpus_version": CORPUS_VERSION,
           "token_cache_version": TOKEN_CACHE_VERSION}
  if corpus_spec.startswith("text:"):
    # Only local files are decoded under `errors` (see load_corpus); keying the other specs on it would make two
    # callers that pass different (irrelevant) policies build two identical caches.
    parts["errors"] = errors
    loaded = corpus.fingerprint if corpus is not None else None
    parts["files"] = loaded if loaded is not None else corpus_fingerprint(corpus_spec)
  if corpus_spec == "passkey":  # generated: its documents change with the generator's own version
    parts["passkey_version"] = passkey.CORPUS_VERSION
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def build_or_load_cache(corpus_spec: str, tokenizer, tokenizer_key: str | None = None, cache_dir=None, *,
                        corpus: Corpus | None = None, errors: str = "strict") -> dict[str, np.ndarray]:
  """Memory-mapped token streams of every split, tokenized once per key.

  `tokenizer_key` defaults to a hash of the tokenizer's JSON (so a retrained tokenizer gets a new cache); passing
  it explicitly lets a cache hit skip touching the tokenizer at all. `corpus` avoids re-loading a corpus already
  in memory; it must be the one `corpus_spec` and `errors` give. For `text:` specs the key covers the errors
  policy and each file's path and content hash, so an edited file rebuilds (`corpora.corpus_fingerprint`).
  Layout: <cache_root>/tokens/<key>/{train,valid,test}.npy and meta.json; the directory is renamed into place in
  one step, so a crash never leaves half a cache. An entry that does not load (no or an unreadable meta.json, a
  truncated stream, a changed checksum) is damaged: moved aside and built again, with a note.
  """
  if tokenizer_key is None:
    tokenizer_key = fingerprint(tokenizer)
  key = cache_key(corpus_spec, tokenizer_key, errors, corpus=corpus)
  root = cache_root(cache_dir) / "tokens"
  final = root / key
  if os.path.lexists(final):  # renamed into place whole, meta.json last written: an entry without one is damaged
    try:
      return _load_streams(final)
    except (OSError, ValueError, KeyError, TypeError) as e:  # a truncated file (a full disk), a damaged meta.json
      why = " ".join(str(e).split())[:200]
    denied = _move_aside(final, root, key)
    if denied is not None:  # raised here, outside the handler: the one line is about the damage, not the write
      raise TokenCacheError(
          f"the token cache {str(final)!r} is damaged ({why}) and cannot be built again: the data cache "
          f"{str(root.parent)!r} (data.cache_dir) cannot be written ({denied}); make it writable, or give "
          f"data.cache_dir a writable directory, and rerun")
    print(f"note: the token cache {str(final)!r} is damaged ({why}); tokenizing the corpus again", flush=True)
  if not (final / "meta.json").exists():
    corpus = corpus if corpus is not None else load_corpus(corpus_spec, errors=errors, cache_dir=cache_dir)
    streams = encode_splits(corpus, tokenizer)
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}."))
    writing = os.open(tmp, os.O_RDONLY)
    fcntl.flock(writing, fcntl.LOCK_EX)  # held while this process builds here: `remove_abandoned` leaves it alone
    try:
      for s, ids in streams.items():
        np.save(tmp / f"{s}.npy", ids)
      meta = {"corpus": corpus_spec, "tokenizer": tokenizer_key, "corpus_version": CORPUS_VERSION, "errors": errors,
              "token_cache_version": TOKEN_CACHE_VERSION, "vocab_size": tokenizer.get_vocab_size(),
              "num_tokens": {s: int(v.size) for s, v in streams.items()},
              "sha256": {s: stream_sha256(v) for s, v in streams.items()}}
      (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
      try:
        os.replace(tmp, final)
      except OSError:  # another process won the race (final exists and is non-empty): use its copy
        if not (final / "meta.json").exists():
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
      os.close(writing)
  return _load_streams(final)


ABANDONED_AFTER_S = 3600


def remove_abandoned(root: Path, min_age_s: float = ABANDONED_AFTER_S) -> list[Path]:
  """Removes the temporary directories of token-cache builds that were killed (`<root>/.<key>.*`, which a build
  renames into place or removes when it ends): those that no process holds locked (a build holds its directory's
  flock, which the system releases when the process dies) and that are older than `min_age_s` (a directory made
  an instant ago may not be locked yet; a pre-lock build's directory is left until then). Returns what it removed;
  what cannot be looked at or removed is left alone."""
  removed = []
  now = time.time()
  for path in root.glob(".*"):
    try:
      if not path.is_dir() or path.is_symlink() or now - path.stat().st_mtime < min_age_s:
        continue
      handle = os.open(path, os.O_RDONLY)
    except OSError:
      continue
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # its writer is alive
      continue
    else:
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
    finally:
      os.close(handle)
  return removed


class TokenCacheError(CorpusError):
  """A damaged token cache that cannot be built again where it lies (the data cache cannot be written): a user
  error, one line naming the cache and what to do."""


def _move_aside(final: Path, root: Path, key: str) -> str | None:
  """Moves the damaged cache `final` out of the way and removes it, so that it is built again; None when done (or
  when another process moved it first), else the first line of the OSError that kept it there (the cache cannot
  be written: a read-only mount, no permission)."""
  try:
    aside = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.damaged."))
  except OSError as e:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
  try:
    os.replace(final, aside / key)
  except FileNotFoundError:  # another process moved or rebuilt it first
    pass
  except OSError as e:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
  finally:
    shutil.rmtree(aside, ignore_errors=True)
  return None


def stream_sha256(ids: np.ndarray) -> str:
  """SHA-256 of a stream's bytes (its ids in the cache's dtype), as meta.json keeps it."""
  return hashlib.sha256(np.ascontiguousarray(ids)).hexdigest()


def _load_streams(final: Path) -> dict[str, np.ndarray]:
  """The cached streams, memory-mapped, each as long as meta.json says (np.load refuses a truncated array file;
  a shorter one with a rewritten header would pass it) and with the SHA-256 meta.json recorded when it was built
  (a flipped bit holds valid ids, and would be trained on); a ValueError without meta.json. A cache built before
  the checksums were kept is not built again (a read-only one could not be): its lengths are checked, and
  `_record_checksums` adds those of its streams as they are."""
  try:
    meta = json.loads((final / "meta.json").read_text())
  except FileNotFoundError:  # an entry is renamed into place with its meta.json: one without it was damaged since
    raise ValueError("no meta.json") from None
  counts = meta["num_tokens"]
  streams = {s: np.load(final / f"{s}.npy", mmap_mode="r") for s in SPLITS}
  short = [s for s in SPLITS if streams[s].size != int(counts[s])]
  if short:
    raise ValueError(f"{short[0]}.npy holds {streams[short[0]].size} tokens, meta.json says {counts[short[0]]}")
  if "sha256" not in meta:
    _record_checksums(final, meta, streams)
    return streams
  changed = [s for s in SPLITS if stream_sha256(streams[s]) != meta["sha256"][s]]
  if changed:
    raise ValueError(f"{changed[0]}.npy's checksum is not the one meta.json recorded when it was built")
  return streams


def _record_checksums(final: Path, meta: dict, streams: Mapping[str, np.ndarray]) -> None:
  """Adds the SHA-256 of `streams` as they are to the meta.json of a cache built before checksums were kept
  (atomically: a concurrent reader sees the old or the new file), with a note; later loads verify them. A cache
  that cannot be written (a read-only mount) is used unchecked, as before the checksums, without a word."""
  checked = {**meta, "sha256": {s: stream_sha256(streams[s]) for s in SPLITS}}
  try:
    atomic_write_text(final / "meta.json", json.dumps(checked, indent=1))
  except OSError:
    return
  print(f"note: the token cache {str(final)!r} had no checksums (built before they were kept); its meta.json now "
        f"records those of its streams as they are", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# row assembly (shared by training and evaluation)


def _clm_rows(ids: np.ndarray, starts: np.ndarray, length: int) -> Batch:
  """Rows whose inputs start at `starts` (−1 = an empty row); targets are shifted by one."""
  n = ids.shape[0]
  idx = starts[:, None] + np.arange(length + 1)[None, :]
  valid = (starts[:, None] >= 0) & (idx < n)
  tokens = np.where(valid, ids[np.clip(idx, 0, n - 1)], PAD_ID).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": _positions(len(starts), length),
          "weights": valid[:, 1:].astype(np.float32)}


def _mlm_rows(ids: np.ndarray, rows: np.ndarray, length: int) -> Batch:
  """[CLS] chunk [SEP] [PAD]… for chunk index `rows` (−1 = an empty row)."""
  n, body = ids.shape[0], length - 2
  idx = rows[:, None] * body + np.arange(body)[None, :]
  valid = (rows[:, None] >= 0) & (idx < n)
  chunk = np.where(valid, ids[np.clip(idx, 0, n - 1)], PAD_ID).astype(np.int32)
  b = len(rows)
  tokens = np.zeros((b, length), np.int32)
  tokens[:, 0] = CLS_ID
  tokens[:, 1:-1] = chunk
  used = valid.sum(axis=1)
  tokens[np.arange(b), used + 1] = SEP_ID
  tokens[rows < 0] = PAD_ID
  weights = (np.arange(length)[None, :] < (used + 2)[:, None]) & (rows[:, None] >= 0)
  return {"inputs": tokens, "targets": tokens.copy(), "positions": _positions(b, length),
          "weights": weights.astype(np.float32)}


def _positions(rows: int, length: int) -> np.ndarray:
  return np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy()


def pad_rows(batch: Batch, multiple: int) -> Batch:
  """`batch` with empty rows appended until its row count is a multiple of `multiple` (so that it divides evenly
  over devices): [PAD] tokens, arange positions and zero weights, the rows `eval_batches` and `_mlm_rows` already
  use for "no window", which add nothing to any loss sum."""
  rows = next(iter(batch.values())).shape[0]
  extra = -rows % multiple
  if not extra:
    return batch
  out = {}
  for key, value in batch.items():
    if key == "positions":
      fill = _positions(extra, value.shape[1]).astype(value.dtype)
    else:
      fill = np.full((extra, *value.shape[1:]), PAD_ID if np.issubdtype(value.dtype, np.integer) else 0, value.dtype)
    out[key] = np.concatenate([np.asarray(value), fill])
  return out


def num_clm_windows(num_tokens: int, length: int) -> int:
  """Windows of `length` targets needed to cover the num_tokens − 1 targets of a stream."""
  return -(-(num_tokens - 1) // length)


def num_rows(num_tokens: int, length: int, objective: str) -> int:
  """Training rows of `length` one epoch of a stream of `num_tokens` packs into (`PackedBatches`): CLM windows, or
  MLM `[CLS] … [SEP]` rows of length − 2 stream tokens each."""
  return num_clm_windows(num_tokens, length) if objective == "clm" else -(-num_tokens // (length - 2))


def stream_counts(ids: np.ndarray, vocab_size: int, *, seq_len: int, objective: str) -> np.ndarray:
  """How often each id occurs in one epoch of the training rows packed from the stream `ids` (int64 [vocab_size]):
  the stream's tokens, the [SEP] between documents included, and for MLM each row's [CLS] and closing [SEP]. These
  are a run's training counts (`RUN/token_counts.npy`): what the model reads, after data.train_fraction's cut."""
  counts = np.zeros(vocab_size, np.int64)
  chunk = 1 << 24  # bincount of a memory-mapped stream a slice at a time (int64 copies of 16 M ids: 128 MiB)
  for start in range(0, len(ids), chunk):
    counts += np.bincount(np.asarray(ids[start:start + chunk], np.int64), minlength=vocab_size)[:vocab_size]
  if objective == "mlm":
    rows = num_rows(len(ids), seq_len, objective)
    counts[CLS_ID] += rows
    counts[SEP_ID] += rows
  return counts


# ----------------------------------------------------------------------------------------------------------------
# training batches


class PackedBatches:
  """Shuffled, packed, per-host batches of one token stream, for `objective` 'clm' or 'mlm'.

  An iterator (`next(it)`); `num_epochs=None` runs forever. `get_state()` returns a small JSON-serialisable dict;
  `set_state(state)` on an iterator built with the same arguments resumes with exactly the remaining batches, and on
  one built for another number of hosts with the same global batch, with the same remaining rows per step.
  """

  def __init__(self, ids: np.ndarray, seq_len: int, batch_size: int, *, objective: str = "clm", seed: int = 0,
               process_index: int = 0, process_count: int = 1, shuffle: bool = True,
               num_epochs: int | None = None):
    if objective not in OBJECTIVES:
      raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    if seq_len < (3 if objective == "mlm" else 1):
      raise ValueError(f"seq_len={seq_len} is too short for {objective!r}")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be positive")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    ids = np.asarray(ids) if not isinstance(ids, np.ndarray) else ids
    if ids.ndim != 1 or ids.shape[0] < 2:
      raise ValueError(f"ids must be a 1-D stream of at least 2 tokens, got shape {ids.shape}")
    self.ids, self.seq_len, self.batch_size, self.objective = ids, seq_len, batch_size, objective
    self.seed, self.process_index, self.process_count = seed, process_index, process_count
    self.shuffle, self.num_epochs = shuffle, num_epochs
    self.num_rows = num_rows(ids.shape[0], seq_len, objective)
    rows_per_host = -(-self.num_rows // process_count)
    self.steps_per_epoch = -(-rows_per_host // batch_size)
    self.epoch, self.index = 0, 0
    self._order_epoch, self._order = None, None

  def _host_order(self, epoch: int) -> np.ndarray:
    """This host's rows for `epoch`, padded with −1 to steps_per_epoch × batch_size."""
    if self._order_epoch != epoch:
      order = (np.random.default_rng([self.seed, epoch]).permutation(self.num_rows) if self.shuffle
               else np.arange(self.num_rows))
      mine = order[self.process_index::self.process_count]
      padded = np.full(self.steps_per_epoch * self.batch_size, -1, np.int64)
      padded[:len(mine)] = mine
      self._order_epoch, self._order = epoch, padded
    return self._order

  def batch(self, epoch: int, index: int) -> Batch:
    """Batch `index` of `epoch` on this host, without moving the iterator."""
    rows = self._host_order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
    if self.objective == "clm":
      return _clm_rows(self.ids, np.where(rows >= 0, rows * self.seq_len, -1), self.seq_len)
    return _mlm_rows(self.ids, rows, self.seq_len)

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    if self.num_epochs is not None and self.epoch >= self.num_epochs:
      raise StopIteration
    out = self.batch(self.epoch, self.index)
    self.index += 1
    if self.index == self.steps_per_epoch:
      self.epoch, self.index = self.epoch + 1, 0
    return out

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "objective": self.objective,
            "num_rows": self.num_rows, "seq_len": self.seq_len, "batch_size": self.batch_size,
            "process_index": self.process_index, "process_count": self.process_count}

  def set_state(self, state: Mapping) -> None:
    """Resume at `state`, saved by any host of a run over the same rows (objective, length, stream size) with the
    same global batch (batch_size × process_count), on this or any other number of hosts: step i of an epoch covers
    rows [i·B, (i+1)·B) of the epoch's permutation across all hosts, however many there are (docs/data.md), so
    (epoch, index) means the same batches everywhere."""
    for field in ("objective", "seq_len", "num_rows"):
      if field in state and state[field] != getattr(self, field):
        raise ValueError(f"cannot restore iterator state: {field}={state[field]!r} in the state but "
                         f"{getattr(self, field)!r} here")
    if "batch_size" in state:
      saved = int(state["batch_size"]) * int(state.get("process_count", 1))
      here = self.batch_size * self.process_count
      if saved != here:
        raise ValueError(f"cannot restore iterator state: a global batch of {saved} rows (batch_size="
                         f"{state['batch_size']} x process_count={state.get('process_count', 1)}) in the state but "
                         f"{here} here (batch_size={self.batch_size} x process_count={self.process_count})")
    index = int(state["index"])
    if not 0 <= index < self.steps_per_epoch:
      raise ValueError(f"cannot restore iterator state: index={index} not in [0, {self.steps_per_epoch})")
    self.seed, self.epoch, self.index = int(state.get("seed", self.seed)), int(state["epoch"]), index
    self._order_epoch = None


class ClmBatches(PackedBatches):
  """Causal LM batches: see the module docstring."""

  def __init__(self, ids, seq_len, batch_size, **kwargs):
    super().__init__(ids, seq_len, batch_size, objective="clm", **kwargs)


class MlmBatches(PackedBatches):
  """Masked LM batches of unmasked `[CLS] … [SEP]` rows; apply `mask_tokens` to `inputs` in the train step."""

  def __init__(self, ids, seq_len, batch_size, **kwargs):
    super().__init__(ids, seq_len, batch_size, objective="mlm", **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# evaluation batches


def eval_window_starts(num_tokens: int, length: int, mode: str = "nonoverlapping",
                       stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(input start, first scored column) of every evaluation window over a stream of `num_tokens`.

  nonoverlapping: windows at 0, L, 2L, …, all columns scored. sliding (stride S ≤ L): windows at 0, S, 2S, …; the
  first scores all L targets, each later one only its last S (targets w·S+L−S+1 … w·S+L), so every target of
  stream[1:] is scored exactly once; the last window may run past the end and is padded (weights 0).
  """
  if mode not in EVAL_MODES:
    raise ValueError(f"unknown eval mode {mode!r}; valid: {', '.join(EVAL_MODES)}")
  if length < 1:
    raise ValueError(f"length={length} must be positive")
  targets = num_tokens - 1
  if mode == "nonoverlapping":
    n = num_clm_windows(num_tokens, length)
    return np.arange(n) * length, np.zeros(n, np.int64)
  if stride is None or not 1 <= stride <= length:
    raise ValueError(f"sliding mode needs 1 <= stride <= length={length}, got stride={stride}")
  n = 1 + max(0, -(-(targets - length) // stride))
  first = np.full(n, length - stride)
  first[0] = 0
  return np.arange(n) * stride, first


def eval_batches(ids: np.ndarray, length: int, batch_size: int, mode: str = "nonoverlapping",
                 stride: int | None = None, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Batch]:
  """Evaluation batches in the standard format; `weights` marks the scored targets (see eval_window_starts).

  With several hosts, host h takes windows h, h+P, …; all hosts yield the same number of batches.
  """
  if len(ids) < 2:
    raise ValueError(f"cannot evaluate a stream of {len(ids)} token(s)")
  starts, first = eval_window_starts(len(ids), length, mode, stride)
  starts, first = starts[process_index::process_count], first[process_index::process_count]
  per_host = -(-num_eval_windows(len(ids), length, mode, stride) // process_count)
  for b in range(-(-per_host // batch_size)):
    s = np.full(batch_size, -1, np.int64)
    f = np.zeros(batch_size, np.int64)
    chunk = slice(b * batch_size, (b + 1) * batch_size)
    s[:len(starts[chunk])], f[:len(first[chunk])] = starts[chunk], first[chunk]
    batch = _clm_rows(ids, s, length)
    batch["weights"] *= (np.arange(length)[None, :] >= f[:, None])
    yield batch


def num_eval_windows(num_tokens: int, length: int, mode: str = "nonoverlapping", stride: int | None = None) -> int:
  return len(eval_window_starts(num_tokens, length, mode, stride)[0])


# ----------------------------------------------------------------------------------------------------------------
# document boundaries inside a row (data.document_positions, data.document_mask; docs/data.md)
#
# A [SEP] opens the document that follows it: it is that document's first token (position 0, like a <bos>), so in
# a CLM row the [SEP] whose output predicts a document's first token sees nothing of the document before it. Pure
# jnp on the batch's token ids (jit-able), so training and evaluation derive them the same way from any row.


def document_ids(tokens_BxL, separator: int = SEP_ID):
  """int32 [B, L]: the number of separators at or before each column, i.e. which document of the row the token
  belongs to (0 for the tail of a document that began in an earlier row). Two tokens of a row share a document
  exactly when their ids are equal."""
  return jnp.cumsum(jnp.asarray(tokens_BxL) == separator, axis=1, dtype=jnp.int32)


def document_positions(tokens_BxL, positions_BxL, separator: int = SEP_ID):
  """positions − the position of the document's first token in the row: every separator gets 0 and positions count
  up from it to the next one; a document that began in an earlier row counts from the row's first column."""
  tokens_BxL, positions_BxL = jnp.asarray(tokens_BxL), jnp.asarray(positions_BxL)
  columns_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1], dtype=jnp.int32), tokens_BxL.shape)
  starts_BxL = jax.lax.cummax(jnp.where(tokens_BxL == separator, columns_BxL, 0), axis=1)
  return positions_BxL - jnp.take_along_axis(positions_BxL, starts_BxL, axis=1)


# ----------------------------------------------------------------------------------------------------------------
# MLM masking


def mask_tokens(rng: jax.Array, tokens: jax.Array, *, vocab_size: int, select_rate: float = 0.15,
                mask_rate: float = 0.8, random_rate: float = 0.1, special_ids: Sequence[int] = SPECIAL_IDS,
                mask_id: int = MASK_ID) -> tuple[jax.Array, jax.Array, jax.Array]:
  """BERT masking: returns (inputs, targets, weights), pure jnp, jit-able.

  Each non-special token is selected with probability `select_rate`; a selected token becomes [MASK] with
  probability `mask_rate`, a uniformly random non-special id with probability `random_rate`, and stays unchanged
  otherwise. targets = tokens; weights (float32) = 1 exactly on the selected tokens. Special ids (padding
  included) are never selected. `vocab_size` and `special_ids` must be static under jit.
  """
  concrete = all(isinstance(r, (int, float)) for r in (select_rate, mask_rate, random_rate))
  if concrete and (mask_rate < 0 or random_rate < 0 or mask_rate + random_rate > 1.0 + 1e-9):
    raise ValueError(f"need mask_rate, random_rate >= 0 with a sum <= 1; got {mask_rate}, {random_rate}")
  special = np.unique(np.asarray(tuple(special_ids), np.int64))
  allowed = np.setdiff1d(np.arange(vocab_size), special).astype(np.int32)
  if allowed.size == 0:
    raise ValueError(f"vocab_size={vocab_size} leaves no non-special id to draw random replacements from")
  k_select, k_kind, k_random = jax.random.split(rng, 3)
  eligible = ~jnp.isin(tokens, jnp.asarray(special, tokens.dtype))
  selected = (jax.random.uniform(k_select, tokens.shape) < select_rate) & eligible
  u = jax.random.uniform(k_kind, tokens.shape)
  to_mask = selected & (u < mask_rate)
  to_random = selected & (u >= mask_rate) & (u < mask_rate + random_rate)
  random_ids = jnp.asarray(allowed)[jax.random.randint(k_random, tokens.shape, 0, allowed.size)]
  inputs = jnp.where(to_mask, jnp.asarray(mask_id, tokens.dtype), tokens)
  inputs = jnp.where(to_random, random_ids.astype(tokens.dtype), inputs)
  return inputs, tokens, selected.astype(jnp.float32)


def stream_prefix(ids: np.ndarray, fraction: float) -> np.ndarray:
  """The first `fraction` of a `[SEP] doc1 [SEP] doc2 [SEP] …` stream, cut at the first document boundary at or past
  that share of tokens (so no document is truncated and at least one is kept); the whole stream for fraction >= 1.
  A view of `ids` (a memory map stays one)."""
  if fraction >= 1.0 or len(ids) < 2:
    return ids
  target = max(1, int(round(fraction * len(ids))))
  boundaries = np.flatnonzero(np.asarray(ids[1:]) == SEP_ID) + 1  # every [SEP] after the leading one
  after = boundaries[boundaries >= target]
  end = int(after[0]) if len(after) else len(ids) - 1
  return ids[:end + 1]
