"""The training loop end to end on the real default corpus: learning, run directory, resume, errors."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from research import run_fields, schema
from research.train import checkpoint as checkpoint_lib
from research.train import configuration, loop, optim
from tests.train_utils import ROOT, cli, mark_finished, read_metrics, tiny_config

RUN_FILES = ("config.json", "tokenizer.json", "token_counts.npy", "metrics.jsonl", "summary.json", "checkpoints")


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_tiny_run_learns_well_below_uniform_and_writes_the_run_directory(objective, tmp_path):
  config = tiny_config(**{"objective": objective, "train.steps": 300, "train.eval_every": 150,
                          "train.checkpoint_every": 150})
  summary = loop.train(config, tmp_path)
  uniform = math.log(summary["vocab_size"])
  # MLM scores only the 15 % masked tokens, so it sees ~7x fewer targets in the same steps and learns slower.
  margin = 1.0 if objective == "clm" else 0.75
  assert summary["valid_loss"] < uniform - margin, (summary["valid_loss"], uniform)
  assert summary["step"] == 300 and summary["num_params"] > summary["num_embedding_params"] > 0
  for name in RUN_FILES:
    assert (tmp_path / name).exists(), name
  assert list(tmp_path.glob("events.*")), "TensorBoard events"
  assert json.loads((tmp_path / "summary.json").read_text()) == pytest.approx(summary)
  assert json.loads((tmp_path / "config.json").read_text()) == config.to_dict()
  train = read_metrics(tmp_path, "train")
  valid = read_metrics(tmp_path, "valid")
  assert [r["step"] for r in valid] == [150, 300]
  assert [r["step"] for r in train] == list(range(20, 301, 20))
  for key in ("loss", "ppl", "lr", "tokens_per_s", "grad_norm/embedding", "update_norm/other", "param_norm/total"):
    assert all(math.isfinite(r[key]) for r in train), key
  for key in ("loss", "ppl", "lr", "tokens_per_s"):
    assert all(math.isfinite(r[key]) for r in valid), key
  assert train[-1]["loss"] < train[0]["loss"] - 0.5
  best = min(valid, key=lambda r: r["loss"])
  assert (summary["best_step"], summary["best_valid_loss"], summary["best_valid_ppl"]) == (
      best["step"], best["loss"], best["ppl"])
  assert summary["best_valid_loss"] <= summary["valid_loss"]
  assert summary["tokens_seen"] == pytest.approx(train[-1]["tokens_seen"])
  # Tokens seen counts what the model read, not only the scored targets (MLM scores ~15 % of them): packed rows
  # are nearly full, so it is close to steps x batch x seq_len for both objectives.
  read = 300 * config.train.batch_size * config.data.seq_len
  assert 0.9 * read <= summary["tokens_seen"] <= read
  # A rerun of a finished run resumes at the end: nothing is trained again and the summary is unchanged.
  again = loop.train(config, tmp_path)
  assert {k: v for k, v in again.items() if k != "wall_s"} == pytest.approx(
      {k: v for k, v in summary.items() if k != "wall_s"})
  assert again["wall_s"] == summary["wall_s"]  # the rerun's start-up and validation are not training time
  assert [r["step"] for r in read_metrics(tmp_path, "train")] == list(range(20, 301, 20))


def _final_params(workdir):
  with checkpoint_lib.Checkpointer(Path(workdir) / "checkpoints", keep=2) as ckpt:
    state, _ = ckpt.restore(ckpt.latest_step())
  return jax.tree.leaves(state["params"])


@pytest.mark.slow
def test_kill_9_and_rerun_continues_bit_identically(tmp_path):
  args = ["--config=configs/tiny.py", "--config.train.steps=40", "--config.train.checkpoint_every=10",
          "--config.train.eval_every=20", "--config.train.log_every=1", "--config.model.dropout=0.1"]
  reference = cli(*args, f"--workdir={tmp_path / 'reference'}")
  assert reference.returncode == 0, reference.stderr[-2000:]

  crashed = tmp_path / "crashed"
  proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *args, f"--workdir={crashed}"], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    metrics = crashed / "metrics.jsonl"
    if metrics.exists() and any(json.loads(l)["step"] >= 25 for l in metrics.read_text().splitlines() if l):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (crashed / "summary.json").exists()
  steps_saved = sorted(int(p.name) for p in (crashed / "checkpoints").iterdir() if p.name.isdigit())
  assert steps_saved and max(steps_saved) < 40
  # Mark the logged steps the checkpoint covers: a true resume keeps them (only later lines are rewritten), a
  # rerun that silently started over would overwrite them.
  restored = max(steps_saved)
  lines = [json.loads(l) for l in (crashed / "metrics.jsonl").read_text().splitlines() if l]
  for r in lines:
    if r["step"] <= restored and r["split"] == "train":
      r["sentinel"] = True
  (crashed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

  resumed = cli(*args, f"--workdir={crashed}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  ref, res = read_metrics(tmp_path / "reference"), read_metrics(crashed)
  assert [r["step"] for r in res] == list(range(1, 41))  # lines past the checkpoint were rewritten, not duplicated
  assert [r["step"] for r in res if r.get("sentinel")] == list(range(1, restored + 1))
  assert [r["loss"] for r in res] == [r["loss"] for r in ref]  # bit-identical, not approximately
  assert [r["grad_norm/total"] for r in res] == [r["grad_norm/total"] for r in ref]
  for a, b in zip(_final_params(crashed), _final_params(tmp_path / "reference")):
    assert np.array_equal(a, b)


def test_ctrl_c_ends_a_run_in_one_line_by_sigint_and_the_rerun_resumes(tmp_path):
  """A Ctrl-C printed Python's KeyboardInterrupt traceback. Now one line says what is kept, and the process still
  ends by SIGINT (a shell or research-sweep sees what ended it)."""
  workdir = tmp_path / "run"
  args = ["--config=configs/tiny.py", "--config.train.steps=400", "--config.train.checkpoint_every=5",
          "--config.train.eval_every=5", "--config.train.log_every=1", f"--workdir={workdir}"]
  proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None and not (workdir / "checkpoints" / "5").is_dir():
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.send_signal(signal.SIGINT)
  stderr = proc.communicate(timeout=120)[1]
  assert proc.returncode == -signal.SIGINT and "Traceback" not in stderr, stderr[-3000:]
  assert stderr.strip().splitlines()[-1].startswith("error: interrupted (Ctrl-C); the checkpoints written so far "), \
      stderr[-3000:]
  saved = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  resumed = cli(*args[:1], f"--config.train.steps={saved + 2}", *args[2:])
  assert resumed.returncode == 0 and f"step={saved + 2} " in resumed.stdout, resumed.stderr[-2000:]


def test_a_ctrl_c_whose_keyboard_interrupt_a_callback_swallowed_still_ends_the_run(tmp_path):
  """A Ctrl-C that lands in a callback which swallows exceptions (JAX's gc hook prints "Exception ignored" and goes
  on; here an object's __del__ while the config loads) was lost: research-train trained its whole run, and a sweep
  stopped by Ctrl-C waited for it. The signal is recorded (research/interrupts.py): the run ends before its first
  step, in one line, by SIGINT."""
  config = tmp_path / "swallows.py"
  config.write_text(
      "import os, signal\n\nfrom configs import tiny\n\n\n"
      "class Swallows:\n  def __del__(self):\n    os.kill(os.getpid(), signal.SIGINT)\n"
      "    for _ in range(100000):  # the handler runs here, where a KeyboardInterrupt is 'ignored'\n      pass\n\n\n"
      "def get_config():\n  Swallows()\n  return tiny.get_config()\n")
  workdir = tmp_path / "run"
  result = cli(f"--config={config}", "--config.train.steps=100000", "--config.train.checkpoint_every=100000",
               "--config.train.eval_every=100000", f"--workdir={workdir}", timeout=300)
  assert result.returncode == -signal.SIGINT and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1].startswith("error: interrupted (Ctrl-C); "), result.stderr[-3000:]
  assert not (workdir / "checkpoints").is_dir() or not any((workdir / "checkpoints").iterdir())


def _changed(value):
  """Another value of the same type (check_workdir runs before validation, so it need not be a valid one)."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, int):
    return value + 1
  if isinstance(value, float):
    return value * 2 + 1.0
  return f"{value}-changed"


def _snapshot(directory):
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("resume") / "run"
  config = tiny_config(**{"train.steps": 2, "train.eval_batches": 1, "train.async_checkpoints": False})
  loop.train(config, workdir)
  return config, workdir


PROTECTED = sorted(set(configuration.flatten(configuration.reference_config())) - set(schema.RESUMABLE_FIELDS)
                   - set(loop.CHAR_FIELDS) - set(loop.ROPE_SCALING_FIELDS)
                   # compared only where used: below, and tests/test_sweeps.py for every rule of unused_fields (the
                   # tiny run is a clm with adamw, learned positions, no CNN, no pretrained table)
                   # (model.table_dim and model.max_len stay: their rule is of values, and 0 + 1 is another model)
                   - (set(run_fields.unused_fields(tiny_config().to_dict(), tiny_config().to_dict()))
                      - {"model.table_dim", "model.max_len"}))


@pytest.mark.parametrize("field", PROTECTED)
def test_a_resume_that_changes_any_protected_field_is_refused_in_one_line_and_touches_nothing(field,
                                                                                             finished_tiny_run):
  config, workdir = finished_tiny_run
  before = _snapshot(workdir)
  value = configuration.flatten(config)[field]
  with pytest.raises(configuration.ConfigError) as err:
    loop.train(configuration.apply_overrides(config, {field: _changed(value)}), workdir)
  message = str(err.value)
  assert "\n" not in message and f"{field}: {value!r} (saved) != {_changed(value)!r} (current)" in message
  assert _snapshot(workdir) == before


@pytest.mark.parametrize("field", loop.CHAR_FIELDS)
def test_a_resume_that_changes_a_char_cnn_field_is_refused_when_either_run_has_the_cnn(field, tmp_path):
  for saved_chars, chars in (("sum", "sum"), ("none", "concat"), ("none", "none")):
    saved = tiny_config(**{"model.char_embeddings": saved_chars})
    tmp_path.joinpath("config.json").write_text(json.dumps(saved.to_dict()))
    mark_finished(tmp_path)
    value = configuration.flatten(saved)[field]
    current = configuration.apply_overrides(saved, {"model.char_embeddings": chars, field: _changed(value)})
    if saved_chars == chars == "none":
      assert loop.check_workdir(current, tmp_path) == tmp_path  # shapes nothing on either side
    else:
      with pytest.raises(configuration.ConfigError, match=re.escape(f"{field}: {value!r} (saved)")):
        loop.check_workdir(current, tmp_path)


@pytest.mark.parametrize("field", run_fields.MLM_FIELDS + ("data.vocab_size",))
def test_a_resume_that_changes_an_mlm_rate_or_the_vocab_size_is_refused_only_where_the_run_reads_it(field, tmp_path):
  """A causal LM never reads the MLM rates, a byte or char tokenizer not data.vocab_size (run_fields.unused_fields)."""
  unused = {"data.vocab_size": {"data.tokenizer": "byte", "data.vocab_size": 300}}.get(field, {"objective": "clm"})
  used = {"data.vocab_size": {"data.tokenizer": "bpe"}}.get(field, {"objective": "mlm"})
  for settings, refused in ((unused, False), (used, True)):
    saved = tiny_config(**settings)
    tmp_path.joinpath("config.json").write_text(json.dumps(saved.to_dict()))
    mark_finished(tmp_path)
    value = configuration.flatten(saved)[field]
    current = configuration.apply_overrides(saved, {field: value + 0.05 if isinstance(value, float) else value + 1})
    if not refused:
      assert loop.check_workdir(current, tmp_path) == tmp_path
    else:
      with pytest.raises(configuration.ConfigError, match=re.escape(f"{field}: {value!r} (saved)")):
        loop.check_workdir(current, tmp_path)


def test_an_override_of_a_float_field_that_a_dict_built_config_holds_as_an_int_is_taken():
  """A config built from a dict (or YAML) with learning_rate = 1 holds an int there; a sweep's override 0.5 was then
  refused as "expected a number, got a float". The int is the float it stands for."""
  import ml_collections
  values = tiny_config().to_dict()
  values["train"]["learning_rate"] = 1
  config = configuration.apply_overrides(ml_collections.ConfigDict(values), {"train.learning_rate": 0.5})
  assert config.train.learning_rate == 0.5
  assert configuration.apply_overrides(ml_collections.ConfigDict(values), {}).train.learning_rate == 1.0


def test_a_run_written_with_a_scaling_its_scheme_ignored_resumes_once_the_scaling_is_off(tmp_path):
  """Before the check that refuses RoPE scaling on a scheme without RoPE's frequencies, a learned run could be written
  with rope_scaling=linear (trained unscaled). Validation now refuses that value and the resume check refused the
  default instead: no command resumed it. RoPE's scaling is not compared while neither scheme rotates; on rope it is."""
  for position, resumes in (("learned", True), ("alibi", True), ("rope", False)):
    saved = tiny_config(**{"model.position": position, "model.rope_scaling": "linear", "model.rope_factor": 2.0})
    tmp_path.joinpath("config.json").write_text(json.dumps(saved.to_dict()))
    mark_finished(tmp_path)
    current = tiny_config(**{"model.position": position})
    if resumes:
      assert loop.check_workdir(current, tmp_path) == tmp_path
    else:
      with pytest.raises(configuration.ConfigError, match="model.rope_factor: 2.0 .saved. != 1.0"):
        loop.check_workdir(current, tmp_path)


def test_a_workdir_inside_its_text_corpus_is_refused_before_anything_is_written(tmp_path):
  """It trained once, then every resume and evaluation read its checkpoints as corpus files (invalid UTF-8)."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "a.txt").write_text((ROOT / "README.md").read_text())
  result = cli(f"--config={ROOT / 'configs' / 'tiny.py'}", f"--workdir={corpus / 'run'}",
               f"--config.data.corpus=text:{corpus}", "--config.train.steps=1")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert result.stderr.strip() == (f"error: workdir '{corpus / 'run'}' is inside data.corpus='text:{corpus}': the "
                                   f"run's files (checkpoints, logs) would become training text at its next start; "
                                   f"give it a directory outside the corpus")
  assert sorted(p.name for p in corpus.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("pattern", ["mydata.txt", "*.txt", ""])
def test_a_corpus_kept_inside_the_run_directory_is_told_to_stay_outside_it(tmp_path, pattern):
  """A corpus file inside the run directory (`text:RUN/mydata.txt`, a glob there, the directory itself) was called
  "this run's own files", and the way out said to move the run directory outside the corpus, which moves the corpus
  too: the line now says the corpus lies inside the run directory and to keep it outside. A corpus that holds the
  run directory keeps the old line."""
  run = tmp_path / "run"
  run.mkdir()
  (run / "mydata.txt").write_text((ROOT / "README.md").read_text())
  spec = f"text:{run}/{pattern}".rstrip("/")
  with pytest.raises(configuration.ConfigError) as err:
    loop.check_corpus_excludes_run(tiny_config(**{"data.corpus": spec}), run)
  assert str(err.value) == (f"data.corpus={spec!r} lies inside the run directory {str(run)!r} (it reads "
                            f"{str(run / 'mydata.txt')!r}), whose files are the run's own; keep the corpus outside "
                            f"the run directory (or use another workdir) and rerun")
  with pytest.raises(configuration.ConfigError, match="reads this run's own files .* move the run directory"):
    loop.check_corpus_excludes_run(tiny_config(**{"data.corpus": f"text:{tmp_path}"}), run)


def test_a_corpus_that_reads_the_runs_own_files_at_a_later_start_is_refused_with_the_way_out(tmp_path):
  """What the first start cannot foresee (here a glob matching a name Orbax writes, state/manifest.ocdbt, that the
  check does not list): the next start finds the run's files among the corpus's and says to move the run out;
  moved, it resumes, because the corpus reads what it read at the start."""
  import shutil
  (tmp_path / "corpus").mkdir()
  (tmp_path / "corpus" / "notes.ocdbt").write_text((ROOT / "README.md").read_text())
  spec = f"text:{tmp_path}/**/*.ocdbt"
  settings = {"data.corpus": spec, "train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2,
              "train.async_checkpoints": False}
  loop.train(tiny_config(**settings), tmp_path / "run")
  with pytest.raises(configuration.ConfigError) as err:
    loop.train(tiny_config(**{**settings, "train.steps": 3}), tmp_path / "run")
  message = str(err.value)
  assert "\n" not in message and f"data.corpus={spec!r} reads this run's own files (" in message
  assert f"move the run directory '{tmp_path / 'run'}' outside the corpus and rerun there" in message
  from research.evaluate import extrapolation
  with pytest.raises(extrapolation.EvaluationError, match="reads this run's own files"):
    extrapolation.load_run(tmp_path / "run")
  import tempfile
  moved = Path(tempfile.mkdtemp()) / "run"  # out of the glob's reach; the same spec (it is part of the run)
  shutil.move(tmp_path / "run", moved)
  try:
    assert loop.train(tiny_config(**{**settings, "train.steps": 3}), moved)["step"] == 3
  finally:
    shutil.rmtree(moved.parent)


def test_every_differing_field_is_named_and_only_the_allow_list_may_change(finished_tiny_run):
  config, workdir = finished_tiny_run
  # (model.rope_base would not do: the tiny run's learned positions never read it, run_fields.SCHEME_FIELDS)
  changed = {"train.weight_decay": 0.0, "train.grad_clip": 0.0, "model.norm": "post"}
  with pytest.raises(configuration.ConfigError) as err:
    loop.check_workdir(configuration.apply_overrides(config, changed), workdir)
  assert all(f"{field}: " in str(err.value) for field in changed)
  # Cadence, steps, cache and mesh may change: the same run continues.
  allowed = {"train.steps": 3, "train.eval_every": 7, "train.log_every": 3, "train.checkpoint_every": 9,
             "train.keep_checkpoints": 4, "train.async_checkpoints": True,
             "data.cache_dir": "", "mesh.data": 1, "mesh.fsdp": 1, "mesh.distributed": "false",
             "mesh.heartbeat_timeout_s": 30, "mesh.init_timeout_s": 600, "model.remat": "block"}
  assert set(allowed) == set(schema.RESUMABLE_FIELDS)
  assert loop.check_workdir(configuration.apply_overrides(config, allowed), workdir) == workdir


def test_an_untied_run_from_before_the_heads_flag_goes_on_decaying_its_head_and_a_tied_one_never_reads_it(tmp_path,
                                                                                                          capsys):
  """train.head.weight_decay (default off) came after runs that decayed their untied head: such a run resumes as the
  model it is, with one note; a tied run has no head of its own, so the field is neither noted nor compared."""
  from research import run_fields
  for tied in (False, True):
    workdir = tmp_path / f"tied{tied}"
    workdir.mkdir()
    saved = tiny_config(**{"model.tie_embeddings": tied}).to_dict()
    del saved["train"]["head"]
    workdir.joinpath("config.json").write_text(json.dumps(saved))
    mark_finished(workdir)
    command = tiny_config(**{"model.tie_embeddings": tied})
    assert loop.check_workdir(command, workdir) == workdir
    kept = loop.keep_saved_choices(command, workdir)
    out = capsys.readouterr().out
    assert kept.train.head.weight_decay is True  # what the field meant before it existed (unread when tied)
    assert ("train.head.weight_decay=True" in out) == (not tied), out
    other = tiny_config(**{"model.tie_embeddings": tied, "train.head.weight_decay": True})
    assert ("train.head.weight_decay" in run_fields.unused_fields(command.to_dict(), other.to_dict())) == tied


@pytest.mark.parametrize("field, legacy, reads, ignores", [
    ("train.head.projection_group", "matrices", {"model.table_dim": 16},
     [{}, {"model.table_dim": 16, "model.tie_embeddings": False}]),
    ("train.embedding.lazy_rows", "batch", {"train.embedding.lazy": True, "model.tie_embeddings": False},
     [{"train.embedding.lazy": True}, {"model.tie_embeddings": False},
      {"train.embedding.lazy": True, "model.tie_embeddings": False, "train.embedding.freeze": True}]),
])
def test_a_run_from_before_the_head_projection_group_or_lazy_rows_resumes_as_the_model_it_is(tmp_path, capsys, field,
                                                                                               legacy, reads, ignores):
  """train.head.projection_group (a factorized tied table's head_projection in the head's decay group) and
  train.embedding.lazy_rows (an untied lazy table updates its looked-up rows only) changed what such runs train: a
  run written before them resumes with the old meaning and one note; a run whose model never reads the field
  (plain or untied table; dense, frozen or tied lazy table) is neither noted nor compared on it."""
  from research import run_fields
  section, name = field.split(".")[1:]
  for case, overrides in enumerate([reads, *ignores]):
    workdir = tmp_path / f"case{case}"
    workdir.mkdir()
    saved = tiny_config(**overrides).to_dict()
    del saved["train"][section][name]
    workdir.joinpath("config.json").write_text(json.dumps(saved))
    mark_finished(workdir)
    command = tiny_config(**overrides)
    assert loop.check_workdir(command, workdir) == workdir
    kept = configuration.flatten(loop.keep_saved_choices(command, workdir))
    out = capsys.readouterr().out
    assert kept[field] == legacy
    assert (f"{field}={legacy!r}" in out) == (overrides is reads), (overrides, out)
    other = tiny_config(**overrides, **{field: legacy})
    assert (field in run_fields.unused_fields(command.to_dict(), other.to_dict())) == (overrides is not reads)
    assert (loop.unread_notes(other) != []) == (overrides is not reads)
    # The resume set the old meaning itself: no note calls it set but unread.
    kept = loop.keep_saved_choices(command, workdir)
    capsys.readouterr()
    assert not [n for n in loop.unread_notes(kept, loop.chosen_by_the_run(command, kept)) if field in n]


def test_a_run_trained_before_a_training_only_check_resumes_and_a_new_one_is_refused(tmp_path, monkeypatch, capsys):
  """Sandwich at a head dimension of 2 is refused for new training (it trains as NoPE); a run trained so before the
  check existed (made here by lowering the bound for its first steps) resumes and extends as the model it is."""
  from research.embeddings import relative
  overrides = {"model.position": "sandwich", "model.d_model": 16, "model.num_heads": 8, "model.mlp_dim": 32,
               "data.seq_len": 16, "train.batch_size": 4, "train.eval_batches": 1, "train.warmup_steps": 0,
               "train.checkpoint_every": 2, "train.eval_every": 2, "train.log_every": 1}
  with pytest.raises(configuration.ConfigError, match=r"sandwich' needs a head dimension of at least 4"):
    loop.train(tiny_config(**overrides, **{"train.steps": 2}), tmp_path / "new")
  assert not (tmp_path / "new").exists()
  with monkeypatch.context() as patch:
    patch.setattr(relative, "SANDWICH_MIN_HEAD_DIM", 2)  # the version before the check
    loop.train(tiny_config(**overrides, **{"train.steps": 2}), tmp_path / "old")
  capsys.readouterr()
  assert loop.train(tiny_config(**overrides, **{"train.steps": 4}), tmp_path / "old")["step"] == 4
  # A rerun may not add what a fresh start is refused for: RoPE scaling on a scheme that ignores it (its fields are
  # unread by the run's model, so the resume rule does not compare them).
  scaled = {"model.rope_scaling": "linear", "model.rope_factor": 4.0, "train.steps": 6}
  with pytest.raises(configuration.ConfigError, match=r"model.rope_scaling='linear' with model.rope_factor=4 "
                                                      r"applies to model.position=p_rope or rope only"):
    loop.train(tiny_config(**overrides, **scaled), tmp_path / "old")
  assert json.loads((tmp_path / "old" / "config.json").read_text())["model"]["rope_scaling"] == "none"


def test_a_field_the_saved_run_lacks_means_what_runs_did_before_it_existed(tmp_path, capsys):
  saved = tiny_config(**{"model.position": "t5"}).to_dict()
  del saved["train"]["position"]  # written before train.position.weight_decay: its T5 table was decayed
  del saved["model"]["attention"]  # before auto: einsum (LEGACY_VALUES), which auto is on this CPU
  tmp_path.joinpath("config.json").write_text(json.dumps(saved))
  before = _snapshot(tmp_path)
  # A start that saved nothing: the command's own values (it starts over).
  assert loop.keep_saved_choices(tiny_config(**{"model.position": "t5"}), tmp_path).train.position.weight_decay \
      is False
  mark_finished(tmp_path)
  # A run: the same command resumes it as the model it is (it was refused over the new default), with one note.
  command = tiny_config(**{"model.position": "t5"})
  assert loop.check_workdir(command, tmp_path) == tmp_path
  kept = loop.keep_saved_choices(command, tmp_path)
  assert kept.train.position.weight_decay is True and kept.model.attention == "einsum"
  out = capsys.readouterr().out
  assert out.count("note:") == 1 and "was written before train.position.weight_decay existed" in out, out
  assert "train.position.weight_decay=True" in out and "model.attention" not in out  # (auto is einsum here)
  assert loop.check_workdir(tiny_config(**{"model.position": "t5", "train.position.weight_decay": True}), tmp_path)
  assert loop.keep_saved_choices(kept, tmp_path).to_dict() == kept.to_dict() and not capsys.readouterr().out
  with pytest.raises(configuration.ConfigError, match="model.t5_buckets"):  # a field the run has is compared
    loop.check_workdir(tiny_config(**{"model.position": "t5", "model.t5_buckets": 8}), tmp_path)
  assert {k: v for k, v in _snapshot(tmp_path).items() if k != "summary.json"} == before  # the checks write nothing


def test_a_run_without_a_char_cnn_resumes_whatever_the_cnns_fields_say(tmp_path):
  """The char CNN's fields added since a run was written count as their legacy values (char_padding learned,
  char_spelling raw), which every old run would have had to repeat on the command line to resume, though it never had
  a CNN. Without a CNN on either side they are not compared; with one, each is (another CNN is another model)."""
  for chars in ("none", "sum"):
    saved = tiny_config(**{"model.char_embeddings": chars}).to_dict()
    del saved["model"]["char_padding"], saved["model"]["char_spelling"]  # written before both fields
    tmp_path.joinpath("config.json").write_text(json.dumps(saved))
    mark_finished(tmp_path)
    current = tiny_config(**{"model.char_embeddings": chars})
    if chars == "none":
      assert loop.check_workdir(current, tmp_path) == tmp_path
      assert loop.check_workdir(configuration.apply_overrides(current, {"model.char_dim": 8}), tmp_path)
    else:  # a CNN: the run keeps the values it had (learned, raw), which the command cannot change
      assert loop.check_workdir(current, tmp_path) == tmp_path
      kept = loop.keep_saved_choices(current, tmp_path).model
      assert (kept.char_padding, kept.char_spelling) == ("learned", "raw")
      with pytest.raises(configuration.ConfigError, match="model.char_dim"):  # a field the run has is compared
        loop.check_workdir(configuration.apply_overrides(current, {"model.char_dim": 8}), tmp_path)
    with pytest.raises(configuration.ConfigError, match="model.char_embeddings"):  # switching the CNN on or off
      loop.check_workdir(tiny_config(**{"model.char_embeddings": "concat" if chars == "none" else "none"}), tmp_path)


def test_an_einsum_run_resumes_under_auto_where_auto_is_einsum_and_keeps_einsum(tmp_path):
  config_differences = checkpoint_lib.config_differences
  current = tiny_config()  # model.attention = auto (the default)
  for saved_value in (None, "einsum"):  # written before the field existed, or with einsum
    saved = current.to_dict()
    if saved_value is None:
      del saved["model"]["attention"]
    else:
      saved["model"]["attention"] = saved_value
    tmp_path.joinpath("config.json").write_text(json.dumps(saved))
    mark_finished(tmp_path)
    assert loop.check_workdir(current, tmp_path) == tmp_path  # auto = einsum on CPU: the same computation
    assert loop.keep_saved_choices(current, tmp_path).model.attention == "einsum"  # what config.json keeps
    filled = configuration.with_defaults(saved)
    # Where auto means jax.nn.dot_product_attention, the same pair is another computation: refused, naming it.
    on_gpu = configuration.align_backend_choices(filled, current.to_dict(), backend="gpu")
    assert config_differences(on_gpu, current.to_dict(), ignore=schema.RESUMABLE_FIELDS) == [
        "model.attention: 'einsum' (saved) != 'auto' (current)"]
    assert configuration.align_backend_choices(filled, current.to_dict(), backend="cpu") == current.to_dict()
  with pytest.raises(configuration.ConfigError, match=r"model.attention: 'einsum' \(saved\) != 'xla' \(current\)"):
    loop.check_workdir(configuration.apply_overrides(current, {"model.attention": "xla"}), tmp_path)
  assert loop.keep_saved_choices(current, tmp_path / "fresh") is current  # a fresh run keeps its own config


def test_a_start_over_with_another_attention_path_trains_with_the_new_one(tmp_path):
  # A first start with xla that saved no checkpoint; the corrected command asks for einsum: check_workdir lets it
  # start over, and the saved xla must not come back (it would train, and record, the path the user replaced).
  first = tiny_config(**{"model.attention": "xla"})
  tmp_path.joinpath("config.json").write_text(json.dumps(first.to_dict()))
  corrected = tiny_config(**{"model.attention": "einsum"})
  assert loop.check_workdir(corrected, tmp_path) == tmp_path
  assert loop.keep_saved_choices(corrected, tmp_path).model.attention == "einsum"
  assert loop.keep_saved_choices(tiny_config(), tmp_path).model.attention == "auto"  # auto is einsum here, not xla


def test_a_resume_naming_the_vector_file_another_way_keeps_the_saved_spelling(tmp_path, monkeypatch):
  (tmp_path / "vectors.txt").write_text("1 2\nword 0.5 0.25\n")
  monkeypatch.chdir(tmp_path)
  saved = tiny_config(**{"model.embed_init": "pretrained", "model.pretrained.path": str(tmp_path / "vectors.txt")})
  tmp_path.joinpath("run").mkdir()
  tmp_path.joinpath("run", "config.json").write_text(json.dumps(saved.to_dict()))
  rerun = tiny_config(**{"model.embed_init": "pretrained", "model.pretrained.path": "vectors.txt"})
  assert loop.keep_saved_choices(rerun, tmp_path / "run").model.pretrained.path == str(tmp_path / "vectors.txt")
  (tmp_path / "other.txt").write_text("1 2\nword 0.5 0.25\n")
  other = tiny_config(**{"model.embed_init": "pretrained", "model.pretrained.path": "other.txt"})
  assert loop.keep_saved_choices(other, tmp_path / "run").model.pretrained.path == "other.txt"


@pytest.mark.slow
def test_non_finite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.train.learning_rate=1e30",
               "--config.train.grad_clip=0.0", "--config.train.warmup_steps=0", "--config.train.steps=50",
               "--config.train.checkpoint_every=1", "--config.train.eval_every=1000", "--config.train.optimizer=sgd",
               "--config.train.momentum=0.0")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  step = int(lines[0].split(" at step ")[1].split()[0])
  assert lines[0].startswith("error: non-finite loss") and step >= 1
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert (not saved and step == 1) or max(saved) == step - 1
  assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--config.model.positon=alibi"], "unknown config field 'model.positon' (did you mean model.position"),
    (["--config.model.position=bogus"], "model.position='bogus' is not one of alibi, cope, fire, kerple_log, "
                                        "kerple_log_shared, kerple_power, kerple_power_shared, learned, none, p_rope, "
                                        "rope, sandwich, sinusoidal, t5, xpos"),
    (["--config.train.optimizer=adamax"], "train.optimizer='adamax' is not one of adamw, adam, sgd, adafactor, lion"),
    (["--config.train.steps=-5"], "train.steps=-5 must be an integer >= 0"),
    (["--config.data.seq_len=1"], "data.seq_len=1 must be >= 2"),
    (["--config.data.vocab_size=100"], "data.vocab_size=100: vocab_size=100 is too small for a 'bpe' tokenizer"),
    # The BPE trainer aborted the process allocating 70 GB; unigram raised OverflowError past 2^32.
    (["--config.data.vocab_size=1000000000"], "data.vocab_size=1000000000 is too large: at most 16,777,216 (2^24;"),
    (["--config.data.tokenizer=unigram", "--config.data.vocab_size=18446744073709551616"],
     "data.vocab_size=18446744073709551616 is too large: at most 16,777,216"),
    (["--config.model.num_heads=3"], "model.num_heads=3 does not divide the model width 64"),
    (["--config.model.table_dim=-1"], "model.table_dim=-1 must be an integer >= 0 (0 = d_model)"),
    # checked with the CNN off too, so a sweep that switches it on does not fail in its 40th trial
    (["--config.model.char_filters=3:"], "model.char_filters='3:': expected 'width:count,...' such as"),
    (["--config.model.char_embeddings=sum", "--config.model.char_dim=0"], "model.char_dim=0 must be a positive"),
    (["--config.objective=seq2seq"], "objective='seq2seq' is not one of clm, mlm"),
    # values that used to pass and fail only after compiling (a NaN loss, or an error inside the jitted step)
    (["--config.model.position=learned", "--config.model.max_len=10"],
     "model.max_len=10 is smaller than data.seq_len=64: model.position='learned' represents positions 0 … 9 only"),
    (["--config.model.position=rope", "--config.model.rope_base=0"], "model.rope_base=0.0 must be a finite number > 0"),
    (["--config.model.sinusoidal_wavelength=-1"], "model.sinusoidal_wavelength=-1.0 must be a finite number > 0"),
    (["--config.objective=mlm", "--config.data.mlm_mask_rate=0.9", "--config.data.mlm_random_rate=0.5"],
     "data.mlm_mask_rate=0.9 + data.mlm_random_rate=0.5 = 1.4 must be <= 1"),
    (["--config.objective=mlm", "--config.data.mlm_select_rate=0"], "data.mlm_select_rate=0 selects no token"),
    (["--config.data.mlm_select_rate=2"], "data.mlm_select_rate=2.0 must be a number in [0, 1]"),
    (["--config.train.grad_clip=-1"], "train.grad_clip=-1.0 must be a finite number >= 0 (0 = off)"),
    (["--config.train.b1=1.5"], "train.b1=1.5 must be a finite number in [0, 1)"),
    (["--config.train.min_lr_ratio=5"], "train.min_lr_ratio=5.0 must be a finite number in [0, 1]"),
    (["--config.train.embedding.lr_multiplier=-1"], "train.embedding.lr_multiplier=-1.0 must be a finite number >= 0"),
    (["--config.train.weight_decay=-0.1"], "train.weight_decay=-0.1 must be a finite number >= 0"),
    (["--config.train.loss_chunk=-3"], "train.loss_chunk=-3 must be an integer >= 0"),
    (["--config.train.optimizer=adafactor", "--config.train.embedding.lazy=true"],
     "train.embedding.lazy=True is not supported with train.optimizer='adafactor'"),
    (["--config.mesh.data=3"], "mesh.data=3, mesh.fsdp=1: mesh data=3 x fsdp=1 = 3 devices, but 1 devices"),
    (["--config.mesh.distributed=true"], "mesh.distributed=true, but no multi-process job was found: set "
                                         "JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID"),
    (["--workdir=gs://bucket/run"], "workdir 'gs://bucket/run' is a URL; run directories are local or shared"),
    # a traceback from numpy after compiling, and a NaN that would refuse the identical rerun ("nan != nan")
    (["--config.seed=-1"], "seed=-1 must be an integer in 0 ... 4294967295"),
    (["--config.model.position=rope", "--config.model.rope_factor=nan"], "model.rope_factor=nan must be a finite"),
])
def test_cli_user_errors_are_one_line_without_traceback(args, message, tmp_path):
  workdir = [] if any(a.startswith("--workdir=") for a in args) else [f"--workdir={tmp_path / 'run'}"]
  result = cli("--config=configs/tiny.py", *workdir, *args)  # (a flag given twice is an error of its own)
  assert result.returncode == 2
  assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
  # Failed before training started, and left no config behind that would refuse the corrected command.
  for name in ("checkpoints", "config.json", "metrics.jsonl"):
    assert not (tmp_path / "run" / name).exists(), name
  if "adafactor" in message:  # refused before the data is prepared: nothing written at all
    assert not (tmp_path / "run" / "tokenizer.json").exists()


def _refusal(base, overrides) -> str:
  with pytest.raises(configuration.ConfigError) as error:
    configuration.validate(configuration.apply_overrides(base, overrides))
  return str(error.value)


def test_every_float_field_must_be_finite_and_the_seed_fit_jax_and_numpy():
  """NaN passes every range check (`nan < 1` is False) and inf several (a learning rate of inf is > 0): both compiled
  and failed mid-run, and a NaN in config.json never equals itself, so the identical rerun was refused. Every float
  field of the schema, model and experiment alike, is checked before anything compiles."""
  base = tiny_config()
  floats = [name for name, value in configuration.flatten(configuration.reference_config()).items()
            if isinstance(value, float)]
  assert "train.learning_rate" in floats and "model.rope_factor" in floats and "data.train_fraction" in floats
  for name in floats:
    for bad in (float("nan"), float("inf"), -float("inf")):  # refused naming field and value (a field's own check
      # may say more, e.g. "must be in [0, 1)")
      with pytest.raises(configuration.ConfigError, match="^" + re.escape(f"{name}={bad!r} must be ")):
        configuration.validate(configuration.apply_overrides(base, {name: bad}))
  assert "must be a finite number" in _refusal(base, {"train.learning_rate": float("inf")})
  assert "must be a finite number" in _refusal(base, {"model.embed_init_std": float("nan")})
  for seed, ok in ((0, True), (2 ** 32 - 1, True), (-1, False), (2 ** 32, False)):  # jax.random.key(2**32) == key(0)
    config = configuration.apply_overrides(base, {"seed": seed})
    if ok:
      configuration.validate(config)
    else:
      with pytest.raises(configuration.ConfigError, match=re.escape(f"seed={seed} must be an integer in 0 ... ")):
        configuration.validate(config)
  yarn = {"model.position": "rope", "model.rope_scaling": "yarn", "model.rope_factor": 2.0,
          "model.rope_original_len": -1}
  with pytest.raises(configuration.ConfigError, match=re.escape("model.rope_original_len=-1 must be an integer >= 0")):
    configuration.validate(configuration.apply_overrides(base, yarn))


def _from_dict(**changes):
  """tiny's config rebuilt from a plain dict, as a config file that reads YAML or JSON builds it: ml_collections
  then checks no value's kind. `changes`: {'train.steps': 3} as train__steps=3."""
  import ml_collections
  values = tiny_config().to_dict()
  for name, value in changes.items():
    *parents, leaf = name.split("__")
    node = values
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return ml_collections.ConfigDict(values)


def _wrong_kinds(default):
  """Values of another kind than `default`'s, as a config file might hold them."""
  if isinstance(default, bool):
    return ["false", "true", 1, 0]
  if isinstance(default, int):
    return [2.5, "1", [1], True]
  if isinstance(default, float):
    return ["1e-3", True, [1.0]]
  return [1, True, ["rope"]]


def test_every_field_must_hold_its_schema_kind_in_a_config_built_from_a_dict():
  """A ConfigDict built from a dict takes any value: train.embedding.freeze='false' trained a frozen table (a
  non-empty string is true), learning_rate='1e-3' was a TypeError inside validate, mesh.data=2.5 passed. Each is
  refused in the line a --config.FIELD override of the wrong kind gets; an int where the schema has a float, and
  mesh.distributed's three strings, are still taken."""
  reference = configuration.flatten(configuration.reference_config())
  assert {type(v) for v in reference.values()} == {bool, int, float, str}  # the kinds _wrong_kinds covers
  for name, default in reference.items():
    for bad in _wrong_kinds(default):
      with pytest.raises(configuration.ConfigError) as err:
        configuration.validate(_from_dict(**{name.replace(".", "__"): bad}))
      kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[type(default)]
      assert str(err.value) == f"{name}={bad!r}: expected {kind}, got a {type(bad).__name__}", (name, bad)
  configuration.validate(_from_dict(train__learning_rate=1, model__position="rope", model__rope_factor=2))  # a number
  for distributed in ("auto", "true", "false"):
    configuration.validate(_from_dict(mesh__distributed=distributed))


def test_a_frozen_flag_given_as_the_string_false_never_trains(tmp_path):
  with pytest.raises(configuration.ConfigError, match=re.escape("train.embedding.freeze='false': expected true or "
                                                                "false, got a str")):
    loop.train(_from_dict(train__embedding__freeze="false", train__steps=2), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_a_config_that_lacks_fields_or_is_no_config_dict_is_one_line_naming_what(tmp_path):
  """A get_config() that builds a ConfigDict of a few fields, or replaces a section by one, failed in the trainer
  with a KeyError or AttributeError traceback; a dict, on its first attribute. Refused, naming what it lacks (a
  section that lacks everything once, as 'data.*'), before anything is written."""
  import ml_collections
  config = tiny_config()
  config.model = ml_collections.ConfigDict({"d_model": 64})
  fresh = ml_collections.ConfigDict({"seed": 0, "train": {"steps": 3}})
  fields = configuration.flatten(configuration.reference_config())
  model = sum(name.startswith("model.") for name in fields)
  for bad, start in ((config, f"the config lacks {model - 1} fields of the schema: model.attention, model.char_dim, "),
                     (fresh, f"the config lacks {len(fields) - 2} fields of the schema: data.*, mesh.*, model.*, "
                             f"objective, "),
                     (tiny_config().to_dict(), "the config is a dict, not an ml_collections.ConfigDict: a config "
                                               "file's get_config() must return one")):
    for call in (lambda: loop.train(bad, tmp_path / "run"), lambda: configuration.validate(bad),
                 lambda: configuration.apply_overrides(bad, {"seed": 1})):
      with pytest.raises(configuration.ConfigError) as err:
        call()
      assert str(err.value).startswith(start) and "\n" not in str(err.value), str(err.value)
  assert not (tmp_path / "run").exists()
  section = _from_dict(train=5)
  with pytest.raises(configuration.ConfigError, match=re.escape("train=5: expected a section (an ml_collections."
                                                                "ConfigDict of the fields train.*), got a int")):
    configuration.validate(section)


def test_an_unknown_section_is_named_as_a_section_with_the_sections_there_are():
  config = tiny_config()
  config.extra = {"a": 1}
  with pytest.raises(configuration.ConfigError) as err:
    configuration.validate(config)
  assert str(err.value) == ("unknown config field 'extra.a': there is no section 'extra'; sections: data, mesh, "
                            "model, model.pretrained, train, train.embedding, train.head, train.position")


@pytest.mark.parametrize("overrides,message", [
    # config.json said learned + yarn 8.0, and the model trained unscaled
    ({"model.position": "learned", "model.rope_scaling": "yarn", "model.rope_factor": 8.0},
     "model.rope_scaling='yarn' with model.rope_factor=8 applies to model.position=p_rope or rope only; "
     "model.position='learned' would ignore it: set model.rope_scaling='none' and model.rope_factor=1"),
    ({"model.position": "alibi", "model.rope_factor": 4.0}, "model.rope_factor=4 applies to model.position=p_rope "
                                                             "or rope only; model.position='alibi' would ignore it"),
    # an OverflowError (int32) in the first step, after config.json, checkpoints/ and the tokenizer were written
    ({"model.position": "rope", "model.position_sampling": "randomized", "model.max_position": 3_000_000_000},
     "model.max_position=3000000000 is too large: at most 16,777,216 (2^24: "),
    ({"data.cache_dir": " "}, "data.cache_dir=' ' is blank: give a directory, or \"\" for the default"),
    # an OverflowError tracing the first step (optax's schedules count in int32), after config.json was written
    ({"train.warmup_steps": 3_000_000_000}, "train.warmup_steps=3000000000 is too large: at most 2,147,483,647"),
    ({"train.steps": 2 ** 31, "train.schedule": "linear"}, f"train.steps={2 ** 31} is too large: at most "),
    ({"data.corpus": "bogus"}, "unknown corpus spec 'bogus'; valid specs: wikipedia-sample, lee, passkey, "
                               "text:<path|glob|dir>, hf:<name>[/<config>]"),
    ({"data.corpus": ""}, "unknown corpus spec ''; valid specs: "),
    ({"data.corpus": "text:"}, "data.corpus='text:' lacks the <path|glob|dir> part; the form is text:<path|glob|dir>"),
    ({"data.corpus": "hf:/wikitext-2-raw-v1"}, "data.corpus='hf:/wikitext-2-raw-v1' lacks the <name>[/<config>] part"),
    ({"model.embed_init": "pretrained", "model.pretrained.path": "no-such-vectors.txt"},
     "model.pretrained.path='no-such-vectors.txt': no such file"),
])
def test_errors_that_need_no_data_are_refused_before_the_workdir_exists(tmp_path, monkeypatch, overrides, message):
  """Each of these wrote into the run directory first (a .lock, tokenizer.json, token_counts.npy; a blank cache_dir
  made a directory ' ' in the current one) or trained a model other than its config.json says."""
  monkeypatch.chdir(tmp_path)
  with pytest.raises(configuration.ConfigError) as err:  # (a run of one step, should it start)
    loop.train(tiny_config(**{"train.steps": 1, "train.eval_batches": 1, **overrides}), tmp_path / "run")
  assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)
  assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_rope_scaling_is_taken_by_the_schemes_that_rotate_with_ropes_frequencies():
  for position in ("rope", "p_rope"):
    configuration.validate(tiny_config(**{"model.position": position, "model.rope_scaling": "yarn",
                                          "model.rope_factor": 4.0}))
  with pytest.raises(configuration.ConfigError, match="does not apply to xpos"):  # xpos's own line
    configuration.validate(tiny_config(**{"model.position": "xpos", "model.rope_scaling": "yarn"}))
  configuration.validate(tiny_config(**{"model.position": "rope", "model.position_sampling": "randomized",
                                        "model.max_position": 2 ** 24}))


def test_a_batch_that_does_not_split_over_the_devices_is_refused_before_the_workdir_exists(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", "--config.train.batch_size=7",
               env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert result.returncode == 2 and result.stderr.strip() == \
      "error: train.batch_size=7 is not divisible by the 2 devices of the mesh", result.stderr[-2000:]
  assert not (tmp_path / "run").exists()  # it wrote tokenizer.json and token_counts.npy first


def test_a_warmup_longer_than_the_run_is_a_note(tmp_path, capsys):
  """warmup_steps > steps is legal (a smoke run of a config with a long warmup), but the learning rate never
  reaches its peak nor the schedule's decay: the run says so."""
  loop.train(tiny_config(**{"train.steps": 3, "train.eval_batches": 1, "train.checkpoint_every": 3,
                            "train.eval_every": 3, "model.position": "rope", "model.t5_buckets": 16}),
             tmp_path / "run")
  out = capsys.readouterr().out
  assert ("note: train.warmup_steps=20 is more than train.steps=3: the learning rate warms up for the whole run, to "
          "10% of train.learning_rate at the last step, and the cosine schedule after warmup never starts") in out
  assert ("note: model.t5_buckets=16 is read only by model.position t5, and this run's is 'rope': it changes "
          "nothing in this run") in out  # (`unread_notes`, printed with the other notes)
  # Equal: the last update is step 19's, at 19/20 of the peak: the same note.
  assert configuration.schedule_notes(tiny_config(**{"train.steps": 20})) == [
      "note: train.warmup_steps=20 is equal to train.steps=20: the learning rate warms up for the whole run, to 95% "
      "of train.learning_rate at the last step, and the cosine schedule after warmup never starts"]
  assert configuration.schedule_notes(tiny_config(**{"train.steps": 21})) == []
  # A delayed start of the table past the run's end: the table never moves.
  assert configuration.schedule_notes(tiny_config(**{"train.steps": 30, "train.embedding.freeze_steps": 200})) == [
      "note: train.embedding.freeze_steps=200 is more than train.steps=30: the token table stays frozen for the "
      "whole run"]
  assert configuration.schedule_notes(tiny_config(**{"train.steps": 30, "train.embedding.freeze_steps": 29})) == []


def test_a_set_field_the_model_never_reads_is_a_note_naming_what_reads_it():
  """A value the chosen scheme, objective or optimizer never reads trains the model of the default value while
  config.json records it: a note per such field, none for a default value, a field the run reads, or a value that
  names the same model (model.table_dim equal to d_model)."""
  notes = loop.unread_notes(tiny_config(**{"model.position": "rope", "model.rope_keep_fraction": 0.5,
                                           "model.t5_max_distance": 64, "train.momentum": 0.5}))
  assert notes == [
      "note: train.momentum=0.5 is read only by train.optimizer sgd, and this run's is 'adamw': it changes nothing in "
      "this run",
      "note: model.rope_keep_fraction=0.5 is read only by model.position p_rope, and this run's is 'rope': it "
      "changes nothing in this run",
      "note: model.t5_max_distance=64 is read only by model.position t5, and this run's is 'rope': it changes nothing "
      "in this run"], notes
  assert loop.unread_notes(tiny_config(**{"model.position": "p_rope", "model.rope_keep_fraction": 0.5})) == []
  assert loop.unread_notes(tiny_config(**{"model.position": "rope"})) == []
  assert loop.unread_notes(tiny_config(**{"model.table_dim": 64, "model.d_model": 64, "model.num_heads": 4})) == []
  assert loop.unread_notes(tiny_config(**{"objective": "clm", "data.mlm_mask_rate": 0.5})) == [
      "note: data.mlm_mask_rate=0.5 is read only by objective mlm, and this run's is 'clm': it changes nothing in "
      "this run"]
  # Under char (or byte) data.vocab_size shapes no model but is checked to hold the vocabulary: a note calling it
  # unread came right before the refusal of a value too small.
  for tokenizer in ("char", "byte"):
    assert loop.unread_notes(tiny_config(**{"data.tokenizer": tokenizer, "data.vocab_size": 20})) == []
  # model.combine / pos_dim under a scheme without input channels: the plain model (and a rerun may change them).
  concat = {"model.position": "alibi", "model.combine": "concat", "model.pos_dim": 5}
  assert loop.unread_notes(tiny_config(**concat)) == [
      f"note: model.{f} is read only by a scheme with input channels (learned or sinusoidal), and this run's is "
      f"'alibi': it changes nothing in this run" for f in ("combine='concat'", "pos_dim=5")]
  assert loop.unread_notes(tiny_config(**{**concat, "model.position": "learned"})) == []
  assert {"model.combine", "model.pos_dim"} <= set(loop.unused_fields(
      tiny_config(**concat).to_dict(), tiny_config(**{"model.position": "alibi"}).to_dict()))
  # Every field a rule can list has its own reason, not the catch-all.
  fields = (list(run_fields.SCHEME_FIELDS) + list(run_fields.OPTIMIZER_FIELDS) + [
      *run_fields.CHAR_FIELDS, *run_fields.ROPE_SCALING_FIELDS, *run_fields.MLM_FIELDS, "data.vocab_size",
      "train.min_lr_ratio", *run_fields.FROZEN_TABLE_FIELDS, *run_fields.PRETRAINED_FIELDS, "model.pos_dim",
      "model.max_position", *run_fields.POSITION_GROUP_FIELDS, *run_fields.UNTIED_HEAD_FIELDS,
      *run_fields.PROJECTION_GROUP_FIELDS, *run_fields.LAZY_ROWS_FIELDS])
  config = tiny_config().to_dict()
  assert not [f for f in fields if run_fields.unread_reason(f, config) == "not read by this run's model"]


def test_no_shipped_config_or_sweep_trial_sets_a_field_its_model_never_reads():
  from research import sweeps
  for path in sorted((ROOT / "configs").glob("*.py")):
    if path.name != "__init__.py":
      assert loop.unread_notes(sweeps.load_config_file(path).get_config()) == [], path
  for path in sorted((ROOT / "configs" / "sweeps").glob("*.py")):
    if path.name != "__init__.py":
      sweep = sweeps.load_sweep(path)
      for trial in sweep.trials:
        assert loop.unread_notes(sweeps.trial_config(sweep, trial)) == [], (path, trial.name)


@pytest.mark.slow
def test_corrected_command_runs_after_a_user_error_and_other_shapes_are_refused_in_one_line(tmp_path):
  import shutil
  workdir = f"--workdir={tmp_path / 'run'}"
  train = shutil.which("research-train")  # the console script itself
  assert train, "research-train is not installed"
  run = lambda *args: subprocess.run([train, "--config=configs/tiny.py", workdir, "--config.train.steps=2",  # noqa
                                      "--config.train.eval_batches=1", *args], cwd=ROOT, capture_output=True,
                                     text=True, timeout=300)
  assert run("--config.data.vocab_size=100").returncode == 2
  ok = run()
  assert ok.returncode == 0, ok.stderr[-2000:]
  saved = (tmp_path / "run" / "config.json").read_text()
  refused = run("--config.model.d_model=32", "--config.model.num_heads=2")
  assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr[-2000:]
  assert "model.d_model: 64 (saved) != 32 (current); model.num_heads: 4 (saved) != 2 (current)" in refused.stderr
  assert (tmp_path / "run" / "config.json").read_text() == saved


def test_cli_refuses_a_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("not a directory")
  result = cli("--config=configs/tiny.py", f"--workdir={path}")
  assert result.returncode == 2 and result.stderr.strip() == f"error: workdir '{path}' exists and is not a directory"
  assert path.read_text() == "not a directory"


_MESH_SCRIPT = r"""
import json, os, sys
from research.train import loop
from tests.train_utils import tiny_config
out = {}
base = {"train.steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3, "train.log_every": 1,
        "train.eval_batches": 2, "train.async_checkpoints": False}
for name, (data, fsdp) in {"1x1": (1, 1), "8x1": (8, 1), "2x4": (2, 4)}.items():
  devices = 1 if name == "1x1" else 8
  import jax
  config = tiny_config(**base, **{"mesh.data": data, "mesh.fsdp": fsdp})
  if name == "1x1":
    # The same computation on one device: a mesh over the first device only.
    from research.train import mesh as mesh_lib
    orig = mesh_lib.make_mesh
    mesh_lib.make_mesh = lambda d, f, devices=None: orig(1, 1, jax.devices()[:1])
  loop.train(config, os.path.join(sys.argv[1], name))
  if name == "1x1":
    mesh_lib.make_mesh = orig
  out[name] = [r["loss"] for r in map(json.loads, open(os.path.join(sys.argv[1], name, "metrics.jsonl")))
               if r["split"] == "train"]
# Resume a 2x4 checkpoint on an 8x1 mesh and on 1x8.
for name, (data, fsdp) in {"2x4->8x1": (8, 1), "2x4->1x8": (1, 8)}.items():
  import shutil
  path = os.path.join(sys.argv[1], name)
  shutil.copytree(os.path.join(sys.argv[1], "2x4"), path)
  for step in ("6",):
    shutil.rmtree(os.path.join(path, "checkpoints", step))
  os.remove(os.path.join(path, "summary.json"))
  loop.train(tiny_config(**base, **{"mesh.data": data, "mesh.fsdp": fsdp}), path)
  out[name] = [r["loss"] for r in map(json.loads, open(os.path.join(path, "metrics.jsonl"))) if r["split"] == "train"]
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_same_losses_on_meshes_1x1_8x1_2x4_and_restore_across_meshes(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONPATH": str(ROOT)}
  result = subprocess.run([sys.executable, "-c", _MESH_SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  losses = json.loads(result.stdout.split("RESULT")[1])
  assert len(losses["1x1"]) == 6
  for name in ("8x1", "2x4", "2x4->8x1", "2x4->1x8"):
    np.testing.assert_allclose(losses[name], losses["1x1"], rtol=2e-5, err_msg=name)


def test_the_best_checkpoint_by_validation_loss_is_kept_beside_the_last(tmp_path, monkeypatch):
  losses = iter([3.0, 9.0, 1.0, 2.0])  # valid losses at steps 2, 3, 4, 6

  def fake_evaluate(self, params, ids):
    loss = next(losses)
    return {"loss": loss, "ppl": math.exp(loss), "accuracy": 0.0, "tokens": 1.0, "tokens_per_s": 1.0}

  monkeypatch.setattr(loop.Trainer, "evaluate", fake_evaluate)
  config = tiny_config(**{"train.steps": 6, "train.checkpoint_every": 2, "train.eval_every": 3,
                          "train.keep_checkpoints": 1, "train.async_checkpoints": False})
  loop.train(config, tmp_path)
  with checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=1) as ckpt:
    assert ckpt.best_step() == 4 and ckpt.latest_step() == 6
  kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == [4, 6]
  # eval_every=3 does not divide checkpoint_every=2: every save step is evaluated anyway, so that each checkpoint
  # carries its own validation loss.
  assert [r["step"] for r in read_metrics(tmp_path, "valid")] == [2, 3, 4, 6]


@pytest.mark.slow
def test_the_best_checkpoint_is_the_one_with_the_lowest_real_validation_loss(tmp_path):
  # A learning rate of 1 (after one step at 0: warmup) wrecks the model after its first real update, so real
  # validation losses rise after step 1 and the best checkpoint is not the last one.
  config = tiny_config(**{"train.steps": 4, "train.warmup_steps": 1, "train.learning_rate": 1.0,
                          "train.schedule": "constant", "train.checkpoint_every": 1, "train.eval_every": 1,
                          "train.keep_checkpoints": 1, "train.eval_batches": 2, "train.async_checkpoints": False})
  loop.train(config, tmp_path)
  losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path, "valid")}
  assert sorted(losses) == [1, 2, 3, 4]
  best = min(losses, key=losses.get)
  assert best != 4 and losses[4] > losses[best] + 0.1
  with checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=1) as ckpt:
    assert ckpt.best_step() == best and ckpt.latest_step() == 4
    assert ckpt.read_metadata(best)["metrics"]["valid_loss"] == pytest.approx(losses[best])
  kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == [best, 4]
  from research.evaluate import extrapolation
  assert extrapolation.evaluate_run(tmp_path, (1,))["checkpoint_step"] == best


PUBLIC_FIELDS = (
    "seed", "objective", "data.corpus", "data.tokenizer", "data.vocab_size", "data.seq_len", "model.position",
    "model.combine", "model.tie_embeddings", "model.d_model", "model.num_layers", "model.num_heads", "model.mlp_dim",
    "model.dropout", "model.embedding_dropout", "model.dtype", "train.steps", "train.batch_size",
    "train.learning_rate", "train.optimizer", "train.schedule", "train.warmup_steps", "train.weight_decay",
    "train.checkpoint_every", "train.eval_every", "mesh.data", "mesh.fsdp")


@pytest.mark.parametrize("name", ["default", "clm", "mlm", "tiny", "quickstart"])
def test_every_config_file_has_the_public_fields_and_validates(name):
  import importlib
  config = importlib.import_module(f"configs.{name}").get_config()
  fields = configuration.flatten(config)
  assert [f for f in PUBLIC_FIELDS if f not in fields] == []
  configuration.validate(config)  # raises on any bad value or unknown field
  assert config.objective == ("mlm" if name == "mlm" else "clm")


def test_a_token_cache_with_ids_outside_the_vocabulary_is_refused_naming_the_id(tmp_path, monkeypatch):
  from research.data import batches as batches_lib
  real = batches_lib.build_or_load_cache

  def corrupted(*args, **kwargs):  # e.g. a cache written for a bigger tokenizer
    splits = dict(real(*args, **kwargs))
    valid = np.array(splits["valid"])
    valid[7] = 512
    return {**splits, "valid": valid}

  monkeypatch.setattr(batches_lib, "build_or_load_cache", corrupted)
  with pytest.raises(configuration.ConfigError, match=r"token id 512 is outside \[0, 512\) \(the vocabulary size\) "
                                                      r"in the valid split"):
    loop.train(tiny_config(**{"train.steps": 1}), tmp_path)
  assert not (tmp_path / "checkpoints").exists()


def test_progress_bar_shows_step_and_eta_on_a_terminal_and_is_off_otherwise(monkeypatch):
  import io
  monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
  assert loop._progress(100, 10).disable
  terminal = io.StringIO()
  terminal.isatty = lambda: True
  monkeypatch.setattr(sys, "stderr", terminal)
  bar = loop._progress(100, 10)
  bar.set_postfix(loss="3.210", tok_s="4000")
  bar.update(5)
  text, disabled = str(bar), bar.disable
  bar.close()
  assert not disabled and "15/100" in text and "<" in text  # step/total and elapsed<remaining (the ETA)
  assert "loss=3.210" in text and "tok_s=4000" in text


def test_a_log_window_open_at_a_checkpoint_resumes_with_its_steps_and_lines_read_their_own_figures(tmp_path):
  """A checkpoint between two train lines (checkpoint_every 5, log_every 4): a run resumed from it writes the same
  step-6 line as the uninterrupted run (the window's sums travel in the checkpoint; it averaged step 6 alone). With a
  z-loss, a line's ppl is exp(its nll), not exp(loss + z-loss); nll and accuracy are window means like the loss; and
  a valid line's lr is its own step's rate (it was the last logged train line's, or 0)."""
  import shutil
  settings = {"train.steps": 6, "train.checkpoint_every": 5, "train.log_every": 4, "train.eval_every": 3,
              "train.warmup_steps": 2, "train.keep_checkpoints": 5, "train.eval_batches": 1, "train.z_loss": 0.01,
              "train.async_checkpoints": False}
  loop.train(tiny_config(**settings), tmp_path / "whole")
  shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")
  (tmp_path / "resumed" / "summary.json").unlink()
  loop.train(tiny_config(**settings), tmp_path / "resumed")
  figures = ("loss", "nll", "ppl", "accuracy", "lr")
  whole, resumed = ([{k: r[k] for k in ("step", *figures)} for r in read_metrics(tmp_path / d)]
                    for d in ("whole", "resumed"))
  assert [r["step"] for r in whole] == [4, 6] and resumed == whole
  summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("whole", "resumed")]
  assert summaries[0]["train_loss"] == summaries[1]["train_loss"] == whole[-1]["loss"]
  schedule = optim.make_schedule(tiny_config(**settings).train)
  for line in whole:
    assert line["ppl"] == pytest.approx(math.exp(line["nll"]), rel=1e-6) and line["loss"] > line["nll"]
    assert line["lr"] == pytest.approx(float(schedule(line["step"] - 1)))
  valid = read_metrics(tmp_path / "whole", split="valid")
  assert [r["step"] for r in valid] == [3, 5, 6]
  for line in valid:
    assert line["lr"] == pytest.approx(float(schedule(line["step"] - 1))) and line["lr"] > 0


def test_the_best_validation_is_the_lowest_loss_the_log_holds_up_to_the_step(tmp_path):
  log = loop.MetricsLog(tmp_path, resume_step=0)
  for step, loss in ((100, 3.0), (200, 2.5), (300, 2.5), (400, 2.9)):
    log.write(loop.valid_record(step, {"loss": loss, "ppl": math.exp(loss), "accuracy": 0.1}, lr=1e-3))
    log.write(loop.train_record(step, {"loss": 0.1, "lr": 1e-3, "tokens_per_s": 1.0}, 1000.0 * step))
  log.close()
  final = {"loss": 2.9, "ppl": math.exp(2.9)}
  # Train lines (whose loss is lower) never count; the later of two equal losses wins, as in Orbax's ranking.
  assert loop.best_validation(log.path, 400, final) == {"best_valid_loss": 2.5, "best_valid_ppl": math.exp(2.5),
                                                        "best_step": 300}
  # Lines past the step (a log not yet truncated by a resume) do not count either.
  assert loop.best_validation(log.path, 150, final)["best_step"] == 100
  # No validation line at all: the final evaluation is the best.
  assert loop.best_validation(tmp_path / "absent.jsonl", 7, final) == {
      "best_valid_loss": 2.9, "best_valid_ppl": math.exp(2.9), "best_step": 7}


@pytest.mark.parametrize("losses", [(3.0, 2.5, 2.5, 2.9), (2.0, 2.0, 2.0, 2.0), (2.5, 2.0, 3.0, 2.0)])
def test_the_best_validation_names_the_checkpoint_orbax_ranks_best_and_keeps_on_a_tie(tmp_path, losses):
  """summary.json's best_step is the checkpoint research-evaluate --checkpoint=best and research-analyze read: the
  real Checkpointer's best_step() after the trainer's retention (keep 2 + the best), ties included."""
  log = loop.MetricsLog(tmp_path, resume_step=0)
  with checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=2, async_save=False) as ckpt:
    for i, loss in enumerate(losses):
      step = 10 * (i + 1)
      log.write(loop.valid_record(step, {"loss": loss, "ppl": math.exp(loss), "accuracy": 0.1}, lr=1e-3))
      ckpt.save(step, {"w": np.full(2, float(i), np.float32)}, {"i": i}, metrics={"valid_loss": loss})
    ckpt.wait()
    best_step, kept = ckpt.best_step(), ckpt.all_steps()
  log.close()
  final = {"loss": losses[-1], "ppl": math.exp(losses[-1])}
  summary = loop.best_validation(log.path, 10 * len(losses), final)
  assert summary["best_step"] == best_step and best_step in kept
  assert summary["best_valid_loss"] == min(losses)


def test_train_lines_average_only_the_steps_that_scored_a_target(tmp_path):
  """A batch-1 MLM over rows of 6 tokens selects no target in many steps; their loss 0 is a placeholder that was
  averaged into the train line (a loss far below the validation's). Each line is now the mean of the steps of its
  window that scored, recomputed here from a run of the same model that logs every step; a window without one is
  null, never 0."""
  overrides = {"objective": "mlm", "data.seq_len": 6, "train.batch_size": 1, "train.steps": 40,
               "train.eval_every": 40, "train.checkpoint_every": 40, "train.eval_batches": 1,
               "train.async_checkpoints": False, "train.warmup_steps": 0}
  loop.train(tiny_config(**overrides, **{"train.log_every": 1}), tmp_path / "every")
  loop.train(tiny_config(**overrides, **{"train.log_every": 4}), tmp_path / "window")
  steps = {r["step"]: r for r in read_metrics(tmp_path / "every")}
  assert any(r["tokens"] == 0 for r in steps.values()) and any(r["tokens"] > 0 for r in steps.values())
  assert all((r["loss"] is None) == (r["tokens"] == 0) for r in steps.values())
  lines = read_metrics(tmp_path / "window")
  assert [r["step"] for r in lines] == list(range(4, 41, 4))
  for line in lines:
    scored = [steps[s] for s in range(line["step"] - 3, line["step"] + 1) if steps[s]["tokens"] > 0]
    for key in ("loss", "nll", "accuracy"):
      expected = sum(r[key] for r in scored) / len(scored) if scored else None
      assert line[key] == (pytest.approx(expected, rel=1e-6) if scored else None), (line["step"], key)


def test_a_validation_that_scored_no_target_is_never_the_best_checkpoint(tmp_path):
  """A validation with `tokens` 0 (a tiny split; an MLM that masked none of it) has the placeholder loss 0: it ranked
  first for summary.json's best and for Orbax's ranking, so research-evaluate --checkpoint=best read a checkpoint
  chosen on nothing. Both now rank it last (`loop.ranking_loss`), and agree."""
  records = [(10, 3.0, 500.0), (20, 0.0, 0.0), (30, 2.5, 500.0), (40, 0.0, 0.0)]
  log = loop.MetricsLog(tmp_path, resume_step=0)
  with checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=4, async_save=False) as ckpt:
    for step, loss, tokens in records:
      valid = {"loss": loss, "ppl": math.exp(loss), "accuracy": 0.0, "tokens": tokens}
      log.write(loop.valid_record(step, valid, lr=1e-3))
      ckpt.save(step, {"w": np.full(2, float(step), np.float32)}, {"s": step},
                metrics={"valid_loss": loop.ranking_loss(valid)})
    ckpt.wait()
    best_step = ckpt.best_step()
  log.close()
  summary = loop.best_validation(log.path, 40, {"loss": 0.0, "ppl": 1.0, "tokens": 0.0})
  assert summary["best_step"] == best_step == 30 and summary["best_valid_loss"] == 2.5
  # What Orbax wrote of the ranking is standard JSON (no Infinity), which any reader takes.
  written = [p for p in (tmp_path / "checkpoints").rglob("*") if p.name in ("metrics", "metadata") and p.is_file()]
  assert written
  for path in written:
    json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path}: {name} is not JSON"))
  # Nothing scored at all: the latest step, as on any tie.
  assert loop.best_validation(tmp_path / "absent.jsonl", 7, {"loss": 0.0, "ppl": 1.0, "tokens": 0.0})["best_step"] == 7


def test_the_state_a_device_holds_is_counted_exactly_before_anything_allocates():
  """`state_bytes_per_device` (from shapes alone) against the bytes device 0 really holds of an initialized state,
  whose gradients are one more copy of the parameters; for AdamW and for Adafactor's factored moments."""
  for overrides in ({}, {"model.table_dim": 16, "train.optimizer": "adafactor"}):
    trainer = loop.Trainer.build(tiny_config(**overrides), 512)
    state = trainer.init_state()
    device = trainer.mesh.devices.flat[0]
    held = sum(s.data.nbytes for leaf in jax.tree.leaves(state) for s in leaf.addressable_shards
               if s.device == device)
    params = sum(s.data.nbytes for leaf in jax.tree.leaves(state.params) for s in leaf.addressable_shards
                 if s.device == device)
    assert loop.state_bytes_per_device(trainer.abstract_state, trainer.state_shardings) == held + params


def test_a_model_too_large_for_the_machine_is_one_line_before_anything_allocates(tmp_path):
  """d_model 65,536 gives ~10^11 parameters: terabytes of state on any machine. Refused, naming the fields and the
  sizes, before config.json is written or anything compiles (the eval_shape is abstract)."""
  have, _ = loop.device_memory_bytes(jax.devices()[0])
  assert have is not None and have > 0  # MemAvailable on a Linux CPU host
  config = tiny_config(**{"model.d_model": 65536, "model.mlp_dim": 262144, "train.steps": 2})
  start = time.time()
  with pytest.raises(configuration.ConfigError) as info:
    loop.train(config, tmp_path / "run")
  message = str(info.value)
  assert message.startswith("the model does not fit: ") and "model.d_model=65536" in message, message
  assert "model.mlp_dim=262144" in message and re.search(r"this host has [\d.]+ GiB", message), message
  assert not (tmp_path / "run" / "config.json").exists()
  assert time.time() - start < 120


def test_a_huge_positional_table_is_refused_naming_the_parameter_not_only_the_block_sizes(tmp_path):
  """cope_max_pos 10^9 makes each block's CoPE table 10^9 × head_dim: the line names that parameter and its shape
  (the block fields it lists are all small)."""
  trainer = loop.Trainer.build(tiny_config(**{"model.position": "cope", "model.cope_max_pos": 10 ** 9}), 512)
  with pytest.raises(configuration.ConfigError) as info:
    trainer.check_memory()
  message = str(info.value)
  assert re.search(r"the largest, block_\d+/\S*position_embed\S* of shape \(1000000000, \d+\), holds ", message), message


def test_an_absurd_batch_is_refused_naming_train_batch_size_before_anything_compiles(tmp_path):
  config = tiny_config(**{"train.batch_size": 2 ** 40, "train.steps": 2})
  with pytest.raises(configuration.ConfigError) as info:
    loop.train(config, tmp_path / "run")
  assert str(info.value).startswith(f"train.batch_size={2 ** 40} does not fit: the residual stream"), str(info.value)
  assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("overrides", [{"model.remat": "block"}, {"train.grad_accum": 2, "model.combine": "concat",
                                                                  "model.position": "learned", "model.pos_dim": 16}])
def test_the_residual_stream_bound_is_below_what_the_compiled_step_allocates(overrides):
  """`residual_stream_bytes` refuses batches as a lower bound: XLA's own temporary buffers for the compiled train
  step hold at least that (with remat too, which keeps each block's input)."""
  trainer = loop.Trainer.build(tiny_config(**{"train.batch_size": 8, **overrides}), 512)
  B, L = trainer.config.train.batch_size, trainer.config.data.seq_len
  ints = jax.ShapeDtypeStruct((B, L), np.int32)
  batch = {"inputs": ints, "targets": ints, "positions": ints, "weights": jax.ShapeDtypeStruct((B, L), np.float32)}
  compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
  bound = loop.residual_stream_bytes(B // trainer.config.train.grad_accum, L, trainer.model.cfg)
  assert 0 < bound <= compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("overrides", [{}, {"model.table_dim": 16}, {"model.tie_embeddings": False},
                                       {"model.combine": "concat", "model.position": "learned", "model.pos_dim": 16}])
def test_the_config_lower_bound_never_exceeds_the_real_parameter_count(overrides):
  trainer = loop.Trainer.build(tiny_config(**overrides), 512)
  real = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state.params))
  assert 0.5 * real <= loop.matrix_params(trainer.model.cfg) <= real  # a bound, and not a loose one


def test_a_model_absurdly_deep_is_refused_from_its_config_without_tracing_every_layer():
  """100,000 layers: jax.eval_shape would trace each one for minutes (and the tracing's own memory would shrink
  what the check measures); the config's lower bound refuses it at once."""
  trainer = loop.Trainer.build(tiny_config(**{"model.num_layers": 100_000}), 512)
  start = time.time()
  with pytest.raises(configuration.ConfigError, match=r"at least [\d,]+ parameters .* and their gradients alone"):
    trainer.check_memory()
  assert time.time() - start < 10 and "abstract_state" not in trainer.__dict__  # never traced


def test_a_validation_split_that_scores_nothing_gets_a_note(tmp_path, capsys):
  """An MLM on a tiny corpus with a low select rate masks no validation token: the trainer's valid_loss 0 and
  valid_ppl 1 would read as a perfect model, so a note says they mean nothing."""
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(f"line {i} of a very small corpus about cats and dogs" for i in range(12)) + "\n")
  config = tiny_config(**{"objective": "mlm", "data.corpus": f"text:{corpus}", "data.tokenizer": "word",
                          "data.vocab_size": 64, "data.mlm_select_rate": 0.001, "train.steps": 2,
                          "data.seq_len": 8,  # windows the 13-token split fills (a shorter one is n/a for that)
                          "train.eval_every": 2, "train.checkpoint_every": 2, "train.log_every": 1})
  summary = loop.train(config, tmp_path / "run")
  out = capsys.readouterr().out
  assert summary["valid_ppl"] == 1.0 and summary["valid_loss"] == 0.0  # nothing scored (the seed is fixed)
  assert "note: the validation split" in out and "gave no target to score" in out and "MLM" in out, out
  # research-evaluate on the same run: n/a with the reason, not a perfect 1.00 (exp of 0 / 0 tokens).
  from research.evaluate import extrapolation
  result = extrapolation.evaluate_run(tmp_path / "run", [1])["results"][0]
  assert result["ppl"] is None and result["tokens"] == 0 and "no target to score in the valid split" in result["note"]
  normal = loop.train(tiny_config(**{"train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2}),
                      tmp_path / "normal")
  assert normal["valid_ppl"] > 1 and "gave no target to score" not in capsys.readouterr().out
