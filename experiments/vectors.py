r"""Train word vectors (gensim Word2Vec or FastText) on a corpus's train split and write a standard file.

  research-vectors --corpus=wikipedia-sample --method=word2vec|fasttext --dim=128 --out=FILE [--split=train]
                   [--window=5] [--min_count=2] [--epochs=5] [--seed=0] [--errors=strict|replace|ignore]

Words are split as the `word` tokenizer splits them. FILE's extension decides the format: word2vec writes word2vec
text (a word2vec binary for a `.bin` FILE); fasttext writes word2vec text of its word vectors for a `.vec` / `.txt`
FILE (no subword n-grams), else a fastText `.bin` with its subword model. FILE ending .gz / .bz2 / .xz is compressed
(not a fastText .bin: refused). --dim is at most 4096. Either file is a `--config.model.pretrained.path` for
research-train.
"""

from research import interrupts

if __name__ == "__main__":  # `python -m`: a Ctrl-C is recorded before the imports below (seconds; launch.py)
  interrupts.record()

import sys
from pathlib import Path

from absl import app, flags, logging

from experiments.common import end_interrupted, expand_home_flags, parse_flags, run_main
from research.data import corpora, tokenizers
from research.embeddings import train_vectors
from research.error_text import unwritable

_CORPUS = flags.DEFINE_string("corpus", "wikipedia-sample", "Corpus spec (as data.corpus).")
_SPLIT = flags.DEFINE_enum("split", "train", ["train"], "Split to train on: train only (never validation text).")
_METHOD = flags.DEFINE_enum("method", "word2vec", list(train_vectors.METHODS), "gensim model.")
_DIM = flags.DEFINE_integer("dim", 128, f"Vector dimension (1 ... {train_vectors.MAX_DIM}).")
_OUT = flags.DEFINE_string("out", None, "Output file (word2vec text, a word2vec binary if named .bin; for "
                           "--method=fasttext text of the word vectors if named .vec / .txt, else fastText .bin; "
                           ".gz / .bz2 / .xz compress all but a fastText .bin).")
_WINDOW = flags.DEFINE_integer("window", 5, "Context window.")
_MIN_COUNT = flags.DEFINE_integer("min_count", 2, "Ignore words seen fewer times.")
_EPOCHS = flags.DEFINE_integer("epochs", 5, "Passes over the text.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed (training runs on one worker thread: deterministic).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", "", "Corpus cache (as data.cache_dir).")
_ERRORS = flags.DEFINE_enum("errors", "strict", list(corpora.ERROR_POLICIES),
                            "Undecodable bytes in text: corpora (as data.errors).")


def check_cache_dir(value: str) -> None:
  """One line naming --cache_dir, before the corpus is read, when the cache cannot be a directory there: it or its
  nearest existing parent is a file, or nothing can be written in it (`--cache_dir=/etc/passwd` failed after
  seconds with `[Errno 20] Not a directory: '/etc/passwd/corpora'`). Empty: the corpora's default cache."""
  if not value:
    return
  path = Path(value).absolute()
  existing = next(p for p in (path, *path.parents) if p.exists())
  if not existing.is_dir():
    what = "is a file" if existing == path else f"is inside the file {str(existing)!r}"
    raise train_vectors.VectorsError(f"--cache_dir={value!r} {what}; give a directory (it is created)")
  why = unwritable(existing)
  if why:
    raise train_vectors.VectorsError(f"--cache_dir={value!r}: the directory {str(existing)!r} is not writable ({why})")


@run_main
def main(argv):
  if len(argv) > 1:
    raise train_vectors.VectorsError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # gensim logs every epoch at INFO
  train_vectors.check_out(_OUT.value, _METHOD.value)  # before the corpus is read and the vectors trained
  train_vectors.check_options(_METHOD.value, _DIM.value, window=_WINDOW.value, min_count=_MIN_COUNT.value,
                              epochs=_EPOCHS.value, seed=_SEED.value)
  check_cache_dir(_CACHE_DIR.value)
  corpus = corpora.load_corpus(_CORPUS.value, errors=_ERRORS.value, cache_dir=_CACHE_DIR.value or None)
  sentences = train_vectors.sentences_of(corpus.split(_SPLIT.value), tokenizers.split_words)
  model = train_vectors.train_vectors(sentences, _METHOD.value, _DIM.value, window=_WINDOW.value,
                                      min_count=_MIN_COUNT.value, epochs=_EPOCHS.value, seed=_SEED.value)
  fmt = train_vectors.save_vectors(model, _OUT.value, _METHOD.value)
  note = "; word vectors only: fastText's subword n-grams are not in that format (a .bin keeps them)" \
      if _METHOD.value == "fasttext" and fmt != "fasttext-bin" else ""
  print(f"{_OUT.value}: {len(model.wv.index_to_key)} words × {_DIM.value} ({fmt}{note}) from {len(sentences)} sentences "
        f"(non-blank lines, cut at {train_vectors.MAX_SENTENCE_WORDS:,} words) "
        f"of {corpus.name}/{_SPLIT.value}")


def run():
  sys.argv = expand_home_flags(sys.argv)  # --out=~/vectors.txt: the home directory, not a directory named ~
  flags.mark_flags_as_required(["out"])
  try:
    interrupts.deliver()  # (a Ctrl-C recorded since the first line is raised here)
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:
    end_interrupted("--out is written only when training finished: rerun the command")


if __name__ == "__main__":
  interrupts.run_command(run)  # (as launch.py's)
