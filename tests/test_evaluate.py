"""Length-extrapolation evaluation (research/evaluate, research-evaluate) on tiny runs trained once per module."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from research.analysis import positions
from research.embeddings import relative
from research.evaluate import extrapolation, previous
from research.report import build_report
from research.train import checkpoint as checkpoint_lib
from research.train import loop
from tests.train_utils import ROOT, check_attention_bounds, check_pictures, cli, tiny_config

TRAIN_LEN = 32
SETTINGS = {"train.steps": 30, "train.warmup_steps": 5, "train.eval_every": 10, "train.checkpoint_every": 10,
            "train.log_every": 10, "data.seq_len": TRAIN_LEN, "train.eval_batches": 2, "train.async_checkpoints": False}
FAKE_VALID_LOSSES = {10: 3.0, 20: 1.0, 30: 2.0}  # the learned run's best checkpoint is step 20, its last step 30


def _train(workdir, **overrides):
  loop.train(tiny_config(**{**SETTINGS, **overrides}), workdir)
  return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{position: run directory} for learned (best checkpoint != last), alibi and rope, ~30 steps each."""
  root = tmp_path_factory.mktemp("runs")
  out = {}
  with pytest.MonkeyPatch.context() as mp:
    # The trainer's validation loss only ranks checkpoints; faking it makes "best" and "last" differ for certain.
    calls = iter(sorted(FAKE_VALID_LOSSES))

    def fake_evaluate(self, params, ids):
      loss = FAKE_VALID_LOSSES[next(calls)]
      return {"loss": loss, "ppl": math.exp(loss), "accuracy": 0.0, "tokens": 1.0, "tokens_per_s": 1.0}

    mp.setattr(loop.Trainer, "evaluate", fake_evaluate)
    out["learned"] = _train(root / "learned", **{"model.position": "learned"})
  for position in ("alibi", "rope"):
    out[position] = _train(root / position, **{"model.position": position})
  return out


def _targets(workdir, split="valid"):
  """Target tokens of a split under the CLM objective: every token but the first is predicted once."""
  return len(extrapolation.load_run(workdir).splits[split]) - 1


@pytest.mark.slow
@pytest.mark.parametrize("position", ["learned", "alibi"])
@pytest.mark.parametrize("mode,stride,multiples", [("nonoverlapping", None, (1, 2, 4)), ("sliding", 16, (1, 2))])
def test_every_target_token_is_scored_once_and_lengths_beyond_a_learned_table_are_na(runs, position, mode, stride,
                                                                                      multiples):
  workdir = runs[position]
  report = extrapolation.evaluate_run(workdir, multiples, mode=mode, stride=stride)
  assert report["train_len"] == TRAIN_LEN and report["mode"] == mode and report["stride"] == stride
  assert report["rope_scaling"] is None and report["split"] == "valid"
  targets = _targets(workdir)
  assert len(report["results"]) == len(multiples)
  for r, multiple in zip(report["results"], multiples):
    assert r["multiple"] == multiple and r["length"] == multiple * TRAIN_LEN
    if position == "learned" and multiple > 1:
      assert set(r) == {"multiple", "length", "ppl", "tokens", "note"}
      assert r["ppl"] is None and r["tokens"] == 0
      assert r["note"] == f"learned positions are defined up to {TRAIN_LEN} tokens (model.max_len)"
    else:
      assert set(r) == {"multiple", "length", "ppl", "tokens"}
      # Same count at every length and in both modes: no token is dropped at a window edge or scored twice.
      assert r["tokens"] == targets and math.isfinite(r["ppl"]) and r["ppl"] > 1
  saved = json.loads((workdir / "eval" / "extrapolation.json").read_text())
  assert saved == json.loads(json.dumps(report))


@pytest.mark.slow
def test_a_length_the_split_cannot_fill_one_window_of_is_na_not_a_shorter_lengths_score(tmp_path):
  """A split of N targets holds one window of L only while L <= N; past it every length would score the same partial
  window (one number repeated under 16x and 32x). The longest length that fits is scored on every target."""
  import gensim.test.utils
  lines = Path(gensim.test.utils.datapath("lee_background.cor")).read_text().splitlines()[:30]
  (tmp_path / "small.txt").write_text("\n".join(lines) + "\n")  # real text; its valid split is 2 documents
  run = _train(tmp_path / "run", **{"model.position": "alibi", "data.corpus": f"text:{tmp_path / 'small.txt'}",
                                    "train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2})
  targets = _targets(run)
  fits, beyond = targets // TRAIN_LEN, targets // TRAIN_LEN + 1
  report = extrapolation.evaluate_run(run, (fits, beyond, 2 * beyond))
  scored, *unfilled = report["results"]
  assert scored["tokens"] == targets and math.isfinite(scored["ppl"])
  for r in unfilled:
    assert r["ppl"] is None and r["tokens"] == 0
    assert r["note"] == (f"the valid split holds {targets} targets, fewer than one window of {r['length']} (it "
                         f"would be scored at a shorter length)")


def test_the_short_split_rule_counts_what_a_window_holds():
  # A CLM window of L inputs scores L targets of stream[1:]; an MLM row holds L - 2 stream tokens.
  assert extrapolation.short_split_note("clm", 65, 64, "valid") is None
  assert "holds 63 targets, fewer than one window of 64" in extrapolation.short_split_note("clm", 64, 64, "valid")
  assert extrapolation.short_split_note("mlm", 62, 64, "test") is None
  assert "test split holds 61 tokens" in extrapolation.short_split_note("mlm", 61, 64, "test")


@pytest.mark.slow
def test_sliding_windows_see_more_context_than_nonoverlapping_ones(runs):
  # At 1× a sliding window scores each token after at least train_len - stride tokens of context, a nonoverlapping
  # one scores the first tokens of every window with almost none: the trained model must do better with context.
  plain = extrapolation.evaluate_run(runs["alibi"], (1,))["results"][0]["ppl"]
  sliding = extrapolation.evaluate_run(runs["alibi"], (1,), mode="sliding", stride=8)["results"][0]["ppl"]
  assert sliding < plain


@pytest.mark.slow
def test_sliding_mode_without_a_stride_slides_by_half_the_training_length(runs):
  default = extrapolation.evaluate_run(runs["alibi"], (1,), mode="sliding")
  assert default["stride"] == TRAIN_LEN // 2
  half, whole = (extrapolation.evaluate_run(runs["alibi"], (1,), mode="sliding", stride=s)["results"][0]
                 for s in (TRAIN_LEN // 2, TRAIN_LEN))
  assert default["results"][0] == half and half["ppl"] != pytest.approx(whole["ppl"], rel=1e-6)


@pytest.mark.slow
def test_best_and_last_checkpoints(runs):
  workdir = runs["learned"]
  with checkpoint_lib.Checkpointer(workdir / "checkpoints", keep=10, async_save=False) as ckpt:
    assert (ckpt.best_step(), ckpt.latest_step()) == (20, 30)
  best = extrapolation.evaluate_run(workdir, (1,), checkpoint="best")
  last = extrapolation.evaluate_run(workdir, (1,), checkpoint="last")
  assert best["checkpoint_step"] == 20 and last["checkpoint_step"] == 30
  assert (best["checkpoint"], last["checkpoint"]) == ("best", "last")  # the choice, for research-report's staleness
  assert json.loads((workdir / "eval" / "extrapolation.json").read_text())["checkpoint"] == "last"
  assert best["results"][0]["ppl"] != pytest.approx(last["results"][0]["ppl"], rel=1e-6)  # other parameters
  assert extrapolation.evaluate_run(workdir, (1,))["checkpoint_step"] == 20  # "best" is the default
  with pytest.raises(extrapolation.EvaluationError, match="checkpoint='first' is not one of best, last"):
    extrapolation.evaluate_run(workdir, (1,), checkpoint="first")


@pytest.mark.slow
def test_cli_prints_the_table_and_writes_the_file(runs):
  workdir = runs["learned"]
  result = cli("experiments.evaluate", f"--workdir={workdir}", "--mode=sliding", "--stride=16", "--lengths=1,2")
  assert result.returncode == 0, result.stderr[-2000:]
  saved = json.loads((workdir / "eval" / "extrapolation.json").read_text())
  assert saved["mode"] == "sliding" and saved["stride"] == 16 and [r["multiple"] for r in saved["results"]] == [1, 2]
  lines = result.stdout.strip().splitlines()
  assert lines[0].split() == ["multiple", "length", "ppl", "tokens"] and len(lines) == 3
  assert lines[1].split() == ["1", str(TRAIN_LEN), f"{saved['results'][0]['ppl']:.2f}", str(_targets(workdir))]
  assert lines[2].split() == ["2", str(2 * TRAIN_LEN), "n/a", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--workdir={missing}"], "error: '{missing}' is not a run directory (no config.json)"),
    (["--workdir={alibi}", "--lengths=1,two"], "error: --lengths=1,two must be integers"),
    (["--workdir={alibi}", "--lengths=0,1"], "error: lengths=[0, 1] must be positive multiples of the training "
                                             "length"),
    (["--workdir={alibi}", "--rope_scaling=yarn"], "error: --rope_scaling=yarn needs a run whose scheme scales "
                                                   "RoPE's frequencies (rope, p_rope), but '{alibi}' was trained with "
                                                   "model.position='alibi', which does not"),
])
def test_cli_errors_are_one_line_with_status_2(runs, tmp_path, args, message):
  paths = {"missing": tmp_path / "no_such_run", "alibi": runs["alibi"]}
  result = cli("experiments.evaluate", *(a.format(**paths) for a in args))
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.strip() == message.format(**paths), result.stderr[-2000:]
  assert not (runs["alibi"] / "eval" / "extrapolation_yarn.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("position", ["alibi", "learned"])
def test_rope_scaling_on_a_run_without_rope_names_its_scheme(runs, position):
  with pytest.raises(extrapolation.EvaluationError, match=f"was trained with model.position='{position}'"):
    extrapolation.evaluate_run(runs[position], (1, 2), rope_scaling="linear")
  assert not (runs[position] / "eval" / "extrapolation_linear.json").exists()


@pytest.fixture(scope="module")
def rope_plain(runs):
  return extrapolation.evaluate_run(runs["rope"], (1, 2))


# Evaluation on 4 simulated CPU devices (XLA_FLAGS must be set before jax is imported: a subprocess). Batches of
# 3 rows (96 tokens at T=32, 1 row at 2T) must be padded to the 4 devices; the MLM case checks that the padding
# leaves the masks of the real rows alone, and that batches of 3 rows on the mesh score the masks of one batch of all 7
# rows on one device (an untrained encoder: masking, not learning, is under test).
FOUR_DEVICES = """
import json, sys
import jax, numpy as np
from research.evaluate import extrapolation
from research.model.transformer import Transformer
from research.train import configuration
from tests.train_utils import tiny_config
report = extrapolation.evaluate_run(sys.argv[1], (1, 2), max_tokens_per_batch=96, output="mesh4.json")
run = extrapolation.load_run(sys.argv[1])
config = tiny_config(**{"objective": "mlm", "data.seq_len": 16, "model.position": "alibi"})
model_cfg = configuration.model_config(config, 64)
params = Transformer(model_cfg).init(jax.random.key(0), np.zeros((1, 16), np.int32))["params"]
ids = np.random.default_rng(0).integers(5, 64, 14 * 7).astype(np.uint16)
mlm = [extrapolation.split_perplexity(extrapolation.LoadedRun(config, model_cfg, params, 0, {}, mesh=mesh),
                                      model_cfg, ids, 16, max_tokens_per_batch=tokens)[0]
       for mesh, tokens in ((None, 16 * 7), (extrapolation.evaluation_mesh(config), 48))]
print(json.dumps({"devices": jax.device_count(), "mesh": dict(run.mesh.shape), "mlm": mlm,
                  "table_devices": len(run.params["token_embed"]["embedding"].sharding.device_set),
                  "results": report["results"]}))
"""


@pytest.mark.slow
def test_on_four_devices_evaluation_uses_the_mesh_and_gives_the_single_device_perplexity(runs, rope_plain):
  import os
  import subprocess
  import sys
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(runs["rope"])], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["devices"] == 4 and got["mesh"] == {"data": 4, "fsdp": 1} and got["table_devices"] == 4
  for four, one in zip(got["results"], rope_plain["results"]):
    assert four["tokens"] == one["tokens"] and four["ppl"] == pytest.approx(one["ppl"], rel=1e-5)
  assert got["mlm"][1] == pytest.approx(got["mlm"][0], rel=1e-5)
  assert json.loads((runs["rope"] / "eval" / "mesh4.json").read_text())["results"] == got["results"]


@pytest.mark.slow
@pytest.mark.parametrize("scaling", ["linear", "ntk", "yarn"])
def test_rope_scaling_switched_on_at_evaluation_and_reported(runs, rope_plain, scaling):
  workdir = runs["rope"]
  scaled = extrapolation.evaluate_run(workdir, (1, 2), rope_scaling=scaling)
  assert json.loads((workdir / "eval" / f"extrapolation_{scaling}.json").read_text()) == json.loads(
      json.dumps(scaled))
  assert scaled["rope_scaling"] == scaling and scaled["rope_factor"] is None
  assert json.loads((workdir / "eval" / "extrapolation.json").read_text())["rope_scaling"] is None  # not overwritten
  # Factor "auto" = the multiple: at 1× nothing is scaled, at 2× the frequencies change.
  assert scaled["results"][0]["ppl"] == pytest.approx(rope_plain["results"][0]["ppl"], rel=1e-6)
  # (Barely trained, the model hardly uses low frequencies, which NTK changes most: differences can be ~1e-5.)
  assert scaled["results"][1]["ppl"] != pytest.approx(rope_plain["results"][1]["ppl"], rel=1e-7, abs=0)
  assert scaled["results"][1]["tokens"] == rope_plain["results"][1]["tokens"] == _targets(workdir)

  # The report of the run directory shows the scaled evaluation as its own row.
  report = build_report(workdir)
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
          for line in report.table.splitlines() if line.startswith("| rope")}
  row = rows[f"rope, rope_scaling={scaling}"]
  assert row[3].strip("*") == f"{scaled['results'][1]['ppl']:.2f}"
  assert rows["rope"][3].strip("*") == f"{rope_plain['results'][1]['ppl']:.2f}"


def test_a_learned_table_longer_than_the_training_length_reports_untrained_lengths_as_na(tmp_path):
  workdir = _train(tmp_path / "long_table", **{"model.position": "learned", "model.max_len": 4 * TRAIN_LEN,
                                               "train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2})
  results = extrapolation.evaluate_run(workdir, (1, 2, 4, 8))["results"]
  assert results[0]["ppl"] is not None
  assert [r["ppl"] for r in results[1:]] == [None, None, None]
  assert "beyond 32 were never trained (model.max_len=128 > data.seq_len=32)" in results[1]["note"]
  assert "defined up to 128 tokens" in results[3]["note"]


def _mlm_run(seq_len=16):
  """A LoadedRun of an untrained tiny encoder (masking, not learning, is under test)."""
  import jax
  from research.model.transformer import Transformer
  from research.train import configuration
  config = tiny_config(**{"objective": "mlm", "data.seq_len": seq_len, "model.position": "alibi"})
  model_cfg = configuration.model_config(config, 64)
  params = Transformer(model_cfg).init(jax.random.key(0), jax.numpy.zeros((1, seq_len), "int32"))["params"]
  return extrapolation.LoadedRun(config, model_cfg, params, 0, {}), config, model_cfg, params


def test_mlm_evaluation_draws_other_masks_in_every_row_and_the_same_on_a_rerun():
  import numpy as np
  run, config, model_cfg, params = _mlm_run()
  chunk = np.random.default_rng(0).integers(5, 64, 14)  # seq_len − 2: every [CLS] chunk [SEP] row is identical
  one, four = chunk.astype(np.uint16), np.tile(chunk, 4).astype(np.uint16)
  # With one key for every row (or every batch of one row), four identical rows would score exactly like one.
  for rows in (1, 4):
    ppl_one, _ = extrapolation.split_perplexity(run, model_cfg, one, 16, max_tokens_per_batch=16 * rows)
    ppl_four, _ = extrapolation.split_perplexity(run, model_cfg, four, 16, max_tokens_per_batch=16 * rows)
    assert ppl_four != ppl_one
    assert extrapolation.split_perplexity(run, model_cfg, four, 16, max_tokens_per_batch=16 * rows)[0] == ppl_four
  # The trainer's validation: the same property, through Trainer.evaluate.
  trainer = loop.Trainer.build(config, 64)
  state = trainer.init_state()
  losses = [trainer.evaluate(state.params, np.tile(chunk, n).astype(np.uint16))["loss"] for n in (16, 32, 32)]
  assert losses[1] != losses[0] and losses[2] == losses[1]


def _mlm_trainer(batch_size, **overrides):
  """A Trainer of `_mlm_run`'s config validating every row (train.eval_batches=0) in batches of `batch_size`."""
  config = tiny_config(**{"objective": "mlm", "data.seq_len": 16, "model.position": "alibi",
                          "train.batch_size": batch_size, "train.eval_batches": 0, **overrides})
  return loop.Trainer.build(config, 64)


def test_mlm_scores_do_not_depend_on_the_batch_size_and_the_trainer_scores_what_research_evaluate_does():
  """The masks of a row depend on its index in the split, not on how the split is cut into batches: the same
  checkpoint gave 340.15 / 331.57 / 329.80 at --max_tokens_per_batch=8192 / 4096 / 64 (masks keyed per batch), and
  the trainer's valid ppl moved with train.batch_size. Now every cut scores the same targets with the same masks, and
  research-evaluate at 1x equals the trainer's validation over the same rows."""
  import numpy as np
  ids = np.random.default_rng(2).integers(5, 64, 14 * 21 + 5).astype(np.uint16)  # 22 rows, the last one short
  trainer = _mlm_trainer(4)
  params = trainer.init_state().params
  run = extrapolation.LoadedRun(trainer.config, trainer.model.cfg, params, 0, {})
  scores = {rows: extrapolation.split_perplexity(run, trainer.model.cfg, ids, 16, max_tokens_per_batch=16 * rows)
            for rows in (1, 3, 8, 22, 64)}
  ppl, tokens = scores[22]
  for other_ppl, other_tokens in scores.values():
    assert other_tokens == tokens and other_ppl == pytest.approx(ppl, rel=1e-6)
  valid = {b: _mlm_trainer(b).evaluate(params, ids) for b in (4, 16)}  # 16: the last batch is mostly padding
  for metrics in valid.values():
    assert metrics["tokens"] == tokens
    assert metrics["loss"] == pytest.approx(valid[4]["loss"], rel=1e-6)
    assert metrics["ppl"] == pytest.approx(ppl, rel=1e-5)


def test_an_mlm_run_evaluated_at_1x_gives_the_trainers_valid_ppl_and_records_its_masks(tmp_path):
  """End to end: research-evaluate at 1x over the whole valid split (any --max_tokens_per_batch) scores the masks
  the trainer's validation scored over it (train.eval_batches=0), and extrapolation.json records the rule. With no
  target selected, the note gives the run's data.mlm_select_rate (it said ~15 % whatever the rate)."""
  workdir = _train(tmp_path / "mlm", **{"objective": "mlm", "model.position": "alibi", "train.steps": 2,
                                        "train.eval_every": 2, "train.checkpoint_every": 2, "train.eval_batches": 0,
                                        "train.batch_size": 8})
  summary = json.loads((workdir / "summary.json").read_text())
  reports = [extrapolation.evaluate_run(workdir, (1,), max_tokens_per_batch=tokens, by_position=tokens == 96)
             for tokens in (96, 8192)]
  by_position = json.loads((workdir / "eval" / "loss_by_position.json").read_text())
  assert by_position["mlm_masks"] == extrapolation.MLM_MASKS  # its losses were scored with the same masks
  for report in reports:
    assert report["mlm_masks"] == extrapolation.MLM_MASKS == "per_row"
    assert report["results"][0]["tokens"] == reports[0]["results"][0]["tokens"] > 0
    assert report["results"][0]["ppl"] == pytest.approx(summary["valid_ppl"], rel=1e-5)
  config = json.loads((workdir / "config.json").read_text())
  config["data"]["mlm_select_rate"] = 1e-9
  (workdir / "config.json").write_text(json.dumps(config))
  (result,) = extrapolation.evaluate_run(workdir, (1,))["results"]
  assert result["ppl"] is None and "an MLM selects ~1e-07 % of a split's tokens" in result["note"], result


def test_mlm_evaluation_masks_differ_between_rows_and_select_the_configured_share():
  """Each row draws its own masks from fold_in(eval_key(seed, length), row), whatever batch holds it; the share of
  tokens selected is data.mlm_select_rate."""
  import numpy as np
  from research.train import steps
  rows, length = 64, 64
  tokens = np.tile(np.random.default_rng(0).integers(5, 64, length).astype(np.int32), (rows, 1))  # identical rows
  batch = {"inputs": tokens, "targets": tokens, "weights": np.ones_like(tokens, np.float32),
           "positions": np.broadcast_to(np.arange(length), tokens.shape)}

  def selected(rate, key, part=slice(None), batch_index=0):
    settings = steps.StepSettings(objective="mlm", vocab_size=64, mlm_select_rate=rate)
    sub = steps.with_row_indices({k: v[part] for k, v in batch.items()}, batch_index)
    return np.asarray(steps.prepare_inputs(sub, key, settings)[2]) > 0

  key = steps.eval_key(0, length)
  for rate in (0.15, 0.4):
    masks = selected(rate, key)
    assert len({m.tobytes() for m in masks}) == rows  # not one mask repeated
    assert abs(masks.mean() - rate) < 0.03  # 4,096 tokens: the standard error is < 0.008
  masks = selected(0.15, key)
  # Rows 8..15 as batch 1 of batches of 8 rows: the masks of the same rows of the whole batch.
  assert np.array_equal(selected(0.15, key, slice(8, 16), batch_index=1), masks[8:16])
  assert not np.array_equal(selected(0.15, steps.eval_key(0, 2 * length)), masks)  # the length is folded in
  assert not np.array_equal(selected(0.15, steps.eval_key(1, length)), masks)  # and the seed


def test_row_indices_are_the_rows_the_evaluation_batches_hold_on_every_process():
  """`steps.with_row_indices` names the split's row of every row of the evaluation batches, on each of P
  processes: the row the batch holds is the one `PackedBatches` builds for that index alone."""
  import numpy as np
  from research.data import batches
  from research.train import steps
  ids = np.random.default_rng(3).integers(5, 64, 14 * 9 + 3).astype(np.uint16)  # 10 rows
  for count in (1, 3):
    seen = []
    for index in range(count):
      it = batches.PackedBatches(ids, 16, 2, objective="mlm", shuffle=False, num_epochs=1, process_index=index,
                                 process_count=count)
      for i, batch in enumerate(it):
        for row, inputs, weights in zip(steps.with_row_indices(batch, i, index, count)["rows"], batch["inputs"],
                                        batch["weights"]):
          if weights.any():
            (alone,) = batches.PackedBatches(ids, 16, 1, objective="mlm", shuffle=False).batch(0, row)["inputs"]
            assert np.array_equal(inputs, alone)
            seen.append(int(row))
    assert sorted(seen) == list(range(10))


def test_a_sweep_evaluates_an_mlm_trial_again_when_its_file_predates_per_row_masks(tmp_path):
  """An MLM trial's extrapolation.json without `mlm_masks` was scored with masks per batch: a rerun of the sweep
  evaluates it again (its figures moved with max_tokens_per_batch). A CLM trial's file is current without it."""
  from research import sweeps
  sweep_file = tmp_path / "s.py"
  sweep_file.write_text("BASE_CONFIG = 'configs/tiny.py'\nEVALUATE = {'lengths': [1]}\n\n"
                        "def get_sweep():\n  return [{'seed': 0}]\n")
  sweep = sweeps.load_sweep(sweep_file)
  for objective in ("clm", "mlm"):
    trial_dir = tmp_path / objective
    (trial_dir / "eval").mkdir(parents=True)
    (trial_dir / "config.json").write_text(json.dumps(tiny_config(objective=objective).to_dict()))
    for masks in (None, extrapolation.MLM_MASKS):
      extrapolation.write_report(trial_dir, extrapolation.report_record(
          train_len=64, mode="nonoverlapping", stride=None, split="valid", checkpoint_step=4, rope_scaling=None,
          rope_factor=None, results=[extrapolation.result_record(1, 64, 30.0, 100)], checkpoint="best",
          mlm_masks=masks))
      why = sweeps.evaluation_outdated(sweep, trial_dir)
      if objective == "mlm" and masks is None:
        assert why is not None and "drawn per batch" in why and "mlm_masks='per_row'" in why, why
      else:
        assert why is None, (objective, masks, why)


def test_a_sweep_evaluates_an_mlm_trials_loss_by_position_again_when_it_predates_per_row_masks(tmp_path):
  """With EVALUATE's by_position, an MLM trial's loss_by_position.json without `mlm_masks` (scored per batch) is
  outdated even when its extrapolation.json is current; a CLM trial's, or a sweep not asking for it, is not."""
  from research import sweeps
  from research.evaluate import by_position
  sweeps_by_position = {}
  for asked in (True, False):
    sweep_file = tmp_path / f"s{asked}.py"
    sweep_file.write_text(f"BASE_CONFIG = 'configs/tiny.py'\nEVALUATE = {{'lengths': [1], 'by_position': {asked}}}\n"
                          "\ndef get_sweep():\n  return [{'seed': 0}]\n")
    sweeps_by_position[asked] = sweeps.load_sweep(sweep_file)
  for objective in ("clm", "mlm"):
    trial_dir = tmp_path / objective
    (trial_dir / "eval").mkdir(parents=True)
    (trial_dir / "config.json").write_text(json.dumps(tiny_config(objective=objective).to_dict()))
    masks = extrapolation.MLM_MASKS if objective == "mlm" else None
    extrapolation.write_report(trial_dir, extrapolation.report_record(
        train_len=64, mode="nonoverlapping", stride=None, split="valid", checkpoint_step=4, rope_scaling=None,
        rope_factor=None, results=[extrapolation.result_record(1, 64, 30.0, 100)], checkpoint="best",
        mlm_masks=masks))
    for lbp_masks in (None, extrapolation.MLM_MASKS):
      by_position.write_report(trial_dir, by_position.report_record(
          train_len=64, mode="nonoverlapping", stride=None, split="valid", checkpoint_step=4, checkpoint="best",
          objective=objective, rope_scaling=None, rope_factor=None, mlm_masks=lbp_masks,
          results=[by_position.result_record(1, 64, note="n/a")]))
      for asked, sweep in sweeps_by_position.items():
        why = sweeps.evaluation_outdated(sweep, trial_dir)
        if objective == "mlm" and asked and lbp_masks is None:
          assert why is not None and "loss_by_position.json" in why and "drawn per batch" in why, why
        else:
          assert why is None, (objective, asked, lbp_masks, why)


def test_a_batch_larger_than_the_split_is_cut_to_its_windows_with_the_same_scores(runs):
  """--max_tokens_per_batch=10**12 asked numpy for a batch of billions of padding rows (a traceback: 116 GiB). The
  batch now holds at most the split's windows; the scores are those of any batch that holds them all (the same
  masks for an MLM: a row's random bits do not depend on the rows after it)."""
  import numpy as np
  from research.data import batches
  run = extrapolation.load_run(runs["alibi"])
  cases = [(run, run.model_cfg, np.asarray(run.splits["valid"]))]
  mlm, _, model_cfg, _ = _mlm_run()
  cases.append((mlm, model_cfg, np.random.default_rng(0).integers(5, 64, 200).astype(np.uint16)))
  for loaded, cfg, tokens in cases:
    for mode in (("nonoverlapping", "sliding") if loaded.config.objective == "clm" else ("nonoverlapping",)):
      stride = 8 if mode == "sliding" else None
      rows = extrapolation.batch_rows(len(tokens), 16, 10**12, loaded.config.objective, mode, stride)
      if loaded.config.objective == "clm":  # one batch of every window, none of them padding
        (batch,) = batches.eval_batches(tokens, 16, rows, mode, stride)
      else:
        (batch,) = [b for _, b in zip(range(2), batches.PackedBatches(tokens, 16, rows, objective="mlm",
                                                                         shuffle=False, num_epochs=1))]
      assert batch["weights"].sum(axis=1).min() > 0
      every = extrapolation.split_perplexity(loaded, cfg, tokens, 16, mode=mode, stride=stride,
                                             max_tokens_per_batch=16 * 4096)
      ppl, scored = extrapolation.split_perplexity(loaded, cfg, tokens, 16, mode=mode, stride=stride,
                                                   max_tokens_per_batch=10**12)
      assert scored == every[1] and ppl == pytest.approx(every[0], rel=1e-6)  # (float32 sums of other shapes)


def test_a_diverged_checkpoint_scores_the_capped_perplexity_not_a_traceback(runs):
  """A mean NLL above ~709 has no float64 perplexity: research-evaluate ended in an OverflowError (a run trained
  with model.embed_init_std=1e6). It reports exp(700), the trainer's cap (`loop.perplexity`), as its validation does."""
  import dataclasses
  import jax
  import numpy as np
  run = extrapolation.load_run(runs["alibi"])
  diverged = dataclasses.replace(run, params=jax.tree.map(lambda p: p * 100.0, run.params))
  ppl, tokens = extrapolation.split_perplexity(diverged, run.model_cfg, np.asarray(run.splits["valid"])[:400], 16)
  assert ppl == math.exp(700.0) and tokens == 399
  assert loop.perplexity(math.log(5.0)) == pytest.approx(5.0)


@pytest.mark.slow
def test_only_parameters_are_restored_so_a_changed_optimizer_layout_still_evaluates(runs, tmp_path):
  import shutil
  copy = tmp_path / "copy"
  shutil.copytree(runs["alibi"], copy)
  expected = extrapolation.evaluate_run(copy, (1,))["results"][0]["ppl"]
  config = json.loads((copy / "config.json").read_text())
  config["train"]["optimizer"] = "sgd"  # another optimizer state than the checkpoint holds (as after a code change)
  (copy / "config.json").write_text(json.dumps(config))
  assert extrapolation.evaluate_run(copy, (1,))["results"][0]["ppl"] == expected
  config["model"]["d_model"] = 32  # but parameters of another shape are refused, naming the run
  (copy / "config.json").write_text(json.dumps(config))
  with pytest.raises(extrapolation.EvaluationError, match="do not match the model"):
    extrapolation.evaluate_run(copy, (1,))


# ------------------------------------------------------------------------------------------------ loss by position


def _bucket_mean(result):
  """The token-weighted mean of a length's bucket losses (what must give back log(ppl))."""
  pairs = [(t, v) for t, v in zip(result["tokens"], result["loss"]) if t]
  return math.fsum(t * v for t, v in pairs) / sum(t for t, _ in pairs)


@pytest.mark.parametrize("position,mode,stride", [("learned", "nonoverlapping", None), ("alibi", "sliding", 16)])
def test_loss_by_position_averages_back_to_the_perplexity_and_lengths_beyond_a_table_are_na(runs, position, mode,
                                                                                             stride):
  workdir = runs[position]
  report = extrapolation.evaluate_run(workdir, (1, 2), mode=mode, stride=stride, by_position=True)
  saved = json.loads((workdir / "eval" / "loss_by_position.json").read_text())
  assert (saved["train_len"], saved["mode"], saved["stride"], saved["objective"]) == (TRAIN_LEN, mode, stride, "clm")
  for r, p in zip(report["results"], saved["results"]):
    assert (p["multiple"], p["length"]) == (r["multiple"], r["length"])
    if r["ppl"] is None:  # learned at 2×: n/a with the extrapolation's own note
      assert p == {"multiple": 2, "length": 2 * TRAIN_LEN, "note": r["note"]}
      continue
    edges = p["edges"]
    assert edges[0] == 0 and edges[-1] == r["length"] and edges == sorted(set(edges))
    assert len(p["tokens"]) == len(p["loss"]) == len(edges) - 1
    assert TRAIN_LEN in edges  # no bucket mixes trained and untrained columns
    assert sum(p["tokens"]) == r["tokens"]  # every scored target in exactly one bucket
    assert _bucket_mean(p) == pytest.approx(math.log(r["ppl"]), rel=1e-5)
  if mode == "sliding":  # column 0 is scored in the first window only: its one target
    assert [p["tokens"][0] for p in saved["results"]] == [1, 1]
  else:  # every window scores column 0
    windows = -(-_targets(workdir) // TRAIN_LEN)
    assert saved["results"][0]["tokens"][0] == windows


def test_mlm_loss_by_position_counts_only_masked_targets_and_averages_back():
  import numpy as np
  run, _, model_cfg, _ = _mlm_run()
  ids = np.random.default_rng(1).integers(5, 64, 14 * 40).astype(np.uint16)
  scores = extrapolation.split_scores(run, model_cfg, ids, 16, max_tokens_per_batch=16 * 8, by_position=True)
  assert scores.tokens_by_column[0] == 0 and scores.tokens_by_column[-1] == 0  # [CLS] and [SEP] are never masked
  assert scores.tokens_by_column.sum() == scores.tokens > 0
  assert scores.nll_by_column.sum() / scores.tokens == pytest.approx(math.log(scores.ppl), rel=1e-5)


def test_bucket_edges_are_half_octaves_plus_the_training_length():
  from research.evaluate import by_position
  assert by_position.bucket_edges(64, 64) == [0, 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64]
  edges = by_position.bucket_edges(1024, 48)
  assert 48 in edges and edges[-1] == 1024 and len(edges) == len(set(edges)) == 22
  assert by_position.bucket_edges(1, 1) == [0, 1]


# ------------------------------------------------------------------------------------------------ passkey


@pytest.fixture(scope="module")
def alibi_tokenizer(runs):
  from research.data import tokenizers
  return tokenizers.load_tokenizer(runs["alibi"])


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_passkey_prompt_holds_the_key_at_its_depth_and_is_the_longest_that_fits(alibi_tokenizer, depth):
  from research.data import passkey as text
  from research.evaluate import passkey
  tok, length = alibi_tokenizer, 160
  prompt = passkey.build_prompt(tok, "48213", length, depth, "bpe")
  assert prompt.ids[0] == 3 and len(prompt.ids) + len(prompt.answer) <= length  # [SEP], then the prompt
  decoded = tok.decode(prompt.ids[1:].tolist())
  n = sum(decoded.count(s) for s in text.FILLER)
  assert n >= 3 and decoded.endswith(text.QUESTION)
  # The key's first token: everything before it is filler sentences, the needle's head, and as many as the depth says.
  before = tok.decode(prompt.ids[1:prompt.key_position].tolist())
  assert sum(before.count(s) for s in text.FILLER) == text.depth_split(n, depth)
  assert before.endswith("The pass key is")
  assert tok.decode(prompt.ids[prompt.key_position:prompt.key_position + len(prompt.answer)].tolist()) == " 48213"
  assert tok.decode(prompt.answer.tolist()) == " 48213"
  # Longest: one more filler sentence would not fit.
  longer = passkey.tokenize_prompt(tok, "48213", n + 1, depth)
  assert len(longer.ids) + len(longer.answer) > length


def test_passkey_keys_are_reproducible_five_digits_and_differ_per_cell():
  from research.evaluate import passkey
  keys = passkey.keys(0, 64, 0.5, 20)
  assert keys == passkey.keys(0, 64, 0.5, 20) and all(len(k) == 5 and k[0] != "0" for k in keys)
  assert len(set(keys)) > 15
  for other in (passkey.keys(1, 64, 0.5, 20), passkey.keys(0, 128, 0.5, 20), passkey.keys(0, 64, 0.25, 20)):
    assert other != keys


def test_greedy_decoding_is_the_argmax_continuation_of_full_forward_passes(runs, alibi_tokenizer):
  import jax
  import numpy as np
  from research.evaluate import passkey
  from research.model.transformer import Transformer
  run = extrapolation.load_run(runs["alibi"])
  model = Transformer(run.model_cfg)
  prompts = [passkey.build_prompt(alibi_tokenizer, key, length, 0.5) for key, length in (("12345", 64), ("90871", 80))]
  ids = np.zeros((3, 96), np.int32)  # a third row of padding only, as the last batch of a length has
  lengths = np.ones(3, np.int32)
  for i, p in enumerate(prompts):
    ids[i, :len(p.ids)], lengths[i] = p.ids, len(p.ids)
  out = passkey.greedy_decode(run.params, run.model_cfg, ids, lengths, 4)
  assert out.shape == (3, 4)
  for i, p in enumerate(prompts):
    prefix = list(p.ids)
    for _ in range(4):
      logits = model.apply({"params": run.params}, jax.numpy.asarray([prefix]))
      prefix.append(int(np.argmax(np.asarray(logits[0, -1]))))
    assert out[i].tolist() == prefix[len(p.ids):]


def test_passkey_cells_cover_lengths_and_depths_with_na_where_a_scheme_or_the_length_cannot(runs):
  from research.evaluate import passkey
  depths = (0.0, 1.0)
  for position in ("alibi", "learned"):
    extrapolation.evaluate_run(runs[position], (1, 2), passkey=True, passkey_depths=depths, passkey_trials=2)
    saved = json.loads((runs[position] / "eval" / "passkey.json").read_text())
    assert saved["trials"] == 2 and saved["depths"] == list(depths) and saved["seed"] == 0
    cells = {(r["length"], r["depth"]): r for r in saved["results"]}
    assert set(cells) == {(m * TRAIN_LEN, d) for m in (1, 2) for d in depths}
    for d in depths:
      short = cells[(TRAIN_LEN, d)]  # 32 tokens cannot hold the needle and the question
      assert short["accuracy"] is None and short["n"] == 0 and "cannot hold the needle" in short["note"]
      long = cells[(2 * TRAIN_LEN, d)]
      if position == "learned":
        assert long["accuracy"] is None and long["note"] == "learned positions are defined up to 32 tokens " \
                                                           "(model.max_len)"
      else:
        assert long["n"] == 2 and long["accuracy"] in (0.0, 0.5, 1.0) and long["correct"] == 2 * long["accuracy"]
        assert long["prompt_tokens"] + long["key_tokens"] <= 2 * TRAIN_LEN
    png = (runs[position] / "eval" / passkey.PLOT).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_repeated_passkey_depths_are_scored_drawn_and_recorded_once_and_minus_zero_is_zero(runs):
  """Cells are keyed by depth: a repeated depth was listed twice in passkey.json beside one result, and drawn as an
  n/a row of the heatmap; -0 was recorded and printed as -0."""
  from research.evaluate import passkey
  assert passkey.check_options((0.5, 1, 0.5, -0.0), 1) == [0.5, 1.0, 0.0]
  assert str(passkey.check_options([-0.0], 1)[0]) == "0.0"
  extrapolation.evaluate_run(runs["alibi"], (2,), passkey=True, passkey_depths=(0.5, 1, 0.5, -0.0), passkey_trials=1)
  saved = json.loads((runs["alibi"] / "eval" / "passkey.json").read_text())
  assert saved["depths"] == [0.5, 1.0, 0.0] and str(saved["depths"][-1]) == "0.0"
  assert [r["depth"] for r in saved["results"]] == saved["depths"] and all(r["n"] == 1 for r in saved["results"])


@pytest.mark.slow
def test_a_passkey_cell_is_scored_where_the_split_is_too_short_for_the_perplexity(tmp_path):
  """The prompts are generated text: a split shorter than one window makes the perplexity n/a, not the passkey cell
  (it was n/a with the split's note), whichever split is asked for."""
  from research.data import passkey as text
  (tmp_path / "small.txt").write_text("\n".join(text.corpus_documents(40)) + "\n")
  run = _train(tmp_path / "run", **{"model.position": "alibi", "data.corpus": f"text:{tmp_path / 'small.txt'}",
                                    "data.vocab_size": 300, "train.steps": 2, "train.eval_every": 2,
                                    "train.checkpoint_every": 2})
  beyond = max(_targets(run, split) for split in ("valid", "test")) // TRAIN_LEN + 1
  for split in ("valid", "test"):
    report = extrapolation.evaluate_run(run, (beyond,), split=split, passkey=True, passkey_depths=(0.5,),
                                        passkey_trials=2)
    assert report["results"][0]["ppl"] is None and "fewer than one window" in report["results"][0]["note"]
    [cell] = json.loads((run / "eval" / "passkey.json").read_text())["results"]
    assert cell["length"] == beyond * TRAIN_LEN and "note" not in cell, cell
    assert cell["n"] == 2 and cell["accuracy"] in (0.0, 0.5, 1.0)


def _fake_run_dir(path, **overrides):
  """A run directory with only config.json (and a tokenizer): passkey's checks come before any checkpoint."""
  path.mkdir(parents=True)
  loop.write_config(tiny_config(**overrides), path)
  return path


def test_an_evaluation_scaling_the_run_cannot_take_is_one_line_before_anything_loads(tmp_path):
  """--rope_scaling replaces the model's scaling (factor = the multiple): refused on a run trained with a scaling of
  its own, which would be dropped, and where the scaling cannot be computed (it raised ZeroDivisionError at 2x,
  after scoring 1x). The messages name the flag the user gave, not the model's field (they blamed
  model.rope_scaling='ntk', which the run never set)."""
  scaled = _fake_run_dir(tmp_path / "scaled", **{"model.position": "rope", "model.rope_scaling": "linear",
                                                 "model.rope_factor": 4.0})
  with pytest.raises(extrapolation.EvaluationError, match=r"^--rope_scaling=ntk would replace the scaling '.*scaled' "
                                                          r"was trained with \(model.rope_scaling='linear', "
                                                          r"model.rope_factor=4\); its plain evaluation already "
                                                          r"applies that one$"):
    extrapolation.evaluate_run(scaled, (1, 2), rope_scaling="ntk")
  narrow = _fake_run_dir(tmp_path / "narrow", **{"model.position": "rope", "model.rope_fraction": 0.125})
  with pytest.raises(extrapolation.EvaluationError, match=r"^--rope_scaling=ntk does not suit '.*narrow': it needs "
                                                          r"a rotary dimension >= 4 \(its base exponent is "
                                                          r"d/\(d-2\)\), got 2 \(head dimension x "
                                                          r"model.rope_fraction, rounded down to even\)$"):
    extrapolation.evaluate_run(narrow, (1, 2), rope_scaling="ntk")
  base_one = _fake_run_dir(tmp_path / "base_one", **{"model.position": "rope", "model.rope_base": 1.0})
  with pytest.raises(extrapolation.EvaluationError, match=r"^--rope_scaling=yarn does not suit '.*base_one': it "
                                                          r"needs model.rope_base > 1 .*got 1$"):
    extrapolation.evaluate_run(base_one, (1, 2), rope_scaling="yarn")
  extrapolation.check_run_options(narrow, tiny_config(**{"model.position": "rope", "model.rope_fraction": 0.125}),
                                  [1, 2], mode="nonoverlapping", stride=None, rope_scaling="yarn",
                                  passkey=False)  # what it can take passes


@pytest.mark.parametrize("scaling", ["linear", "ntk", "yarn"])
def test_a_run_trained_with_a_scaling_at_factor_1_trained_plain_rope_and_takes_one_at_evaluation(scaling):
  """At model.rope_factor=1 every scaling is plain RoPE (`rope_frequencies` returns before scaling): such a run was
  refused, "its plain evaluation already applies that one", though its plain evaluation applies none."""
  from research.embeddings import registry
  from research.train import configuration
  config = tiny_config(**{"model.position": "rope", "model.rope_scaling": scaling, "model.rope_factor": 1.0})
  trained = configuration.model_config(config)
  plain = dataclasses.replace(trained, rope_scaling="none")
  for a, b in zip(registry.get_scheme("rope")(trained).frequencies(), registry.get_scheme("rope")(plain).frequencies()):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # what the run trained is plain RoPE
  for evaluated in ("linear", "ntk", "yarn"):
    extrapolation.check_run_options("run", config, [1, 2], mode="nonoverlapping", stride=None,
                                    rope_scaling=evaluated, passkey=True)
  config.model.rope_factor = 1.5  # a scaling that did change the frequencies is still refused
  with pytest.raises(extrapolation.EvaluationError, match=r"^--rope_scaling=linear would replace the scaling 'run' "
                                                          rf"was trained with \(model.rope_scaling='{scaling}', "
                                                          r"model.rope_factor=1.5\)"):
    extrapolation.check_run_options("run", config, [1, 2], mode="nonoverlapping", stride=None,
                                    rope_scaling="linear", passkey=False)


@pytest.mark.parametrize("keep", [0.0, 0.1])
def test_a_scaling_of_a_run_that_rotates_nothing_is_refused_before_anything_loads(tmp_path, keep):
  """p_rope with model.rope_keep_fraction=0 (NoPE), or one that keeps less than a pair of 8 (int(p·16 // 2) = 0, as
  p-RoPE computes it), rotates nothing: --rope_scaling was accepted and eval/extrapolation_<S>.json held the plain
  evaluation's numbers (linear, ntk) or the plain model times YaRN's attention factor, labelled as scaled. With
  --passkey too; a fraction that keeps one pair takes a scaling."""
  from research.train import configuration
  run = _fake_run_dir(tmp_path / "nope", **{"model.position": "p_rope", "model.rope_keep_fraction": keep})
  for scaling in ("linear", "ntk", "yarn"):
    for passkey in (False, True):
      with pytest.raises(extrapolation.EvaluationError, match=(
          rf"^--rope_scaling={scaling} has nothing to scale in '.*nope': its model.position='p_rope' rotates nothing "
          rf"\(model.rope_keep_fraction={keep:g} keeps none of its 8 rotary frequencies\)$")):
        extrapolation.evaluate_run(run, (1, 2), rope_scaling=scaling, passkey=passkey)
  assert not (run / "eval").exists() or not any((run / "eval").iterdir())
  one_pair = tiny_config(**{"model.position": "p_rope", "model.rope_keep_fraction": 0.125})
  assert relative.p_rope_kept_pairs(8, 0.125) == 1
  assert int(np.count_nonzero(relative.p_rope_frequencies(np.ones(8, np.float32), 0.125))) == 1
  assert configuration.unrotated_reason(configuration.model_config(one_pair)) is None
  extrapolation.check_run_options("run", one_pair, [1, 2], mode="nonoverlapping", stride=None,
                                  rope_scaling="ntk", passkey=True)
  # A model.rope_fraction that leaves no pair is RoPE's validation's to refuse, in one line, before anything loads.
  narrowest = _fake_run_dir(tmp_path / "narrowest", **{"model.position": "rope", "model.rope_fraction": 0.0625})
  with pytest.raises(configuration.ConfigError, match=r"^model.rope_fraction=0.0625 must be in \(0, 1\] and rotate "
                                                      r"at least 2 of the 16 head dimensions$"):
    extrapolation.evaluate_run(narrowest, (1, 2), rope_scaling="linear")


def test_xpos_is_refused_a_rope_scaling_for_what_it_is():
  """xPos rotates with RoPE's frequencies; the refusal said it did not. It never scales them."""
  config = tiny_config(**{"model.position": "xpos"})
  with pytest.raises(extrapolation.EvaluationError, match=r"^--rope_scaling=yarn needs a run whose scheme scales "
                                                          r"RoPE's frequencies \(rope, p_rope\), but 'run' was "
                                                          r"trained with model.position='xpos', which does not \(it "
                                                          r"rotates with RoPE's frequencies but never scales them"):
    extrapolation.check_run_options("run", config, [1, 2], mode="nonoverlapping", stride=None, rope_scaling="yarn",
                                    passkey=False)


def test_a_p_rope_run_takes_rope_scaling_at_evaluation_as_in_training():
  """p-RoPE rotates with RoPE's (scaled) frequencies: refusing it named a reason that was not true."""
  from research.embeddings import registry
  from research.train import configuration
  config = tiny_config(**{"model.position": "p_rope"})
  extrapolation.check_run_options("run", config, [1, 2], mode="nonoverlapping", stride=None, rope_scaling="linear",
                                  passkey=False)
  plain = configuration.model_config(config)
  scaled = dataclasses.replace(plain, rope_scaling="linear", rope_factor=2.0)
  inv_plain, _ = registry.get_scheme("p_rope")(plain).frequencies()
  inv_scaled, _ = registry.get_scheme("p_rope")(scaled).frequencies()
  kept = np.asarray(inv_plain) > 0  # p-RoPE zeroes the slowest pairs' frequencies
  np.testing.assert_allclose(np.asarray(inv_scaled)[kept], np.asarray(inv_plain)[kept] / 2, rtol=1e-6)


def test_passkey_errors_are_one_line_before_anything_loads(tmp_path):
  from research.data import tokenizers
  mlm = _fake_run_dir(tmp_path / "mlm", objective="mlm")
  with pytest.raises(extrapolation.EvaluationError, match=r"passkey retrieval needs a causal LM, but .* was trained "
                                                          r"with objective='mlm' \(a masked LM does not generate"):
    extrapolation.evaluate_run(mlm, (1,), passkey=True)
  # The word kind can never spell a random key: refused from the config alone (a sweep refuses it before training,
  # tests/test_sweeps.py), with the kinds that can.
  words = _fake_run_dir(tmp_path / "words", **{"data.tokenizer": "word"})
  with pytest.raises(extrapolation.EvaluationError, match=r"^passkey retrieval needs a tokenizer that spells digits, "
                                                          r"but data.tokenizer='word' cannot spell the random keys: a "
                                                          r"word-level vocabulary encodes a number it did not hold as "
                                                          r"a word to \[UNK\]; allowed kinds: bpe, bpe-char, "
                                                          r"wordpiece, unigram, char, byte$"):
    extrapolation.evaluate_run(words, (4,), passkey=True)
  # A kind that spells digits, trained on text without any: only its trained tokenizer tells, by a key's tokens.
  chars = _fake_run_dir(tmp_path / "chars", **{"data.tokenizer": "char"})
  tokenizers.save_tokenizer(tokenizers.train_tokenizer("char", ["the pass key is what remember it"] * 5, 64), chars)
  with pytest.raises(extrapolation.EvaluationError, match=r"needs a tokenizer that spells digits, but "
                                                          r"data.tokenizer='char' cannot spell the key \d{5}: it "
                                                          r"encodes to \[' ', '\[UNK\]'"):
    extrapolation.evaluate_run(chars, (4,), passkey=True)
  for kwargs, message in (({"passkey_depths": (0.5, 1.5)}, r"passkey_depths=\[0.5, 1.5\] must be fractions in "
                                                           r"\[0, 1\]"),
                          ({"passkey_depths": ()}, r"passkey_depths=\[\] must be"),
                          ({"passkey_trials": 0}, "passkey_trials=0 must be an integer >= 1")):
    with pytest.raises(extrapolation.EvaluationError, match=message):
      extrapolation.evaluate_run(mlm, (1,), passkey=True, **kwargs)


@pytest.mark.parametrize("args,message", [
    (["--passkey"], "error: passkey retrieval needs a causal LM, but '{mlm}' was trained with objective='mlm' (a "
                    "masked LM does not generate the key left to right)"),
    (["--passkey", "--passkey_depths=0,half"], "error: --passkey_depths=0,half must be numbers in [0, 1]"),
    # Passkey options without --passkey were accepted and nothing was scored.
    (["--passkey_trials=3"], "error: --passkey_trials applies with --passkey only (without it no passkey retrieval "
                             "is scored)"),
    (["--passkey_depths=0.5", "--passkey_trials=3"], "error: --passkey_depths, --passkey_trials apply with "
                                                     "--passkey only (without it no passkey retrieval is scored)"),
])
def test_passkey_cli_errors_are_one_line_with_status_2(tmp_path, args, message):
  mlm = _fake_run_dir(tmp_path / "mlm", objective="mlm")
  result = cli("experiments.evaluate", f"--workdir={mlm}", *args)
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.strip() == message.format(mlm=mlm), result.stderr[-2000:]


# research-analyze --positions on these runs: the input family (learned) and the score-bias family (alibi); the q/k
# family is drawn in tests/test_positions_analysis.py, on an MLM run of its own.


@pytest.fixture(scope="module")
def position_reports(runs):
  return {name: positions.analyze_run(runs[name], num_batches=2) for name in ("learned", "alibi")}


@pytest.mark.slow
def test_a_learned_table_is_drawn_as_the_cosine_similarity_of_its_trained_rows(runs, position_reports):
  report = position_reports["learned"]
  check_pictures(runs["learned"], report, [positions.SIMILARITY_PLOT, positions.ATTENTION_PLOT])
  assert report["hooks"] == {"input": True, "rotary": False, "bias": False, "logit_bias": False}
  run = extrapolation.load_run(runs["learned"])
  assert report["checkpoint_step"] == run.step == 20  # the best checkpoint's table, as trained
  table = np.asarray(run.params["position_embed"]["embedding"], np.float64)[:TRAIN_LEN]
  unit = table / np.linalg.norm(table, axis=1, keepdims=True)
  assert report["similarity"]["positions"] == list(range(TRAIN_LEN))
  np.testing.assert_allclose(report["similarity"]["cosine"], unit @ unit.T, atol=1e-6)
  check_attention_bounds(report["attention"], TRAIN_LEN, heads=4, batches=2)


@pytest.mark.slow
def test_alibi_is_drawn_as_a_bias_linear_in_distance_with_the_schemes_slopes(runs, position_reports):
  report = position_reports["alibi"]
  check_pictures(runs["alibi"], report, [positions.BIAS_PLOT, positions.ATTENTION_PLOT])
  bias = report["bias"]
  assert bias["distance"] == list(range(TRAIN_LEN)) and [entry["layer"] for entry in bias["layers"]] == ["shared"]
  slopes = relative.alibi_slopes(4)
  np.testing.assert_allclose(bias["layers"][0]["bias"], -slopes[:, None] * np.arange(TRAIN_LEN)[None, :], rtol=1e-6,
                             atol=1e-6)
  stats = report["attention"]
  check_attention_bounds(stats, TRAIN_LEN, heads=4, batches=2)
  # The steepest head (slope 1/4) attends nearer than uniform attention over the same keys would.
  assert all(layer["mean_distance"][0] < 0.6 * stats["uniform_mean_distance"] for layer in stats["layers"])


# ------------------------------------------------------------------------------------------------ option checks
# Every option is checked, for every length, before anything loads: on a run directory that holds only config.json
# (no tokenizer, no checkpoint) a late check would fail with another message.

def _one_line_error(result):
  assert result.returncode == 2 and result.stdout == "", result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-2000:]
  return lines[0]


STRIDE_RANGE = ("error: --stride={stride} must be an integer between 1 and {shortest}, the shortest window asked for "
                "(multiple {multiple} x data.seq_len=32); leave it out for the default, 16 (half the training length)")
ROPE_FACTOR = ("error: --rope_factor={factor} must be a number in [1, 1048576]; leave it out for the multiple at each "
               "length")
MAX_TOKENS = ("error: --max_tokens_per_batch={n} must be an integer >= 1 (batch = this // length, at least one "
              "window)")


@pytest.mark.parametrize("args,message", [
    (["--mode=sliding", "--stride=-3"], STRIDE_RANGE.format(stride=-3, shortest=32, multiple=1)),
    (["--mode=sliding", "--stride=0"], STRIDE_RANGE.format(stride=0, shortest=32, multiple=1)),  # 0 is no default
    # The shortest length bounds the stride, whatever the order: 2× (64 tokens) would have been scored first.
    (["--lengths=2,1", "--mode=sliding", "--stride=48"], STRIDE_RANGE.format(stride=48, shortest=32, multiple=1)),
    (["--lengths=4,2", "--mode=sliding", "--stride=100"], STRIDE_RANGE.format(stride=100, shortest=64, multiple=2)),
    (["--stride=5"], "error: --stride=5 applies to --mode=sliding only (--mode=nonoverlapping scores every token of "
                     "each window once)"),
    (["--rope_scaling=linear", "--rope_factor=-2"], ROPE_FACTOR.format(factor=-2)),
    (["--rope_scaling=yarn", "--rope_factor=nan"], ROPE_FACTOR.format(factor="nan")),
    (["--rope_scaling=ntk", "--rope_factor=0"], ROPE_FACTOR.format(factor=0)),  # 0 is no default either
    (["--rope_factor=2"], "error: --rope_factor=2 applies with --rope_scaling=linear|ntk|yarn only"),
    (["--max_tokens_per_batch=0"], MAX_TOKENS.format(n=0)),
    (["--max_tokens_per_batch=-5"], MAX_TOKENS.format(n=-5)),
    (["--split=dev"], "error: split='dev' is not one of train, valid, test"),
])
def test_cli_option_errors_are_one_line_naming_the_value_before_anything_loads(tmp_path, args, message):
  rope = _fake_run_dir(tmp_path / "rope", **{"model.position": "rope", "data.seq_len": TRAIN_LEN})
  assert _one_line_error(cli("experiments.evaluate", f"--workdir={rope}", *args)) == message
  assert not (rope / "eval").exists()


def test_sliding_mode_on_a_masked_lm_is_refused_before_anything_loads(tmp_path):
  mlm = _fake_run_dir(tmp_path / "mlm", objective="mlm")
  line = _one_line_error(cli("experiments.evaluate", f"--workdir={mlm}", "--mode=sliding"))
  assert line == (f"error: --mode=sliding is for causal LMs, but '{mlm}' was trained with objective='mlm': a masked "
                  f"LM is evaluated nonoverlapping")


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "sliding", "stride": 1.5}, r"--stride=1.5 must be an integer between 1 and 32"),
    ({"mode": "sliding", "stride": True}, r"--stride=True must be an integer between 1 and 32"),
    ({"rope_scaling": "linear", "rope_factor": float("inf")}, r"--rope_factor=inf must be a number in \[1, 1048576\]"),
    ({"rope_scaling": "linear", "rope_factor": 0.5}, r"--rope_factor=0.5 must be a number in \[1, 1048576\]"),
    ({"rope_scaling": "linear", "rope_factor": "2"}, r"--rope_factor='2' must be a number in \[1, 1048576\]"),
    # NTK's base overflowed (OverflowError) far above any context extension
    ({"rope_scaling": "ntk", "rope_factor": 1e200}, r"--rope_factor=1e\+200 must be a number in \[1, 1048576\]"),
    ({"max_tokens_per_batch": 8.0}, r"--max_tokens_per_batch=8.0 must be an integer >= 1"),
])
def test_evaluate_run_checks_the_same_options_before_anything_loads(tmp_path, kwargs, message):
  rope = _fake_run_dir(tmp_path / "rope", **{"model.position": "rope", "data.seq_len": TRAIN_LEN})
  with pytest.raises(extrapolation.EvaluationError, match=message):
    extrapolation.evaluate_run(rope, (1, 2), **kwargs)


def test_repeated_multiples_are_scored_once_in_the_order_first_given():
  assert extrapolation.check_options((2, 1, 2, 1, 4)) == [2, 1, 4]
  assert extrapolation.check_options([1]) == [1]


FAKE_STEP_LOSSES = (1.0, 2.0)  # validation at steps 1 and 2: the best checkpoint is step 1, the last step 2


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
  """A tiny RoPE run (two steps) with checkpoints at steps 1 (best) and 2 (last)."""
  losses = iter(FAKE_STEP_LOSSES)

  def fake_evaluate(self, params, ids):
    loss = next(losses)
    return {"loss": loss, "ppl": math.exp(loss), "accuracy": 0.0, "tokens": 1.0, "tokens_per_s": 1.0}

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(loop.Trainer, "evaluate", fake_evaluate)
    return _train(tmp_path_factory.mktemp("two_checkpoints") / "run",
                  **{"model.position": "rope", "train.steps": 2, "train.warmup_steps": 1, "train.eval_every": 1,
                     "train.checkpoint_every": 1, "train.eval_batches": 1})


def test_cli_scores_a_repeated_multiple_once(two_checkpoints):
  result = cli("experiments.evaluate", f"--workdir={two_checkpoints}", "--lengths=2,1,2", "--max_tokens_per_batch=64")
  assert result.returncode == 0, result.stderr[-2000:]
  saved = json.loads((two_checkpoints / "eval" / "extrapolation.json").read_text())
  assert [r["multiple"] for r in saved["results"]] == [2, 1] and saved["checkpoint_step"] == 1
  assert [line.split()[0] for line in result.stdout.strip().splitlines()] == ["multiple", "2", "1"]


@pytest.mark.parametrize("damaged,checkpoint,hint", [
    (2, "last", "try --checkpoint=best (step 1)"),
    (1, "best", "try --checkpoint=last (step 2)"),
    (2, "best+", "the run has no other checkpoint to evaluate"),  # step 1 removed: best and last are both step 2
])
def test_a_damaged_checkpoint_is_one_line_naming_its_step_and_directory(two_checkpoints, tmp_path, damaged,
                                                                       checkpoint, hint):
  import shutil
  copy = tmp_path / "run"
  shutil.copytree(two_checkpoints, copy, ignore=shutil.ignore_patterns("eval"))
  if checkpoint == "best+":
    checkpoint = "best"
    shutil.rmtree(copy / "checkpoints" / "1")
  step_dir = copy / "checkpoints" / str(damaged)
  shutil.rmtree(step_dir / "state")  # what a disk-full or interrupted copy leaves behind
  line = _one_line_error(cli("experiments.evaluate", f"--workdir={copy}", "--lengths=1", f"--checkpoint={checkpoint}"))
  assert line.startswith(f"error: checkpoint step {damaged} ('{step_dir}', --checkpoint={checkpoint}) cannot be "
                         f"restored, its files are missing or damaged (")
  assert line.endswith(hint)
  assert not (copy / "eval").exists()
  if hint.startswith("try "):  # the way out it names works
    other = hint.split()[1].partition("=")[2]
    assert extrapolation.evaluate_run(copy, (1,), checkpoint=other)["checkpoint_step"] == 3 - damaged


def test_a_run_whose_checkpoints_directory_holds_no_finished_step_is_one_line(two_checkpoints, tmp_path):
  import shutil
  copy = tmp_path / "run"
  shutil.copytree(two_checkpoints, copy, ignore=shutil.ignore_patterns("eval"))
  for step in ("1", "2"):  # what a start killed during its first save leaves: no finalized step
    (copy / "checkpoints" / step).rename(copy / "checkpoints" / f"{step}.orbax-checkpoint-tmp-1")
  result = cli("experiments.evaluate", f"--workdir={copy}", "--lengths=1")
  # One line, and no traceback of a checkpoint manager's thread after it (it is never started).
  assert _one_line_error(result) == f"error: run '{copy}' has no complete checkpoint"
  assert "Traceback" not in result.stderr


def test_an_evaluation_without_by_position_moves_a_loss_by_position_it_no_longer_matches_aside(two_checkpoints,
                                                                                             tmp_path, capsys):
  """extrapolation.json rewritten without --by_position: a loss_by_position.json of another checkpoint step or
  protocol (or RoPE factor, for the scaled pair) is moved to eval/previous/<UTC time>/, with one line saying so,
  so that research-report never reads it beside an evaluation it did not come from; a matching one stays."""
  import re
  import shutil
  run = tmp_path / "run"
  shutil.copytree(two_checkpoints, run, ignore=shutil.ignore_patterns("eval"))
  lbp = run / "eval" / "loss_by_position.json"
  extrapolation.evaluate_run(run, (1,), by_position=True)  # the best checkpoint, step 1
  written = lbp.read_text()
  capsys.readouterr()
  extrapolation.evaluate_run(run, (1,))  # the same protocol and step: it still goes with it
  assert lbp.read_text() == written and not (run / "eval" / "previous").exists()
  assert "moved" not in capsys.readouterr().out
  extrapolation.evaluate_run(run, (1,), checkpoint="last")  # step 2
  moved = list((run / "eval" / "previous").glob("*/loss_by_position.json"))
  assert not lbp.exists() and len(moved) == 1 and moved[0].read_text() == written
  assert re.fullmatch(r"\d{8}T\d{6}Z", moved[0].parent.name)  # research-sweep's naming of eval/previous/
  out = capsys.readouterr().out.strip().splitlines()
  assert out == [f"note: moved eval/loss_by_position.json to {moved[0]}: it was scored otherwise than the "
                 f"eval/extrapolation.json just written (step 1 vs 2); add --by_position to score both"]
  extrapolation.evaluate_run(run, (1,), mode="sliding", stride=TRAIN_LEN, rope_scaling="linear", by_position=True)
  extrapolation.evaluate_run(run, (1,), rope_scaling="linear", rope_factor=2.0)
  assert not (run / "eval" / "loss_by_position_linear.json").exists()
  assert (f"(mode sliding, stride {TRAIN_LEN}, factor = the multiple at each length vs mode nonoverlapping, factor 2)"
          in capsys.readouterr().out)
  assert len(list((run / "eval" / "previous").glob("*/loss_by_position_linear.json"))) == 1


def test_an_evaluation_keeps_the_file_it_replaces_in_eval_previous(runs, tmp_path):
  """Every research-evaluate rewrote eval/extrapolation.json: one that scored nothing (a length beyond the learned
  table: one n/a row) lost the earlier figures. The replaced file is copied to eval/previous/<UTC time>/ first, once
  (a rewrite with the same bytes adds no copy)."""
  workdir = tmp_path / "run"
  shutil.copytree(runs["learned"], workdir)
  shutil.rmtree(workdir / "eval", ignore_errors=True)
  path = workdir / "eval" / "extrapolation.json"
  first = extrapolation.evaluate_run(workdir, [1])
  assert first["results"][0]["ppl"] is not None and not (workdir / "eval" / "previous").exists()
  written = path.read_bytes()
  assert extrapolation.evaluate_run(workdir, [100000000])["results"][0]["ppl"] is None
  copies = sorted((workdir / "eval" / "previous").glob("*/extrapolation.json"))
  assert [c.read_bytes() for c in copies] == [written]
  extrapolation.write_report(workdir, json.loads(path.read_text()))  # the same report again: nothing lost, no copy
  assert sorted((workdir / "eval" / "previous").glob("*/extrapolation.json")) == copies
  kept = previous.keep_previous(path)  # the n/a report itself, kept now
  assert kept not in copies and kept.read_bytes() == path.read_bytes() and copies[0].read_bytes() == written
  assert previous.keep_previous(path) == kept  # the newest copy holds its bytes: not copied again
  for text in ('{"a": 1}', '{"a": 2}'):  # two replacements within one second: both copies kept, in order
    path.write_text(text)
    previous.keep_previous(path)
  assert [c.read_text() for c in sorted((workdir / "eval" / "previous").glob("*/extrapolation.json"))][-2:] == [
      '{"a": 1}', '{"a": 2}']
  path.write_bytes(written)
  # passkey.json and loss_by_position.json alike: a second evaluation with fewer passkey trials keeps the first's
  # passkey.json; its loss_by_position.json is the same report again, so nothing is lost and nothing is copied.
  extrapolation.evaluate_run(workdir, [1], by_position=True, passkey=True, passkey_depths=[0.5], passkey_trials=2)
  written = (workdir / "eval" / "passkey.json").read_bytes()
  extrapolation.evaluate_run(workdir, [1], by_position=True, passkey=True, passkey_depths=[0.5], passkey_trials=1)
  assert [c.read_bytes() for c in (workdir / "eval" / "previous").glob("*/passkey.json")] == [written]
  assert not list((workdir / "eval" / "previous").glob("*/loss_by_position.json"))
  extrapolation.evaluate_run(workdir, [1, 2], by_position=True)  # another report: the one it replaces is kept
  assert len(list((workdir / "eval" / "previous").glob("*/loss_by_position.json"))) == 1
