"""Train, save and load Hugging Face `tokenizers`, with the same special-token ids for every kind.

Special tokens have FIXED ids, the first five of every vocabulary:
  [PAD]=0  [UNK]=1  [CLS]=2  [SEP]=3  [MASK]=4
CLM uses [SEP] as the document separator (the token cache writes `[SEP] doc1 [SEP] doc2 [SEP] …`, so it plays the
part of <bos>/<eos>); MLM sequences are `[CLS] … [SEP]`. No tokenizer adds special tokens by itself (no
post-processor): packing is the job of `research.data.batches`.

Kinds (all trained on the text you pass, i.e. the train split only):
  bpe        byte-level BPE (GPT-2 style); lossless on any Unicode; never emits [UNK]; minimum vocab 5 + 256
  bpe-char   character-level BPE over a whitespace-marking (Metaspace) pre-tokenizer; [UNK] for unseen characters
  wordpiece  BERT WordPiece (whitespace + punctuation split, "##" continuations); [UNK] for unseen characters
  unigram    SentencePiece-style unigram LM over Metaspace; [UNK] for unseen characters
  word       whole words (whitespace + punctuation split); the most frequent words, [UNK] for the rest
  char       one token per Unicode code point; lossless on text within its alphabet, [UNK] elsewhere
  byte       one token per UTF-8 byte (id = byte + 5, 261 ids in all); lossless on any Unicode
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from research.data.corpora import atomic_write_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The largest vocabulary a run may ask for: far above any model's (GPT-2 50k, Gemma 256k); Hugging Face's BPE trainer
# reserves ~70 bytes per requested id up front (1e9 aborted the process allocating 70 GB), and ids are 32-bit.
MAX_VOCAB_SIZE = 2 ** 24
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
SPECIAL_IDS = (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID)
KINDS = ("bpe", "bpe-char", "wordpiece", "unigram", "word", "char", "byte")
LOSSLESS_KINDS = ("bpe", "byte")  # decode(encode(x)) == x for every string; `char` only within its alphabet
NUM_BYTES = 256
TOKENIZER_FILE = "tokenizer.json"
COUNTS_FILE = "token_counts.npy"
METASPACE = "\u2581"  # "▁", marks a preceding space in bpe-char / unigram
# Bump whenever training (trainer settings, pre-tokenizers, special tokens) changes: it is part of the key of every
# cached tokenizer, so a change of the code retrains instead of reusing a tokenizer the new code would not give.
TOKENIZER_VERSION = "4"  # 2, 3: special-token strings in the text encode as text (3: unigram too); 4: unigram's
# initial alphabet keeps tabs, newlines and other non-space whitespace (Metaspace marks only the space)
_NEVER = -1e9  # unigram score of the special pieces: no segmentation prefers them


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte → printable character table, the one `pre_tokenizers.ByteLevel` uses."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(NUM_BYTES):
    if b not in bs:
      bs.append(b)
      cs.append(NUM_BYTES + n)
      n += 1
  return {b: chr(c) for b, c in zip(bs, cs)}


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def _alphabet(texts: list[str], kind: str) -> set[str]:
  """Characters that the trainer of `kind` must keep as single-symbol tokens."""
  chars = set().union(*map(set, texts)) if texts else set()
  if kind in ("bpe-char", "unigram"):
    chars = (chars - {" "}) | {METASPACE}  # Metaspace turns spaces into ▁; tabs, newlines, NBSP stay themselves
  elif kind == "wordpiece":  # BERT pre-tokenizer words
    # The WordPiece trainer keeps every character of every word as a word-initial token (even one that only ever
    # occurs inside words) and adds "##c" for each non-initial one.
    split = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
    chars = set()
    for t in texts:
      for word, _ in split(t):
        chars.update(word)
        chars.update("##" + c for c in word[1:])
  return chars


def min_vocab_size(kind: str, texts: list[str]) -> int:
  """The smallest vocab_size that `kind` can honour on `texts` (specials + alphabet)."""
  _check_kind(kind)
  n_special = len(SPECIAL_TOKENS)
  if kind in ("bpe", "byte"):
    return n_special + NUM_BYTES
  if kind == "word":
    return n_special + 1
  if kind == "unigram":
    # One more than the alphabet: the unigram trainer stops adding pieces only when its vocabulary reaches the size
    # exactly, so when the required characters alone fill it, it adds every piece it found (measured on lee: vocab
    # 79 = 5 + 74 characters gives 108 ids, 80 gives 80). One too many only on text without any multi-character
    # piece, where there is nothing to add.
    return n_special + len(_alphabet(texts, kind)) + 1
  return n_special + len(_alphabet(texts, kind))


def _char_counts(texts: list[str]) -> collections.Counter:
  counts = collections.Counter()
  for t in texts:
    counts.update(t)
  return counts


def _word_level(vocab_tokens: Iterable[str], pre_tokenizer, decoder) -> Tokenizer:
  vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
  for tok in vocab_tokens:
    vocab.setdefault(tok, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizer
  tok.decoder = decoder
  tok.add_special_tokens(list(SPECIAL_TOKENS))
  return _text_is_text(tok)


def word_pre_tokenizer():
  """The `word` kind's pre-tokenizer (BERT: split on whitespace and around punctuation): what a word is here, for
  the word tokenizer and for word vectors trained on the corpus (research/embeddings/train_vectors.py)."""
  return pre_tokenizers.BertPreTokenizer()


def split_words(text: str) -> list[str]:
  """`text` as the `word` tokenizer splits it into words (case kept: the word tokenizer has no normalizer)."""
  return [word for word, _ in word_pre_tokenizer().pre_tokenize_str(text)]


def _every_char():
  # One token per code point, whitespace and newlines included (Oniguruma's "." would skip "\n").
  return pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
  """Train a tokenizer of `kind` with `vocab_size` ids (ids 0..4 are SPECIAL_TOKENS) on `texts`."""
  _check_kind(kind)
  texts = [t for t in texts if t]
  if not texts:
    raise ValueError(f"cannot train a {kind!r} tokenizer on no text")
  if vocab_size > MAX_VOCAB_SIZE:
    raise ValueError(f"vocab_size={vocab_size} is too large: at most {MAX_VOCAB_SIZE:,} (2^24)")
  minimum = min_vocab_size(kind, texts)
  if vocab_size < minimum:
    extra = " + 1" if kind == "unigram" else ""
    raise ValueError(f"vocab_size={vocab_size} is too small for a {kind!r} tokenizer on this text: the minimum is "
                     f"{minimum} ({len(SPECIAL_TOKENS)} special tokens + the alphabet{extra})")
  specials = list(SPECIAL_TOKENS)

  if kind == "byte":
    table = _bytes_to_unicode()
    return _word_level(
        (table[b] for b in range(NUM_BYTES)),
        pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), _every_char()]),
        decoders.ByteLevel())
  if kind == "char":
    by_freq = sorted(_char_counts(texts).items(), key=lambda kv: (-kv[1], kv[0]))
    return _word_level((c for c, _ in by_freq), _every_char(), decoders.Fuse())

  if kind == "bpe":
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  elif kind == "bpe-char":
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
  elif kind == "wordpiece":
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
  elif kind == "unigram":
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="first")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]",
                                      show_progress=False, initial_alphabet=sorted(_alphabet(texts, kind)))
  else:  # word
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = word_pre_tokenizer()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  target = vocab_size
  # The unigram trainer adds required characters on top of `vocab_size` pieces: ask for fewer until it fits.
  while kind == "unigram" and tok.get_vocab_size() > vocab_size and target > minimum:
    target = max(minimum, target - (tok.get_vocab_size() - vocab_size))
    trainer = trainers.UnigramTrainer(vocab_size=target, special_tokens=specials, unk_token="[UNK]",
                                      show_progress=False, initial_alphabet=sorted(_alphabet(texts, kind)))
    tok.train_from_iterator(texts, trainer=trainer)
  if tok.get_vocab_size() > vocab_size:
    raise ValueError(f"vocab_size={vocab_size} is too small for a {kind!r} tokenizer on this text: the trainer "
                     f"needs at least {tok.get_vocab_size()} ids")
  _check_specials(tok, kind)
  # Return the tokenizer as its saved form reloads: the unigram model's log-probabilities are printed with fewer
  # digits than they are held in memory, and near-ties can then segment differently. Training, caching and every
  # later run must all use the same tokenizer, so the in-memory one is the round-tripped one.
  saved = tok.to_str()
  if kind == "unigram":
    saved = _unigram_specials_never_segment(saved)
  return _text_is_text(Tokenizer.from_str(saved))


def _unigram_specials_never_segment(saved: str) -> str:
  """The unigram trainer puts the special tokens among the model's pieces with log-probability 0, the highest
  there is, so the Viterbi segmentation would read a literal "[MASK]" in the text as the [MASK] piece. Give them a
  score no segmentation can prefer (their ids, and their use as ids by the batchers, are unchanged)."""
  spec = json.loads(saved)
  for piece in spec["model"]["vocab"]:
    if piece[0] in SPECIAL_TOKENS:
      piece[1] = _NEVER
  return json.dumps(spec, ensure_ascii=False)


def _text_is_text(tok: Tokenizer) -> Tokenizer:
  """Special tokens are ids, never text: a corpus that literally contains "[UNK]" or "[MASK]" encodes those
  characters like any others (by default `tokenizers` would turn them into the special ids, so a byte-level
  tokenizer would not be lossless). The setting is not saved in tokenizer.json, hence set on every load. (Unigram
  also needs `_unigram_specials_never_segment`.)"""
  tok.encode_special_tokens = True
  return tok


def _check_specials(tok: Tokenizer, kind: str) -> None:
  for i, s in enumerate(SPECIAL_TOKENS):
    if tok.token_to_id(s) != i:
      raise AssertionError(f"{kind!r} tokenizer gave {s} id {tok.token_to_id(s)}, expected {i}")


def fingerprint(tok: Tokenizer) -> str:
  """A content hash of the tokenizer (model, vocab, pre-tokenizer, …): equal tokenizers, equal fingerprints."""
  return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()[:16]


def tokenizer_path(path: str | os.PathLike) -> Path:
  """`path` itself when it names a .json file, else `path/tokenizer.json`."""
  path = Path(path)
  return path if path.suffix == ".json" else path / TOKENIZER_FILE


def counts_path(path: str | os.PathLike) -> Path:
  """Where the token counts of the tokenizer at `path` live: `token_counts.npy` in the same directory."""
  return tokenizer_path(path).parent / COUNTS_FILE


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> Path:
  """Write `tokenizer.json` atomically (path = a directory or a .json file); returns the file written."""
  target = tokenizer_path(path)
  atomic_write_text(target, tok.to_str(pretty=True))
  return target


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  target = tokenizer_path(path)
  if not target.exists():
    raise FileNotFoundError(f"no tokenizer at {target}")
  return _text_is_text(Tokenizer.from_file(str(target)))


def encode_ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
  """Token ids of each text, without special tokens (batched: the Rust side parallelises over texts)."""
  return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def token_counts(tok: Tokenizer, texts: Iterable[str]) -> np.ndarray:
  """How often each id occurs when `texts` are encoded: int64 array of shape [vocab]."""
  vocab = tok.get_vocab_size(with_added_tokens=True)
  counts = np.zeros(vocab, np.int64)
  for ids in encode_ids(tok, list(texts)):
    counts += np.bincount(np.asarray(ids, np.int64), minlength=vocab)
  return counts


def save_counts(counts: np.ndarray, path: str | os.PathLike) -> Path:
  """Save beside the tokenizer at `path` (a directory or its tokenizer.json); atomic."""
  target = counts_path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.npy")
  np.save(tmp, np.asarray(counts, np.int64))
  os.replace(tmp, target)
  return target


def load_counts(path: str | os.PathLike) -> np.ndarray:
  return np.load(counts_path(path))


def check_counts(counts: np.ndarray, vocab_size: int, what: str) -> np.ndarray:
  """`counts` when it is what a run writes (token_counts.npy, update_counts.npz's arrays), one non-negative integer
  per row of the table; a ValueError (a damaged file) otherwise: a file of another shape would be read out of
  bounds or broadcast, and mark the wrong ids rare."""
  if counts.shape != (vocab_size,) or counts.dtype.kind not in "iu":
    raise ValueError(f"{what} is {counts.dtype}{list(counts.shape)}, not {vocab_size} integer counts (one per row)")
  if counts.size and counts.min() < 0:
    raise ValueError(f"{what} holds a negative count ({int(counts.min())})")
  return counts


def tokenizer_cache_key(kind: str, corpus, vocab_size: int) -> str:
  """Hash of everything a trained tokenizer depends on: the train split's text, kind, size and code versions.

  The train text itself is hashed (a few ms for wikipedia-sample) rather than the corpus spec: the corpus is in
  memory anyway, and its content is what training sees, whatever edited file, errors= policy or hand-built Corpus
  produced it.
  """
  from research.data.corpora import CORPUS_VERSION
  text = hashlib.sha256()
  for doc in corpus.train:
    text.update(hashlib.sha256(doc.encode("utf-8", "surrogatepass")).digest())  # per-document: no join ambiguity
  parts = {"corpus": corpus.name, "train_sha256": text.hexdigest(), "kind": kind, "vocab_size": vocab_size,
           "corpus_version": CORPUS_VERSION, "tokenizer_version": TOKENIZER_VERSION}
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def build_or_load_tokenizer(kind: str, corpus, vocab_size: int, *, cache_dir=None) -> tuple[Tokenizer, Path]:
  """Train on `corpus.train` (with counts saved beside it), or load when the same settings were trained before.

  Cached under <cache_root>/tokenizers/<corpus name>-<kind>-<vocab_size>-<tokenizer_cache_key>/; returns the
  tokenizer and its directory. A build holds an exclusive lock (`.<directory name>.lock` beside it) from "not
  cached" to "cached", so processes that start together (a sweep's trials, two runs) train it once: the others
  wait and load it. That matters for wordpiece and unigram, whose training is not deterministic: each would
  otherwise train, and use, its own vocabulary.
  """
  from research.data.corpora import cache_root
  _check_kind(kind)
  safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in corpus.name)
  key = tokenizer_cache_key(kind, corpus, vocab_size)
  directory = cache_root(cache_dir) / "tokenizers" / f"{safe[:40]}-{kind}-{vocab_size}-{key}"
  cached = _load_cached(directory, note=False)  # no lock on a hit: a read-only cache works
  if cached is not None:
    return cached, directory
  directory.parent.mkdir(parents=True, exist_ok=True)
  with open(directory.parent / f".{directory.name}.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
    cached = _load_cached(directory, note=True)  # built by the process that held the lock before us
    if cached is not None:
      return cached, directory
    tok = train_tokenizer(kind, corpus.train, vocab_size)
    save_counts(token_counts(tok, corpus.train), directory)
    save_tokenizer(tok, directory)  # written last: its presence means the directory is complete
  return tok, directory


def _load_cached(directory: Path, *, note: bool) -> Tokenizer | None:
  """The tokenizer cached in `directory`, or None when there is none or it is damaged (with a note when `note`:
  the caller trains it again)."""
  if not (tokenizer_path(directory).exists() and counts_path(directory).exists()):
    return None
  try:
    load_counts(directory)
    return load_tokenizer(directory)
  except Exception as e:  # noqa: BLE001 — the tokenizers library raises a bare Exception for a damaged file
    if note:
      print(f"note: the cached tokenizer {str(directory)!r} is damaged ({' '.join(str(e).split())[:200]}); training "
            f"it again (wordpiece and unigram training is not deterministic: runs started before may have other "
            f"ids; each run keeps its own RUN/tokenizer.json)", flush=True)
    return None


def vocabulary(tokenizer) -> list[str]:
  """The token string of every id, in id order ("" for an id the tokenizer has no string for)."""
  return [tokenizer.id_to_token(i) or "" for i in range(tokenizer.get_vocab_size())]
