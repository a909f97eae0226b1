"""Corpora: the offline default, lee, local text files, and every error naming its culprit."""

import json
import re

import pytest

from research.data import corpora
from research.data.corpora import SPLITS, CorpusError, load_corpus


@pytest.fixture(scope="session")
def wiki_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("wiki_cache")


@pytest.fixture(scope="session")
def wiki(wiki_cache):
  return load_corpus("wikipedia-sample", cache_dir=wiki_cache)


def test_wikipedia_sample_split_sizes_and_disjoint(wiki):
  sizes = {s: len(wiki.split(s)) for s in SPLITS}
  assert sizes == {"train": 96, "valid": 5, "test": 5}
  titles = [{d.split("\n", 1)[0] for d in wiki.split(s)} for s in SPLITS]
  assert sum(map(len, titles)) == 106 and len(set.union(*titles)) == 106
  words = sum(len(d.split()) for s in SPLITS for d in wiki.split(s))
  assert 400_000 < words < 520_000


def test_wikipedia_sample_markup_removed(wiki):
  text = "\n".join(wiki.train + wiki.valid + wiki.test)
  for debris in ("'''", "''", "{{", "}}", "[[", "]]", "()", "==", "<ref", "&amp;", "|alt="):
    assert debris not in text, debris
  assert not re.search(r"^\s*[*#]", text, re.M)  # list markers gone
  assert "Anarchism is a political philosophy" in text


def test_wikipedia_sample_cached_atomically_and_reused(wiki, wiki_cache, monkeypatch):
  path = wiki_cache / "corpora" / f"wikipedia-sample-v{corpora.CORPUS_VERSION}.json"
  assert json.loads(path.read_text(encoding="utf-8"))["valid"] == wiki.valid
  assert not list(path.parent.glob("*.tmp"))

  def boom():
    raise AssertionError("extraction must not run on a cache hit")

  monkeypatch.setattr(corpora, "extract_wikipedia_sample", boom)
  assert load_corpus("wikipedia-sample", cache_dir=wiki_cache) == wiki
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(wiki_cache))
  assert load_corpus("wikipedia-sample") == wiki  # env var picks the same cache


def test_split_accessor_rejects_unknown(wiki):
  assert wiki.split("valid") is wiki.valid
  with pytest.raises(ValueError, match="'dev'"):
    wiki.split("dev")


def test_lee_is_split_deterministically():
  a, b = load_corpus("lee"), load_corpus("lee")
  assert a == b
  assert (len(a.train), len(a.valid), len(a.test)) == (270, 15, 15)


def test_unknown_spec_lists_valid_ones():
  with pytest.raises(CorpusError, match=r"'wikipedia-smaple'.*wikipedia-sample.*lee.*text:.*hf:"):
    load_corpus("wikipedia-smaple")


def _write_lines(path, n, prefix="line"):
  path.write_text("\n".join(f"{prefix} {i}" for i in range(n)) + "\n", encoding="utf-8")
  return path


def test_text_single_file_split_by_lines(tmp_path):
  f = _write_lines(tmp_path / "a.txt", 40)
  c = load_corpus(f"text:{f}")
  assert c.train == [f"line {i}" for i in range(36)]
  assert c.valid == ["line 36", "line 37"] and c.test == ["line 38", "line 39"]


def test_text_directory_of_many_files_split_by_file(tmp_path):
  for i in range(25):
    (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}\nsecond line", encoding="utf-8")
  (tmp_path / ".hidden").write_text("never read", encoding="utf-8")
  c = load_corpus(f"text:{tmp_path}")
  assert len(c.train) + len(c.valid) + len(c.test) == 25
  assert c.test == ["document 24\nsecond line"]
  assert not any("never read" in d for d in c.train)


def test_text_glob(tmp_path):
  _write_lines(tmp_path / "a.txt", 10, "a")
  _write_lines(tmp_path / "b.txt", 10, "b")
  _write_lines(tmp_path / "c.md", 10, "c")
  c = load_corpus(f"text:{tmp_path}/*.txt")
  docs = c.train + c.valid + c.test
  assert len(docs) == 20 and not any(d.startswith("c") for d in docs)


def test_text_missing_path_named(tmp_path):
  missing = tmp_path / "nope.txt"
  with pytest.raises(CorpusError, match=re.escape(str(missing))):
    load_corpus(f"text:{missing}")


def test_text_glob_matching_nothing_named(tmp_path):
  with pytest.raises(CorpusError, match=r"glob .*\*\.xyz.* matched no files"):
    load_corpus(f"text:{tmp_path}/*.xyz")


def test_text_empty_file_named(tmp_path):
  f = tmp_path / "empty.txt"
  f.write_text("  \n\n", encoding="utf-8")
  with pytest.raises(CorpusError, match=f"empty.*{re.escape(str(f))}"):
    load_corpus(f"text:{f}")


def test_text_too_few_documents_for_splits(tmp_path):
  f = _write_lines(tmp_path / "two.txt", 2)
  with pytest.raises(CorpusError, match="2 document"):
    load_corpus(f"text:{f}")


def test_undecodable_bytes_name_file_and_offset(tmp_path):
  f = tmp_path / "bad.txt"
  good = "".join(f"ok line {i}\n" for i in range(30)).encode()
  f.write_bytes(good + b"caf\xe9 au lait\n")
  with pytest.raises(CorpusError, match=f"{re.escape(str(f))}.*byte offset {len(good) + 3}"):
    load_corpus(f"text:{f}")
  replaced = load_corpus(f"text:{f}", errors="replace")
  assert replaced.test[-1] == "caf\ufffd au lait"
  ignored = load_corpus(f"text:{f}", errors="ignore")
  assert ignored.test[-1] == "caf au lait"


def test_unknown_errors_policy_named():
  with pytest.raises(ValueError, match="'lenient'"):
    load_corpus("lee", errors="lenient")


def test_split_documents_rejects_empty():
  with pytest.raises(CorpusError, match="'x' is empty"):
    corpora.split_documents(["", "  "], "x")


def test_hf_corpus_when_available(tmp_path):
  datasets = pytest.importorskip("datasets")
  try:
    c = load_corpus("hf:wikitext/wikitext-2-raw-v1", cache_dir=tmp_path)
  except Exception as e:  # offline: the only acceptable failure is a network one
    pytest.skip(f"hub unreachable: {e!r} (datasets {datasets.__version__})")
  assert c.train and c.valid and c.test


def test_hf_without_datasets_says_what_to_install(monkeypatch):
  import builtins
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name == "datasets":
      raise ImportError("no datasets")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  with pytest.raises(ImportError, match="pip install datasets"):
    load_corpus("hf:wikitext/wikitext-2-raw-v1")
