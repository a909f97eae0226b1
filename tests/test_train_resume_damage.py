"""Resuming what a crash, a disk or a user left behind: a start that saved nothing, a torn metrics line, a damaged
checkpoint, a shortened run, a corpus edited in place (docs/training.md, "Resuming")."""

import json
import os
import shutil
from pathlib import Path
from typing import Any

import flax.struct
import numpy as np
import pytest
from gensim.test.utils import datapath

from research.train import checkpoint as checkpoint_lib
from research.train import configuration, loop
from tests.train_utils import ROOT, tiny_config

BASE = {"train.eval_batches": 1, "train.async_checkpoints": False, "train.log_every": 1}


def _config(**overrides):
  return tiny_config(**{**BASE, **overrides})


def _metrics(workdir):
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _params(workdir, step=None):
  with checkpoint_lib.Checkpointer(Path(workdir) / "checkpoints") as c:
    return [np.asarray(x) for x in __import__("jax").tree.leaves(c.restore_params(step))]


def test_a_start_that_saved_no_checkpoint_does_not_block_the_corrected_command(tmp_path, capsys):
  workdir = tmp_path / "run"
  diverges = _config(**{"train.learning_rate": 1e30, "train.grad_clip": 0.0, "train.warmup_steps": 0,
                        "train.optimizer": "sgd", "train.momentum": 0.0, "train.steps": 5,
                        "train.checkpoint_every": 1000})
  with pytest.raises(loop.NonFiniteError, match="no checkpoint was written"):
    loop.train(diverges, workdir)
  assert (workdir / "config.json").exists() and not checkpoint_lib.has_checkpoint(workdir / "checkpoints")
  # The corrected command differs in the learning rate and in the tokenizer's size: it starts over, with a tokenizer
  # of its own (the failed start's one belongs to the other vocabulary).
  fixed = _config(**{"train.steps": 2, "data.vocab_size": 600})
  summary = loop.train(fixed, workdir)
  assert "starting over with this config" in capsys.readouterr().out
  assert json.loads((workdir / "config.json").read_text())["train"]["learning_rate"] == fixed.train.learning_rate
  assert summary["vocab_size"] == 600 and summary["step"] == 2
  # The failed start's TensorBoard events are purged from step 1: each step's point is this run's, once.
  scalars = _tensorboard_scalars(workdir)
  assert sorted(step for tag, step in scalars if tag == "train/loss") == [1, 2]
  assert all(len(values) == 1 for values in scalars.values())
  assert json.loads((workdir / "tokenizer.json").read_text())["model"]["vocab"].__len__() == 600
  # Once the run has a checkpoint, another config is refused again.
  with pytest.raises(configuration.ConfigError, match="holds another run"):
    loop.train(_config(**{"train.steps": 2, "data.vocab_size": 600, "train.learning_rate": 1e-3}), workdir)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """4 steps, checkpoints at 2 and 4, every step logged: the uninterrupted run the damaged copies are held to."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  loop.train(_config(**{"train.steps": 4, "train.checkpoint_every": 2, "train.keep_checkpoints": 3}), workdir)
  return workdir


def _copy(reference_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference_run, workdir)
  return workdir


# What a run from before train.count_updates and train.position.weight_decay existed trained with.
NO_COUNTS = {"train.steps": 4, "train.checkpoint_every": 2, "train.keep_checkpoints": 3, "train.count_updates": False,
             "train.position.weight_decay": True}


@pytest.fixture(scope="module")
def uncounted_run(tmp_path_factory):
  """`reference_run` as a run from before the counts trained (`NO_COUNTS`): what such a run's resume is held to."""
  workdir = tmp_path_factory.mktemp("uncounted") / "run"
  loop.train(_config(**NO_COUNTS), workdir)
  return workdir


@flax.struct.dataclass
class StateBeforeCounts:
  """steps.TrainState as commit c1f1ef1 and every commit before 8bf42b2 saved it: no `counts` field."""
  step: Any
  params: Any
  opt_state: Any
  rng: Any


def _as_written_before_counts(workdir, config):
  """`workdir`'s checkpoints rewritten by the real Checkpointer as the writer before the counts saved them (the state
  without `counts`; the same arrays, data position and metadata), its newest one and summary.json removed: a run
  from before the counts, killed after its first checkpoint."""
  vocab_size = loop.load_run_tokenizer(workdir).get_vocab_size()
  target = loop.Trainer.build(config, vocab_size).init_state()
  directory = workdir / "checkpoints"
  with checkpoint_lib.Checkpointer(directory) as c:
    steps = c.all_steps()
    saved = {step: (*c.restore(step, target=target), c.read_metadata(step)) for step in steps}
  shutil.rmtree(directory)
  with checkpoint_lib.Checkpointer(directory, async_save=False) as c:
    for step, (state, data, meta) in saved.items():
      old = StateBeforeCounts(step=state.step, params=state.params, opt_state=state.opt_state, rng=state.rng)
      c.save(step, old, data, meta["metrics"], metadata=meta["metadata"])
  shutil.rmtree(directory / str(steps[-1]))
  (workdir / "summary.json").unlink()
  metadata = json.loads((directory / str(steps[0]) / "state" / "_METADATA").read_text())["tree_metadata"]
  assert not any("counts" in key for key in metadata) and any("rng" in key for key in metadata)


def test_a_checkpoint_from_before_the_counts_resumes_as_the_uninterrupted_run(uncounted_run, tmp_path):
  workdir = _copy(uncounted_run, tmp_path)
  _as_written_before_counts(workdir, _config(**NO_COUNTS))
  loop.train(_config(**NO_COUNTS), workdir)  # it said "no checkpoint ... restores (tree structures do not match)"
  timeless = lambda records: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]  # noqa: E731
  assert timeless(_metrics(workdir)) == timeless(_metrics(uncounted_run))
  for a, b in zip(_params(workdir, 4), _params(uncounted_run, 4)):
    assert np.array_equal(a, b)
  assert not (workdir / "update_counts.npz").exists()


def test_a_run_from_before_fields_were_added_resumes_under_the_same_command_with_one_note(uncounted_run, tmp_path,
                                                                                         capsys):
  workdir = _copy(uncounted_run, tmp_path)
  _as_written_before_counts(workdir, _config(**NO_COUNTS))
  saved = json.loads((workdir / "config.json").read_text())
  del saved["train"]["count_updates"], saved["train"]["position"]  # the fields the old version did not have
  (workdir / "config.json").write_text(json.dumps(saved))
  command = {"train.steps": 4, "train.checkpoint_every": 2, "train.keep_checkpoints": 3}  # today's defaults
  loop.train(_config(**command), workdir)  # was refused: "train.count_updates: False (saved) != True (current)"
  notes = [line for line in capsys.readouterr().out.splitlines() if "was written before" in line]
  assert len(notes) == 1 and "train.count_updates=False" in notes[0] \
      and "train.position.weight_decay=True" in notes[0], notes
  timeless = lambda records: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]  # noqa: E731
  assert timeless(_metrics(workdir)) == timeless(_metrics(uncounted_run))  # the model it is: no counts, decayed table
  kept = json.loads((workdir / "config.json").read_text())
  assert kept == saved  # still without the two fields: written out, they would refuse the next rerun
  # The checkpoints the resume wrote hold the same text: the copy the docs name for restoring a lost config.json
  # (written in full, it was refused alike).
  with checkpoint_lib.Checkpointer(workdir / "checkpoints", read_only=True) as c:
    assert c.read_metadata(4)["metadata"]["config"] == kept
  summary = loop.train(_config(**{**command, "train.steps": 5}), workdir)  # the same command, extended: resumes
  assert summary["step"] == 5 and json.loads((workdir / "config.json").read_text())["train"]["steps"] == 5


def test_an_mlm_run_validated_under_an_older_masking_rule_is_not_trained_on_and_its_figures_stay(tmp_path, capsys):
  """An MLM run whose config.json lacks model.char_spelling was validated with masks per batch (before b2cb295); today's
  code masks per row, and the same parameters score otherwise (valid ppl 306.77 against 268.86 on an audited run).
  Training it on would pick its best step and draw its curve across the two rules: refused in one line. A rerun of
  the finished run returns its summary as it is, and a torn final validation line is not rewritten by the new rule."""
  workdir = tmp_path / "run"
  command = {"objective": "mlm", "train.steps": 2, "train.checkpoint_every": 2}
  loop.train(_config(**command), workdir)
  saved = json.loads((workdir / "config.json").read_text())
  del saved["model"]["char_spelling"]  # as the writer before that field wrote it
  (workdir / "config.json").write_text(json.dumps(saved))
  summary = (workdir / "summary.json").read_text()
  with pytest.raises(configuration.ConfigError, match=r"validation used masks per batch \(written before b2cb295\); "
                                                      r"today's code masks per row.*research-evaluate"):
    loop.train(_config(**{**command, "train.steps": 3}), workdir)
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[-1])["split"] == "valid"
  (workdir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines[:-1]) + lines[-1][:20])  # torn
  capsys.readouterr()
  assert loop.train(_config(**command), workdir) == json.loads(summary)
  assert (workdir / "summary.json").read_text() == summary
  assert "lacks the final validation line (step 2); not written again" in capsys.readouterr().out
  assert [json.loads(line)["split"] for line in (workdir / "metrics.jsonl").read_text().splitlines()] == \
      [json.loads(line)["split"] for line in lines[:-1]]


def test_a_torn_last_metrics_line_is_dropped_and_the_run_extends(reference_run, tmp_path):
  workdir = _copy(reference_run, tmp_path)
  with (workdir / "metrics.jsonl").open("a") as f:
    f.write('{"accuracy": 0.07, "grad_norm/emb')  # a crash or a full disk in the middle of an append
  loop.train(_config(**{"train.steps": 6, "train.checkpoint_every": 2, "train.keep_checkpoints": 3}), workdir)
  records = _metrics(workdir)  # every line parses again
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
  assert records[:len(_metrics(reference_run))] == _metrics(reference_run)


def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(reference_run, tmp_path,
                                                                                          capsys):
  workdir = _copy(reference_run, tmp_path)
  shutil.rmtree(workdir / "checkpoints" / "4" / "state")  # the array data of the newest checkpoint is gone
  (workdir / "summary.json").unlink()  # as if the run had died right after writing step 4
  loop.train(_config(**{"train.steps": 4, "train.checkpoint_every": 2, "train.keep_checkpoints": 3}), workdir)
  out = capsys.readouterr().out
  assert "checkpoint step 4" in out and "moved to checkpoints_unreadable/4; resuming from step 2" in out
  assert (workdir / "checkpoints_unreadable" / "4" / "meta").is_dir()  # kept, not deleted
  # Steps 3 and 4 were trained again from step 2's state and data position: the same losses and parameters.
  timeless = lambda records: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]  # noqa: E731
  assert timeless(_metrics(workdir)) == timeless(_metrics(reference_run))
  for a, b in zip(_params(workdir, 4), _params(reference_run, 4)):
    assert np.array_equal(a, b)


def test_when_no_checkpoint_restores_the_rerun_is_refused_in_one_line(reference_run, tmp_path):
  workdir = _copy(reference_run, tmp_path)
  for later in ("data.json", "token_counts.npy"):  # as a run written before these files existed
    (workdir / later).unlink()
  run_files = lambda: {p.name: p.read_bytes() for p in workdir.iterdir()  # noqa: E731
                       if p.is_file() and p.name != loop.LOCK_FILE}
  files = run_files()
  for step in ("2", "4"):
    for array_file in (workdir / "checkpoints" / step / "state").rglob("*"):
      if array_file.is_file() and "ocdbt" in str(array_file) and array_file.stat().st_size > 0:
        array_file.write_bytes(b"")  # truncated to nothing
    shutil.rmtree(workdir / "checkpoints" / step / "state" / "_METADATA", ignore_errors=True)
    (workdir / "checkpoints" / step / "state" / "_METADATA").unlink(missing_ok=True)
  with pytest.raises(configuration.ConfigError) as err:
    loop.train(_config(**{"train.steps": 6, "train.checkpoint_every": 2, "train.keep_checkpoints": 3}), workdir)
  message = str(err.value)
  assert "\n" not in message and "no checkpoint of" in message and "(step 4: " in message
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]  # untouched
  # The refused resume wrote nothing first: config.json kept its steps (it said 6), no data.json or counts appeared.
  assert run_files() == files


def test_a_rerun_may_not_shorten_the_run_and_leaves_its_config(reference_run, tmp_path, capsys):
  workdir = _copy(reference_run, tmp_path)
  before = (workdir / "config.json").read_text()
  config = _config(**{"train.steps": 3, "train.checkpoint_every": 2, "train.keep_checkpoints": 3})
  assert configuration.schedule_notes(config)  # a run of these steps would get a note...
  with pytest.raises(configuration.ConfigError) as err:
    loop.train(config, workdir)
  assert "train.steps=3 is below step 4, which the run in" in str(err.value) and "\n" not in str(err.value)
  assert (workdir / "config.json").read_text() == before
  assert "note:" not in capsys.readouterr().out  # ...but the refused rerun makes no run: the error alone


def _run_on_a_copy_of_lee(tmp_path):
  """(corpus: a copy of gensim's lee_background.cor, workdir, config(steps)) of a 1-step run trained on it."""
  corpus = tmp_path / "lee.txt"
  shutil.copyfile(datapath("lee_background.cor"), corpus)
  workdir = tmp_path / "run"
  config = lambda steps: _config(**{"train.steps": steps, "train.checkpoint_every": 1,  # noqa: E731
                                    "data.corpus": f"text:{corpus}", "data.cache_dir": str(tmp_path / "cache")})
  loop.train(config(1), workdir)
  return corpus, workdir, config


def test_a_corpus_edited_in_place_is_refused_on_resume_and_a_touched_one_is_not(tmp_path):
  corpus, workdir, config = _run_on_a_copy_of_lee(tmp_path)
  record = json.loads((workdir / "data.json").read_text())["splits"]
  assert set(record) == {"train", "valid", "test"} and all(len(r["sha256"]) == 64 and r["tokens"] > 0
                                                   for r in record.values())
  os.utime(corpus)  # a new mtime, the same text: the same tokens, so the run continues
  loop.train(config(2), workdir)
  text = corpus.read_text()
  corpus.write_text(text.replace(" the ", " a ", 50))  # edited in place: the same length in lines and documents
  with pytest.raises(configuration.ConfigError) as err:
    loop.train(config(3), workdir)
  message = str(err.value)
  assert "\n" not in message and "holds a run trained on other data" in message and "train" in message
  assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 2  # untouched
  # research-evaluate refuses the same run on the edited corpus (it scored it silently), and scores it once restored.
  from research.evaluate import extrapolation
  (workdir / "eval").mkdir(exist_ok=True)
  with pytest.raises(extrapolation.EvaluationError) as err:
    extrapolation.evaluate_run(workdir, [1])
  message = str(err.value)
  assert "\n" not in message and "was trained on other data: the train token stream differs" in message
  assert not (workdir / "eval" / "extrapolation.json").exists()
  corpus.write_text(text)
  assert extrapolation.evaluate_run(workdir, [1])["results"][0]["ppl"] > 1


def test_a_start_refused_after_the_workdir_was_made_leaves_no_directory_behind(tmp_path):
  """A corpus refused once read (here: one document) left the new workdir holding only its lock (and, after a later
  refusal, tokenizer.json and token_counts.npy); a directory that existed before is left as it was."""
  from research.data import corpora
  corpus = tmp_path / "one.txt"
  corpus.write_text("a single line of text\n")
  config = _config(**{"train.steps": 1, "data.corpus": f"text:{corpus}", "data.cache_dir": str(tmp_path / "cache")})
  for workdir in (tmp_path / "new" / "run", tmp_path / "existing"):
    if workdir.name == "existing":
      workdir.mkdir()
      (workdir / "notes.txt").write_text("mine\n")
    with pytest.raises((configuration.ConfigError, corpora.CorpusError)) as err:
      loop.train(config, workdir)
    assert "at least 3 are needed" in str(err.value)
  assert not (tmp_path / "new").exists()  # the parents this start made went with it
  assert sorted(p.name for p in (tmp_path / "existing").iterdir()) == [".lock", "notes.txt"]
  # A data cache placed inside the new workdir (it may hold a download) stays, and the workdir with it: only what
  # the start itself wrote goes.
  inside, lee = tmp_path / "with_cache", tmp_path / "lee.txt"
  shutil.copyfile(datapath("lee_background.cor"), lee)
  with pytest.raises(configuration.ConfigError, match="too small"):  # refused once the corpus is in the cache
    loop.train(_config(**{"train.steps": 1, "data.corpus": f"text:{lee}", "data.cache_dir": str(inside / "c"),
                          "data.tokenizer": "char", "data.vocab_size": 10}), inside)
  assert any((inside / "c").rglob("*")) and sorted(p.name for p in inside.iterdir()) == ["c"]


def test_an_edited_test_split_is_refused_where_it_is_scored_and_on_resume(tmp_path):
  """data.json recorded train and valid only: research-evaluate --split=test scored an edited test part silently.
  The valid split still scores (it is unchanged); a run whose data.json predates the test record is not checked."""
  from research.evaluate import extrapolation
  corpus, workdir, config = _run_on_a_copy_of_lee(tmp_path)
  lines = corpus.read_text().splitlines()
  before = extrapolation.evaluate_run(workdir, [1], split="test")["results"][0]["ppl"]
  corpus.write_text("\n".join(lines[:-1] + [lines[-1].replace(" the ", " a ")]) + "\n")  # the last document only
  assert extrapolation.evaluate_run(workdir, [1], split="valid")["results"][0]["ppl"] > 1
  with pytest.raises(extrapolation.EvaluationError) as err:
    extrapolation.evaluate_run(workdir, [1], split="test")
  message = str(err.value)
  assert "\n" not in message and "has another test split than it started with: the test token stream differs" in message
  with pytest.raises(configuration.ConfigError) as err:
    loop.train(config(2), workdir)
  assert "whose corpus changed in its test split: the test token stream differs" in str(err.value)
  record = json.loads((workdir / "data.json").read_text())
  del record["splits"]["test"]  # a run written before data.json recorded the test stream
  (workdir / "data.json").write_text(json.dumps(record))
  after = extrapolation.evaluate_run(workdir, [1], split="test")["results"][0]["ppl"]
  assert after != before  # the edited text, scored: nothing recorded says otherwise
  loop.train(config(2), workdir)
  assert "test" not in json.loads((workdir / "data.json").read_text())["splits"]  # the start's record, kept


@pytest.mark.parametrize("damage", ["config", "tokenizer"])
def test_a_damaged_config_or_tokenizer_is_one_line_for_train_and_evaluate(reference_run, tmp_path, damage):
  from research.evaluate import extrapolation
  workdir = _copy(reference_run, tmp_path)
  name = "config.json" if damage == "config" else "tokenizer.json"
  text = (workdir / name).read_text()
  (workdir / name).write_text(text[:len(text) // 2])  # truncated by a full disk
  for call in (lambda: loop.train(_config(**{"train.steps": 6, "train.checkpoint_every": 2,
                                             "train.keep_checkpoints": 3}), workdir),
               lambda: extrapolation.evaluate_run(workdir, (1,))):
    with pytest.raises((configuration.ConfigError, extrapolation.EvaluationError)) as err:
      call()
    message = str(err.value)
    assert "\n" not in message and f"'{workdir / name}'" in message
    assert ("is damaged (JSONDecodeError" in message and "checkpoints/<step>/meta/metadata" in message) if \
        damage == "config" else "cannot be read (" in message
  assert (workdir / name).read_text() == text[:len(text) // 2]  # left as it was


def test_a_second_trainer_in_the_same_workdir_is_refused_in_one_line_while_the_first_holds_it(tmp_path):
  import fcntl
  workdir = tmp_path / "run"
  workdir.mkdir()
  first = loop.lock_workdir(workdir)  # what a running research-train holds
  try:
    with pytest.raises(configuration.ConfigError) as err:
      loop.train(_config(**{"train.steps": 1}), workdir)
    message = str(err.value)
    assert "\n" not in message and "is in use by another research-train (pid " in message
    assert not (workdir / "config.json").exists()  # refused before anything was written
  finally:
    first.close()
  loop.train(_config(**{"train.steps": 1}), workdir)  # released (as at the first one's exit, kill -9 included)
  with open(workdir / loop.LOCK_FILE) as f:  # and the finished run released its own
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_workdir_inside_another_run_or_a_sweep_directory_is_refused(reference_run, tmp_path):
  from research import sweeps
  config = _config(**{"train.steps": 1})
  for inside in (reference_run / "checkpoints", reference_run / "eval" / "mine"):
    with pytest.raises(configuration.ConfigError, match=f"is inside the run '{reference_run}'; give a directory"):
      loop.check_workdir(config, inside)
  sweep_dir = tmp_path / "sweep"
  sweep_dir.mkdir()
  sweep = sweeps.load_sweep(ROOT / "configs" / "sweeps" / "positions.py")
  sweeps.write_index(sweep_dir, sweep, {t.name: {"status": "pending"} for t in sweep.trials})  # research-sweep's
  with pytest.raises(configuration.ConfigError, match="is a sweep directory"):
    loop.check_workdir(config, sweep_dir)
  assert loop.check_workdir(config, sweep_dir / "my_trial") == sweep_dir / "my_trial"  # its trials are runs


def test_an_unwritable_directory_is_one_line_before_anything_runs():
  # /proc: a file system where no file can be created, whoever runs the tests (root included, unlike chmod).
  for call in (lambda: loop.check_writable(Path("/proc") / "eval"), lambda: loop.lock_workdir(Path("/proc"))):
    with pytest.raises(configuration.ConfigError, match=r"is not writable \(") as err:
      call()
    assert "\n" not in str(err.value)


def test_a_file_where_the_results_directory_goes_is_one_line_and_a_failed_write_leaves_no_temporary(tmp_path):
  """research-analyze computed its whole analysis, then failed with a FileExistsError traceback at the final write,
  when RUN/eval was a file: check_writable (called before anything is computed) passed it. And a write whose rename
  fails (the target a directory) left its .tmp file behind."""
  (tmp_path / "eval").write_text("")
  with pytest.raises(configuration.ConfigError, match="is not a directory; results are written in it") as err:
    loop.check_writable(tmp_path / "eval")
  assert "\n" not in str(err.value)
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "positions.json").mkdir()
  with pytest.raises(OSError):
    loop.atomic_write_json(tmp_path / "out" / "positions.json", {"a": 1})
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["positions.json"]


def test_a_full_device_is_recognised_through_the_exceptions_orbax_and_python_raise():
  import errno
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/run/checkpoints/20/state")
  try:
    try:
      raise full
    except OSError as inner:
      raise ValueError("Error saving the checkpoint") from inner  # how a wrapper passes it on
  except ValueError as outer:
    assert loop.is_disk_full(outer)
  assert loop.is_disk_full(ValueError('RESOURCE_EXHAUSTED: Error writing "params.final_norm.scale/0" to '
                                      '"/run/checkpoints/20.orbax-checkpoint-tmp/state": No space left on device'))
  assert loop.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
  assert not loop.is_disk_full(ValueError("NOT_FOUND: checkpoints/50.orbax-checkpoint-tmp/state"))
  assert not loop.is_disk_full(OSError(errno.ENOENT, "No such file or directory"))


REF = {"train.steps": 4, "train.checkpoint_every": 2, "train.keep_checkpoints": 3}


def test_a_torn_final_valid_line_is_written_again_so_the_best_figures_hold(reference_run, tmp_path):
  """A finished run whose last metrics line (the valid line of its last step) was torn: the rerun evaluates again
  at the end; that line goes back into metrics.jsonl, so summary.json's best is not drawn from a shortened log."""
  workdir = _copy(reference_run, tmp_path)
  lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
  assert json.loads(lines[-1])["split"] == "valid" and json.loads(lines[-1])["step"] == 4
  (workdir / "metrics.jsonl").write_text("".join(lines[:-1]) + lines[-1][:30])
  summary = loop.train(_config(**REF), workdir)
  reference = json.loads((reference_run / "summary.json").read_text())
  for key in ("valid_loss", "best_valid_loss", "best_step"):
    assert summary[key] == reference[key], key
  assert summary["best_valid_loss"] <= summary["valid_loss"]
  timeless = lambda records: [{k: v for k, v in r.items() if k != "tokens_per_s"}  # noqa: E731
                               for r in records if r["split"] == "valid"]
  assert timeless(_metrics(workdir)) == timeless(_metrics(reference_run))  # the line as it was, its lr included


def test_a_rerun_with_no_step_left_leaves_summary_json_and_one_without_it_writes_it(reference_run, tmp_path):
  """A finished run's rerun trains nothing: summary.json, the record of its end, is returned as it is (it was
  rewritten from a new evaluation: an old MLM run's valid_ppl went 306.77 -> 268.86 under today's masks, beside the
  unchanged best_valid_loss); without summary.json (a crash after the last checkpoint) the end is computed now."""
  workdir = _copy(reference_run, tmp_path)
  summary = json.loads((workdir / "summary.json").read_text())
  summary["valid_ppl"] = 306.77  # what an earlier version measured at the end
  (workdir / "summary.json").write_text(json.dumps(summary))
  before = (workdir / "summary.json").read_bytes(), (workdir / "metrics.jsonl").read_bytes()
  assert loop.train(_config(**REF), workdir) == summary
  assert ((workdir / "summary.json").read_bytes(), (workdir / "metrics.jsonl").read_bytes()) == before
  (workdir / "summary.json").unlink()
  computed = loop.train(_config(**REF), workdir)
  reference = json.loads((reference_run / "summary.json").read_text())
  assert {k: v for k, v in computed.items() if k != "wall_s"} == {k: v for k, v in reference.items() if k != "wall_s"}
  assert json.loads((workdir / "summary.json").read_text()) == computed


def test_damaged_run_files_are_one_line_or_recovered_and_config_json_is_required(reference_run, tmp_path, capsys):
  """What a full disk or a hand leaves: data.json damaged (one line: the only record of the streams), a truncated
  token_counts.npy (counted again from the stream it counts), a checkpoint whose metrics file is damaged (Orbax
  reads every step's when it opens the directory: moved aside, resumed from the one before), config.json gone
  while checkpoints exist (one line: nothing would say which model they are)."""
  workdir = _copy(reference_run, tmp_path / "a")
  (workdir / "data.json").write_text('{"splits": [')
  with pytest.raises(configuration.ConfigError, match=r"data.json' is damaged .*delete it to accept"):
    loop.train(_config(**REF), workdir)
  from research.evaluate import extrapolation
  with pytest.raises(extrapolation.EvaluationError, match=r"data.json' is damaged"):
    extrapolation.evaluate_run(workdir, [1])

  workdir = _copy(reference_run, tmp_path / "b")
  counts = np.load(workdir / "token_counts.npy")
  (workdir / "token_counts.npy").write_bytes((workdir / "token_counts.npy").read_bytes()[:100])
  (workdir / "checkpoints" / "4" / "metrics" / "metrics").write_text("garbage{")
  (workdir / "summary.json").unlink()
  loop.train(_config(**REF), workdir)
  out = capsys.readouterr().out
  assert "token_counts.npy' is damaged" in out and "has a damaged metrics file" in out
  np.testing.assert_array_equal(np.load(workdir / "token_counts.npy"), counts)
  assert (workdir / "checkpoints_unreadable" / "4").is_dir()
  for a, b in zip(_params(workdir, 4), _params(reference_run, 4)):  # steps 3-4 trained again from step 2
    assert np.array_equal(a, b)

  # A metrics file that is a JSON object without the ranked loss opened fine and then failed the first ranking in
  # a KeyError (research-evaluate's traceback; a resumed run crashed after its next save).
  workdir = _copy(reference_run, tmp_path / "d")
  for step, text in ((2, "{}"), (4, '{"valid_loss": "low"}')):
    (workdir / "checkpoints" / str(step) / "metrics" / "metrics").write_text(text)
    with pytest.raises(extrapolation.EvaluationError, match=rf"the metrics of checkpoint step {step} are damaged"):
      extrapolation.evaluate_run(workdir, [1])
    shutil.rmtree(workdir / "checkpoints" / str(step))

  # Every checkpoint's metrics damaged: moving them all aside started the run over from step 0 without a word.
  workdir = _copy(reference_run, tmp_path / "e")
  for step in (2, 4):
    (workdir / "checkpoints" / str(step) / "metrics" / "metrics").write_text("{}")
  (workdir / "summary.json").unlink()
  files = lambda: {p: p.read_bytes() for p in sorted((workdir / "checkpoints").rglob("*")) if p.is_file()}  # noqa
  before = files()
  with pytest.raises(configuration.ConfigError, match=r"no checkpoint of .* is readable: the metrics of checkpoint "
                                                      r"steps 2, 4 are damaged .*restore the checkpoints from a copy"):
    loop.train(_config(**REF), workdir)
  assert not (workdir / "checkpoints_unreadable").exists() and files() == before

  workdir = _copy(reference_run, tmp_path / "c")
  (workdir / "config.json").unlink()
  with pytest.raises(configuration.ConfigError, match="holds checkpoints but no config.json"):
    loop.train(_config(**{**REF, "train.learning_rate": 1e-2, "train.steps": 6}), workdir)
  assert not (workdir / "config.json").exists()


def test_a_workdir_with_brackets_is_refused_before_anything_is_written(tmp_path):
  """Orbax globs a checkpoint's directory for its per-process files: with '[1]' in the path every save reported
  success and none restored."""
  workdir = tmp_path / "run[1]"
  with pytest.raises(configuration.ConfigError, match=r"a path with '\[' or '\]' cannot hold checkpoints"):
    loop.train(_config(**REF), workdir)
  assert not workdir.exists()


def _tensorboard_scalars(workdir):
  """{(tag, step): [values]} as TensorBoard reads the run's event files: in the order they were written, and a
  `file_version` event with a step (tensorboardX's purge_step) drops what earlier files logged from that step on.
  The files are TFRecords (length, its CRC, the Event proto, its CRC), parsed with tensorboardX's own proto."""
  import struct
  from tensorboardX.proto import event_pb2
  files = sorted(Path(workdir).glob("events.out.tfevents.*"), key=lambda p: (int(p.name.split(".")[3]), p.name))
  scalars: dict = {}
  for path in files:
    data, i = path.read_bytes(), 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8]) if i + 8 <= len(data) else (len(data),)
      if i + 12 + n + 4 > len(data):  # a torn last record (a failed write): TensorBoard's reader stops there too
        break
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      if event.file_version and event.step:
        scalars = {key: v for key, v in scalars.items() if key[1] < event.step}
      for value in event.summary.value:
        scalars.setdefault((value.tag, event.step), []).append(value.simple_value)
  return scalars


def test_tensorboard_shows_each_step_once_after_a_resume_from_an_earlier_checkpoint(reference_run, tmp_path):
  """The run logged steps 3 and 4, then lost checkpoint 4: the rerun logs them again from step 2's checkpoint, and
  its events purge the earlier process's from step 3 on (else every curve shows steps 3 and 4 twice)."""
  workdir = _copy(reference_run, tmp_path)
  shutil.rmtree(workdir / "checkpoints" / "4")
  (workdir / "summary.json").unlink()
  loop.train(_config(**REF), workdir)
  scalars = _tensorboard_scalars(workdir)
  assert sorted(step for tag, step in scalars if tag == "train/loss") == [1, 2, 3, 4]
  assert sorted(step for tag, step in scalars if tag == "valid/loss") == [2, 4]
  assert all(len(values) == 1 for values in scalars.values())
  logged = {r["step"]: r["loss"] for r in _metrics(workdir) if r["split"] == "train"}
  assert {step: v[0] for (tag, step), v in scalars.items() if tag == "train/loss"} == pytest.approx(logged)


@pytest.mark.skipif(not (shutil.which("setpriv") and hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="needs root and setpriv to drop the capability that lets root write anywhere")
def test_a_checkpoint_that_cannot_be_written_ends_the_run_in_one_line_instead_of_hanging(reference_run, tmp_path):
  """A save refused by the filesystem (here: checkpoints/ read-only, root's override capability dropped): Orbax's
  signalling threads wait forever after it, and the process used to hang at exit after a traceback."""
  import subprocess
  import sys
  workdir = _copy(reference_run, tmp_path)
  (workdir / "summary.json").unlink()
  os.chmod(workdir / "checkpoints", 0o555)
  overrides = {**BASE, **REF, "train.steps": 6}
  args = [f"--config.{k}={v}" for k, v in overrides.items()]
  drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
  try:
    result = subprocess.run([*drop, sys.executable, "-m", "experiments.train", "--config=configs/tiny.py",
                             f"--workdir={workdir}", *args], cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "RESEARCH_HUGE_PAGES": "0"})
  finally:
    os.chmod(workdir / "checkpoints", 0o755)
  last = result.stderr.strip().splitlines()[-1]
  assert result.returncode == 2, result.stderr[-3000:]
  assert last.startswith("error: a file of") and "could not be written (PermissionError" in last
  assert last.endswith("it resumes from step 4")


def _train_below_file_size(workdir, limit, overrides, timeout=150):
  """research-train as a user runs it, with every file it writes held below `limit` bytes (RLIMIT_FSIZE, SIGXFSZ
  ignored: a write past it fails with EFBIG, as one on a full device fails with ENOSPC); limit None: no limit."""
  import resource
  import signal
  import subprocess
  import sys

  def limit_files():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  args = [f"--config.{k}={v}" for k, v in overrides.items()]
  # Without the tests' JAX compilation cache: an entry past the limit would be left there truncated.
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env.update(RESEARCH_HUGE_PAGES="0", JAX_ENABLE_COMPILATION_CACHE="false")
  return subprocess.run([sys.executable, "-m", "experiments.train", "--config=configs/tiny.py", f"--workdir={workdir}",
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
                        preexec_fn=limit_files if limit else None)


def _one_error_line(result):
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]  # no thread's traceback before it
  return lines[0]


FILE_TOO_LARGE = "would exceed the largest file size allowed (the process's `ulimit -f` or the file system's)"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_FSIZE: POSIX")
def test_a_tensorboard_write_that_fails_ends_the_run_in_one_line_instead_of_hanging(reference_run, tmp_path):
  """The event file is the file that grows past the limit (every step logged, no checkpoint before the end):
  tensorboardX's SummaryWriter wrote from a thread that died on the failed write, and the run then blocked forever
  on its full queue. (reference_run: the data cache is written, so no other file reaches the limit first.)"""
  workdir = tmp_path / "run"
  overrides = {"train.steps": 150, "train.log_every": 1, "train.checkpoint_every": 1000, "train.eval_every": 1000,
               "train.eval_batches": 1}
  line = _one_error_line(_train_below_file_size(workdir, 140_000, overrides))
  assert FILE_TOO_LARGE in line and line.endswith("it starts over (no checkpoint was finished)")
  assert [p.stat().st_size for p in workdir.glob("events.out.tfevents.*")] == [140_000]  # it was that file
  assert all(json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines())
  rerun = _train_below_file_size(workdir, None, overrides)  # the limit raised: the same command runs through
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  scalars = _tensorboard_scalars(workdir)
  assert sorted(step for tag, step in scalars if tag == "train/loss") == list(range(1, 151))
  assert all(len(values) == 1 for values in scalars.values())  # the failed start's events purged


@pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_FSIZE: POSIX")
def test_a_checkpoint_past_the_file_size_limit_is_one_line_without_orbax_thread_tracebacks(reference_run, tmp_path):
  """A checkpoint's files (1.2 MB at this size) fail in Orbax's background threads; they log each failure with
  its traceback, and TensorStore's callbacks into the closed event loop print more, before the run's own line."""
  workdir = tmp_path / "run"
  line = _one_error_line(_train_below_file_size(workdir, 300_000, {"train.steps": 120, "train.eval_batches": 1}))
  assert FILE_TOO_LARGE in line and line.endswith("it starts over (no checkpoint was finished)")
  assert not checkpoint_lib.has_checkpoint(workdir / "checkpoints")


def test_after_a_failed_write_an_abandoned_coroutine_prints_no_warning():
  """The checkpoint test above failed once in ~40 suite runs: Orbax's serializer had left a write coroutine that was
  never awaited, and the interpreter's exit printed "coroutine ... was never awaited" after the run's one line.
  The failed write's handler ignores that warning (nothing else): the same coroutine warns before and not after."""
  import gc
  import warnings

  async def write_fragment():
    pass

  def abandon():
    write_fragment()  # created and dropped, as the abandoned writes are
    gc.collect()

  with warnings.catch_warnings(record=True) as before:
    warnings.simplefilter("default")
    abandon()
    warnings.warn("another warning", RuntimeWarning)
    loop.ignore_abandoned_writes()
    abandon()
    warnings.warn("another warning again", RuntimeWarning)
  assert [str(w.message) for w in before] == [
      "coroutine 'test_after_a_failed_write_an_abandoned_coroutine_prints_no_warning.<locals>.write_fragment' was "
      "never awaited", "another warning", "another warning again"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_FSIZE: POSIX")
def test_a_short_numpy_write_is_the_storage_line_naming_both_places_it_may_be(reference_run, tmp_path):
  """numpy's np.save (embedding_init.npy, 131 KB here) raises an OSError without errno on a short write ("32768
  requested and 25568 written"): it was a traceback. Nothing names the file, so the line names the run directory
  and the data cache (outside it here, as by default)."""
  workdir = tmp_path / "run"
  line = _one_error_line(_train_below_file_size(workdir, 100_000, {"train.steps": 20, "train.eval_batches": 1}))
  assert line.startswith(f"error: a write to {str(workdir)!r} or of data.cache_dir '") and "was cut short" in line
  assert "(a write was cut short)" in line and line.endswith("it starts over (no checkpoint was finished)")
  assert not (workdir / "embedding_init.npy").exists()  # the half-written temporary file was not renamed into place


def test_a_storage_line_names_the_file_outside_the_run_where_it_failed(tmp_path):
  import errno
  config = _config(**{"data.cache_dir": str(tmp_path / "cache")})
  workdir = tmp_path / "run"
  in_cache = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "cache" / "tokens" / "a.npy"))
  assert loop.storage_place(in_cache, workdir, config) == repr(str(tmp_path / "cache" / "tokens" / "a.npy"))
  in_run = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(workdir / "metrics.jsonl"))
  assert loop.storage_place(in_run, workdir, config) == repr(str(workdir))
  orbax = ValueError(f'RESOURCE_EXHAUSTED: Error writing "x/0" in OCDBT database at local file "{workdir}/checkpoints'
                     f'/20.orbax-checkpoint-tmp/": No space left on device')
  assert loop.storage_place(orbax, workdir, config) == repr(str(workdir))
  assert loop.disk_full_reason(OSError("32768 requested and 25568 written")) == "a write was cut short"
  assert loop.disk_full_reason(OSError("something else")) is None
