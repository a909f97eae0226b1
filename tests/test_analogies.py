"""The batched analogy scorer returns exactly what gensim's own KeyedVectors.evaluate_word_analogies returns."""

import logging

import numpy as np
import pytest
from gensim.models import KeyedVectors, Word2Vec
from gensim.test.utils import datapath
from gensim.utils import simple_preprocess

from research.analysis import analogies, quality

logging.getLogger("gensim").setLevel(logging.ERROR)
QUESTIONS = datapath("questions-words.txt")


def _same_as_gensim(kv, path=QUESTIONS, **kwargs):
  """Both scorers on the same vectors: (score, sections) identical; returns the batched scorer's stats."""
  stats = {}
  ours = analogies.evaluate_word_analogies(kv, path, stats=stats, **kwargs)
  theirs = kv.evaluate_word_analogies(path, **kwargs)
  assert ours[0] == theirs[0]
  assert [s["section"] for s in ours[1]] == [s["section"] for s in theirs[1]]
  for a, b in zip(ours[1], theirs[1]):
    assert (a["section"], a["correct"], a["incorrect"]) == (b["section"], b["correct"], b["incorrect"])
  return stats, theirs


@pytest.fixture(scope="module")
def lee_word2vec():
  """A word2vec gensim trains on its own lee_background corpus (real vectors that answer some questions)."""
  with open(datapath("lee_background.cor"), encoding="utf-8") as f:
    sentences = [simple_preprocess(line) for line in f]
  return Word2Vec(sentences, vector_size=32, min_count=2, seed=0, workers=1, epochs=30).wv


@pytest.mark.parametrize("name", ["lee_fasttext.vec", "word2vec_pre_kv_c"])
def test_same_numbers_as_gensim_on_the_vectors_gensim_ships(name):
  kv = KeyedVectors.load_word2vec_format(datapath(name))
  stats, (score, sections) = _same_as_gensim(kv)
  assert stats["questions"] == len(sections[-1]["correct"]) + len(sections[-1]["incorrect"]) > 50
  assert stats["rescored"] < stats["questions"]  # the batched path answers (nearly) all of them


def test_same_numbers_as_gensim_on_a_trained_word2vec_in_every_mode(lee_word2vec):
  stats, (score, sections) = _same_as_gensim(lee_word2vec)
  assert 0 < score < 1 and len(sections[-1]["correct"]) > 0 and stats["rescored"] < stats["questions"]
  # gensim's options: no upper-casing; OOV questions counted wrong; only the first 1000 keys.
  for kwargs in ({"case_insensitive": False}, {"dummy4unknown": True}, {"restrict_vocab": 1000}):
    _same_as_gensim(lee_word2vec, **kwargs)
  # Blocks of any size give the same answer (the last block is ragged).
  assert analogies.evaluate_word_analogies(lee_word2vec, QUESTIONS, block=7) == \
      analogies.evaluate_word_analogies(lee_word2vec, QUESTIONS)


def _kv(keys, vectors):
  kv = KeyedVectors(np.shape(vectors)[1])
  kv.add_vectors(list(keys), np.asarray(vectors, np.float32))
  return kv


def test_exact_ties_case_variants_and_oov_words_on_a_constructed_table(tmp_path):
  """Every candidate's cosine is one of a handful of values (rows from {-1, 0, 1}^3, duplicates and case variants
  included), so most questions end in exact ties: gensim's tie order decides, and the scorer must agree."""
  rng = np.random.default_rng(0)
  words = ["king", "queen", "man", "woman", "King", "QUEEN", "boy", "girl", "prince", "princess", "paris", "france",
           "rome", "italy", "Paris", "berlin", "germany", "madrid", "spain"] + [f"w{i}" for i in range(40)]
  vectors = rng.integers(-1, 2, size=(len(words), 3)).astype(np.float32)
  vectors[(vectors == 0).all(axis=1)] = 1.0  # no zero rows
  vectors[words.index("girl")] = vectors[words.index("queen")]  # a duplicate row: an exact tie with the answer
  path = tmp_path / "questions.txt"
  path.write_text(
      ": family\nking queen man woman\nman woman king queen\nboy girl king QUEEN\nking queen prince princess\n"
      "boy girl man unknownword\nnot four words\nKing Queen Man Woman\nking king queen queen\n"
      ": capitals\nparis france rome italy\nberlin germany madrid spain\nrome italy paris france\n"
      "Paris France Berlin Germany\nmadrid spain berlin germany\n"
      ": empty section\n: random\n" + "".join(" ".join(rng.choice(words[:19], 4)) + "\n" for _ in range(300)))
  for kwargs in ({}, {"case_insensitive": False}, {"dummy4unknown": True}, {"restrict_vocab": 12}):
    stats, (score, sections) = _same_as_gensim(_kv(words, vectors), str(path), **kwargs)
    assert stats["rescored"] > 0  # ties are answered by gensim's own most_similar
  assert [s["section"] for s in sections] == ["family", "capitals", "empty section", "random", "Total accuracy"]


def test_a_tiny_vocabulary_and_a_zero_row(tmp_path):
  """Fewer keys than gensim's 5 + 3 candidates (a full sort, not a partition), and a zero vector (NaN scores)."""
  words = ["a", "b", "c", "d", "e", "f"]
  vectors = np.random.default_rng(1).normal(size=(6, 4))
  path = tmp_path / "questions.txt"
  path.write_text(": s\na b c d\nb c d e\na c e f\nf e d c\na a b b\n")
  stats, _ = _same_as_gensim(_kv(words, vectors), str(path))
  assert stats["questions"] == 5
  vectors[4] = 0.0
  with np.errstate(invalid="ignore", divide="ignore"):
    stats, _ = _same_as_gensim(_kv(words, vectors), str(path))
  assert stats["rescored"] >= 1  # the questions with the zero row are gensim's to answer


def test_the_batched_scores_are_within_the_bound_of_gensims(lee_word2vec):
  """The premise of the exactness argument: each batched score is within half the rescoring gap of gensim's."""
  kv = lee_word2vec
  kv.fill_norms()
  words = [("KING", "QUEEN", "MAN"), ("PARIS", "FRANCE", "ROME"), ("GOOD", "BETTER", "BAD")]
  ok_vocab = {k.upper(): kv.get_index(k) for k in reversed(kv.index_to_key)}
  original, kv.key_to_index = kv.key_to_index, ok_vocab
  try:
    picked = [q for q in words if all(w in ok_vocab for w in q)]
    weight = np.concatenate((np.ones(2), -1.0 * np.ones(1)))
    queries = np.stack([kv.get_mean_vector([b, c, a], weight, pre_normalize=True, post_normalize=True,
                                           ignore_missing=False) for a, b, c in picked])
    theirs = np.stack([kv.most_similar(positive=[b, c], negative=[a], topn=None) for a, b, c in picked])
  finally:
    kv.key_to_index = original
  ours = (queries @ kv.vectors.T) / kv.norms
  assert picked and np.abs(ours - theirs).max() <= analogies._gap_bound(kv.vector_size) / 2


def test_quality_benchmarks_give_the_same_figures_with_either_scorer(lee_word2vec):
  assert quality.benchmarks(lee_word2vec) == quality.benchmarks(lee_word2vec, scorer="gensim")
  with pytest.raises(ValueError, match="'fast'.*batched, gensim"):
    quality.benchmarks(lee_word2vec, scorer="fast")
