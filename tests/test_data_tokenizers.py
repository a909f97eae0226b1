"""Tokenizers: fixed special ids, lossless round trips, [UNK] only for missing symbols, save/load, counts, errors."""

import dataclasses
import functools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from research.data import tokenizers as T
from research.data.corpora import Corpus, load_corpus

VOCAB = {"bpe": 400, "bpe-char": 300, "wordpiece": 300, "unigram": 300, "word": 300, "char": 300, "byte": 261}
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# Built once per session; plain cached functions rather than fixtures so hypothesis failure reports stay short.
@functools.lru_cache(maxsize=None)
def _lee():
  return load_corpus("lee")


@functools.lru_cache(maxsize=None)
def _toks():
  return {k: T.train_tokenizer(k, _lee().train[:60], VOCAB[k]) for k in T.KINDS}


@pytest.fixture(scope="session")
def lee():
  return _lee()


@pytest.fixture(scope="session")
def train_texts():
  return _lee().train[:60]


@pytest.fixture(scope="session")
def toks():
  return _toks()


def _alphabet():
  return sorted(set("".join(_lee().train[:60])) - set("[]"))


def enc(tok, text):
  return tok.encode(text, add_special_tokens=False).ids


def dec(tok, ids):
  return tok.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("kind", T.KINDS)
def test_special_ids_fixed_and_vocab_bounded(toks, kind):
  tok = toks[kind]
  assert [tok.token_to_id(s) for s in T.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
  assert (T.PAD_ID, T.UNK_ID, T.CLS_ID, T.SEP_ID, T.MASK_ID) == (0, 1, 2, 3, 4)
  assert tok.get_vocab_size() <= VOCAB[kind]
  assert sorted(tok.get_vocab().values()) == list(range(tok.get_vocab_size()))  # dense ids


@pytest.mark.parametrize("kind", ["bpe", "bpe-char", "wordpiece", "unigram", "word"])
def test_trained_kinds_use_their_budget(toks, kind):
  assert tok_size(toks[kind]) == VOCAB[kind]


def tok_size(tok):
  return tok.get_vocab_size()


def test_no_post_processor_adds_specials(toks):
  for kind, tok in toks.items():
    assert T.CLS_ID not in tok.encode("hello world").ids, kind


@pytest.mark.parametrize("kind", T.LOSSLESS_KINDS)
@HYP
@given(text=st.text(max_size=60))
def test_lossless_round_trip_any_unicode(kind, text):
  tok = _toks()[kind]
  ids = enc(tok, text)
  assert T.UNK_ID not in ids
  assert dec(tok, ids) == text


def test_byte_ids_are_utf8_bytes_plus_five(toks):
  text = "aé😀\n"
  assert enc(toks["byte"], text) == [b + 5 for b in text.encode("utf-8")]


@HYP
@given(data=st.data())
def test_char_lossless_within_alphabet_unk_outside(data):
  tok = _toks()["char"]
  alphabet = _alphabet()
  text = data.draw(st.text(alphabet=alphabet, max_size=60))
  ids = enc(tok, text)
  assert len(ids) == len(text) and T.UNK_ID not in ids
  assert dec(tok, ids) == text
  # A lone surrogate (category Cs) is no text a decoded corpus can hold, and tokenizers (Rust) refuses it as such.
  foreign = data.draw(st.characters(blacklist_characters=alphabet + list("[]"), blacklist_categories=("Cs",)))
  ids = enc(tok, text + foreign)
  assert ids[-1] == T.UNK_ID and T.UNK_ID not in ids[:-1]


@pytest.mark.parametrize("kind", ["bpe-char", "wordpiece", "unigram"])
@HYP
@given(data=st.data())
def test_unk_only_for_symbols_outside_alphabet(kind, data):
  tok = _toks()[kind]
  alphabet = _alphabet()
  if kind == "wordpiece":  # a WordPiece symbol is c word-initially and ##c inside a word: keep chars having both
    vocab = tok.get_vocab()
    alphabet = [c for c in alphabet if c in vocab and "##" + c in vocab]
  known = data.draw(st.text(alphabet=alphabet, min_size=1, max_size=40))
  assert T.UNK_ID not in enc(tok, known)
  foreign = data.draw(st.characters(whitelist_categories=("Lo", "So"), blacklist_characters=alphabet + [T.METASPACE]))
  ids = enc(tok, f"{known} {foreign} {known}")
  assert ids.count(T.UNK_ID) == 1


def test_word_unk_exactly_for_out_of_vocabulary_words(toks):
  tok = toks["word"]
  vocab = tok.get_vocab()
  words = ["the", "of", "zzyzxq", "Australia", "qqqplm"]
  ids = enc(tok, " ".join(words))
  assert ids == [vocab.get(w, T.UNK_ID) for w in words]
  assert ids[2] == ids[4] == T.UNK_ID and T.UNK_ID not in (ids[0], ids[1])


@pytest.mark.parametrize("kind", T.KINDS)
def test_save_load_identical(toks, lee, tmp_path, kind):
  path = T.save_tokenizer(toks[kind], tmp_path)
  assert path == tmp_path / "tokenizer.json"
  loaded = T.load_tokenizer(tmp_path)
  assert loaded.to_str() == toks[kind].to_str()
  assert T.fingerprint(loaded) == T.fingerprint(toks[kind])
  assert loaded.get_vocab() == toks[kind].get_vocab()
  for text in lee.valid + ["ünïcödé 😀 [MASK] x"]:
    assert enc(loaded, text) == enc(toks[kind], text)
    assert dec(loaded, enc(loaded, text)) == dec(toks[kind], enc(toks[kind], text))


def test_token_counts_match_encoding_and_round_trip(toks, train_texts, tmp_path):
  tok = toks["bpe"]
  counts = T.token_counts(tok, train_texts)
  assert counts.shape == (tok.get_vocab_size(),)
  assert counts.sum() == sum(len(enc(tok, t)) for t in train_texts)
  the = tok.encode(" the", add_special_tokens=False).ids
  assert len(the) == 1 and counts[the[0]] > 100  # frequent
  assert counts[: len(T.SPECIAL_TOKENS)].sum() == 0
  T.save_tokenizer(tok, tmp_path)
  assert T.save_counts(counts, tmp_path / "tokenizer.json") == tmp_path / "token_counts.npy"
  np.testing.assert_array_equal(T.load_counts(tmp_path), counts)


def test_build_or_load_tokenizer_caches(lee, tmp_path, monkeypatch):
  tok, directory = T.build_or_load_tokenizer("bpe", lee, 300, cache_dir=tmp_path)
  assert (directory / "tokenizer.json").exists() and (directory / "token_counts.npy").exists()
  monkeypatch.setattr(T, "train_tokenizer", lambda *a, **k: pytest.fail("retrained on a cache hit"))
  again, directory2 = T.build_or_load_tokenizer("bpe", lee, 300, cache_dir=tmp_path)
  assert directory2 == directory and again.to_str() == tok.to_str()


class _CountTraining:
  """Wraps the real train_tokenizer and counts its calls."""

  def __init__(self, monkeypatch):
    self.calls, real = 0, T.train_tokenizer

    def counted(*args, **kwargs):
      self.calls += 1
      return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_tokenizer", counted)


def test_tokenizer_cache_keyed_on_train_text_and_version(tmp_path, monkeypatch):
  base = Corpus("toy", ["alpha beta", "gamma delta", "beta gamma"], ["delta"], ["alpha"])
  counter = _CountTraining(monkeypatch)
  _, d0 = T.build_or_load_tokenizer("char", base, 100, cache_dir=tmp_path)
  _, d_valid = T.build_or_load_tokenizer("char", dataclasses.replace(base, valid=["omega"]), 100, cache_dir=tmp_path)
  assert counter.calls == 1 and d_valid == d0  # valid/test are not training data: no retraining for them
  edited = dataclasses.replace(base, train=base.train[:-1] + ["beta gammas"])  # same name, one train doc edited
  _, d_edit = T.build_or_load_tokenizer("char", edited, 100, cache_dir=tmp_path)
  assert counter.calls == 2 and d_edit != d0
  monkeypatch.setattr(T, "TOKENIZER_VERSION", T.TOKENIZER_VERSION + "-bumped")
  _, d_bump = T.build_or_load_tokenizer("char", base, 100, cache_dir=tmp_path)
  assert counter.calls == 3 and d_bump not in (d0, d_edit)


def test_tokenizer_trained_on_train_split_only(tmp_path):
  # "z" and "q" occur only in valid/test: a tokenizer that saw them would give them ids.
  corpus = Corpus("toy", ["abc cab", "bca abc", "cc aa bb"], ["abz", "zz"], ["qa"])
  tok, directory = T.build_or_load_tokenizer("char", corpus, 100, cache_dir=tmp_path)
  assert tok.token_to_id("z") is None and tok.token_to_id("q") is None
  assert enc(tok, "az") == [tok.token_to_id("a"), T.UNK_ID]
  counts = T.load_counts(directory)
  np.testing.assert_array_equal(counts, T.token_counts(tok, corpus.train))
  assert (T.token_counts(tok, corpus.train + corpus.valid + corpus.test) != counts).any()  # the check can fail
  assert counts[T.UNK_ID] == 0


def test_unknown_kind_lists_kinds(train_texts):
  with pytest.raises(ValueError, match=r"'sentencepiece'.*bpe, bpe-char, wordpiece, unigram, word, char, byte"):
    T.train_tokenizer("sentencepiece", train_texts, 100)


# Whitespace other than the space (tab, newline, NBSP, ideographic space, vertical tab): Metaspace marks only spaces,
# so bpe-char and unigram keep these as symbols of their own.
ODD_SPACES = ["a\tb c d", "a b\nc d\u00a0e", "c d a b\u3000f", "ab\x0bcd ef", "fe dc ba"]


@pytest.mark.parametrize("texts", ["lee", "odd spaces"])
@pytest.mark.parametrize("kind", T.KINDS)
def test_vocab_too_small_states_the_size_that_works(train_texts, kind, texts):
  train_texts = train_texts if texts == "lee" else ODD_SPACES
  with pytest.raises(ValueError, match=re.escape("vocab_size=")) as too_small:
    T.train_tokenizer(kind, train_texts, T.min_vocab_size(kind, train_texts) - 1)
  n = int(re.search(r"(?:minimum is|needs at least) (\d+)", str(too_small.value)).group(1))
  assert T.train_tokenizer(kind, train_texts, n).get_vocab_size() <= n  # the size the message states works …
  with pytest.raises(ValueError, match=rf"vocab_size={n - 1} .*(minimum is|needs at least) {n}\b"):
    T.train_tokenizer(kind, train_texts, n - 1)  # … and one less fails, stating the same size
  assert n == T.min_vocab_size(kind, train_texts)  # so min_vocab_size predicts what the trainers need


def test_empty_training_text_is_an_error():
  with pytest.raises(ValueError, match="no text"):
    T.train_tokenizer("bpe", ["", ""], 300)


@pytest.mark.parametrize("kind", T.KINDS)
def test_special_token_strings_in_the_text_are_text(kind, tmp_path):
  """A corpus may literally contain "[MASK]" or "[UNK]": those are characters, not the special ids (hypothesis
  found "[UNK]" breaking the byte tokenizer's round trip), also after a save and load."""
  tok = _toks()[kind]
  text = "a [UNK] b [MASK][CLS] [SEP][PAD]"
  for t in (tok, T.load_tokenizer(T.save_tokenizer(tok, tmp_path / kind))):
    ids = enc(t, text)
    assert not set(ids) & {T.PAD_ID, T.CLS_ID, T.SEP_ID, T.MASK_ID}, ids
    if kind in T.LOSSLESS_KINDS:
      assert T.UNK_ID not in ids and dec(t, ids) == text


def test_a_tokenizer_smaller_than_asked_or_mostly_unk_gets_a_note_and_a_normal_one_none(tmp_path):
  from research.train import loop
  from tests.train_utils import tiny_config
  corpus = _lee()

  def notes(kind, vocab):
    tokenizer, directory = T.build_or_load_tokenizer(kind, corpus, vocab, cache_dir=tmp_path)
    config = tiny_config(**{"data.tokenizer": kind, "data.vocab_size": vocab, "data.corpus": "lee"})
    return tokenizer, loop.data_notes(config, tokenizer, np.load(T.counts_path(directory)))

  tokenizer, found = notes("word", 40)  # 35 words for a whole corpus: most tokens are [UNK]
  assert len(found) == 1 and found[0].startswith("note: ") and "are [UNK] with data.tokenizer='word'" in found[0]
  tokenizer, found = notes("bpe", 60_000)  # more merges than the corpus has pairs
  assert tokenizer.get_vocab_size() < 60_000
  assert found == [f"note: data.tokenizer='bpe' learned {tokenizer.get_vocab_size()} tokens from 'lee', fewer than "
                   f"data.vocab_size=60000; the model's table has {tokenizer.get_vocab_size()} rows"]
  assert notes("bpe", 512)[1] == []  # byte-level BPE: no [UNK], the size asked for


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_the_unk_share_is_a_share_of_the_texts_tokens_not_of_the_separators(objective):
  """One-word documents (a word list): as many [SEP] as words. The note's share is [UNK] over the text's tokens, as
  encoding the documents alone gives it (it was over text + [SEP] (+ MLM's [CLS]), about half, and hid the note)."""
  from research.data import batches
  from research.train import loop
  from tests.train_utils import tiny_config
  words = [w for doc in _lee().train[:40] for w in doc.split()][:3000]
  tokenizer = T.train_tokenizer("word", words, 300)
  stream = batches.encode_split(tokenizer, words)
  counts = batches.stream_counts(stream, tokenizer.get_vocab_size(), seq_len=32, objective=objective)
  text = [i for ids in T.encode_ids(tokenizer, words) for i in ids]
  share = text.count(T.UNK_ID) / len(text)
  config = tiny_config(**{"data.tokenizer": "word", "data.vocab_size": 300, "objective": objective})
  found = [n for n in loop.data_notes(config, tokenizer, counts) if "[UNK]" in n]
  assert share > 2 * loop.UNK_NOTE_SHARE and len(found) == 1
  assert found[0].startswith(f"note: {share:.1%} of the train split's tokens are [UNK]")


_BUILD_WHEN_TOLD = """
import sys, time
from pathlib import Path
from research.data import tokenizers as T
from research.data.corpora import Corpus
cache, go = sys.argv[1], Path(sys.argv[2])
texts = [f"word{i} alpha beta gamma \\u03b4\\u03ad\\u03bb\\u03c4\\u03b1 {i * 7} na\\u00efve caf\\u00e9 stra\\u00dfe" for i in range(40)]
corpus = Corpus("mixed", texts, ["alpha"], ["beta"])
(go.parent / f"ready{sys.argv[3]}").touch()
while not go.exists():
  time.sleep(0.001)
for kind in ("wordpiece", "unigram"):
  print(kind, T.build_or_load_tokenizer(kind, corpus, 150, cache_dir=cache)[0].to_str(), sep="\\t")
"""


def test_processes_building_the_same_tokenizer_at_once_train_it_once_and_use_the_same_ids(tmp_path):
  """wordpiece and unigram train differently each time (hash order, ties): two processes that find the tokenizer
  uncached at the same moment (a sweep's --jobs=2 trials, two runs started together) must not each train and use
  their own. The build holds a lock; the second process waits and loads the first one's."""
  import subprocess
  import sys
  import time
  from tests.train_utils import ROOT
  cache, go = tmp_path / "cache", tmp_path / "go"
  procs = [subprocess.Popen([sys.executable, "-c", _BUILD_WHEN_TOLD, str(cache), str(go), str(i)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  deadline = time.monotonic() + 60
  while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
    time.sleep(0.005)
  go.touch()  # both are past their imports: they look for the cached tokenizer within a millisecond of each other
  outs = [p.communicate(timeout=60) for p in procs]
  assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
  (a, b) = ([line.split("\t") for line in out.splitlines()] for out, _ in outs)
  assert [kind for kind, _ in a] == [kind for kind, _ in b] == ["wordpiece", "unigram"]
  for (kind, first), (_, second) in zip(a, b):
    assert first == second, f"{kind}: the two processes use different tokenizers"
    assert T.load_tokenizer(next(cache.glob(f"tokenizers/mixed-{kind}-*"))).to_str() == first
