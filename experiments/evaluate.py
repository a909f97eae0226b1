r"""Length extrapolation of a trained run: perplexity at multiples of its training length.

  research-evaluate --workdir=RUN [--lengths=1,2,4,8,16] [--mode=nonoverlapping|sliding] [--stride=S]
                    [--split=valid] [--checkpoint=best|last] [--rope_scaling=linear|ntk|yarn [--rope_factor=F]]
                    [--by_position] [--passkey [--passkey_depths=0,0.25,0.5,0.75,1] [--passkey_trials=10]]

Writes RUN/eval/extrapolation.json (RUN/eval/extrapolation_<scaling>.json with --rope_scaling) and prints a table;
--by_position also writes RUN/eval/loss_by_position.json (mean loss per window position, from the same passes);
--passkey also writes RUN/eval/passkey.json and the heatmap RUN/eval/passkey.png and prints their accuracy table.
With more than one device it evaluates on the run's mesh (docs/reports.md, "Evaluation protocol").
Every option is checked, for every length, before anything is loaded or scored: a bad one fails in one line (status 2).
"""

from research import hugepages, interrupts

if __name__ == "__main__":  # `python -m`: restart first, before the imports below (JAX's) are made twice
  interrupts.record()  # a Ctrl-C from here on is raised once the command can end in one line (`run`)
  hugepages.maybe_reexec()

import json
import sys
from pathlib import Path

from absl import app, flags, logging

from experiments.common import end_interrupted, expand_home_flags, parse_flags, run_main
from research import supervisor
from research.evaluate import extrapolation, passkey

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to evaluate.")
_LENGTHS = flags.DEFINE_list("lengths", ["1", "2", "4", "8", "16"], "Multiples of the training length, integers "
                             ">= 1; a repeated one is scored once (1,2,1 = 1,2).")
_MODE = flags.DEFINE_enum("mode", "nonoverlapping", list(extrapolation.MODES), "Window mode.")
_STRIDE = flags.DEFINE_integer("stride", None, "--mode=sliding only: tokens scored per window, an integer from 1 to "
                               "the shortest window asked for (default: half the training length, at every "
                               "multiple; 0 is refused, not the default; 1 = score only the last token of each "
                               "window, as the ALiBi paper's sliding-window evaluation).")
_SPLIT = flags.DEFINE_string("split", "valid", "Split to score (train, valid, test).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", list(extrapolation.CHECKPOINTS), "Which checkpoint to score.")
_ROPE_SCALING = flags.DEFINE_enum("rope_scaling", None, list(extrapolation.ROPE_SCALINGS),
                                  "RoPE scaling at evaluation (a RoPE run only).")
_ROPE_FACTOR = flags.DEFINE_float("rope_factor", None, "With --rope_scaling only: the scaling factor, a finite "
                                   "number >= 1 (default: the multiple at each length; 0 is refused, not the "
                                   "default).")
_BY_POSITION = flags.DEFINE_boolean("by_position", False, "Also write eval/loss_by_position.json: the mean loss "
                                    "per (bucketed) window position at each length, from the same passes.")
_PASSKEY = flags.DEFINE_boolean("passkey", False, "Also score passkey retrieval at each length (causal LMs): "
                                "eval/passkey.json and eval/passkey.png.")
_PASSKEY_DEPTHS = flags.DEFINE_list("passkey_depths", [f"{d:g}" for d in passkey.DEPTHS],
                                    "Depths of the key in the filler, fractions in [0, 1]; a repeated one is "
                                    "scored once (0.5,1,0.5 = 0.5,1).")
_PASSKEY_TRIALS = flags.DEFINE_integer("passkey_trials", passkey.TRIALS, "Keys per (length, depth) cell.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens_per_batch", 8192, "Bounds memory: batch = this // length (at least "
                                   "one window); an integer >= 1.")


@run_main
def main(argv):
  if len(argv) > 1:
    raise extrapolation.EvaluationError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)
  try:
    lengths = [int(m) for m in _LENGTHS.value]
  except ValueError:
    raise extrapolation.EvaluationError(f"--lengths={','.join(_LENGTHS.value)} must be integers") from None
  try:
    depths = [float(d) for d in _PASSKEY_DEPTHS.value]
  except ValueError:
    raise extrapolation.EvaluationError(f"--passkey_depths={','.join(_PASSKEY_DEPTHS.value)} must be numbers in "
                                        f"[0, 1]") from None
  passkey.check_given(_PASSKEY.value, [flag.name for flag in (_PASSKEY_DEPTHS, _PASSKEY_TRIALS) if flag.present])
  report = extrapolation.evaluate_run(
      _WORKDIR.value, lengths, mode=_MODE.value, stride=_STRIDE.value, split=_SPLIT.value,
      checkpoint=_CHECKPOINT.value, rope_scaling=_ROPE_SCALING.value, rope_factor=_ROPE_FACTOR.value,
      by_position=_BY_POSITION.value, passkey=_PASSKEY.value, passkey_depths=depths,
      passkey_trials=_PASSKEY_TRIALS.value, max_tokens_per_batch=_MAX_TOKENS.value)
  print(f"{'multiple':>8} {'length':>7} {'ppl':>10} {'tokens':>8}")
  for r in report["results"]:
    ppl = "n/a" if r["ppl"] is None else f"{r['ppl']:.2f}"
    print(f"{r['multiple']:>8} {r['length']:>7} {ppl:>10} {r['tokens']:>8}")
  if _PASSKEY.value:
    print_passkey(_WORKDIR.value, report["rope_scaling"])


def print_passkey(workdir: str, rope_scaling: str | None) -> None:
  """The passkey accuracy table: one row per depth, one column per length."""
  saved = json.loads((Path(workdir) / extrapolation.EVAL_DIR / passkey.report_file(rope_scaling)).read_text())
  columns = sorted({(r["length"], r["multiple"]) for r in saved["results"]})
  cells = {(r["depth"], r["length"]): r["accuracy"] for r in saved["results"]}
  print(f"\npasskey accuracy ({saved['trials']} keys per cell)")
  print(f"{'depth':>8} " + " ".join(f"{f'{m}x ({n})':>11}" for n, m in columns))
  for depth in saved["depths"]:
    values = [cells[(depth, n)] for n, _ in columns]
    print(f"{depth:>8g} " + " ".join(f"{'n/a' if v is None else f'{v:.2f}':>11}" for v in values))


def run():
  hugepages.maybe_reexec()  # first: restarts the process with huge pages for XLA's buffers (Linux)
  sys.argv = expand_home_flags(sys.argv)  # --workdir=~/runs/x: the home directory, not a directory named ~
  flags.mark_flags_as_required(["workdir"])
  try:
    interrupts.deliver()  # (a Ctrl-C recorded since the first line is raised here)
    # Multi-process jobs: a lost or missing process is one line, not a C++ report (after `deliver`: research-train's
    # comment says why).
    supervisor.maybe_supervise(rerun=supervisor.RERUN_EVALUATE)  # a lost process's remedy: score again
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:
    end_interrupted("nothing was scored to the end: rerun the command to evaluate")


if __name__ == "__main__":
  interrupts.run_command(run)  # (as launch.py's)
