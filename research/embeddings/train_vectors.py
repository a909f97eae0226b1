"""Word vectors trained on a corpus split with gensim (`Word2Vec` or `FastText`), written in a standard format.

    sentences = sentences_of(corpus.train, tokenizers.split_words)      # words as the `word` tokenizer splits them
    model = train_vectors(sentences, "fasttext", dim=128, seed=0)
    fmt = save_vectors(model, "vectors.bin", "fasttext")                  # fastText .bin: the subword model survives

The name's extension decides the format, as `research.embeddings.pretrained` detects it (`output_format`): word2vec
models are written as word2vec text (`KeyedVectors.save_word2vec_format`), or as a word2vec binary for a `.bin` name
(word2vec.c's convention); fastText models as word2vec text of their word vectors for a `.vec` or `.txt` name
(fastText's own `.vec`; the subword n-grams are not in that format), else as a Facebook `.bin`
(`gensim.models.fasttext.save_facebook_model`), so `research.embeddings.pretrained` and gensim read them back,
n-grams included. A `.gz`, `.bz2` or `.xz` name gets a compressed file (gensim compresses by the name's ending),
except for a fastText `.bin`, which gensim writes and reads uncompressed only: refused. Training is
deterministic for a seed: one worker thread (gensim's own condition for reproducibility) and gensim 4's seeded
`numpy` generator for the initial vectors.

Like the rest of `research.embeddings` this module knows no corpus: it takes texts and a word splitter.
"""

from __future__ import annotations

import glob
import math
import os
from pathlib import Path
from typing import Callable, Iterable

from research.embeddings import pretrained
from research.error_text import unwritable

METHODS = ("word2vec", "fasttext")
# gensim's trainers silently drop the words of a sentence past this many (MAX_WORDS_IN_BATCH): cut long lines.
MAX_SENTENCE_WORDS = 10_000


class VectorsError(ValueError):
  """A user error: an unknown method, a bad size, no text, an output path that cannot be written."""


def sentences_of(texts: Iterable[str], split_words: Callable[[str], list[str]]) -> list[list[str]]:
  """One sentence per non-blank line of every text (a paragraph of an article), in words, at most
  MAX_SENTENCE_WORDS long: windows then never span two paragraphs. Lines end at "\n" only, as the corpus reader
  defines them (docs/data.md): a form feed or U+2028 inside a line is text, not a break (str.splitlines would cut
  there)."""
  sentences = []
  for text in texts:
    for line in text.split("\n"):
      words = split_words(line)
      for start in range(0, len(words), MAX_SENTENCE_WORDS):
        sentences.append(words[start:start + MAX_SENTENCE_WORDS])
  return [s for s in sentences if s]


MAX_SEED = 2 ** 32 - 1  # gensim seeds numpy's legacy generator, which takes 0 ... 2**32 - 1
# Ten times the width of published word vectors (300) and wider than any table of this library: what gensim would
# allocate beyond it (fastText: its 2 000 000 n-gram buckets × dim float32s, 30.5 GiB at 4096) is never meant.
MAX_DIM = 4096


def check_options(method: str, dim: int, *, window: int = 5, min_count: int = 2, epochs: int = 5,
                  seed: int = 0) -> None:
  """One VectorsError line for an option gensim would refuse (or take and fail on later); research-vectors calls it
  before the corpus is read."""
  if method not in METHODS:
    raise VectorsError(f"--method={method!r} is not one of {', '.join(METHODS)}")
  for name, value, low in (("dim", dim, 1), ("window", window, 1), ("min_count", min_count, 1),
                           ("epochs", epochs, 1)):
    if not isinstance(value, int) or value < low:
      raise VectorsError(f"--{name}={value!r} must be an integer >= {low}")
  if dim > MAX_DIM:
    raise VectorsError(f"--dim={dim} must be at most {MAX_DIM} (published word vectors have 300 dimensions; "
                       f"research-train projects them to a wider table with model.pretrained.dim_mismatch=project)")
  if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
    raise VectorsError(f"--seed={seed!r} must be an integer in 0 ... {MAX_SEED}")


def train_vectors(sentences: list[list[str]], method: str, dim: int, *, window: int = 5, min_count: int = 2,
                  epochs: int = 5, seed: int = 0, sg: bool = True):
  """A trained gensim Word2Vec / FastText model (skip-gram by default; one worker thread: deterministic)."""
  check_options(method, dim, window=window, min_count=min_count, epochs=epochs, seed=seed)
  if not sentences:
    raise VectorsError("no text to train word vectors on")
  from gensim.models import FastText, Word2Vec
  cls = Word2Vec if method == "word2vec" else FastText
  model = cls(vector_size=dim, window=window, min_count=min_count, workers=1, seed=seed, sg=int(sg))
  try:  # gensim allocates the vectors (and fastText its n-gram buckets) here, after the corpus was read
    model.build_vocab(sentences)
    if not model.wv.index_to_key:
      raise VectorsError(f"no word occurs --min_count={min_count} times in the text")
    model.train(sentences, total_examples=len(sentences), epochs=epochs)
  except MemoryError as e:
    raise VectorsError(_out_of_memory(model, method, dim, e)) from None
  return model


def _out_of_memory(model, method: str, dim: int, e: MemoryError) -> str:
  """The one line for a MemoryError while training: the sizes that decide the memory, and what numpy asked for (its
  `_ArrayMemoryError` carries the array's shape and dtype; a plain MemoryError does not)."""
  words = len(getattr(model.wv, "index_to_key", []) or [])
  sizes = f"{words} words × {dim}" if words else f"dim {dim}"
  if method == "fasttext":
    sizes += f" and {model.wv.bucket} n-gram buckets × {dim}"
  shape, dtype = getattr(e, "shape", None), getattr(e, "dtype", None)
  asked = ""
  if shape is not None and dtype is not None:
    asked = f"; numpy could not allocate {math.prod(shape) * dtype.itemsize / 2 ** 30:.1f} GiB for {tuple(shape)}"
  return (f"--dim={dim}: not enough memory to train {method} vectors ({sizes} float32s{asked}); use a smaller "
          f"--dim")


def compression(path: str | os.PathLike) -> str:
  """The compression gensim (smart_open) applies to a file of this name, as its last suffix in lower case (".gz"),
  or ""."""
  suffix = Path(path).suffix.lower()
  return suffix if suffix in pretrained.COMPRESSED else ""


FASTTEXT_TEXT = {".vec": "fasttext", ".txt": "word2vec"}  # fastText word vectors as text, by extension


def output_format(path: str | os.PathLike, method: str) -> str:
  """The format `save_vectors` writes for this name, as `research.embeddings.pretrained` names (and detects) it:
  by the extension, compression suffixes skipped."""
  ext = pretrained.extension(path)
  if method == "fasttext":
    return FASTTEXT_TEXT.get(ext, "fasttext-bin")
  return "word2vec-binary" if ext == ".bin" else "word2vec"


def check_out(path: str | os.PathLike, method: str = "word2vec") -> Path:
  """`--out` as a Path, or one line: empty, a directory, under a path that cannot hold it (a file where a directory
  should be, a directory that is not writable), or a compressed name that gensim would not write as compressed (a
  fastText .bin, or a compression whose package is missing). Missing directories are created when the file is saved
  (`save_vectors`), as research-train creates its workdir. research-vectors calls it before the corpus is read
  (training may take hours), save_vectors again before writing."""
  if not str(path).strip():
    raise VectorsError("--out is empty: give the vector file to write")
  path = Path(path)
  if path.is_dir():
    raise VectorsError(f"--out={str(path)!r} is a directory; give a file path")
  suffix = path.suffix.lower()
  if suffix in pretrained.UNWRITTEN_COMPRESSIONS:
    raise VectorsError(f"--out={str(path)!r}: {suffix} compression is not written (its package is not a dependency); "
                       f"use {', '.join(pretrained.COMPRESSED)} or no compression")
  if output_format(path, method) == "fasttext-bin" and compression(path):
    raise VectorsError(f"--out={str(path)!r}: a fastText .bin cannot be compressed (gensim writes and reads fastText "
                       f"models uncompressed only); drop the {suffix}")
  parent = path.absolute().parent
  existing = next(p for p in (parent, *parent.parents) if p.exists())  # the root always exists
  if not existing.is_dir():
    raise VectorsError(f"--out={str(path)!r}: {str(existing)!r} is a file, so the directory {str(parent)!r} cannot "
                       f"be made")
  why = unwritable(existing)
  if why:
    raise VectorsError(f"--out={str(path)!r}: the directory {str(existing)!r} is not writable ({why})")
  return path


def temporary_path(path: Path, pid: int | None = None) -> Path:
  """`.NAME.tmp<pid>` beside `path`, written first and renamed to `path` (atomic: a half-written file never has the
  final name). It ends as `path` does when that ending is a compression (`.v.txt.gz.tmp12.gz`): gensim compresses
  by the name it writes to."""
  return path.with_name(f".{path.name}.tmp{os.getpid() if pid is None else pid}{compression(path)}")


def _remove_dead_temporaries(path: Path) -> None:
  """`temporary_path` files beside `path` left by a research-vectors killed while writing (its pid is gone), also
  in the form before the compression ending was kept (`.NAME.tmp<pid>`)."""
  for tmp in path.absolute().parent.glob(f".{glob.escape(path.name)}.tmp*"):
    pid = tmp.name.rsplit(".tmp", 1)[-1].split(".", 1)[0]
    if pid.isdigit() and tmp.name in (temporary_path(path, int(pid)).name, f".{path.name}.tmp{pid}") \
        and not os.path.exists(f"/proc/{pid}") and os.path.isdir("/proc/self"):
      tmp.unlink(missing_ok=True)


def save_vectors(model, path: str | os.PathLike, method: str) -> str:
  """Writes `model` in the format of its name (`output_format`: word2vec text, a word2vec binary for a `.bin` name,
  compressed or not; for fastText, text of its word vectors for `.vec` / `.txt`, else a .bin with its n-gram
  buckets); returns the file's format name as `research.embeddings.pretrained` knows it (and detects it)."""
  path = check_out(path, method)
  path.absolute().parent.mkdir(parents=True, exist_ok=True)
  _remove_dead_temporaries(path)
  tmp = temporary_path(path)
  fmt = output_format(path, method)
  if fmt == "fasttext-bin":
    from gensim.models.fasttext import save_facebook_model
    save_facebook_model(model, str(tmp))
  else:
    model.wv.save_word2vec_format(str(tmp), binary=fmt == "word2vec-binary")
  os.replace(tmp, path)
  return fmt
