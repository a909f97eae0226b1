"""gensim's `KeyedVectors.evaluate_word_analogies`, batched: the same numbers, one matrix product per block.

    score, sections = evaluate_word_analogies(kv, "questions-words.txt")   # what kv.evaluate_word_analogies returns

gensim (4.x) scores an analogy a : b :: c : ? one question at a time: a matrix-vector product of the whole
[restrict_vocab, d] matrix with the question's query vector (3CosAdd, `most_similar(positive=[b, c],
negative=[a], topn=5)`), 64 MB read per question for a 32 768 × 512 table. This module computes the same query
vectors, stacks a block of them and scores the block with one matrix product, then applies gensim's rule to each
row's top candidates. The rule, read from gensim's source and kept here:

- the candidate keys are the first `restrict_vocab` keys; with `case_insensitive` (the default) words are compared
  upper-cased, and a form's vector is that of its first key in vocabulary order;
- a question with a word outside them is skipped (or, with `dummy4unknown`, counted incorrect); a line that is not
  four words is skipped uncounted; lines before the first ": section" line are an error;
- the query is the unit mean of the unit vectors of b, c and −a (`get_mean_vector`, called here exactly as gensim
  calls it, so it is bit-identical); a candidate's score is its dot product with the query over its norm;
- the question's own three rows are excluded; of the first 5 remaining candidates by score, the prediction is the
  first whose (upper-cased) form is none of the three question words, else the 5th; correct iff it is the answer;
- per section and in the closing "Total accuracy" section, lists of correct and incorrect (a, b, c, expected)
  tuples (upper-cased words), and the total's accuracy as the score (0.0 when nothing was scored).

**Exactness.** gensim's scores come from a float32 matrix-vector product, this module's from a float32
matrix-matrix product: the two sum in different orders, so a score may differ in its last bits (by at most
2·γ_d + 2u, γ_d = d·u/(1 − d·u), u = 2⁻²⁴, for unit query and row norms: the classical bound on a float dot
product). Wherever the decision could depend on that — two candidates up to the chosen one's rank whose scores are
within twice the bound, an exact tie included, or a non-finite score — the question is scored again by gensim's own
`most_similar`, exactly as `evaluate_word_analogies` calls it. So the result is gensim's, ties and all; on real
tables about one question in a hundred takes that path (`stats["rescored"]`). One difference: for a file without
a single question gensim divides by zero, this returns (0.0, sections).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

TOPN = 5  # gensim's most_similar(..., topn=5) in evaluate_word_analogies
BLOCK = 512  # questions per matrix product: 512 × 32 768 float32 scores = 64 MB


def _read_questions(path: str, ok_vocab: dict[str, int], case_insensitive: bool):
  """[(section name, [(a, b, c, expected) or None for an out-of-vocabulary question, ...]), ...] in file order."""
  from gensim import utils
  sections: list[tuple[str, list]] = []
  with utils.open(path, "rb") as fin:
    for line_no, line in enumerate(fin):
      line = utils.to_unicode(line)
      if line.startswith(": "):
        sections.append((line.lstrip(": ").strip(), []))
        continue
      if not sections:
        raise ValueError("Missing section header before line #%i in %s" % (line_no, path))
      words = [w.upper() for w in line.split()] if case_insensitive else line.split()
      if len(words) != 4:
        continue  # gensim: "Skipping invalid line"
      quad = tuple(words)
      sections[-1][1].append((quad, all(w in ok_vocab for w in quad)))
  return sections


def _gap_bound(dim: int) -> float:
  """Twice the largest difference between gensim's score and this module's for one candidate (module docstring)."""
  u = 2.0 ** -24
  gamma = dim * u / (1 - dim * u)
  return 2 * (2 * gamma + 2 * u) * 1.01


def _decide(order, values, excluded, forms, ignore, bound) -> tuple[int | None, bool]:
  """(predicted row or None, safe) for one question from its top candidates (descending score): gensim's rule on the
  first TOPN non-excluded candidates; safe is False when a gap up to the chosen rank is within `bound`."""
  kept = [(i, v) for i, v in zip(order, values) if i not in excluded][:TOPN + 1]
  chosen = None
  rank = -1
  for rank, (i, _) in enumerate(kept[:TOPN]):
    chosen = i
    if forms[i] not in ignore:
      break
  if chosen is None:
    return None, True
  scores = [v for _, v in kept[:rank + 2]]
  safe = all(np.isfinite(scores)) and all(s - t > bound for s, t in zip(scores, scores[1:]))
  return chosen, safe


def _gensim_prediction(kv, ok_vocab, a, b, c, restrict_vocab, case_insensitive):
  """gensim's own prediction for one question, the same calls as its evaluate_word_analogies."""
  original = kv.key_to_index
  kv.key_to_index = ok_vocab
  try:
    sims = kv.most_similar(positive=[b, c], negative=[a], topn=TOPN, restrict_vocab=restrict_vocab)
  finally:
    kv.key_to_index = original
  predicted = None
  for key, _ in sims:
    predicted = key.upper() if case_insensitive else key
    if predicted in ok_vocab and predicted not in {a, b, c}:
      break
  return predicted


def evaluate_word_analogies(kv, analogies: str, restrict_vocab: int = 300_000, case_insensitive: bool = True,
                            dummy4unknown: bool = False, stats: dict | None = None,
                            block: int = BLOCK) -> tuple[float, list[dict[str, Any]]]:
  """(score, sections) exactly as `kv.evaluate_word_analogies(analogies, restrict_vocab, case_insensitive,
  dummy4unknown)` returns them (see the module docstring); `stats`, if given, receives the counts of questions
  scored and rescored by gensim."""
  ok_keys = kv.index_to_key[:restrict_vocab]
  ok_vocab = {(k.upper() if case_insensitive else k): kv.get_index(k) for k in reversed(ok_keys)}
  sections = _read_questions(analogies, ok_vocab, case_insensitive)
  covered = [q for _, qs in sections for q, ok in qs if ok]
  predictions = _predict(kv, ok_vocab, covered, restrict_vocab, case_insensitive, block, stats)
  out, position = [], 0
  for name, questions in sections:
    section = {"section": name, "correct": [], "incorrect": []}
    for quad, ok in questions:
      if not ok:
        if dummy4unknown:
          section["incorrect"].append(quad)
        continue
      section["correct" if predictions[position] == quad[3] else "incorrect"].append(quad)
      position += 1
    out.append(section)
  total = {"section": "Total accuracy",
           "correct": list(itertools.chain.from_iterable(s["correct"] for s in out)),
           "incorrect": list(itertools.chain.from_iterable(s["incorrect"] for s in out))}
  scored = len(total["correct"]) + len(total["incorrect"])
  out.append(total)
  return (len(total["correct"]) / scored if scored else 0.0), out


def _predict(kv, ok_vocab, questions, restrict_vocab, case_insensitive, block, stats) -> list[str | None]:
  """The predicted (upper-cased) form of each in-vocabulary question, gensim's rule, scored `block` at a time."""
  kv.fill_norms()
  end = restrict_vocab or len(kv.vectors)  # gensim: most_similar's clip_end = restrict_vocab
  vectors_VxD, norms_V = kv.vectors[:end], kv.norms[:end]
  forms = [(k.upper() if case_insensitive else k) for k in kv.index_to_key[:end]]
  bound = _gap_bound(kv.vector_size)
  top = min(TOPN + 4, len(vectors_VxD))  # 3 question rows + the first TOPN + 1 others
  weight = np.concatenate((np.ones(2), -1.0 * np.ones(1)))  # gensim's weights for positive=[b, c], negative=[a]
  predictions: list[str | None] = []
  rescored = 0
  original = kv.key_to_index
  for start in range(0, len(questions), block):
    chunk = questions[start:start + block]
    kv.key_to_index = ok_vocab  # as gensim does around most_similar: question words index the first form
    try:
      queries_BxD = np.stack([kv.get_mean_vector([b, c, a], weight, pre_normalize=True, post_normalize=True,
                                                 ignore_missing=False) for a, b, c, _ in chunk])
    finally:
      kv.key_to_index = original
    scores_BxV = (queries_BxD @ vectors_VxD.T) / norms_V
    if top < scores_BxV.shape[1]:
      cut = scores_BxV.shape[1] - top
      best_BxT = np.argpartition(scores_BxV, cut, axis=1)[:, cut:]
    else:
      best_BxT = np.broadcast_to(np.arange(scores_BxV.shape[1]), (len(chunk), scores_BxV.shape[1]))
    values_BxT = np.take_along_axis(scores_BxV, best_BxT, axis=1)
    finite_B = np.isfinite(scores_BxV).all(axis=1)
    for row, (a, b, c, _) in enumerate(chunk):
      order = np.argsort(-values_BxT[row], kind="stable")
      chosen, safe = _decide(best_BxT[row][order].tolist(), values_BxT[row][order].tolist(),
                             {ok_vocab[a], ok_vocab[b], ok_vocab[c]}, forms, {a, b, c}, bound)
      if safe and finite_B[row]:
        predictions.append(None if chosen is None else forms[chosen])
      else:
        rescored += 1
        predictions.append(_gensim_prediction(kv, ok_vocab, a, b, c, restrict_vocab, case_insensitive))
  if stats is not None:
    stats.update(questions=len(questions), rescored=rescored)
  return predictions
