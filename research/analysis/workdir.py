"""research-analyze's analyses of one run directory, in one place: the command (experiments/analyze.py) holds its flags
only, so that a caller (a test, a notebook) can run these without defining them (docs/architecture.md)."""

from __future__ import annotations

from research import interrupts
from research.analysis import positions, quality, rare


def analyze_workdir(workdir: str, checkpoint: str, *, export_word2vec: str | None = None,
                    export_projector: str | None = None, vectors_of: str = "table", rare_tokens: bool = False,
                    positions_batches: int | None = None) -> dict[str, dict]:
  """Every analysis one call asks for, of ONE checkpoint, printing each file's summary as it is written; returns the
  reports by name ("quality", "rare", "positions"). The run is loaded once (best/last resolved, the parameters
  restored) and handed to each analysis, so every file records the same step even while a live trainer writes and
  rotates checkpoints (each analysis resolving best/last again analysed different steps in one call)."""
  run = quality.load_run(workdir, checkpoint)
  reports = {"quality": quality.analyze_run(workdir, checkpoint, export_word2vec_path=export_word2vec,
                                            export_projector_dir=export_projector, vectors_of=vectors_of, run=run)}
  print(f"{workdir}/{quality.EVAL_DIR}/{quality.QUALITY_FILES[vectors_of]} (step {run.step})")
  print("\n".join(quality.summary_lines(reports["quality"])))
  interrupts.check()  # a Ctrl-C whose KeyboardInterrupt a callback swallowed (JAX's gc hook) ends the command here
  if rare_tokens:
    reports["rare"] = rare.analyze_run(workdir, checkpoint, run=run)
    print(f"{workdir}/{quality.EVAL_DIR}/{rare.RARE_FILE} (step {run.step})")
    print("\n".join(rare.summary_lines(reports["rare"])))
    interrupts.check()
  if positions_batches is not None:
    reports["positions"] = positions.analyze_run(workdir, checkpoint, positions_batches, run=run)
    print(f"{workdir}/{quality.EVAL_DIR}/{positions.POSITIONS_FILE} (step {run.step})")
    print("\n".join(positions.summary_lines(reports["positions"])))
  return reports
