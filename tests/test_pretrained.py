"""Pretrained initial tables: every vector format through gensim, alignment per tokenizer kind, coverage arithmetic,
the OOV / projection / scale policies, freeze_steps in a real run, and the one-line errors."""

import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from gensim.models import KeyedVectors
from gensim.test.utils import datapath

from research.data import tokenizers
from research.embeddings import pretrained
from research.train import checkpoint as checkpoint_lib
from research.train import configuration, loop, optim
from tests.train_utils import cli, mark_finished, tiny_config

SPECIALS = list(tokenizers.SPECIAL_TOKENS)


def write_w2v(path, vectors: dict[str, list[float]], binary=False) -> Path:
  """A word2vec file written by gensim itself."""
  kv = KeyedVectors(len(next(iter(vectors.values()))))
  kv.add_vectors(list(vectors), np.asarray(list(vectors.values()), np.float32))
  kv.save_word2vec_format(str(path), binary=binary)
  return Path(path)


def gensim_vectors(path, **kwargs):
  return KeyedVectors.load_word2vec_format(str(path), **kwargs)


# ------------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("name, fmt", [("word2vec_pre_kv_c", "word2vec"), ("test_glove.txt", "glove"),
                                       ("lee_fasttext.vec", "fasttext"), ("toy-model.bin", "fasttext-bin"),
                                       ("lee_fasttext.bin", "fasttext-bin")])
def test_each_shipped_file_is_detected_and_loads_the_same_vectors_as_gensim(name, fmt):
  kv, resolved = pretrained.load_vectors(datapath(name))
  assert resolved == fmt
  if fmt == "fasttext-bin":
    from gensim.models.fasttext import load_facebook_vectors
    reference = load_facebook_vectors(datapath(name))
  else:
    reference = gensim_vectors(datapath(name), no_header=fmt == "glove")
  assert kv.index_to_key == reference.index_to_key and len(kv.index_to_key) > 10
  np.testing.assert_array_equal(kv.vectors, reference.vectors)
  again, _ = pretrained.load_vectors(datapath(name), fmt)  # the explicit format reads the same
  np.testing.assert_array_equal(again.vectors, kv.vectors)


def test_word2vec_binary_written_by_gensim_is_detected_and_equals_the_text_file(tmp_path):
  source = gensim_vectors(datapath("word2vec_pre_kv_c"))
  source.save_word2vec_format(str(tmp_path / "v.bin"), binary=True)
  kv, fmt = pretrained.load_vectors(tmp_path / "v.bin")
  assert fmt == "word2vec-binary"
  assert kv.index_to_key == source.index_to_key
  np.testing.assert_array_equal(kv.vectors, source.vectors)


def test_a_fasttext_bin_composes_uncovered_pieces_from_character_ngrams():
  tokens = SPECIALS + ["the", "Ġthe", "thee", "##ing"]
  kv, _ = pretrained.load_vectors(datapath("lee_fasttext.bin"))
  assert "thee" not in kv.key_to_index and "ing" not in kv.key_to_index
  table, report = pretrained.pretrained_table(datapath("lee_fasttext.bin"), tokens, "wordpiece", d_model=10,
                                              std=0.1, scale="keep")
  np.testing.assert_allclose(table[5], kv["the"], rtol=1e-6)
  np.testing.assert_allclose(table[7], kv.get_vector("thee"), rtol=1e-6)  # gensim's own n-gram composition
  np.testing.assert_allclose(table[8], kv.get_vector("ing"), rtol=1e-6)
  # For wordpiece "Ġthe" is literal text, composed from n-grams too.
  assert report["rules"] == {"exact": 1, "lower": 0, "subword": 3, "special": 5, "uncovered": 0}


# --------------------------------------------------------------------------------------- alignment / coverage


def test_coverage_arithmetic_on_a_hand_built_vocabulary(tmp_path):
  path = write_w2v(tmp_path / "v.txt", {"the": [1, 0, 0, 0], "cat": [0, 2, 0, 0], "sat": [0, 0, 3, 0]})
  tokens = SPECIALS + ["the", "The", "Ġcat", "dog", "ĠSAT", "zz"]
  counts = np.array([0, 3, 0, 50, 0, 100, 10, 20, 30, 5, 7])
  table, report = pretrained.pretrained_table(path, tokens, "bpe", d_model=4, std=0.1, scale="keep",
                                              counts=counts)
  assert report["rules"] == {"exact": 2, "lower": 2, "subword": 0, "special": 5, "uncovered": 2}
  assert report["rows"] == 11 and report["rows_covered"] == 4
  assert report["share_rows_covered"] == pytest.approx(4 / 11)
  assert report["training_tokens"] == 225
  assert report["share_tokens_covered"] == pytest.approx((100 + 10 + 20 + 5) / 225)
  assert report["uncovered_examples"] == ["dog", "zz"]  # most frequent first; special tokens never listed
  np.testing.assert_array_equal(table[[5, 6, 7, 9]], [[1, 0, 0, 0], [1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0]])


def test_the_uncovered_examples_are_at_most_twenty_and_specials_are_never_covered(tmp_path):
  # A file that has vectors for the special strings themselves: they still are not covered.
  path = write_w2v(tmp_path / "v.txt", {**{s: [1.0, 1.0] for s in SPECIALS}, "a": [1.0, 0.0]})
  tokens = SPECIALS + ["a"] + [f"w{i}" for i in range(30)]
  _, report = pretrained.pretrained_table(path, tokens, "word", d_model=2, std=0.1)
  assert report["rows_covered"] == 1 and report["rules"]["special"] == 5
  assert len(report["uncovered_examples"]) == 20 and report["share_tokens_covered"] is None


@pytest.fixture(scope="module")
def texts():
  from research.data import corpora
  return corpora.load_corpus("lee").train[:120]


def vocab(tok):
  return [tok.id_to_token(i) for i in range(tok.get_vocab_size())]


@pytest.mark.parametrize("kind", ["word", "bpe", "wordpiece", "unigram"])
def test_alignment_strips_each_tokenizer_kinds_markers(kind, texts, tmp_path):
  tok = tokenizers.train_tokenizer(kind, texts, 600)
  tokens = vocab(tok)
  words = pretrained.token_words(tokens, kind)
  assert words[:5] == [""] * 5
  marker = {"bpe": "Ġ", "wordpiece": "##", "unigram": "▁"}.get(kind)
  if marker:
    marked = [i for i, t in enumerate(tokens) if t.startswith(marker) and len(t) > len(marker) + 1]
    assert marked, kind
    for i in marked:
      assert words[i] == tokens[i][len(marker):]
      assert pretrained.starts_word(tokens[i], kind) == (kind != "wordpiece")
  assert not any(pretrained.starts_word(t, kind) for t in SPECIALS)
  # Vectors for every word form: each non-special row with text is covered, by exact match, with its word's vector.
  forms = sorted({w for w in words if w})
  path = write_w2v(tmp_path / "v.txt", {w: [float(j), 1.0] for j, w in enumerate(forms)})
  table, report = pretrained.pretrained_table(path, tokens, kind, d_model=2, std=0.1, scale="keep")
  index = {w: j for j, w in enumerate(forms)}
  for i, w in enumerate(words):
    if w:
      assert table[i, 0] == index[w], (kind, tokens[i])
  assert report["rules"]["exact"] == sum(1 for w in words if w)
  assert report["rules"]["uncovered"] == sum(1 for w in words[5:] if not w)


def test_byte_level_pieces_are_decoded_to_text_before_matching(tmp_path):
  path = write_w2v(tmp_path / "v.txt", {"café": [1.0, 2.0], "the": [3.0, 4.0]})
  # GPT-2's byte alphabet: "Ġcafé" is spelled with the two bytes of é; a lone lead byte stands for no text.
  tokens = SPECIALS + ["ĠcafÃ©", "the", "Ã"]
  table, report = pretrained.pretrained_table(path, tokens, "bpe", d_model=2, std=0.1, scale="keep")
  np.testing.assert_array_equal(table[5:7], [[1, 2], [3, 4]])
  assert report["uncovered_examples"] == ["Ã"]


# ------------------------------------------------------------------------------------------------- policies


def small_case(tmp_path, dim=4):
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(6)]
  path = write_w2v(tmp_path / f"v{dim}.txt", {w: list(rng.normal(size=dim)) for w in words})
  tokens = SPECIALS + words + ["u1", "u2", "u3"]
  return path, tokens, gensim_vectors(path)


@pytest.mark.parametrize("oov", ["random", "mean"])
def test_oov_policies_keep_the_shape_and_the_covered_rows_exact_under_keep(oov, tmp_path):
  path, tokens, kv = small_case(tmp_path)
  table, report = pretrained.pretrained_table(path, tokens, "word", d_model=4, std=0.1, oov=oov, scale="keep")
  assert table.shape == (len(tokens), 4) and table.dtype == np.float32
  np.testing.assert_array_equal(table[5:11], kv.vectors)
  covered_norm = np.linalg.norm(kv.vectors, axis=1).mean()
  fill = np.r_[table[:5], table[11:]]
  assert len(np.unique(fill, axis=0)) == len(fill)  # no two uncovered rows alike
  if oov == "random":
    assert np.linalg.norm(fill, axis=1).mean() == pytest.approx(covered_norm, rel=1e-5)
  else:
    spread = np.linalg.norm(fill - kv.vectors.mean(0), axis=1)
    assert spread.max() < 0.05 * covered_norm
  assert report["covered_mean_norm"] == pytest.approx(covered_norm, rel=1e-6)


def test_scale_match_gives_the_normal_inits_mean_norm_and_keeps_directions(tmp_path):
  path, tokens, kv = small_case(tmp_path, dim=64)
  table, report = pretrained.pretrained_table(path, tokens, "word", d_model=64, std=0.125)
  norms = np.linalg.norm(table[5:11], axis=1)
  draws = np.random.default_rng(1).normal(0, 0.125, (20000, 64))
  assert norms.mean() == pytest.approx(np.linalg.norm(draws, axis=1).mean(), rel=5e-3)
  np.testing.assert_allclose(table[5:11] / report["scale_factor"], kv.vectors, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("source, target", [(4, 8), (8, 4)])
def test_projection_is_a_fixed_seeded_orthogonal_map(source, target, tmp_path):
  path, tokens, kv = small_case(tmp_path, dim=source)
  run = lambda seed: pretrained.pretrained_table(path, tokens, "word", d_model=target, std=0.1,  # noqa: E731
                                                 dim_mismatch="project", scale="keep", seed=seed)
  table, report = run(0)
  assert table.shape == (len(tokens), target) and report["projected"]
  np.testing.assert_array_equal(table, run(0)[0])
  assert not np.allclose(table, run(1)[0])
  p = pretrained.orthogonal_projection(source, target, 0)
  np.testing.assert_allclose(table[5:11], kv.vectors @ p, rtol=1e-5, atol=1e-6)
  if source < target:  # widening keeps every inner product of the covered rows
    np.testing.assert_allclose(table[5:11] @ table[5:11].T, kv.vectors @ kv.vectors.T, rtol=1e-4, atol=1e-5)
  else:
    np.testing.assert_allclose(p.T @ p, np.eye(target), atol=1e-12)


# --------------------------------------------------------------------------------------------------- errors


def test_bad_input_gives_one_line_errors_naming_the_value(tmp_path):
  path, tokens, _ = small_case(tmp_path)
  table = lambda p, **kw: pretrained.pretrained_table(p, tokens, "word", d_model=4, std=0.1, **kw)  # noqa: E731
  cases = [
      (lambda: table(tmp_path / "nope.vec"), ["nope.vec", "no such file"]),
      (lambda: table(datapath("questions-words.txt")), ["questions-words.txt", "does not parse as 'glove'"]),
      (lambda: table(datapath("test_glove.txt"), format="word2vec-binary"), ["does not parse as 'word2vec-binary'"]),
      (lambda: table(datapath("test_glove.txt"), format="word2vec"), ["does not parse as 'word2vec'"]),
      (lambda: table(path, format="word2vec-binary"), ["does not parse as 'word2vec-binary'", "line breaks"]),
      (lambda: pretrained.pretrained_table(path, tokens, "word", d_model=6, std=0.1), ["4-dimensional", "d_model=6"]),
      (lambda: pretrained.pretrained_table(path, SPECIALS + ["Ġxx", "Ġyy", "Ġzz", "Ġqq"], "bpe", d_model=4,
                                           std=0.1), ["'bpe'", "'Ġxx', 'Ġyy', 'Ġzz'"]),
  ]
  for call, parts in cases:
    with pytest.raises(pretrained.PretrainedError) as info:
      call()
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
      assert part in message, (part, message)


# A real file written by gensim (its shipped 1750 × 10 word2vec vectors), then broken the way files break.


def shipped(tmp_path, binary=False) -> tuple[Path, KeyedVectors]:
  source = gensim_vectors(datapath("word2vec_pre_kv_c"))
  path = tmp_path / ("v.bin" if binary else "v.txt")
  source.save_word2vec_format(str(path), binary=binary)
  return path, source


def edit_line(path: Path, line_no: int, edit) -> Path:
  """Line `line_no` (1-based, the header is line 1) of a text vector file replaced by edit(line)."""
  lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
  lines[line_no - 1] = edit(lines[line_no - 1])
  path.write_text("".join(lines), encoding="utf-8")
  return path


def binary_offset(source: KeyedVectors, row: int) -> int:
  """Where vector `row`'s record (its word) starts in gensim's binary: 'COUNT DIM\n', then word, space, float32s."""
  header = len(f"{len(source.index_to_key)} {source.vector_size}\n")
  return header + sum(len(w.encode()) + 1 + 4 * source.vector_size for w in source.index_to_key[:row])


def refusal(call) -> str:
  with pytest.raises(pretrained.PretrainedError) as info:
    call()
  message = str(info.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("value", ["nan", "-inf", "1e39"])
def test_a_non_finite_value_in_a_text_file_is_refused_at_load_naming_the_word(value, tmp_path):
  path, source = shipped(tmp_path)
  word = source.index_to_key[39]  # line 41
  edit_line(path, 41, lambda line: line.split(" ", 2)[0] + f" {value} " + line.split(" ", 2)[2])  # its 1st number
  assert f"{word} {value} " in path.read_text()
  message = refusal(lambda: pretrained.load_vectors(path))
  assert str(path) in message and f"{word!r} (vector 40)" in message and "must be finite float32" in message
  assert ("NaN" if value == "nan" else "inf") in message
  message = refusal(lambda: pretrained.pretrained_table(path, SPECIALS + ["the"], "word", d_model=10, std=0.1))
  assert f"{word!r}" in message and "finite float32" in message


def test_a_nan_in_a_binary_file_and_in_a_fasttext_model_is_refused(tmp_path):
  path, source = shipped(tmp_path, binary=True)
  data = bytearray(path.read_bytes())
  at = binary_offset(source, 7) + len(source.index_to_key[7].encode()) + 1 + 4 * 3  # vector 8's 4th value
  data[at:at + 4] = np.float32("nan").tobytes()
  path.write_bytes(bytes(data))
  message = refusal(lambda: pretrained.load_vectors(path))
  assert f"{source.index_to_key[7]!r} (vector 8) holds NaN" in message
  # A fastText model whose training diverged, saved by gensim: its words compose from the NaN n-gram.
  from gensim.models.fasttext import load_facebook_model, save_facebook_model
  model = load_facebook_model(datapath("lee_fasttext.bin"))
  model.wv.vectors_ngrams[model.wv.bucket - 1] = np.nan
  save_facebook_model(model, str(tmp_path / "ft.bin"))
  message = refusal(lambda: pretrained.load_vectors(tmp_path / "ft.bin"))
  assert "ft.bin" in message and "must be finite float32" in message


def test_zero_vectors_all_refused_some_kept_and_reported(tmp_path):
  rng = np.random.default_rng(0)
  zero = write_w2v(tmp_path / "zero.txt", {w: [0.0] * 4 for w in ("the", "cat", "sat")})
  message = refusal(lambda: pretrained.load_vectors(zero))
  assert "zero.txt" in message and "all 3 vectors are zero" in message and "no information" in message
  # Zero rows are legal (a padding vector): copied as they are, counted, the others scaled as usual ...
  some = write_w2v(tmp_path / "some.txt", {"<pad>": [0.0] * 4, "the": list(rng.normal(size=4)),
                                          "cat": list(rng.normal(size=4)), "dog": [0.0] * 4})
  tokens = SPECIALS + ["the", "cat", "dog", "zz"]
  table, report = pretrained.pretrained_table(some, tokens, "word", d_model=4, std=0.1)
  assert report["zero_rows_covered"] == 1 and report["rows_covered"] == 3
  np.testing.assert_array_equal(table[7], 0)
  assert np.linalg.norm(table[5:8], axis=1).mean() == pytest.approx(pretrained.normal_mean_norm(0.1, 4), rel=1e-5)
  assert np.all(np.isfinite(table)) and np.linalg.norm(table[8]) > 0
  assert "zero vectors kept in 1 covered row(s)" in pretrained.summary_line(report)
  # ... but a vocabulary that only zero rows cover is refused: the table would be all zeros.
  message = refusal(lambda: pretrained.pretrained_table(some, SPECIALS + ["dog", "zz"], "word", d_model=4, std=0.1))
  assert "every vector covering the 'word' vocabulary (1 rows) is zero" in message


@pytest.mark.parametrize("binary", [False, True])
def test_a_duplicate_word_keeps_its_first_vector_and_is_counted(binary, tmp_path):
  path, source = shipped(tmp_path, binary=binary)
  keys = source.index_to_key
  later = next(i for i in range(40, len(keys)) if len(keys[i]) == len(keys[2]))  # same length: bytes stay aligned
  if binary:
    data = path.read_bytes()
    at = binary_offset(source, later)
    path.write_bytes(data[:at] + keys[2].encode() + data[at + len(keys[2]):])
  else:
    edit_line(path, later + 2, lambda line: keys[2] + line[len(keys[later]):])
  kv, _ = pretrained.load_vectors(path, notes=(notes := {}))
  assert notes == {"duplicate_words": 1, "duplicate_example": keys[2]}
  assert len(kv.index_to_key) == len(kv.vectors) == len(keys) - 1 and None not in kv.index_to_key
  np.testing.assert_array_equal(kv[keys[2]], source[keys[2]])  # the first vector wins
  assert keys[later] not in kv.key_to_index
  table, report = pretrained.pretrained_table(path, SPECIALS + [keys[2]], "word", d_model=10, std=0.1, scale="keep")
  np.testing.assert_array_equal(table[5], source[keys[2]])
  assert report["source_vocab"] == len(keys) - 1 and report["duplicate_words"] == 1
  assert f"1 duplicate word skipped (e.g. {keys[2]!r}: its first vector kept)" in pretrained.summary_line(report)


@pytest.mark.parametrize("binary", [False, True])
def test_a_header_count_other_than_the_vectors_found_is_refused(binary, tmp_path):
  path, source = shipped(tmp_path, binary=binary)
  data = path.read_bytes()
  for count in (1740, 1760):
    path.write_bytes(data.replace(b"1750 10\n", f"{count} 10\n".encode(), 1))
    message = refusal(lambda: pretrained.load_vectors(path))
    assert f"its header announces {count} vectors but the file holds 1750" in message, message


def test_errors_name_the_option_that_gave_the_file(tmp_path):
  names = {"path": "--vectors", "format": "--format"}
  message = refusal(lambda: pretrained.load_vectors(tmp_path / "nope.txt", names=names))
  assert message == f"--vectors={str(tmp_path / 'nope.txt')!r}: no such file"
  path, _ = shipped(tmp_path)
  message = refusal(lambda: pretrained.load_vectors(path, "word2vec-binary", names=names))
  assert message.startswith("--vectors=") and "try --format=word2vec" in message


def test_a_factorized_tables_width_mismatch_names_its_field(tmp_path):
  path, tokens, _ = small_case(tmp_path)
  message = refusal(lambda: pretrained.pretrained_table(path, tokens, "word", d_model=8, std=0.1,
                                                        width_option="model.table_dim"))
  assert "the table has model.table_dim=8; set model.table_dim=4 or model.pretrained.dim_mismatch=project" in message


def test_unusable_files_say_what_is_wrong(tmp_path):
  (tmp_path / "empty.txt").write_bytes(b"")
  (tmp_path / "dir.txt").mkdir()
  (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
  kv = KeyedVectors(4)
  kv.add_vectors(["the", "new york", "cat", "dog"], np.arange(16, dtype=np.float32).reshape(4, 4) + 0.5)
  kv.save_word2vec_format(str(tmp_path / "space.txt"))
  kv.save_word2vec_format(str(tmp_path / "space.bin"), binary=True)
  cases = [("empty.txt", "auto", "the file is empty"),
           ("dir.txt", "auto", "is a directory"),
           ("random.bin", "auto", "does not parse as 'fasttext-bin' (auto-detected): it is not a fastText binary"),
           ("random.bin", "word2vec-binary", "its first line is not a 'COUNT DIM' header"),
           ("space.txt", "auto", "line 3: the word 'new york' contains a space"),
           ("space.bin", "auto", "out of step at vector 2 after 'the' (vector 1): its word is 'new york', which "
                                 "gensim read as 'new'")]
  for name, fmt, part in cases:
    message = refusal(lambda: pretrained.load_vectors(tmp_path / name, fmt))
    assert str(tmp_path / name) in message and part in message, (name, message)


@pytest.mark.parametrize("unicode_errors", ["strict", "replace"])
def test_a_binary_with_a_word_containing_a_space_is_refused_by_its_values(unicode_errors, tmp_path):
  """gensim writes "new york" into a binary, reads "new", takes "york " and most of the vector as its vector (values
  like 2.9e26) and resynchronises at a later space: the file used to load as garbage (the check for control
  characters in a word caught it only sometimes, and hardly at all with unicode_errors=replace). The shifted part a
  multiple of 4 bytes or not, the file is refused naming the word and the one before it."""
  words = ["the", "of", "and", "to", "in", "a", "is", "king", "queen", "man"]
  for seed, (dim, space_word) in enumerate([(8, "new york"), (16, "new yor"), (50, "new yorkers"), (10, "new yo"),
                                            (300, "los angeles"), (16, "New York City")]):
    rng = np.random.default_rng(seed)
    keys = words[:seed + 2] + [space_word] + words[seed + 2:]
    path = write_w2v(tmp_path / f"s{seed}.bin", {w: rng.normal(scale=0.3, size=dim) for w in keys}, binary=True)
    message = refusal(lambda: pretrained.load_vectors(path, unicode_errors=unicode_errors))
    assert f"out of step at vector {seed + 3} after {keys[seed + 1]!r} (vector {seed + 2})" in message, message
    assert "a word2vec binary cannot hold a word containing a space" in message and "word2vec text" in message


def test_honest_binaries_of_any_scale_pass_the_value_check(lee_sentences, tmp_path):
  """The out-of-step check is on the values relative to the file's own scale: gensim's shipped binaries, trained
  vectors, tiny and huge random vectors, unnormalised count-like vectors with zero rows all read as gensim reads
  them."""
  from research.embeddings import train_vectors
  rng = np.random.default_rng(0)
  counts = np.abs(rng.normal(size=(40, 8))) * rng.integers(0, 1000, (40, 1))
  files = [datapath("euclidean_vectors.bin"), datapath("poincare_vectors.bin"),
           write_w2v(tmp_path / "tiny.bin", {f"w{i}": rng.normal(scale=1e-4, size=4) for i in range(30)}, True),
           write_w2v(tmp_path / "huge.bin", {f"w{i}": rng.normal(scale=1e4, size=300) for i in range(30)}, True),
           write_w2v(tmp_path / "counts.bin", {f"w{i}": counts[i] for i in range(40)}, True)]
  # Heavy tails the scale rule alone would call misread (no word with a space explains them, no word is garbled):
  # Zipf counts (a frequent word's row ~1e11 × the median), one huge row, a lone outlier, tiny nonzeros, denormals.
  zipf = rng.zipf(1.3, size=(200, 8)).astype(np.float64)
  rows = {f"w{i}": np.ones(8) for i in range(50)}
  files += [write_w2v(tmp_path / "zipf.bin", {f"w{i}": zipf[i] for i in range(200)}, True),
            write_w2v(tmp_path / "one_huge.bin", {**rows, "w7": np.full(8, 1e7)}, True),
            write_w2v(tmp_path / "outlier.bin", {**rows, "w3": np.r_[3e6, np.ones(7)]}, True),
            write_w2v(tmp_path / "tiny_nonzero.bin", {**rows, "w5": np.r_[1e-13, np.ones(7)]}, True),
            write_w2v(tmp_path / "denormal.bin", {**rows, "w9": np.full(8, 1e-40)}, True)]
  for method in train_vectors.METHODS:
    model = train_vectors.train_vectors(lee_sentences, method, 16, epochs=1, seed=3)
    model.wv.save_word2vec_format(str(tmp_path / f"{method}.bin"), binary=True)
    files.append(tmp_path / f"{method}.bin")
  for path in files:
    kv, fmt = pretrained.load_vectors(path)
    reference = gensim_vectors(path, binary=True)
    assert fmt == "word2vec-binary" and kv.index_to_key == reference.index_to_key
    np.testing.assert_array_equal(kv.vectors, reference.vectors)


def test_sentences_are_the_corpus_readers_lines_cut_at_gensims_limit():
  from research.embeddings import train_vectors
  line = "alpha beta\u2028gamma delta\x0ceps zeta\x85eta\x1etheta"  # breaks to str.splitlines, text to the reader
  assert train_vectors.sentences_of([f"{line}\n\n{line}\r\n", "iota"], tokenizers.split_words) == [
      tokenizers.split_words(line), tokenizers.split_words(line), ["iota"]]
  long = " ".join(["w"] * (2 * train_vectors.MAX_SENTENCE_WORDS + 3))
  assert [len(s) for s in train_vectors.sentences_of([long], tokenizers.split_words)] == [
      train_vectors.MAX_SENTENCE_WORDS, train_vectors.MAX_SENTENCE_WORDS, 3]


def test_research_vectors_binary_of_words_with_control_characters_is_read_back(tmp_path):
  """The word splitter keeps control characters ('lam\\x7fbda'); gensim writes and reads such words in a binary
  intact, which the loader used to refuse as 'records out of step'. research-vectors' .bin output now loads, as a
  table's initialisation and for research-analyze --vectors."""
  from research.analysis import quality
  from research.embeddings import train_vectors
  texts = ["the lam\x7fbda of eps\x01ilon and the \x02x king queen man woman " * 3] * 20
  model = train_vectors.train_vectors(train_vectors.sentences_of(texts, tokenizers.split_words), "word2vec", 8,
                                      min_count=1, epochs=1)
  assert "lam\x7fbda" in model.wv.key_to_index and "eps\x01ilon" in model.wv.key_to_index
  path = tmp_path / "v.bin"
  assert train_vectors.save_vectors(model, path, "word2vec") == "word2vec-binary"
  kv, _ = pretrained.load_vectors(path)
  assert kv.index_to_key == model.wv.index_to_key
  np.testing.assert_array_equal(kv.vectors, model.wv.vectors)
  table, report = pretrained.pretrained_table(path, SPECIALS + ["lam\x7fbda", "eps\x01ilon", "the"], "word",
                                              d_model=8, std=0.1, scale="keep")
  np.testing.assert_array_equal(table[5], model.wv["lam\x7fbda"])
  assert report["rows_covered"] == 3
  assert quality.analyze_vectors(path)["words"] == len(model.wv.index_to_key)


def test_the_reason_named_is_the_lines_own(tmp_path):
  """A line with one number too many is not 'a word with a space'; a binary file named .txt says so; a file whose
  only problem is a non-number is not told to set unicode_errors when it is set already; a compressed fastText .bin
  is refused before gensim reads garbage from it."""
  import gzip
  kv = KeyedVectors(4)
  kv.add_vectors(["the", "cat", "dog"], np.arange(12, dtype=np.float32).reshape(3, 4) + 0.5)
  kv.save_word2vec_format(str(tmp_path / "glove.txt"), write_header=False)
  with open(tmp_path / "glove.txt", "a") as f:
    f.write("extra 0.1 0.2 0.3 0.4 0.5\n")
  kv.save_word2vec_format(str(tmp_path / "header.txt"))
  (tmp_path / "header.txt").write_bytes((tmp_path / "header.txt").read_bytes().replace(b"3 4\n", b"3 3\n", 1))
  kv.save_word2vec_format(str(tmp_path / "binary.txt"), binary=True)
  kv.save_word2vec_format(str(tmp_path / "latin.txt"))
  data = (tmp_path / "latin.txt").read_bytes().replace(b"cat", b"caf\xe9")
  (tmp_path / "latin.txt").write_bytes(data.replace(b"dog 8.5", b"dog abc"))
  (tmp_path / "ft.bin.gz").write_bytes(gzip.compress(Path(datapath("lee_fasttext.bin")).read_bytes()))
  kv.save_word2vec_format(str(tmp_path / "single.txt"))  # one number on a line: gensim broadcasts it, silently
  (tmp_path / "single.txt").write_bytes((tmp_path / "single.txt").read_bytes().replace(b"cat 4.5 5.5 6.5 7.5",
                                                                                         b"cat 4.5"))
  cases = [("glove.txt", {}, "line 4 ('extra') has 5 numbers where the first vector has 4"),
           ("header.txt", {}, "line 2 ('the') has 4 numbers where the header says 3"),
           ("binary.txt", {}, "holds NUL bytes: the file looks binary (a word2vec binary named like text?); set "
                              "model.pretrained.format=word2vec-binary"),
           ("latin.txt", {}, "line 3 holds bytes that are not UTF-8"),
           ("latin.txt", {"unicode_errors": "replace"}, "line 4 ('dog'): 'abc' is not a number"),
           ("ft.bin.gz", {}, "a compressed fastText .bin is not read"),
           ("single.txt", {}, "line 3 ('cat') has 1 number where the header says 4")]
  for name, options, part in cases:
    message = refusal(lambda: pretrained.load_vectors(tmp_path / name, **options))
    assert part in message and "contains a space" not in message, (name, message)
    if options:
      assert "unicode_errors" not in message


@pytest.mark.parametrize("binary", [False, True])
def test_a_header_count_of_zero_before_vectors_names_both_numbers(binary, tmp_path):
  """gensim reads no vector from 'COUNT 0 ...': that was 'holds no vectors', where the header is what is wrong."""
  path = write_w2v(tmp_path / ("v.bin" if binary else "v.txt"), {w: [0.5, 1.5] for w in ("the", "cat", "dog")}, binary)
  path.write_bytes(path.read_bytes().replace(b"3 2\n", b"0 2\n", 1))
  message = refusal(lambda: pretrained.load_vectors(path))
  assert f"its header announces 0 vectors but the file holds 3 {'vectors' if binary else 'vector lines'}" in message
  assert "no vectors" not in message


def test_tabs_and_double_spaces_in_text_are_named_as_such(tmp_path):
  """gensim splits text vector lines on single spaces: a tab-separated GloVe file read as 'no vectors', and two
  spaces after a word as 'the word 'the ' contains a space'."""
  path, source = shipped(tmp_path)
  glove = tmp_path / "glove.txt"
  source.save_word2vec_format(str(glove), write_header=False)
  lines = glove.read_text().splitlines(keepends=True)
  cases = [("tabs_glove.txt", "".join(line.replace(" ", "\t") for line in lines),
            "line 1 separates its fields with a tab"),
           ("tab_w2v.txt", path.read_text().replace(lines[2], lines[2].replace(" ", "\t")),
            "line 4 separates its fields with a tab"),
           ("double.txt", path.read_text().replace(lines[1], lines[1].replace(" ", "  ", 1)),
            f"line 3 has two spaces in a row after the word {source.index_to_key[1]!r}, an empty field"),
           ("double_glove.txt", "".join(lines).replace(lines[0], lines[0].replace(" ", "  ", 2).replace("  ", " ", 1)),
            "line 1 has two spaces in a row after its number 1"),
           ("space.txt", path.read_text().replace(lines[1], "new york " + lines[1].split(" ", 1)[1]),
            "line 3: the word 'new york' contains a space")]
  for name, text, part in cases:
    (tmp_path / name).write_text(text)
    message = refusal(lambda: pretrained.load_vectors(tmp_path / name))
    assert part in message and "no vectors" not in message, (name, message)
    assert ("contains a space" in message) == (name == "space.txt"), (name, message)


def test_a_binary_headers_wrong_dim_is_named_with_a_long_word_among_its_first_records(tmp_path):
  """gensim reads words of any length; the width diagnosis walked words of at most 256 bytes, so a long word among
  the first records made a wrong header DIM 'a word containing a space?'."""
  rng = np.random.default_rng(0)
  for length in (300, 5000):
    words = {w: rng.normal(scale=0.3, size=8) for w in ("the", "x" * length, "cat", "dog", "sun")}
    path = write_w2v(tmp_path / f"long{length}.bin", words, binary=True)
    assert pretrained.load_vectors(path)[0].index_to_key == list(words)
    path.write_bytes(path.read_bytes().replace(b"5 8\n", b"5 4\n", 1))
    message = refusal(lambda: pretrained.load_vectors(path))
    assert "its header says each vector has 4 numbers but its records hold 8 float32s each" in message, message


def test_the_other_of_word2vec_text_and_binary_is_named_with_the_format_that_reads_it(tmp_path):
  """A word2vec binary read as text is not 'bytes that are not UTF-8: set unicode_errors' (which cannot help), and a
  text file named .bin (what research-vectors used to write for --out=X.bin) is not a header count to correct: each
  says which format reads it (docs/embeddings.md: "(a text file? try format=word2vec)")."""
  path, source = shipped(tmp_path, binary=True)
  for fmt in ("word2vec", "fasttext", "glove"):
    message = refusal(lambda: pretrained.load_vectors(path, fmt))
    assert "it is a word2vec binary (its header's 1750 records of 10 float32s follow); set " \
           "model.pretrained.format=word2vec-binary" in message and "unicode_errors" not in message, (fmt, message)
  from research.data import corpora
  from research.embeddings import train_vectors
  sentences = train_vectors.sentences_of(corpora.load_corpus("lee").train, tokenizers.split_words)
  model = train_vectors.train_vectors(sentences, "word2vec", 8, epochs=1)
  model.wv.save_word2vec_format(str(tmp_path / "text.bin"))  # text under a .bin name
  message = refusal(lambda: pretrained.load_vectors(tmp_path / "text.bin"))
  assert "does not parse as 'word2vec-binary' (auto-detected)" in message and "header announces" not in message
  assert "a text file? try model.pretrained.format=word2vec" in message
  kv, _ = pretrained.load_vectors(tmp_path / "text.bin", "word2vec")
  assert kv.index_to_key == model.wv.index_to_key


def test_a_binary_headers_wrong_dim_and_an_absurd_count_are_named_as_such(tmp_path):
  """A binary whose header DIM is not its records' width falls out of step; that is not 'a word containing a space'.
  A count too large to allocate is refused with the two numbers, as any other count (not 'gensim: MemoryError')."""
  path, _ = shipped(tmp_path, binary=True)
  data = path.read_bytes()
  for dim in (9, 11, 40):
    path.write_bytes(data.replace(b"1750 10\n", f"1750 {dim}\n".encode(), 1))
    message = refusal(lambda: pretrained.load_vectors(path))
    assert f"its header says each vector has {dim} numbers but its records hold 10 float32s each; correct the " \
           f"header's second number" in message and "space" not in message, message
  text, _ = shipped(tmp_path)
  text.write_bytes(text.read_bytes().replace(b"1750 10\n", b"100000000000 10\n", 1))
  path.write_bytes(data.replace(b"1750 10\n", b"100000000000 10\n", 1))
  for broken in (text, path):
    message = refusal(lambda: pretrained.load_vectors(broken))
    assert "its header announces 100000000000 vectors but the file holds 1750" in message, message


def test_a_byte_order_mark_is_refused_as_such_and_xz_names_are_compressed(tmp_path):
  """A UTF-8 BOM before the header used to be auto-detected as GloVe (refused for a width it did not have); as GloVe
  its first word would silently carry U+FEFF. .xz is decompressed as .gz and .bz2 are (smart_open): a word2vec binary
  named .bin.xz is detected as one, a fastText .bin.xz refused as the other compressions are."""
  import lzma
  path, source = shipped(tmp_path)
  glove = tmp_path / "glove.txt"
  source.save_word2vec_format(str(glove), write_header=False)
  for name in (path, glove):
    name.write_bytes(b"\xef\xbb\xbf" + name.read_bytes())
    for fmt in ("auto", "word2vec", "glove"):
      message = refusal(lambda: pretrained.load_vectors(name, fmt))
      assert "opens with a UTF-8 byte-order mark (bytes EF BB BF)" in message, (name, fmt, message)
  binary, _ = shipped(tmp_path, binary=True)
  (tmp_path / "v.bin.xz").write_bytes(lzma.compress(binary.read_bytes()))
  kv, fmt = pretrained.load_vectors(tmp_path / "v.bin.xz")
  assert fmt == "word2vec-binary" and kv.index_to_key == source.index_to_key
  (tmp_path / "ft.bin.xz").write_bytes(lzma.compress(Path(datapath("lee_fasttext.bin")).read_bytes()))
  assert "a compressed fastText .bin is not read" in refusal(lambda: pretrained.load_vectors(tmp_path / "ft.bin.xz"))
  (tmp_path / "v.txt.zst").write_bytes(b"not read")
  assert ".zst compression is not read" in refusal(lambda: pretrained.load_vectors(tmp_path / "v.txt.zst"))


@pytest.mark.parametrize("binary", [False, True])
def test_words_that_are_not_utf8_are_refused_by_default_and_read_with_unicode_errors(binary, tmp_path):
  kv = KeyedVectors(4)
  kv.add_vectors(["the", "café", "cat"], np.arange(12, dtype=np.float32).reshape(3, 4) + 0.5)
  path = tmp_path / ("v.bin" if binary else "v.txt")
  kv.save_word2vec_format(str(path), binary=binary)
  # Latin-1 text (é as one byte); a binary whose word was cut inside é, as word2vec.c cuts long words.
  path.write_bytes(path.read_bytes().replace("café".encode(), b"caf\xc3" if binary else b"caf\xe9"))
  message = refusal(lambda: pretrained.load_vectors(path))
  assert "not UTF-8" in message and "unicode_errors" in message
  assert ("vector 2" if binary else "line 3") in message
  names = {"unicode_errors": "model.pretrained.unicode_errors"}
  assert "set model.pretrained.unicode_errors=replace" in refusal(lambda: pretrained.load_vectors(path, names=names))
  read, _ = pretrained.load_vectors(path, unicode_errors="replace")
  assert len(read.index_to_key) == 3 and "\ufffd" in read.index_to_key[1]
  np.testing.assert_array_equal(read.vectors, kv.vectors)


def test_a_fasttext_bin_whose_words_are_not_utf8_follows_unicode_errors_too():
  """gensim ships a fastText .bin trained on cp852 text (69 of its 171 words are not UTF-8). gensim's .bin reader
  never refuses: it logs an error per word and keeps it with backslash escapes. strict (the default) refuses it in one
  line, as for text formats; replace and ignore decode those words as gensim's text readers do."""
  import logging
  from gensim.models.fasttext import load_facebook_vectors
  path = datapath("cp852_fasttext.bin")
  logged = []
  handler = logging.Handler(logging.ERROR)
  handler.emit = logged.append
  logging.getLogger("gensim").addHandler(handler)
  try:
    message = refusal(lambda: pretrained.load_vectors(path))
  finally:
    logging.getLogger("gensim").removeHandler(handler)
  assert "69 of its words are not UTF-8 (the first: b'kter\\xec')" in message and "unicode_errors" in message
  assert not logged  # no error line per word on the console
  reference = load_facebook_vectors(path)
  for errors in ("replace", "ignore"):
    kv, resolved = pretrained.load_vectors(path, unicode_errors=errors)
    assert resolved == "fasttext-bin" and len(kv.index_to_key) == len(reference.index_to_key) == 171
    np.testing.assert_array_equal(kv.vectors, reference.vectors)  # same rows, in the same order
    renamed = [(old, new) for old, new in zip(reference.index_to_key, kv.index_to_key) if old != new]
    assert len(renamed) > 40 and all("\\x" in old and "\\x" not in new for old, new in renamed)
    assert all(("\ufffd" in new) == (errors == "replace") for _, new in renamed)
    assert kv.key_to_index == {word: i for i, word in enumerate(kv.index_to_key)}
  assert "jen" in kv.key_to_index and "kter" in kv.key_to_index  # ignore: 'kter\xec' loses its byte


@pytest.mark.parametrize("name", ["word2vec_old", "ft_kv_3.6.0.model.gz", "model-from-gensim-3.8.0.w2v"])
@pytest.mark.parametrize("fmt", ["auto", "word2vec", "glove"])
def test_a_pickled_gensim_model_is_named_as_such_and_not_unpickled(name, fmt):
  """gensim's test data holds models written by .save() (pickles, one gzipped): refused in one line that says what
  the file is and how to write its vectors, whatever format is asked for (they used to be parsed as GloVe and
  refused as 'not UTF-8', with advice that could not help)."""
  message = refusal(lambda: pretrained.load_vectors(datapath(name), fmt))
  assert "is a pickled gensim model (written by .save()), not a vector file" in message
  assert "save_word2vec_format" in message and "UTF-8" not in message


def test_the_config_checks_the_options_before_anything_loads():
  with pytest.raises(configuration.ConfigError, match="model.embed_init='pretrained' needs model.pretrained.path"):
    configuration.validate(tiny_config(**{"model.embed_init": "pretrained"}))
  with pytest.raises(configuration.ConfigError, match="model.pretrained.oov='zero' is not one of random, mean"):
    configuration.validate(tiny_config(**{"model.pretrained.oov": "zero"}))
  with pytest.raises(configuration.ConfigError, match="freeze_steps=-1"):
    configuration.validate(tiny_config(**{"train.embedding.freeze_steps": -1}))
  model_cfg = configuration.validate(tiny_config(**{"model.embed_init": "pretrained", "model.pretrained.path": "x"}))
  assert model_cfg.embed_init == "pretrained"


def test_a_missing_vector_file_fails_the_cli_in_one_line_before_any_config_is_written(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", "--config.model.embed_init=pretrained",
               f"--config.model.pretrained.path={tmp_path / 'missing.vec'}", "--config.data.tokenizer=word")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [f"error: model.pretrained.path='{tmp_path / 'missing.vec'}': "
                                                f"no such file"]
  assert not (tmp_path / "run" / "config.json").exists()


def test_the_trainer_reports_vector_problems_as_config_errors_before_writing_the_config(tmp_path):
  path = write_w2v(tmp_path / "v.txt", {"zzzq": [1.0, 2.0, 3.0, 4.0], "qqqz": [0.0, 1.0, 0.0, 1.0]})
  base = {"model.embed_init": "pretrained", "model.pretrained.path": str(path), "data.tokenizer": "word"}
  for extra, parts in (({}, ["4-dimensional", "model.d_model=64"]),
                       ({"model.pretrained.dim_mismatch": "project"}, ["covers no token of the 'word' vocabulary",
                                                                       "(e.g. '"])):
    with pytest.raises(configuration.ConfigError) as info:
      loop.train(tiny_config(**base, **extra), tmp_path / "run")
    assert all(part in str(info.value) for part in parts), str(info.value)
    assert not (tmp_path / "run" / "config.json").exists()


def test_the_trainer_reads_words_that_are_not_utf8_with_model_pretrained_unicode_errors(tmp_path):
  """Latin-1 words: refused by default, naming the field that reads them; with unicode_errors=replace the file
  loads (the run then stops at the next check, its 4-wide vectors against d_model=64, before anything compiles)."""
  path = write_w2v(tmp_path / "v.txt", {"the": [1.0, 2.0, 3.0, 4.0], "café": [0.0, 1.0, 0.0, 1.0]})
  path.write_bytes(path.read_bytes().replace("café".encode(), b"caf\xe9"))
  base = {"model.embed_init": "pretrained", "model.pretrained.path": str(path), "data.tokenizer": "word"}
  with pytest.raises(configuration.ConfigError, match=r"line 3.*set model\.pretrained\.unicode_errors=replace"):
    loop.train(tiny_config(**base), tmp_path / "run")
  with pytest.raises(configuration.ConfigError, match="4-dimensional"):
    loop.train(tiny_config(**base, **{"model.pretrained.unicode_errors": "replace"}), tmp_path / "run")
  with pytest.raises(configuration.ConfigError,
                     match="model.pretrained.unicode_errors='latin1' is not one of strict, replace, ignore"):
    configuration.validate(tiny_config(**{"model.pretrained.unicode_errors": "latin1"}))
  assert not (tmp_path / "run" / "config.json").exists()
  # research-analyze's own flag, for a file given to it (and refused with a run, which has no file).
  refused = cli("experiments.analyze", f"--vectors={path}")
  assert refused.returncode == 2 and "set --unicode_errors=replace" in refused.stderr, refused.stderr
  read = cli("experiments.analyze", f"--vectors={path}", "--unicode_errors=replace")
  assert read.returncode == 0, read.stderr[-2000:]
  other = cli("experiments.analyze", f"--workdir={tmp_path}", "--unicode_errors=replace")
  assert other.stderr.strip() == "error: --unicode_errors is for --vectors (a run's table needs none)"


def test_a_rerun_naming_the_same_vector_file_by_another_path_resumes_and_another_file_is_refused(tmp_path,
                                                                                                 monkeypatch):
  """A resumed run never reads the vector file, but a rerun that gave it by a relative path (or through a symlink)
  was refused as another run: "model.pretrained.path: '/abs/files/w2v.txt' (saved) != 'files/w2v.txt'". The
  paths are compared resolved, from the rerun's working directory; another file is still another run."""
  import json
  files = tmp_path / "files"
  files.mkdir()
  vectors = write_w2v(files / "w2v.txt", {"the": [0.5, 1.5], "cat": [1.0, -1.0]})
  write_w2v(files / "other.txt", {"the": [0.5, 1.5], "cat": [1.0, -1.0]})
  (tmp_path / "link.txt").symlink_to(vectors)
  run = tmp_path / "run"
  run.mkdir()
  config = lambda path: tiny_config(**{"model.embed_init": "pretrained", "model.pretrained.path": path})  # noqa
  (run / "config.json").write_text(json.dumps(config(str(vectors)).to_dict()))
  mark_finished(run)
  monkeypatch.chdir(tmp_path)
  for same in ("files/w2v.txt", "./files/../files/w2v.txt", "link.txt", str(vectors)):
    assert loop.check_workdir(config(same), run) == run
  for other in ("files/other.txt", "w2v.txt"):
    with pytest.raises(configuration.ConfigError, match=f"model.pretrained.path: '{vectors}' \\(saved\\) != "
                                                        f"'{other}' \\(current\\)"):
      loop.check_workdir(config(other), run)


def test_a_resume_compares_the_rerun_path_with_the_file_the_run_read_wherever_it_starts(tmp_path, monkeypatch):
  """A saved relative model.pretrained.path was resolved against the rerun's working directory: from another
  directory the same file named by its absolute path was refused ("'v/w2v.txt' (saved) != '/.../a/v/w2v.txt'
  (current)"), and another file of the same relative name accepted. RUN/embedding_init.json records the file the
  run read; the rerun's value, resolved from where it runs, is compared with that (the same string is accepted
  without a look at the disk)."""
  import json
  words = {w: [float(i), 1.0, -1.0, 0.5] for i, w in enumerate("the cat sat on mat of in and to a".split())}
  for where in ("a", "b"):
    (tmp_path / where / "v").mkdir(parents=True)
    write_w2v(tmp_path / where / "v" / "w2v.txt", words)  # the same bytes, two files
  overrides = {"model.embed_init": "pretrained", "data.tokenizer": "word", "model.pretrained.dim_mismatch": "project",
               "train.eval_batches": 1, "train.async_checkpoints": False}
  config = lambda path, steps=1: tiny_config(**{**overrides, "model.pretrained.path": path,  # noqa: E731
                                                "train.steps": steps})
  run, read = tmp_path / "run", str(tmp_path / "a" / "v" / "w2v.txt")
  monkeypatch.chdir(tmp_path / "a")
  loop.train(config("v/w2v.txt"), run)
  assert json.loads((run / "embedding_init.json").read_text())["resolved_path"] == os.path.realpath(read)
  monkeypatch.chdir(tmp_path / "b")
  for same in (read, "../a/v/w2v.txt", "v/w2v.txt"):  # the last: the saved string itself
    assert loop.check_workdir(config(same), run) == run
  for other in (str(tmp_path / "b" / "v" / "w2v.txt"), "./v/w2v.txt"):
    with pytest.raises(configuration.ConfigError, match=f"model.pretrained.path: 'v/w2v.txt' \\(saved\\) != "
                                                        f"'{re.escape(other)}' \\(current\\)"):
      loop.check_workdir(config(other), run)
  monkeypatch.chdir(tmp_path / "a")  # and from the run's own directory, another file is another run
  with pytest.raises(configuration.ConfigError, match="model.pretrained.path: 'v/w2v.txt' \\(saved\\)"):
    loop.check_workdir(config(str(tmp_path / "b" / "v" / "w2v.txt")), run)
  monkeypatch.chdir(tmp_path / "b")  # the resume itself, the file gone: config.json keeps the first spelling
  os.unlink(read)
  assert loop.train(config(read, steps=2), run)["step"] == 2
  assert json.loads((run / "config.json").read_text())["model"]["pretrained"]["path"] == "v/w2v.txt"


def test_the_trainer_refuses_broken_vector_files_before_anything_compiles(tmp_path):
  rng = np.random.default_rng(0)
  words = ["the", "of", "and", "to", "a", "in"]
  nan = write_w2v(tmp_path / "nan.txt", {w: list(rng.normal(size=64)) for w in words})
  edit_line(nan, 4, lambda line: line.split(" ", 2)[0] + " nan " + line.split(" ", 2)[2])
  zero = write_w2v(tmp_path / "zero.txt", {**{w: [0.0] * 64 for w in words}, "zzzq": list(rng.normal(size=64))})
  short = write_w2v(tmp_path / "short.txt", {w: list(rng.normal(size=64)) for w in words})
  short.write_text(short.read_text().replace("6 64\n", "4 64\n", 1))
  for path, parts in ((nan, ["nan.txt", "'and' (vector 3) holds NaN", "must be finite float32"]),
                      (zero, ["zero.txt", "every vector covering the 'word' vocabulary", "no information"]),
                      (short, ["short.txt", "header announces 4 vectors but the file holds 6"])):
    config = tiny_config(**{"model.embed_init": "pretrained", "model.pretrained.path": str(path),
                            "data.tokenizer": "word"})
    with pytest.raises(configuration.ConfigError) as info:
      loop.train(config, tmp_path / "run")
    assert all(part in str(info.value) for part in parts), str(info.value)
    assert not (tmp_path / "run" / "config.json").exists()
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'cli'}", "--config.model.embed_init=pretrained",
               f"--config.model.pretrained.path={nan}", "--config.data.tokenizer=word", "--config.train.steps=3")
  errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]  # after data notes
  assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert errors[0].startswith("error: model.pretrained.path=") and "finite float32" in errors[0]
  assert not (tmp_path / "cli" / "config.json").exists() and not (tmp_path / "cli" / "embedding_init.json").exists()


def test_a_factorized_runs_width_mismatch_names_model_table_dim(tmp_path):
  path = write_w2v(tmp_path / "v.txt", {"the": list(np.ones(64)), "of": list(np.arange(64.0))})
  config = tiny_config(**{"model.embed_init": "pretrained", "model.pretrained.path": str(path),
                          "data.tokenizer": "word", "model.table_dim": 32})
  with pytest.raises(configuration.ConfigError) as info:
    loop.train(config, tmp_path / "run")
  assert "model.table_dim=32; set model.table_dim=64 or model.pretrained.dim_mismatch=project" in str(info.value)


# ---------------------------------------------------------------------------------------------- freeze_steps


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "lion", "adafactor"])
def test_freeze_steps_gives_the_table_exact_zero_updates_then_trains(name):
  k = 3
  cfg = ml_collections.ConfigDict(dict(
      optimizer=name, learning_rate=0.1, schedule="constant", warmup_steps=0, steps=10, momentum=0.9,
      weight_decay=0.1, grad_clip=1.0, b1=0.9, b2=0.99,  # decay on: every optimizer's is scaled by the rate
      embedding=dict(weight_decay=True, lr_multiplier=1.0, freeze=False, lazy=False, freeze_steps=k)))
  tx = optim.make_optimizer(cfg)
  rng = np.random.default_rng(0)
  params = {"token_embed": {"embedding": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)},
            "dense": {"kernel": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)}}
  loss = lambda p: jnp.sum(jnp.tanh(p["token_embed"]["embedding"] @ p["dense"]["kernel"]) ** 2)  # noqa: E731
  state = tx.init(params)
  table0, kernel0 = np.asarray(params["token_embed"]["embedding"]), np.asarray(params["dense"]["kernel"])
  for step in range(k + 1):
    updates, state = tx.update(jax.grad(loss)(params), state, params, row_mask=jnp.ones(6, bool))
    params = optax.apply_updates(params, updates)
    table = np.asarray(params["token_embed"]["embedding"])
    if step < k:
      np.testing.assert_array_equal(table, table0)
      assert not np.array_equal(np.asarray(params["dense"]["kernel"]), kernel0)
  assert not np.array_equal(table, table0)


def _tables(workdir):
  with checkpoint_lib.Checkpointer(Path(workdir) / "checkpoints", keep=10) as ckpt:
    return {step: np.asarray(ckpt.restore(step)[0]["params"]["token_embed"]["embedding"])
            for step in ckpt.all_steps()}


def test_a_pretrained_run_starts_from_the_vectors_freezes_them_for_k_steps_and_resumes_identically(tmp_path):
  vectors = tmp_path / "vectors.txt"
  texts = ["the cat sat on the mat", "of in and to a"]
  rng = np.random.default_rng(0)
  write_w2v(vectors, {w: list(rng.normal(size=64)) for t in texts for w in t.split()})
  overrides = {"model.embed_init": "pretrained", "model.pretrained.path": str(vectors), "data.tokenizer": "word",
               "train.embedding.freeze_steps": 2, "train.steps": 3, "train.warmup_steps": 0,
               "train.schedule": "constant", "train.checkpoint_every": 1, "train.keep_checkpoints": 5,
               "train.eval_batches": 1, "train.async_checkpoints": False}
  loop.train(tiny_config(**overrides), tmp_path / "a")
  import json
  report = json.loads((tmp_path / "a" / "embedding_init.json").read_text())
  assert report["rows_covered"] > 3 and report["format"] == "word2vec"
  # What the file held: its bytes' sha256 and size, and the file its path named (research-sweep, research-report and
  # the resume check compare them).
  import hashlib
  assert report["sha256"] == hashlib.sha256(vectors.read_bytes()).hexdigest()
  assert report["bytes"] == vectors.stat().st_size and report["resolved_path"] == os.path.realpath(vectors)
  data = loop.prepare_data(tiny_config(**overrides), tmp_path / "a")
  initial, _ = loop.pretrained_table(tiny_config(**overrides), data, tmp_path / "a")
  tables = _tables(tmp_path / "a")
  np.testing.assert_array_equal(tables[1], initial)
  np.testing.assert_array_equal(tables[2], initial)
  assert not np.array_equal(tables[3], initial)
  # Resumed after step 2 (with the vector file gone: a resume never reads it), the table moves at step 3 exactly
  # as in the uninterrupted run.
  loop.train(tiny_config(**{**overrides, "train.steps": 2}), tmp_path / "b")
  vectors.unlink()
  loop.train(tiny_config(**overrides), tmp_path / "b")
  np.testing.assert_array_equal(_tables(tmp_path / "b")[3], tables[3])


# ------------------------------------------------------------------------------------------ research-vectors


@pytest.fixture(scope="module")
def lee_sentences():
  from research.data import corpora
  from research.embeddings import train_vectors
  return train_vectors.sentences_of(corpora.load_corpus("lee").train[:80], tokenizers.split_words)


@pytest.mark.parametrize("method, suffix", [("word2vec", ".txt"), ("fasttext", ".bin")])
def test_trained_vectors_are_deterministic_and_read_back_by_the_loader(method, suffix, lee_sentences, tmp_path):
  from research.embeddings import train_vectors
  train = lambda: train_vectors.train_vectors(lee_sentences, method, 8, epochs=1, seed=3)  # noqa: E731
  model, again = train(), train()
  np.testing.assert_array_equal(model.wv.vectors, again.wv.vectors)
  fmt = train_vectors.save_vectors(model, tmp_path / f"v{suffix}", method)
  kv, detected = pretrained.load_vectors(tmp_path / f"v{suffix}")
  assert detected == fmt == ("word2vec" if method == "word2vec" else "fasttext-bin")
  assert kv.index_to_key == model.wv.index_to_key
  np.testing.assert_allclose(kv.vectors, model.wv.vectors, rtol=1e-6, atol=1e-7)
  if method == "fasttext":  # the subword model survives: an unseen word gets the same n-gram vector
    np.testing.assert_allclose(kv.get_vector("unseenword"), model.wv.get_vector("unseenword"), rtol=1e-5, atol=1e-7)
  assert all(" " not in w for w in kv.index_to_key)


@pytest.mark.parametrize("name", ["v.txt.gz", "v.txt.bz2", "v.txt.xz", "V.TXT.GZ", "v.bin", "v.bin.gz"])
def test_a_compressed_or_bin_name_is_written_as_gensim_reads_that_name(name, lee_sentences, tmp_path):
  """gensim compresses by the name it writes to; the file used to be written under a temporary name without the
  ending, so a .gz / .bz2 name got plain text that neither gensim nor the loader could read back. A .bin name gets a
  word2vec binary (it used to get text, which the loader then auto-detected as binary and refused)."""
  from research.embeddings import train_vectors
  model = train_vectors.train_vectors(lee_sentences, "word2vec", 8, epochs=1, seed=3)
  fmt = train_vectors.save_vectors(model, tmp_path / name, "word2vec")
  binary = ".bin" in name
  assert fmt == ("word2vec-binary" if binary else "word2vec")
  kv = KeyedVectors.load_word2vec_format(str(tmp_path / name), binary=binary)  # gensim's own loader, by the name
  assert kv.index_to_key == model.wv.index_to_key
  np.testing.assert_allclose(kv.vectors, model.wv.vectors, rtol=1e-6, atol=1e-7)
  read, detected = pretrained.load_vectors(tmp_path / name)
  assert detected == fmt and read.index_to_key == model.wv.index_to_key
  magic = {".gz": b"\x1f\x8b", ".bz2": b"BZh", ".xz": b"\xfd7zXZ"}.get(Path(name.lower()).suffix, b"")
  assert (tmp_path / name).read_bytes().startswith(magic or (b"%d 8\n" % len(kv.index_to_key)))
  assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_temporaries_of_a_killed_writer_are_removed_in_either_form_and_a_live_ones_kept(lee_sentences, tmp_path):
  """A research-vectors killed while writing leaves `.NAME.tmp<pid>[.gz]`; the next save removes it once that pid is
  gone, in the form written before the compression ending was kept too, and never another file or a live writer's."""
  from research.embeddings import train_vectors
  dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # a pid no process can have
  left = [f".v.txt.gz.tmp{dead}.gz", f".v.txt.gz.tmp{dead}"]
  kept = [f".v.txt.gz.tmp{os.getppid()}.gz", f".v.txt.gz.tmp{dead}.bak", f".v.txt.gz.tmp{dead}x", "v.txt"]
  for name in left + kept:
    (tmp_path / name).write_text("half")
  model = train_vectors.train_vectors(lee_sentences, "word2vec", 8, epochs=1, seed=3)
  train_vectors.save_vectors(model, tmp_path / "v.txt.gz", "word2vec")
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["v.txt.gz"])


def test_the_vectors_cli_turns_running_out_of_memory_into_one_line(tmp_path):
  """fastText allocates its 2 000 000 n-gram buckets × dim float32s after the corpus was read: 30.5 GiB at the
  largest --dim. Under an address-space limit numpy cannot allocate them; that was a traceback."""
  import resource
  limit = 8 << 30

  def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

  (tmp_path / "c.txt").write_text("\n".join(f"alpha beta gamma {i % 3}" for i in range(30)) + "\n")
  result = cli("experiments.vectors", f"--corpus=text:{tmp_path / 'c.txt'}", "--method=fasttext", "--dim=4096",
               "--min_count=1", "--epochs=1", f"--out={tmp_path / 'f.bin'}", f"--cache_dir={tmp_path / 'cache'}",
               preexec_fn=limit_memory)
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
  assert result.stderr.strip() == ("error: --dim=4096: not enough memory to train fasttext vectors (6 words × 4096 "
                                   "and 2000000 n-gram buckets × 4096 float32s; numpy could not allocate 30.5 GiB "
                                   "for (2000000, 4096)); use a smaller --dim")
  assert not (tmp_path / "f.bin").exists()


def test_the_vectors_cli_trains_on_train_text_only_and_is_reproducible_across_processes(tmp_path):
  lines = [f"alpha beta gamma {i % 3}" for i in range(36)] + ["validonly word", "validonly other",
                                                               "testonly word", "testonly other"]
  (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
  outputs = []
  for seed in ("1", "2"):
    out = tmp_path / f"v{seed}.txt"
    result = cli("experiments.vectors", f"--corpus=text:{tmp_path / 'c.txt'}", "--method=word2vec", "--dim=4",
                 "--min_count=1", "--epochs=1", f"--out={out}", f"--cache_dir={tmp_path / 'cache'}",
                 env={"PYTHONHASHSEED": seed})
    assert result.returncode == 0, result.stderr[-2000:]
    outputs.append(out.read_bytes())
  assert outputs[0] == outputs[1]
  words = set(gensim_vectors(tmp_path / "v1.txt").index_to_key)
  assert {"alpha", "beta", "gamma", "0"} <= words
  assert not words & {"validonly", "testonly", "word", "other"}
  bad = cli("experiments.vectors", "--corpus=lee", "--dim=0", f"--out={tmp_path / 'x.txt'}")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: --dim=0 must be an integer >= 1"]


@pytest.mark.parametrize("out,message,extra", [
    ("", "--out is empty: give the vector file to write", []),
    ("{tmp}", "--out='{tmp}' is a directory; give a file path", []),
    ("{tmp}/afile/v.txt", "--out='{tmp}/afile/v.txt': '{tmp}/afile' is a file, so the directory '{tmp}/afile' "
                          "cannot be made", []),
    ("{tmp}/v.txt", "--seed=-1 must be an integer in 0 ... 4294967295", ["--seed=-1"]),  # gensim: a traceback
    ("{tmp}/v.txt", "--seed=4294967296 must be an integer in 0 ... 4294967295", ["--seed=4294967296"]),
    ("{tmp}/v.txt", "--window=0 must be an integer >= 1", ["--window=0"]),
    ("{tmp}/v.txt", "--dim=1000000000 must be at most 4096 (published word vectors have 300 dimensions; research-train "
                    "projects them to a wider table with model.pretrained.dim_mismatch=project)", ["--dim=1000000000"]),
    ("{tmp}/f.bin.gz", "--out='{tmp}/f.bin.gz': a fastText .bin cannot be compressed (gensim writes and reads fastText "
                       "models uncompressed only); drop the .gz", ["--method=fasttext"]),
    ("{tmp}/v.txt.zst", "--out='{tmp}/v.txt.zst': .zst compression is not written (its package is not a dependency); "
                        "use .gz, .bz2, .xz or no compression", []),
])
def test_the_vectors_cli_checks_out_before_reading_the_corpus(out, message, extra, tmp_path):
  # A corpus that does not exist: had the corpus been read first, its error would be the one printed.
  (tmp_path / "afile").write_text("a file where --out wants a directory")
  result = cli("experiments.vectors", "--corpus=text:/nonexistent/corpus.txt", f"--out={out.format(tmp=tmp_path)}",
               *extra)
  assert result.returncode == 2 and result.stderr.strip() == "error: " + message.format(tmp=tmp_path)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind



def test_the_vectors_cli_makes_the_directories_of_out_as_research_train_makes_its_workdir(tmp_path):
  """docs/walkthrough.md's first command writes runs/walk/w2v-64.txt in a fresh checkout, which has no runs/. Here
  fastText to a .vec name: text, whose printed line says that the subword n-grams are not in it."""
  (tmp_path / "c.txt").write_text("\n".join(f"alpha beta gamma {i % 3}" for i in range(30)) + "\n")
  out = tmp_path / "runs" / "walk" / "v.vec"
  result = cli("experiments.vectors", f"--corpus=text:{tmp_path / 'c.txt'}", "--method=fasttext", "--dim=4",
               "--min_count=1", "--epochs=1", f"--out={out}", f"--cache_dir={tmp_path / 'cache'}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert {"alpha", "beta"} <= set(gensim_vectors(out).index_to_key)
  assert "(fasttext; word vectors only: fastText's subword n-grams are not in that format" in result.stdout


@pytest.mark.parametrize("name, fmt", [("f.vec", "fasttext"), ("f.txt", "word2vec"), ("f.bin", "fasttext-bin"),
                                       ("f.vec.gz", "fasttext")])
def test_a_fasttext_models_file_format_follows_its_name(name, fmt, lee_sentences, tmp_path):
  """research-vectors --method=fasttext --out=f.vec wrote a Facebook .bin under a .vec name (and for .txt too); the
  extension decides, as the loader detects: text of the word vectors for .vec / .txt (compressed by name), else
  the Facebook .bin. Each reads back with gensim's reader of that format and with format=auto."""
  from gensim.models.fasttext import load_facebook_vectors
  from research.embeddings import train_vectors
  model = train_vectors.train_vectors(lee_sentences, "fasttext", 8, epochs=1, seed=3)
  path = tmp_path / name
  assert train_vectors.save_vectors(model, path, "fasttext") == fmt
  gensim = load_facebook_vectors(str(path)) if fmt == "fasttext-bin" else gensim_vectors(path)
  assert gensim.index_to_key == model.wv.index_to_key
  np.testing.assert_allclose(gensim.vectors, model.wv.vectors, rtol=1e-6, atol=1e-7)
  table, report = pretrained.pretrained_table(path, SPECIALS + ["the", "unseenword"], "word", d_model=8, std=0.1,
                                              scale="keep")
  assert report["format"] == fmt and report["rules"]["subword"] == (fmt == "fasttext-bin")
  np.testing.assert_allclose(table[5], model.wv["the"], rtol=1e-6, atol=1e-7)


def test_the_vectors_cli_refuses_undecodable_text_in_one_line_and_loads_it_with_errors_replace(tmp_path):
  lines = [f"alpha beta gamma {i % 3}" for i in range(30)]
  (tmp_path / "c.txt").write_bytes(("\n".join(lines) + "\n").encode() + b"caf\xe9 alpha beta\n")
  args = (f"--corpus=text:{tmp_path / 'c.txt'}", "--method=word2vec", "--dim=4", "--min_count=1", "--epochs=1",
          f"--out={tmp_path / 'v.txt'}", f"--cache_dir={tmp_path / 'cache'}")
  bad = cli("experiments.vectors", *args)
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr[-2000:]
  assert "invalid UTF-8" in bad.stderr and "data.errors=replace" in bad.stderr and "--errors" in bad.stderr
  assert not (tmp_path / "v.txt").exists()
  good = cli("experiments.vectors", *args, "--errors=replace")
  assert good.returncode == 0, good.stderr[-2000:]
  assert {"alpha", "beta"} <= set(gensim_vectors(tmp_path / "v.txt").index_to_key)


# ------------------------------------------------------------------------------------ the pretrained sweep


def test_a_train_fraction_is_a_prefix_cut_at_a_document_boundary(tmp_path):
  from research.data import batches
  sep = tokenizers.SEP_ID
  stream = np.array([sep, 7, 8, 9, sep, 10, 11, sep, 12, 13, 14, 15, sep], np.uint16)
  assert batches.stream_prefix(stream, 1.0) is stream
  np.testing.assert_array_equal(batches.stream_prefix(stream, 0.01), stream[:5])  # at least one whole document
  np.testing.assert_array_equal(batches.stream_prefix(stream, 0.4), stream[:8])  # 5.2 tokens → the next boundary
  np.testing.assert_array_equal(batches.stream_prefix(stream, 0.99), stream)
  (tmp_path / "full").mkdir()
  (tmp_path / "tenth").mkdir()
  full = loop.prepare_data(tiny_config(), tmp_path / "full").splits["train"]
  tenth = loop.prepare_data(tiny_config(**{"data.train_fraction": 0.1}), tmp_path / "tenth").splits["train"]
  assert 0.1 * len(full) <= len(tenth) < 0.15 * len(full) and tenth[-1] == sep
  np.testing.assert_array_equal(tenth, full[:len(tenth)])
  with pytest.raises(configuration.ConfigError, match=r"data.train_fraction=0.0 must be in \(0, 1\]"):
    configuration.validate(tiny_config(**{"data.train_fraction": 0.0}))


@pytest.mark.slow
def test_a_run_on_a_train_fraction_is_evaluated_and_analyzed_on_the_streams_it_trained_on(tmp_path):
  """research-evaluate and research-analyze load the train split cut as the trainer cut it, so RUN/data.json's record
  matches (they refused every such run: 'trained on other data'); --split=train scores the prefix it trained on."""
  from research.analysis import quality
  from research.evaluate import extrapolation
  config = tiny_config(**{"data.train_fraction": 0.3, "train.steps": 2, "train.eval_every": 2,
                          "train.checkpoint_every": 2, "train.async_checkpoints": False})
  loop.train(config, tmp_path / "run")
  trained = loop.prepare_data(config, tmp_path / "run").splits
  loaded = extrapolation.load_run(tmp_path / "run")
  for name in trained:
    np.testing.assert_array_equal(loaded.splits[name], trained[name])
  report = extrapolation.evaluate_run(tmp_path / "run", (1,), split="train")
  assert report["results"][0]["tokens"] == len(trained["train"]) - 1
  assert quality.analyze_run(tmp_path / "run")["checkpoint_step"] == 2


def test_the_pretrained_sweep_expands_and_validates():
  from research import sweeps
  sweep = sweeps.load_sweep(Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "pretrained.py")
  # word: 3 initial tables x 3 fractions x 3 seeds; BPE: normal and fastText at fraction 0.1 x 3 seeds.
  assert len({t.name for t in sweep.trials}) == len(sweep.trials) == 27 + 6
  word = [t.overrides for t in sweep.trials if t.overrides["data.tokenizer"] == "word"]
  bpe = [t.overrides for t in sweep.trials if t.overrides["data.tokenizer"] == "bpe"]
  assert len(word) == 27 and len(bpe) == 6
  assert {t["data.train_fraction"] for t in word} == {0.1, 0.3, 1.0} and {t["data.train_fraction"] for t in bpe} == {0.1}
  assert {t.overrides["seed"] for t in sweep.trials} == {0, 1, 2}
  paths = {t.get("model.pretrained.path") for t in word}
  assert len(paths) == 3 and None in paths  # normal (no path), word2vec, fastText
  assert {t.get("model.pretrained.path") for t in bpe} == {None, "runs/vectors/fasttext-128.bin"}
  # Every arm has the same budget; only the swept fields differ.
  shared = ("data.seq_len", "train.steps", "train.eval_every", "train.checkpoint_every", "model.position")
  assert len({tuple(t.overrides[f] for f in shared) for t in sweep.trials}) == 1
