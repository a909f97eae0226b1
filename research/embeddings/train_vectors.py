"""Word vectors trained on a corpus split with gensim (`Word2Vec` or `FastText`), written in a standard format.

    sentences = sentences_of(corpus.train, tokenizers.split_words)      # words as the `word` tokenizer splits them
    model = train_vectors(sentences, "fasttext", dim=128, seed=0)
    fmt = save_vectors(model, "vectors.bin", "fasttext")                  # fastText .bin: the subword model survives

word2vec models are written as word2vec text (`KeyedVectors.save_word2vec_format`), fastText models as a Facebook
`.bin` (`gensim.models.fasttext.save_facebook_model`), so `research.embeddings.pretrained` and gensim read them
back, n-grams included. Training is deterministic for a seed: one worker thread (gensim's own condition for
reproducibility) and gensim 4's seeded `numpy` generator for the initial vectors.

Like the rest of `research.embeddings` this module knows no corpus: it takes texts and a word splitter.
"""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

METHODS = ("word2vec", "fasttext")
# gensim's trainers silently drop the words of a sentence past this many (MAX_WORDS_IN_BATCH): cut long lines.
MAX_SENTENCE_WORDS = 10_000


class VectorsError(ValueError):
  """A user error: an unknown method, a bad size, no text, an output path that cannot be written."""


def sentences_of(texts: Iterable[str], split_words: Callable[[str], list[str]]) -> list[list[str]]:
  """One sentence per non-blank line of every text (a paragraph of an article), in words, at most
  MAX_SENTENCE_WORDS long: windows then never span two paragraphs."""
  sentences = []
  for text in texts:
    for line in text.splitlines():
      words = split_words(line)
      for start in range(0, len(words), MAX_SENTENCE_WORDS):
        sentences.append(words[start:start + MAX_SENTENCE_WORDS])
  return [s for s in sentences if s]


MAX_SEED = 2 ** 32 - 1  # gensim seeds numpy's legacy generator, which takes 0 ... 2**32 - 1


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
  model.build_vocab(sentences)
  if not model.wv.index_to_key:
    raise VectorsError(f"no word occurs --min_count={min_count} times in the text")
  model.train(sentences, total_examples=len(sentences), epochs=epochs)
  return model


def check_out(path: str | os.PathLike) -> Path:
  """`--out` as a Path, or one line: empty, a directory, or under a path that cannot hold it (a file where a
  directory should be, a directory that is not writable). Missing directories are created when the file is saved
  (`save_vectors`), as research-train creates its workdir. research-vectors calls it before the corpus is read
  (training may take hours), save_vectors again before writing."""
  if not str(path).strip():
    raise VectorsError("--out is empty: give the vector file to write")
  path = Path(path)
  if path.is_dir():
    raise VectorsError(f"--out={str(path)!r} is a directory; give a file path")
  parent = path.absolute().parent
  existing = next(p for p in (parent, *parent.parents) if p.exists())  # the root always exists
  if not existing.is_dir():
    raise VectorsError(f"--out={str(path)!r}: {str(existing)!r} is a file, so the directory {str(parent)!r} cannot "
                       f"be made")
  try:
    tempfile.TemporaryFile(dir=existing).close()
  except OSError as e:
    raise VectorsError(f"--out={str(path)!r}: the directory {str(existing)!r} is not writable "
                       f"({e.strerror})") from None
  return path


def _remove_dead_temporaries(path: Path) -> None:
  """`.NAME.tmp<pid>` files beside `path` left by a research-vectors killed while writing (its pid is gone)."""
  for tmp in path.absolute().parent.glob(f".{glob.escape(path.name)}.tmp*"):
    pid = tmp.name.rsplit(".tmp", 1)[-1]
    if pid.isdigit() and not os.path.exists(f"/proc/{pid}") and os.path.isdir("/proc/self"):
      tmp.unlink(missing_ok=True)


def save_vectors(model, path: str | os.PathLike, method: str) -> str:
  """Writes `model` (word2vec text, or fastText .bin with its n-gram buckets); returns the file's format name as
  `research.embeddings.pretrained` knows it."""
  path = check_out(path)
  path.absolute().parent.mkdir(parents=True, exist_ok=True)
  _remove_dead_temporaries(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  if method == "fasttext":
    from gensim.models.fasttext import save_facebook_model
    save_facebook_model(model, str(tmp))
    fmt = "fasttext-bin"
  else:
    model.wv.save_word2vec_format(str(tmp), binary=False)
    fmt = "word2vec"
  os.replace(tmp, path)  # atomic: a half-written file never has the final name
  return fmt
