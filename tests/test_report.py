"""Reports from run directories: fixtures written with made-up numbers by the trainer's, evaluator's and sweep
runner's own writers (so a drift between writer and reader fails here), and one report over real tiny runs."""

import csv
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest

from configs import tiny
from research import sweeps
from research.evaluate import extrapolation
from research.report import ReportError, build_report, load_runs
from research.report import runs as runs_lib
from research.report import tables
from research.report.tables import short_names
from research.train import configuration, loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_LEN = 64
MULTIPLES = (1, 2, 4, 8)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def trial_config(scheme, seed, tie=True):
  """The config a trial of this scheme really runs with (the tiny config: 64-token windows)."""
  return configuration.apply_overrides(tiny.get_config(), {"model.position": scheme, "model.tie_embeddings": tie,
                                                           "seed": seed, "train.steps": 100})


def learned_note(multiple):
  """The evaluator's own note for a length a learned table cannot represent."""
  config = trial_config("learned", 0)
  return extrapolation.unscorable_note(configuration.model_config(config), multiple * TRAIN_LEN, TRAIN_LEN)


def _ppl(scheme, seed, multiple, tie=True):
  """Deterministic, realistic-looking numbers: rope best at 1×, alibi best beyond; seeds differ a little."""
  rng = np.random.default_rng(zlib.crc32(f"{scheme}/{seed}/{multiple}/{tie}".encode()))
  base = {"alibi": 20.0, "rope": 19.5, "learned": 22.0, "t5": 21.0}[scheme] + (0.0 if tie else 0.8)
  growth = {"alibi": 0.02, "rope": 0.6, "learned": 5.0, "t5": 0.1}[scheme]
  return float(base * (1 + growth * math.log2(multiple)) + rng.normal(0, 0.3))


def write_trial(directory, name, scheme, seed, tie=True, evaluate=True):
  """A finished trial's files, written by the trainer's and the evaluator's own writers (config.json, metrics.jsonl,
  summary.json, eval/extrapolation.json) with made-up numbers; returns the numbers written."""
  trial = directory / name
  trial.mkdir(parents=True, exist_ok=True)
  config = trial_config(scheme, seed, tie)
  loop.write_config(config, trial)
  log = loop.MetricsLog(trial, resume_step=0)
  for step in range(0, 101, 20):
    loss = 6.0 * math.exp(-step / 60) + math.log(_ppl(scheme, seed, 1, tie))
    log.write(loop.train_record(step, {"loss": loss, "ppl": math.exp(loss), "lr": 1e-3, "tokens_per_s": 1e4},
                                tokens_seen=step * 1024.0))
    if step % 50 == 0:
      valid = {"loss": loss + 0.05, "ppl": math.exp(loss + 0.05), "accuracy": 0.3, "tokens": 4096.0,
               "tokens_per_s": 1e5}
      log.write(loop.valid_record(step, valid, lr=1e-3))
  log.close()
  valid_ppl = _ppl(scheme, seed, 1, tie) * 1.01  # the trainer's validation differs a little from the 1× evaluation
  valid = {"loss": math.log(valid_ppl), "ppl": valid_ppl, "accuracy": 0.3}
  loop.write_summary(trial, loop.summary_record(step=100, train_loss=3.0, valid=valid, tokens_seen=51200.0,
                                                num_params=100000, num_embedding_params=32768, vocab_size=512,
                                                wall_s=12.5))
  ppls = {}
  if evaluate:
    results = []
    for m in MULTIPLES:
      if scheme == "learned" and m > 1:
        results.append(extrapolation.result_record(m, m * TRAIN_LEN, note=learned_note(m)))
      else:
        ppls[m] = _ppl(scheme, seed, m, tie)
        results.append(extrapolation.result_record(m, m * TRAIN_LEN, ppls[m], 4096))
    extrapolation.write_report(trial, extrapolation.report_record(
        train_len=TRAIN_LEN, mode="nonoverlapping", stride=None, split="valid", checkpoint_step=100,
        rope_scaling=None, rope_factor=None, results=results))
  return valid_ppl, ppls


def make_sweep(directory, schemes=("alibi", "rope", "learned"), seeds=(0, 1, 2), ties=None):
  """3 schemes × 3 seeds, one failed trial (t5) and one pending trial; returns {(scheme, tie): [(valid, ppls)]}.
  sweep.json is written by the sweep runner's own writer."""
  trials, status, values = [], {}, {}
  for scheme in schemes:
    for tie in (ties or (True,)):
      for seed in seeds:
        name = f"{scheme}-{'tied' if tie else 'untied'}-s{seed}" if ties else f"{scheme}-s{seed}"
        values.setdefault((scheme, tie), []).append(write_trial(directory, name, scheme, seed, tie))
        overrides = {"model.position": scheme, "seed": seed}
        if ties:
          overrides["model.tie_embeddings"] = tie
        trials.append(sweeps.Trial(name, overrides))
        status[name] = {"status": "finished", "error": None}
  tie = {"model.tie_embeddings": True} if ties else {}
  (directory / "t5-s0").mkdir(parents=True)
  loop.write_config(trial_config("t5", 0), directory / "t5-s0")  # failed after writing its config
  trials.append(sweeps.Trial("t5-s0", {"model.position": "t5", "seed": 0, **tie}))
  status["t5-s0"] = {"status": "failed", "error": "RESOURCE_EXHAUSTED: out of memory\nwhile allocating 3.2G"}
  trials.append(sweeps.Trial("rope-s9", {"model.position": "rope", "seed": 9, **tie}))
  status["rope-s9"] = {"status": "pending", "error": None}
  sweeps.write_index(directory, sweeps.Sweep("positions_demo", "configs/clm.py", trials, None), status)
  return values


def parse_md_table(text):
  """{row label: [cell texts]} and the header, from the first markdown table in `text`."""
  lines = [l for l in text.splitlines() if l.startswith("|")]
  split = lambda l: [c.strip() for c in l.strip().strip("|").split("|")]
  header = split(lines[0])
  rows = {split(l)[0]: split(l)[1:] for l in lines[2:]}
  return header, rows


@pytest.fixture
def sweep(tmp_path):
  values = make_sweep(tmp_path / "sweep")
  return tmp_path / "sweep", values


def test_cells_are_numpy_mean_and_sample_std(sweep):
  directory, values = sweep
  report = build_report(directory)
  table = report.data
  labels = [g.label for g in table.groups]
  assert labels == ["position=alibi", "position=rope", "position=learned", "position=t5"]
  header, rows = parse_md_table(report.table)
  assert header == ["group", "n", "valid ppl", "1× (64)", "2× (128)", "4× (256)", "8× (512)"]
  for gi, scheme in enumerate(["alibi", "rope", "learned"]):
    seeds = values[(scheme, True)]
    expected = [[v for v, _ in seeds]] + [[p[m] for _, p in seeds if m in p] for m in MULTIPLES]
    for column, vals in zip(table.columns, expected):
      cell = table.cell(gi, column)
      if not vals:
        assert cell.n == 0
        continue
      assert cell.mean == pytest.approx(np.mean(vals), rel=1e-12)
      assert cell.std == pytest.approx(np.std(vals, ddof=1), rel=1e-12)
    text = rows[f"position={scheme}"][1].strip("*")
    assert text.startswith(f"{np.mean(expected[0]):.2f} ± {np.std(expected[0], ddof=1):.2f}")
    assert rows[f"position={scheme}"][0] == "3"  # n: the pending rope seed does not count


def test_best_per_column_is_bold_and_only_it(sweep):
  directory, values = sweep
  _, rows = parse_md_table(build_report(directory).table)
  means = {s: [np.mean([v for v, _ in values[(s, True)]])] +
          [np.mean([p[m] for _, p in values[(s, True)]]) if s != "learned" or m == 1 else np.inf for m in MULTIPLES]
          for s in ("alibi", "rope", "learned")}
  for col in range(1 + len(MULTIPLES)):
    best = min(means, key=lambda s: means[s][col])
    bold = [label for label, cells in rows.items() if cells[1 + col].startswith("**")]
    assert bold == [f"position={best}"], (col, bold)
  # the fabricated numbers put rope first at 1× and alibi first far beyond, so both rows get a bold cell
  assert rows["position=rope"][2].startswith("**") and rows["position=alibi"][-1].startswith("**")


def test_na_where_ppl_is_null_with_the_note_and_failed_trials_listed(sweep):
  directory, _ = sweep
  report = build_report(directory)
  _, rows = parse_md_table(report.table)
  learned = rows["position=learned"]
  assert not learned[2].startswith("n/a")  # 1× has numbers
  marks = [re.fullmatch(r"n/a\[\^(\d+)\]", c).group(1) for c in learned[3:]]
  assert len(set(marks)) == 1  # the evaluator's note is the same at every length: one footnote for the row
  assert f"[^{marks[0]}]: {learned_note(2)}" in report.table
  assert rows["position=t5"][0] == "0" and all(c.startswith("n/a") for c in rows["position=t5"][1:])
  md = report.markdown_path.read_text()
  assert md.startswith("# Report: positions_demo")
  failed = md.split("## Failed and unfinished trials")[1].split("##")[0]
  assert "`t5-s0`: failed: RESOURCE_EXHAUSTED: out of memory while allocating 3.2G" in failed
  assert "`rope-s9`: pending" in failed
  assert "alibi-s0" not in failed


def test_csv_parses_back_to_the_same_means(sweep):
  directory, values = sweep
  report = build_report(directory)
  with open(report.csv_path, newline="") as f:
    rows = {r["group"]: r for r in csv.DictReader(f)}
  assert set(rows) == {"position=alibi", "position=rope", "position=learned", "position=t5"}
  for scheme in ("alibi", "rope", "learned"):
    row, seeds = rows[f"position={scheme}"], values[(scheme, True)]
    assert row["position"] == scheme and int(row["n"]) == 3
    assert float(row["valid_ppl_mean"]) == pytest.approx(np.mean([v for v, _ in seeds]), rel=1e-12)
    assert float(row["valid_ppl_std"]) == pytest.approx(np.std([v for v, _ in seeds], ddof=1), rel=1e-12)
    assert float(row["ppl_1x_64_mean"]) == pytest.approx(np.mean([p[1] for _, p in seeds]), rel=1e-12)
  assert rows["position=learned"]["ppl_2x_128_mean"] == "" and rows["position=learned"]["ppl_2x_128_n"] == "0"
  assert float(rows["position=alibi"]["ppl_8x_512_mean"]) == pytest.approx(
      np.mean([p[8] for _, p in values[("alibi", True)]]), rel=1e-12)
  assert rows["position=t5"]["n"] == "0" and rows["position=t5"]["valid_ppl_mean"] == ""


def test_latex_is_booktabs_and_escaped(tmp_path):
  make_sweep(tmp_path, schemes=("alibi", "rope"), seeds=(0, 1), ties=(True, False))
  tex = build_report(tmp_path).latex_path.read_text()
  for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
    assert tex.count(rule) == 1
  assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule")
  assert "position=alibi, tie\\_embeddings=True" in tex
  assert "positions\\_demo" in tex
  assert not re.search(r"(?<!\\)_", tex.replace("\\usepackage", "")), "unescaped underscore"
  body = tex.split("\\midrule")[1].split("\\bottomrule")[0]
  assert body.count("\\textbf{") == 5  # one per column: valid ppl and four lengths
  assert "$\\pm$" in body and "±" not in tex


def test_pngs_are_written_and_tied_plot_only_when_tie_is_swept(tmp_path):
  scheme_dir, tie_dir = tmp_path / "schemes", tmp_path / "ties"
  make_sweep(scheme_dir)
  make_sweep(tie_dir, schemes=("alibi", "rope"), seeds=(0, 1), ties=(True, False))
  (scheme_dir / "tied_vs_untied.png").write_bytes(PNG_MAGIC + b"stale")  # an earlier report's plot
  schemes, ties = build_report(scheme_dir), build_report(tie_dir)
  assert set(schemes.plots) == {"ppl_vs_length.png", "curves.png"}
  assert not (scheme_dir / "tied_vs_untied.png").exists()
  assert "tie_embeddings is not among the swept fields" in schemes.markdown_path.read_text()
  assert set(ties.plots) == {"ppl_vs_length.png", "curves.png", "tied_vs_untied.png"}
  for report in (schemes, ties):
    md = report.markdown_path.read_text()
    for name, path in report.plots.items():
      data = path.read_bytes()
      assert data[:8] == PNG_MAGIC and len(data) > 10_000, name
      assert f"]({name})" in md
  labels = [g.label for g in ties.data.groups]
  assert labels[:2] == ["position=alibi, tie_embeddings=True", "position=alibi, tie_embeddings=False"]


def test_plots_are_skipped_and_said_so_when_data_is_missing(tmp_path):
  write_trial(tmp_path, "only", "rope", 0, evaluate=False)
  (tmp_path / "only" / "metrics.jsonl").unlink()
  report = build_report(tmp_path / "only")
  assert report.plots == {}
  md = report.markdown_path.read_text()
  assert "(`ppl_vs_length.png`): skipped, no finished trial has an evaluated length" in md
  assert "(`curves.png`): skipped, no trial has a metrics.jsonl" in md


def test_a_picture_is_replaced_whole_or_not_at_all_and_a_failed_write_leaves_no_temporary(tmp_path):
  """research/figures.py, the one PNG writer of the report, research-analyze and research-evaluate (two of the four
  writers it replaced left their temporary file behind when the write failed)."""
  from research import figures
  fig = figures.figure((2, 2))
  fig.add_subplot().plot([0, 1], [1, 0])
  path = figures.save_png(fig, tmp_path / "a.png", dpi=50, tight=True)
  assert path.read_bytes().startswith(b"\x89PNG") and [p.name for p in tmp_path.iterdir()] == ["a.png"]
  target = tmp_path / "taken.png"
  target.mkdir()  # the rename over it fails after the PNG was written
  with pytest.raises(OSError):
    figures.save_png(fig, target, dpi=50)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "taken.png"] and not any(target.iterdir())


def test_single_run_directory_shows_the_mean_without_std(tmp_path):
  valid, _ = write_trial(tmp_path, "run", "alibi", 0)
  report = build_report(tmp_path / "run")
  assert report.runs.layout == "single" and len(report.data.groups) == 1
  _, rows = parse_md_table(report.table)
  assert rows["run"][:2] == ["1", f"{valid:.2f}"]  # n=1: no ± and nothing bolded in a one-row table
  assert (tmp_path / "run" / "report.md").is_file()


def test_directory_of_runs_without_sweep_json_derives_the_swept_fields(tmp_path):
  values = {}
  for scheme in ("alibi", "rope"):
    for seed in (0, 1):
      values.setdefault(scheme, []).append(write_trial(tmp_path, f"{scheme}{seed}", scheme, seed)[0])
  (tmp_path / "notes").mkdir()  # not a run: ignored
  runs = load_runs(tmp_path)
  assert runs.layout == "runs" and runs.swept_fields == ["model.position", "seed"]  # config.json order (sorted)
  report = build_report(tmp_path)
  _, rows = parse_md_table(report.table)
  assert set(rows) == {"position=alibi", "position=rope"}
  assert report.data.cell(0, "valid_ppl").mean == pytest.approx(np.mean(values["alibi"]), rel=1e-12)


def test_a_sweep_directory_among_runs_is_named_as_skipped_not_silently_left_out(tmp_path):
  """PARENT holding a sweep SW/ (sweep.json + trials) and a run w1/: the sweep's trials are not merged in (another
  layout, its own index), and report.md says so with the command that reports it; only sweeps: one error naming it."""
  make_sweep(tmp_path / "SW", schemes=("alibi",), seeds=(0,))
  with pytest.raises(ReportError, match=r"holds no runs: .*SW is a sweep directory: report it on its own "
                                        r"\(research-report .*SW\)"):
    load_runs(tmp_path)
  write_trial(tmp_path, "w1", "rope", 0)
  report = build_report(tmp_path)
  assert [t.name for t in report.runs.trials] == ["w1"]
  assert report.runs.skipped == {"SW": f"a sweep directory: report it on its own (research-report {tmp_path / 'SW'})"}
  text = report.markdown_path.read_text()
  assert f"Skipped directories (not reported here): `SW`: a sweep directory: report it on its own (research-report " \
         f"{tmp_path / 'SW'})." in text
  assert build_report(tmp_path / "SW").runs.layout == "sweep"  # reported on its own, as the line says


def test_partially_evaluated_group_shows_its_own_n(tmp_path):
  seeds = [write_trial(tmp_path, f"a{s}", "alibi", s, evaluate=s != 2) for s in range(3)]
  seeds += [write_trial(tmp_path, f"r{s}", "rope", s) for s in range(3)]
  report = build_report(tmp_path)
  _, rows = parse_md_table(report.table)
  cell = rows["position=alibi"][2]
  assert re.search(r" \(n=2\)\**\[\^\d\]$", cell), cell
  assert report.data.cell(0, "ppl_1x_64").mean == pytest.approx(np.mean([p[1] for _, p in seeds[:2]]), rel=1e-12)
  assert "not evaluated (no eval/extrapolation.json)" in report.table


def test_short_names_use_the_full_path_only_when_ambiguous():
  assert short_names(["model.dropout", "train.dropout", "model.position"]) == {
      "model.dropout": "model.dropout", "train.dropout": "train.dropout", "model.position": "position"}


@pytest.mark.parametrize("kind", ["missing", "empty", "foreign", "file"])
def test_unusable_directories_are_errors_naming_the_path(tmp_path, kind):
  path = tmp_path / "runs"
  if kind == "empty":
    path.mkdir()
  elif kind == "foreign":
    (path / "subdir").mkdir(parents=True)
    (path / "README.txt").write_text("not a run")
    (path / "subdir" / "data.json").write_text("{}")
  elif kind == "file":
    path.write_text("x")
  with pytest.raises(ReportError) as info:
    build_report(path)
  assert isinstance(info.value, ValueError)
  assert str(path) in str(info.value)
  if kind in ("empty", "foreign"):
    assert "sweep.json" in str(info.value) and "config.json" in str(info.value)
  assert not (path / "report.md").exists()


def test_malformed_run_file_names_the_file(tmp_path):
  write_trial(tmp_path, "run", "alibi", 0)
  (tmp_path / "run" / "summary.json").write_text("{not json")
  with pytest.raises(ReportError, match=re.escape(str(tmp_path / "run" / "summary.json"))):
    build_report(tmp_path / "run")


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "experiments.report", *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60)


def test_cli_prints_the_table_and_paths(sweep, tmp_path):
  directory, _ = sweep
  result = _cli(directory)
  assert result.returncode == 0, result.stderr
  assert "| group | n | valid ppl | 1× (64) |" in result.stdout
  assert "| position=learned | 3 |" in result.stdout
  assert f"report: {directory / 'report.md'}" in result.stdout
  assert f"plot: {directory / 'ppl_vs_length.png'}" in result.stdout
  assert (directory / "table.tex").is_file()

  empty = tmp_path / "empty"
  empty.mkdir()
  result = _cli(empty)
  assert result.returncode == 2 and result.stdout == ""
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and str(empty) in lines[0]


def test_report_package_does_not_import_jax_flax_model_or_trainer():
  code = ("import sys, research.report, experiments.report; "
          "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax') "
          "or m.startswith(('research.model', 'research.train'))]; print(bad); sys.exit(1 if bad else 0)")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout + result.stderr


def _write_scaled(trial_dir, scaling, seed, factor=None):
  """eval/extrapolation_<scaling>.json as research-evaluate --rope_scaling writes it; returns {multiple: ppl}."""
  ppls = {m: _ppl("rope", seed, m) * (1.0 - 0.05 * math.log2(m)) for m in MULTIPLES}  # scaling helps beyond 1×
  results = [extrapolation.result_record(m, m * TRAIN_LEN, p, 4096) for m, p in ppls.items()]
  extrapolation.write_report(trial_dir, extrapolation.report_record(
      train_len=TRAIN_LEN, mode="nonoverlapping", stride=None, split="valid", checkpoint_step=100,
      rope_scaling=scaling, rope_factor=factor, results=results))
  return ppls


def test_rope_scaled_evaluations_are_extra_rows_below_their_group(tmp_path):
  directory = tmp_path / "sweep"
  make_sweep(directory, schemes=("alibi", "rope"))
  plain = build_report(directory)
  assert "rope_scaling" not in plain.table + plain.csv_path.read_text() + plain.markdown_path.read_text()
  plain_rows = parse_md_table(plain.table)[1]

  yarn = [_write_scaled(directory / f"rope-s{s}", "yarn", s) for s in (0, 1)]  # seed 2 has no yarn evaluation
  linear = [_write_scaled(directory / f"rope-s{s}", "linear", s, factor=4.0) for s in (0, 1, 2)]
  report = build_report(directory)
  labels = [g.label for g in report.data.groups]
  assert labels == ["position=alibi", "position=rope", "position=rope, rope_scaling=linear",
                    "position=rope, rope_scaling=yarn", "position=t5"]
  header, rows = parse_md_table(report.table)
  assert header == ["group", "n", "valid ppl", "1× (64)", "2× (128)", "4× (256)", "8× (512)"]
  bare = lambda cells: [re.sub(r"\*\*|\[\^\d+\]", "", c) for c in cells]
  for label in plain_rows:  # the unscaled rows keep their numbers (bold and footnote numbers may move)
    assert bare(rows[label]) == bare(plain_rows[label])
  gi = labels.index("position=rope, rope_scaling=yarn")
  for m in MULTIPLES:
    cell = report.data.cell(gi, f"ppl_{m}x_{m * TRAIN_LEN}")
    assert cell.n == 2 and cell.mean == pytest.approx(np.mean([p[m] for p in yarn]), rel=1e-12)
  assert report.data.cell(labels.index("position=rope, rope_scaling=linear"), "ppl_8x_512").mean == pytest.approx(
      np.mean([p[8] for p in linear]), rel=1e-12)
  yarn_row = rows["position=rope, rope_scaling=yarn"]
  assert yarn_row[0] == "3" and re.fullmatch(r"n/a\[\^\d+\]", yarn_row[1])  # valid ppl belongs to the plain row
  assert all(re.search(r" \(n=2\)\**(\[\^\d+\])+$", c) for c in yarn_row[2:]), yarn_row
  # At 1x, without --rope_factor, the factor is 1: no scaling, the unscaled row's value, which is not ranked twice.
  assert [report.data.cell(gi, f"ppl_{m}x_{m * TRAIN_LEN}").unscaled for m in MULTIPLES] == [True, False, False, False]
  assert gi not in report.data.best["ppl_1x_64"] and tables.UNSCALED_NOTE in report.table
  assert not report.data.cell(labels.index("position=rope, rope_scaling=linear"), "ppl_1x_64").unscaled  # factor 4
  assert "not evaluated (no eval/extrapolation_yarn.json)" in report.table
  assert "valid ppl is in the row without rope_scaling" in report.table
  md = report.markdown_path.read_text()
  assert "yarn, factor = the multiple at each length" in md and "linear, factor 4" in md
  with open(report.csv_path, newline="") as f:
    csv_rows = {r["group"]: r for r in csv.DictReader(f)}
  assert csv_rows["position=rope, rope_scaling=yarn"]["rope_scaling"] == "yarn"
  assert csv_rows["position=rope"]["rope_scaling"] == "" and csv_rows["position=rope"]["position"] == "rope"
  assert float(csv_rows["position=rope, rope_scaling=linear"]["ppl_4x_256_mean"]) == pytest.approx(
      np.mean([p[4] for p in linear]), rel=1e-12)
  assert "position=rope, rope\\_scaling=yarn" in report.latex_path.read_text()
  assert set(report.plots) == {"ppl_vs_length.png", "curves.png"}
  # A file of another name (a user's copy) is no evaluation of a scaling: no row, the table unchanged.
  for s in (0, 1, 2):
    shutil.copy(directory / f"rope-s{s}" / "eval" / "extrapolation.json",
                directory / f"rope-s{s}" / "eval" / "extrapolation_backup.json")
  assert [g.label for g in build_report(directory).data.groups] == labels


def test_the_reports_scalings_are_the_evaluators():
  from research import run_fields
  assert run_fields.EVALUATION_SCALINGS == extrapolation.ROPE_SCALINGS


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory):
  """Two real tiny trials (trained, evaluated at 1× and 2×) and their sweep.json, built once per session."""
  directory = tmp_path_factory.mktemp("real") / "sweep"
  trials, status = [], {}
  for scheme in ("alibi", "learned"):
    overrides = {"model.position": scheme, "seed": 0}
    trial = sweeps.Trial(sweeps.trial_name(overrides), overrides)
    config = configuration.apply_overrides(tiny.get_config(), {
        **overrides, "data.seq_len": 32, "train.steps": 20, "train.eval_every": 10, "train.checkpoint_every": 10,
        "train.eval_batches": 0, "train.async_checkpoints": False})
    loop.train(config, directory / trial.name)
    extrapolation.evaluate_run(directory / trial.name, (1, 2), by_position=True)
    trials.append(trial)
    status[trial.name] = {"status": "finished", "error": None}
  sweeps.write_index(directory, sweeps.Sweep("real", "configs/tiny.py", trials, {"lengths": [1, 2]}), status)
  return directory


@pytest.mark.slow
def test_a_report_over_real_runs_shows_what_the_trainer_and_evaluator_wrote(real_sweep):
  report = build_report(real_sweep)
  header, rows = parse_md_table(report.table)
  assert header == ["group", "n", "valid ppl", "valid ppl (rare)", "1× (32)", "2× (64)"]
  assert set(rows) == {"position=alibi", "position=learned"}
  for scheme in ("alibi", "learned"):
    trial = real_sweep / f"position={scheme},seed=0"
    summary = json.loads((trial / "summary.json").read_text())
    evaluated = json.loads((trial / "eval" / "extrapolation.json").read_text())["results"]
    gi = [g.label for g in report.data.groups].index(f"position={scheme}")
    assert report.data.cell(gi, "valid_ppl").mean == pytest.approx(summary["valid_ppl"], rel=1e-12)
    if summary.get("valid_ppl_rare") is not None:
      assert report.data.cell(gi, "valid_ppl_rare").mean == pytest.approx(summary["valid_ppl_rare"], rel=1e-12)
    assert report.data.cell(gi, "ppl_1x_32").mean == pytest.approx(evaluated[0]["ppl"], rel=1e-12)
    # The trainer's whole-split validation and the evaluator's 1× window are the same windows: the same number.
    assert evaluated[0]["ppl"] == pytest.approx(summary["valid_ppl"], rel=1e-4)
  learned = rows["position=learned"]
  assert re.fullmatch(r"n/a\[\^\d+\]", learned[header.index("2× (64)") - 1])
  note = json.loads((real_sweep / "position=learned,seed=0" / "eval" / "extrapolation.json").read_text())
  assert note["results"][1]["note"] in report.table
  assert set(report.plots) == {"ppl_vs_length.png", "curves.png", "loss_by_position.png"}
  # What research-evaluate --by_position wrote is what the report read: the same buckets, and per length they
  # average back to the table's perplexity.
  for trial in report.runs.trials:
    written = json.loads((trial.path / "eval" / "loss_by_position.json").read_text())["results"]
    assert len(trial.by_position.curves) == len(written) == 2 and trial.by_position.train_len == 32
    gi = [g.label for g in report.data.groups].index(f"position={trial.field('model.position')}")
    for curve, w, column in zip(trial.by_position.curves, written, ("ppl_1x_32", "ppl_2x_64")):
      assert (curve.multiple, curve.length, curve.note) == (w["multiple"], w["length"], w.get("note"))
      if curve.note is None:
        assert (list(curve.edges), list(curve.tokens), list(curve.loss)) == (w["edges"], w["tokens"], w["loss"])
        mean = math.fsum(t * v for t, v in zip(curve.tokens, curve.loss) if t) / sum(curve.tokens)
        assert mean == pytest.approx(math.log(report.data.cell(gi, column).mean), rel=1e-5)
      else:
        assert curve.note == note["results"][1]["note"]


@pytest.fixture(scope="module")
def quality_benchmarks():
  """The benchmarks record research-analyze computes, from gensim's own test vectors (its keys are what reports
  read; the test then sets the figures it needs)."""
  from gensim.models import KeyedVectors
  from gensim.test.utils import datapath
  from research.analysis import quality
  kv = KeyedVectors.load_word2vec_format(datapath("euclidean_vectors.bin"), binary=True)
  return quality.benchmarks(kv)


def _write_quality(trial_dir, benchmarks, analogy, wordsim, simlex, analogy_init=None, vectors_of="table"):
  """eval/embedding_quality.json through research-analyze's writer, with these figures (and the initial table's
  analogy accuracy when given; None writes what a run without embedding_init.npy gets); with vectors_of="input",
  the file of `research-analyze --vectors_of=input` instead."""
  import copy
  from research.analysis import quality
  record = copy.deepcopy(benchmarks)
  record["analogy"]["accuracy"], record["wordsim353"]["spearman"], record["simlex999"]["spearman"] = \
      analogy, wordsim, simlex
  start = None
  if analogy_init is not None:
    start = copy.deepcopy(benchmarks)
    start["analogy"]["accuracy"] = analogy_init
  quality.write_quality(trial_dir, {"checkpoint_step": 100, "benchmarks": record, "neighbours": {},
                                    "benchmarks_init": start, "vectors_of": vectors_of},
                        quality.QUALITY_FILES[vectors_of])


def test_an_analogy_accuracy_of_no_scored_question_is_na_in_files_written_before_it_was_null(tmp_path,
                                                                                               quality_benchmarks):
  """research-analyze used to write gensim's 0.0 for 0 / 0 questions; the report reads it as n/a, not a measured 0."""
  import copy
  from research.analysis import quality
  write_trial(tmp_path, "a0", "alibi", 0)
  record = copy.deepcopy(quality_benchmarks)
  record["analogy"].update(accuracy=0.0, correct=0, scored=0, coverage=0.0)
  quality.write_quality(tmp_path / "a0", {"checkpoint_step": 100, "benchmarks": record, "neighbours": {},
                                          "benchmarks_init": None, "vectors_of": "table"},
                        quality.QUALITY_FILES["table"])
  cell = build_report(tmp_path).data.cell(0, "quality_analogy")
  assert cell.n == 0 and cell.notes == ("analogy not scored (no covered items)",)


def test_embedding_quality_columns_appear_when_analyzed_and_the_highest_is_best(tmp_path, quality_benchmarks):
  for seed in (0, 1):
    write_trial(tmp_path, f"a{seed}", "alibi", seed)
    write_trial(tmp_path, f"r{seed}", "rope", seed)
  report = build_report(tmp_path)
  assert "analogy acc" not in report.table  # no run analyzed: no quality columns
  _write_quality(tmp_path / "a0", quality_benchmarks, 0.10, 0.30, 0.20)
  _write_quality(tmp_path / "a1", quality_benchmarks, 0.20, 0.40, None)
  _write_quality(tmp_path / "r0", quality_benchmarks, 0.05, 0.50, 0.10)
  report = build_report(tmp_path)
  header, rows = parse_md_table(report.table)
  assert header[-3:] == ["analogy acc", "WordSim ρ", "SimLex ρ"]
  alibi, rope = rows["position=alibi"], rows["position=rope"]
  assert alibi[-3].startswith("**0.150 ± 0.071") and alibi[-2].startswith("0.350 ± 0.071")
  assert rope[-3].startswith("0.050 (n=1)") and rope[-2].startswith("**0.500 (n=1)")
  assert alibi[-1].startswith("**0.200 (n=1)")  # a null correlation is n/a for that trial, not a zero
  assert "not analyzed (no eval/embedding_quality.json; run research-analyze)" in report.table
  assert "analogy acc." in (tmp_path / "table.tex").read_text()


def test_the_initial_tables_analogy_floor_is_a_descriptive_column_when_any_trial_has_it(tmp_path,
                                                                                        quality_benchmarks):
  for seed in (0, 1):
    write_trial(tmp_path, f"a{seed}", "alibi", seed)
    write_trial(tmp_path, f"r{seed}", "rope", seed)
  for name, analogy in (("a0", 0.10), ("a1", 0.20), ("r0", 0.05), ("r1", 0.07)):
    _write_quality(tmp_path / name, quality_benchmarks, analogy, 0.3, 0.2)
  assert "analogy acc at init" not in build_report(tmp_path).table  # no trial has the figure: no column
  for name, floor in (("a0", 0.02), ("a1", 0.04), ("r0", 0.30)):
    _write_quality(tmp_path / name, quality_benchmarks, 0.10 if name == "a0" else 0.20 if name == "a1" else 0.05,
                   0.3, 0.2, analogy_init=floor)
  report = build_report(tmp_path)
  header, rows = parse_md_table(report.table)
  at = header.index("analogy acc at init") - len(header)  # rows are indexed from the end, as above
  assert header[at - 3:at] == ["analogy acc", "WordSim ρ", "SimLex ρ"]
  alibi, rope = rows["position=alibi"], rows["position=rope"]
  assert alibi[at].startswith("0.030 ± 0.014") and rope[at].startswith("0.300 (n=1)")  # descriptive: no bold
  assert "**" not in alibi[at] + rope[at]
  assert "no initial table scored" in report.table  # r1 was analyzed without one
  assert "analogy acc.\\ at init" in (tmp_path / "table.tex").read_text()


def test_mlm_evaluations_of_both_masking_rules_are_named_and_warned_about(tmp_path):
  """An MLM's perplexity depends on its masks: files written before per-row masks (no mlm_masks) and after are
  another setting, as another mode or split would be."""
  for name, seed in (("m0", 0), ("m1", 1)):
    write_trial(tmp_path, name, "alibi", seed)
    config = configuration.apply_overrides(trial_config("alibi", seed), {"objective": "mlm"})
    loop.write_config(config, tmp_path / name)
  path = tmp_path / "m1" / "eval" / "extrapolation.json"
  record = json.loads(path.read_text())
  record["mlm_masks"] = extrapolation.MLM_MASKS  # what research-evaluate writes for an MLM run now
  path.write_text(json.dumps(record))
  text = build_report(tmp_path).markdown_path.read_text()
  assert f"MLM masks={extrapolation.MLM_MASKS}" in text and "MLM masks=per batch" in text
  assert "the trials were evaluated with different settings" in text
  record = json.loads(path.read_text())
  (tmp_path / "m0" / "eval" / "extrapolation.json").write_text(json.dumps(record))  # both per row now
  text = build_report(tmp_path).markdown_path.read_text()
  assert "MLM masks=per batch" not in text and "different settings" not in text
  # A causal LM evaluated by the same command is no other setting: the masks are said of the MLM trials only.
  write_trial(tmp_path, "c0", "alibi", 0)
  text = build_report(tmp_path).markdown_path.read_text()
  assert f"(MLM masks={extrapolation.MLM_MASKS})." in text and "different settings" not in text


def test_an_initial_table_scored_without_a_covered_question_is_not_called_unscored(tmp_path, quality_benchmarks):
  for name, seed in (("a0", 0), ("a1", 1)):
    write_trial(tmp_path, name, "alibi", seed)
    _write_quality(tmp_path / name, quality_benchmarks, 0.1, 0.3, 0.2, analogy_init=0.02)
  path = tmp_path / "a1" / "eval" / "embedding_quality.json"
  record = json.loads(path.read_text())  # what research-analyze writes when no question is covered: scored 0
  record["benchmarks_init"]["analogy"].update(accuracy=None, correct=0, scored=0, coverage=0.0)
  path.write_text(json.dumps(record))
  report = build_report(tmp_path)
  assert "the initial table was scored, but no analogy question was covered" in report.table
  assert "no initial table scored" not in report.table


def test_the_input_vectors_scores_are_their_own_columns_next_to_the_tables(tmp_path, quality_benchmarks):
  for seed in (0, 1):
    write_trial(tmp_path, f"a{seed}", "alibi", seed)
    write_trial(tmp_path, f"r{seed}", "rope", seed)
  for name in ("a0", "a1", "r0", "r1"):
    _write_quality(tmp_path / name, quality_benchmarks, 0.01, 0.05, 0.07)
  assert "(input)" not in build_report(tmp_path).table  # no run scored its input vectors: no such columns
  for name, wordsim in (("a0", 0.10), ("a1", 0.14), ("r0", 0.30)):
    _write_quality(tmp_path / name, quality_benchmarks, 0.02, wordsim, 0.15, vectors_of="input")
  report = build_report(tmp_path)
  header, rows = parse_md_table(report.table)
  assert header[-6:] == ["analogy acc", "WordSim ρ", "SimLex ρ", "analogy acc (input)", "WordSim ρ (input)",
                         "SimLex ρ (input)"]
  alibi, rope = rows["position=alibi"], rows["position=rope"]
  assert "0.050 ± 0.000" in alibi[-5] and "0.050 ± 0.000" in rope[-5]  # the table's figures, unchanged
  assert alibi[-2].startswith("0.120 ± 0.028") and rope[-2].startswith("**0.300 (n=1)")  # the input file's
  assert "not analyzed (no eval/embedding_quality_input.json; run research-analyze --vectors_of=input)" in report.table
  assert "WordSim $\\rho$ (input)" in (tmp_path / "table.tex").read_text()


def _write_rare(trial_dir, scale, seed):
  """eval/rare_tokens.json as research-analyze --rare writes it: rare.rare_report on a real (random) table."""
  from research.analysis import rare
  rng = np.random.default_rng(seed)
  counts = (1000 / np.arange(1, 201)).astype(np.int64)
  counts[-20:] = 0
  table = rng.normal(size=(200, 8)) * scale + (scale - 1.0)  # scale 1: isotropic; larger: a common direction
  markers = rare.marker_rows(len(table))  # in no bucket, as analyze_run writes them
  report = {**rare.rare_report(table, counts, init_VxD=table * 0.5, present_V=counts // 10, exclude_rows=markers),
            "marker_rows": markers}
  rare.write_rare(trial_dir, {"checkpoint_step": 100, **report})
  return report


def test_rare_token_files_written_before_marker_rows_are_named_in_the_report(tmp_path):
  """A rare_tokens.json without `marker_rows` (before the markers left the buckets) counts them in its buckets: the
  report names those trials in one line, with the command that analyses them again."""
  for name, seed in (("a0", 0), ("a1", 1)):
    write_trial(tmp_path, name, "alibi", seed)
    assert "marker_rows" in _write_rare(tmp_path / name, 1.0, seed)  # what research-analyze --rare writes now
  assert "analysed under the old rule" not in build_report(tmp_path).markdown_path.read_text()
  path = tmp_path / "a1" / "eval" / "rare_tokens.json"
  record = json.loads(path.read_text())
  del record["marker_rows"]
  path.write_text(json.dumps(record))
  lines = [l for l in build_report(tmp_path).markdown_path.read_text().splitlines() if "under the old rule" in l]
  assert len(lines) == 1 and lines[0].endswith("rerun research-analyze --rare): `a1`."), lines


def test_rare_token_geometry_columns_and_bucket_plots(tmp_path):
  from research.analysis import rare
  from research.report import plots, runs
  assert runs.RARE_GEOMETRY == rare.GEOMETRY_METRICS and runs.RARE_BUCKET_METRICS.keys() == rare.BUCKET_METRICS.keys()
  for seed in (0, 1):
    write_trial(tmp_path, f"a{seed}", "alibi", seed)
    write_trial(tmp_path, f"r{seed}", "rope", seed)
  report = build_report(tmp_path)
  assert "anisotropy" not in report.table and not list(tmp_path.glob("rare_*.png"))
  written = {name: _write_rare(tmp_path / name, scale, seed)
             for name, scale, seed in (("a0", 1.0, 0), ("a1", 1.0, 1), ("r0", 3.0, 2))}
  report = build_report(tmp_path)
  header, rows = parse_md_table(report.table)
  assert header[-5:] == ["anisotropy", "var top-1", "var top-10", "isotropy", "norm~freq ρ"]
  alibi, rope = rows["position=alibi"], rows["position=rope"]
  mean = np.mean([written[n]["geometry"]["input"]["anisotropy"] for n in ("a0", "a1")])
  assert alibi[-5].startswith(f"{mean:.3f} ± ")
  assert rope[-5].startswith(f"{written['r0']['geometry']['input']['anisotropy']:.3f} (n=1)")
  assert not any("**" in cell for cell in alibi[-5:] + rope[-5:])  # geometry has no better direction
  assert "not analyzed (no eval/rare_tokens.json; run research-analyze --rare)" in report.table
  for metric in runs.RARE_BUCKET_METRICS:
    assert (tmp_path / plots.rare_plot_name(metric)).read_bytes()[:8] == PNG_MAGIC
  assert "isotropy" in (tmp_path / "table.tex").read_text()
  for name in written:  # analyses removed: the columns and plots go too
    (tmp_path / name / "eval" / "rare_tokens.json").unlink()
  report = build_report(tmp_path)
  assert "anisotropy" not in report.table and not list(tmp_path.glob("rare_*.png"))


def test_geometry_shares_of_tables_of_different_widths_are_footnoted_and_shown_against_isotropic(tmp_path):
  """Rows whose rare_tokens.json analysed tables of different widths (a factorized table beside a plain one): var
  top-1 / top-10 of an isotropic table are 1/width and 10/width, so the raw columns differ by the width alone. Their
  cells say so, and `... / isotropic` columns beside them divide by that value; one width: none of it."""
  import csv

  from research.analysis import rare
  written = {}
  for name, position, width, seed in (("a0", "alibi", 8, 0), ("a1", "alibi", 8, 1), ("r0", "rope", 32, 2)):
    write_trial(tmp_path, name, position, seed)
    table = np.random.default_rng(seed).normal(size=(1000, width))  # isotropic: only the width differs
    counts = (10000 / np.arange(1, 1001)).astype(np.int64)
    written[name] = rare.rare_report(table, counts, exclude_rows=rare.marker_rows(1000))
    rare.write_rare(tmp_path / name, {"checkpoint_step": 100, **written[name]})
  report = build_report(tmp_path)
  header, rows = parse_md_table(report.table)
  assert header[-7:] == ["anisotropy", "var top-1", "var top-1 / isotropic", "var top-10", "var top-10 / isotropic",
                         "isotropy", "norm~freq ρ"]
  alibi, rope = rows["position=alibi"], rows["position=rope"]
  share = {n: written[n]["geometry"]["input"] for n in written}
  mean = lambda name, key: np.mean([share[n][key] for n in ("a0", "a1")])  # noqa: E731
  assert alibi[-5].startswith(f"{mean('a', 'variance_top1') * 8:.3f} ± ")
  assert alibi[-3].startswith(f"{mean('a', 'variance_top10'):.3f} ± ")  # 10 components of 8: all of it
  assert rope[-6].startswith(f"{share['r0']['variance_top1']:.3f}[^")
  assert rope[-5] == f"{share['r0']['variance_top1'] * 32:.3f}"
  assert rope[-3] == f"{share['r0']['variance_top10'] * 32 / 10:.3f}"
  # The raw shares differ ~4x by the width alone; against an isotropic table of each width they are alike.
  assert share["r0"]["variance_top1"] * 2.5 < mean("a", "variance_top1")
  assert 1 / 1.5 < share["r0"]["variance_top1"] * 32 / (mean("a", "variance_top1") * 8) < 1.5
  assert not any("**" in cell for cell in alibi[-7:] + rope[-7:])  # descriptive: no best
  note = ("var top-1 depends on the table's width (an isotropic table: 1/width), and the rows analysed tables of "
          "widths 8, 32: compare var top-1 / isotropic (1 = isotropic)")
  assert f"]: {note}" in report.table
  # Width 8 ≤ 10: the top 10 directions hold all the variance, both top-10 columns are 1 whatever the table is.
  assert ("var top-10 depends on the table's width (an isotropic table: min(10, width)/width), and the rows analysed "
          "tables of widths 8, 32: compare var top-10 / isotropic (1 = isotropic); at width 8 ≤ 10 both are 1 by "
          "construction and tell nothing") in report.table
  for cells in (alibi, rope):  # the raw shares are footnoted, the ratios not
    assert "[^" in cells[-6] and "[^" in cells[-4] and "[^" not in cells[-5] and "[^" not in cells[-3]
  markdown = report.markdown_path.read_text()
  assert "**Tables of different widths**: the rows analysed input tables of widths 8, 32" in markdown
  with open(tmp_path / "table.csv") as f:
    csv_rows = {r["group"]: r for r in csv.DictReader(f)}
  assert float(csv_rows["position=rope"]["geometry_variance_top1_vs_isotropic_mean"]) == pytest.approx(
      share["r0"]["variance_top1"] * 32)
  assert "var.\\ top-1 / isotropic" in (tmp_path / "table.tex").read_text()
  for name in ("a0", "a1"):  # one width: the columns and words go
    rare.write_rare(tmp_path / name, {**json.loads((tmp_path / "r0" / "eval" / "rare_tokens.json").read_text())})
  report = build_report(tmp_path)
  assert "/ isotropic" not in report.table and "depends on the table's width" not in report.table
  assert "Tables of different widths" not in report.markdown_path.read_text()


def test_absent_row_columns_when_rare_tokens_json_has_them(tmp_path):
  """rows / max |Δ| of the rows no batch held: exact zeros read 0, tiny changes keep their digits, no best."""
  from research.analysis import rare
  from research.report import runs
  for seed in (0, 1):
    write_trial(tmp_path, f"a{seed}", "alibi", seed)
    write_trial(tmp_path, f"r{seed}", "rope", seed)
  for name in ("a0", "a1", "r0", "r1"):
    _write_rare(tmp_path / name, 1.0, 0)
  assert "absent rows" not in build_report(tmp_path).table  # files from before the figure: no columns
  init = np.zeros((6, 2))
  present = np.array([3, 0, 0, 5, 0, 1])
  nonzero = {"a0": present, "a1": present, "r0": present + np.array([0, 0, 0, 0, 0, 2])}  # r0: one row, 2 steps
  moved = init.copy()
  moved[1, 0] = 2e-6
  for name, table in (("a0", init), ("a1", init), ("r0", moved)):
    report = json.loads((tmp_path / name / "eval" / "rare_tokens.json").read_text())
    report["absent_rows"] = {**rare.absent_rows(table, init, present), "step": 100, "note": None,
                             **rare.updated_while_absent(present, nonzero[name])}
    rare.write_rare(tmp_path / name, report)
  report = json.loads((tmp_path / "r1" / "eval" / "rare_tokens.json").read_text())
  rare.write_rare(tmp_path / "r1", {**report, "absent_rows": {**dict.fromkeys(runs.RARE_ABSENT), "step": None,
                                                              "note": "no update_counts.npz"}})
  header, rows = parse_md_table(build_report(tmp_path).table)
  assert header[-3:] == ["absent rows", "absent max Δ", "moved while absent"]
  assert rows["position=alibi"][-3:] == ["3 ± 0", "0 ± 0", "0 ± 0"]
  assert rows["position=rope"][-3].startswith("3 (n=1)") and rows["position=rope"][-2].startswith("2e-06 (n=1)")
  assert rows["position=rope"][-1].startswith("1 (n=1)")
  assert "absent rows not measured: no update_counts.npz" in build_report(tmp_path).table
  assert "absent max $|\\Delta|$" in (tmp_path / "table.tex").read_text()
  # Counts keep their digits (2016 and 2017 read 2.02e+03 ± 0.707), whatever their size.
  for name, rows_absent in (("a0", 2016), ("a1", 2017)):
    report = json.loads((tmp_path / name / "eval" / "rare_tokens.json").read_text())
    report["absent_rows"].update(rows=rows_absent, updated_while_absent=123456)
    rare.write_rare(tmp_path / name, report)
  _, rows = parse_md_table(build_report(tmp_path).table)
  assert rows["position=alibi"][-3] == "2016.5 ± 0.71" and rows["position=alibi"][-1] == "123456 ± 0"


def test_moved_while_absent_is_shown_when_the_tables_figures_are_not_measured(tmp_path):
  """An absent_rows with a note (no initial table of this shape, no checkpoint of the counts' step) still holds
  updated_while_absent, which the counts answer alone: that column shows it; the figures of the tables are n/a."""
  from research.analysis import rare
  for seed in (0, 1):
    write_trial(tmp_path, f"a{seed}", "alibi", seed)
    _write_rare(tmp_path / f"a{seed}", 1.0, seed)
  present = np.array([3, 0, 0, 5, 0, 1])
  for name, nonzero in (("a0", present), ("a1", present + np.array([0, 0, 2, 0, 0, 0]))):
    report = json.loads((tmp_path / name / "eval" / "rare_tokens.json").read_text())
    report["absent_rows"] = {"rows": None, "rows_changed": None, "max_abs_change": None, "step": None,
                             "note": "no embedding_init.npy of this table's shape",
                             **rare.updated_while_absent(present, nonzero)}  # what run_absent_rows writes then
    rare.write_rare(tmp_path / name, report)
  table = build_report(tmp_path).table
  header, rows = parse_md_table(table)
  assert header[-3:] == ["absent rows", "absent max Δ", "moved while absent"]
  (row,) = rows.values()  # one arm
  assert row[-3].startswith("n/a") and row[-2].startswith("n/a") and row[-1] == "0.5 ± 0.71"
  assert "absent rows not measured: no embedding_init.npy of this table's shape" in table


def test_a_best_valid_ppl_column_only_when_some_run_was_best_before_its_end(tmp_path):
  for seed in (0, 1):
    write_trial(tmp_path, f"a{seed}", "alibi", seed)
    write_trial(tmp_path, f"r{seed}", "rope", seed)

  def rewrite(name, best_step, best_ppl):
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    valid = {"loss": summary["valid_loss"], "ppl": summary["valid_ppl"], "accuracy": summary["valid_accuracy"]}
    best = {"best_valid_loss": math.log(best_ppl), "best_valid_ppl": best_ppl, "best_step": best_step}
    loop.write_summary(tmp_path / name, loop.summary_record(
        step=100, train_loss=3.0, valid=valid, tokens_seen=51200.0, num_params=100000, num_embedding_params=32768,
        vocab_size=512, wall_s=12.5, best=best))
    return summary["valid_ppl"]

  finals = {name: rewrite(name, 100, 1.0) for name in ("a0", "a1", "r0", "r1")}
  for name in finals:  # best == final everywhere: no column
    rewrite(name, 100, finals[name])
  assert "best valid ppl" not in build_report(tmp_path).table
  rewrite("a0", 40, 90.0)
  rewrite("a1", 60, 110.0)
  header, rows = parse_md_table(build_report(tmp_path).table)
  column = header.index("best valid ppl") - 1
  assert rows["position=alibi"][column].strip("*").startswith("100.00 ± 14.14")
  assert rows["position=rope"][column].strip("*").startswith(f"{(finals['r0'] + finals['r1']) / 2:.2f} ± ")
  assert "best valid ppl" in (tmp_path / "table.tex").read_text()


def test_a_rare_target_perplexity_column_when_summaries_have_it(tmp_path):
  for seed in (0, 1):
    write_trial(tmp_path, f"a{seed}", "alibi", seed)
    write_trial(tmp_path, f"r{seed}", "rope", seed)
  assert "valid ppl (rare)" not in build_report(tmp_path).table  # older summaries: no column
  for name, value in (("a0", 300.0), ("a1", 320.0), ("r0", 250.0), ("r1", None)):
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    valid = {"loss": summary["valid_loss"], "ppl": summary["valid_ppl"], "accuracy": summary["valid_accuracy"],
             "ppl_rare": value}
    loop.write_summary(tmp_path / name, loop.summary_record(
        step=100, train_loss=3.0, valid=valid, tokens_seen=51200.0, num_params=100000, num_embedding_params=32768,
        vocab_size=512, wall_s=12.5))
  header, rows = parse_md_table(build_report(tmp_path).table)
  column = header.index("valid ppl (rare)") - 1
  assert rows["position=alibi"][column].startswith("310.00 ± 14.14")
  assert rows["position=rope"][column].startswith("**250.00 (n=1)")  # lower is better
  # Trained on other fractions of the split, the rows count other targets as rare: that column is not ranked (the
  # others are: the validation split is the same).
  for name in ("r0", "r1"):
    loop.write_config(configuration.apply_overrides(trial_config("rope", int(name[1])), {"data.train_fraction": 0.5}),
                      tmp_path / name)
  report = build_report(tmp_path)
  assert report.data.rare_incomparable == ["data.train_fraction"] and "valid_ppl_rare" not in report.data.best
  assert report.data.best["valid_ppl"]
  assert ("none in valid ppl (rare): the rows differ in `data.train_fraction`, which changes which validation "
          "targets are rare") in report.markdown_path.read_text()


def _write_by_position(trial_dir, scheme, seed, mode="nonoverlapping", stride=None, checkpoint_step=100,
                       rope_scaling=None, rope_factor=None):
  """eval/loss_by_position.json as research-evaluate --by_position writes it (its own record writers), with made-up
  per-column sums: the loss falls with context and, beyond the training length, rises for rope (half as fast with a
  RoPE scaling: eval/loss_by_position_<scaling>.json). Returns it."""
  from research.evaluate import by_position
  rng = np.random.default_rng(zlib.crc32(f"{scheme}/{seed}".encode()))
  results = []
  for m in MULTIPLES:
    length = m * TRAIN_LEN
    if scheme == "learned" and m > 1:
      results.append(by_position.result_record(m, length, note=learned_note(m)))
      continue
    columns = np.arange(length)
    tokens = np.full(length, 50.0)
    rise = (0.005 if rope_scaling else 0.01) if scheme == "rope" else 0
    loss = 4.0 / np.log2(columns + 2) + rise * np.maximum(columns - TRAIN_LEN, 0)
    results.append(by_position.result_record(m, length, train_len=TRAIN_LEN, tokens_by_column=tokens,
                                             nll_by_column=tokens * (loss + rng.normal(0, 0.05, length))))
  report = by_position.report_record(train_len=TRAIN_LEN, mode=mode, stride=stride, split="valid",
                                     checkpoint_step=checkpoint_step, objective="clm", rope_scaling=rope_scaling,
                                     rope_factor=rope_factor, results=results)
  by_position.write_report(trial_dir, report)
  return report


def test_an_mlm_loss_by_position_scored_with_masks_per_batch_is_left_out_of_the_plot_and_named(tmp_path):
  """An MLM run's loss_by_position.json without `mlm_masks` was scored with masks per batch (before per-row masks):
  it is not drawn as if per row; report.md names the trial and the command that scores it again. A CLM file needs
  no masks."""
  from research.report import plots
  for name, seed in (("m0", 0), ("m1", 1), ("c0", 2)):
    write_trial(tmp_path, name, "alibi", seed)
    if name != "c0":
      loop.write_config(configuration.apply_overrides(trial_config("alibi", seed), {"objective": "mlm"}),
                        tmp_path / name)
    _write_by_position(tmp_path / name, "alibi", seed)
  for name in ("m0", "m1"):  # written as research-evaluate writes an MLM's: its objective, m1 with the masks
    path = tmp_path / name / "eval" / "loss_by_position.json"
    record = {**json.loads(path.read_text()), "objective": "mlm"}
    path.write_text(json.dumps({**record, "mlm_masks": extrapolation.MLM_MASKS} if name == "m1" else record))
  report = build_report(tmp_path)
  text = report.markdown_path.read_text()
  assert "m0: eval/loss_by_position.json was scored with MLM masks drawn per batch" in text
  assert "rerun research-evaluate --by_position" in text and "m1: eval/loss_by_position.json" not in text
  assert "c0: eval/loss_by_position.json" not in text
  series = plots.position_series(report.data)
  assert {gi: n for s in series.values() for gi, n in s["n"].items()} == {0: 1, 1: 1}  # m1, and c0: not m0
  assert report.plots[plots.LOSS_BY_POSITION].read_bytes()[:8] == PNG_MAGIC


def test_loss_by_position_plot_averages_seeds_per_bucket_and_names_na_groups(tmp_path):
  from research.report import plots
  for scheme in ("alibi", "rope", "learned"):
    for seed in (0, 1):
      write_trial(tmp_path, f"{scheme}{seed}", scheme, seed)
  (tmp_path / plots.LOSS_BY_POSITION).write_bytes(PNG_MAGIC + b"stale")
  report = build_report(tmp_path)  # no trial evaluated by position: no plot, no mention, the stale one removed
  assert plots.LOSS_BY_POSITION not in report.plots and not (tmp_path / plots.LOSS_BY_POSITION).exists()
  assert "Loss by position" not in report.markdown_path.read_text()
  written = {(scheme, seed): _write_by_position(tmp_path / f"{scheme}{seed}", scheme, seed)
             for scheme in ("alibi", "rope", "learned") for seed in (0, 1)}
  report = build_report(tmp_path)
  assert report.plots[plots.LOSS_BY_POSITION].read_bytes()[:8] == PNG_MAGIC
  assert "![Loss by position](loss_by_position.png)" in report.markdown_path.read_text()
  series = plots.position_series(report.data)
  assert list(series) == [m * TRAIN_LEN for m in MULTIPLES]
  for i, m in enumerate(MULTIPLES):
    lines = {g.label: (xs, ys) for _, g, xs, ys, _ in series[m * TRAIN_LEN]["lines"]}
    assert set(lines) == ({"position=alibi", "position=rope", "position=learned"} if m == 1 else
                          {"position=alibi", "position=rope"})
    xs, ys = lines["position=rope"]
    first = [written[("rope", s)]["results"][i] for s in (0, 1)]
    edges = first[0]["edges"]
    assert list(xs) == [(lo + hi + 1) / 2 for lo, hi in zip(edges, edges[1:])]
    assert list(ys) == pytest.approx(np.mean([r["loss"] for r in first], axis=0), rel=1e-12)
    if m > 1:
      assert [g.label for g, _ in series[m * TRAIN_LEN]["na"]] == ["position=learned"]
      assert ys[-1] > ys[edges.index(TRAIN_LEN) - 1]  # the made-up rope degrades past the training length


def test_a_rope_scaled_row_draws_its_own_loss_by_position_and_a_mismatched_file_is_stale(tmp_path):
  """research-evaluate --by_position --rope_scaling=S writes eval/loss_by_position_S.json: the scaled row's line in
  loss_by_position.png averages those files (not the unscaled ones), and one that does not match the
  extrapolation_S.json beside it (another factor here) is stale and left out, as for the unscaled file."""
  from research.evaluate import by_position
  from research.report import plots
  from research.report.runs import by_position_file
  assert by_position_file("yarn").name == by_position.report_file("yarn")  # the name the evaluator writes
  written = {}
  for seed in (0, 1):
    run = tmp_path / f"rope{seed}"
    write_trial(tmp_path, run.name, "rope", seed)
    scaled = {**json.loads((run / "eval" / "extrapolation.json").read_text()), "rope_scaling": "yarn",
              "rope_factor": None}
    extrapolation.write_report(run, scaled)
    written[seed] = (_write_by_position(run, "rope", seed), _write_by_position(run, "rope", seed, rope_scaling="yarn"))
  report = build_report(tmp_path)
  series = plots.position_series(report.data)
  for i, m in enumerate(MULTIPLES):
    lines = {g.rope_scaling: ys for _, g, _, ys, _ in series[m * TRAIN_LEN]["lines"]}
    assert set(lines) == {None, "yarn"} and series[m * TRAIN_LEN]["n"] == {0: 2, 1: 2}
    for k, scaling in enumerate((None, "yarn")):
      expected = np.mean([written[seed][k]["results"][i]["loss"] for seed in (0, 1)], axis=0)
      assert list(lines[scaling]) == pytest.approx(expected, rel=1e-12)
  assert lines["yarn"][-1] < lines[None][-1]  # the made-up scaling halves the rise past the training length
  assert report.plots[plots.LOSS_BY_POSITION].read_bytes()[:8] == PNG_MAGIC
  _write_by_position(tmp_path / "rope1", "rope", 1, rope_scaling="yarn", rope_factor=2.0)
  report = build_report(tmp_path)
  assert ("rope1: eval/loss_by_position_yarn.json does not match eval/extrapolation_yarn.json beside it (factor 2 "
          "vs factor = the multiple at each length") in report.markdown_path.read_text()
  assert plots.position_series(report.data)[TRAIN_LEN]["n"] == {0: 2, 1: 1}
  scaled = {**json.loads((tmp_path / "rope1" / "eval" / "extrapolation_yarn.json").read_text()), "rope_factor": 2.0}
  extrapolation.write_report(tmp_path / "rope1", scaled)  # now they match: factor 2 here, the multiple in rope0
  series = plots.position_series(build_report(tmp_path).data)
  for m in MULTIPLES:  # the factors applied agree at 2x only; elsewhere the scaled row is n/a, not a mixed mean
    entry = series[m * TRAIN_LEN]
    assert entry["n"] == ({0: 2, 1: 2} if m == 2 else {0: 2}), m
    assert [note for g, note in entry["na"] if g.rope_scaling] == (
        [] if m == 2 else ["its trials applied different RoPE factors (see report.md)"])


def test_a_pending_trial_groups_with_its_arm_when_another_arm_sets_more_fields(tmp_path):
  """A trial not started has no config.json: it groups by the config it will run with (the sweep's base config +
  its overrides), not under `(unset)` for the fields only another arm overrides (randomized RoPE's)."""
  directory = tmp_path / "sweep"
  randomized = {"model.position_sampling": "randomized", "model.max_position": 256}
  write_trial(directory, "rope-s0", "rope", 0)
  write_trial(directory, "randomized-s0", "rope", 0)
  loop.write_config(configuration.apply_overrides(trial_config("rope", 0), randomized), directory / "randomized-s0")
  trials = [sweeps.Trial("rope-s0", {"model.position": "rope", "seed": 0}),
            sweeps.Trial("randomized-s0", {"model.position": "rope", **randomized, "seed": 0}),
            sweeps.Trial("rope-s1", {"model.position": "rope", "seed": 1})]
  status = {"rope-s0": {"status": "finished", "error": None}, "randomized-s0": {"status": "finished", "error": None},
            "rope-s1": {"status": "pending", "error": None}}
  sweeps.write_index(directory, sweeps.Sweep("pending_demo", "configs/clm.py", trials, None), status)
  _, rows = parse_md_table(build_report(directory).table)
  assert sorted(rows) == ["position_sampling=none, max_position=0", "position_sampling=randomized, max_position=256"]
  assert rows["position_sampling=none, max_position=0"][0] == "1"  # the pending seed does not count


# --- stale evaluations: an eval/*.json of a checkpoint the run has since left behind -------------------------------


def _train_session(trial_dir, steps, valid_losses, resume_step=0, scheme="alibi", seed=0):
  """One research-train session as the trainer's writers leave it: config.json (train.steps), metrics.jsonl (lines
  past `resume_step` dropped, then a valid line per {step: loss}) and summary.json with the best evaluation."""
  trial_dir.mkdir(parents=True, exist_ok=True)
  loop.write_config(configuration.apply_overrides(trial_config(scheme, seed), {"train.steps": steps}), trial_dir)
  log = loop.MetricsLog(trial_dir, resume_step=resume_step)
  for step, loss in valid_losses.items():
    log.write(loop.valid_record(step, {"loss": loss, "ppl": math.exp(loss), "accuracy": 0.3, "tokens": 4096.0,
                                       "tokens_per_s": 1e5}, lr=1e-3))
  log.close()
  valid = {"loss": valid_losses[steps], "ppl": math.exp(valid_losses[steps]), "accuracy": 0.3}
  loop.write_summary(trial_dir, loop.summary_record(
      step=steps, train_loss=3.0, valid=valid, tokens_seen=steps * 1024.0, num_params=100000,
      num_embedding_params=32768, vocab_size=512, wall_s=1.0,
      best=loop.best_validation(trial_dir / loop.METRICS_FILE, steps, valid)))


def _evaluate(trial_dir, checkpoint_step, ppl, rope_scaling=None, checkpoint=None):
  """eval/extrapolation(_<scaling>).json of `checkpoint_step` by the evaluator's writers: 1× and 2×. `checkpoint`
  None: a file as research-evaluate wrote it before it recorded its choice."""
  results = [extrapolation.result_record(m, m * TRAIN_LEN, ppl * m, 4096) for m in (1, 2)]
  extrapolation.write_report(trial_dir, extrapolation.report_record(
      train_len=TRAIN_LEN, mode="nonoverlapping", stride=None, split="valid", checkpoint_step=checkpoint_step,
      rope_scaling=rope_scaling, rope_factor=None, results=results, checkpoint=checkpoint),
      extrapolation.report_file(rope_scaling))


def _save_checkpoints(trial_dir, valid_losses):
  """RUN/checkpoints/<step> by the trainer's own Checkpointer (a tiny state), each with its validation loss."""
  from research.train import checkpoint as checkpoint_lib
  with checkpoint_lib.Checkpointer(trial_dir / "checkpoints", keep=10, async_save=False) as ckpt:
    for step, loss in valid_losses.items():
      ckpt.save(step, {"w": np.zeros(2, np.float32)}, {"iterator": {}}, {"valid_loss": loss})
    best = ckpt.best_step()
  return best


def test_a_last_checkpoint_evaluated_mid_training_is_stale_and_left_out_of_the_mean(tmp_path):
  """research-evaluate --checkpoint=last at step 120, training then finished at 800 with a lower validation loss:
  the step-120 figures are not averaged with the final ones (nor win the bold), and a footnote says so."""
  losses = {120: 4.0, 400: 3.4, 800: 3.1}
  for seed in (0, 1):
    _train_session(tmp_path / f"alibi-s{seed}", 800, losses, scheme="alibi", seed=seed)
  _evaluate(tmp_path / "alibi-s0", 800, 30.0)
  _evaluate(tmp_path / "alibi-s1", 120, 10.0)  # stale: would otherwise pull the mean down and win the bold
  _train_session(tmp_path / "rope-s0", 800, losses, scheme="rope")
  _evaluate(tmp_path / "rope-s0", 800, 25.0)
  report = build_report(tmp_path)
  table = report.data
  alibi = [g.label for g in table.groups].index("position=alibi")
  rope = [g.label for g in table.groups].index("position=rope")
  for column, value in (("ppl_1x_64", 30.0), ("ppl_2x_128", 60.0)):
    cell = table.cell(alibi, column)
    assert cell.values == (value,)
    assert len(cell.notes) == 1 and "step 120" in cell.notes[0] and "reached step 800" in cell.notes[0]
    assert table.best[column] == {rope}
  assert table.cell(alibi, "valid_ppl").n == 2  # the trainer's own figure is not stale
  _, rows = parse_md_table(report.table)
  assert rows["position=alibi"][2] == "30.00 (n=1)[^1]" and rows["position=alibi"][3] == "60.00 (n=1)[^1]"
  assert "[^1]: alibi-s1: eval/extrapolation.json scored the checkpoint of step 120" in report.table
  assert "- alibi-s1: eval/extrapolation.json" in report.markdown_path.read_text()
  row = next(r for r in csv.DictReader(report.csv_path.open()) if r["position"] == "alibi")
  assert (row["ppl_1x_64_n"], float(row["ppl_1x_64_mean"])) == ("1", 30.0)


def test_a_best_evaluation_is_stale_after_a_resume_that_found_a_better_checkpoint(tmp_path):
  """Evaluated at step 40 (then the best and the last), resumed to 120 with a lower loss: the plain, RoPE-scaled and
  by-position evaluations of step 40 are all stale; before the resume none was."""
  from research.report import plots
  run = tmp_path / "run"
  _train_session(run, 40, {20: 4.0, 40: 3.5})
  _evaluate(run, 40, 30.0)
  _evaluate(run, 40, 28.0, rope_scaling="yarn")
  report = _write_by_position(run, "alibi", 0)
  report["checkpoint_step"] = 40
  from research.evaluate import by_position
  by_position.write_report(run, report)
  before = build_report(run)
  assert before.data.cell(0, "ppl_1x_64").values == (30.0,) and before.data.cell(1, "ppl_2x_128").values == (56.0,)
  assert "Stale" not in before.markdown_path.read_text() and plots.position_series(before.data)
  _train_session(run, 120, {80: 3.2, 120: 3.0}, resume_step=40)
  summary = json.loads((run / loop.SUMMARY_FILE).read_text())
  assert (summary["step"], summary["best_step"]) == (120, 120)
  after = build_report(run)
  trial = after.runs.trials[0]
  assert len(trial.stale_evaluations()) == 3
  for gi in (0, 1):  # the plain row and the rope_scaling=yarn row
    cell = after.data.cell(gi, "ppl_1x_64")
    assert cell.n == 0 and "step 40" in cell.notes[0] and "reached step 120" in cell.notes[0]
  assert "eval/extrapolation_yarn.json scored the checkpoint of step 40" in after.table
  assert "eval/loss_by_position.json scored the checkpoint of step 40" in after.markdown_path.read_text()
  assert plots.position_series(after.data) == {}
  assert plots.LOSS_BY_POSITION not in after.plots


def test_an_analysis_of_a_checkpoint_the_run_moved_past_is_stale_and_left_out(tmp_path, quality_benchmarks):
  """research-analyze's files (embedding_quality.json, rare_tokens.json) record their checkpoint like the
  evaluations: analyzed at step 20 (then the best), trained on to 40 with a lower loss, their figures are left out of
  the table and the bucket plots with a note naming research-analyze; a fresh analysis of step 40 is shown. They are
  not the sweep runner's to redo (`stale` lists the evaluations only)."""
  import copy
  from research.analysis import quality, rare
  from research.report import plots
  run = tmp_path / "run"
  _train_session(run, 20, {10: 4.0, 20: 3.5})
  record = copy.deepcopy(quality_benchmarks)
  record["analogy"]["accuracy"] = 0.25
  quality.write_quality(run, {"checkpoint_step": 20, "checkpoint": "best", "benchmarks": record, "neighbours": {},
                              "benchmarks_init": None, "vectors_of": "table"}, quality.QUALITY_FILES["table"])
  counts = (1000 / np.arange(1, 201)).astype(np.int64)
  table = np.random.default_rng(0).normal(size=(200, 8))
  rare.write_rare(run, {"checkpoint_step": 20, "checkpoint": "best",
                        **rare.rare_report(table, counts, init_VxD=table * 0.5, present_V=counts // 10)})
  before = build_report(run)
  assert before.data.cell(0, "quality_analogy").values == (0.25,) and before.runs.trials[0].analysis_stale == {}
  assert (run / plots.rare_plot_name("mean_norm")).is_file()
  _train_session(run, 40, {30: 3.2, 40: 3.0}, resume_step=20)
  after = build_report(run)
  trial = after.runs.trials[0]
  assert sorted(trial.analysis_stale) == ["eval/embedding_quality.json", "eval/rare_tokens.json"]
  assert trial.stale == {}  # nothing for research-evaluate (or the sweep runner) to redo
  cell = after.data.cell(0, "quality_analogy")
  assert cell.n == 0 and "step 20" in cell.notes[0] and "rerun research-analyze" in cell.notes[0]
  geometry = next(c.key for c in after.data.columns if c.geometry is not None)
  assert after.data.cell(0, geometry).n == 0
  assert plots.plot_rare_bucket_metric(after.data, "mean_norm", tmp_path / "x.png").startswith("no finished trial")
  assert "eval/rare_tokens.json scored the checkpoint of step 20" in after.markdown_path.read_text()
  quality.write_quality(run, {"checkpoint_step": 40, "checkpoint": "best", "benchmarks": record, "neighbours": {},
                              "benchmarks_init": None, "vectors_of": "table"}, quality.QUALITY_FILES["table"])
  assert build_report(run).data.cell(0, "quality_analogy").values == (0.25,)  # analyzed again: shown


@pytest.mark.slow
def test_rare_tokens_counted_to_an_earlier_end_are_stale_after_training_on(tmp_path):
  """A real run analyzed with --rare, then trained on (train.steps raised) to a validation loss no lower (a learning
  rate too small to move a float32 weight: the analysed checkpoint stays a best, so the checkpoint rules keep the
  file): its update_counts_step is the earlier end's, so mean_present and the absent rows count fewer steps than
  the run has. Left out with a note naming the steps and the command; while it equals the run's step, kept."""
  from research.analysis import rare
  from research.report import plots
  overrides = {"data.seq_len": 32, "train.steps": 4, "train.eval_every": 2, "train.checkpoint_every": 2,
               "train.eval_batches": 1, "train.async_checkpoints": False, "train.warmup_steps": 0,
               "train.learning_rate": 1e-30}
  run = tmp_path / "run"
  loop.train(configuration.apply_overrides(tiny.get_config(), overrides), run)
  written = rare.analyze_run(run)
  assert written["update_counts_step"] == 4
  before = build_report(run)
  assert before.runs.trials[0].analysis_stale == {} and (run / plots.rare_plot_name("mean_present")).is_file()
  geometry = next(c.key for c in before.data.columns if c.geometry is not None)
  assert before.data.cell(0, geometry).n == 1  # counts of the run's own end: kept
  loop.train(configuration.apply_overrides(tiny.get_config(), {**overrides, "train.steps": 6}), run)
  losses = {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r.get("split") == "valid"}
  assert losses[6] == losses[written["checkpoint_step"]]  # the premise: no checkpoint beats the analysed one
  after = build_report(run)
  trial = after.runs.trials[0]
  note = ("run: eval/rare_tokens.json counts the updates up to step 4 (update_counts_step), the run ended at "
          "step 6: stale, left out of the means and plots (rerun research-analyze --rare)")
  assert trial.analysis_stale == {"eval/rare_tokens.json": note} and trial.stale == {}
  for column in after.data.columns:
    if column.geometry is not None or column.absent is not None:
      assert after.data.cell(0, column.key).n == 0 and after.data.cell(0, column.key).notes == (note,)
  assert plots.plot_rare_bucket_metric(after.data, "mean_present", tmp_path / "x.png").startswith("no finished trial")
  assert note in after.markdown_path.read_text()


def test_a_fresh_best_evaluation_of_an_overfit_run_is_not_flagged(tmp_path):
  """The default --checkpoint=best scores the lowest-loss checkpoint, before the final step when the run overfits:
  not stale. Nor is an evaluation of the final step, nor one of a run without summary.json (nothing to compare)."""
  _train_session(tmp_path / "overfit", 100, {50: 3.0, 100: 3.4})
  _evaluate(tmp_path / "overfit", 50, 30.0)
  _train_session(tmp_path / "final", 100, {50: 3.3, 100: 3.1}, seed=1)  # another seed: not a copy of "overfit"
  _evaluate(tmp_path / "final", 100, 40.0)
  (tmp_path / "unfinished").mkdir()
  loop.write_config(trial_config("rope", 0), tmp_path / "unfinished")
  _evaluate(tmp_path / "unfinished", 50, 20.0)
  runs = load_runs(tmp_path)
  assert [t.stale_evaluations() for t in runs.trials] == [[], [], []]
  report = build_report(tmp_path)
  labels = [g.label for g in report.data.groups]
  assert report.data.cell(labels.index("position=alibi"), "ppl_1x_64").values == (40.0, 30.0)
  assert report.data.cell(labels.index("position=alibi"), "ppl_1x_64").notes == ()
  assert "Stale" not in report.markdown_path.read_text()
  overfit = next(t for t in runs.trials if t.name == "overfit")
  assert overfit.summary["best_step"] == 50 != overfit.summary["step"]


def test_the_recorded_choice_flags_a_checkpoint_beaten_only_by_an_intermediate_one(tmp_path):
  """Checkpoints at 40, 80, 120 with losses 3.3, 3.0, 3.4 (the run overfits after 80). An evaluation of step 40
  made mid-training (--checkpoint=best then) is stale: best is 80 now. The final loss (3.4) is not below 3.3, so
  without the recorded choice (an older file) it cannot be told. `last` at 80 is stale (the last is 120); best at
  80 and last at 120 are fresh."""
  losses = {40: 3.3, 80: 3.0, 120: 3.4}
  cases = {"best40": (40, "best", True), "best80": (80, "best", False), "last80": (80, "last", True),
           "last120": (120, "last", False), "old40": (40, None, False)}
  for seed, (name, (step, choice, _)) in enumerate(cases.items()):  # seeds apart: five runs, not copies of one
    _train_session(tmp_path / name, 120, losses, seed=seed)
    assert _save_checkpoints(tmp_path / name, losses) == 80  # Orbax's own ranking agrees with metrics.jsonl
    _evaluate(tmp_path / name, step, 30.0, checkpoint=choice)
  runs = {t.name: t for t in load_runs(tmp_path).trials}
  for name, (step, choice, stale) in cases.items():
    notes = runs[name].stale_evaluations()
    assert bool(notes) == stale, (name, notes)
    if stale:
      assert f"step {step} (--checkpoint={choice})" in notes[0]
      assert ("best checkpoint is now step 80" if choice == "best" else "last checkpoint is now step 120") in notes[0]
  # Without checkpoints/ (a run copied without them) the recorded choice has nothing to select from: the old rule.
  import shutil
  shutil.rmtree(tmp_path / "best40" / "checkpoints")
  assert load_runs(tmp_path / "best40").trials[0].stale_evaluations() == []
  # A recorded choice that is neither is a damaged file, named in one line.
  path = tmp_path / "last80" / "eval" / "extrapolation.json"
  path.write_text(path.read_text().replace('"last"', '"newest"'))
  with pytest.raises(ReportError, match=r"'checkpoint' must be one of best, last, got 'newest'"):
    load_runs(tmp_path / "last80")


def test_a_recorded_last_is_judged_by_the_final_step_without_checkpoints_and_damaged_figures_are_one_line(tmp_path):
  """`last` at step 20 of a run that reached 40: stale even without checkpoints/ (the final step is always the last
  checkpoint) and even when the final loss is the worse one, which the older rule needs. Losses that differ only
  past 4 digits print differently. A non-finite checkpoint_step or a non-number loss in metrics.jsonl is one line."""
  run = tmp_path / "run"
  _train_session(run, 40, {20: 5.69, 40: 6.0})
  _evaluate(run, 20, 30.0, checkpoint="last")
  notes = load_runs(run).trials[0].stale_evaluations()
  assert len(notes) == 1 and "(--checkpoint=last); the last checkpoint is now step 40" in notes[0], notes
  _evaluate(run, 40, 30.0, checkpoint="last")
  assert load_runs(run).trials[0].stale_evaluations() == []
  close = tmp_path / "close"
  _train_session(close, 40, {20: 5.692, 40: 5.6918})
  _evaluate(close, 20, 30.0)  # an older file: the older rule, the final loss lower by 0.0002
  notes = load_runs(close).trials[0].stale_evaluations()
  assert len(notes) == 1 and "(5.6918 < 5.692)" in notes[0], notes
  path = run / "eval" / "extrapolation.json"
  for bad in ("NaN", "Infinity"):
    path.write_text(re.sub(r'"checkpoint_step": \d+', f'"checkpoint_step": {bad}', path.read_text()))
    with pytest.raises(ReportError, match=f"'checkpoint_step' must be an integer, got {bad.lower()[:3]}"):
      load_runs(run)
    _evaluate(run, 40, 30.0, checkpoint="last")
  with (run / "metrics.jsonl").open("a") as f:
    f.write('{"split": "valid", "step": 40, "loss": "x"}\n{"split": "valid", "step": 40, "loss": 6.0}\n')
  with pytest.raises(ReportError, match=r"metrics.jsonl line \d+: 'loss' must be a number, got 'x'"):
    load_runs(run)



def test_a_legends_n_counts_the_trials_each_line_averages(tmp_path):
  """Not the group's n: a trial without the file (or with a stale one) is not in the line."""
  from research.report import plots
  for seed in (0, 1):
    write_trial(tmp_path, f"rope{seed}", "rope", seed)
    _write_by_position(tmp_path / f"rope{seed}", "rope", seed)
  scaled = json.loads((tmp_path / "rope0" / "eval" / "extrapolation.json").read_text())
  scaled.update(rope_scaling="linear", rope_factor=2.0)
  extrapolation.write_report(tmp_path / "rope0", scaled)  # RoPE-scaled rows for one trial only
  (tmp_path / "rope1" / "eval" / "loss_by_position.json").unlink()
  report = build_report(tmp_path)
  series = {g.rope_scaling: n for _, g, _, n in plots.ppl_series(report.data)}
  assert series == {None: "2", "linear": "1"} and report.data.groups[0].n == 2
  by_position = plots.position_series(report.data)
  assert {length: s["n"] for length, s in by_position.items()} == {m * TRAIN_LEN: {0: 1} for m in MULTIPLES}
  assert plots._n_text([2, 1, 2]) == "1–2"


@pytest.mark.parametrize("file,key,value,message", [
    ("summary.json", "valid_ppl", "abc", "'valid_ppl' must be a number, got 'abc'"),
    ("summary.json", "step", "x", "'step' must be an integer, got 'x'"),
    ("summary.json", "best_valid_ppl", [1.0], "'best_valid_ppl' must be a number, got [1.0]"),
    ("eval/extrapolation.json", "ppl", "abc", "'ppl' must be a number, got 'abc'"),
    ("eval/embedding_quality.json", "analogy", "n/a", "'benchmarks.analogy.accuracy' must be a number, got 'n/a'"),
])
def test_a_figure_that_is_not_a_number_is_one_error_naming_the_file(tmp_path, file, key, value, message):
  write_trial(tmp_path, "run", "alibi", 0)
  path = tmp_path / "run" / file
  if key == "analogy":  # the shape research-analyze writes (tests/test_analyze.py checks it), one figure damaged
    path.write_text(json.dumps({"benchmarks": {"analogy": {"accuracy": value}}}))
  else:
    data = json.loads(path.read_text())
    (data["results"][0] if key == "ppl" else data)[key] = value
    path.write_text(json.dumps(data))
  with pytest.raises(ReportError, match=re.escape(f"{path}: {message}")):
    build_report(tmp_path / "run")
  result = _cli(tmp_path / "run")
  assert result.returncode == 2 and "Traceback" not in result.stderr and message in result.stderr


def test_a_run_training_on_past_its_summary_is_unfinished_not_reported_with_the_old_end(tmp_path):
  """train.steps raised (config.json rewritten by research-train) and killed before the new end: summary.json is
  the old end's and must not stand for the run."""
  write_trial(tmp_path, "a", "rope", 0)
  write_trial(tmp_path, "b", "rope", 1)
  loop.write_config(configuration.apply_overrides(trial_config("rope", 1), {"train.steps": 200}), tmp_path / "b")
  runs = load_runs(tmp_path)
  status = {t.name: (t.status, t.error) for t in runs.trials}
  assert status["a"] == ("finished", None)
  assert status["b"][0] == "unfinished" and "training on to step 200" in status["b"][1] and "of step 100" in status["b"][1]
  report = build_report(tmp_path)
  assert report.data.groups[0].n == 1


def test_an_unwritable_directory_is_one_line_before_anything_is_read(tmp_path):
  # /proc: no file can be created there, whoever runs the tests (root included, unlike chmod); nothing is read first
  with pytest.raises(ReportError, match=r"^'/proc' is not writable \(.*\); research-report writes report.md"):
    build_report("/proc")


@pytest.mark.skipif(not (shutil.which("setpriv") and hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="needs root and setpriv to drop the capability that lets root write anywhere")
def test_a_read_only_sweep_is_one_error_line_from_the_cli(tmp_path):
  directory = tmp_path / "sweep"
  make_sweep(directory, schemes=("alibi",), seeds=(0,))
  os.chmod(directory, 0o555)
  drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner",
          "--inh-caps=-dac_override,-dac_read_search,-fowner"]
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  try:
    result = subprocess.run([*drop, sys.executable, "-m", "experiments.report", str(directory)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
  finally:
    os.chmod(directory, 0o755)
  assert result.returncode == 2 and result.stdout == "", result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {str(directory)!r} is not writable (Permission denied)")
  assert sorted(p.name for p in directory.iterdir() if p.is_file()) == ["sweep.json"]  # nothing written


def _score_nothing_at_the_end(trial_dir, best_step=None):
  """The trainer's files of a run whose validation at step 60 scored targets and at step 100, the last, none:
  metrics.jsonl's line of step 100 has tokens 0 and the placeholders loss 0, ppl 1, and summary.json repeats them."""
  log = loop.MetricsLog(trial_dir, resume_step=59)  # the lines from step 60 on dropped, as on a resume
  log.write(loop.valid_record(60, {"loss": 3.5, "ppl": math.exp(3.5), "accuracy": 0.3, "tokens": 4096.0,
                                   "tokens_per_s": 1e5}, lr=1e-3))
  log.write(loop.valid_record(100, {"loss": 0.0, "ppl": 1.0, "accuracy": 0.0, "tokens": 0.0, "tokens_per_s": 1e5},
                              lr=1e-3))
  log.close()
  valid = {"loss": 0.0, "ppl": 1.0, "accuracy": 0.0}
  best = {"best_valid_loss": 0.0, "best_valid_ppl": 1.0, "best_step": best_step or 100}
  loop.write_summary(trial_dir, loop.summary_record(step=100, train_loss=3.0, valid=valid, tokens_seen=51200.0,
                                                    num_params=100000, num_embedding_params=32768, vocab_size=512,
                                                    wall_s=12.5, best=best))


def test_a_validation_that_scored_no_target_is_na_not_a_perplexity_of_one(tmp_path):
  """An MLM on a tiny corpus can mask none of its validation split: the trainer writes loss 0, ppl 1 and says so.
  Averaging that 1 with a real perplexity would make a meaningless mean and std."""
  from research.report import plots
  real, _ = write_trial(tmp_path, "s0", "rope", 0)
  write_trial(tmp_path, "s1", "rope", 1)
  _score_nothing_at_the_end(tmp_path / "s1")
  summary = json.loads((tmp_path / "s0" / "summary.json").read_text())  # s0 best at step 50: a best column
  loop.write_summary(tmp_path / "s0", {**summary, "best_step": 50, "best_valid_ppl": real * 0.9})
  _evaluate(tmp_path / "s1", 60, 30.0)  # an older file, no choice recorded: judged by the final step's loss
  report = build_report(tmp_path)
  for column, value in (("valid_ppl", real), ("best_valid_ppl", real * 0.9)):
    cell = report.data.cell(0, column)
    assert cell.values == (pytest.approx(value),)
    assert len(cell.notes) == 1 and cell.notes[0].startswith("s1: the validation at step 100 scored no target")
  _, rows = parse_md_table(report.table)
  assert rows[tmp_path.name][:2] == ["2", f"{real:.2f} (n=1)[^1]"]  # no ± : one value, not a mean with 1.0
  assert "[^1]: s1: the validation at step 100 scored no target" in report.table
  trial = next(t for t in report.runs.trials if t.name == "s1")
  assert trial.scored_nothing(100) and not trial.scored_nothing(60)
  assert trial.valid_losses() == {0: pytest.approx(9.0, abs=0.5), 60: 3.5}
  assert trial.stale == {}  # a placeholder loss 0 is not a better final checkpoint
  assert [s for s, _ in plots.loss_curves(trial)["valid"]] == [0, 60]  # curves.png leaves the placeholder out


@pytest.mark.parametrize("damage", ["summary", "metrics_torn_last_line", "metrics_middle_line", "sweep"])
def test_bytes_that_are_not_utf8_are_one_error_naming_the_file_or_a_torn_last_line(tmp_path, damage):
  directory = tmp_path / "sweep"
  make_sweep(directory, schemes=("alibi",), seeds=(0, 1))
  metrics = directory / "alibi-s0" / "metrics.jsonl"
  count = len(load_runs(directory).trials[0].metrics)
  if damage == "summary":
    path = directory / "alibi-s0" / "summary.json"
    path.write_bytes(b'\xff\xfe{"step": 1}')
  elif damage == "sweep":
    path = directory / "sweep.json"
    path.write_bytes(path.read_bytes().replace(b"alibi-s0", b"alibi-s\xff", 1))
  elif damage == "metrics_torn_last_line":  # a run killed mid-append: the rest of the file stands
    with metrics.open("ab") as f:
      f.write(b'{"step": 120, "split": "train", "loss": \xff\xfe')
    assert len(build_report(directory).runs.trials[0].metrics) == count
    return
  else:
    path = metrics
    lines = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(b"".join([*lines[:2], b'{"step": \xff}\n', *lines[2:]]))
  with pytest.raises(ReportError, match=re.escape(str(path))):
    build_report(directory)
  result = _cli(directory)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]


@pytest.mark.parametrize("overrides", [[["model.position", "alibi"]], "model.position=alibi", 3])
def test_a_sweep_trial_whose_overrides_are_not_an_object_is_one_line_naming_it(tmp_path, overrides):
  directory = tmp_path / "sweep"
  make_sweep(directory, schemes=("alibi",), seeds=(0, 1))
  index = json.loads((directory / "sweep.json").read_text())
  index["trials"][1]["overrides"] = overrides
  (directory / "sweep.json").write_text(json.dumps(index))
  message = f"{directory / 'sweep.json'}: trial 'alibi-s1' has 'overrides' {overrides!r}; expected an object"
  with pytest.raises(ReportError, match=re.escape(message)):
    load_runs(directory)
  result = _cli(directory)
  assert result.returncode == 2
  assert result.stderr.strip() == f"error: {message} of dotted config fields and their values"


def test_a_one_seed_arm_has_no_error_bar_in_the_tied_plot(tmp_path):
  """Its std is undefined (n=1): a zero-length error bar would read as "no spread"."""
  from research.report import plots
  make_sweep(tmp_path, schemes=("alibi", "rope"), seeds=(0, 1), ties=(True, False))
  (tmp_path / "rope-untied-s1" / "summary.json").unlink()  # that arm keeps one finished seed
  report = build_report(tmp_path)
  assert "tied_vs_untied.png" in report.plots
  bars = plots.tied_bars(report.data)
  assert set(bars) == {("alibi",), ("rope",)}
  assert bars[("rope",)][False][1] is None
  others = [std for key, arm in bars.items() for tied, (_, std) in arm.items() if (key, tied) != (("rope",), False)]
  assert len(others) == 3 and all(std > 0 for std in others)


def test_names_that_are_not_utf8_are_shown_escaped_everywhere(tmp_path):
  """A directory name's undecodable bytes (surrogate escapes in Python) are written `\\xe9` in report.md, the tables,
  the plots and the CLI's lines, instead of failing the first write or plot; a write that fails removes its temp
  file."""
  from research.report import build
  root = tmp_path / "runs"
  write_trial(root, "alibi0", "alibi", 0)
  named = os.fsdecode(b"rope\xe9")
  write_trial(root, named, "rope", 0)
  unfinished = root / os.fsdecode(b"x\xfe")
  unfinished.mkdir()
  loop.write_config(trial_config("t5", 0), unfinished)
  assert {b"rope\xe9", b"x\xfe"} <= set(os.listdir(os.fsencode(root)))
  report = build_report(root)
  text = (root / "report.md").read_text(encoding="utf-8")
  assert "`x\\xfe`: unfinished" in text and "rope\\xe9" not in text  # rope\xe9 is a row of position=rope
  single = build_report(root / named)  # one run: its name is the title and the row
  assert single.data.title == "rope\\xe9" and [g.label for g in single.data.groups] == ["rope\\xe9"]
  assert "rope\\xe9" in (root / named / "table.csv").read_text(encoding="utf-8")
  assert "rope\\textbackslash{}xe9" in (root / named / "table.tex").read_text(encoding="utf-8")
  assert "# Report: rope\\xe9" in (root / named / "report.md").read_text(encoding="utf-8")
  assert {"ppl_vs_length.png", "curves.png"} <= set(single.plots)
  result = _cli(root / named)
  assert result.returncode == 0, result.stderr
  assert "| rope\\xe9 | 1 |" in result.stdout and "rope\\xe9/report.md" in result.stdout
  for directory in (root, root / named):
    assert not [p for p in os.listdir(directory) if ".tmp" in p]
  (root / "blocked").mkdir()  # os.replace cannot put a file over a non-empty directory
  (root / "blocked" / "keep").write_text("x")
  with pytest.raises(OSError):
    build._write(root / "blocked", "text")
  assert not [p for p in os.listdir(root) if ".tmp" in p]
  assert report.runs.layout == "runs"


@pytest.mark.parametrize("damage,message", [
    ({"geometry": [{"input": {}}]}, "needs 'geometry.input' and a 'buckets' list"),
    ({"geometry": "input"}, "needs 'geometry.input' and a 'buckets' list"),
    ({"geometry": {"input": []}}, "needs 'geometry.input' and a 'buckets' list"),
    ({"buckets": {"a": 1}}, "needs 'geometry.input' and a 'buckets' list"),
    ({"buckets": [1]}, "every bucket needs 'label', 'low', 'high' and 'rows', got 1"),
    ({"buckets": ["abc"]}, "every bucket needs 'label', 'low', 'high' and 'rows', got 'abc'"),
    ({"dim": 0}, "'dim' must be >= 1 (the table's width), got 0"),
    ({"dim": "32"}, "'dim' must be an integer, got '32'"),
])
def test_a_malformed_rare_tokens_json_is_one_error_naming_the_file(tmp_path, damage, message):
  write_trial(tmp_path, "run", "alibi", 0)
  _write_rare(tmp_path / "run", 1.0, 0)
  path = tmp_path / "run" / "eval" / "rare_tokens.json"
  path.write_text(json.dumps({**json.loads(path.read_text()), **damage}))
  with pytest.raises(ReportError, match=re.escape(f"{path}") + ".*" + re.escape(message)):
    build_report(tmp_path / "run")


def test_an_evaluations_rope_scaling_is_its_own_csv_column_when_the_training_scaling_is_swept(tmp_path):
  """Swept model.rope_scaling (label `rope_scaling`) next to research-evaluate --rope_scaling rows: the csv had two
  `rope_scaling` columns; the evaluation's is `eval_rope_scaling` and its rows say `eval rope_scaling=S`."""
  write_trial(tmp_path, "none0", "rope", 0)
  write_trial(tmp_path, "linear0", "rope", 0)
  loop.write_config(configuration.apply_overrides(trial_config("rope", 0), {"model.rope_scaling": "linear"}),
                    tmp_path / "linear0")
  _write_scaled(tmp_path / "none0", "ntk", 0)
  report = build_report(tmp_path)
  labels = [g.label for g in report.data.groups]
  assert labels == ["rope_scaling=linear", "rope_scaling=none", "rope_scaling=none, eval rope_scaling=ntk"]
  with open(report.csv_path, newline="") as f:
    header = next(csv.reader(f))
  assert header[:4] == ["rope_scaling", "eval_rope_scaling", "group", "n"]
  with open(report.csv_path, newline="") as f:
    rows = {r["group"]: r for r in csv.DictReader(f)}
  assert rows["rope_scaling=none, eval rope_scaling=ntk"]["eval_rope_scaling"] == "ntk"
  assert rows["rope_scaling=none, eval rope_scaling=ntk"]["rope_scaling"] == "none"
  assert "Rows labelled `eval rope_scaling=S`" in report.markdown_path.read_text()


def test_a_copied_run_is_counted_once_and_runs_differing_only_in_cadence_share_a_row(tmp_path):
  """A directory of runs: a copy of a run (the same config, seed included) is the same model, counted once and
  named under Duplicates; a field that does not change the model (train.log_every) is not a swept field."""
  values = {"alibi": [write_trial(tmp_path, f"alibi{s}", "alibi", s)[0] for s in (0, 1)],
            "rope": [write_trial(tmp_path, f"rope{s}", "rope", s)[0] for s in (0, 1)]}
  loop.write_config(configuration.apply_overrides(trial_config("rope", 1), {"train.log_every": 7}),
                    tmp_path / "rope1")
  shutil.copytree(tmp_path / "alibi0", tmp_path / "alibi0_backup")
  shutil.copytree(tmp_path / "alibi0", tmp_path / "a_unfinished")  # listed first, but the finished copy is kept
  (tmp_path / "a_unfinished" / "summary.json").unlink()
  (tmp_path / "summary_only").mkdir()  # a trial without config.json: compared with nothing, said in report.md
  shutil.copy(tmp_path / "rope0" / "summary.json", tmp_path / "summary_only" / "summary.json")
  report = build_report(tmp_path)
  assert report.runs.swept_fields == ["model.position", "seed"]
  assert [(t.name, kept) for t, kept in report.runs.duplicates] == [("a_unfinished", "alibi0"),
                                                                     ("alibi0_backup", "alibi0")]
  _, rows = parse_md_table(report.table)
  assert set(rows) == {"position=alibi", "position=rope", "position=(unset)"}
  assert rows["position=alibi"][0] == "2" and rows["position=rope"][0] == "2"
  gi = [g.label for g in report.data.groups].index("position=alibi")
  assert report.data.cell(gi, "valid_ppl").mean == pytest.approx(np.mean(values["alibi"]), rel=1e-12)
  gi = [g.label for g in report.data.groups].index("position=rope")
  assert report.data.cell(gi, "valid_ppl").mean == pytest.approx(np.mean(values["rope"]), rel=1e-12)
  md = report.markdown_path.read_text()
  assert "## Duplicates" in md and "- `alibi0_backup` (finished): duplicates `alibi0`" in md
  assert "- `a_unfinished` (unfinished): duplicates `alibi0`" in md
  assert "Trials without config.json" in md and "`summary_only`" in md

  # A run written before RoPE scaling was refused on other schemes: alibi "with" linear scaling is the same model (the
  # resume rule says so too: run_fields.unused_fields with the built-in schemes' rotation).
  alibi = tmp_path / "alibi_only"
  for name in ("alibi0", "alibi1"):
    shutil.copytree(tmp_path / name, alibi / name)
  shutil.copytree(tmp_path / "alibi1", alibi / "alibi1_scaled")
  scaled = json.loads((alibi / "alibi1_scaled" / "config.json").read_text())
  scaled["model"].update(rope_scaling="linear", rope_factor=2.0)
  (alibi / "alibi1_scaled" / "config.json").write_text(json.dumps(scaled))
  report = build_report(alibi)
  assert report.runs.swept_fields == ["seed"]
  assert [(t.name, kept) for t, kept in report.runs.duplicates] == [("alibi1_scaled", "alibi1")]


@pytest.mark.slow
def test_real_runs_differing_only_in_a_field_their_optimizer_never_reads_are_one_model(tmp_path):
  """Two real tiny runs, AdamW, differing only in train.momentum (sgd's alone, research/train/optim.py): bit-identical
  validation losses, so one row, the other run under Duplicates; and research-train resumes a run with the changed
  momentum (run_fields.unused_fields, the rule both read)."""
  overrides = {"data.seq_len": 32, "train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2,
               "train.eval_batches": 1, "train.async_checkpoints": False, "train.warmup_steps": 0,
               "train.optimizer": "adamw"}
  config = lambda **more: configuration.apply_overrides(tiny.get_config(), {**overrides, **more})  # noqa: E731
  for name, momentum in (("m9", 0.9), ("m5", 0.5)):
    loop.train(config(**{"train.momentum": momentum}), tmp_path / name)
  summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("m5", "m9")]
  assert summaries[0]["valid_loss"] == summaries[1]["valid_loss"]  # bit-identical: the same model
  report = build_report(tmp_path)
  _, rows = parse_md_table(report.table)
  assert len(rows) == 1 and "train.momentum" not in report.runs.swept_fields
  assert [(t.name, kept) for t, kept in report.runs.duplicates] == [("m9", "m5")]
  assert "- `m9` (finished): duplicates `m5`" in report.markdown_path.read_text()
  loop.train(config(**{"train.momentum": 0.9, "train.steps": 3}), tmp_path / "m5")  # a resume: not refused
  assert json.loads((tmp_path / "m5" / "summary.json").read_text())["step"] == 3
  with pytest.raises(configuration.ConfigError, match="train.momentum"):  # where sgd reads it, another model
    loop.check_workdir(config(**{"train.optimizer": "sgd", "train.momentum": 0.5}), tmp_path / "m9")


def _set_summary(trial_dir, **figures):
  path = trial_dir / "summary.json"
  path.write_text(json.dumps({**json.loads(path.read_text()), **figures}))


def test_a_field_one_run_reads_does_not_split_the_runs_that_do_not(tmp_path):
  """train.head.projection_group is read by a factorized tied table only. An old plain run (its config.json lacks
  the field: implied 'matrices') and a new one (the default 'head') are the same model: one a duplicate of the other,
  not two rows, beside a factorized run that does read it; the plain row shows the field as unread."""
  for name, overrides in (("old_plain", {}), ("new_plain", {}), ("factorized", {"model.table_dim": 16})):
    write_trial(tmp_path, name, "alibi", 0)
    config = configuration.apply_overrides(trial_config("alibi", 0), overrides).to_dict()
    if name == "old_plain":
      del config["train"]["head"]["projection_group"]
    (tmp_path / name / "config.json").write_text(json.dumps(config))
  report = build_report(tmp_path)
  assert [t.name for t, _ in report.runs.duplicates] == ["old_plain"] or \
      [t.name for t, _ in report.runs.duplicates] == ["new_plain"]
  assert "model.table_dim" in report.runs.swept_fields
  _, rows = parse_md_table(report.markdown_path.read_text())
  assert len(rows) == 2, rows
  assert report.runs.swept_fields == ["model.table_dim"]  # no other field differs among runs that read it
  assert sorted(t.field("train.head.projection_group") for t in report.runs.trials) == [runs_lib.UNREAD, "head"]
  # Two factorized runs that differ there are two models, and the plain run's cell says it does not read it.
  write_trial(tmp_path, "factorized_old", "alibi", 0)
  config = configuration.apply_overrides(trial_config("alibi", 0), {"model.table_dim": 16}).to_dict()
  del config["train"]["head"]["projection_group"]
  (tmp_path / "factorized_old" / "config.json").write_text(json.dumps(config))
  report = build_report(tmp_path)
  assert report.runs.swept_fields == ["model.table_dim", "train.head.projection_group"]
  _, rows = parse_md_table(report.markdown_path.read_text())
  assert len(rows) == 3 and sum(runs_lib.UNREAD in " ".join(cells) + label for label, cells in rows.items()) == 1


def test_fields_a_run_does_not_read_split_no_rows_and_the_real_vocabulary_decides_the_best(tmp_path):
  """A byte tokenizer ignores data.vocab_size (261 ids whatever it says) and a causal LM the MLM rates: runs that
  differ only there are one model (a duplicate when the seed is equal too), the rows are not split by them and the
  best is marked. What decides comparability is the vocabulary the run had (summary.json's vocab_size)."""
  for scheme, vocab, rate in (("alibi", 512, 0.15), ("rope", 1024, 0.3)):
    for seed in (0, 1):
      name = f"{scheme}{seed}"
      write_trial(tmp_path, name, scheme, seed)
      loop.write_config(configuration.apply_overrides(trial_config(scheme, seed), {
          "data.tokenizer": "byte", "data.vocab_size": vocab + seed, "data.mlm_select_rate": rate}), tmp_path / name)
      _set_summary(tmp_path / name, vocab_size=261)
  shutil.copytree(tmp_path / "alibi0", tmp_path / "alibi0_v999")
  loop.write_config(configuration.apply_overrides(trial_config("alibi", 0), {
      "data.tokenizer": "byte", "data.vocab_size": 999, "data.mlm_select_rate": 0.15}), tmp_path / "alibi0_v999")
  report = build_report(tmp_path)
  assert report.runs.swept_fields == ["model.position", "seed"]
  assert [(t.name, kept) for t, kept in report.runs.duplicates] == [("alibi0_v999", "alibi0")]
  assert report.data.incomparable == [] and report.data.best
  assert "lower is better, the lowest mean per column is in **bold**" in report.markdown_path.read_text()
  _set_summary(tmp_path / "rope1", vocab_size=300)  # another vocabulary really (another tokenizer's): no best
  assert build_report(tmp_path).data.incomparable == ["data.vocab_size"]


def test_of_duplicate_runs_the_copy_with_the_most_evaluation_files_is_kept_and_the_others_files_are_named(tmp_path):
  """A copy listed first but never evaluated is not kept over a later copy that was: the 1x column stays. What a
  left-out copy has that the kept one lacks is named under Duplicates (not used)."""
  write_trial(tmp_path, "a0", "alibi", 0, evaluate=False)
  _write_by_position(tmp_path / "a0", "alibi", 0)  # one file
  _, ppls = write_trial(tmp_path, "a0_eval", "alibi", 0)  # the same model: extrapolation.json, and a scaled one
  extrapolation.write_report(tmp_path / "a0_eval", extrapolation.report_record(
      train_len=TRAIN_LEN, mode="nonoverlapping", stride=None, split="valid", checkpoint_step=100,
      rope_scaling="linear", rope_factor=None, results=[extrapolation.result_record(1, TRAIN_LEN, 30.0, 4096)]))
  write_trial(tmp_path, "a1", "alibi", 1, evaluate=False)
  report = build_report(tmp_path)
  assert [(t.name, kept) for t, kept in report.runs.duplicates] == [("a0", "a0_eval")]
  assert report.data.cell(0, f"ppl_1x_{TRAIN_LEN}").values == (ppls[1],)
  md = report.markdown_path.read_text()
  assert ("- `a0` (finished): duplicates `a0_eval`; its evaluation files that `a0_eval` lacks are not used: "
          "`eval/loss_by_position.json`") in md
  shutil.rmtree(tmp_path / "a0_eval" / "eval")  # a tie (no file against one): the first copy listed is kept
  (tmp_path / "a0" / "eval" / "loss_by_position.json").unlink()
  assert [(t.name, kept) for t, kept in build_report(tmp_path).runs.duplicates] == [("a0_eval", "a0")]


def test_no_best_perplexity_is_marked_when_the_rows_differ_in_what_a_perplexity_measures(tmp_path):
  """Another vocabulary size (read from the trials' configs) makes the perplexities incomparable: no bold in
  their columns, and report.md and the LaTeX caption say which field."""
  for scheme, vocab in (("alibi", 512), ("rope", 1024)):
    for seed in (0, 1):
      write_trial(tmp_path, f"{scheme}{seed}", scheme, seed)
      loop.write_config(configuration.apply_overrides(trial_config(scheme, seed), {"data.vocab_size": vocab}),
                        tmp_path / f"{scheme}{seed}")
      _set_summary(tmp_path / f"{scheme}{seed}", vocab_size=vocab)  # the tokenizer had the size asked for
  report = build_report(tmp_path)
  assert report.data.incomparable == ["data.vocab_size"] and "data.vocab_size" in report.runs.swept_fields
  _, rows = parse_md_table(report.table)
  assert len(rows) == 2 and not any("**" in cell for row in rows.values() for cell in row)
  assert report.data.best == {}
  md = report.markdown_path.read_text()
  assert "no best is marked, because the rows differ in `data.vocab_size`" in md
  assert "\\textbf" not in report.latex_path.read_text()


@pytest.mark.slow
def test_passkey_columns_show_the_mean_accuracy_over_depths_of_what_research_evaluate_wrote(real_sweep, tmp_path):
  directory = tmp_path / "sweep"
  shutil.copytree(real_sweep, directory)
  for trial in directory.iterdir():
    if (trial / "config.json").is_file():
      extrapolation.evaluate_run(trial, (1, 2), passkey=True, passkey_depths=(0, 1), passkey_trials=2)
  report = build_report(directory)
  header, rows = parse_md_table(report.table)
  assert header[-2:] == ["passkey 1× (32)", "passkey 2× (64)"]
  labels = [g.label for g in report.data.groups]
  for trial in report.runs.trials:
    written = json.loads((trial.path / "eval" / "passkey.json").read_text())["results"]
    gi = labels.index(f"position={trial.field('model.position')}")
    for length, key in ((32, "passkey_1x_32"), (64, "passkey_2x_64")):
      cells = [r for r in written if r["length"] == length]
      scored = [r["accuracy"] for r in cells if r["accuracy"] is not None]
      cell = report.data.cell(gi, key)
      if scored:
        assert cell.n == 1 and cell.mean == pytest.approx(np.mean(scored), rel=1e-12)
      else:  # every depth n/a: the file's note is the footnote
        assert cell.n == 0 and f"passkey: {cells[0]['note']}" in cell.notes
        assert cells[0]["note"] in report.table
  assert "passkey 1× (32)" not in str(report.data.best)
  with open(report.csv_path, newline="") as f:
    csv_rows = {r["group"]: r for r in csv.DictReader(f)}
  alibi = [r for r in json.loads((directory / "position=alibi,seed=0" / "eval" / "passkey.json").read_text())[
      "results"] if r["length"] == 64]
  assert float(csv_rows["position=alibi"]["passkey_2x_64_mean"]) == pytest.approx(
      np.mean([r["accuracy"] for r in alibi]), rel=1e-12)
  assert csv_rows["position=alibi"]["passkey_2x_64_n"] == "1" and csv_rows["position=learned"]["passkey_2x_64_n"] == "0"
  assert "passkey retrieval: higher is better" not in report.markdown_path.read_text()  # said per column
  assert "passkey 2× (64): higher is better" in report.markdown_path.read_text() or \
      "passkey 1× (32), passkey 2× (64): higher is better" in report.markdown_path.read_text()
  assert set(report.plots) == {"ppl_vs_length.png", "curves.png", "loss_by_position.png"}


@pytest.mark.slow
def test_passkey_with_rope_scaling_fills_the_scaled_row_from_its_own_file(tmp_path):
  run = tmp_path / "rope"
  loop.train(configuration.apply_overrides(tiny.get_config(), {
      "model.position": "rope", "data.seq_len": 32, "train.steps": 20, "train.eval_every": 10,
      "train.checkpoint_every": 10, "train.eval_batches": 0, "train.async_checkpoints": False}), run)
  for scaling in (None, "linear"):
    extrapolation.evaluate_run(run, (2, 4), rope_scaling=scaling, passkey=True, passkey_depths=(0, 0.5, 1),
                               passkey_trials=3)
  report = build_report(run)
  labels = [g.label for g in report.data.groups]
  assert len(labels) == 2 and labels[1] == f"{labels[0]}, rope_scaling=linear"
  for gi, file in enumerate(("passkey.json", "passkey_linear.json")):
    written = json.loads((run / "eval" / file).read_text())["results"]
    for length, key in ((64, "passkey_2x_64"), (128, "passkey_4x_128")):
      scored = [r["accuracy"] for r in written if r["length"] == length and r["accuracy"] is not None]
      cell = report.data.cell(gi, key)
      assert len(scored) == 3 and cell.n == 1 and cell.mean == pytest.approx(np.mean(scored), rel=1e-12), (file, key)
  # The scaled file is judged by the stale rules under its own name: a "last" evaluation of step 10 is stale.
  scaled = json.loads((run / "eval" / "passkey_linear.json").read_text())
  (run / "eval" / "passkey_linear.json").write_text(json.dumps({**scaled, "checkpoint_step": 10, "checkpoint": "last"}))
  report = build_report(run)
  assert report.data.cell(1, "passkey_2x_64").n == 0 and report.data.cell(0, "passkey_2x_64").n == 1
  assert "eval/passkey_linear.json" in report.table and "stale" in report.table


# --- evaluation files of different protocols: never mixed silently -------------------------------------------------


def test_a_loss_by_position_of_another_protocol_or_step_than_its_extrapolation_is_stale_and_left_out(tmp_path):
  """research-evaluate without --by_position replaces extrapolation.json and (before it moved the old one aside) left
  loss_by_position.json of another mode, stride or checkpoint beside it: its curves are not averaged with the
  others under extrapolation.json's evaluation line; report.md says which field differs. An older file lacking a
  field is compared on what it records."""
  from research.report import plots
  for seed in (0, 1):
    write_trial(tmp_path, f"rope{seed}", "rope", seed)  # extrapolation.json: nonoverlapping, step 100
    _write_by_position(tmp_path / f"rope{seed}", "rope", seed)
  report = build_report(tmp_path)
  assert plots.position_series(report.data)[TRAIN_LEN]["n"] == {0: 2}
  assert "Stale" not in report.markdown_path.read_text()
  for kwargs, said in (({"mode": "sliding", "stride": 1}, "(mode sliding, stride 1 vs mode nonoverlapping"),
                       ({"checkpoint_step": 80}, "(step 80 vs 100")):
    _write_by_position(tmp_path / "rope1", "rope", 1, **kwargs)
    report = build_report(tmp_path)
    text = report.markdown_path.read_text()
    assert f"rope1: eval/loss_by_position.json does not match eval/extrapolation.json beside it {said}" in text
    assert "rope0: eval/loss_by_position.json" not in text
    series = plots.position_series(report.data)
    assert {length: s["n"] for length, s in series.items()} == {m * TRAIN_LEN: {0: 1} for m in MULTIPLES}
    assert report.plots[plots.LOSS_BY_POSITION].read_bytes()[:8] == PNG_MAGIC  # rope0 alone
  path = tmp_path / "rope1" / "eval" / "loss_by_position.json"
  _write_by_position(tmp_path / "rope1", "rope", 1)
  old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("stride", "split", "checkpoint_step")}
  path.write_text(json.dumps(old))  # a file written before those fields: nothing says it differs
  report = build_report(tmp_path)
  assert plots.position_series(report.data)[TRAIN_LEN]["n"] == {0: 2}
  assert "Stale" not in report.markdown_path.read_text()


def _write_passkey(trial_dir, rope_scaling=None, rope_factor=None, depths=(0.0, 1.0), trials=2, accuracy=0.5):
  """eval/passkey(_<scaling>).json (and its heatmap) as research-evaluate --passkey writes them, at 1× and 2×."""
  from research.evaluate import passkey
  results = [{**passkey.cell_record(m, m * TRAIN_LEN, d, note="n/a"), "accuracy": accuracy, "n": trials}
             for m in (1, 2) for d in depths]
  passkey.write_report(trial_dir, passkey.report_record(
      train_len=TRAIN_LEN, checkpoint_step=100, seed=0, trials=trials, depths=depths, rope_scaling=rope_scaling,
      rope_factor=rope_factor, results=[{k: v for k, v in r.items() if k != "note"} for r in results]))


def test_a_row_averaging_trials_of_different_rope_factors_or_passkey_depths_is_marked_and_not_ranked(tmp_path):
  """Seeds of one row scaled with different factors (or passkey files of different depths and keys per cell) are
  not averaged silently into a cell that wins the bold: the cell has a footnote, is not ranked, and report.md names
  the runs and their settings; so does a run whose passkey_S.json and extrapolation_S.json differ in factor."""
  directory = tmp_path / "sweep"
  make_sweep(directory, schemes=("alibi", "rope"), seeds=(0, 1))
  for seed in (0, 1):
    _write_scaled(directory / f"rope-s{seed}", "linear", seed, factor=2.0)
    _write_passkey(directory / f"rope-s{seed}")
    _write_passkey(directory / f"alibi-s{seed}", accuracy=0.25)
  report = build_report(directory)
  text = report.markdown_path.read_text()
  assert "mixed evaluation settings" not in text and "different settings" not in report.table
  labels = [g.label for g in report.data.groups]
  scaled = labels.index("position=rope, rope_scaling=linear")
  rope = labels.index("position=rope")
  assert report.data.best["ppl_1x_64"] == {rope, scaled}  # the made-up 1× figures are equal: a tie, both bold
  assert labels.index("position=rope") in report.data.best["passkey_1x_64"]

  _write_scaled(directory / "rope-s1", "linear", 1, factor=None)  # factor = the multiple
  _write_passkey(directory / "rope-s1", depths=(0.0, 0.5, 1.0), trials=3)
  _write_passkey(directory / "rope-s0", rope_scaling="linear", rope_factor=None)
  report = build_report(directory)
  text = report.markdown_path.read_text()
  # The factor each file applied at a length is compared (None: the multiple), not how the files name it.
  assert ("- row `position=rope, rope_scaling=linear` averages perplexities of trials evaluated with different "
          "settings: `rope-s0` factor 2; `rope-s1` factor 1") in text
  assert ("- row `position=rope` averages passkey accuracies of trials evaluated with different settings: "
          "`rope-s0` depths [0, 1], 2 keys per cell; `rope-s1` depths [0, 0.5, 1], 3 keys per cell") in text
  assert ("- `rope-s0`: eval/passkey_linear.json was made with factor = the multiple at each length, "
          "eval/extrapolation_linear.json with factor 2") in text
  cell = report.data.cell(scaled, "ppl_1x_64")
  assert cell.mixed and cell.n == 2 and report.data.best["ppl_1x_64"] == {rope}  # the mixed mean is not ranked
  _, rows = parse_md_table(report.table)
  assert re.fullmatch(r"[\d.]+ ± [\d.]+\[\^\d+\]", rows["position=rope, rope_scaling=linear"][-3]), rows
  assert "mean of trials evaluated with different settings (rope-s0: factor 2; rope-s1: factor 1)" in report.table
  mixed = {m: report.data.cell(scaled, f"ppl_{m}x_{m * TRAIN_LEN}").mixed for m in MULTIPLES}
  assert mixed == {m: m != 2 for m in MULTIPLES}  # at 2x both applied factor 2: one setting, ranked
  from research.report import plots
  lines = {g.label: [length for length, *_ in pts] for _, g, pts, _ in plots.ppl_series(report.data)}
  assert lines["position=rope, rope_scaling=linear"] == [2 * TRAIN_LEN]  # mixed means are not drawn either
  assert report.data.cell(rope, "passkey_1x_64").mixed and rope not in report.data.best["passkey_1x_64"]
  assert not report.data.cell(labels.index("position=alibi"), "passkey_1x_64").mixed


def test_an_mlm_runs_passkey_cells_are_not_applicable_rather_than_a_command_it_refuses(tmp_path):
  write_trial(tmp_path, "clm", "alibi", 0)
  _write_passkey(tmp_path / "clm")
  write_trial(tmp_path, "mlm", "alibi", 1)
  loop.write_config(configuration.apply_overrides(trial_config("alibi", 1), {"objective": "mlm"}), tmp_path / "mlm")
  report = build_report(tmp_path)
  gi = [g.label for g in report.data.groups].index("objective=mlm")
  assert report.data.cell(gi, "passkey_1x_64").notes == (
      "not applicable: passkey retrieval needs a causal LM (objective=mlm)",)
  assert "--passkey" not in report.table


def test_a_directory_of_seeds_only_says_so_plainly(tmp_path):
  for seed in (0, 1):
    write_trial(tmp_path, f"s{seed}", "alibi", seed)
  text = build_report(tmp_path).markdown_path.read_text()
  assert "The trials differ only in `seed` (replicates, averaged over in one group)." in text
  assert "swept fields none" not in text
  text = build_report(tmp_path / "s0").markdown_path.read_text()
  assert "No field is swept (one group)." in text and "swept fields none" not in text


def test_report_md_says_the_trials_model_dtype_whether_swept_or_not(tmp_path, sweep):
  """A bf16 sweep's report.md named bf16 nowhere: the rows name only the swept fields. One line says the trials'
  model.dtype: one value (a sweep with a trial not started yet included), or the mix."""
  for seed in (0, 1):
    write_trial(tmp_path / "runs", f"s{seed}", "alibi", seed)
    config = configuration.apply_overrides(trial_config("alibi", seed), {"model.dtype": "bfloat16"})
    loop.write_config(config, tmp_path / "runs" / f"s{seed}")

  def lines(report):  # report.md's lines on the dtype
    return [l for l in report.markdown_path.read_text().splitlines() if l.startswith("Model dtype")]
  assert lines(build_report(tmp_path / "runs")) == [
      "Model dtype: `model.dtype=bfloat16` in every trial (bf16 × bf16 → f32 products)."]
  assert lines(build_report(sweep[0])) == ["Model dtype: `model.dtype=float32` in every trial (float32 products)."]
  write_trial(tmp_path / "runs", "s2", "alibi", 2)  # float32, as tiny has it
  report = build_report(tmp_path / "runs")
  assert report.data.fields == ["model.dtype"]
  assert lines(report) == ["Model dtype: mixed, `model.dtype` is bfloat16 in 2 trials, float32 in 1 trial; the "
                           "rows show it."]


def _mlm_trial(directory, name, seed, valid_ppl, masks=True, lacking=()):
  """A finished MLM trial by the trainer's writers: its summary.json records its validation masks (`masks`) as the
  trainer's does now, or not, as one written before; `lacking`: config.json fields removed (an older run's)."""
  write_trial(directory, name, "alibi", seed, evaluate=False)
  loop.write_config(configuration.apply_overrides(trial_config("alibi", seed), {"objective": "mlm"}), directory / name)
  config = json.loads((directory / name / "config.json").read_text())
  for field in lacking:  # a section left empty goes too (the old config had no train.position at all)
    *parents, leaf = field.split(".")
    nodes = [config]
    for parent in parents:
      nodes.append(nodes[-1][parent])
    del nodes[-1][leaf]
    while len(nodes) > 1 and not nodes[-1]:
      nodes.pop()
      del nodes[-1][parents[len(nodes) - 1]]
  (directory / name / "config.json").write_text(json.dumps(config))
  loop.write_summary(directory / name, loop.summary_record(
      step=100, train_loss=3.0, valid={"loss": math.log(valid_ppl), "ppl": valid_ppl, "accuracy": 0.3},
      tokens_seen=51200.0, num_params=100000, num_embedding_params=32768, vocab_size=512, wall_s=1.0,
      objective="mlm" if masks else None))


def test_an_mlm_runs_summary_records_its_validation_masks_and_rules_are_never_averaged_or_ranked_unsaid(tmp_path):
  """The trainer's summary.json of an MLM run names its validation's masking rule (one of a causal LM none); a row
  whose MLM trials were validated by different rules, or by one the files cannot tell, is footnoted and not ranked,
  and report.md names the trials and rules; such runs are no copies of each other; rows of different rules get no
  best in valid ppl. (An audit: 306.77 with masks per batch and 336.60 per row were averaged to 321.69 ± 21.10.)"""
  run = tmp_path / "real"
  loop.train(configuration.apply_overrides(tiny.get_config(), {
      "objective": "mlm", "data.seq_len": 32, "train.steps": 1, "train.eval_every": 1, "train.checkpoint_every": 1,
      "train.eval_batches": 1, "train.batch_size": 4, "train.async_checkpoints": False}), run)
  assert json.loads((run / "summary.json").read_text())["mlm_masks"] == extrapolation.MLM_MASKS
  assert "mlm_masks" not in loop.summary_record(step=1, train_loss=1.0, valid={"loss": 1.0, "ppl": 2.7,
                                                                             "accuracy": 0.1}, tokens_seen=1.0,
                                                num_params=1, num_embedding_params=1, vocab_size=1, wall_s=1.0,
                                                objective="clm")
  # The same model and seed twice: today's run (per row) and one written by the 12-06 code (per batch: its summary
  # lacks mlm_masks, its config.json model.char_spelling): two measurements, not a copy.
  runs = tmp_path / "runs"
  _mlm_trial(runs, "new", 0, 268.86)
  _mlm_trial(runs, "old", 0, 306.77, masks=False, lacking=("model.char_spelling",))
  report = build_report(runs)
  assert report.runs.duplicates == [] and [g.n for g in report.data.groups] == [2]
  cell = report.data.cell(0, "valid_ppl")
  assert cell.mixed and sorted(cell.values) == [268.86, 306.77] and "valid_ppl" not in report.data.best
  text = report.markdown_path.read_text()
  assert "averages validation perplexities of trials evaluated with different settings" in text
  assert "`new` validation masks per row" in text and "`old` validation masks per batch (trained before b2cb295" in text
  assert re.search(r"\| 287\.81 ± 26\.81\[\^1\] \|", report.table) and "[^1]: mean of trials evaluated" in report.table
  # A summary without mlm_masks from a config.json of today's fields: per batch or per row, the files cannot tell.
  shutil.rmtree(runs / "old")
  _mlm_trial(runs, "today", 1, 336.60, masks=False)
  report = build_report(runs)
  assert report.data.cell(0, "valid_ppl").mixed and "different or untold settings" in report.table
  assert "`today` validation masks not recorded (per batch before b2cb295, per row since" in \
      report.markdown_path.read_text()
  # A run of 11-24 (no train.position: one key for every batch) is told, and a copy of it is still a copy.
  shutil.rmtree(runs / "today")
  _mlm_trial(runs, "o7", 0, 274.86, masks=False, lacking=("train.position.weight_decay", "model.char_spelling"))
  shutil.copytree(runs / "o7", runs / "o7_copy")
  report = build_report(runs)
  assert [(t.name, kept) for t, kept in report.runs.duplicates] == [("o7_copy", "o7")]
  assert "`o7` validation masks from one key for every batch (trained before 059dd28" in \
      report.markdown_path.read_text()
  # In rows of their own (another position), the two rules' valid ppl are not ranked against each other.
  config = json.loads((runs / "o7" / "config.json").read_text())
  config["model"]["position"] = "rope"
  (runs / "o7" / "config.json").write_text(json.dumps(config))
  shutil.rmtree(runs / "o7_copy")
  report = build_report(runs)
  assert len(report.data.groups) == 2 and not any(report.data.cell(gi, "valid_ppl").mixed for gi in (0, 1))
  assert "valid_ppl" not in report.data.best and report.data.validation_rules
  assert "but none in valid ppl: the rows' MLM validations masked the split by different rules" in \
      report.markdown_path.read_text()
  assert "**" not in report.table


def test_a_field_an_older_config_lacks_reads_as_the_resume_rule_reads_it_and_only_an_unknown_one_is_unset(tmp_path):
  """A config.json written before a field existed means what research-train's resume rule fills it with
  (`configuration.with_defaults`): an old run is a seed of the new run's row, not a row of `(unset)` values; a field
  the report has no implied value for (a newer schema's) is still `(unset)`."""
  from research.report import saved_fields
  assert saved_fields.IMPLIED_VALUES == runs_lib.flatten(configuration.with_defaults({})), \
      "regenerate research/report/saved_fields.py from configuration.with_defaults({})"
  assert saved_fields.IMPLIED_VALUES["train.position.weight_decay"] is True  # schema.LEGACY_VALUES, not the default
  write_trial(tmp_path, "new", "alibi", 0)
  write_trial(tmp_path, "old", "alibi", 1)
  config = json.loads((tmp_path / "old" / "config.json").read_text())
  for section, leaf in (("data", "document_mask"), ("data", "document_positions"), ("data", "train_fraction"),
                        ("mesh", "heartbeat_timeout_s")):
    del config[section][leaf]  # as a config.json of 2026-11-24 lacks them
  (tmp_path / "old" / "config.json").write_text(json.dumps(config))
  report = build_report(tmp_path)
  assert report.runs.swept_fields == ["seed"] and [g.n for g in report.data.groups] == [2]
  old = next(t for t in report.runs.trials if t.name == "old")
  assert old.field("data.document_mask") is False and old.field("data.train_fraction") == 1.0
  assert "data.document_mask" in old.implied and "(unset)" not in report.table
  config = json.loads((tmp_path / "new" / "config.json").read_text())
  config["model"]["future_field"] = 2  # a field this report's table does not know
  (tmp_path / "new" / "config.json").write_text(json.dumps(config))
  header, rows = parse_md_table(build_report(tmp_path).table)
  assert set(rows) == {"future_field=2", "future_field=(unset)"}
