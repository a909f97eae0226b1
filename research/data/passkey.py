"""Passkey-retrieval text (Mohtashami & Jaggi 2023, "Landmark Attention", arXiv 2305.16300): the prompt's pieces and
the synthetic `passkey` corpus built from them (docs/reports.md, "Passkey retrieval").

A prompt is the fixed filler of the paper, cycled sentence by sentence, with the needle between two sentences and the
question at the end:

  The grass is green. The sky is blue. … The pass key is 12345. Remember it. 12345 is the pass key. … Here we go.
  What is the pass key? The pass key is

and its answer is " 12345". The paper's opening instruction ("There is an important info hidden inside a lot of
irrelevant text. …") is left out: at short training lengths (64 tokens) it would leave no room for filler.

Plain text only (no tokenizer, no jax): research.evaluate.passkey tokenizes and scores; the corpus (`passkey` spec
of research.data.corpora) is documents `prompt + answer + "."` with seeded keys, filler counts and depths, so a model
trained on it learns the task the evaluation asks.
"""

from __future__ import annotations

import numpy as np

FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_DIGITS = 5
# Bump whenever the documents of the corpus change: part of its token-cache key (research.data.batches.cache_key).
CORPUS_VERSION = "1"
CORPUS_SEED = 20230516  # the documents are the same on every machine
CORPUS_DOCS = 20000
CORPUS_MAX_FILLER = 10  # sentences of filler per document: 0 … this many (about 35 … 90 BPE tokens)


def random_key(rng: np.random.Generator) -> str:
  """A 5-digit key without a leading zero (10000 … 99999); the paper draws randint(1, 50000), keys of 1–5 digits
  (docs/reports.md, "Passkey retrieval")."""
  return str(int(rng.integers(10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS)))


def filler(n: int) -> list[str]:
  """The first `n` filler sentences: FILLER cycled."""
  return [FILLER[i % len(FILLER)] for i in range(n)]


def needle(key: str) -> str:
  return NEEDLE.format(key=key)


def prompt_text(key: str, num_filler: int, num_before: int) -> str:
  """`num_filler` filler sentences with the needle after the first `num_before` of them, then the question."""
  if not 0 <= num_before <= num_filler:
    raise ValueError(f"num_before={num_before} must be in [0, num_filler={num_filler}]")
  sentences = filler(num_filler)
  return " ".join([*sentences[:num_before], needle(key), *sentences[num_before:], QUESTION])


def answer_text(key: str) -> str:
  """What follows the prompt: the key, after a space (tokenized in context, so a BPE space-prefix merges with it)."""
  return f" {key}"


def depth_split(num_filler: int, depth: float) -> int:
  """Filler sentences before the needle at `depth` ∈ [0, 1] (0: right at the start, 1: right before the question)."""
  return int(round(depth * num_filler))


def corpus_documents(num_docs: int = CORPUS_DOCS, seed: int = CORPUS_SEED,
                     max_filler: int = CORPUS_MAX_FILLER) -> list[str]:
  """`num_docs` solved prompts, `prompt + answer + "."`: filler count uniform in [0, max_filler], depth uniform in
  [0, 1], keys uniform; deterministic in `seed`."""
  rng = np.random.default_rng(seed)
  docs = []
  for _ in range(num_docs):
    key = random_key(rng)
    n = int(rng.integers(0, max_filler + 1))
    docs.append(prompt_text(key, n, depth_split(n, float(rng.uniform()))) + answer_text(key) + ".")
  return docs
