"""Rare tokens: per-row update counts in the train state (resumable), and the rare-token analyses."""

import numpy as np
import pytest

from research.train import loop, steps
from tests import test_train_steps as ts
from tests.train_utils import tiny_config


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


def test_counts_off_leave_no_counts_in_the_state():
  state, step = ts.setup()
  assert state.counts is None and step(state, ts.batch())[0].counts is None
