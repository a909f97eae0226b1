"""Quality of an embedding table as word vectors: Google analogies, WordSim-353, SimLex-999, nearest neighbours.

    report = analyze_run("runs/x")           # the best checkpoint's input table → RUN/eval/embedding_quality.json
    report = analyze_vectors("vectors.txt")  # the same benchmarks for a word2vec / GloVe / fastText file

Every figure is gensim's (`KeyedVectors.evaluate_word_analogies`, `evaluate_word_pairs`, `most_similar`) on the
benchmark files gensim ships, with its defaults (case-insensitive, the 300 000 first keys). Analogies are scored by
`analogies.evaluate_word_analogies`, gensim's rule batched into one matrix product per block of questions, which gives
gensim's own numbers (tested), 12–17 times faster on a 32 768-word table (docs/benchmarks.md); `scorer="gensim"`
calls gensim's per-question loop instead (benchmarks/embedding_quality.py --scorer=gensim). Each benchmark also
reports its coverage: the share of its items (questions, pairs) whose words are all in the vocabulary.

A run's table becomes word vectors like this (docs/embeddings.md): the keys are the word forms of the vocabulary
(tokens without their markers, `pretrained.token_words`) followed by the benchmark words; a key's vector is the
mean of the table rows of the pieces the run's tokenizer splits it into (for the `word` tokenizer, a word in the
vocabulary is one piece: the row itself). A word that encodes to `[UNK]` has no vector (it is out of vocabulary).
Byte-level tokenizers encode a word with a leading space, the form it has inside running text ("Ġword").

A run's figures come with the same benchmarks on its initial table (`RUN/embedding_init.npy`, `benchmarks_init`):
for a subword tokenizer, vectors composed from the pieces score well above zero on the analogies from spelling
alone, random rows included (the syntactic sections: walking − walk + swim shares swimming's pieces), so the initial
figure is the floor a trained table is read against (docs/embeddings.md, "The floor of a subword table").
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from research.analysis import analogies
from research.data import tokenizers as tokenizers_lib
from research.embeddings import pretrained

QUALITY_FILE = "embedding_quality.json"
# What `analyze_run` scores: "table", the token_embed/embedding parameter (V × e), or "input", the vectors the model
# feeds its first block for each id (scaled, projected to d_model, combined with the character CNN's vector), which
# is where a factorized or character-aware run's tokens differ from their table rows.
VECTORS_OF = ("table", "input")
QUALITY_FILES = {"table": QUALITY_FILE, "input": "embedding_quality_input.json"}
EVAL_DIR = "eval"
UNK_ID = 1
RESTRICT_VOCAB = 300_000  # gensim's default for both evaluations
NUM_NEIGHBOUR_WORDS, NUM_NEIGHBOURS = 10, 5
PAIR_BENCHMARKS = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
ANALOGY_FILE = "questions-words.txt"


class AnalysisError(ValueError):
  """A user error on the command line of research-analyze."""


def datapath(name: str) -> str:
  from gensim.test.utils import datapath as gensim_datapath
  return gensim_datapath(name)


# ------------------------------------------------------------------------------------------------- benchmarks


def benchmark_words() -> list[str]:
  """Every word of the three benchmark files, in file order, once each."""
  words: dict[str, None] = {}
  with open(datapath(ANALOGY_FILE), encoding="utf-8") as f:
    for line in f:
      if not line.startswith(":"):
        words.update(dict.fromkeys(line.split()))
  for name in PAIR_BENCHMARKS.values():
    with open(datapath(name), encoding="utf-8") as f:
      for line in f:
        if not line.startswith("#"):
          words.update(dict.fromkeys(line.split("\t")[:2]))
  return [w.strip() for w in words if w.strip()]


def _count_items(name: str, analogy: bool) -> int:
  with open(datapath(name), encoding="utf-8") as f:
    if analogy:
      return sum(1 for line in f if line.strip() and not line.startswith(":"))
    return sum(1 for line in f if line.strip() and not line.startswith("#"))


def _finite(x: Any) -> float | None:
  x = float(x)
  return x if math.isfinite(x) else None


SCORERS = ("batched", "gensim")


def _pair_coverage(kv, file: str) -> float:
  """The share of `file`'s pairs whose words are both in `kv`, by gensim's own rule (`dummy4unknown=True` scores an
  uncovered pair as 0 instead of skipping it, so gensim reports the uncovered share even when fewer than 2 pairs
  are covered, where a correlation does not exist)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the correlations of mostly-zero similarities: not used
    return 1.0 - float(kv.evaluate_word_pairs(datapath(file), restrict_vocab=RESTRICT_VOCAB,
                                              dummy4unknown=True)[2]) / 100.0


def benchmarks(kv, scorer: str = "batched") -> dict[str, Any]:
  """Analogy accuracy and word-pair correlations of gensim KeyedVectors `kv`, each with its coverage; `scorer` picks
  the analogy scorer (the same numbers either way: see the module docstring)."""
  import logging
  logging.getLogger("gensim").setLevel(logging.ERROR)  # gensim logs every section at INFO
  if scorer not in SCORERS:
    raise ValueError(f"analogy scorer {scorer!r}: expected one of {', '.join(SCORERS)}")
  evaluate = kv.evaluate_word_analogies if scorer == "gensim" else functools.partial(
      analogies.evaluate_word_analogies, kv)
  score, sections = evaluate(datapath(ANALOGY_FILE), restrict_vocab=RESTRICT_VOCAB)
  total = next(s for s in sections if s["section"] == "Total accuracy")
  scored = len(total["correct"]) + len(total["incorrect"])
  questions = _count_items(ANALOGY_FILE, analogy=True)
  # No question scored: gensim's 0.0 is 0 / 0, so the accuracy is None (n/a), as a correlation with no pair is.
  out: dict[str, Any] = {"analogy": {"accuracy": float(score) if scored else None, "correct": len(total["correct"]),
                                     "scored": scored, "items": questions, "coverage": scored / questions}}
  for name, file in PAIR_BENCHMARKS.items():
    items = _count_items(file, analogy=False)
    try:
      pearson, spearman, oov_percent = kv.evaluate_word_pairs(datapath(file), restrict_vocab=RESTRICT_VOCAB)
    except ValueError:  # gensim raises when fewer than 2 pairs are covered (a small vocabulary, one frequency bucket)
      out[name] = {"spearman": None, "pearson": None, "items": items, "coverage": _pair_coverage(kv, file)}
      continue
    out[name] = {"spearman": _finite(spearman[0]), "pearson": _finite(pearson[0]), "items": items,
                 "coverage": 1.0 - float(oov_percent) / 100.0}
  return out


def neighbours(kv, words: Sequence[str], topn: int = NUM_NEIGHBOURS) -> dict[str, list[list[Any]]]:
  """{word: [[neighbour, cosine], ...]} by gensim's most_similar."""
  return {w: [[n, float(s)] for n, s in kv.most_similar(w, topn=topn)] for w in words if w in kv.key_to_index}


def frequent_words(keys: Sequence[str], counts: Sequence[float] | None = None,
                   n: int = NUM_NEIGHBOUR_WORDS) -> list[str]:
  """The n most frequent alphabetic keys (in key order when there are no counts, as vector files are sorted)."""
  order = range(len(keys)) if counts is None else np.argsort(-np.asarray(counts), kind="stable")
  picked: list[str] = []
  for i in order:
    if keys[i].isalpha() and keys[i] not in picked:
      picked.append(keys[i])
      if len(picked) == n:
        break
  return picked


# ----------------------------------------------------------------------------------------- a table as vectors


def _keyed(keys: Sequence[str], vectors_NxD: np.ndarray):
  from gensim.models import KeyedVectors
  kv = KeyedVectors(vectors_NxD.shape[1])
  if len(keys):
    kv.add_vectors(list(keys), np.asarray(vectors_NxD, np.float32))
  return kv


def keyed_vectors(keys: Sequence[str], vectors_NxD: np.ndarray):
  """gensim KeyedVectors with these keys and rows (e.g. one frequency bucket's words, research/analysis/rare.py)."""
  return _keyed(keys, vectors_NxD)


def word_vectors(table_VxD: np.ndarray, tokenizer, kind: str, extra_words: Sequence[str] = ()) -> tuple[Any, dict]:
  """(KeyedVectors of words, {word: row count}) from a run's table: see the module docstring."""
  tokens = tokenizers_lib.vocabulary(tokenizer)
  candidates = list(dict.fromkeys([w for w in pretrained.token_words(tokens, kind) if w] + list(extra_words)))
  prefix = " " if kind in pretrained.BYTE_LEVEL_KINDS else ""
  encodings = tokenizer.encode_batch([prefix + w for w in candidates], add_special_tokens=False)
  kept = [(word, e.ids) for word, e in zip(candidates, encodings) if e.ids and UNK_ID not in e.ids]
  vectors = np.zeros((len(kept), table_VxD.shape[1]), np.float32)
  by_length: dict[int, list[int]] = {}
  for i, (_, ids) in enumerate(kept):
    by_length.setdefault(len(ids), []).append(i)
  for length, where in by_length.items():  # words of n pieces at once: the mean of n rows, in float64
    ids_NxL = np.asarray([kept[i][1] for i in where], np.int64).reshape(len(where), length)
    rows_NxLxD = np.asarray(table_VxD)[ids_NxL]
    vectors[where] = rows_NxLxD[:, 0] if length == 1 else rows_NxLxD.astype(np.float64).mean(axis=1)
  return _keyed([w for w, _ in kept], vectors), {"words": len(kept), "candidates": len(candidates)}


def export_key(token: str) -> str:
  """A token string as a word2vec / TSV key: whitespace (which those formats split on) becomes <U+XXXX>."""
  key = "".join(f"<U+{ord(c):04X}>" if c.isspace() else c for c in token)
  return key or "<empty>"


def check_export_name(path: str | os.PathLike) -> Path:
  """`--export_word2vec`'s file name as a Path, or one line when it asks for a compression gensim cannot write here
  (.zst, .lz4: their packages are not dependencies). research-analyze checks it before the analysis runs."""
  path = Path(path)
  if path.suffix.lower() in pretrained.UNWRITTEN_COMPRESSIONS:
    raise AnalysisError(f"--export_word2vec={str(path)!r}: {path.suffix.lower()} compression is not written (its "
                        f"package is not a dependency); use {', '.join(pretrained.COMPRESSED)} or no compression")
  return path


def export_word2vec(table_VxD: np.ndarray, tokens: Sequence[str], path: str | os.PathLike) -> Path:
  """Every row of the table as word2vec text (a word2vec binary for a `.bin` name, as research-vectors writes and
  `pretrained.detect_format` reads it), keyed by its token string (row i ↔ key i), through gensim; compressed for a
  .gz / .bz2 / .xz name (the temporary file keeps that ending: gensim compresses by the name)."""
  from research.embeddings import train_vectors
  path = check_export_name(path)
  kv = _keyed([export_key(t) for t in tokens], np.asarray(table_VxD, np.float32))
  tmp = train_vectors.temporary_path(path)
  kv.save_word2vec_format(str(tmp), binary=pretrained.extension(path) == ".bin")
  os.replace(tmp, path)
  return path


PROJECTOR_TAG = "token_embedding"


def _drop_projector_entry(directory: Path, tag: str) -> None:
  """Removes an earlier export of `tag` from a projector directory (its files and its `embeddings { … }` entry in
  projector_config.pbtxt), which tensorboardX's add_embedding would otherwise list a second time; other entries
  stay."""
  shutil.rmtree(directory / "00000" / tag, ignore_errors=True)
  config = directory / "projector_config.pbtxt"
  if config.exists():
    entries = re.findall(r"embeddings \{.*?\n\}\n?", config.read_text(), flags=re.S)
    config.write_text("".join(e for e in entries if f'tensor_name: "{tag}:00000"' not in e))


def export_projector(table_VxD: np.ndarray, tokens: Sequence[str], counts: np.ndarray | None,
                     directory: str | os.PathLike) -> Path:
  """TensorBoard projector files (tensorboardX `add_embedding`): the table, with token and training count."""
  from tensorboardX import SummaryWriter
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  counts = np.zeros(len(tokens), np.int64) if counts is None else np.asarray(counts)
  metadata = [[export_key(t), str(int(counts[i]) if i < len(counts) else 0)] for i, t in enumerate(tokens)]
  _drop_projector_entry(directory, PROJECTOR_TAG)
  with SummaryWriter(str(directory)) as writer:
    writer.add_embedding(np.asarray(table_VxD, np.float32), metadata=metadata, metadata_header=["token", "count"],
                         tag=PROJECTOR_TAG)
  return directory


# ---------------------------------------------------------------------------------------------- entry points


CLI_NAMES = {"path": "--vectors", "format": "--format", "unicode_errors": "--unicode_errors"}  # research-analyze's


def analyze_vectors(path: str | os.PathLike, format: str = "auto", names: dict[str, str] | None = None,
                    unicode_errors: str = "strict") -> dict[str, Any]:
  """The benchmarks and neighbours of a vector file (any format `pretrained.load_vectors` reads; its errors name
  the file by `names`, research-analyze's flags by default). A word given twice keeps its first vector
  (`duplicate_words`); a zero vector has no direction (its cosines are 0/0), so its word is left out of the
  benchmarks and neighbours, as out of vocabulary, and counted in `zero_vectors`."""
  notes: dict[str, Any] = {}
  kv, resolved = pretrained.load_vectors(path, format, names=names or CLI_NAMES, unicode_errors=unicode_errors,
                                         notes=notes)
  words = len(kv.index_to_key)
  nonzero = np.flatnonzero(np.concatenate([np.any(kv.vectors[i:i + 65536], axis=1)  # blocks: bounded memory
                                             for i in range(0, words, 65536)]))
  if len(nonzero) < words:  # load_vectors refuses a file with no other vector
    kv = _keyed([kv.index_to_key[i] for i in nonzero], kv.vectors[nonzero])
  return {"vectors": str(path), "format": resolved, "words": words, "dim": int(kv.vector_size),
          "duplicate_words": notes["duplicate_words"], "duplicate_example": notes["duplicate_example"],
          "zero_vectors": words - len(nonzero),
          "benchmarks": benchmarks(kv), "neighbours": neighbours(kv, frequent_words(kv.index_to_key))}


@contextlib.contextmanager
def damaged_file(path: Path, remedy: str):
  """Turns a run file numpy cannot read (truncated by a full disk or a copy, overwritten) into one AnalysisError
  naming it and what to do, instead of numpy's traceback."""
  try:
    yield
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise AnalysisError(f"{str(path)!r} is damaged ({reason[:200]}): {remedy}") from None


def load_run(workdir: str | os.PathLike, checkpoint: str = "best"):
  """The run with the parameters of its best (or last) checkpoint (`extrapolation.load_run`). research-analyze loads
  it once and hands it to every analysis of the call (`run=`): resolving best/last again for each let a live
  trainer's new checkpoint slip in between, and the files recorded different steps."""
  from research.evaluate import extrapolation
  return extrapolation.load_run(workdir, checkpoint)


def run_table(workdir: str | os.PathLike, checkpoint: str = "best", run=None):
  """(loaded run, [V, d] input table as numpy, tokenizer, counts or None); `run`: the run already loaded (`load_run`),
  whose checkpoint this is, else the `checkpoint` of `workdir` is loaded."""
  run = load_run(workdir, checkpoint) if run is None else run
  tokenizer = tokenizers_lib.load_tokenizer(workdir)  # load_run read it already: a damaged one failed there
  counts_file = tokenizers_lib.counts_path(workdir)
  table = np.asarray(run.params["token_embed"]["embedding"], np.float32)
  counts = None
  if counts_file.exists():
    with damaged_file(counts_file, "rerun research-train in that workdir with its config: it counts the training "
                                   "stream again"):
      counts = tokenizers_lib.check_counts(np.load(counts_file), table.shape[0], "the array")
  return run, table, tokenizer, counts


def input_vectors(run) -> np.ndarray:
  """[V, d_model]: every token's input vector as the model computes it (Transformer.vocab_vectors: the table's
  scaled and projected rows, combined with the character CNN's vectors), without dropout or positions."""
  import jax

  from research.model.transformer import Transformer

  model = Transformer(run.model_cfg, char_ids=run.char_ids)
  return np.asarray(jax.jit(lambda p: model.apply({"params": p}, method="vocab_vectors"))(run.params), np.float32)


def initial_table(workdir: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray | None:
  """RUN/embedding_init.npy when it is this table's start (same shape), else None (a run from before the file)."""
  from research.train import loop
  path = Path(workdir) / loop.INIT_TABLE_FILE
  if not path.exists():
    return None
  with damaged_file(path, "no run rewrites it; delete it to analyse the run without the figures measured from the "
                          "initial table"):
    init_VxD = np.load(path)
  return init_VxD if init_VxD.shape == tuple(shape) else None


def analyze_run(workdir: str | os.PathLike, checkpoint: str = "best", *, export_word2vec_path=None,
                export_projector_dir=None, vectors_of: str = "table", run=None) -> dict[str, Any]:
  """Scores the input table of the run's best (or last) checkpoint; writes RUN/eval/embedding_quality.json. With
  vectors_of="input", the model's input vectors instead (`input_vectors`), written to
  RUN/eval/embedding_quality_input.json; their initial values are not kept, so `benchmarks_init` is null there.
  `run`: that checkpoint already loaded (`load_run`: one research-analyze call analyses one step)."""
  if vectors_of not in VECTORS_OF:
    raise AnalysisError(f"vectors_of={vectors_of!r} is not one of {', '.join(VECTORS_OF)}")
  workdir = Path(workdir)
  run, table_VxD, tokenizer, counts = run_table(workdir, checkpoint, run)
  init_VxD = initial_table(workdir, table_VxD.shape) if vectors_of == "table" else None
  if vectors_of == "input":
    table_VxD = input_vectors(run)
  kind = run.config.data.tokenizer
  tokens = tokenizers_lib.vocabulary(tokenizer)
  kv, sizes = word_vectors(table_VxD, tokenizer, kind, benchmark_words())
  # Query words: tokens that begin a word (not "##ing" or a BPE piece inside a word), most frequent first.
  words = [w if pretrained.starts_word(t, kind) else "" for t, w in zip(tokens, pretrained.token_words(tokens, kind))]
  query = [w for w in frequent_words(words, counts) if w in kv.key_to_index]
  report = {"checkpoint_step": run.step, "checkpoint": checkpoint, "tokenizer": kind, "vocab_size": len(tokens),
            "vectors_of": vectors_of,
            "dim": int(table_VxD.shape[1]),
            "word_vectors": "row" if kind == "word" else "mean of the pieces' rows", **sizes,
            "benchmarks": benchmarks(kv), "neighbours": neighbours(kv, query),
            # The same words composed from the initial table: the floor the trained figures are read against.
            "benchmarks_init": None if init_VxD is None else benchmarks(
                word_vectors(init_VxD, tokenizer, kind, benchmark_words())[0])}
  write_quality(workdir, report, QUALITY_FILES[vectors_of])
  if export_word2vec_path:
    export_word2vec(table_VxD, tokens, export_word2vec_path)
  if export_projector_dir:
    export_projector(table_VxD, tokens, counts, export_projector_dir)
  return report


def write_quality(workdir: str | os.PathLike, report: dict[str, Any], name: str = QUALITY_FILE) -> Path:
  """RUN/eval/embedding_quality.json (what research.report reads; its tests write fixtures through this too), or
  `name` there."""
  from research.train import loop
  out_dir = Path(workdir) / EVAL_DIR
  out_dir.mkdir(exist_ok=True)
  loop.atomic_write_json(out_dir / name, report)
  return out_dir / name


def summary_lines(report: dict[str, Any]) -> list[str]:
  b = report["benchmarks"]
  start = report.get("benchmarks_init") or {}  # absent for a vector file, None for a run without its initial table
  pct = lambda x: "n/a" if x is None else f"{100 * x:.1f} %"  # noqa: E731
  num = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731

  def coverage(x: float | None) -> str:  # a sliver of the items shows its digits ("0.01 %"), never a flat 0.0 %
    return f"{100 * x:.2g} %" if x is not None and 0 < x < 0.001 else pct(x)

  def line(name: str, label: str, key: str, fmt) -> str:
    floor = f"; initial table {fmt(start[name][key])}" if start else ""
    scored = f"{b[name]['scored']} questions scored; " if "scored" in b[name] else ""
    return f"{label} {fmt(b[name][key])} ({scored}coverage {coverage(b[name]['coverage'])}{floor})"

  lines = []
  if report.get("duplicate_words") or report.get("zero_vectors"):  # a vector file's notes
    notes = pretrained.duplicate_note(report).lstrip("; ")
    zero = report.get("zero_vectors")
    notes += f"{'; ' if notes else ''}{zero} zero vector{'s' if zero > 1 else ''} left out" if zero else ""
    lines.append(f"{report['vectors']}: {notes}")
  lines.append(line("analogy", "analogy accuracy", "accuracy", pct))
  lines += [line(name, f"{name} spearman", "spearman", num) for name in PAIR_BENCHMARKS]
  for word, near in report["neighbours"].items():
    lines.append(f"{word}: {', '.join(n for n, _ in near)}")
  return lines


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
  """`report` as JSON at `path`, atomically (a kill never leaves half a file)."""
  from research.train import loop
  loop.atomic_write_json(Path(path), report)
