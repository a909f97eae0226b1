r"""Length extrapolation of a trained run: perplexity at multiples of its training length.

  research-evaluate --workdir=RUN [--lengths=1,2,4,8,16] [--mode=nonoverlapping|sliding] [--stride=S]
                    [--split=valid] [--checkpoint=best|last] [--rope_scaling=linear|ntk|yarn [--rope_factor=F]]

Writes RUN/eval/extrapolation.json (RUN/eval/extrapolation_<scaling>.json with --rope_scaling) and prints a table.
With more than one device it evaluates on the run's mesh (docs/reports.md, "Evaluation protocol").
"""

import sys

from absl import app, flags, logging

from experiments.common import run_main
from research import hugepages
from research.evaluate import extrapolation

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to evaluate.")
_LENGTHS = flags.DEFINE_list("lengths", ["1", "2", "4", "8", "16"], "Multiples of the training length.")
_MODE = flags.DEFINE_enum("mode", "nonoverlapping", list(extrapolation.MODES), "Window mode.")
_STRIDE = flags.DEFINE_integer("stride", None, "Sliding mode: tokens scored per window (default: half the "
                               "training length, at every multiple; 1 = score only the last token of each window, "
                               "as the ALiBi paper's sliding-window evaluation).")
_SPLIT = flags.DEFINE_string("split", "valid", "Split to score (train, valid, test).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", list(extrapolation.CHECKPOINTS), "Which checkpoint to score.")
_ROPE_SCALING = flags.DEFINE_enum("rope_scaling", None, list(extrapolation.ROPE_SCALINGS),
                                  "RoPE scaling at evaluation (a RoPE run only).")
_ROPE_FACTOR = flags.DEFINE_float("rope_factor", None, "Scaling factor (default: the multiple at each length).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens_per_batch", 8192, "Bounds memory: batch = this // length.")


@run_main
def main(argv):
  if len(argv) > 1:
    raise extrapolation.EvaluationError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)
  try:
    lengths = [int(m) for m in _LENGTHS.value]
  except ValueError:
    raise extrapolation.EvaluationError(f"--lengths={','.join(_LENGTHS.value)} must be integers") from None
  report = extrapolation.evaluate_run(
      _WORKDIR.value, lengths, mode=_MODE.value, stride=_STRIDE.value, split=_SPLIT.value,
      checkpoint=_CHECKPOINT.value, rope_scaling=_ROPE_SCALING.value, rope_factor=_ROPE_FACTOR.value,
      max_tokens_per_batch=_MAX_TOKENS.value)
  print(f"{'multiple':>8} {'length':>7} {'ppl':>10} {'tokens':>8}")
  for r in report["results"]:
    ppl = "n/a" if r["ppl"] is None else f"{r['ppl']:.2f}"
    print(f"{r['multiple']:>8} {r['length']:>7} {ppl:>10} {r['tokens']:>8}")


def run():
  hugepages.maybe_reexec()  # first: restarts the process with huge pages for XLA's buffers (Linux)
  flags.mark_flags_as_required(["workdir"])
  app.run(main)


if __name__ == "__main__":
  run()
