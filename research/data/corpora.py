"""Named text corpora, chosen by one config string, split into train / valid / test documents.

Specs (see docs/data.md):
  wikipedia-sample        ~105 English Wikipedia articles shipped inside gensim (CC BY-SA); the default
  lee                     gensim's Lee background corpus (300 news documents, one per line)
  passkey                 synthetic passkey-retrieval documents (research/data/passkey.py), generated, seeded
  text:<path|glob|dir>    local UTF-8 files
  hf:<name>[/<config>]    a Hugging Face dataset (needs the optional `datasets` package and a network)

Everything here is offline except `hf:`. Only `wikipedia-sample` is slow enough (markup removal, ~2 s) to be
cached; the cache file is keyed by CORPUS_VERSION so a change of the cleaning code invalidates it.
"""

from __future__ import annotations

import bz2
import dataclasses
import fnmatch
import glob as globlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

from research.data import passkey
from research.error_text import first_line

# Bump whenever extraction / cleaning / splitting changes: it is part of every cache key downstream.
CORPUS_VERSION = "1"
SPLITS = ("train", "valid", "test")
VALID_SPECS = ("wikipedia-sample", "lee", "passkey", "text:<path|glob|dir>", "hf:<name>[/<config>]")
DEFAULT_CORPUS = "wikipedia-sample"
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# At least this many files make `text:` split by file; fewer files are split by lines.
MIN_FILES_FOR_FILE_SPLIT = 20
ERROR_POLICIES = ("strict", "replace", "ignore")


class CorpusError(ValueError):
  """A corpus spec or its files cannot give a usable corpus; the message names the culprit."""


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Documents of one corpus, already split. Each document is one string. `fingerprint`: for `text:` corpora, the
  hash of the very bytes the documents were cut from (`corpus_fingerprint`'s value for them), so a cache keyed on it
  describes these documents even when a file changes after they were read; None for the other specs."""

  name: str
  train: list[str]
  valid: list[str]
  test: list[str]
  fingerprint: str | None = dataclasses.field(default=None, compare=False)

  def split(self, name: str) -> list[str]:
    if name not in SPLITS:
      raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
    return getattr(self, name)

  def num_chars(self) -> dict[str, int]:
    return {s: sum(len(d) for d in self.split(s)) for s in SPLITS}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
  """cache_dir, else $RESEARCH_CACHE_DIR, else ~/.cache/research; a leading `~` or `~user` is the home directory
  (as in `text:` specs: a flag's `~/c` reaches the program unexpanded, and was a directory named `~` here)."""
  if cache_dir is not None:
    return Path(cache_dir).expanduser()
  env = os.environ.get("RESEARCH_CACHE_DIR")
  return Path(env).expanduser() if env else Path.home() / ".cache" / "research"


def atomic_write_text(path: Path, text: str) -> None:
  """Write via a temporary file in the same directory + os.replace, so readers never see half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def split_documents(docs: Sequence[str], name: str) -> Corpus:
  """Deterministic contiguous split: the last 5 % (at least one) is test, the 5 % before it valid."""
  docs = [d for d in docs if d.strip()]
  n = len(docs)
  if n == 0:
    raise CorpusError(f"corpus {name!r} is empty: no non-blank document")
  if n < 3:
    raise CorpusError(f"corpus {name!r} has {n} document(s); at least 3 are needed for train/valid/test")
  n_held = max(1, round(0.05 * n))
  n_train = n - 2 * n_held
  return Corpus(name, docs[:n_train], docs[n_train:n_train + n_held], docs[n_train + n_held:])


def _check_splits(corpus: Corpus) -> Corpus:
  for s in SPLITS:
    if not any(d.strip() for d in corpus.split(s)):
      raise CorpusError(f"corpus {corpus.name!r}: split {s!r} is empty")
  return corpus


# ----------------------------------------------------------------------------------------------------------------
# wikipedia-sample

_QUOTES = re.compile(r"'{2,}")  # ''italic'', '''bold'''
_HEADING = re.compile(r"^[ \t]*(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", re.M)
_EMPTY_BRACKETS = re.compile(r"\(\s*(?:[,;:.]\s*)*\)|\[\s*\]|\{\s*\}")
_LIST_MARK = re.compile(r"^[ \t]*[*#:;]+[ \t]*", re.M)
_DEBRIS_LINE = re.compile(r"^[ \t]*(?:[|!{}=\-*#:;,.]+[ \t]*)*$", re.M)  # lines of markup debris only
_TEMPLATE_DEBRIS = re.compile(r"\{\{|\}\}|\{\||\|\}")
_GALLERY_FILE = re.compile(r"^[ \t]*(?:(?:File|Image):[^|\n]*|[^|\n]*\.(?:jpe?g|png|gif|svg|tiff?))\|[ \t]*", re.M | re.I)
_ALT_TEXT = re.compile(r"(?:\||^)[ \t]*alt=[^\n]*", re.M)
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,.;:!?)])")
_OPEN_PAREN_SPACE = re.compile(r"\([ \t]+")
_SPACES = re.compile(r"[ \t\xa0]{2,}")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def clean_wiki_text(text: str) -> str:
  """Tidy what gensim's `filter_wiki` leaves: quote runs, headings, empty brackets, list marks, debris lines."""
  text = _QUOTES.sub("", text)
  text = _HEADING.sub(r"\2", text)
  text = _TEMPLATE_DEBRIS.sub("", text)
  text = _GALLERY_FILE.sub("", text)  # gallery lines "File:x.jpg|caption" keep the caption
  text = _ALT_TEXT.sub("", text)
  for _ in range(3):  # brackets emptied by template removal can nest: "( ( ) )"
    text = _EMPTY_BRACKETS.sub("", text)
  text = _LIST_MARK.sub("", text)
  text = _OPEN_PAREN_SPACE.sub("(", text)
  text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
  text = _SPACES.sub(" ", text)
  text = _DEBRIS_LINE.sub("", text)
  text = "\n".join(line.strip() for line in text.split("\n"))
  text = _BLANK_LINES.sub("\n\n", text)
  return text.strip()


def extract_wikipedia_sample() -> list[tuple[str, str]]:
  """(title, cleaned text) of the main-namespace, non-redirect pages of gensim's bundled dump, in file order."""
  from gensim.corpora.wikicorpus import extract_pages, filter_wiki
  from gensim.test.utils import datapath

  path = datapath(WIKI_FILE)
  if not os.path.exists(path):
    raise CorpusError(f"gensim's bundled Wikipedia sample is missing: {path}")
  articles = []
  with bz2.open(path, "rb") as f:
    for title, raw, _ in extract_pages(f, filter_namespaces=("0",)):
      if not raw.strip() or raw.lstrip().lower().startswith("#redirect"):
        continue
      text = clean_wiki_text(filter_wiki(raw))
      if text:
        articles.append((title, text))
  return articles


def cached_splits(data, name: str) -> Corpus:
  """The corpus a cache file's JSON holds: an object with a list of strings for each split; anything else (null,
  a list, a number where a document was) is a ValueError saying what is wrong."""
  if not isinstance(data, dict):
    kind = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    raise ValueError(f"a JSON {kind.get(type(data), type(data).__name__)} where an object of splits belongs")
  for s in SPLITS:
    docs = data.get(s)
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
      raise ValueError(f"its {s!r} split is not a list of texts")
  return Corpus(name, data["train"], data["valid"], data["test"])


class UncheckedCorpusFile(ValueError):
  """A cached corpus file without a checksum (written before they were kept, or not by this code)."""


def splits_sha256(corpus: Corpus) -> str:
  """SHA-256 of the corpus's splits as the cache file holds them (JSON, in SPLITS order)."""
  splits = {s: corpus.split(s) for s in SPLITS}
  return hashlib.sha256(json.dumps(splits, ensure_ascii=False).encode("utf-8")).hexdigest()


def corpus_file_text(corpus: Corpus) -> str:
  """The cache file of an extracted corpus: its splits and their SHA-256 (`read_corpus_file` verifies it)."""
  return json.dumps({"sha256": splits_sha256(corpus), "splits": {s: corpus.split(s) for s in SPLITS}},
                    ensure_ascii=False)


def read_corpus_file(text: str, name: str) -> Corpus:
  """The corpus a cache file (`corpus_file_text`) holds. A file of the right shape is not enough: one emptied or cut
  to a document per split by hand, a disk or an editor would load silently (or blame the corpus), so its splits
  must have the SHA-256 recorded at the extraction: a ValueError otherwise. UncheckedCorpusFile only for a file
  of the old format (an object of splits, each a list of texts) without one; any other shape (`null`, a list) is
  damaged, not old."""
  data = json.loads(text)
  if not isinstance(data, dict) or "sha256" not in data:
    cached_splits(data, name)  # the old format, else a ValueError saying what is wrong (`null`: not an object)
    raise UncheckedCorpusFile("no checksum")
  corpus = cached_splits(data.get("splits"), name)
  if splits_sha256(corpus) != data["sha256"]:
    raise ValueError("its splits are not the ones whose checksum it recorded at the extraction")
  return corpus


def _wikipedia_sample(cache_dir) -> Corpus:
  path = cache_root(cache_dir) / "corpora" / f"wikipedia-sample-v{CORPUS_VERSION}.json"
  cached = path.exists()
  if cached:
    try:
      return read_corpus_file(path.read_text(encoding="utf-8"), "wikipedia-sample")
    except UncheckedCorpusFile:
      print(f"note: the cached corpus {str(path)!r} has no checksum (written before they were kept); extracting it "
            f"again", flush=True)
    except (OSError, ValueError) as e:  # damage (writes are atomic, but a disk, an editor or a user can break it)
      print(f"note: the cached corpus {str(path)!r} is damaged ({' '.join(str(e).split())[:200]}); extracting it "
            f"again", flush=True)
  articles = extract_wikipedia_sample()
  corpus = split_documents([f"{title}\n\n{text}" for title, text in articles], "wikipedia-sample")
  try:
    atomic_write_text(path, corpus_file_text(corpus))
  except OSError:
    if not cached:  # a cache that cannot be written: the caller's one line (research-train names data.cache_dir)
      raise
    # A read-only cache holding a file this code does not trust: the extraction is used, the file left as it is.
  return corpus


# ----------------------------------------------------------------------------------------------------------------
# local files


def read_text_file(path: str | os.PathLike, errors: str = "strict") -> str:
  """Read UTF-8; an undecodable byte is an error naming the file and byte offset unless errors= says otherwise."""
  if errors not in ERROR_POLICIES:
    raise ValueError(f"unknown errors policy {errors!r}; valid: {', '.join(ERROR_POLICIES)}")
  path = Path(path)
  return _decode(path, _read_bytes(path), errors)


def _read_bytes(path: Path) -> bytes:
  try:
    return path.read_bytes()
  except FileNotFoundError:
    raise CorpusError(f"corpus file not found: {path}") from None


def _decode(path: Path, data: bytes, errors: str) -> str:
  """`data` (the bytes of `path`) as UTF-8 under the `errors` policy, or a CorpusError naming the byte offset."""
  try:
    return data.decode("utf-8", errors=errors)
  except UnicodeDecodeError as e:
    raise CorpusError(
        f"{path}: invalid UTF-8 at byte offset {e.start} ({data[e.start:e.start + 4]!r}); "
        "set data.errors=replace or data.errors=ignore (research-vectors: --errors) to load it anyway") from None


def _walk(directory: Path):
  """(directory as reached, its real path, its file and link names) for every directory the reader visits below
  `directory`: non-hidden names only, symlinked directories followed, each real directory once (a link to an
  ancestor is no loop). `_files_under` reads their files; `_walk_reaches` asks whether it reaches a path."""
  seen = set()
  for root, dirs, names in os.walk(directory, followlinks=True):
    real = os.path.realpath(root)
    if real in seen:
      dirs[:] = []
      continue
    seen.add(real)
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    yield root, real, names


def _files_under(directory: Path) -> list[Path]:
  """Every non-hidden file below `directory` (no part of its path below `directory` starts with '.'), following
  symlinked directories, each real directory once (`_walk`)."""
  return sorted(Path(root) / n for root, _, names in _walk(directory)
                for n in names if not n.startswith(".") and os.path.isfile(os.path.join(root, n)))


def _distinct(files: Sequence[Path]) -> list[Path]:
  """`files` in order, each real file once: a file reached again through a symlink (a `latest -> v2` directory, a
  `**` glob that follows links) would otherwise be a second document, and could land in train and valid alike."""
  seen, out = set(), []
  for f in files:
    real = os.path.realpath(f)
    if real not in seen:
      seen.add(real)
      out.append(f)
  return out


# What a run directory holds (research/train/loop.py writes these; data may not import train): `reads_path` asks
# whether a glob would match one of them. Names only; files whose names vary (Orbax's) are caught by
# `files_inside` at the next start.
RUN_FILES = ("config.json", "data.json", "metrics.jsonl", "summary.json", "tokenizer.json", "token_counts.npy",
             "embedding_init.json", "embedding_init.npy", "update_counts.npz", "events.out.tfevents.0.host",
             "checkpoints/1/_CHECKPOINT_METADATA", "checkpoints/1/commit_success.txt", "checkpoints/1/state/d/0",
             "checkpoints/1/meta/metadata", "checkpoints_unreadable/1/x", "eval/extrapolation.json",
             "eval/ppl_vs_length.png", "eval/previous/extrapolation.json")


# What the run's commands write in a run directory, by name: these top-level files, TensorBoard's event files and
# everything under these directories (research-analyze refuses to export over them: `is_run_file`).
RUN_DIRS = ("checkpoints", "checkpoints_unreadable", "eval")
RUN_TOP_FILES = (*(f for f in RUN_FILES if "/" not in f and not f.startswith("events.")), ".lock")


def is_run_directory(path: Path) -> bool:
  """Whether `path` holds a run: its config.json beside its tokenizer.json or checkpoints/ (a start that got that
  far). A config.json or summary.json alone may be anyone's file. Here, JAX-free, for research-analyze's checks of
  its output paths as for research-train's of its workdir (`loop.is_run_directory`)."""
  path = Path(path)
  return (path / "config.json").is_file() and ((path / "tokenizer.json").exists() or (path / "checkpoints").is_dir())


def run_directory_of(path: Path) -> Path | None:
  """The run directory `path` lies in (its nearest parent that holds a run), else None."""
  return next((parent for parent in Path(path).parents if is_run_directory(parent)), None)


def is_run_file(relative: Path) -> bool:
  """Whether a path relative to a run directory is one the run's commands write, or may write later (an analysis
  file not written yet is one too)."""
  parts = Path(relative).parts
  if len(parts) > 1:
    return parts[0] in RUN_DIRS
  return Path(relative).name in RUN_TOP_FILES or Path(relative).name.startswith("events.out.tfevents.")


# What the data cache holds (research/data/*: its corpora, tokenizers and token streams), for `reads_path`.
CACHE_FILES = (f"corpora/wikipedia-sample-v{CORPUS_VERSION}.json", "tokenizers/x-bpe-1-0/tokenizer.json",
               "tokenizers/x-bpe-1-0/token_counts.npy", "tokenizers/.x-bpe-1-0.lock", "tokens/0/train.npy",
               "tokens/0/valid.npy", "tokens/0/test.npy", "tokens/0/meta.json", "hf/x")


def reads_path(spec: str, path: str | os.PathLike, names: Sequence[str] = RUN_FILES) -> bool:
  """Whether the corpus `spec` will read files a run writes under `path` (a workdir, a sweep's trial directory),
  as far as can be told before they exist, by the reader's own rules (`resolve_text_files`): a `text:` directory
  whose walk (non-hidden names, symlinked directories followed) reaches `path`; a glob whose matches include such a
  directory, or that matches `path`, a directory above it or one of `names` below it (`RUN_FILES`; `CACHE_FILES` for
  the data cache). What this cannot foresee (a file name it does not list, a symlink made later) `files_inside`
  finds at the run's next start. False for other specs, and for a path the system cannot even look at (the reader
  reports that itself)."""
  if not isinstance(spec, str) or not spec.startswith("text:") or not spec[len("text:"):]:
    return False
  try:
    return _reads_path(os.path.expanduser(spec[len("text:"):]), _real_target(Path(os.path.abspath(path))), names)
  except (OSError, ValueError):  # a name too long, a NUL: not a corpus the reader can open either
    return False


def _reads_path(expanded: str, target: Path, names: Sequence[str]) -> bool:
  if globlib.has_magic(expanded) and not Path(expanded).exists():
    for match in globlib.glob(expanded, recursive=True):  # directories matched now: the reader walks them
      if os.path.isdir(match) and _walk_reaches(Path(match), target):
        return True
    pattern = _real_prefix(os.path.abspath(expanded)).parts
    for above in (target, *target.parents):  # a directory matched: its walk reads the non-hidden names below it
      if _glob_matches(pattern, above.parts) and _visible(target, above):
        return True
    for name in names:  # a file the run writes, or a directory of them, matched by name
      file = target / name
      if any(_glob_matches(pattern, above.parts) for above in (file, *file.parents) if target in above.parents):
        return True
    return False
  corpus = Path(expanded)
  return corpus.is_dir() and _walk_reaches(corpus, target)


def files_inside(spec: str, path: str | os.PathLike) -> list[Path]:
  """The files of the `text:` corpus `spec` that lie under `path` (compared by real path), as the reader resolves
  them now: a run's own files read as its training text. [] for other specs and for a corpus the reader refuses
  (`load_corpus` then says why)."""
  if not isinstance(spec, str) or not spec.startswith("text:"):
    return []
  try:
    root = Path(os.path.realpath(path))
    files = resolve_text_files(spec[len("text:"):])
  except (CorpusError, OSError, ValueError):
    return []
  return [f for f in files if root in Path(os.path.realpath(f)).parents]


def spec_root(spec: str) -> Path | None:
  """Where a `text:` corpus lies: its path up to the first name with a glob character (the file, the directory, or
  the directory its glob starts in), `~` expanded, symlinks resolved; None for other specs and an empty path."""
  if not isinstance(spec, str) or not spec.startswith("text:") or not spec[len("text:"):]:
    return None
  parts = Path(os.path.abspath(os.path.expanduser(spec[len("text:"):]))).parts
  literal = next((i for i, part in enumerate(parts) if globlib.has_magic(part)), len(parts))
  return Path(os.path.realpath(Path(*parts[:literal])))


def _real_target(path: Path) -> Path:
  """`path` with its deepest existing ancestor resolved (symlinks), the rest (not created yet) as written."""
  for above in (path, *path.parents):
    if above.exists():
      return Path(os.path.realpath(above)) / path.relative_to(above)
  return path


def _real_prefix(pattern: str) -> Path:
  """A glob pattern with its literal leading directories resolved (symlinks), so it compares with real paths."""
  parts = Path(pattern).parts
  literal = next((i for i, part in enumerate(parts) if globlib.has_magic(part)), len(parts))
  head = Path(*parts[:literal]) if literal else Path(parts[0])
  return Path(os.path.realpath(head), *parts[literal:])


def _visible(path: Path, root: Path) -> bool:
  """No name of `path` below `root` starts with '.' (the reader skips hidden files and directories)."""
  return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _walk_reaches(directory: Path, target: Path) -> bool:
  """Whether `_files_under(directory)` would read files under `target` (a real path): some directory its walk
  (`_walk`) visits is `target` or a directory above it with no hidden name between."""
  return any((Path(real) == target or Path(real) in target.parents) and _visible(target, Path(real))
             for _, real, _ in _walk(directory))


def _glob_matches(pattern: Sequence[str], parts: Sequence[str]) -> bool:
  """glob's matching of one path (`parts`, from the root) by `pattern`'s components: `**` spans any number of
  non-hidden names, `*`/`?`/`[..]` stay within one name and match a hidden one only when the component itself
  starts with '.', as `glob.glob(..., recursive=True)` does."""
  if not pattern:
    return not parts
  head, rest = pattern[0], pattern[1:]
  if head == "**":
    return any(_glob_matches(rest, parts[i:]) for i in range(len(parts) + 1)
               if not any(p.startswith(".") for p in parts[:i]))
  if not parts:
    return False
  name = parts[0]
  if globlib.has_magic(head):
    if name.startswith(".") and not head.startswith("."):
      return False
    return fnmatch.fnmatchcase(name, head) and _glob_matches(rest, parts[1:])
  return name == head and _glob_matches(rest, parts[1:])


def resolve_text_files(pattern: str) -> list[Path]:
  """A file, a directory (all non-hidden files below it, sorted, following symlinked directories) or a glob (its
  sorted matches; a matched directory contributes its files), each real file once. A path that exists is taken as
  itself even when it holds glob characters (`notes [final].txt`). A single path that is no regular file (a FIFO,
  a device) is refused: a directory or glob skips such entries."""
  if not pattern:
    raise CorpusError("empty path in corpus spec 'text:'")
  expanded = os.path.expanduser(pattern)
  path = Path(expanded)
  if globlib.has_magic(expanded) and not path.exists():
    files = []
    for match in sorted(globlib.glob(expanded, recursive=True)):
      files += _files_under(Path(match)) if os.path.isdir(match) else [Path(match)] if os.path.isfile(match) else []
    if not files:
      raise CorpusError(f"glob {pattern!r} matched no files")
    return _distinct(files)
  if path.is_dir():
    files = _files_under(path)
    if not files:
      raise CorpusError(f"directory {path} contains no files")
    return _distinct(files)
  if not path.exists():
    raise CorpusError(f"corpus path not found: {path}")
  if not path.is_file():  # a FIFO, `<(...)`, a device: read once for the fingerprint, its text is gone (or never ends)
    raise CorpusError(f"corpus path {path} is not a regular file (a pipe, device or socket); give a file, a directory "
                      f"or a glob: a corpus is read more than once (its fingerprint, then its text, again at each "
                      f"evaluation)")
  return [path]


# Bump when the way text files become documents changes (line splitting, BOM, line endings): part of their fingerprint.
TEXT_READER_VERSION = 2


def corpus_fingerprint(spec: str) -> str | None:
  """A hash of the resolved path and the content (SHA-256) of every file a `text:` spec names, and of
  TEXT_READER_VERSION; None for the other specs.

  Downstream caches key on it, so editing, adding or removing a file invalidates them, even an edit that keeps the
  file's size and modification time (`cp -p`, `rsync -a`, `tar x`, a shuffle of lines); the files are read for it
  (about a second per GB). The bundled corpora need none: their content is fixed by the installed gensim and
  CORPUS_VERSION. `hf:` datasets are versioned by the hub and not fingerprinted here.
  """
  if not spec.startswith("text:"):
    return None
  digests = []
  for f in resolve_text_files(spec[len("text:"):]):
    digest = hashlib.sha256()
    try:
      with open(f, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
          digest.update(block)
    except FileNotFoundError:
      raise CorpusError(f"corpus file not found: {f}") from None
    digests.append((f, digest.hexdigest()))
  return _files_fingerprint(digests)


def _files_fingerprint(digests: Sequence[tuple[Path, str]]) -> str:
  """The fingerprint of files given as (path, SHA-256 of its bytes): `corpus_fingerprint` reads them for it,
  `load_corpus` hashes the bytes it decodes (one read, so the key and the documents are of the same content)."""
  parts: list = [TEXT_READER_VERSION, *((str(f.resolve()), digest) for f, digest in digests)]
  return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def normalise_text(text: str) -> str:
  """A file's text as documents are cut from it: a leading byte-order mark dropped, Windows (CRLF) and old Mac (CR)
  line endings made LF, so that the same text saved on another system is the same corpus."""
  return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _text_corpus(pattern: str, errors: str) -> Corpus:
  files = resolve_text_files(pattern)
  texts, digests = [], []
  for f in files:  # one read per file: the fingerprint is of the bytes these documents come from
    data = _read_bytes(f)
    digests.append((f, hashlib.sha256(data).hexdigest()))
    texts.append(normalise_text(_decode(f, data, errors)))
  fingerprint = _files_fingerprint(digests)
  if len(files) == 1 and not texts[0].strip():
    raise CorpusError(f"corpus file is empty: {files[0]}")
  name = f"text:{pattern}"
  if len(files) >= MIN_FILES_FOR_FILE_SPLIT:
    docs = [t.strip() for t in texts]  # one document per file (a blank file is a blank document: dropped)
  else:
    # One per non-blank line. Lines end at "\n" only: str.splitlines would also cut at form feeds, U+2028, NEL and
    # other separators that are text inside a line.
    docs = [line.strip() for t in texts for line in t.split("\n") if line.strip()]
  return _check_splits(dataclasses.replace(split_documents(docs, name), fingerprint=fingerprint))


def _lee() -> Corpus:
  from gensim.test.utils import datapath
  text = read_text_file(datapath("lee_background.cor"))
  return _check_splits(split_documents([line.strip() for line in text.splitlines()], "lee"))


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face hub (optional)


def _network_error(error: BaseException) -> bool:
  """Whether `error` says the network failed: Python's ConnectionError / TimeoutError, or a class of that name that
  a network library defines for itself (requests' ConnectionError and Timeout, httpx's ConnectError,
  huggingface_hub's OfflineModeIsEnabled), which `datasets` may raise unwrapped."""
  names = {c.__name__ for c in type(error).__mro__}
  return (isinstance(error, (ConnectionError, TimeoutError))
          or bool(names & {"ConnectionError", "ConnectError", "Timeout", "ConnectTimeout", "OfflineModeIsEnabled"}))


def _hf_corpus(spec: str, cache_dir) -> Corpus:
  try:
    import datasets  # optional extra
  except ImportError:
    raise CorpusError(f"corpus spec 'hf:{spec}' needs the optional package `datasets` "
                      "(pip install datasets) and a network connection") from None
  name, _, config = spec.partition("/")
  if not name:
    raise CorpusError("corpus spec 'hf:' needs a dataset name: hf:<name>[/<config>]")
  hf_cache = str(cache_root(cache_dir) / "hf")
  try:
    ds = datasets.load_dataset(name, config or None, cache_dir=hf_cache)
  except Exception as e:  # the hub unreachable, an unknown name, ...: a user's error, one line, the library's own
    network = ("; loading a dataset from the Hugging Face hub needs the network (the offline corpora "
               "wikipedia-sample, lee, passkey and text: need none)" if _network_error(e) else "")
    raise CorpusError(f"corpus spec 'hf:{spec}' could not be loaded ({first_line(e, 300)}){network}") from None
  if "train" not in ds:
    raise CorpusError(f"hf:{spec} has no 'train' split (it has {', '.join(ds)})")
  column = "text" if "text" in ds["train"].column_names else ds["train"].column_names[0]

  def docs(split):
    return [t for t in ds[split][column] if isinstance(t, str) and t.strip()]

  valid_name = next((s for s in ("validation", "valid", "dev") if s in ds), None)
  if valid_name and "test" in ds:
    corpus = Corpus(f"hf:{spec}", docs("train"), docs(valid_name), docs("test"))
  else:
    corpus = split_documents(docs("train"), f"hf:{spec}")
  return _check_splits(corpus)


def load_corpus(spec: str = DEFAULT_CORPUS, *, errors: str = "strict", cache_dir=None) -> Corpus:
  """Load the corpus named by `spec` (see the module docstring); errors= applies to local text files."""
  if errors not in ERROR_POLICIES:
    raise ValueError(f"unknown errors policy {errors!r}; valid: {', '.join(ERROR_POLICIES)}")
  if spec == "wikipedia-sample":
    return _check_splits(_wikipedia_sample(cache_dir))
  if spec == "lee":
    return _lee()
  if spec == "passkey":
    return _check_splits(split_documents(passkey.corpus_documents(), "passkey"))
  if spec.startswith("text:"):
    return _text_corpus(spec[len("text:"):], errors)
  if spec.startswith("hf:"):
    return _hf_corpus(spec[len("hf:"):], cache_dir)
  raise CorpusError(f"unknown corpus spec {spec!r}; valid specs: {', '.join(VALID_SPECS)}")
