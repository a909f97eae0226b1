"""research-analyze --positions: pictures of a run's positional scheme and the numbers behind them on a real tiny run
(the q/k-transform family here; the input and bias families on tests/test_evaluate.py's runs); the model's optional
attention probabilities."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.analysis import positions
from research.evaluate import extrapolation
from research.model import attention
from research.model.config import ModelConfig
from research.model.transformer import Transformer
from research.train import loop
from tests.train_utils import check_attention_bounds, check_pictures, cli, tiny_config

T = 32


@pytest.fixture(scope="module")
def rope_run(tmp_path_factory):
  """(workdir, report): a real tiny MLM run with RoPE (the q/k-transform family, in an encoder), trained and analyzed
  with document boundaries (data.document_positions=reset, data.document_mask). The input and bias families are drawn
  from the CLM runs of tests/test_evaluate.py (learned, alibi), which exist there already."""
  workdir = tmp_path_factory.mktemp("rope_mlm")
  loop.train(tiny_config(**{"objective": "mlm", "model.position": "rope", "data.document_positions": "reset",
                            "data.document_mask": True, "data.seq_len": T, "train.batch_size": 8, "train.steps": 2,
                            "train.checkpoint_every": 2, "train.eval_batches": 1,
                            "train.async_checkpoints": False}), workdir)
  return workdir, positions.analyze_run(workdir, num_batches=2)


def test_a_rope_run_gets_its_rotary_kernel_and_attention_pictures(rope_run):
  workdir, report = rope_run
  check_pictures(workdir, report, [positions.ROTARY_PLOT, positions.ATTENTION_PLOT])
  assert report["checkpoint_step"] == 2 and report["length"] == T and report["objective"] == "mlm"
  assert report["hooks"] == {"input": False, "rotary": True, "bias": False, "logit_bias": False}
  check_attention_bounds(report["attention"], T, heads=4, batches=2)


def test_the_rotary_kernel_is_one_at_distance_zero_bounded_and_symmetric_in_an_encoder(rope_run):
  kernel = rope_run[1]["rotary_kernel"]
  assert kernel["distance"] == list(range(-(T - 1), T))
  score = np.asarray(kernel["layers"][0]["score"])
  assert score[T - 1] == pytest.approx(1.0, abs=1e-5)  # distance 0: |u|² of a unit vector
  assert np.all(np.abs(score) <= 1 + 1e-5) and score.min() < 0.9  # rotations only ever decorrelate
  np.testing.assert_allclose(score, score[::-1], atol=1e-5)  # q = k: the kernel is even in d


def test_the_run_is_evaluated_with_the_document_settings_it_trained_with(rope_run, tmp_path):
  workdir, report = rope_run
  assert report["document_positions"] == "reset" and report["document_mask"] is True
  plain = tmp_path / "plain"
  shutil.copytree(workdir, plain)
  config = json.loads((plain / "config.json").read_text())
  config["data"].update(document_positions="continuous", document_mask=False)
  (plain / "config.json").write_text(json.dumps(config))
  with_documents = extrapolation.evaluate_run(workdir, lengths=(1,))["results"][0]
  without = extrapolation.evaluate_run(plain, lengths=(1,))["results"][0]
  assert with_documents["tokens"] == without["tokens"] > 0  # the same masks drawn
  assert with_documents["ppl"] != without["ppl"]  # the same checkpoint, scored another way


def test_a_learned_bias_is_drawn_from_the_parameters_of_every_layer():
  cfg = ModelConfig(vocab_size=40, d_model=16, num_layers=2, num_heads=2, mlp_dim=32, max_len=16,
                    position="kerple_power")
  rng = np.random.default_rng(0)
  scheme = [{"r1": rng.uniform(0.1, 1.0, 2).astype(np.float32), "r2": rng.uniform(0.5, 2.5, 2).astype(np.float32)}
            for _ in range(2)]  # one r2 above the exponent's bound of 2, which the scheme clamps
  params = {f"block_{i}": {"attention": {"position_embed": p}} for i, p in enumerate(scheme)}
  bias = positions.bias_by_distance(cfg, params, 16)
  assert [entry["layer"] for entry in bias["layers"]] == [0, 1]
  d = np.arange(16.0)
  for entry, p in zip(bias["layers"], scheme):
    r1, r2 = p["r1"].astype(np.float64), np.minimum(p["r2"], 2.0).astype(np.float64)
    np.testing.assert_allclose(entry["bias"], -r1[:, None] * d[None, :] ** r2[:, None], rtol=1e-5, atol=1e-6)


def test_attention_probabilities_are_sown_only_when_asked_and_change_nothing():
  cfg = ModelConfig(vocab_size=40, d_model=16, num_layers=2, num_heads=2, mlp_dim=32, max_len=12, position="t5")
  model = Transformer(cfg)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 12), jnp.int32))
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 5, 40)
  segments = jnp.asarray([[0] * 5 + [1] * 7, [0] * 12, [0, 1] * 6])
  plain, (sown, state) = jax.jit(lambda v, t, s: (
      model.apply(v, t, segments_BxL=s), model.apply(v, t, segments_BxL=s, mutable=[attention.INTERMEDIATES])))(
          variables, tokens, segments)
  assert np.array_equal(plain, sown)
  mask = np.asarray(attention.attention_mask(12, 12, True, None, segments))  # [3, 1, 12, 12]
  for i in range(cfg.num_layers):
    (p,) = state[attention.INTERMEDIATES][f"block_{i}"]["attention"]["probabilities"]
    p = np.asarray(p)
    assert p.shape == (3, 2, 12, 12)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-6)
    assert np.all(p[np.broadcast_to(~mask, p.shape)] == 0)


def test_the_cli_draws_a_runs_scheme(rope_run):
  workdir, _ = rope_run
  (workdir / "eval" / "positions.json").unlink()
  result = cli("experiments.analyze", f"--workdir={workdir}", "--positions", "--positions_batches=1")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "positions.json (step 2)" in result.stdout and "layer 1: mean distance" in result.stdout
  assert json.loads((workdir / "eval" / "positions.json").read_text())["attention"]["batches"] == 1


@pytest.mark.parametrize("args, message", [
    (["--vectors=x.txt", "--positions"], "--positions analyzes or exports a run's table: use it with --workdir"),
    (["--workdir=RUN", "--positions", "--positions_batches=0"], "--positions_batches=0 must be >= 1"),
])
def test_bad_positions_flags_are_one_line_errors(args, message):
  result = cli("experiments.analyze", *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], lines
