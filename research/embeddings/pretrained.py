"""Pretrained word vectors (word2vec, GloVe, fastText) aligned to a tokenizer's vocabulary, as an initial table.

    kv, fmt = load_vectors(path, "auto")                        # gensim's own loaders, never a hand-written parser
    matrix_VxD, report = pretrained_table(path, tokens, kind, d_model=128, std=0.088, seed=0, counts=counts)

Alignment (docs/embeddings.md): each token string loses its tokenizer's markers (byte-level BPE pieces are decoded
from GPT-2's byte alphabet to text, Metaspace's "▁" and WordPiece's "##" are dropped, surrounding whitespace is
stripped), then the word is looked up exactly, then lowercased, then (fastText `.bin` only) composed from its
character n-grams. Special tokens are never covered. Uncovered rows follow `oov`; a width other than the table's is
an error or a fixed random orthogonal projection; `scale=match` rescales the vectors so that the covered rows' mean
norm is the one the normal initialiser gives at the run's std.

The file is checked when it is read (`load_vectors`, before anything compiles): every vector finite float32, a
header count equal to the vectors the file holds, not every vector zero, a binary's values on one scale (a word with
a space puts its records out of step: `_binary_misread`). A word given twice keeps its first vector
(gensim's rule), reported as `duplicate_words`; zero rows are legal (a padding vector) and copied as they are, but a
vocabulary covered by zero vectors only is refused.

This module knows tokens and vectors only: no corpus, no tokenizer object, no training loop. Errors are
`PretrainedError` (a ValueError) with a one-line message naming the value and the option that gave it (`names`);
the trainer reports them as config errors.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
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


def _is_pickle(path: Path) -> bool:
  """A Python pickle (protocol 2 and later open with 0x80 and the protocol number), what gensim's `.save()` writes
  (.model, .kv, .w2v, also gzipped): no vector format starts with that byte."""
  head = _first_bytes(path, 2)
  return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_count_header(line: bytes) -> bool:
  """'400000 300' — the first line of word2vec (text or binary) and fastText .vec files."""
  parts = line.split()
  return len(parts) == 2 and all(p.isdigit() for p in parts)


# What gensim (smart_open, by the name's last suffix) decompresses when reading and compresses when writing word2vec /
# GloVe text and word2vec binaries, with Python's own codecs; smart_open's other two need packages that are not
# dependencies (it fails on them with a traceback), so such names are refused.
COMPRESSED = (".gz", ".bz2", ".xz")
UNWRITTEN_COMPRESSIONS = (".zst", ".lz4")
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark: gensim reads it as part of the first line


def extension(path: str | os.PathLike) -> str:
  """The name's format suffix in lower case, compression suffixes skipped ("v.bin.gz" → ".bin"), or ""."""
  suffixes = [s for s in Path(path).suffixes if s.lower() not in COMPRESSED]
  return suffixes[-1].lower() if suffixes else ""


def detect_format(path: str | os.PathLike) -> str:
  """By extension and header: a fastText magic number → fasttext-bin; a count header → word2vec (binary for .bin,
  `fasttext` for .vec); a .bin without one → fasttext-bin (the old fastText layout); other text → glove."""
  path = Path(path)
  ext = extension(path)
  head = _first_bytes(path)
  if len(head) >= 4 and struct.unpack("<i", head[:4])[0] == FASTTEXT_MAGIC:
    return "fasttext-bin"
  header = _is_count_header(head.removeprefix(BOM).split(b"\n", 1)[0])  # refused in load_vectors, but by its format
  if ext == ".bin":
    return "word2vec-binary" if header else "fasttext-bin"
  if header:
    return "fasttext" if ext == ".vec" else "word2vec"
  return "glove"


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text[:300]


# What each format is, for the message of a file that does not parse as it.
DESCRIPTIONS = {
    "word2vec": "word2vec text: a 'COUNT DIM' line, then one 'word x1 ... xDIM' line per vector",
    "fasttext": "fastText .vec text: a 'COUNT DIM' line, then one 'word x1 ... xDIM' line per vector",
    "glove": "GloVe text: one 'word x1 ... xD' line per vector, no header",
    "word2vec-binary": "a word2vec binary: a 'COUNT DIM' line, then per vector a word, a space and DIM float32s",
    "fasttext-bin": "a fastText binary model (a .bin written by fastText or gensim's save_facebook_model)",
}
# The option names messages print: the trainer's config fields by default; research-analyze passes its flags. A
# "unicode_errors" entry, where the caller has such an option, is named in the message of a file that is not UTF-8.
CONFIG_NAMES = {"path": "model.pretrained.path", "format": "model.pretrained.format",
                "unicode_errors": "model.pretrained.unicode_errors"}
UNICODE_ERRORS = ("strict", "replace", "ignore")  # gensim's `unicode_errors` for word2vec / GloVe words
_CHECK_ROWS = 1 << 16  # rows per block of the finiteness check (bounded memory on 3M × 300 files)


def _has_header(resolved: str) -> bool:
  return resolved in ("word2vec", "fasttext", "word2vec-binary")


def _header(path: Path) -> tuple[int, int] | None:
  """(count, dim) of a 'COUNT DIM' first line, else None."""
  from gensim import utils
  with utils.open(str(path), "rb") as f:
    line = f.readline()
  return tuple(int(p) for p in line.split()) if _is_count_header(line.strip()) else None  # type: ignore[return-value]


def _text_lines(path: Path):
  from gensim import utils
  with utils.open(str(path), "rb") as f:
    yield from f


def _binary_records(path: Path, dim: int, chunk: int = 1 << 20):
  """Each complete record of a word2vec binary as gensim's reader walks it (`keyedvectors._add_bytes_to_kv`: a word,
  a space, DIM float32s; newlines before a word are dropped): (data, previous, start, space), where the record's
  word is data[start:space] (newlines stripped) and `previous` is where the previous record starts in `data` (-1 for
  the first). Only to count the records and to point at a bad one: the vectors themselves are gensim's."""
  from gensim import utils
  record = 4 * dim
  with utils.open(str(path), "rb") as f:
    f.readline()
    buf, start, previous = b"", 0, -1
    while True:
      space = buf.find(b" ", start)
      if space == -1 or len(buf) - space - 1 < record:
        more = f.read(chunk)
        if not more:
          return
        keep = start if previous < 0 else previous  # the previous record stays in the buffer (`_space_word`)
        buf, start, previous = buf[keep:] + more, start - keep, previous - keep if previous >= 0 else -1
        continue
      while buf[start:start + 1] == b"\n":
        start += 1
      yield buf, previous, start, space
      previous, start = start, space + 1 + record


def _binary_words(path: Path, dim: int):
  """The raw word of each complete record of a word2vec binary (`_binary_records`)."""
  for data, _, start, space in _binary_records(path, dim):
    yield data[start:space]


# A binary's records out of step (a word with a space, which the format cannot hold: gensim writes one anyway) read
# float32 bytes shifted by 1 to 3 bytes, or a word's letters, as numbers: their exponents are then near uniform over
# float32's 2^-126 ... 2^127, where honest vectors (trained, normalised or count-based) span a few decades around
# their scale. A vector with a component beyond these multiples of the file's scale (the median over vectors of
# max |x|) is read out of step; both bounds are ratios, so a file of any scale passes (docs/embeddings.md).
OUTLIER_ABOVE = 1e6  # a lowercase letter read as a float32's top byte is >= 2^67 ~ 1.5e20
OUTLIER_BELOW = 1e-12  # nonzero; a space or a control byte read as a top byte is <= 2^-63 ~ 1.1e-19
# Beyond this multiple of the file's scale a value is a misread on its own (a lowercase letter read as a float32's top
# byte is >= 2^67; Zipf-distributed count vectors measured reach ~1e11 × their median row maximum).
EXTREME_ABOVE = 1e15


def _row_scales(matrix) -> tuple[np.ndarray, np.ndarray]:
  """(max |x|, the smallest nonzero |x|; inf for a zero row) per row, NaN / inf rows as inf, in blocks."""
  highs, lows = [], []
  for start in range(0, len(matrix), _CHECK_ROWS):
    block = np.abs(np.asarray(matrix[start:start + _CHECK_ROWS], np.float64))
    block[~np.isfinite(block)] = np.inf
    highs.append(block.max(axis=1) if block.shape[1] else np.zeros(len(block)))
    lows.append(np.where(block > 0, block, np.inf).min(axis=1) if block.shape[1] else np.zeros(len(block)))
  return (np.concatenate(highs), np.concatenate(lows)) if highs else (np.zeros(0), np.zeros(0))


def _file_scale(matrix) -> float:
  """The median over nonzero finite vectors of max |x| (0.0 when there is none)."""
  high, _ = _row_scales(matrix)
  high = high[np.isfinite(high) & (high > 0)]
  return float(np.median(high)) if len(high) else 0.0


def _first_implausible(matrix, scale: float) -> int | None:
  """The first vector with a component that is not finite or off the file's `scale` (OUTLIER_ABOVE / _BELOW)."""
  high, low = _row_scales(matrix)
  bad = ~np.isfinite(high) | (high > OUTLIER_ABOVE * scale) | (low < OUTLIER_BELOW * scale)
  return int(np.argmax(bad)) if bad.any() else None


def _plausible(raw: bytes, scale: float) -> bool:
  return _first_implausible(np.frombuffer(raw, "<f4")[None], scale) is None


def _space_word(data: bytes, previous: int, start: int, space: int, dim: int, scale: float) -> bytes | None:
  """The true word of the previous record when it contains a space (gensim read it up to its first space, took the
  rest and the vector's first bytes as the vector, and resynchronised inside the word it read next, data[start:space],
  which then begins with the vector's last bytes), else None. The hypothesis holds when a later space, free of
  control characters and UTF-8 like the word that then follows, ends a word after which DIM plausible float32s end
  exactly inside that next word."""
  if previous < 0:
    return None
  first = data.find(b" ", previous)
  for j in range(1, space - start):
    q = start + j - 4 * dim - 1  # where the previous record's true word would end
    if q <= first or data[q] != 0x20:
      continue
    word, following = data[previous:q], data[start + j:space]
    if any(_CONTROL.search(w) or _undecodable(w, "utf-8") is not None for w in (word, following)):
      continue
    if _plausible(data[q + 1:start + j], scale):
      return word
  return None


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_SUSPECT = re.compile(rb"[\x00-\x1f\x7f-\xff]")


def _first_space_word(path: Path, dim: int, scale: float, at: int | None = None) -> tuple[int, bytes] | None:
  """(i, the true word of vector i + 1) for the first record that `_space_word` shows to hold a word with a space,
  tried at each word with control characters or bytes that are not UTF-8 (what the vector's last bytes usually
  make of the next word), or only at vector `at + 1`'s record when `at` is given."""
  for i, (data, previous, start, space) in enumerate(_binary_records(path, dim)):
    if at is not None and i != at + 1:
      if i > at + 1:
        return None
      continue
    raw = data[start:space]
    if at is None and (not _SUSPECT.search(raw) or not _CONTROL.search(raw) and _undecodable(raw, "utf-8") is None):
      continue
    word = _space_word(data, previous, start, space, dim, scale)
    if word is not None:
      return i - 1, word
  return None


def _is_binary(path: Path, count: int, dim: int) -> bool:
  """Whether what follows the 'COUNT DIM' line is exactly `count` word2vec binary records of `dim` float32s whose
  words hold no control characters: a word2vec binary with a true header."""
  n = 0
  for word in _binary_words(path, dim):
    n += 1
    if not word or n > count or any(b < 0x20 for b in word):
      return False
  return n == count


_WORD_END = re.compile(rb"[\x00-\x1f ]")  # a space ends a word; a control character is no word's


def _walks(data: bytes, start: int, width: int, records: int, whole: bool) -> bool:
  """Whether `records` more word2vec binary records of `width` float32s, the first starting at `start` in `data`,
  each have a word without control characters, of any length (gensim reads any), ended by a space; `whole` (`data`
  is the whole rest of the file): then the last one must end where the file does (or before one line break)."""
  for _ in range(records):
    if start >= len(data):
      return not whole
    while data[start:start + 1] == b"\n":
      start += 1
    end = _WORD_END.search(data, start)  # stops at the first control byte: float bytes hold one every few bytes
    if end is None:
      return not whole  # a word longer than what was read: the pass over the file decides
    if end.start() == start or data[end.start()] != 0x20:
      return False
    start = end.start() + 1 + 4 * width
  return not whole or start <= len(data) and data[start:] in (b"", b"\n")


def _binary_width(path: Path, count: int, dim: int, limit: int = 1 << 16) -> int | None:
  """The width, other than the header's DIM and at most `limit`, at which the records after the header are `count`
  clean word2vec binary records (a header whose second number is wrong), or None. A cheap walk of the first four
  records (of every record, for a file read whole) rules out nearly every width before a pass over the file confirms
  one."""
  from gensim import utils
  wanted = 4 * (4 * limit + 257)
  with utils.open(str(path), "rb") as f:
    f.readline()
    data = f.read(wanted)
  whole = len(data) < wanted
  end = _WORD_END.search(data)
  first = end.start() if end is not None and data[end.start()] == 0x20 else -1
  if first <= 0:
    return None
  for width in range(1, limit + 1):
    records = count - 1 if whole else min(count, 4) - 1
    if width != dim and _walks(data, first + 1 + 4 * width, width, records, whole) and \
        _is_binary(path, count, width):
      return width
  return None


def _is_binary_file(path: Path, header: tuple[int, int]) -> bool:
  """A word2vec binary read as text: its records walk the file as the header says, and its first lines after the
  header are not text vector lines (tiny text files can walk as records by chance)."""
  return not _looks_like_text(path, header[1]) and _is_binary(path, *header)


def _binary_hint(header: tuple[int, int], names: dict[str, str]) -> str:
  return (f"it is a word2vec binary (its header's {header[0]} records of {header[1]} float32s follow); set "
          f"{names['format']}=word2vec-binary")


def _looks_like_text(path: Path, dim: int) -> bool:
  """Whether the two lines after the header are word2vec text lines ('word x1 ... xDIM'): a text file read as a
  word2vec binary."""
  lines = []
  for line_no, raw in enumerate(_text_lines(path)):
    if line_no:
      lines.append(raw.decode("utf-8", "replace").rstrip().split(" "))
    if len(lines) == 2:
      break
  return bool(lines) and all(len(parts) == dim + 1 and all(_is_number(x) for x in parts[1:]) for parts in lines)


def _vectors_in_file(path: Path, resolved: str, dim: int) -> int:
  """How many vectors the file holds: its non-blank lines after the header (text), its records (binary)."""
  if resolved == "word2vec-binary":
    return sum(1 for _ in _binary_words(path, dim))
  return sum(1 for line in _text_lines(path) if line.strip()) - (1 if _has_header(resolved) else 0)


def _line_of_other_width(path: Path, resolved: str, dim: int) -> tuple[int, bytes, int] | None:
  """(line number, word, count of numbers) of the first vector line of a text file whose count of numbers is not
  `dim`, counted as gensim splits a line (on " ", after stripping the line's end), or None. gensim refuses most such
  lines, but one with a single number it broadcasts over the whole vector, silently."""
  skip = 1 if _has_header(resolved) else 0
  for line_no, raw in enumerate(_text_lines(path), 1):
    if line_no <= skip:
      continue
    line = raw.rstrip(b" \t\r\n\x0b\x0c")
    if line and line.count(b" ") != dim:
      return line_no, line.split(b" ", 1)[0], line.count(b" ")
  return None


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def _undecodable(raw: bytes, encoding: str) -> UnicodeDecodeError | None:
  try:
    raw.decode(encoding)
  except UnicodeDecodeError as e:
    return e
  return None


def _out_of_step(i: int, word, previous, true_word: bytes | None = None, value: str = "") -> str:
  """Records out of step at vector i + 1, read as `word` (after `previous`): a word containing a space, which the
  format separates from its vector by a space."""
  before = f" after {previous!r} (vector {i})" if previous is not None else ""
  what = (f"its word is {true_word.decode()!r}, which gensim read as {word!r} and the rest as numbers" if true_word
          else f"it reads as {word!r}{value}")
  return (f"the records are out of step at vector {i + 1}{before}: {what}; a word2vec binary cannot hold a word "
          f"containing a space (nothing ends a word but a space): write the vectors as word2vec text and rename or "
          f"drop that word")


def _binary_out_of_step(path: Path, header: tuple[int, int], i: int, word, previous,
                        true_word: bytes | None = None, value: str = "") -> str:
  """A word2vec binary's records out of step at vector i + 1: a header DIM other than the records' width when another
  width reads the file cleanly, else a word with a space."""
  width = _binary_width(path, *header)
  if width is not None:
    return (f"its header says each vector has {header[1]} number{'s' if header[1] != 1 else ''} but its records "
            f"hold {width} float32s each; correct the header's second number")
  return _out_of_step(i, word, previous, true_word, value)


def _binary_misread(path: Path, kv, header: tuple[int, int]) -> str | None:
  """Why a word2vec binary that gensim read was read out of step, else None: a vector of implausible values (a
  component off the file's scale: refused; not finite: refused as out of step when a word with a space explains it,
  else left to the finiteness check's message), or a word whose bytes a word with a space before it explains."""
  keys, scale = kv.index_to_key, _file_scale(kv.vectors)
  bad = _first_implausible(kv.vectors, scale)
  # What misread bytes make of a word: control characters, or U+FFFD from unicode_errors=replace (one scan).
  garbled = re.search("[\x00-\x1f\x7f\ufffd]", "".join(key for key in keys if key)) is not None
  previous = lambda i: keys[i - 1] if i else None  # noqa: E731
  if bad is not None:
    found = _first_space_word(path, kv.vector_size, scale, at=bad)
    row = np.abs(np.asarray(kv.vectors[bad], np.float64))
    if found is None and not np.isfinite(row).all():
      return None if _binary_width(path, *header) is None else _binary_out_of_step(path, header, bad, keys[bad], None)
    # Values off the file's scale are evidence, not proof: an honest file of heavy-tailed values (count vectors, a
    # few outliers, tiny nonzeros) has them too. A misread is concluded when a word with a space explains the bytes,
    # a value is extreme, or some word is `garbled`; otherwise the file reads as gensim read it.
    extreme = bool((row > EXTREME_ABOVE * scale).any())
    if found is not None or extreme or garbled:
      odd = row[(row > OUTLIER_ABOVE * scale) | ((row > 0) & (row < OUTLIER_BELOW * scale))]
      value = f", a vector holding {odd[0]:.3g} where the file's vectors reach {scale:.3g}" if len(odd) else ""
      return _binary_out_of_step(path, header, bad, keys[bad], previous(bad), found and found[1], value)
  if not garbled:  # no word to explain
    return None
  found = _first_space_word(path, kv.vector_size, scale)  # a fallback: the values caught every misread file measured
  if found is not None:
    i, word = found
    return _binary_out_of_step(path, header, i, keys[i], previous(i), word)
  return None


def _failure(path: Path, resolved: str, e: BaseException, names: dict[str, str], unicode_errors: str) -> str | None:
  """Why gensim raised `e` on the file, when the file shows it: a text file read as a binary, a binary header DIM
  that is not the records' width, a header count other than the vectors found (gensim runs off the end, or cannot
  allocate a count's worth), else `_diagnose`'s first bad line or record (or a binary read as text)."""
  header = _header(path)
  if header is not None and resolved == "word2vec-binary":
    if _looks_like_text(path, header[1]):
      return f"its vectors are text lines ('word x1 ... xDIM'): a text file? try {names['format']}=word2vec"
    width = _binary_width(path, *header)
    if width is not None:
      return _binary_out_of_step(path, header, 0, b"", None)
  if isinstance(e, (EOFError, MemoryError)) and header is not None and resolved != "fasttext-bin":
    if resolved != "word2vec-binary" and _is_binary_file(path, header):
      return _binary_hint(header, names)
    found = _vectors_in_file(path, resolved, header[1])
    if found != header[0]:
      return f"its header announces {header[0]} vectors but the file holds {found}; correct the header's first number"
  return _diagnose(path, resolved, "utf-8", names, unicode_errors)


def _unicode_hint(names: dict[str, str]) -> str:
  option = names.get("unicode_errors")
  return (f"set {option}=replace (or ignore) to read it with gensim's unicode_errors" if option else
          "re-encode the file as UTF-8 (gensim reads it only with unicode_errors='replace' or 'ignore', which this "
          "command does not set)")


def _diagnose(path: Path, resolved: str, encoding: str, names: dict[str, str],
              unicode_errors: str = "strict") -> str | None:
  """Why gensim could not read the file, when the file shows it (the first bad line or record), else None. Words
  that are not UTF-8 are the reason only under `unicode_errors` "strict" (else gensim read them, and the problem is
  elsewhere)."""
  header = _header(path)
  if _has_header(resolved) and header is None:
    return "its first line is not a 'COUNT DIM' header"
  strict = unicode_errors == "strict"
  if resolved == "word2vec-binary":
    count, dim = header
    earlier, previous, highs, width = None, None, [], ...
    for i, (data, before, start, space) in enumerate(_binary_records(path, dim)):
      raw = data[start:space]
      e = _undecodable(raw, encoding)
      if _CONTROL.search(raw) or e is not None:  # float bytes read as a word, when a word with a space explains them
        known = [h for h in highs[:-1] if 0 < h < np.inf]  # not the vector read out of step
        scale = float(np.median(known)) if known else 1.0
        true_word = _space_word(data, before, start, space, dim, scale)
        if true_word is None and _CONTROL.search(raw):
          width = _binary_width(path, *header) if width is ... else width
        if true_word is not None or isinstance(width, int):
          return _binary_out_of_step(path, header, i - 1, previous.decode(errors="replace"),
                                     earlier.decode(errors="replace") if i > 1 else None, true_word)
      highs.append(float(np.abs(np.frombuffer(data[space + 1:space + 1 + 4 * dim], "<f4")).max(initial=0.0)))
      if e is not None and strict:
        return (f"the word of vector {i + 1} ({raw[:40]!r}) is not UTF-8 ({e.reason}): the file's words are in "
                f"another encoding or cut inside a character; {_unicode_hint(names)}")
      earlier, previous = previous, raw
    return None
  if resolved not in ("word2vec", "fasttext", "glove"):
    return None
  reason = _first_bad_line(path, header, encoding, names, unicode_errors)
  # A line "not UTF-8", "blank", ... is a binary's float bytes when its records walk the file (NUL bytes say so already)
  if reason is not None and _NUL not in reason and header is not None and _is_binary_file(path, header):
    return _binary_hint(header, names)
  return reason


_NUL = "holds NUL bytes"


def _first_bad_line(path: Path, header: tuple[int, int] | None, encoding: str, names: dict[str, str],
                    unicode_errors: str) -> str | None:
  """The first line of a text vector file that gensim cannot read as a word and the header's (or the first vector's)
  count of numbers, and why, else None."""
  strict = unicode_errors == "strict"
  dim = header[1] if header else None
  what = "the header says" if header else "the first vector has"
  for line_no, raw in enumerate(_text_lines(path), 1):
    if header and line_no == 1:
      continue
    if b"\0" in raw:  # float32 bytes: a binary file read as text
      return (f"line {line_no} {_NUL}: the file looks binary (a word2vec binary named like text?); "
              f"set {names['format']}=word2vec-binary if it is one")
    e = _undecodable(raw, encoding)
    if e is not None and strict:
      return (f"line {line_no} holds bytes that are not UTF-8 ({e.reason} at byte {e.start}: "
              f"{raw[max(0, e.start - 10):e.start + 10]!r}): {_unicode_hint(names)}")
    if not raw.strip():
      return f"line {line_no} is blank"
    parts = raw.decode(encoding, errors=unicode_errors).rstrip().split(" ")
    if "\t" in parts[0] and (len(parts) == 1 or dim is not None and len(parts) != dim + 1):
      return (f"line {line_no} separates its fields with a tab: the word and the numbers of a vector line must be "
              f"separated by single spaces (gensim splits on spaces only)")
    fields = [x for x in parts if x]
    if "" in parts[1:] and len(fields) > 1 and all(_is_number(x) for x in fields[1:]) and \
        (dim is None or len(fields) == dim + 1):
      at = parts.index("", 1)
      where_ = f"after the word {parts[0]!r}" if at == 1 else f"after its number {at - 1} ({parts[at - 1]!r})"
      return (f"line {line_no} has two spaces in a row {where_}, an empty field gensim cannot read as a number: "
              f"separate the fields by single spaces")
    if dim is None:
      dim = len(parts) - 1
    if len(parts) > dim + 1 and all(_is_number(x) for x in parts[-dim:]) and \
        not all(_is_number(x) for x in parts[1:]):
      return (f"line {line_no}: the word {' '.join(parts[:-dim])!r} contains a space, which separates the fields "
              f"of word2vec text: gensim reads such a line as a word and a non-number (it has no option for it); "
              f"rename or drop that word")
    if len(parts) != dim + 1:
      return f"line {line_no} ({parts[0]!r}) has {len(parts) - 1} numbers where {what} {dim}"
    bad = next((x for x in parts[1:] if not _is_number(x)), None)
    if bad is not None:
      return f"line {line_no} ({parts[0]!r}): {bad!r} is not a number"
  return None


class _LogCapture:
  """Collects, while active, the records of one gensim logger whose message starts with `prefix`, as their args, and
  keeps them off the console (what they say goes into a report or a refusal instead). `level` is set on the logger
  for the duration, whatever the caller set on "gensim"."""

  def __init__(self, logger: str, level: int, prefix: str):
    import logging
    self.records: list[tuple] = []
    self._logger, self._level, self._prefix = logging.getLogger(logger), level, prefix
    self._handler = logging.Handler(level)
    self._handler.emit = self._emit  # type: ignore[method-assign]

  def _emit(self, record) -> None:
    if str(record.msg).startswith(self._prefix) and record.args:
      self.records.append(tuple(record.args))

  def __enter__(self):
    self._saved = self._logger.level, self._logger.propagate
    self._logger.setLevel(self._level)
    self._logger.propagate = False
    self._logger.addHandler(self._handler)
    return self

  def __exit__(self, *exc):
    self._logger.removeHandler(self._handler)
    self._logger.setLevel(self._saved[0])
    self._logger.propagate = self._saved[1]


def _duplicates() -> _LogCapture:
  """The words gensim's word2vec reader reports as duplicates (it keeps the first vector of each): record[0]."""
  return _LogCapture("gensim.models.keyedvectors", 30, "duplicate word")  # WARNING


def _decode_failures() -> _LogCapture:
  """The words gensim's fastText .bin reader could not decode as UTF-8, as (raw bytes, the word it kept): it logs
  each at ERROR and keeps the word with backslash escapes whatever the caller wants."""
  return _LogCapture("gensim.models._fasttext_bin", 40, "failed to decode")  # ERROR


def _redecode_keys(kv, failures: list[tuple[bytes, str]], unicode_errors: str) -> None:
  """Renames the words of `failures` in `kv` to their bytes decoded with `unicode_errors` (replace: U+FFFD, ignore:
  dropped), as gensim's text readers would; a word that would collide with another keeps gensim's escaped form."""
  for raw, kept in failures:
    word = raw.decode("utf-8", unicode_errors)
    if kept not in kv.key_to_index or word in kv.key_to_index or not word:
      continue
    index = kv.key_to_index.pop(kept)
    kv.key_to_index[word] = index
    kv.index_to_key[index] = word


def _drop_unfilled(kv) -> int:
  """gensim sizes its table by the header's (or the lines') count and skips a duplicate word's later vectors,
  leaving None keys and zero rows at the end (its own shrink compares against a length that counts them): keep the
  filled rows only, as that shrink means to. Returns how many were dropped."""
  filled = len(kv.key_to_index)
  dropped = len(kv.index_to_key) - filled
  if dropped > 0:
    kv.index_to_key = kv.index_to_key[:filled]
    kv.vectors = np.ascontiguousarray(kv.vectors[:filled])
    for name, values in list(kv.expandos.items()):
      kv.expandos[name] = values[:filled]
    kv.norms = None
  return dropped


def _first_non_finite(matrix) -> int | None:
  for start in range(0, len(matrix), _CHECK_ROWS):
    bad = ~np.isfinite(matrix[start:start + _CHECK_ROWS]).all(axis=1)
    if bad.any():
      return start + int(np.argmax(bad))
  return None


def _all_zero(matrix) -> bool:
  return not any(np.any(matrix[start:start + _CHECK_ROWS]) for start in range(0, len(matrix), _CHECK_ROWS))


def check_vector_path(path: str | os.PathLike, name: str = CONFIG_NAMES["path"]) -> None:
  """One PretrainedError line when `path` (given by the option `name`) is a directory or no file: `load_vectors`'
  first check, which the trainer also makes before the run directory is created."""
  where = f"{name}={str(path)!r}"
  if os.path.isdir(path):
    raise PretrainedError(f"{where} is a directory; give a vector file")
  if not os.path.isfile(path):
    raise PretrainedError(f"{where}: no such file")


_DIGEST_CHUNK = 1 << 20  # bytes per read of `file_record` (bounded memory on multi-GB files)


def file_record(path: str | os.PathLike) -> dict[str, Any]:
  """What names the vector file's contents, for RUN/embedding_init.json: `resolved_path` (os.path.realpath: the
  file a relative path or a symlink named from this process's working directory), `bytes` and `sha256` of its
  bytes as stored (a compressed file's compressed bytes), read in 1 MiB blocks. A sweep compares the hash before a
  trial starts from the file again (research-sweep), the report before it averages runs (research-report); a
  resume compares a rerun's path with `resolved_path` (`configuration.same_file`)."""
  digest, size = hashlib.sha256(), 0
  with open(path, "rb") as f:
    while block := f.read(_DIGEST_CHUNK):
      digest.update(block)
      size += len(block)
  return {"resolved_path": os.path.realpath(path), "bytes": size, "sha256": digest.hexdigest()}


def load_vectors(path: str | os.PathLike, format: str = "auto", *, names: dict[str, str] | None = None,
                 unicode_errors: str = "strict", notes: dict[str, Any] | None = None) -> tuple[Any, str]:
  """(gensim KeyedVectors, the format used). Every problem with the file is a one-line PretrainedError naming the
  file by `names["path"]` (the option that gave it): missing, a directory, empty, unreadable, not of the format, a
  header count other than the vectors found, a vector that is not finite float32, or no vector other than zero.

  A word given twice keeps its first vector (gensim's rule); `notes`, if given, receives `duplicate_words` (how
  many later vectors were skipped) and `duplicate_example` (the first such word). `unicode_errors` is gensim's, for
  the words of a file that are not UTF-8 ("strict" refuses them; for a fastText .bin, whose gensim reader keeps
  them with backslash escapes, the same rule is applied after loading)."""
  names = {**CONFIG_NAMES, **(names or {})}
  where = f"{names['path']}={str(path)!r}"
  if format not in FORMATS:
    raise PretrainedError(f"{names['format']}={format!r} is not one of {', '.join(FORMATS)}")
  if unicode_errors not in UNICODE_ERRORS:
    raise PretrainedError(f"unicode_errors={unicode_errors!r} is not one of {', '.join(UNICODE_ERRORS)}")
  path = Path(path)
  check_vector_path(path, names["path"])
  if not os.access(path, os.R_OK):
    raise PretrainedError(f"{where}: the file is not readable")
  if path.suffix.lower() in UNWRITTEN_COMPRESSIONS:
    raise PretrainedError(f"{where}: {path.suffix.lower()} compression is not read (its package is not a "
                          f"dependency); decompress it, or compress it as {', '.join(COMPRESSED)}")
  try:
    empty = path.stat().st_size == 0 or not _first_bytes(path, 1)
    resolved = detect_format(path) if format == "auto" else format
  except OSError as e:
    raise PretrainedError(f"{where}: cannot read the file: {_one_line(e)}") from None
  if empty:
    raise PretrainedError(f"{where}: the file is empty (no vectors)")
  if resolved == "fasttext-bin" and path.suffix.lower() in COMPRESSED:
    # gensim's fastText reader parses a compressed stream into garbage (NaN vectors, "not a fastText model").
    raise PretrainedError(f"{where}: a compressed fastText .bin is not read (gensim reads fastText models "
                          f"uncompressed only); decompress it first (gunzip / bunzip2 / unxz)")
  if resolved != "fasttext-bin" and _first_bytes(path, len(BOM)) == BOM:
    raise PretrainedError(f"{where} opens with a UTF-8 byte-order mark (bytes EF BB BF), which gensim reads as part "
                          f"of the first line ({'its COUNT DIM header' if _has_header(resolved) else 'the first word'}"
                          f"); remove those three bytes")
  if _is_pickle(path):
    raise PretrainedError(f"{where} is a pickled gensim model (written by .save()), not a vector file; unpickling "
                          f"runs code, so it is not read: write its vectors with gensim, e.g. "
                          f"KeyedVectors.load(FILE).save_word2vec_format('vectors.txt') (Word2Vec / FastText: "
                          f".load(FILE).wv.save_word2vec_format), and give that file")
  auto = " (auto-detected)" if format == "auto" else ""
  import warnings

  from gensim.models import KeyedVectors
  from gensim.models.fasttext import load_facebook_vectors
  duplicates, undecodable = _duplicates(), _decode_failures()
  try:
    with duplicates, undecodable, warnings.catch_warnings():
      warnings.simplefilter("ignore")  # numpy's overflow warning for 1e39 and the like: refused below, in one line
      if resolved == "fasttext-bin":
        kv = load_facebook_vectors(str(path))
      else:
        kv = KeyedVectors.load_word2vec_format(str(path), binary=resolved == "word2vec-binary",
                                               no_header=resolved == "glove", unicode_errors=unicode_errors)
  except Exception as e:  # gensim raises ValueError, EOFError, UnicodeDecodeError, MemoryError, ... on bad input
    try:
      reason = _failure(path, resolved, e, names, unicode_errors)
    except Exception:  # the diagnosis is best effort: gensim's own message below
      reason = None
    reason = reason or f"it is not {DESCRIPTIONS[resolved]} (gensim: {_one_line(e)})"
    raise PretrainedError(f"{where} does not parse as {resolved!r}{auto}: {reason}") from None
  failures = [(bytes(r[0]), str(r[1])) for r in undecodable.records if len(r) == 2]
  if failures:  # gensim's .bin reader never refuses: it keeps such words with backslash escapes
    if unicode_errors == "strict":
      raw, _ = failures[0]
      raise PretrainedError(f"{where}: {len(failures)} of its words are not UTF-8 (the first: {raw!r}); "
                            f"{_unicode_hint(names)}")
    _redecode_keys(kv, failures, unicode_errors)
  if resolved == "word2vec-binary":
    keys = kv.index_to_key
    if any("\n" in key for key in keys[:1000] if key):
      # gensim's binary reader accepts a text file with a count header: words then swallow the text's line breaks.
      raise PretrainedError(f"{where} does not parse as 'word2vec-binary'{auto}: its words contain line breaks (a "
                            f"text file? try {names['format']}=word2vec)")
    reason = _binary_misread(path, kv, (len(keys), kv.vector_size))
    if reason is not None:
      raise PretrainedError(f"{where} does not parse as 'word2vec-binary'{auto}: {reason}")
  dropped = _drop_unfilled(kv) if resolved != "fasttext-bin" else 0
  if notes is not None:
    example = str(duplicates.records[0][0]) if duplicates.records else None
    notes.update(duplicate_words=dropped, duplicate_example=example)
  if _has_header(resolved):
    count = dropped + len(kv.index_to_key)  # what gensim read: the header's count
    found = _vectors_in_file(path, resolved, kv.vector_size)
    if found > count:
      unit = "vectors" if resolved == "word2vec-binary" else "vector lines"
      raise PretrainedError(f"{where}: its header announces {count} vectors but the file holds {found} {unit}; "
                            f"gensim would read {f'only the first {count}' if count else 'none of them'}: correct the "
                            f"header's first number")
  if len(kv.index_to_key) == 0 or kv.vector_size < 1:  # after the header's count: 'COUNT 0' names its numbers there
    reason = _first_bad_line(path, _header(path), "utf-8", names, unicode_errors) \
        if resolved in ("word2vec", "fasttext", "glove") else None
    if reason is not None:
      raise PretrainedError(f"{where} does not parse as {resolved!r}{auto}: {reason}")
    raise PretrainedError(f"{where} holds no vectors (format {resolved!r})")
  if resolved in ("word2vec", "fasttext", "glove"):
    other = _line_of_other_width(path, resolved, kv.vector_size)
    if other is not None:
      line_no, word, numbers = other
      what = "the header says" if _has_header(resolved) else "the first vector has"
      raise PretrainedError(f"{where} does not parse as {resolved!r}{auto}: line {line_no} "
                            f"({word.decode(errors='replace')!r}) has {numbers} number{'s' if numbers != 1 else ''} "
                            f"where {what} {kv.vector_size} (gensim would repeat a single number across the vector)")
  bad = _first_non_finite(kv.vectors)
  if bad is not None:
    raise PretrainedError(f"{where}: the vector of {kv.index_to_key[bad]!r} (vector {bad + 1}) holds "
                          f"{_bad_value(kv.vectors[bad])}; vectors must be finite float32 (|x| <= 3.4e38)")
  ngrams = getattr(kv, "vectors_ngrams", None)
  if ngrams is not None and len(ngrams):
    bad = _first_non_finite(ngrams)
    if bad is not None:
      raise PretrainedError(f"{where}: the vector of character n-gram bucket {bad} holds {_bad_value(ngrams[bad])}; "
                            f"vectors must be finite float32 (|x| <= 3.4e38)")
  if _all_zero(kv.vectors):
    raise PretrainedError(f"{where}: all {len(kv.index_to_key)} vectors are zero: the vectors carry no information")
  return kv, resolved


def _bad_value(row) -> str:
  value = row[~np.isfinite(row)][0]
  return "NaN" if np.isnan(value) else f"{value} (or a value beyond float32's range)"


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
                     seed: int = 0, counts: np.ndarray | None = None, width_option: str = "model.d_model",
                     unicode_errors: str = "strict") -> tuple[np.ndarray, dict[str, Any]]:
  """The [V, d_model] float32 initial table and its coverage report (see the module docstring). `d_model` is the
  table's width and `width_option` the config field that sets it (`model.table_dim` for a factorized table), for
  the message of a width mismatch."""
  for name, value, allowed in (("oov", oov, OOV_POLICIES), ("dim_mismatch", dim_mismatch, DIM_MISMATCH_POLICIES),
                               ("scale", scale, SCALES)):
    if value not in allowed:
      raise PretrainedError(f"model.pretrained.{name}={value!r} is not one of {', '.join(allowed)}")
  notes: dict[str, Any] = {}
  kv, resolved = load_vectors(path, format, unicode_errors=unicode_errors, notes=notes)
  where = f"{CONFIG_NAMES['path']}={str(path)!r}"
  source_dim = int(kv.vector_size)
  if source_dim != d_model and dim_mismatch == "error":
    raise PretrainedError(f"{where} has {source_dim}-dimensional vectors but the table has {width_option}={d_model}; "
                          f"set {width_option}={source_dim} or model.pretrained.dim_mismatch=project")
  vectors_VxS, rule_V, words = align(kv, tokens, kind)
  covered_V = rule_V >= 0
  if not covered_V.any():
    order = range(len(tokens)) if counts is None else np.argsort(-np.asarray(counts)[:len(tokens)], kind="stable")
    samples = [tokens[i] for i in order if words[i]][:3] or list(tokens[:3])  # the most frequent, with counts
    raise PretrainedError(f"{where} covers no token of the {kind!r} vocabulary "
                          f"(e.g. {', '.join(repr(s) for s in samples)}); check the tokenizer and the file's language "
                          f"and casing")
  vectors_VxD = vectors_VxS.astype(np.float64)
  if source_dim != d_model:
    vectors_VxD = vectors_VxD @ orthogonal_projection(source_dim, d_model, seed)
  covered_norm = _mean_norm(vectors_VxD[covered_V])
  if covered_norm == 0:  # zero rows are legal (a padding vector), but not all of them: nothing to scale or copy
    raise PretrainedError(f"{where}: every vector covering the {kind!r} vocabulary ({int(covered_V.sum())} rows) "
                          f"is zero: the vectors carry no information")
  zero_rows = int((~vectors_VxD[covered_V].any(axis=1)).sum())
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
  if not np.abs(table_VxD).max() <= np.finfo(np.float32).max:  # scale=keep after a widening projection of huge values
    raise PretrainedError(f"{where}: the table overflows float32 ({kind!r} vocabulary, scale={scale}); use "
                          f"model.pretrained.scale=match")
  report = coverage_report(tokens, words, rule_V, counts)
  report.update({"path": str(path), "format": resolved, "source_vocab": len(kv.index_to_key),
                 "duplicate_words": notes["duplicate_words"], "duplicate_example": notes["duplicate_example"],
                 "zero_rows_covered": zero_rows,
                 "source_dim": source_dim, "table_shape": [len(tokens), d_model], "tokenizer": kind, "oov": oov,
                 "dim_mismatch": dim_mismatch, "projected": source_dim != d_model, "scale": scale,
                 "scale_factor": factor, "covered_mean_norm": covered_norm, "init_mean_norm": target_norm,
                 **file_record(path)})
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
          f"{', projected' if report['projected'] else ''}; {rules}; oov={report['oov']}, scale={report['scale']})"
          f"{duplicate_note(report)}"
          f"{f'; zero vectors kept in {z} covered row(s)' if (z := report.get('zero_rows_covered')) else ''}")


def duplicate_note(report: dict[str, Any]) -> str:
  """'; N duplicate words ...' for a file that repeats words (gensim keeps each one's first vector), else ''."""
  n = report.get("duplicate_words")
  if not n:
    return ""
  return (f"; {n} duplicate word{'s' if n > 1 else ''} skipped (e.g. {report['duplicate_example']!r}: its first "
          f"vector kept)")
