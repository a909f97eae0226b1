"""Corpora: the offline default, lee, local text files, and every error naming its culprit."""

import dataclasses
import importlib.util
import json
import os
import re
import socket
import sys
import types

import pytest

from research.data import corpora
from research.data.corpora import SPLITS, CorpusError, load_corpus


def test_a_text_corpus_reads_a_path_inside_its_directory_or_matched_by_its_glob(tmp_path):
  """`reads_path`: where a run's workdir would become training text (a run there trained once, then its next start
  read its own checkpoints as corpus files)."""
  (tmp_path / "data" / "sub").mkdir(parents=True)
  data = tmp_path / "data"
  assert corpora.reads_path(f"text:{data}", data / "run") and corpora.reads_path(f"text:{data}", data)
  assert corpora.reads_path(f"text:{data}", data / "sub" / "deep" / "run")
  assert not corpora.reads_path(f"text:{data}", tmp_path / "run")
  assert not corpora.reads_path(f"text:{data / 'sub'}", data / "run")  # a sibling of the corpus directory
  assert corpora.reads_path(f"text:{data}/*", data / "run")  # the glob matches the directory itself
  assert corpora.reads_path(f"text:{tmp_path}/**/*.json", data / "run")  # ... or its config.json
  assert not corpora.reads_path(f"text:{data}/*.txt", data / "run")  # no run file is a .txt
  (data / "a.txt").write_text("one line\n")
  assert not corpora.reads_path(f"text:{data / 'a.txt'}", data / "run")  # a file corpus
  assert not corpora.reads_path("lee", tmp_path) and not corpora.reads_path("text:", tmp_path)
  # Globs that match files a run writes besides config.json (the re-audit: metrics.jsonl became text).
  for pattern in ("**/*.jsonl", "**/*.npy", "*/*/metrics.jsonl", "**/events.out.tfevents.*", "sub/run/eval/*"):
    assert corpora.reads_path(f"text:{data}/{pattern}", data / "sub" / "run"), pattern
  # Hidden names are never read (the walk and glob's * skip them): a workdir there is allowed.
  for spec in (f"text:{data}", f"text:{data}/*", f"text:{data}/**/*"):
    assert not corpora.reads_path(spec, data / ".runs" / "r"), spec
  # Symlinked directories are followed by the reader, so by the check too.
  (tmp_path / "outside").mkdir()
  (data / "link").symlink_to(tmp_path / "outside")
  assert corpora.reads_path(f"text:{data}", tmp_path / "outside" / "run")
  (tmp_path / "alias").symlink_to(data)
  assert corpora.reads_path(f"text:{tmp_path / 'alias'}/*", data / "run")
  # A hidden workdir under a glob that matches its parent (the walk skips it), and no hang on a corpus holding two
  # links to itself (the walk visits each real directory once, as the reader's does).
  assert not corpora.reads_path(f"text:{data}/**", data / ".runs" / "r")
  loops = tmp_path / "loops"
  loops.mkdir()
  (loops / "a.txt").write_text("text\n")
  (loops / "self1").symlink_to(loops)
  (loops / "self2").symlink_to(loops)
  assert not corpora.reads_path(f"text:{loops}", tmp_path / "runs" / "x")
  assert corpora.reads_path(f"text:{loops}", loops / "x")
  assert not corpora.reads_path(f"text:{tmp_path / ('c' * 300)}", tmp_path / "run")  # a name too long: the reader's
  # And the answer is the reader's: where it says False, the run's files are not among the corpus's files.
  run = data / ".runs" / "r"
  run.mkdir(parents=True)
  (run / "metrics.jsonl").write_text("{}\n")
  assert all(".runs" not in str(f) for f in corpora.resolve_text_files(str(data)))


def test_a_corpus_that_is_a_pipe_is_refused_in_one_line_and_skipped_in_a_directory(tmp_path):
  """A FIFO (or a shell's `<(...)`) was taken as the corpus: the run read it once, and research-evaluate then waited
  forever on the fingerprint's second read. A directory holding one skips it, as it always did."""
  import os
  (tmp_path / "a.txt").write_text("one\ntwo\nthree\n")
  os.mkfifo(tmp_path / "pipe.txt")
  with pytest.raises(corpora.CorpusError) as err:
    corpora.resolve_text_files(str(tmp_path / "pipe.txt"))
  assert str(err.value).startswith(f"corpus path {tmp_path / 'pipe.txt'} is not a regular file")
  assert corpora.resolve_text_files(str(tmp_path)) == [tmp_path / "a.txt"]


from tests.train_utils import cli


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
  # Bounds around the measured 3,033,714 characters / 474,005 words: a cleaning change that drops or keeps
  # noticeably more text (a whole article, or markup left in) moves them out of this ±3 % band.
  chars = sum(wiki.num_chars().values())
  words = sum(len(d.split()) for s in SPLITS for d in wiki.split(s))
  assert 2.95e6 < chars < 3.15e6
  assert 460_000 < words < 490_000


def test_wikipedia_sample_markup_removed(wiki):
  text = "\n".join(wiki.train + wiki.valid + wiki.test)
  for debris in ("'''", "''", "{{", "}}", "[[", "]]", "()", "==", "<ref", "&amp;", "|alt="):
    assert debris not in text, debris
  assert not re.search(r"^\s*[*#]", text, re.M)  # list markers gone
  assert "Anarchism is a political philosophy" in text


def test_wikipedia_sample_cached_atomically_and_reused(wiki, wiki_cache, monkeypatch):
  path = wiki_cache / "corpora" / f"wikipedia-sample-v{corpora.CORPUS_VERSION}.json"
  assert json.loads(path.read_text(encoding="utf-8"))["splits"]["valid"] == wiki.valid
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


def test_passkey_corpus_is_deterministic_and_every_document_is_a_solved_prompt():
  from research.data import passkey
  a, b = load_corpus("passkey"), load_corpus("passkey")
  assert a == b and (len(a.train), len(a.valid), len(a.test)) == (18000, 1000, 1000)
  docs = a.train + a.valid + a.test
  pattern = re.compile(r"(?:(?:[A-Z][a-z ]+)\. )*The pass key is (\d{5})\. Remember it\. (\d{5}) is the pass key\. "
                       r"(?:(?:[A-Z][a-z ]+)\. )*What is the pass key\? The pass key is (\d{5})\.")
  keys, fillers = set(), []
  for doc in docs:
    match = pattern.fullmatch(doc)
    assert match and match[1] == match[2] == match[3], doc
    keys.add(match[1])
    fillers.append(sum(doc.count(s) for s in passkey.FILLER))
  assert len(keys) > 15000 and min(fillers) == 0 and max(fillers) == passkey.CORPUS_MAX_FILLER
  assert docs[:3] == passkey.corpus_documents(3)  # the generator's seeded sequence, split in order


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


def test_a_file_without_a_final_newline_keeps_its_last_line(tmp_path):
  """The last line of a file need not end with "\n": it is a document like the others, by line and by file."""
  lines = [f"line {i}" for i in range(40)]
  (tmp_path / "a.txt").write_text("\n".join(lines), encoding="utf-8")
  c = load_corpus(f"text:{tmp_path / 'a.txt'}")
  assert c.train + c.valid + c.test == lines and c.test[-1] == "line 39"
  n = corpora.MIN_FILES_FOR_FILE_SPLIT
  for i in range(n):  # by file: one line each, none ending with "\n"
    (tmp_path / "many" / f"f{i:02d}.txt").parent.mkdir(exist_ok=True)
    (tmp_path / "many" / f"f{i:02d}.txt").write_text(f"file {i}", encoding="utf-8")
  c = load_corpus(f"text:{tmp_path / 'many'}")
  assert c.train + c.valid + c.test == [f"file {i}" for i in range(n)]


@pytest.mark.parametrize("n_files", [3, corpora.MIN_FILES_FOR_FILE_SPLIT - 1, corpora.MIN_FILES_FOR_FILE_SPLIT, 25])
@pytest.mark.parametrize("form", ["directory", "glob"])
def test_text_directory_or_glob_splits_by_line_or_by_file(tmp_path, form, n_files):
  lines = 3
  for i in range(n_files):
    (tmp_path / f"doc{i:02d}.txt").write_text("".join(f"file {i} line {j}\n" for j in range(lines)), encoding="utf-8")
  (tmp_path / ".hidden").write_text("never read\n", encoding="utf-8")  # skipped in a directory
  if form == "glob":
    (tmp_path / "notes.md").write_text("not a txt\n", encoding="utf-8")  # not matched, so not counted either
  c = load_corpus(f"text:{tmp_path}" if form == "directory" else f"text:{tmp_path}/*.txt")
  docs = c.train + c.valid + c.test
  assert not any("never read" in d or "not a txt" in d for d in docs)
  by_file = n_files >= corpora.MIN_FILES_FOR_FILE_SPLIT
  if by_file:  # one document per file, its lines together, so no file straddles two splits
    expected = ["".join(f"file {i} line {j}\n" for j in range(lines)).strip() for i in range(n_files)]
  else:  # one document per line
    expected = [f"file {i} line {j}" for i in range(n_files) for j in range(lines)]
  assert sorted(docs) == sorted(expected)  # every document exactly once: splits disjoint and complete
  assert c.test[-1] == expected[-1]  # files are read in sorted order, and the split is contiguous
  assert c.valid and c.test and len(c.train) > len(c.valid)


def test_text_recursive_glob_reaches_subfolders(tmp_path):
  _write_lines(tmp_path / "top.txt", 5, "top")
  (tmp_path / "sub" / "deeper").mkdir(parents=True)
  _write_lines(tmp_path / "sub" / "mid.txt", 5, "mid")
  _write_lines(tmp_path / "sub" / "deeper" / "low.txt", 5, "low")
  _write_lines(tmp_path / "sub" / "deeper" / "skip.md", 5, "skip")
  c = load_corpus(f"text:{tmp_path}/**/*.txt")
  prefixes = {d.split()[0] for d in c.train + c.valid + c.test}
  assert prefixes == {"top", "mid", "low"}  # `**` matches zero or more folders
  assert len(c.train + c.valid + c.test) == 15


def test_an_existing_path_with_glob_characters_is_that_file(tmp_path):
  """`notes [final].txt` is a file, not the pattern `[final]` (which would match `notesf.txt`, or nothing)."""
  _write_lines(tmp_path / "data[1].txt", 30, "bracketed")
  _write_lines(tmp_path / "data1.txt", 30, "sibling")  # what the pattern data[1].txt matches
  docs = lambda spec: (lambda c: c.train + c.valid + c.test)(load_corpus(spec))  # noqa: E731
  assert {d.split()[0] for d in docs(f"text:{tmp_path}/data[1].txt")} == {"bracketed"}
  assert {d.split()[0] for d in docs(f"text:{tmp_path}/data[0-9].txt")} == {"sibling"}  # a real glob still globs


@pytest.mark.parametrize("form", ["directory", "glob"])
def test_a_file_reached_twice_through_symlinks_is_one_document(tmp_path, form):
  """A `latest -> v2` link beside v2, and a link to the directory itself: each real file is read once, so no copy of
  a valid or test document sits in train; a symlinked directory is followed in both forms."""
  root = tmp_path / "data"
  (root / "v2").mkdir(parents=True)
  for i in range(corpora.MIN_FILES_FOR_FILE_SPLIT + 5):
    (root / "v2" / f"doc{i:02d}.txt").write_text(f"document {i}\n", encoding="utf-8")
  (root / "latest").symlink_to("v2", target_is_directory=True)
  (root / "v2" / "self").symlink_to(".", target_is_directory=True)
  (root / "dangling.txt").symlink_to(tmp_path / "missing.txt")
  c = load_corpus(f"text:{root}" if form == "directory" else f"text:{root}/**/*.txt")
  docs = c.train + c.valid + c.test
  assert sorted(docs) == sorted(f"document {i}" for i in range(corpora.MIN_FILES_FOR_FILE_SPLIT + 5))
  assert not set(c.train) & set(c.valid + c.test)
  only_link = tmp_path / "only_link"
  only_link.mkdir()
  (only_link / "corpus").symlink_to(root / "v2", target_is_directory=True)  # the data only behind a link
  assert sorted(load_corpus(f"text:{only_link}").train + load_corpus(f"text:{only_link}").valid +
                load_corpus(f"text:{only_link}").test) == sorted(docs)


def test_a_glob_that_matches_a_directory_reads_its_files(tmp_path):
  (tmp_path / "corpus_a").mkdir()
  for i in range(3):
    _write_lines(tmp_path / "corpus_a" / f"{i}.txt", 10, f"a{i}")
  _write_lines(tmp_path / "corpus_b.txt", 10, "b")
  c = load_corpus(f"text:{tmp_path}/corpus_*")
  assert {d.split()[0] for d in c.train + c.valid + c.test} == {"a0", "a1", "a2", "b"}


def test_line_endings_bom_and_separators_inside_a_line(tmp_path):
  """The same text saved on Windows (CRLF, a BOM) is the same corpus, by line and by file; form feeds, U+2028 and
  NEL inside a line do not cut it (str.splitlines would); a blank file among many is a dropped blank document."""
  lines = [f"line {i} \f page\u2028sep\x85nel" for i in range(30)]
  unix, windows = tmp_path / "unix", tmp_path / "windows"
  unix.mkdir(), windows.mkdir()
  (unix / "a.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  (windows / "a.txt").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
  by_line = load_corpus(f"text:{unix}/a.txt")
  assert load_corpus(f"text:{windows}/a.txt") == dataclasses.replace(by_line, name=f"text:{windows}/a.txt")
  assert by_line.train + by_line.valid + by_line.test == [line.strip() for line in lines]
  for i in range(corpora.MIN_FILES_FOR_FILE_SPLIT + 1):
    (unix / f"f{i:02d}.txt").write_text("first\nsecond\n", encoding="utf-8")
    (windows / f"f{i:02d}.txt").write_bytes("\ufefffirst\r\nsecond\r\n".encode("utf-8"))
  (unix / "zz_blank.txt").write_text(" \n\n", encoding="utf-8")
  (windows / "zz_blank.txt").write_text(" \r\n", encoding="utf-8")
  by_file = load_corpus(f"text:{unix}")
  assert load_corpus(f"text:{windows}") == dataclasses.replace(by_file, name=f"text:{windows}")
  assert "first\nsecond" in by_file.train and all(d.strip() for d in by_file.train + by_file.valid + by_file.test)


def test_the_fingerprint_follows_content_not_size_and_time(tmp_path):
  """A file replaced by other text of the same size with its old modification time (cp -p, rsync -a, tar x) has
  another fingerprint, so no cache keyed on it serves the old text; the same content has the same one."""
  import os
  f = _write_lines(tmp_path / "a.txt", 30, "alpha")
  before, stat = corpora.corpus_fingerprint(f"text:{f}"), f.stat()
  f.write_text(f.read_text().replace("alpha", "omega"), encoding="utf-8")
  os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert f.stat().st_size == stat.st_size and f.stat().st_mtime_ns == stat.st_mtime_ns
  assert corpora.corpus_fingerprint(f"text:{f}") != before
  f.write_text(f.read_text().replace("omega", "alpha"), encoding="utf-8")
  assert corpora.corpus_fingerprint(f"text:{f}") == before


def test_text_empty_directory_named(tmp_path):
  empty = tmp_path / "empty_dir"
  empty.mkdir()
  (empty / ".only_hidden").write_text("hidden files do not count", encoding="utf-8")
  with pytest.raises(CorpusError, match=f"directory {re.escape(str(empty))} contains no files"):
    load_corpus(f"text:{empty}")


def test_empty_split_named():
  with pytest.raises(CorpusError, match="'x'.*split 'valid' is empty"):
    corpora._check_splits(corpora.Corpus("x", ["a doc"], ["  ", ""], ["another"]))
  ok = corpora.Corpus("x", ["a"], ["b"], ["c"])
  assert corpora._check_splits(ok) is ok


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
  with pytest.raises(CorpusError, match=f"{re.escape(str(f))}.*byte offset {len(good) + 3}.*data.errors=replace"):
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


def _hub_reachable():
  try:
    socket.create_connection(("huggingface.co", 443), 3).close()
    return True
  except OSError:
    return False


def test_hf_corpus_when_available(tmp_path):
  pytest.importorskip("datasets")
  if not _hub_reachable():
    pytest.skip("huggingface.co:443 unreachable (offline)")
  # Online with `datasets` installed: any exception from here on is a bug, not a reason to skip.
  c = load_corpus("hf:wikitext/wikitext-2-raw-v1", cache_dir=tmp_path)
  assert c.train and c.valid and c.test
  assert all(isinstance(d, str) and d.strip() for s in SPLITS for d in c.split(s))


class _FakeSplit:
  """The slice of `datasets.Dataset` that _hf_corpus uses: `column_names` and `split[column]` (a list)."""

  def __init__(self, rows):
    self.rows = rows
    self.column_names = list(rows[0]) if rows else []

  def __getitem__(self, column):
    return [r[column] for r in self.rows]


@pytest.fixture
def fake_hub(monkeypatch):
  """Installs a fake `datasets` module whose load_dataset serves `hub[(name, config)]`; records the calls."""
  hub, calls = {}, []

  def load_dataset(name, config=None, *, cache_dir=None):
    calls.append((name, config, cache_dir))
    return {split: _FakeSplit(rows) for split, rows in hub[(name, config)].items()}

  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
  return hub, calls


def _rows(prefix, n):
  return [{"id": i, "text": f"{prefix} doc {i}", "label": i % 2} for i in range(n)]


def test_hf_uses_text_column_and_own_splits(fake_hub, tmp_path):
  hub, calls = fake_hub
  # "id" is the first column: choosing it would give no string document at all.
  hub[("fake", "cfg")] = {"train": _rows("tr", 30), "validation": _rows("va", 4), "test": _rows("te", 3)}
  c = load_corpus("hf:fake/cfg", cache_dir=tmp_path)
  assert c.name == "hf:fake/cfg"
  assert c.train == [f"tr doc {i}" for i in range(30)]
  assert c.valid == [f"va doc {i}" for i in range(4)]  # validation -> valid
  assert c.test == [f"te doc {i}" for i in range(3)]
  assert calls == [("fake", "cfg", str(tmp_path / "hf"))]


def test_hf_first_column_without_text_and_split_of_train_without_own(fake_hub, tmp_path):
  hub, _ = fake_hub
  hub[("plain", None)] = {"train": [{"sentence": f"s {i}", "n": i} for i in range(40)], "extra": []}
  c = load_corpus("hf:plain", cache_dir=tmp_path)
  assert c.train + c.valid + c.test == [f"s {i}" for i in range(40)]  # our contiguous split of train
  assert (len(c.valid), len(c.test)) == (2, 2)


def test_hf_missing_train_split_names_dataset(fake_hub, tmp_path):
  hub, _ = fake_hub
  hub[("notrain", "x")] = {"validation": _rows("va", 4), "test": _rows("te", 4)}
  with pytest.raises(CorpusError, match=r"hf:notrain/x has no 'train' split \(it has validation, test\)"):
    load_corpus("hf:notrain/x", cache_dir=tmp_path)


def test_hf_empty_split_is_an_error(fake_hub, tmp_path):
  hub, _ = fake_hub
  blank = [{"text": " ", "id": 0}, {"text": "", "id": 1}]
  hub[("hollow", None)] = {"train": _rows("tr", 10), "validation": blank, "test": _rows("te", 3)}
  with pytest.raises(CorpusError, match=r"'hf:hollow'.*split 'valid' is empty"):
    load_corpus("hf:hollow", cache_dir=tmp_path)


def test_hf_without_datasets_says_what_to_install(monkeypatch):
  import builtins
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name == "datasets":
      raise ImportError("no datasets")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  with pytest.raises(CorpusError, match="pip install datasets"):  # a user's error: one line from the entry points
    load_corpus("hf:wikitext/wikitext-2-raw-v1")


def test_a_tilde_in_the_cache_dir_is_the_home_directory(tmp_path, monkeypatch):
  """`--config.data.cache_dir=~/c` (and $RESEARCH_CACHE_DIR=~/e) reach the program unexpanded: the cache is under
  the home directory, as a `text:` spec's `~` is (was a directory named `~` in the working directory)."""
  from research.data import tokenizers
  home, elsewhere = tmp_path / "home", tmp_path / "cwd"
  home.mkdir()
  elsewhere.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.chdir(elsewhere)
  assert corpora.cache_root("~/c") == home / "c"
  monkeypatch.setenv("RESEARCH_CACHE_DIR", "~/e")
  assert corpora.cache_root() == home / "e"
  _, directory = tokenizers.build_or_load_tokenizer("char", load_corpus("lee"), 100, cache_dir="~/c")
  assert directory.is_relative_to(home / "c") and directory.is_dir()
  assert list(elsewhere.iterdir()) == []  # no ./~


def _stand_in_datasets(directory, raises):
  """A minimal `datasets` package in `directory` whose load_dataset raises `raises` (Python source), as the real one
  does without a network; the caller puts `directory` on sys.path."""
  package = directory / "datasets"
  package.mkdir()
  (package / "__init__.py").write_text(
      "class DatasetNotFoundError(FileNotFoundError):\n  pass\n\n"
      f"def load_dataset(name, config=None, **kwargs):\n  raise {raises}\n")


@pytest.mark.parametrize("raises, line", [
    ("ConnectionError(\"Couldn't reach 'wikitext' on the Hub (ConnectionError)\\nsecond line\")",
     "corpus spec 'hf:wikitext/wikitext-2-raw-v1' could not be loaded (ConnectionError: Couldn't reach 'wikitext' on "
     "the Hub (ConnectionError)); loading a dataset from the Hugging Face hub needs the network (the offline "
     "corpora wikipedia-sample, lee, passkey and text: need none)"),
    ("DatasetNotFoundError(\"Dataset 'wikitext' doesn't exist on the Hub or cannot be accessed.\")",
     "corpus spec 'hf:wikitext/wikitext-2-raw-v1' could not be loaded (DatasetNotFoundError: Dataset 'wikitext' "
     "doesn't exist on the Hub or cannot be accessed.)"),
])
def test_hf_a_dataset_that_cannot_be_loaded_is_one_line_naming_the_spec(tmp_path, monkeypatch, raises, line):
  """`datasets` installed but the hub unreachable (load_dataset raises ConnectionError, an OSError) or the name
  unknown: one CorpusError line naming the spec and the library's first line, and, for a connection error, that
  hub loading needs the network (was a traceback from research-train)."""
  _stand_in_datasets(tmp_path, raises)
  monkeypatch.delitem(sys.modules, "datasets", raising=False)
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(CorpusError) as e:
    load_corpus("hf:wikitext/wikitext-2-raw-v1", cache_dir=tmp_path / "cache")
  assert str(e.value) == line and e.value.__suppress_context__  # one line, no chained traceback


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed here")
def test_research_train_on_an_hf_corpus_without_datasets_is_one_line(tmp_path):
  result = cli("experiments.train", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}",
               "--config.data.corpus=hf:wikitext/wikitext-2-raw-v1")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].endswith("(pip install datasets) and a network connection")


def _cache_run(tmp_path, corpus, cache_dir):
  """loop.train on a small `text:` corpus with data.cache_dir=`cache_dir`: what it raises (it is refused before
  training, or the test fails)."""
  from research.train import loop
  from tests.train_utils import tiny_config
  config = tiny_config(**{"data.corpus": corpus, "data.cache_dir": str(cache_dir), "data.tokenizer": "char",
                          "data.vocab_size": 100, "train.steps": 1})
  with pytest.raises(Exception) as raised:
    loop.train(config, tmp_path / "run")
  return raised.value


def test_a_data_cache_where_the_corpus_reads_or_that_is_not_a_writable_directory_is_one_line_naming_it(tmp_path):
  """data.cache_dir is refused like a workdir inside a `text:` corpus (its tokenizers and token streams would be
  read as text at the next start), before anything is written there; a file, or a directory that cannot be
  written, is one line naming data.cache_dir (not the run directory, not an errno traceback)."""
  from research.train import configuration, loop
  data = tmp_path / "data"
  data.mkdir()
  _write_lines(data / "a.txt", 40)
  for corpus, cache in ((f"text:{data}", data / "cache"), (f"text:{tmp_path}/g/**/*.npy", tmp_path / "g" / "c")):
    error = _cache_run(tmp_path, corpus, cache)
    assert isinstance(error, configuration.ConfigError) and "\n" not in str(error)
    assert str(error).startswith(f"data.cache_dir {str(cache)!r} is inside data.corpus={corpus!r}"), error
    assert not cache.exists()
  assert not corpora.reads_path(f"text:{data}", data / ".cache", corpora.CACHE_FILES)  # a hidden one is allowed
  (tmp_path / "file").write_text("x")
  for cache in (tmp_path / "file", tmp_path / "file" / "sub"):
    error = _cache_run(tmp_path, f"text:{data}", cache)
    assert isinstance(error, configuration.ConfigError), error
    assert str(error).startswith(f"data.cache_dir {str(cache)!r} is not a directory"), error
    assert "a writable directory" in str(error)
  if os.path.isdir("/sys/fs"):  # not writable by anyone, root included (sysfs; read-only in containers)
    error = _cache_run(tmp_path, f"text:{data}", "/sys/fs/research-cache")
    assert isinstance(error, loop.StorageError) and "\n" not in str(error), error
    assert str(error).startswith("data.cache_dir '/sys/fs/research-cache' could not be written"), error
    assert "writable directory" in str(error) and str(tmp_path / "run") not in str(error)
  if os.path.isdir("/proc/self"):  # procfs: mkdir of a new name answers ENOENT (not EACCES), root included
    error = _cache_run(tmp_path, f"text:{data}", "/proc/research-cache")
    assert isinstance(error, loop.StorageError) and "\n" not in str(error), error
    assert str(error).startswith("data.cache_dir '/proc/research-cache' could not be written (FileNotFoundError"), error


@pytest.mark.parametrize("content", [None, [], 3, {"train": ["a"], "valid": ["b"]}, {s: ["a", 1] for s in SPLITS},
                                     {s: "abc" for s in SPLITS}])
def test_cached_splits_of_the_wrong_shape_are_a_value_error(content):
  with pytest.raises(ValueError, match="JSON|split is not a list of texts"):
    corpora.cached_splits(content, "x")


def test_a_cached_wikipedia_sample_of_the_wrong_shape_is_extracted_again_with_a_note(wiki, wiki_cache, tmp_path,
                                                                                       capsys):
  """`null` (or any JSON of the wrong shape) in the cached corpus file was a TypeError traceback: it is damage,
  extracted again with a note, like undecodable JSON."""
  path = tmp_path / "corpora" / f"wikipedia-sample-v{corpora.CORPUS_VERSION}.json"
  path.parent.mkdir()
  path.write_text("null\n")
  again = load_corpus("wikipedia-sample", cache_dir=tmp_path)
  assert f"note: the cached corpus {str(path)!r} is damaged (a JSON" in capsys.readouterr().out and again == wiki
  assert corpora.read_corpus_file(path.read_text(), "wikipedia-sample") == wiki


@pytest.mark.parametrize("text, why", [
    ("null", "a JSON null where an object of splits belongs"), ("[1, 2]", "a JSON array where an object"),
    ('{"train": ["a"], "valid": ["b"]}', "its 'test' split is not a list of texts"),
    ('{"splits": {"train": [], "valid": [], "test": []}}', "its 'train' split is not a list of texts")])
def test_a_cached_corpus_file_of_another_shape_is_damaged_not_unchecked(text, why):
  """Only a well-formed file of the old format (an object of splits, written before the checksums were kept) is
  "unchecked"; `null`, a list, a split missing, or the new format without its checksum are damaged (the note said
  "has no checksum (written before they were kept)" for them)."""
  with pytest.raises(ValueError, match=re.escape(why)) as e:
    corpora.read_corpus_file(text, "wikipedia-sample")
  assert not isinstance(e.value, corpora.UncheckedCorpusFile)
  with pytest.raises(corpora.UncheckedCorpusFile):
    corpora.read_corpus_file(json.dumps({s: ["a doc"] for s in SPLITS}), "wikipedia-sample")


def test_a_cached_wikipedia_sample_of_the_right_shape_and_wrong_content_is_extracted_again(wiki, tmp_path, capsys):
  """A cache file of the right shape but other content (emptied splits: "split 'train' is empty", blaming the
  corpus; a document per split: 1/1/1 loaded silently) is found by the checksum of its splits recorded at the
  extraction, or by having none, and extracted again with a note. In a read-only cache the extraction is used and
  the file left as it is."""
  from tests.test_data_batches import read_only
  path = tmp_path / "corpora" / f"wikipedia-sample-v{corpora.CORPUS_VERSION}.json"
  path.parent.mkdir()
  path.write_text(json.dumps({s: [] for s in SPLITS}))  # as the code before the checksums wrote it, emptied
  assert load_corpus("wikipedia-sample", cache_dir=tmp_path) == wiki
  assert "has no checksum (written before they were kept); extracting it again" in capsys.readouterr().out
  recorded = json.loads(path.read_text())
  assert recorded["sha256"] == corpora.splits_sha256(wiki)
  cut = {**recorded, "splits": {s: wiki.split(s)[:1] for s in SPLITS}}  # the checksum of the full splits kept
  path.write_text(json.dumps(cut))
  with read_only(tmp_path):
    assert load_corpus("wikipedia-sample", cache_dir=tmp_path) == wiki
    assert "is damaged (its splits are not the ones whose checksum it recorded" in capsys.readouterr().out
  assert json.loads(path.read_text()) == cut  # read-only: left as it was
