"""Pretrained word vectors (word2vec, GloVe, fastText) aligned to a tokenizer's vocabulary, as an initial table.

    kv, fmt = load_vectors(path, "auto")                        # gensim's own loaders, never a hand-written parser
    matrix_VxD, report = pretrained_table(path, tokens, kind, d_model=128, std=0.088, seed=0, counts=counts)

Alignment (docs/embeddings.md): each token string loses its tokenizer's markers (byte-level BPE pieces are decoded
from GPT-2's byte alphabet to text, Metaspace's "▁" and WordPiece's "##" are dropped, surrounding whitespace is
stripped), then the word is looked up exactly, then lowercased, then (fastText `.bin` only) composed from its
character n-grams. Special tokens are never covered. Uncovered rows follow `oov`; a width other than the table's is
an error or a fixed random orthogonal projection; `scale=match` rescales the vectors so that the covered rows' mean
norm is the one the normal initialiser gives at the run's std.

This module knows tokens and vectors only: no corpus, no tokenizer object, no training loop. Errors are
`PretrainedError` (a ValueError) with a one-line message naming the value; the trainer reports them as config errors.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np

FORMATS = ("auto", "word2vec", "word2vec-binary", "glove", "fasttext", "fasttext-bin")
OOV_POLICIES = ("random", "mean")
DIM_MISMATCH_POLICIES = ("error", "project")
SCALES = ("match", "keep")
RULES = ("exact", "lower", "subword")  # the match rules, tried in this order
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # the fixed ids 0..4 of every tokenizer kind
BYTE_LEVEL_KINDS = ("bpe", "byte")
METASPACE_KINDS = ("bpe-char", "unigram")
METASPACE = "\u2581"
FASTTEXT_MAGIC = 793712314  # the int32 that opens a fastText .bin written by fastText >= 0.2 (and gensim)
MEAN_NOISE = 0.01  # oov=mean: noise of norm ~1 % of the covered rows' mean norm (breaks the rows' symmetry)
NUM_EXAMPLES = 20


class PretrainedError(ValueError):
  """A user error in the vector file or the pretrained-init options (one line, naming the value)."""


# ----------------------------------------------------------------------------------------------------- loading


def _first_bytes(path: Path, n: int = 256) -> bytes:
  from gensim import utils  # smart_open underneath: .gz / .bz2 are read transparently, as gensim's loaders do
  with utils.open(str(path), "rb") as f:
    return f.read(n)


def _is_count_header(line: bytes) -> bool:
  """'400000 300' — the first line of word2vec (text or binary) and fastText .vec files."""
  parts = line.split()
  return len(parts) == 2 and all(p.isdigit() for p in parts)


def detect_format(path: str | os.PathLike) -> str:
  """By extension and header: a fastText magic number → fasttext-bin; a count header → word2vec (binary for .bin,
  `fasttext` for .vec); a .bin without one → fasttext-bin (the old fastText layout); other text → glove."""
  path = Path(path)
  suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2")]
  ext = suffixes[-1].lower() if suffixes else ""
  head = _first_bytes(path)
  if len(head) >= 4 and struct.unpack("<i", head[:4])[0] == FASTTEXT_MAGIC:
    return "fasttext-bin"
  header = _is_count_header(head.split(b"\n", 1)[0])
  if ext == ".bin":
    return "word2vec-binary" if header else "fasttext-bin"
  if header:
    return "fasttext" if ext == ".vec" else "word2vec"
  return "glove"


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text[:300]


def load_vectors(path: str | os.PathLike, format: str = "auto") -> tuple[Any, str]:
  """(gensim KeyedVectors, the format used). A missing file or a file that does not parse is a PretrainedError."""
  if format not in FORMATS:
    raise PretrainedError(f"model.pretrained.format={format!r} is not one of {', '.join(FORMATS)}")
  path = Path(path)
  if not path.is_file():
    raise PretrainedError(f"model.pretrained.path={str(path)!r}: no such file")
  if not os.access(path, os.R_OK):
    raise PretrainedError(f"model.pretrained.path={str(path)!r}: the file is not readable")
  try:
    resolved = detect_format(path) if format == "auto" else format
  except OSError as e:
    raise PretrainedError(f"model.pretrained.path={str(path)!r}: cannot read the file: {_one_line(e)}") from None
  from gensim.models import KeyedVectors
  from gensim.models.fasttext import load_facebook_vectors
  try:
    if resolved == "fasttext-bin":
      kv = load_facebook_vectors(str(path))
    else:
      kv = KeyedVectors.load_word2vec_format(str(path), binary=resolved == "word2vec-binary",
                                             no_header=resolved == "glove")
  except Exception as e:  # gensim raises ValueError, EOFError, UnicodeDecodeError, struct.error, ... on bad input
    raise PretrainedError(f"model.pretrained.path={str(path)!r} does not parse as {resolved!r}"
                          f"{' (auto-detected)' if format == 'auto' else ''}: {_one_line(e)}") from None
  if resolved == "word2vec-binary" and any("\n" in key for key in kv.index_to_key[:1000]):
    # gensim's binary reader accepts a text file with a count header: words then swallow the text's line breaks.
    raise PretrainedError(f"model.pretrained.path={str(path)!r} does not parse as 'word2vec-binary': its words "
                          f"contain line breaks (a text file? try model.pretrained.format=word2vec)")
  if len(kv.index_to_key) == 0 or kv.vector_size < 1:
    raise PretrainedError(f"model.pretrained.path={str(path)!r} holds no vectors (format {resolved!r})")
  return kv, resolved


# --------------------------------------------------------------------------------------------------- alignment


def token_word(token: str, kind: str) -> str:
  """The text a vocabulary token stands for, without its tokenizer's markers ("" when it stands for none)."""
  if token in SPECIAL_TOKENS:
    return ""
  if kind in BYTE_LEVEL_KINDS:
    from tokenizers import decoders  # the tokenizer library's own byte-level decoder: "Ġthe" → " the"
    text = decoders.ByteLevel().decode([token])
    if "\ufffd" in text and "\ufffd" not in token:  # a piece of a multi-byte character stands for no text
      return ""
    token = text
  elif kind in METASPACE_KINDS:
    token = token.replace(METASPACE, " ")
  elif kind == "wordpiece" and token.startswith("##"):
    token = token[2:]
  return token.strip()


def starts_word(token: str, kind: str) -> bool:
  """Whether the token begins a word in running text (`Ġthe`, `▁the`, `the` but not `##ing`); for the byte-level and
  Metaspace kinds a piece without its space marker continues a word."""
  if token in SPECIAL_TOKENS:
    return False
  if kind in BYTE_LEVEL_KINDS:
    return token.startswith("\u0120")  # "Ġ", the byte-level form of a space
  if kind in METASPACE_KINDS:
    return token.startswith(METASPACE)
  if kind == "wordpiece":
    return not token.startswith("##")
  return True


def token_words(tokens: Sequence[str], kind: str) -> list[str]:
  return [token_word(t, kind) for t in tokens]


def align(kv, tokens: Sequence[str], kind: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(vectors [V, S] float32, rule index [V] int: -1 uncovered, else an index into RULES, words [V]).

  Subword composition is tried only when `kv` is a fastText model with n-gram buckets (a `.bin`)."""
  words = token_words(tokens, kind)
  has_subwords = getattr(kv, "bucket", 0) > 0 and hasattr(kv, "vectors_ngrams")
  vectors_VxS = np.zeros((len(tokens), kv.vector_size), np.float32)
  rule_V = np.full(len(tokens), -1, np.int64)
  index = kv.key_to_index
  for i, word in enumerate(words):
    if not word:
      continue
    for r, candidate in ((0, word), (1, word.lower())):
      if candidate in index:
        vectors_VxS[i], rule_V[i] = kv.vectors[index[candidate]], r
        break
    else:
      if has_subwords:
        vector = np.asarray(kv.get_vector(word), np.float32)  # the mean of its character n-grams' vectors
        if np.any(vector):  # gensim returns zeros when no n-gram can be extracted
          vectors_VxS[i], rule_V[i] = vector, 2
  return vectors_VxS, rule_V, words


# -------------------------------------------------------------------------------------------------- the table


def normal_mean_norm(std: float, d: int) -> float:
  """E‖x‖ for x ~ N(0, std² I_d): std·√2·Γ((d+1)/2)/Γ(d/2), the chi distribution's mean (≈ std·√d)."""
  return float(std * math.sqrt(2.0) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2)))


def orthogonal_projection(source_dim: int, target_dim: int, seed: int) -> np.ndarray:
  """A fixed random [S, d] matrix with orthonormal columns (S > d) or rows (S < d): QR of a seeded Gaussian. When
  widening it preserves every norm and inner product; when narrowing it keeps a random d-dimensional subspace."""
  rng = np.random.default_rng([seed, source_dim, target_dim])
  q, r = np.linalg.qr(rng.standard_normal((max(source_dim, target_dim), min(source_dim, target_dim))))
  q = q * np.sign(np.diag(r))  # the unique Q with positive R diagonal: Haar-distributed
  return (q if source_dim >= target_dim else q.T).astype(np.float64)


def _mean_norm(x_NxD: np.ndarray) -> float:
  return float(np.linalg.norm(x_NxD, axis=1).mean()) if len(x_NxD) else 0.0


def pretrained_table(path: str | os.PathLike, tokens: Sequence[str], kind: str, *, d_model: int, std: float,
                     format: str = "auto", oov: str = "random", dim_mismatch: str = "error", scale: str = "match",
                     seed: int = 0, counts: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
  """The [V, d_model] float32 initial table and its coverage report (see the module docstring)."""
  for name, value, allowed in (("oov", oov, OOV_POLICIES), ("dim_mismatch", dim_mismatch, DIM_MISMATCH_POLICIES),
                               ("scale", scale, SCALES)):
    if value not in allowed:
      raise PretrainedError(f"model.pretrained.{name}={value!r} is not one of {', '.join(allowed)}")
  kv, resolved = load_vectors(path, format)
  source_dim = int(kv.vector_size)
  if source_dim != d_model and dim_mismatch == "error":
    raise PretrainedError(f"model.pretrained.path={str(path)!r} has {source_dim}-dimensional vectors but the table "
                          f"has model.d_model={d_model}; set model.d_model={source_dim} or "
                          f"model.pretrained.dim_mismatch=project")
  vectors_VxS, rule_V, words = align(kv, tokens, kind)
  covered_V = rule_V >= 0
  if not covered_V.any():
    order = range(len(tokens)) if counts is None else np.argsort(-np.asarray(counts)[:len(tokens)], kind="stable")
    samples = [tokens[i] for i in order if words[i]][:3] or list(tokens[:3])  # the most frequent, with counts
    raise PretrainedError(f"model.pretrained.path={str(path)!r} covers no token of the {kind!r} vocabulary "
                          f"(e.g. {', '.join(repr(s) for s in samples)}); check the tokenizer and the file's language "
                          f"and casing")
  vectors_VxD = vectors_VxS.astype(np.float64)
  if source_dim != d_model:
    vectors_VxD = vectors_VxD @ orthogonal_projection(source_dim, d_model, seed)
  covered_norm = _mean_norm(vectors_VxD[covered_V])
  target_norm = normal_mean_norm(std, d_model)
  factor = target_norm / covered_norm if scale == "match" and covered_norm > 0 else 1.0
  table_VxD = vectors_VxD * factor
  covered_norm *= factor

  # Uncovered rows, from a generator of their own: the covered rows never depend on the policy.
  rng = np.random.default_rng([seed, 12])
  missing = int((~covered_V).sum())
  if oov == "random":
    fill_NxD = rng.normal(0.0, std, (missing, d_model))
    fill_NxD *= covered_norm / max(_mean_norm(fill_NxD), 1e-30)
  else:
    mean_D = table_VxD[covered_V].mean(axis=0)
    fill_NxD = mean_D + rng.normal(0.0, MEAN_NOISE * covered_norm / math.sqrt(d_model), (missing, d_model))
  table_VxD[~covered_V] = fill_NxD
  report = coverage_report(tokens, words, rule_V, counts)
  report.update({"path": str(path), "format": resolved, "source_vocab": len(kv.index_to_key),
                 "source_dim": source_dim, "table_shape": [len(tokens), d_model], "tokenizer": kind, "oov": oov,
                 "dim_mismatch": dim_mismatch, "projected": source_dim != d_model, "scale": scale,
                 "scale_factor": factor, "covered_mean_norm": covered_norm, "init_mean_norm": target_norm})
  return table_VxD.astype(np.float32), report


def coverage_report(tokens: Sequence[str], words: Sequence[str], rule_V: np.ndarray,
                    counts: np.ndarray | None = None) -> dict[str, Any]:
  """Shares of rows and of training tokens covered, counts per rule, and the most frequent uncovered tokens.

  `share_rows_covered` divides by every row (special tokens included, which are never covered); the token share
  weights each row by its count in the training split (None without counts)."""
  covered_V = rule_V >= 0
  special_V = np.array([t in SPECIAL_TOKENS for t in tokens], bool)
  rules = {name: int((rule_V == r).sum()) for r, name in enumerate(RULES)}
  rules["special"] = int(special_V.sum())
  rules["uncovered"] = int((~covered_V & ~special_V).sum())
  uncovered = np.flatnonzero(~covered_V & ~special_V)
  share_tokens, total = None, None
  if counts is not None:
    counts = np.asarray(counts, np.int64)[:len(tokens)]
    counts = np.pad(counts, (0, len(tokens) - len(counts)))
    total = int(counts.sum())
    share_tokens = float(counts[covered_V].sum() / total) if total else 0.0
    uncovered = uncovered[np.argsort(-counts[uncovered], kind="stable")]  # the most frequent first
  return {"rows": len(tokens), "rows_covered": int(covered_V.sum()),
          "share_rows_covered": float(covered_V.mean()) if len(tokens) else 0.0,
          "share_tokens_covered": share_tokens, "training_tokens": total, "rules": rules,
          "uncovered_examples": [tokens[i] for i in uncovered[:NUM_EXAMPLES]]}


def summary_line(report: dict[str, Any]) -> str:
  tokens = report["share_tokens_covered"]
  rules = ", ".join(f"{k} {v}" for k, v in report["rules"].items())
  return (f"pretrained embeddings: {report['rows_covered']}/{report['rows']} rows "
          f"({100 * report['share_rows_covered']:.1f} %)"
          f"{'' if tokens is None else f', {100 * tokens:.1f} % of training tokens'} covered by "
          f"{report['path']} ({report['format']}, {report['source_vocab']}×{report['source_dim']}"
          f"{', projected' if report['projected'] else ''}; {rules}; oov={report['oov']}, scale={report['scale']})")
