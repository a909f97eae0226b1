"""research-analyze: word-vector benchmarks through gensim, a run's table as word vectors, the exports."""

import dataclasses
import json

import numpy as np
import pytest
from gensim.models import KeyedVectors
from gensim.test.utils import datapath

from research.analysis import quality
from research.data import tokenizers
from research.embeddings import pretrained
from research.train import loop
from tests.train_utils import cli, tiny_config


@pytest.fixture(scope="module")
def word_run(tmp_path_factory):
  """A real tiny run with the word tokenizer (two steps: the table is what matters here)."""
  workdir = tmp_path_factory.mktemp("run")
  loop.train(tiny_config(**{"data.tokenizer": "word", "train.steps": 2, "train.checkpoint_every": 2,
                            "train.eval_batches": 1, "train.async_checkpoints": False}), workdir)
  return workdir


def test_the_benchmarks_are_gensims_own_numbers_with_their_coverage():
  kv = KeyedVectors.load_word2vec_format(datapath("word2vec_pre_kv_c"))
  report = quality.analyze_vectors(datapath("word2vec_pre_kv_c"))
  b = report["benchmarks"]
  score, sections = kv.evaluate_word_analogies(datapath("questions-words.txt"))
  total = sections[-1]
  assert b["analogy"]["accuracy"] == score
  assert b["analogy"]["correct"] == len(total["correct"]) and b["analogy"]["items"] == 19544
  assert b["analogy"]["coverage"] == (len(total["correct"]) + len(total["incorrect"])) / 19544
  for name, file, items in (("wordsim353", "wordsim353.tsv", 353), ("simlex999", "simlex999.txt", 999)):
    pearson, spearman, oov = kv.evaluate_word_pairs(datapath(file))
    assert b[name]["spearman"] == pytest.approx(spearman[0], abs=0, rel=0)
    assert b[name]["pearson"] == pytest.approx(pearson[0], abs=0, rel=0)
    assert b[name]["items"] == items and b[name]["coverage"] == pytest.approx(1 - oov / 100)
    assert 0 < b[name]["coverage"] < 1
  assert len(report["neighbours"]) == 10
  first = next(iter(report["neighbours"]))
  assert first == kv.index_to_key[0] and [n for n, _ in report["neighbours"][first]] == \
      [n for n, _ in kv.most_similar(first, topn=5)]


def test_coverage_counts_the_covered_pairs_even_below_the_two_a_correlation_needs():
  """SimLex-999 holds the pair (dog, cat) once: vectors of those two words cover 1 of its 999 pairs. gensim cannot
  correlate one pair (it raises), so the correlations are null, but the coverage is the true 1/999, not 0; and it
  is gensim's own count (dummy4unknown) wherever gensim can correlate."""
  rng = np.random.default_rng(0)
  one = quality.benchmarks(quality.keyed_vectors(["dog", "cat"], rng.normal(size=(2, 8))))["simlex999"]
  assert one == {"spearman": None, "pearson": None, "items": 999, "coverage": pytest.approx(1 / 999)}
  none = quality.benchmarks(quality.keyed_vectors(["qqqq", "zzzz"], rng.normal(size=(2, 8))))
  assert none["simlex999"]["coverage"] == 0.0 and none["simlex999"]["spearman"] is None
  # No analogy question scored: gensim says 0.0 (0 / 0); the accuracy is n/a, not a measured 0 %.
  assert none["analogy"] == {"accuracy": None, "correct": 0, "scored": 0, "items": 19544, "coverage": 0.0}
  assert quality.summary_lines({"benchmarks": none, "neighbours": {}})[0].startswith("analogy accuracy n/a (0 questions")
  kv = KeyedVectors.load_word2vec_format(datapath("word2vec_pre_kv_c"))
  for file in ("wordsim353.tsv", "simlex999.txt"):
    assert quality._pair_coverage(kv, file) == pytest.approx(1 - kv.evaluate_word_pairs(datapath(file))[2] / 100)


def test_a_word_runs_table_is_scored_row_by_row_and_written_to_eval(word_run):
  report = quality.analyze_run(word_run)
  assert json.loads((word_run / "eval" / "embedding_quality.json").read_text()) == json.loads(json.dumps(report))
  assert report["checkpoint_step"] == 2 and report["tokenizer"] == "word" and report["word_vectors"] == "row"
  run, table, tok, counts = quality.run_table(word_run)
  kv, _ = quality.word_vectors(table, tok, "word", quality.benchmark_words())
  the = tok.token_to_id("the")
  np.testing.assert_array_equal(kv["the"], table[the])
  # Only words of the vocabulary have vectors: the same numbers as gensim on these vectors, at a coverage below 1.
  assert set(kv.index_to_key) <= set(tok.get_vocab())
  pearson, spearman, oov = kv.evaluate_word_pairs(datapath("wordsim353.tsv"))
  assert report["benchmarks"]["wordsim353"]["spearman"] == pytest.approx(spearman[0])
  assert report["benchmarks"]["wordsim353"]["coverage"] == pytest.approx(1 - oov / 100)
  assert 0 < report["benchmarks"]["wordsim353"]["coverage"] < 1
  assert len(report["neighbours"]) == 10 and all(w.isalpha() for w in report["neighbours"])
  most_frequent = max((w for w in tok.get_vocab() if w.isalpha()), key=lambda w: counts[tok.token_to_id(w)])
  assert next(iter(report["neighbours"])) == most_frequent


def test_the_initial_table_is_scored_on_the_same_words_as_the_floor(word_run, tmp_path):
  import shutil
  report = quality.analyze_run(word_run)
  _, table, tok, _ = quality.run_table(word_run)
  init = np.load(word_run / loop.INIT_TABLE_FILE)
  assert init.shape == table.shape and not np.array_equal(init, table)
  expected = quality.benchmarks(quality.word_vectors(init, tok, "word", quality.benchmark_words())[0])
  assert report["benchmarks_init"] == expected
  lines = quality.summary_lines(report)
  assert lines[0].endswith(f"; initial table {100 * expected['analogy']['accuracy']:.1f} %)")
  assert lines[1].endswith(f"; initial table {expected['wordsim353']['spearman']:.3f})")
  # A run without its initial table (one from before the file existed, or a file of another shape): no floor.
  for damage in ("remove", "reshape"):
    copy = shutil.copytree(word_run, tmp_path / damage)
    if damage == "remove":
      (copy / loop.INIT_TABLE_FILE).unlink()
    else:
      np.save(copy / loop.INIT_TABLE_FILE, init[:, :-1])
    older = quality.analyze_run(copy)
    assert older["benchmarks_init"] is None and older["benchmarks"] == report["benchmarks"]
    assert not any("initial table" in line for line in quality.summary_lines(older))


def test_random_subword_tables_score_on_analogies_from_spelling_alone():
  """Why the floor is reported: composing words from shared pieces solves syntactic analogies (walk : walked ::
  jump : jumped) with random rows; the same words with unshared random vectors solve next to none."""
  from research.data import corpora
  tok = tokenizers.train_tokenizer("bpe", corpora.load_corpus("lee").train, 2000)
  table = np.random.default_rng(0).normal(size=(tok.get_vocab_size(), 32)).astype(np.float32)
  composed, _ = quality.word_vectors(table, tok, "bpe", quality.benchmark_words())
  unshared = quality.keyed_vectors(composed.index_to_key,
                                   np.random.default_rng(1).normal(size=composed.vectors.shape))
  spelled, independent = quality.benchmarks(composed)["analogy"], quality.benchmarks(unshared)["analogy"]
  assert spelled["coverage"] == independent["coverage"] > 0.9
  assert spelled["accuracy"] > 0.05 > 0.005 > independent["accuracy"]


def test_a_subword_word_vector_is_the_mean_of_its_pieces_rows():
  from research.data import corpora
  tok = tokenizers.train_tokenizer("bpe", corpora.load_corpus("lee").train[:100], 400)
  table = np.random.default_rng(0).normal(size=(tok.get_vocab_size(), 6)).astype(np.float32)
  kv, sizes = quality.word_vectors(table, tok, "bpe", ["unbelievably"])
  pieces = tok.encode(" unbelievably", add_special_tokens=False).ids
  assert len(pieces) > 1 and sizes["words"] == len(kv.index_to_key)
  np.testing.assert_allclose(kv["unbelievably"], table[pieces].mean(axis=0), rtol=1e-6)


def test_the_word2vec_export_round_trips_through_gensim(word_run, tmp_path):
  _, table, tok, counts = quality.run_table(word_run)
  tokens = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
  path = quality.export_word2vec(table, tokens, tmp_path / "table.txt")
  kv = KeyedVectors.load_word2vec_format(str(path))
  assert kv.index_to_key == [quality.export_key(t) for t in tokens]
  np.testing.assert_array_equal(kv.vectors, table)  # str(float32) is exact
  unit = table / np.linalg.norm(table, axis=1, keepdims=True)
  row = tok.token_to_id("the")
  cosines = unit @ unit[row]
  cosines[row] = -np.inf
  assert kv.most_similar("the", topn=1)[0][0] == tokens[int(np.argmax(cosines))]
  assert quality.export_key("a b\n") == "a<U+0020>b<U+000A>"


@pytest.mark.parametrize("name", ["table.txt.gz", "table.txt.bz2", "table.bin"])
def test_a_compressed_or_bin_export_name_is_written_as_gensim_reads_that_name(name, word_run, tmp_path):
  """gensim compresses by the name it writes to: the export used to go through a temporary name without the .gz,
  so FILE.txt.gz held plain text that gensim could not read; a .bin name gets a word2vec binary, as research-vectors
  writes it and the loader detects it."""
  _, table, tok, _ = quality.run_table(word_run)
  tokens = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
  quality.export_word2vec(table, tokens, tmp_path / name)
  kv = KeyedVectors.load_word2vec_format(str(tmp_path / name), binary=name.endswith(".bin"))
  assert kv.index_to_key == [quality.export_key(t) for t in tokens]
  np.testing.assert_array_equal(kv.vectors, table)
  assert pretrained.load_vectors(tmp_path / name)[1] == ("word2vec-binary" if name.endswith(".bin") else "word2vec")
  assert [p.name for p in tmp_path.iterdir()] == [name]


def test_the_projector_export_has_the_table_and_token_metadata(word_run, tmp_path):
  _, table, tok, counts = quality.run_table(word_run)
  tokens = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
  quality.export_projector(table, tokens, counts, tmp_path / "proj")
  config = (tmp_path / "proj" / "projector_config.pbtxt").read_text()
  assert "token_embedding" in config
  meta = next((tmp_path / "proj").rglob("metadata.tsv")).read_text().splitlines()
  tensors = next((tmp_path / "proj").rglob("tensors.tsv")).read_text().splitlines()
  assert meta[0] == "token\tcount" and len(meta) == len(tokens) + 1 == len(tensors) + 1
  assert meta[1 + tok.token_to_id("the")] == f"the\t{counts[tok.token_to_id('the')]}"
  np.testing.assert_allclose(np.array(tensors[7].split("\t"), float), table[7], rtol=1e-5)
  # Exported again into the same directory (a later checkpoint, say): one entry, the new table; an entry of another
  # projector in that directory stays.
  with open(tmp_path / "proj" / "projector_config.pbtxt", "a") as f:
    f.write('embeddings {\ntensor_name: "other:00000"\ntensor_path: "00000/other/tensors.tsv"\n}\n')
  quality.export_projector(2 * table, tokens, counts, tmp_path / "proj")
  config = (tmp_path / "proj" / "projector_config.pbtxt").read_text()
  assert config.count('tensor_name: "token_embedding:00000"') == 1 and 'tensor_name: "other:00000"' in config
  tensors = next((tmp_path / "proj").rglob("tensors.tsv")).read_text().splitlines()
  np.testing.assert_allclose(np.array(tensors[7].split("\t"), float), 2 * table[7], rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one of --workdir=RUN and --vectors=FILE"),
    (["--vectors=/nonexistent/v.txt"], "error: --vectors='/nonexistent/v.txt': no such file"),
    (["--vectors=/tmp"], "error: --vectors='/tmp' is a directory"),
    (["--vectors=x.txt", "--export_word2vec=y.txt"], "--export_word2vec analyzes or exports a run's table"),
    (["--workdir=/nonexistent/run"], "'/nonexistent/run' is not a run directory"),
    (["--workdir=/nonexistent/run", "--vectors_of=input", "--rare"], "--rare analyses the table parameter"),
    (["--vectors=x.txt", "--vectors_of=input"], "--vectors_of analyzes or exports a run's table"),
])
def test_cli_user_errors_are_one_line(args, message):
  result = cli("experiments.analyze", *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], lines


def shipped_text(tmp_path, name="v.txt"):
  """gensim's shipped word2vec vectors (1750 × 10), written by gensim as text, and its lines."""
  source = KeyedVectors.load_word2vec_format(datapath("word2vec_pre_kv_c"))
  source.save_word2vec_format(str(tmp_path / name))
  return tmp_path / name, source, (tmp_path / name).read_text().splitlines(keepends=True)


def test_the_cli_refuses_a_vector_file_with_nan_in_one_line_naming_the_option(tmp_path):
  path, source, lines = shipped_text(tmp_path)
  lines[5] = lines[5].split(" ", 2)[0] + " nan " + lines[5].split(" ", 2)[2]  # vector 5's first number
  path.write_text("".join(lines))
  result = cli("experiments.analyze", f"--vectors={path}", f"--output={tmp_path / 'q.json'}")
  assert result.returncode == 2 and result.stderr.strip().splitlines() == [
      f"error: --vectors={str(path)!r}: the vector of {source.index_to_key[4]!r} (vector 5) holds NaN; vectors must "
      f"be finite float32 (|x| <= 3.4e38)"]
  assert not (tmp_path / "q.json").exists()


def test_the_cli_scores_a_file_with_a_duplicate_word_by_its_first_vector(tmp_path):
  path, source, lines = shipped_text(tmp_path)
  lines[41] = source.index_to_key[0] + lines[41][len(source.index_to_key[40]):]  # vector 41 repeats vector 1's word
  path.write_text("".join(lines))
  result = cli("experiments.analyze", f"--vectors={path}", f"--output={tmp_path / 'q.json'}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"{path}: 1 duplicate word skipped (e.g. {source.index_to_key[0]!r}: its first vector kept)" in result.stdout
  report = json.loads((tmp_path / "q.json").read_text())
  assert report["words"] == 1749 and report["duplicate_words"] == 1
  kept = KeyedVectors(10)
  keys = [k for i, k in enumerate(source.index_to_key) if i != 40]
  kept.add_vectors(keys, source.vectors[[i for i in range(1750) if i != 40]])
  assert report["benchmarks"]["wordsim353"] == quality.benchmarks(kept)["wordsim353"]


def test_zero_vectors_are_left_out_of_the_scores_as_out_of_vocabulary(tmp_path):
  path, source, lines = shipped_text(tmp_path)
  zeroed = [0, 2, 300]  # 'the', 'of' and a rarer word: cosines with them would be 0/0
  for i in zeroed:
    lines[i + 1] = source.index_to_key[i] + " 0" * 10 + "\n"
  path.write_text("".join(lines))
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no 'invalid value encountered in divide' from gensim
    report = quality.analyze_vectors(path)
  json.dumps(report, allow_nan=False)  # no NaN anywhere
  assert report["words"] == 1750 and report["zero_vectors"] == 3
  assert not {source.index_to_key[i] for i in zeroed} & set(report["neighbours"])
  assert all(n not in {source.index_to_key[i] for i in zeroed} for near in report["neighbours"].values()
             for n, _ in near)
  keep = [i for i in range(1750) if i not in zeroed]
  rest = KeyedVectors(10)
  rest.add_vectors([source.index_to_key[i] for i in keep], source.vectors[keep])
  assert report["benchmarks"] == quality.benchmarks(rest)
  assert quality.summary_lines(report)[0] == f"{path}: 3 zero vectors left out"
  for i in range(1750):
    lines[i + 1] = source.index_to_key[i] + " 0" * 10 + "\n"
  path.write_text("".join(lines))
  with pytest.raises(pretrained.PretrainedError, match="all 1750 vectors are zero: the vectors carry no information"):
    quality.analyze_vectors(path)


def test_output_with_input_vectors_points_at_the_file_that_mode_writes():
  result = cli("experiments.analyze", "--workdir=/nonexistent/run", "--vectors_of=input", "--output=x.json")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].endswith("RUN/eval/embedding_quality_input.json")


@pytest.mark.parametrize("args,message", [
    (["--format=glove"], "--format is for --vectors (a run's table needs none)"),
    (["--export_word2vec=/nonexistent/dir/w.txt"], "--export_word2vec='/nonexistent/dir/w.txt': the directory "
                                                     "'/nonexistent/dir' does not exist"),
    (["--export_projector={file}"], "--export_projector='{file}' is a file; give a directory (it is created)"),
    # (it was refused only after the analysis had run)
    (["--export_word2vec={file}.zst"], "--export_word2vec='{file}.zst': .zst compression is not written (its "
                                       "package is not a dependency); use .gz, .bz2, .xz or no compression"),
])
def test_output_paths_and_flags_for_the_other_mode_are_refused_before_the_analysis(args, message, tmp_path):
  file = tmp_path / "a_file.txt"
  file.write_text("x")
  result = cli("experiments.analyze", "--workdir=/nonexistent/run", *[a.format(file=file) for a in args])
  assert result.returncode == 2 and result.stderr.strip() == "error: " + message.format(file=file)
  vectors = cli("experiments.analyze", f"--vectors={file}", "--checkpoint=last", f"--output={tmp_path / 'no' / 'x'}")
  assert vectors.returncode == 2 and vectors.stderr.strip() == \
      "error: --checkpoint is for --workdir (a vector file has no checkpoints)"


def test_the_cli_analyzes_a_run_and_writes_both_exports(word_run, tmp_path):
  result = cli("experiments.analyze", f"--workdir={word_run}", f"--export_word2vec={tmp_path / 'w.txt'}",
               f"--export_projector={tmp_path / 'proj'}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "analogy accuracy" in result.stdout and "wordsim353 spearman" in result.stdout
  assert (word_run / "eval" / "embedding_quality.json").exists()
  assert len(KeyedVectors.load_word2vec_format(str(tmp_path / "w.txt")).index_to_key) == 512
  assert (tmp_path / "proj" / "projector_config.pbtxt").exists()


def test_the_input_vectors_of_a_plain_table_are_its_rows_scaled(word_run):
  run, table, _, _ = quality.run_table(word_run)
  vectors = quality.input_vectors(run)
  assert vectors.shape == table.shape
  cosine = np.sum(vectors * table, 1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(table, axis=1))
  np.testing.assert_allclose(cosine, 1.0, atol=1e-5)  # the same directions: only the model's input scale
  report = quality.analyze_run(word_run, vectors_of="input")
  assert report["vectors_of"] == "input" and report["benchmarks_init"] is None
  assert json.loads((word_run / "eval" / "embedding_quality_input.json").read_text())["vectors_of"] == "input"
  table_report = quality.analyze_run(word_run)  # the table's own (not another test's file: xdist order varies)
  for name in ("wordsim353", "simlex999"):  # cosine benchmarks: equal up to float rounding of the scale
    assert report["benchmarks"][name]["spearman"] == pytest.approx(table_report["benchmarks"][name]["spearman"],
                                                                   abs=1e-3)


def test_a_char_aware_factorized_run_scores_its_combined_input_vectors(tmp_path):
  workdir = tmp_path / "run"
  loop.train(tiny_config(**{"data.tokenizer": "word", "train.steps": 2, "train.checkpoint_every": 2,
                            "train.eval_batches": 1, "train.async_checkpoints": False,
                            "model.char_embeddings": "sum", "model.table_dim": 8}), workdir)
  run, table, _, _ = quality.run_table(workdir)
  vectors = quality.input_vectors(run)
  assert table.shape[1] == 8 and vectors.shape == (table.shape[0], run.model_cfg.d_model)
  # Two rows whose table parts are equal still differ through their spellings.
  rows = run.params["token_embed"]["embedding"].at[5].set(run.params["token_embed"]["embedding"][6])
  same_table = dataclasses.replace(run, params={**run.params, "token_embed": {**run.params["token_embed"],
                                                                               "embedding": rows}})
  moved = quality.input_vectors(same_table)
  assert not np.allclose(moved[5], moved[6])
  result = cli("experiments.analyze", f"--workdir={workdir}", "--vectors_of=input")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "embedding_quality_input.json" in result.stdout
  saved = json.loads((workdir / "eval" / "embedding_quality_input.json").read_text())
  assert saved["dim"] == run.model_cfg.d_model and saved["vectors_of"] == "input"
  assert not (workdir / "eval" / "embedding_quality.json").exists()  # the table's report is another file


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
  """A real tiny word run with checkpoints at steps 2, 4 and 6 (kept: the newest two and the best)."""
  workdir = tmp_path_factory.mktemp("three_checkpoints") / "run"
  loop.train(tiny_config(**{"data.tokenizer": "word", "train.steps": 6, "train.checkpoint_every": 2,
                            "train.eval_every": 2, "train.eval_batches": 1, "train.async_checkpoints": False}),
             workdir)
  return workdir


def test_one_analyze_call_analyses_one_checkpoint_while_a_trainer_rotates_them(three_checkpoints, tmp_path,
                                                                               monkeypatch):
  """A live trainer's retention deletes the newest checkpoint (as it deletes an old one) once the quality file is
  written: every file of the call still records the step chosen at its start (each analysis resolving --checkpoint
  again recorded another step, or failed on the checkpoint gone)."""
  import shutil

  from research.analysis import workdir as analyze
  from research.train import checkpoint as checkpoint_lib
  run = tmp_path / "run"
  shutil.copytree(three_checkpoints, run, ignore=shutil.ignore_patterns("eval"))
  newest = checkpoint_lib.checkpoint_steps(run / "checkpoints")[-1]
  write_quality = quality.write_quality

  def write_then_rotate(*args, **kwargs):
    path = write_quality(*args, **kwargs)
    shutil.rmtree(run / "checkpoints" / str(newest))
    return path

  monkeypatch.setattr(quality, "write_quality", write_then_rotate)
  reports = analyze.analyze_workdir(str(run), "last", rare_tokens=True, positions_batches=1)
  assert not (run / "checkpoints" / str(newest)).exists() and checkpoint_lib.checkpoint_steps(run / "checkpoints")
  saved = {name: json.loads((run / "eval" / name).read_text())["checkpoint_step"]
           for name in ("embedding_quality.json", "rare_tokens.json", "positions.json")}
  assert saved == dict.fromkeys(saved, newest)
  assert {name: r["checkpoint_step"] for name, r in reports.items()} == dict.fromkeys(reports, newest)


@pytest.mark.parametrize("rotation", ["deleted", "deleting"])
def test_a_checkpoint_rotated_away_while_it_is_read_is_named_so_not_damaged(three_checkpoints, tmp_path,
                                                                           monkeypatch, rotation):
  """Between choosing --checkpoint=last and reading it, the trainer saves a newer step and its retention removes the
  chosen one (all of it, or part of it so far): one line saying the run is still writing checkpoints, not 'missing
  or damaged ... try --checkpoint=best'."""
  import shutil

  from research.evaluate import extrapolation
  from research.train import checkpoint as checkpoint_lib
  run = tmp_path / "run"
  shutil.copytree(three_checkpoints, run, ignore=shutil.ignore_patterns("eval"))
  ckpt_dir = run / "checkpoints"
  newest = checkpoint_lib.checkpoint_steps(ckpt_dir)[-1]
  restore_params = checkpoint_lib.Checkpointer.restore_params

  def rotate_then_restore(self, step=None, sharding=None):
    shutil.copytree(ckpt_dir / str(newest), ckpt_dir / str(newest + 2))  # the trainer's next save
    if rotation == "deleted":
      shutil.rmtree(ckpt_dir / str(step))
    else:  # a deletion in progress: the parameters' metadata is gone, the directory not yet
      shutil.rmtree(ckpt_dir / str(step) / "state")
    return restore_params(self, step, sharding)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, "restore_params", rotate_then_restore)
  with pytest.raises(extrapolation.EvaluationError) as e:
    extrapolation.load_run(run, "last")  # research-analyze's and research-evaluate's
  assert str(e.value) == (f"checkpoint step {newest} ({str(ckpt_dir / str(newest))!r}, --checkpoint=last) was "
                          f"deleted while it was being read: the run is still writing checkpoints (research-train "
                          f"keeps the newest train.keep_checkpoints and rotated this one away); rerun the command")
