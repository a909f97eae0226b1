"""The GPT-2 small preset (configs/gpt2_small.py, benchmarks/throughput.py --preset) and the peak table it uses."""

import importlib.util
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import gpt2_small
from research.model import attention
from research.model.transformer import Transformer, count_params
from research.train import configuration
from tests.train_utils import ROOT


def _module(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_gpt2_small_is_124m_parameters_with_tied_embeddings():
  config = gpt2_small.get_config()
  cfg = configuration.validate(config)
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.mlp_dim, cfg.vocab_size, config.data.seq_len) == \
      (12, 768, 12, 3072, 50_304, 1024)
  assert cfg.tie_embeddings and cfg.position == "learned" and cfg.max_len == 1024
  params = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  assert abs(count_params(params) - 124e6) < 1e6
  assert "lm_head" not in params  # tied: the table is the only V × d matrix
  assert count_params(params["token_embed"]) == 50_304 * 768


@pytest.mark.parametrize("kind,tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100 80GB PCIe", 312), ("TPU v4", 275), ("TPU v5 lite", 197), ("TPU v5e", 197), ("TPU v5", 459),
    ("TPU v5p", 459), ("NVIDIA H100 NVL", None), ("NVIDIA H200 NVL", None), ("TPU v6 lite", None), ("cpu", None)])
def test_published_peaks_are_chosen_by_device_kind_and_unknown_kinds_have_none(kind, tflops):
  found = _module("hardware").published_peak(kind)
  assert (found and found[0] / 1e12) == tflops if tflops else found is None


def test_the_preset_runs_its_train_step_on_random_ids_and_reports_mfu(tmp_path):
  """The preset's code path at a tiny scale (the shape flags override it only when given; one sequence on CPU)."""
  shape = ["--layers=1", "--d-model=64", "--heads=2", "--mlp-dim=128", "--vocab=512", "--seq-len=32"]
  out = subprocess.run([sys.executable, "benchmarks/throughput.py", "--preset=gpt2-small", "--json", "--peak-size=256",
                        "--no-huge-pages", *shape], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  row = json.loads(out.stdout.strip().splitlines()[-1])
  config = configuration.apply_overrides(gpt2_small.get_config(), {
      "model.num_layers": 1, "model.d_model": 64, "model.num_heads": 2, "model.mlp_dim": 128,
      "data.vocab_size": 512, "data.seq_len": 32})
  cfg = configuration.validate(config)
  params = jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  assert row["n_params"] == count_params(params) and row["seq_len"] == 32 and row["batch"] == 1
  assert row["attention"] == attention.resolve("auto", "cpu") == "einsum" and row["remat"] == "none"
  assert row["dtype"] == "float32" and row["peak_source"].startswith("measured here")
  assert row["tokens_per_s"] > 0 and row["step_ms"] > 0 and 0 < row["mfu"] < 1.5
  assert abs(row["loss"] - float(jnp.log(512))) < 1.0  # an untrained model's loss on random ids
  assert row["cpu"] and row["commit"]


@pytest.mark.parametrize("args, message", [
    (["--schemes", "foo"], "--schemes: 'foo': unknown positional scheme 'foo'"),
    (["--windows", "0"], "--windows=0: must be at least 1"),
    (["--warmup", "0"], "--warmup=0: must be at least 1"),
    (["--batch", "0"], "--batch=0: must be at least 1"),
    (["--peak=-1e9"], "--peak=-1e+09: give a finite matmul peak > 0 in FLOP/s"),
    (["--peak=nan"], "--peak=nan: give a finite matmul peak > 0 in FLOP/s"),  # an MFU of nan
    (["--peak", "inf"], "--peak=inf: give a finite matmul peak > 0 in FLOP/s"),
    (["--peak-size=0"], "--peak-size=0: must be at least 1"),
    (["--heads", "3"], "model.num_heads=3 does not divide the model width 256"),
    (["--loss-chunk", "-1"], "--loss-chunk=-1: must be 0 (off)"),
    (["--dtypes=,"], "--dtypes=',': give a comma-separated list of float32, bfloat16"),
    (["--schemes", ","], "--schemes=',': give at least one scheme"),
    (["--schemes", "none+table_dim=16"], "needs --interleave"),
    (["--interleave", "--schemes", "none,none+tie_embeddings=1"], "tie_embeddings='1': expected true or false"),
    (["--interleave", "--count_updates"], "--interleave and --count_updates: choose one"),
    (["--preset=gpt2-small", "--remat=full"], "argument --remat: invalid choice: 'full' (choose from 'none', 'block'"),
    (["--remat=bogus", "--schemes=none"], "argument --remat: invalid choice: 'bogus'"),
    (["--preset=gpt2-small", "--heads=5"], "--preset=gpt2-small: model.num_heads=5 does not divide the model width"),
    (["--remat=block"], "--remat without --preset: only --preset reads it"),
    (["--preset=gpt2-small", "--interleave"], "--interleave with --preset: the preset times one train step"),
    (["--preset=gpt2-small", "--schemes=none"], "--schemes with --preset: the preset times its own model"),
    (["--preset=gpt2-small", "--count_updates"], "--count_updates with --preset: the preset's config sets"),
    (["--preset=gpt2-small", "--dtypes=float32,bfloat16"], "--dtypes with --preset: the preset times one dtype"),
    (["--preset=gpt2-small", "--inter"], "unrecognized arguments: --inter"),
], ids=lambda x: x if isinstance(x, str) and x.startswith("-") else None)
def test_throughputs_bad_values_are_one_line_before_any_worker(args, message, capsys):
  """Each used to end in a worker's traceback, or in a table of nonsense (0 tokens/s, a negative MFU, an untied row
  for tie_embeddings=1). One line `error: ...` (argparse's usage block before it was ten more)."""
  with pytest.raises(SystemExit) as exit_info:
    _module("throughput").parse_args(args)
  lines = capsys.readouterr().err.strip().splitlines()
  assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
      lines


def test_throughputs_preset_accepts_what_it_reads_and_remat_reaches_scheme_rows_as_a_field():
  throughput = _module("throughput")
  args = throughput.parse_args(["--preset=gpt2-small", "--remat=dots_saveable", "--heads=6", "--batch=2"])
  config = throughput.preset_config(args, ["--remat=dots_saveable", "--heads=6"], throughput.PRESET_RUNS["cpu"])
  assert config.model.remat == "dots_saveable" and config.model.num_heads == 6
  args = throughput.parse_args(["--interleave", "--schemes", "none,none+remat=block"])
  assert throughput.row_config(args, "none+remat=block").remat == "block"


def test_the_preset_runs_in_bfloat16_on_an_accelerator_unless_dtype_is_given():
  """The accelerator's MFU is against a published bf16 peak; the preset used to run float32 there unless told."""
  throughput = _module("throughput")
  args = throughput.parse_args(["--preset=gpt2-small"])
  assert throughput.preset_config(args, [], throughput.PRESET_RUNS["accelerator"]).model.dtype == "bfloat16"
  assert throughput.preset_config(args, [], throughput.PRESET_RUNS["cpu"]).model.dtype == "float32"
  argv = ["--preset=gpt2-small", "--dtype=bfloat16"]
  assert throughput.preset_run(throughput.parse_args(argv), argv)["dtype"] == "bfloat16"  # this CPU, given


def test_the_presets_batch_that_does_not_split_over_the_devices_says_where_it_came_from():
  """A multi-device CPU used to be told `--batch=1 is not divisible` when no --batch was given (the preset's own)."""
  throughput = _module("throughput")
  throughput.check_preset_batch(4, 4, given=False)
  with pytest.raises(SystemExit) as exit_info:
    throughput.check_preset_batch(throughput.PRESET_RUNS["cpu"]["batch"], 4, given=False)
  assert str(exit_info.value) == ("error: the preset's batch on CPU (1, PRESET_RUNS['cpu']) is not divisible by the 4 "
                                  "devices: give --batch=N with N a multiple of 4")
  with pytest.raises(SystemExit, match=r"^error: --batch=6 is not divisible by the 4 devices"):
    throughput.check_preset_batch(6, 4, given=True)


def test_throughputs_row_specs_read_booleans_as_the_config_does():
  throughput = _module("throughput")
  args = throughput.parse_args(["--interleave", "--schemes", "none,none+tie_embeddings=false"])
  assert throughput.row_config(args, "none+tie_embeddings=false").tie_embeddings is False
  assert throughput.row_config(args, "none+tie_embeddings=True").tie_embeddings is True


def test_the_evaluation_memory_benchmark_scores_its_windows_through_the_real_evaluator():
  """benchmarks/eval_memory.py's measurement at a short length (its config is the library's schema, so a new data
  or model field cannot break it unseen)."""
  row = _module("eval_memory").measure("cope", 64, "auto")
  assert row["tokens"] == 3 * 64 and 1 < row["ppl"] < 10 * 8192 and row["peak_rss_mb"] > 0


def test_the_char_cnn_formulations_compute_the_modules_vectors_and_gradients():
  """benchmarks/char_cnn.py times its alternatives only after checking them against chars.CharCNN; here the check
  itself: every variant gives the module's loss and parameter gradients on spellings with padding and a filter wider
  than the longest spelling (6 > C = 5, where the module clamps the kernel), and a changed parameter is caught."""
  bench = _module("char_cnn")
  from research.embeddings import chars
  filters = chars.parse_filters("1:3,2:4,6:5")
  num_chars = chars.FIRST_CHAR_ID + 12
  ids = jnp.asarray(bench.spellings(48, 5, num_chars))
  assert (ids[:, 0] == chars.BOW).all() and (ids == chars.PAD).any()
  module = chars.CharCNN(num_chars=num_chars, char_dim=8, filters=filters, out_features=16)
  params = module.init(jax.random.PRNGKey(1), ids)
  steps = {name: jax.jit(jax.value_and_grad(lambda p, fn=bench.variant_fn(name, filters): jnp.sum(fn(p, ids) ** 2)))
           for name in bench.VARIANTS}
  for name, (loss_err, grad_err) in bench.differences(steps, params).items():
    assert loss_err < 1e-5 and grad_err < 1e-4, (name, loss_err, grad_err)
  # A variant that is not the module is caught: the module's step on other parameters.
  other = jax.tree_util.tree_map(lambda x: x * 1.01, params)
  steps["perturbed"] = jax.jit(lambda p: steps["module"](other))
  loss_err, grad_err = bench.differences(steps, params)["perturbed"]
  assert loss_err > 1e-3 and grad_err > 1e-3
