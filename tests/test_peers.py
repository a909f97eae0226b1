"""benchmarks/peers.py (our step against x-transformers): its scheme mapping and its exit without torch. Neither
torch nor x-transformers is a project dependency, so these run without them; the end-to-end test runs only in an
interpreter that has both."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.train_utils import ROOT


def _peers():
  spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _cfg(peers, scheme):
  return peers.throughput.shape_from(peers.parse_args([])).model_config(scheme, "einsum")


def test_the_mapping_covers_the_six_anchors_and_refuses_an_unknown_scheme_in_one_line():
  peers = _peers()
  assert list(peers.SCHEME_OPTIONS) == peers.throughput.DEFAULT_SCHEMES.split(",")
  with pytest.raises(ValueError) as error:
    peers.peer_kwargs("kerple_log", _cfg(peers, "kerple_log"))
  message = str(error.value)
  assert "\n" not in message and "'kerple_log'" in message and all(s in message for s in peers.SCHEME_OPTIONS)
  wrapper, layers = peers.peer_kwargs("rope", _cfg(peers, "rope"))
  assert layers["rotary_pos_emb"] and layers["rotary_emb_dim"] == 64  # the whole head rotates, as ours
  assert (layers["dim"], layers["depth"], layers["heads"], layers["attn_dim_head"], layers["ff_mult"]) == \
      (256, 4, 4, 64, 4)
  assert wrapper["tie_embedding"] and wrapper["num_tokens"] == 8192
  for scheme in ("none", "rope", "alibi", "t5"):  # no absolute table (ALiBi alone would keep x-transformers' one)
    assert peers.peer_kwargs(scheme, _cfg(peers, scheme))[0]["use_abs_pos_emb"] is False
  assert "use_abs_pos_emb" not in peers.peer_kwargs("learned", _cfg(peers, "learned"))[0]


def test_the_command_line_refuses_an_unknown_scheme():
  out = subprocess.run([sys.executable, "benchmarks/peers.py", "--schemes", "rope,fire"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 1 and out.stderr.strip().splitlines() == [
      "--schemes: fire; x-transformers has equivalents of none, learned, sinusoidal, rope, alibi, t5 only"]


def test_a_negative_settle_is_refused_in_one_line_naming_it():
  out = subprocess.run([sys.executable, "benchmarks/peers.py", "--settle", "-1"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
      "peers.py: error: --settle=-1: must be 0 or more (untimed steps per window)")


@pytest.mark.parametrize("blocked", ["torch", "x_transformers"])
def test_a_missing_peer_exits_2_with_one_line_naming_it_and_the_install(blocked):
  # None in sys.modules makes the import fail whether or not the package is installed in this interpreter.
  code = (f"import runpy, sys; sys.modules[{blocked!r}] = None; sys.argv = ['benchmarks/peers.py', '--schemes=none']; "
          "runpy.run_path('benchmarks/peers.py', run_name='__main__')")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2 and not out.stdout and len(lines) == 1, out.stderr[-2000:]
  assert blocked in lines[0] and "pip install torch==2.13.0 x-transformers" in lines[0]


def test_both_steps_run_side_by_side_at_a_tiny_shape():
  pytest.importorskip("torch")
  pytest.importorskip("x_transformers")
  shape = ["--layers=1", "--d-model=64", "--heads=2", "--mlp-dim=128", "--vocab=512", "--seq-len=32", "--batch=2"]
  out = subprocess.run([sys.executable, "benchmarks/peers.py", "--schemes=alibi", "--json", "--warmup=1", "--steps=1",
                        "--windows=2", *shape], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  row = json.loads(out.stdout.strip().splitlines()[-1])
  assert row["scheme"] == "alibi" and len(row["ours_step_ms"]) == len(row["theirs_step_ms"]) == 2
  assert row["ours_tokens_per_s"] > 0 and row["theirs_tokens_per_s"] > 0 and row["ratio_min"] <= row["ratio"]
  assert row["commit"] and row["x_transformers"] and row["torch_threads"] >= 1
  # The same model size but for the norms' biases: ours has 3 LayerNorms with a bias of d each, theirs none.
  assert row["ours_params"] - row["theirs_params"] == 3 * 64
  assert row["peak_gflops"] > 0 and 0 < row["ours_mfu"] and row["bar_mfu"] == pytest.approx(2 * row["theirs_mfu"])


def test_the_ceiling_counts_both_sides_with_the_same_flops_and_the_bar_is_the_target_times_theirs():
  peers = _peers()
  row = {"ours_tokens_per_s": 3600.0, "theirs_tokens_per_s": 2700.0}
  out = peers.ceiling(row, flops_per_token=33.6e6, peak=150e9, target=2.0)
  assert out["ours_mfu"] / out["theirs_mfu"] == pytest.approx(3600 / 2700)  # the MFU ratio is the tokens/s ratio
  assert out["ours_mfu"] == pytest.approx(3600 * 33.6e6 / 150e9) and out["peak_gflops"] == pytest.approx(150)
  # 2 × theirs at 60.5 % is 121 %: beyond the peak, i.e. out of any implementation's reach on that machine.
  assert out["bar_mfu"] == pytest.approx(2 * out["theirs_mfu"]) and out["bar_mfu"] > 1
  assert peers.ceiling(row, 33.6e6, 400e9, 2.0)["bar_mfu"] < 1  # a machine with more headroom


def test_a_bad_peak_size_is_refused_in_one_line():
  out = subprocess.run([sys.executable, "benchmarks/peers.py", "--peak-size=0"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 2 and "--peak-size=0" in out.stderr.strip().splitlines()[-1]
