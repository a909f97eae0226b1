"""Rare tokens: per-row update counts in the train state (resumable), and the rare-token analyses."""

import itertools
import math
import re

import jax
import numpy as np
import pytest

from research.train import loop, steps
from tests import test_train_steps as ts
from tests.train_utils import mark_finished, tiny_config


# ------------------------------------------------------------------------------------------------ update counts


def _direct_presence(config, workdir, num_steps):
  """Per row, the number of the run's first `num_steps` batches that hold it (inputs or targets), by numpy."""
  data = loop.prepare_data(config, workdir)
  iterator = loop.train_batches(config, data)
  present = np.zeros(data.vocab_size, np.int64)
  for _ in range(num_steps):
    batch = next(iterator)
    present[np.unique(np.concatenate([batch["inputs"], batch["targets"]], axis=1))] += 1
  return present


COUNT_RUN = {"train.steps": 6, "train.checkpoint_every": 3, "train.eval_every": 3, "train.eval_batches": 1,
             "train.async_checkpoints": False, "train.warmup_steps": 2}


@pytest.mark.slow
def test_presence_counts_equal_a_direct_count_and_survive_a_resume(tmp_path):
  whole = tmp_path / "whole"
  loop.train(tiny_config(**COUNT_RUN), whole)
  resumed = tmp_path / "resumed"
  loop.train(tiny_config(**{**COUNT_RUN, "train.steps": 3}), resumed)
  first = dict(np.load(resumed / loop.UPDATE_COUNTS_FILE))
  init_after_first = np.load(resumed / loop.INIT_TABLE_FILE)
  loop.train(tiny_config(**COUNT_RUN), resumed)  # same workdir, more steps: resumes from step 3
  a, b = dict(np.load(whole / loop.UPDATE_COUNTS_FILE)), dict(np.load(resumed / loop.UPDATE_COUNTS_FILE))
  np.testing.assert_array_equal(a["present"], _direct_presence(tiny_config(**COUNT_RUN), whole, 6))
  np.testing.assert_array_equal(first["present"], _direct_presence(tiny_config(**COUNT_RUN), whole, 3))
  for key in ("present", "nonzero"):
    assert a[key].dtype == np.int32 and a[key].shape == (512,)
    np.testing.assert_array_equal(a[key], b[key])
  assert 0 < a["present"].max() <= 6 and (a["present"] < 6).any()  # some rows are absent from some batches
  # Tied + dense AdamW: every row's update is non-zero at every step but the first, where warmup's lr is 0.
  assert (a["nonzero"] == 5).all()
  # The initial table: written at the fresh start, not rewritten by the resume; the trained table moved from it.
  init = np.load(resumed / loop.INIT_TABLE_FILE)
  np.testing.assert_array_equal(init, init_after_first)
  np.testing.assert_array_equal(init, np.load(whole / loop.INIT_TABLE_FILE))
  assert init.shape == (512, 64) and init.dtype == np.float32


@pytest.mark.parametrize("lazy", [False, True])
def test_nonzero_counts_follow_the_update_lazy_or_dense(lazy):
  """In the real step: lazy rows get a non-zero update exactly when present; dense (tied) ones at every step."""
  state, step = ts.setup(embedding_lazy=lazy, count_updates=True)
  expected = np.zeros(ts.V, np.int64)
  for i in range(3):
    b = ts.batch(i, low=5, high=20 + 5 * i)  # ids 30..40 never appear
    expected[np.unique(np.concatenate([b["inputs"], b["targets"]], axis=1))] += 1
    state, _ = step(state, b)
  present, nonzero = (np.asarray(state.counts[k]) for k in ("present", "nonzero"))
  np.testing.assert_array_equal(present, expected)
  assert expected.min() == 0 and expected.max() == 3
  if lazy:
    np.testing.assert_array_equal(nonzero, expected)
  else:
    assert (nonzero == 3).all()


@pytest.mark.parametrize("lazy_rows", ["lookups", "batch"])
def test_an_untied_lazy_table_updates_only_the_rows_its_lookups_reach(lazy_rows):
  """With an untied head the table is looked up at the inputs alone: a row that is only a target (a row's last
  target, an MLM token behind [MASK]) gets no gradient. train.embedding.lazy_rows=lookups (the default) keeps it,
  as TF's LazyAdam keeps every row outside the sparse gradient; batch (runs before the field) moved it by its stale
  momentum and decay. The counts' `present` counts the row either way (the batch held it)."""
  state, step = ts.setup(tie=False, embedding_lazy=True, count_updates=True, lazy_rows=lazy_rows)
  state, _ = step(state, ts.batch(0, low=5, high=20))  # rows 5..19 get momentum
  held = ts.batch(1, low=20, high=40)
  held["targets"][:, -1] = 7  # 7: a target of this batch, no input
  assert 7 not in held["inputs"]
  before = np.asarray(steps.table_leaf(state.params))
  state, _ = step(state, held)
  after = np.asarray(steps.table_leaf(state.params))
  assert np.array_equal(after[7], before[7]) == (lazy_rows == "lookups")
  assert not np.array_equal(after[20:40], before[20:40])  # the rows looked up move either way
  assert int(state.counts["present"][7]) == 2
  assert int(state.counts["nonzero"][7]) == (1 if lazy_rows == "lookups" else 2)


def test_counts_off_leave_no_counts_in_the_state():
  state, step = ts.setup()
  assert state.counts is None and step(state, ts.batch())[0].counts is None


# --------------------------------------------------------------------------------------------------- analyses

from research.analysis import rare  # noqa: E402


@pytest.mark.parametrize("base", [10.0, 2.0, 3.0])
def test_every_count_is_in_the_bucket_whose_reported_bounds_hold_it(base):
  """bucket_bounds(k) = [low, high) holds every count of bucket k: around every power up to 10^15 (the logarithm put
  999,999,999 in [1e9, 1e10)) and over a range of ordinary counts."""
  powers = [int(round(base ** k)) for k in range(int(15 * math.log(10) / math.log(base)) + 1)]
  counts = np.unique(np.array([c + d for c in powers for d in (-1, 0, 1) if c + d >= 0] + list(range(3000)),
                              np.int64))
  for count, k in zip(counts, rare.bucket_index(counts, base=base)):
    low, high = rare.bucket_bounds(int(k), base=base)
    assert low <= count < high, (count, k, low, high)


def test_buckets_of_a_hand_built_table():
  counts = np.array([0, 0, 1, 5, 9, 10, 99, 100, 1000])
  assert rare.bucket_index(counts).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 4]
  table = np.zeros((9, 2))
  table[:, 0] = np.arange(9)  # row norms 0..8 (row 0 is the zero vector)
  init = table.copy()
  init[:, 1] = 1.0  # every row drifted by exactly 1 in L2
  present = np.arange(9) * 2
  out = rare.buckets(table, counts, init_VxD=init, present_V=present)
  assert [b["label"] for b in out] == ["0", "[1, 10)", "[10, 100)", "[100, 1000)", "[1000, 10000)"]
  assert [b["rows"] for b in out] == [2, 3, 2, 1, 1]
  assert [b["tokens"] for b in out] == [0, 15, 109, 100, 1000]
  assert [b["mean_norm"] for b in out] == [0.5, 3.0, 5.5, 7.0, 8.0]
  assert [b["mean_present"] for b in out] == [1.0, 6.0, 11.0, 14.0, 16.0]
  assert all(b["mean_drift_l2"] == pytest.approx(1.0) for b in out)
  # cos(row, init): row i = (i, 0) against (i, 1) is i / sqrt(i² + 1); row 0 is the zero vector (cosine 0).
  cos = [i / np.hypot(i, 1) if i else 0.0 for i in range(9)]
  assert out[1]["mean_cosine_to_init"] == pytest.approx(np.mean(cos[2:5]))
  assert out[0]["mean_cosine_to_init"] == pytest.approx(np.mean(cos[:2]))


def test_knn_cosine_matches_a_brute_force_search_across_chunks():
  table = np.random.default_rng(0).normal(size=(300, 8))
  unit = table / np.linalg.norm(table, axis=1, keepdims=True)
  sims = unit @ unit.T
  np.fill_diagonal(sims, -np.inf)
  expected = np.sort(sims, axis=1)[:, -10:].mean(axis=1)
  np.testing.assert_allclose(rare.knn_cosine(table, chunk=64), expected, rtol=1e-5)


def _isotropic(v=4000, d=32, seed=0):
  return np.random.default_rng(seed).normal(scale=d ** -0.5, size=(v, d))


def _rank_one_dominated(v=4000, d=32, seed=0):
  """Every row ≈ a_i · u with a_i > 0 spread out (one common, varying direction) plus small isotropic noise."""
  rng = np.random.default_rng(seed)
  u = rng.normal(size=d)
  u /= np.linalg.norm(u)
  a = rng.uniform(4.0, 8.0, size=(v, 1))
  return a * u + rng.normal(scale=0.02, size=(v, d))


def test_geometry_of_an_isotropic_table():
  g = rare.geometry(_isotropic())
  assert abs(g["anisotropy"]) < 0.02
  assert g["variance_top1"] == pytest.approx(1 / 32, rel=0.35)  # every direction has ~1/d of the variance
  assert g["variance_top10"] == pytest.approx(10 / 32, rel=0.15)
  assert g["isotropy"] > 0.9


def test_geometry_of_a_rank_one_dominated_table():
  g = rare.geometry(_rank_one_dominated())
  assert g["anisotropy"] > 0.99
  assert g["variance_top1"] > 0.95 and g["variance_top10"] > g["variance_top1"]
  # Z(u) = Σ exp(a_i) ≈ V·E[e^a] ≈ 700·V, while Z(-u) ≈ V·E[e^-a] and Z(c ⊥ u) ≈ V.
  assert g["isotropy"] < 1e-4


def test_variance_shares_are_a_pca_of_the_column_centred_table():
  """The principal components of the rows around their mean vector: a numpy SVD of the table minus its column means
  gives the same shares, and shifting every row by one vector (a common direction) changes none of them."""
  rng = np.random.default_rng(5)
  d = 16
  scales = np.geomspace(1.0, 0.05, d)  # unequal variances along the axes, so the shares are not all ~1/d
  noise = rng.normal(size=(500, d)) * scales
  common = rng.normal(size=d)
  table = noise + 5 * common / np.linalg.norm(common)  # the mean vector is far longer than any row's spread
  singular = np.linalg.svd(table - table.mean(axis=0, keepdims=True), compute_uv=False)
  expected = {k: float(np.sum(singular[:k] ** 2) / np.sum(singular ** 2)) for k in (1, 3, 10)}
  shares = rare.variance_shares(table, top=(1, 3, 10))
  assert shares == pytest.approx(expected, rel=1e-9)
  assert rare.variance_shares(noise, top=(1, 3, 10)) == pytest.approx(expected, rel=1e-9)


def test_isotropy_is_exactly_the_partition_function_ratio():
  """Against a direct transcription of Mu & Viswanath's I(W) on a small table (no logsumexp)."""
  w = _isotropic(50, 4, seed=3) * 3
  _, c = np.linalg.eigh(w.T @ w)
  z = np.concatenate([np.exp(w @ c).sum(axis=0), np.exp(-(w @ c)).sum(axis=0)])
  assert rare.isotropy(w) == pytest.approx(z.min() / z.max(), rel=1e-12)


def test_norm_frequency_spearman_sign():
  counts = np.arange(1, 201)
  table = np.random.default_rng(0).normal(size=(200, 8))
  table /= np.linalg.norm(table, axis=1, keepdims=True)
  assert rare.norm_frequency_spearman(table * np.log(counts)[:, None], counts) == pytest.approx(1.0)
  assert rare.norm_frequency_spearman(table / counts[:, None], counts) == pytest.approx(-1.0)
  assert rare.norm_frequency_spearman(table, np.ones(200)) is None


@pytest.fixture(scope="module")
def word_run(tmp_path_factory):
  """A real tiny untied word-tokenizer run (4 steps, counts on)."""
  workdir = tmp_path_factory.mktemp("rare_run")
  loop.train(tiny_config(**{"data.tokenizer": "word", "train.steps": 4, "train.checkpoint_every": 4,
                            "train.eval_batches": 1, "train.async_checkpoints": False,
                            "model.tie_embeddings": False}), workdir)
  return workdir


@pytest.mark.slow
def test_a_runs_rare_token_report_from_its_files(word_run):
  from research.analysis import quality
  report = rare.analyze_run(word_run)
  saved = __import__("json").loads((word_run / "eval" / rare.RARE_FILE).read_text())
  assert saved == __import__("json").loads(__import__("json").dumps(report))
  for name in (rare.NORM_PLOT, rare.BUCKETS_PLOT):
    assert (word_run / "eval" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  _, table, tok, counts = quality.run_table(word_run)
  # Every row but the four markers ([PAD], [CLS], [SEP], [MASK]: no text's frequency) is in one bucket.
  markers = [tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")]
  assert report["marker_rows"] == sorted(markers) and tok.token_to_id("[UNK]") not in markers
  assert sum(b["rows"] for b in report["buckets"]) == tok.get_vocab_size() - 4 == 508
  assert sum(b["tokens"] for b in report["buckets"]) == counts.sum() - counts[markers].sum()
  assert counts[tok.token_to_id("[SEP]")] > 0  # so leaving it out changed a bucket
  assert report["update_counts_step"] == report["checkpoint_step"] == 4
  keep = np.setdiff1d(np.arange(len(counts)), markers)  # norm against frequency: the markers have none either
  assert report["geometry"]["input"]["norm_freq_spearman"] == pytest.approx(
      rare.norm_frequency_spearman(table[keep], counts[keep]))
  present = np.load(word_run / loop.UPDATE_COUNTS_FILE)["present"]
  assert report["has_init"] and report["has_update_counts"]
  frequent = report["buckets"][-1]  # the most frequent words are in every batch
  assert frequent["mean_present"] == pytest.approx(present[rare.bucket_index(counts) == frequent["bucket"]].mean())
  # Untied, no table decay: a row no batch fed to the input has zero gradient, so AdamW never moves it; the rows
  # that moved are exactly those with a non-zero update at some step.
  nonzero = np.load(word_run / loop.UPDATE_COUNTS_FILE)["nonzero"]
  drift = np.linalg.norm(table - np.load(word_run / loop.INIT_TABLE_FILE), axis=1)
  np.testing.assert_array_equal(drift > 0, nonzero > 0)
  assert (drift[present == 0] == 0).all() and (present == 0).any() and (nonzero < present).any()
  assert frequent["mean_drift_l2"] > 0 and frequent["mean_cosine_to_init"] < 1
  # Dense AdamW, untied, no table decay: the rows no batch held never moved (zero gradient, zero moments).
  absent = report["absent_rows"]
  assert absent == {"rows": int((present == 0).sum()), "rows_changed": 0, "max_abs_change": 0.0, "step": 4,
                    "note": None, **rare.updated_while_absent(present, nonzero)} and absent["rows"] > 0
  # ...but per step, dense AdamW's moments move a row in steps after the one that held it.
  assert absent["updated_while_absent"] > 0
  assert set(report["geometry"]) == {"input", "output"}  # untied: the head's columns too
  assert set(report["geometry"]["output"]) == set(rare.GEOMETRY_METRICS)
  # Word tokenizer: gensim's benchmarks on each bucket's words (coverage below the whole vocabulary's).
  whole = quality.analyze_run(word_run)["benchmarks"]["wordsim353"]["coverage"]
  scored = [b["benchmarks"]["wordsim353"]["coverage"] for b in report["buckets"] if b.get("benchmarks")]
  assert scored and all(c <= whole for c in scored)


def test_update_counts_of_another_step_than_the_analysed_one_are_named():
  report = {"geometry": {}, "buckets": [], "checkpoint_step": 660, "update_counts_step": 400,
            "absent_rows": {"note": None, "rows": 3, "rows_changed": 0, "max_abs_change": 0.0, "step": 400,
                            "updated_while_absent": 5, "updated_while_absent_steps": 9}}
  lines = rare.summary_lines(report)
  assert any("(to step 400): 5" in line for line in lines)
  assert any(line.startswith("note: the update counts are those of step 400") and "analysed step 660" in line
             for line in lines)
  assert not any(line.startswith("note:") for line in rare.summary_lines({**report, "checkpoint_step": 400}))


@pytest.mark.slow
@pytest.mark.parametrize("name, damage", [
    ("token_counts.npy", lambda b: b[:100]), (loop.UPDATE_COUNTS_FILE, lambda b: b[: len(b) // 2]),
    (loop.INIT_TABLE_FILE, lambda b: b[:-10]), (loop.UPDATE_COUNTS_FILE, lambda b: b"x" * len(b))],
    ids=["counts-truncated", "update-counts-truncated", "init-truncated", "update-counts-overwritten"])
def test_a_damaged_run_file_is_one_error_naming_it(word_run, tmp_path, name, damage):
  import shutil

  from research.analysis import quality
  run = shutil.copytree(word_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval"))
  (run / name).write_bytes(damage((run / name).read_bytes()))
  with pytest.raises(quality.AnalysisError, match=rf"^'{run / name}' is damaged \(.+\): .*(rerun|delete)"):
    rare.analyze_run(run)


def _damage_npz(path, **changes):
  with np.load(path) as npz:
    arrays = {k: npz[k] for k in npz.files}
  np.savez(path, **{**arrays, **{k: v(arrays[k]) for k, v in changes.items()}})


@pytest.mark.slow
@pytest.mark.parametrize("name, damage", [
    ("token_counts.npy", lambda path: np.save(path, np.zeros(10, np.int64))),
    ("token_counts.npy", lambda path: np.save(path, np.load(path).reshape(1, -1))),
    ("token_counts.npy", lambda path: np.save(path, np.load(path) - 10**6)),
    (loop.UPDATE_COUNTS_FILE, lambda path: _damage_npz(path, present=lambda a: a[:10])),
    (loop.UPDATE_COUNTS_FILE, lambda path: _damage_npz(path, step=lambda a: np.array([1, 2]))),
], ids=["counts-short", "counts-2d", "counts-negative", "present-short", "step-not-scalar"])
def test_a_run_file_of_the_wrong_shape_is_one_error_naming_it(word_run, tmp_path, name, damage):
  """Files that load but are not what a run writes: they would be read out of bounds, or broadcast."""
  import shutil

  from research.analysis import quality
  run = shutil.copytree(word_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval"))
  damage(run / name)
  with pytest.raises(quality.AnalysisError, match=rf"^'{run / name}' is damaged \(.+\): rerun"):
    rare.analyze_run(run)


@pytest.mark.slow
@pytest.mark.parametrize("damage", [lambda path: path.unlink(), lambda path: np.save(path, np.zeros(10, np.int64))],
                         ids=["missing", "wrong-shape"])
def test_a_resume_without_its_token_counts_counts_them_again(word_run, tmp_path, damage):
  import json
  import shutil
  run = shutil.copytree(word_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval"))
  damage(run / "token_counts.npy")  # a file of another shape would mark the wrong ids rare in valid_ppl_rare
  config = tiny_config(**{"data.tokenizer": "word", "train.steps": 5, "train.checkpoint_every": 4,
                          "train.eval_batches": 1, "train.async_checkpoints": False, "model.tie_embeddings": False})
  loop.train(config, run)  # valid_ppl_rare's rule and research-analyze --rare need the counts: the same again
  np.testing.assert_array_equal(np.load(run / "token_counts.npy"), np.load(word_run / "token_counts.npy"))
  assert json.loads((run / loop.SUMMARY_FILE).read_text())["step"] == 5


ABSENT_RUN = {"data.tokenizer": "word", "train.steps": 3, "train.checkpoint_every": 1, "train.eval_batches": 1,
              "train.async_checkpoints": False, "train.warmup_steps": 0}


@pytest.mark.slow
@pytest.mark.parametrize("overrides, moved, moved_while_absent", [
    # Zero gradient, zero momentum for a row never held; but momentum 0.9 moves a row in the steps after one that
    # held it. Plain SGD (momentum 0) moves a row only in a step that holds it.
    ({"train.optimizer": "sgd", "model.tie_embeddings": False}, False, True),
    ({"train.optimizer": "sgd", "train.momentum": 0.0, "model.tie_embeddings": False}, False, False),
    ({"train.embedding.lazy": True, "model.tie_embeddings": True}, False, False),  # masked: values, moments kept
    ({"model.tie_embeddings": True}, True, True),  # dense AdamW, tied: the head's softmax reaches every row
    ({"train.optimizer": "sgd", "model.tie_embeddings": True}, True, True),  # so does SGD's, through the tied head
], ids=["sgd-untied", "plain-sgd-untied", "lazy-adamw-tied", "dense-adamw-tied", "sgd-tied"])
def test_rows_no_batch_held_stay_unchanged_exactly_when_no_gradient_reaches_them(tmp_path, overrides, moved,
                                                                              moved_while_absent):
  """"Rows for tokens not present remain unchanged", measured on real runs at the step the counts describe (the
  last checkpoint), whatever checkpoint is analysed: exactly 0 or clearly not; and per step, from the counts (a row
  updated in more steps than batches held it)."""
  loop.train(tiny_config(**ABSENT_RUN, **overrides), tmp_path)
  init = np.load(tmp_path / loop.INIT_TABLE_FILE)
  present = np.load(tmp_path / loop.UPDATE_COUNTS_FILE)["present"]
  assert int(np.load(tmp_path / loop.UPDATE_COUNTS_FILE)["step"]) == 3
  # Analysed at step 1 (say, the best): the figures still come from step 3's checkpoint, not from this table.
  absent = rare.run_absent_rows(tmp_path, 1, np.full_like(init, np.nan), init,
                                rare.update_counts(tmp_path, init.shape[0]))
  assert absent["step"] == 3 and absent["note"] is None and absent["rows"] == (present == 0).sum() > 0
  if moved:
    assert absent["max_abs_change"] > 0 and absent["rows_changed"] == absent["rows"]
  else:
    assert absent["max_abs_change"] == 0.0 and absent["rows_changed"] == 0
  assert (absent["updated_while_absent"] > 0) is moved_while_absent, absent
  counts = np.load(tmp_path / loop.UPDATE_COUNTS_FILE)
  assert absent["updated_while_absent"] == int((counts["nonzero"] > counts["present"]).sum())
  # Without the counts' checkpoint there is no figure, and the note says why.
  elsewhere = tmp_path / "elsewhere"
  assert "no update_counts.npz" in rare.run_absent_rows(elsewhere, 1, init, init,
                                                        rare.update_counts(elsewhere, init.shape[0]))["note"]


@pytest.mark.slow
def test_a_damaged_checkpoint_of_the_counts_step_nulls_the_absent_rows_with_a_note_not_a_traceback(tmp_path):
  """The analysed checkpoint is another (the best, step 2) and the counts' one (step 3) has its files overwritten:
  the absent-row figures are null with a note naming that checkpoint; the rest of the analysis is written."""
  import json
  loop.train(tiny_config(**ABSENT_RUN, **{"train.optimizer": "sgd", "model.tie_embeddings": False}), tmp_path)
  ckpt = tmp_path / "checkpoints"
  assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())[-2:] == [2, 3]
  (ckpt / "3" / "metrics" / "metrics").write_text(json.dumps({"valid_loss": 1e9}))  # step 2 is now the best
  for path in (ckpt / "3" / "state").rglob("*"):
    if path.is_file():
      path.write_bytes(b"damaged")
  report = rare.analyze_run(tmp_path)
  assert report["checkpoint_step"] == 2 and report["update_counts_step"] == 3
  absent = json.loads((tmp_path / "eval" / rare.RARE_FILE).read_text())["absent_rows"]
  assert absent["rows"] is None and absent["max_abs_change"] is None and absent["step"] == 3
  assert absent["note"].startswith(f"the checkpoint of step 3, the step {loop.UPDATE_COUNTS_FILE} counts up to "
                                   f"({str(ckpt / '3')!r}) cannot be restored, its files are missing or damaged ("), absent
  assert absent["updated_while_absent"] is not None  # the counts' own figure needs no table
  assert report["buckets"] and report["geometry"]["input"]["anisotropy"] is not None


def test_absent_rows_on_a_hand_built_table():
  init = np.zeros((5, 2))
  table = init.copy()
  table[0] = 1.0  # present: may move
  table[3, 1] = -0.25  # absent, but moved
  assert rare.absent_rows(table, init, np.array([2, 0, 0, 0, 1])) == {"rows": 3, "rows_changed": 1,
                                                                       "max_abs_change": 0.25}
  assert rare.absent_rows(table, init, np.ones(5))["max_abs_change"] is None


def test_updated_while_absent_counts_the_rows_updated_in_more_steps_than_batches_held_them():
  present, nonzero = np.array([5, 5, 0, 2, 0]), np.array([5, 3, 0, 4, 1])
  assert rare.updated_while_absent(present, nonzero) == {"updated_while_absent": 2, "updated_while_absent_steps": 3}
  assert rare.updated_while_absent(present, np.minimum(nonzero, present))["updated_while_absent"] == 0


def test_one_blas_thread_inside_the_block_and_the_old_count_after():
  from research.analysis import blas
  libs = blas._loaded_openblas()
  before = [get() for _, get in libs]
  x = np.random.default_rng(0).normal(size=(64, 64))
  with blas.one_thread():
    assert all(get() == 1 for _, get in libs)
    inside = np.linalg.eigvalsh(x @ x.T)
  assert [get() for _, get in libs] == before
  np.testing.assert_allclose(inside, np.linalg.eigvalsh(x @ x.T), rtol=1e-10)


# ------------------------------------------------------------------------------------------------ factorized


def _init(**kw):
  import jax.numpy as jnp
  from research.model.config import ModelConfig
  from research.model.transformer import Transformer
  cfg = ModelConfig(vocab_size=41, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=8, **kw)
  model = Transformer(cfg)
  return model, model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]


@pytest.mark.parametrize("tie", [True, False])
def test_factorized_embedding_parameter_counts(tie):
  from research.model.transformer import count_embedding_params, count_params
  v, e, d = 41, 4, 16
  _, params = _init(table_dim=e, tie_embeddings=tie)
  _, plain = _init(tie_embeddings=tie)
  shapes = jax.tree.map(lambda x: x.shape, params["token_embed"])
  assert shapes["embedding"] == (v, e) and shapes["projection"]["kernel"] == (e, d)
  assert ("head_projection" in shapes) == tie
  assert count_embedding_params(params) == v * e + e * d + (d * e if tie else 0)
  assert count_embedding_params(plain) == v * d and _init(table_dim=d, tie_embeddings=tie)[1].keys() == plain.keys()
  assert count_params(plain) - count_params(params) == v * d - count_embedding_params(params)
  # The table is still the optimizer's embedding group; the projections are ordinary matrices.
  from research.train import optim
  groups = optim.param_groups(params)["token_embed"]
  assert groups["embedding"] == "embedding" and groups["projection"]["kernel"] == "other"


def test_the_factorized_tied_head_goes_back_through_the_table():
  import jax.numpy as jnp
  model, params = _init(table_dim=4)
  h = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
  logits = model.apply({"params": params}, jnp.asarray(h), method=type(model).logits)
  te = params["token_embed"]
  np.testing.assert_allclose(logits, h @ np.asarray(te["head_projection"]["kernel"]) @ np.asarray(te["embedding"]).T,
                             rtol=1e-5, atol=1e-6)
  x = model.apply({"params": params}, jnp.array([[5, 7]]), method=lambda m, ids: m.token_embed(ids))
  np.testing.assert_allclose(x[0], np.asarray(te["embedding"])[[5, 7]] * 4.0 @ np.asarray(te["projection"]["kernel"]),
                             rtol=1e-5)  # √d_model = 4


@pytest.mark.slow
def test_summary_counts_the_factorized_embedding(tmp_path):
  summary = loop.train(tiny_config(**{"train.steps": 1, "train.eval_batches": 1, "train.async_checkpoints": False,
                                      "model.table_dim": 16}), tmp_path)
  assert summary["num_embedding_params"] == 512 * 16 + 16 * 64 + 64 * 16
  assert np.load(tmp_path / loop.INIT_TABLE_FILE).shape == (512, 16)
  assert "valid_ppl_rare" in summary  # None here: every token of a 512-piece vocabulary is frequent


# ------------------------------------------------------------------------------------------- character CNN

from research.embeddings import chars  # noqa: E402


def test_spellings_as_char_ids():
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "act", "a" * 30]
  ids = chars.char_ids(tokens, "word")
  assert ids.shape == (8, chars.MAX_CHARS) and ids.dtype == np.int32
  assert ids[0, :3].tolist() == [chars.BOW, 3, chars.EOW] and ids[4, 1] == 7  # one reserved char per special
  a, c, t = (chars.FIRST_CHAR_ID + i for i in range(3))  # the alphabet a, c, t in sorted order
  assert ids[5, :6].tolist() == [chars.BOW, c, a, t, chars.EOW, chars.PAD]
  assert ids[6, :5].tolist() == [chars.BOW, a, c, t, chars.EOW]
  assert ids[7, -1] == chars.EOW and (ids[7, 1:-1] == a).all()  # cut at 20 with its end mark
  assert chars.char_ids(["Ġthe", "the"], "bpe")[0].tolist() == chars.char_ids(["the", "x"], "word")[0].tolist()


def test_a_piece_that_stands_for_no_text_never_shares_a_text_pieces_spelling_and_old_runs_keep_theirs():
  """Byte-level `é` (the lead byte 0xE9, no text) and `Ã©` (the character é) were both spelled `é`: the same char ids,
  the same CNN vector. Marked (the default), the lead byte is the mark then `é`; `raw` is what runs saved before
  model.char_spelling keep (their config.json lacks it), and a vocabulary of text pieces is the same either way."""
  from research.data import tokenizers as tokenizers_lib
  from research.model.config import ModelConfig
  from research.train import configuration
  specials = list(chars.SPECIAL_TOKENS)
  tokens = specials + ["é", "Ã©", "Ġ", "Äł", "Ġthe"]  # Äł decodes to the character Ġ; Ġ alone to a space
  marked = chars.char_ids(tokens, "bpe")
  rows = {tuple(r) for r in marked[5:]}
  assert len(rows) == 5 and marked[5].tolist()[:2] == [chars.BOW, int(marked.max())]  # the mark: the last id
  raw = chars.char_ids(tokens, "bpe", spelling_of="raw")
  assert marked[6].tolist() == raw[6].tolist() and marked[9].tolist() == raw[9].tolist()  # text pieces unchanged
  assert raw[5].tolist() == raw[6].tolist() and raw[7].tolist() == raw[8].tolist()  # the old collisions, kept
  words = specials + ["cat", "act", "a" * 30]
  assert chars.char_ids(words, "word").tolist() == chars.char_ids(words, "word", spelling_of="raw").tolist()
  with pytest.raises(ValueError, match=r"^model.char_spelling='bytes' is not one of marked, raw$"):
    ModelConfig(char_spelling="bytes")
  # The trainer, resume and evaluation build the ids with the run's field; a config saved before it means raw.
  tok = tokenizers_lib.train_tokenizer("byte", ["naïve café"], 300)
  saved = tiny_config(**{"data.tokenizer": "byte", "model.char_embeddings": "sum"}).to_dict()
  del saved["model"]["char_spelling"]
  old = configuration.with_defaults(saved)
  assert old["model"]["char_spelling"] == "raw" and ModelConfig().char_spelling == "marked"
  import ml_collections
  vocab = tokenizers_lib.vocabulary(tok)
  assert loop.char_ids(ml_collections.ConfigDict(old), tok).array.tolist() == chars.char_ids(
      vocab, "byte", spelling_of="raw").tolist()
  new = loop.char_ids(tiny_config(**{"data.tokenizer": "byte", "model.char_embeddings": "sum"}), tok).array
  assert new.tolist() == chars.char_ids(vocab, "byte").tolist() and new.shape[1] == 4  # BOW, mark, byte, EOW


@pytest.mark.parametrize("spec,width", [("2:10,2:20", 2), ("1:25,01:10", 1)])
def test_a_repeated_filter_width_is_one_line_before_anything_is_built(spec, width, tmp_path):
  """Each width is the module conv_<w>: a repeated one was flax's NameInUseError after the tokenizer was built."""
  from research.model.config import ModelConfig
  from tests.train_utils import cli
  message = f"model.char_filters={spec!r} repeats width {width}: each width once"
  with pytest.raises(ValueError, match="^" + re.escape(message)):
    chars.parse_filters(spec)
  with pytest.raises(ValueError, match=re.escape(message)):
    ModelConfig(char_embeddings="sum", char_filters=spec)
  assert chars.parse_filters("2:30,1:5") == ((2, 30), (1, 5))
  if width == 2:  # the command line too: one line, and nothing written (no tokenizer.json)
    result = cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", "--config.model.char_embeddings=sum",
                 f"--config.model.char_filters={spec}")
    assert result.returncode == 2 and result.stderr.strip() == f"error: {message} (give it the sum of the counts " \
        "instead)", result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_a_char_cnn_too_large_for_the_machine_is_refused_naming_char_filters():
  """1:3000000 makes a highway of 2·(3·10^6)² parameters: the refusal named d_model, num_layers and mlp_dim, not the
  field that caused it."""
  from research.train import configuration
  tokens = list(chars.SPECIAL_TOKENS) + [f"w{i}" for i in range(512 - len(chars.SPECIAL_TOKENS))]
  ids = chars.Constant(chars.char_ids(tokens, "word"))
  config = tiny_config(**{"model.char_embeddings": "sum", "model.char_filters": "1:3000000"})
  with pytest.raises(configuration.ConfigError) as info:
    loop.Trainer.build(config, 512, char_ids=ids).check_memory()
  message = str(info.value)
  assert message.startswith("the model does not fit: ") and "in the character CNN: model.char_filters='1:3000000', " \
      "model.char_dim=16;" in message, message
  with pytest.raises(configuration.ConfigError) as info:  # a model large for other reasons names no CNN
    loop.Trainer.build(tiny_config(**{"model.d_model": 65536, "model.mlp_dim": 262144}), 512).check_memory()
  assert "model.d_model=65536" in str(info.value) and "character CNN" not in str(info.value)


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_unseen_words_get_distinct_input_vectors_from_their_spellings(combine):
  """Two vocabulary words that never occur in training keep whatever their table rows are: give both the same row,
  and their input vectors (and tied output vectors) still differ, through the character CNN of their spellings."""
  import jax.numpy as jnp
  from research.model.config import ModelConfig
  from research.model.transformer import Transformer
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30)] + ["unseen", "unsaid"]
  ids = chars.Constant(chars.char_ids(tokens, "word"))
  cfg = ModelConfig(vocab_size=len(tokens), d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=8,
                    char_embeddings=combine, char_dim=8, char_filters="1:8,2:8,3:8")
  model = Transformer(cfg, char_ids=ids)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  # Same table row for both: any difference comes from the spelling alone.
  table = params["token_embed"]["embedding"]
  params = {**params, "token_embed": {**params["token_embed"], "embedding": table.at[36].set(table[35])}}
  x = model.apply({"params": params}, jnp.array([[35, 36]]), jnp.zeros((1, 2), jnp.int32),
                  method=lambda m, t, p: m.embed(t, p))[0]
  assert not np.allclose(x[0], x[1], atol=1e-4)
  h = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(h), method=type(model).logits))
  assert not np.allclose(logits[:, 35], logits[:, 36], atol=1e-5)
  assert "char_embed" in params and ("char_combine" in params) == (combine == "concat")


def test_the_embedding_count_is_every_module_that_makes_input_token_vectors():
  """num_embedding_params, exactly, for every combination: the table (V·e), a factorized table's e→d projection and,
  tied without chars, its d→e head_projection; the CNN (char table, convolutions, highway) with its F→d `out` for
  sum, or char_combine ((d+F)→d, which builds every token vector) for concat. Never the head's own matrices (lm_head,
  head_proj), the positions or the blocks."""
  import jax.numpy as jnp
  from research.model.config import ModelConfig
  from research.model.transformer import EMBEDDING_MODULES, Transformer, count_embedding_params
  v, d, c = 45, 16, 4
  tokens = list(chars.SPECIAL_TOKENS) + [f"w{i}" for i in range(v - len(chars.SPECIAL_TOKENS))]
  ids = chars.char_ids(tokens, "word")
  n_chars = int(ids.max()) + 1
  filters, f = ((1, 3), (2, 5)), 8
  cnn = n_chars * c + sum(w * c * k + k for w, k in filters) + 2 * (f * f + f)
  for combine, e, tie, pos in itertools.product(["none", "sum", "concat"], [d, 4], [True, False], ["add", "concat"]):
    cfg = ModelConfig(vocab_size=v, d_model=d, num_layers=1, num_heads=2, mlp_dim=32, max_len=8, table_dim=e,
                      tie_embeddings=tie, char_embeddings=combine, char_dim=c, char_filters="1:3,2:5", combine=pos,
                      pos_dim=8)
    model = Transformer(cfg, char_ids=chars.Constant(ids) if combine != "none" else None)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    expected = v * e + (e * d if e != d else 0) + (d * e if e != d and tie and combine == "none" else 0)
    expected += {"none": 0, "sum": cnn + f * d, "concat": cnn + (d + f) * d}[combine]
    assert count_embedding_params(params) == expected, (combine, e, tie, pos)
    others = set(params) - set(EMBEDDING_MODULES)
    assert others <= {"block_0", "final_norm", "position_embed", "lm_head", "head_proj"}, others
    assert ("head_proj" in params) == (tie and pos == "concat") and ("lm_head" in params) == (not tie)


@pytest.mark.parametrize("padding", ["zero", "learned"])
def test_the_padding_character_is_a_zero_vector_without_gradient_as_in_kims_code(padding):
  """model.char_padding=zero (the default; Kim et al.'s lstm-char-cnn keeps the padding vector at zero): the PAD row
  gets no gradient, and changing it changes nothing; learned (runs written before the field) is an ordinary row."""
  import jax.numpy as jnp
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "tiger", "elephant"]
  ids = jnp.asarray(chars.char_ids(tokens, "word"))
  assert (ids == chars.PAD).any()
  cnn = chars.CharCNN(num_chars=int(ids.max()) + 1, char_dim=4, filters=chars.parse_filters("1:3,2:3,4:3"),
                      out_features=6, zero_padding=padding == "zero")
  params = cnn.init(jax.random.key(0), ids)
  loss = lambda p: jnp.sum(cnn.apply(p, ids) ** 2)  # noqa: E731
  pad_grad = np.asarray(jax.grad(loss)(params)["params"]["chars"]["embedding"][chars.PAD])
  moved = jax.tree_util.tree_map(lambda x: x, params)
  moved["params"]["chars"]["embedding"] = params["params"]["chars"]["embedding"].at[chars.PAD].add(1.0)
  same = np.allclose(cnn.apply(moved, ids), cnn.apply(params, ids))
  if padding == "zero":
    assert np.all(pad_grad == 0) and same
  else:
    assert np.any(pad_grad != 0) and not same
  from research.model.config import ModelConfig
  assert ModelConfig().char_padding == "zero"
  from research import schema
  assert schema.saved_value("model.char_padding", "zero") == "learned"  # what a run saved before the field did


@pytest.mark.slow
def test_a_char_aware_run_trains_and_loads_for_evaluation(tmp_path):
  overrides = {"data.tokenizer": "word", "train.steps": 2, "train.checkpoint_every": 1, "train.eval_batches": 1,
               "train.async_checkpoints": False, "model.char_embeddings": "sum", "model.char_filters": "1:16,3:16"}
  summary = loop.train(tiny_config(**overrides), tmp_path)
  assert np.isfinite(summary["valid_loss"]) and summary["num_embedding_params"] > 512 * 64
  from research.evaluate import extrapolation
  run = extrapolation.load_run(tmp_path)  # evaluation rebuilds the char ids from the run's tokenizer
  assert run.char_ids is not None and run.char_ids.array.shape[0] == 512


def test_a_run_from_before_the_counts_resumes_without_them_under_the_default(tmp_path, capsys):
  import json
  saved = tiny_config().to_dict()
  del saved["train"]["count_updates"]  # written before train.count_updates existed: it counted nothing
  (tmp_path / "config.json").write_text(json.dumps(saved))
  mark_finished(tmp_path)
  for config in (tiny_config(), tiny_config(**{"train.count_updates": False})):  # it was refused under the default
    assert loop.check_workdir(config, tmp_path) == tmp_path
    assert loop.keep_saved_choices(config, tmp_path).train.count_updates is False
  notes = capsys.readouterr().out.splitlines()
  assert len(notes) == 1 and "train.count_updates=False" in notes[0]  # once: the second config asked for it


# ------------------------------------------------------------------------------------------------ valid_ppl_rare


@pytest.mark.parametrize("objective", ["clm", "mlm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_counts_are_what_one_epoch_of_rows_holds(objective, seed):
  """batches.stream_counts against the real batcher's rows over one epoch: MLM rows hold exactly the counted tokens
  ([CLS] stream slice [SEP]); CLM inputs hold every stream token but the last (which only a target holds)."""
  from research.data import batches
  from research.data.tokenizers import PAD_ID, SEP_ID
  rng = np.random.default_rng(seed)
  docs = [rng.integers(6, 50, rng.integers(1, 40)) for _ in range(rng.integers(3, 30))]
  ids = np.concatenate([[SEP_ID]] + [np.append(d, SEP_ID) for d in docs]).astype(np.int32)
  seq_len = int(rng.integers(4, 20))
  held = np.zeros(50, np.int64)
  for b in batches.PackedBatches(ids, seq_len, 3, objective=objective, num_epochs=1, seed=seed):
    inputs = b["inputs"][b["weights"] > 0] if objective == "clm" else b["inputs"][b["inputs"] != PAD_ID]
    held += np.bincount(inputs, minlength=50)
  if objective == "clm":
    held[ids[-1]] += 1
  counts = batches.stream_counts(ids, 50, seq_len=seq_len, objective=objective)
  np.testing.assert_array_equal(counts, held)
  assert counts[SEP_ID] >= len(docs) + 1  # the [SEP] between documents is a token the model reads and predicts


@pytest.mark.parametrize("overrides", [{}, {"data.train_fraction": 0.3}, {"objective": "mlm"}])
def test_a_run_saves_the_counts_of_the_stream_it_trains_on(tmp_path, overrides):
  """RUN/token_counts.npy (the valid_ppl_rare rule and the rare buckets) counts the training stream as packed:
  [SEP] included, and only data.train_fraction's prefix."""
  from research.data import batches
  from research.data.tokenizers import CLS_ID, SEP_ID
  config = tiny_config(**{"data.tokenizer": "word", **overrides})
  data = loop.prepare_data(config, tmp_path)
  counts = np.load(tmp_path / "token_counts.npy")
  train = data.splits["train"]
  np.testing.assert_array_equal(counts, batches.stream_counts(train, data.vocab_size, seq_len=config.data.seq_len,
                                                              objective=config.objective))
  mlm_rows = batches.num_rows(len(train), config.data.seq_len, "mlm") if config.objective == "mlm" else 0
  assert counts.sum() == len(train) + 2 * mlm_rows and counts[SEP_ID] == np.sum(train == SEP_ID) + mlm_rows > 0
  assert counts[CLS_ID] == mlm_rows
  if "data.train_fraction" in overrides:
    whole = loop.prepare_data(tiny_config(**{"data.tokenizer": "word"}), tmp_path / "whole").splits["train"]
    assert len(train) < 0.4 * len(whole) and counts.sum() == len(train)



def test_rare_target_sums_select_exactly_the_rare_targets():
  import functools

  import jax.numpy as jnp
  from research.model.config import ModelConfig
  from research.model.transformer import Transformer
  cfg = ModelConfig(vocab_size=ts.V, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, max_len=ts.L)
  model = Transformer(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, ts.L), jnp.int32))["params"]
  settings = steps.StepSettings(vocab_size=ts.V)
  b = ts.batch(0)
  rare_V = np.zeros(ts.V, bool)
  rare_V[10:20] = True

  def sums(mask):
    step = jax.jit(functools.partial(steps.eval_step, model=model, settings=settings, rare_V=jnp.asarray(mask)))
    return {k: float(v) for k, v in step(params, b, jax.random.key(0)).items()}

  every, none, some = sums(np.ones(ts.V, bool)), sums(np.zeros(ts.V, bool)), sums(rare_V)
  assert every["rare_nll_sum"] == pytest.approx(every["nll_sum"], rel=1e-6)
  assert every["rare_weight_sum"] == every["weight_sum"] and none["rare_weight_sum"] == none["rare_nll_sum"] == 0
  expected = float((rare_V[b["targets"]] * b["weights"]).sum())
  assert some["rare_weight_sum"] == expected > 0 and 0 < some["rare_nll_sum"] < every["nll_sum"]
  assert loop.rare_perplexity(none) == {"ppl_rare": None, "tokens_rare": 0.0}
  assert loop.rare_perplexity(some)["ppl_rare"] == pytest.approx(np.exp(some["rare_nll_sum"] / expected))


@pytest.mark.slow
def test_the_cli_runs_the_rare_analysis(word_run):
  from tests.train_utils import cli
  result = cli("experiments.analyze", f"--workdir={word_run}", "--rare")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "rare_tokens.json" in result.stdout and "input: anisotropy" in result.stdout
  assert "output: anisotropy" in result.stdout  # the untied head's columns
  for name in (rare.RARE_FILE, rare.NORM_PLOT, rare.BUCKETS_PLOT):
    assert (word_run / "eval" / name).exists()
  bad = cli("experiments.analyze", "--vectors=x.txt", "--rare")
  assert bad.returncode == 2 and "--rare analyzes or exports a run's table" in bad.stderr



@pytest.mark.slow
def test_rare_without_the_runs_counts_is_refused_before_anything_is_written(word_run, tmp_path):
  import shutil

  from tests.train_utils import cli
  run = shutil.copytree(word_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval"))
  (run / "token_counts.npy").unlink()
  result = cli("experiments.analyze", f"--workdir={run}", "--rare")
  assert result.returncode == 2 and result.stderr.strip().splitlines() == [
      f"error: run {str(run)!r} has no token_counts.npy: frequency buckets need it"]
  assert not (run / "eval").exists() or not any((run / "eval").iterdir())


COUNTS_ON_MESHES = '''
import functools, json
import jax, numpy as np
from research.train import mesh as mesh_lib, steps
from tests import test_train_steps as ts

def counts(data, fsdp):
  mesh = mesh_lib.make_mesh(data, fsdp, devices=jax.devices()[:data * fsdp])
  state, step = ts.setup(count_updates=True, embedding_lazy=True)
  shardings = mesh_lib.param_sharding(state, mesh)
  state = jax.device_put(state, shardings)
  for i in range(3):
    state, _ = step(state, mesh_lib.shard_batch(ts.batch(i, low=5, high=20 + 5 * i), mesh))
  return {k: np.asarray(v).tolist() for k, v in state.counts.items()}

print(json.dumps({f"{d}x{f}": counts(d, f) for d, f in ((1, 1), (8, 1), (2, 4))}))
'''


@pytest.mark.slow
def test_counts_are_the_same_on_every_mesh():
  """The real train step with lazy rows on 1×1, 8×1 and 2×4 meshes of simulated CPU devices: the same counts."""
  import json
  import os
  import subprocess
  import sys
  from tests.train_utils import ROOT
  env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", COUNTS_ON_MESHES], cwd=ROOT, capture_output=True, text=True, env=env,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["8x1"] == out["2x4"] == out["1x1"]
  assert out["1x1"]["present"] == out["1x1"]["nonzero"] and max(out["1x1"]["present"]) == 3


@pytest.mark.slow  # ~8 s of CPU, but ~50 s of wall time on the loaded 2-core machine
@pytest.mark.parametrize("padding", ["zero", "learned"])
def test_the_closer_spelling_gets_the_closer_vector_after_training_on_a_toy_corpus(padding):
  """A corpus built for it: every form of a verb stem is followed by the word its suffix calls for ("walking now",
  "walked then", ...). Four -ing forms and four unrelated words are in the vocabulary but never in the data, so
  (untied head) their table rows never move; all eight start from the same row. After training, each held-out
  -ing form's combined input vector is closer (cosine) to the trained -ing forms' than the unrelated words' are: only
  the spelling, through the character CNN, can put it there. Before training about half of these 160 comparisons
  hold; after, at least 85 % (zero padding, Kim et al.'s: 91 % at this seed; a learned padding vector: all)."""
  import jax.numpy as jnp
  import optax
  from research.model.config import ModelConfig
  from research.model.transformer import Transformer
  marker = {"": "please", "s": "often", "ed": "then", "ing": "now"}
  stems = ["walk", "talk", "jump", "play", "look", "cook", "work", "park", "kick", "pick", "lift", "pull", "push",
           "wash"]
  held, far = ["kicking", "picking", "pushing", "washing"], ["zebra", "quartz", "oxygen", "vinyl"]
  seen = [s + x for s in stems for x in marker if s + x not in held]
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(marker.values()) + seen + held + far
  ix = {t: i for i, t in enumerate(tokens)}
  data = jnp.array([[ix[s + x], ix[marker[x]], ix["[SEP]"]] for s in stems for x in marker if s + x in ix
                    and s + x not in held])
  cfg = ModelConfig(vocab_size=len(tokens), d_model=32, num_layers=1, num_heads=2, mlp_dim=64, max_len=4,
                    tie_embeddings=False, char_embeddings="sum", char_dim=8, char_filters="1:16,2:16,3:32",
                    char_padding=padding)
  model = Transformer(cfg, char_ids=chars.Constant(chars.char_ids(tokens, "word")))
  params = model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))["params"]
  unseen = jnp.array([ix[w] for w in held + far])
  table = params["token_embed"]["embedding"]
  params = {**params, "token_embed": {**params["token_embed"], "embedding": table.at[unseen].set(table[unseen[0]])}}
  start_rows = params["token_embed"]["embedding"][unseen]

  def loss(p):
    logits = model.apply({"params": p}, data[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, data[:, 1:]).mean()

  tx = optax.adam(1e-2)

  @jax.jit
  def step(p, opt_state):
    grads = jax.grad(loss)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  def wins(p):
    m = np.asarray(model.apply({"params": p}, method=lambda mdl: mdl.vocab_vectors()))
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    trained = [ix[s + "ing"] for s in stems if s + "ing" not in held]
    return np.array([m[ix[h]] @ m[g] > m[ix[f]] @ m[g] for h in held for f in far for g in trained])

  before = wins(params)
  opt_state = tx.init(params)
  for _ in range(200):
    params, opt_state = step(params, opt_state)
  np.testing.assert_array_equal(params["token_embed"]["embedding"][unseen], start_rows)  # never moved
  after = wins(params)
  assert before.mean() < 0.6 and after.mean() >= 0.85 and after.mean() > before.mean() + 0.3, (before.mean(),
                                                                                                after.mean())


def test_the_rare_token_and_embedding_variant_sweeps_expand_and_validate():
  from pathlib import Path

  from research import sweeps
  from research.model.config import ModelConfig
  root = Path(__file__).resolve().parents[1] / "configs" / "sweeps"
  rare_sweep = sweeps.load_sweep(root / "rare_tokens.py")
  assert len({t.name for t in rare_sweep.trials}) == len(rare_sweep.trials) == 4 * 2 * 2 * 3
  arms = {(t.overrides["train.optimizer"], t.overrides["train.embedding.lazy"], t.overrides.get("train.momentum"))
          for t in rare_sweep.trials}
  assert arms == {("adamw", False, None), ("adamw", True, None), ("sgd", False, None), ("sgd", False, 0.0)}
  for t in rare_sweep.trials:  # the positions sweep's budget, no decay anywhere
    assert (t.overrides["data.seq_len"], t.overrides["train.steps"], t.overrides["train.weight_decay"]) == (64, 800, 0)
    assert ("train.learning_rate" in t.overrides) == (t.overrides["train.optimizer"] == "sgd")
  variants = sweeps.load_sweep(root / "embedding_variants.py")
  assert len({t.name for t in variants.trials}) == len(variants.trials) == 3 * 2 * 3
  assert {t.overrides["model.table_dim"] for t in variants.trials} == {0, ModelConfig().d_model // 4}
  assert {t.overrides["model.char_embeddings"] for t in variants.trials} == {"none", "concat", "sum"}
  assert all(t.overrides["data.tokenizer"] == "word" for t in variants.trials)
