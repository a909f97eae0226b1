r"""Analyses of an embedding table: word-vector benchmarks, exports.

  research-analyze --workdir=RUN [--checkpoint=best|last] [--export_word2vec=FILE] [--export_projector=DIR] [--rare]
                   [--positions [--positions_batches=N]] [--vectors_of=table|input]
  research-analyze --vectors=FILE [--format=auto|word2vec|...] [--output=FILE.json]

With --workdir: scores the input table of the run's best checkpoint (Google analogies, WordSim-353, SimLex-999 with
their coverage; nearest neighbours of 10 frequent words) and writes RUN/eval/embedding_quality.json (with
--vectors_of=input: the model's input vectors, table projected and combined with the character CNN, to
RUN/eval/embedding_quality_input.json);
--export_word2vec writes the table as word2vec text keyed by token strings, --export_projector TensorBoard projector
files (token and training count as metadata), --rare the rare-token analyses (frequency buckets, geometry, rows no
batch held and how far they moved: RUN/eval/rare_tokens.json, norm_vs_frequency.png, buckets.png;
docs/rare_tokens.md), --positions pictures of the run's positional scheme (RUN/eval/positions.json and the PNGs its
hooks have: position_similarity.png, rotary_kernel.png, bias_by_distance.png, attention.png;
research/analysis/positions.py, docs/architecture.md). With --vectors: the same benchmarks for a vector file.

One entry point for every analysis of a table: a new one is a flag and one more step in `research.analysis.workdir.analyze_workdir`, which
loads the run's checkpoint once for all of them (one call, one step in every file it writes).
"""

from research import hugepages, interrupts

if __name__ == "__main__":  # `python -m`: restart first, before the imports below (JAX's) are made twice
  interrupts.record()  # a Ctrl-C from here on is raised once the command can end in one line (`run`)
  hugepages.maybe_reexec()

import os
import sys
from pathlib import Path

from absl import app, flags, logging

from experiments.common import end_interrupted, expand_home_flags, parse_flags, run_main
from research.analysis import positions, quality, rare
from research.analysis.workdir import analyze_workdir
from research.data import corpora
from research.embeddings import pretrained
from research.error_text import unwritable

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory whose table to analyze.")
_VECTORS = flags.DEFINE_string("vectors", None, "A word2vec / GloVe / fastText file to analyze instead of a run.")
_FORMAT = flags.DEFINE_enum("format", "auto", list(pretrained.FORMATS), "Format of --vectors.")
_UNICODE_ERRORS = flags.DEFINE_enum("unicode_errors", "strict", list(pretrained.UNICODE_ERRORS),
                                    "With --vectors: undecodable bytes in its words (gensim's unicode_errors).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint of --workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "With --vectors: also write the report as JSON here.")
_EXPORT_WORD2VEC = flags.DEFINE_string("export_word2vec", None, "Write the run's table as word2vec text here.")
_EXPORT_PROJECTOR = flags.DEFINE_string("export_projector", None, "Write TensorBoard projector files here.")
_VECTORS_OF = flags.DEFINE_enum("vectors_of", "table", list(quality.VECTORS_OF),
                                 "With --workdir: score the table parameter (RUN/eval/embedding_quality.json) or the "
                                 "model's input vectors: projected, combined with the character CNN "
                                 "(RUN/eval/embedding_quality_input.json).")
_RARE = flags.DEFINE_bool("rare", False, "Also the rare-token analyses: RUN/eval/rare_tokens.json and its plots.")
_POSITIONS = flags.DEFINE_bool("positions", False, "Also pictures of the run's positional scheme and its attention: "
                               "RUN/eval/positions.json and its plots.")
_POSITIONS_BATCHES = flags.DEFINE_integer("positions_batches", positions.DEFAULT_BATCHES,
                                          "With --positions: validation batches for the attention statistics.")


def check_not_a_run_file(name: str, value: str) -> None:
  """One line when `--name=value` names a file a run's commands write, inside a run directory (config.json,
  summary.json, a checkpoint's, anything under eval/, through a symbolic link too), existing or not: writing there
  replaced it and broke the run, or the analysis wrote its report there and the export then replaced it. Any other
  file in a run (an earlier export of one's own) or outside every run may be written."""
  path = Path(value)
  for where in dict.fromkeys((Path(os.path.abspath(path)), Path(os.path.realpath(path)))):
    run = corpora.run_directory_of(where)
    if run is not None and corpora.is_run_file(where.relative_to(run)):
      raise quality.AnalysisError(f"--{name}={value!r} is the file {str(where.relative_to(run))!r} of the run "
                                  f"{str(run)!r}, one its commands write; give another name, outside the run's "
                                  f"eval/ and checkpoints/")


def check_flags() -> None:
  if bool(_WORKDIR.value) == bool(_VECTORS.value):
    raise quality.AnalysisError("give exactly one of --workdir=RUN and --vectors=FILE")
  if _VECTORS.value:
    for name, flag in (("export_word2vec", _EXPORT_WORD2VEC), ("export_projector", _EXPORT_PROJECTOR),
                       ("rare", _RARE), ("positions", _POSITIONS)):
      if flag.value:
        raise quality.AnalysisError(f"--{name} analyzes or exports a run's table: use it with --workdir, not "
                                    f"--vectors")
    if _VECTORS_OF.present:  # its default ("table") is a value, so it is refused only when given
      raise quality.AnalysisError("--vectors_of analyzes or exports a run's table: use it with --workdir, not "
                                  "--vectors")
  elif _VECTORS_OF.value != "table" and _RARE.value:
    raise quality.AnalysisError("--rare analyses the table parameter (drift from RUN/embedding_init.npy); run it "
                                "without --vectors_of=input")
  elif _OUTPUT.value:
    raise quality.AnalysisError(f"--output is for --vectors; a run's report goes to "
                                f"RUN/{quality.EVAL_DIR}/{quality.QUALITY_FILES[_VECTORS_OF.value]}")
  for flag in (_FORMAT, _UNICODE_ERRORS):
    if _WORKDIR.value and flag.present:
      raise quality.AnalysisError(f"--{flag.name} is for --vectors (a run's table needs none)")
  if _VECTORS.value and _CHECKPOINT.present:
    raise quality.AnalysisError("--checkpoint is for --workdir (a vector file has no checkpoints)")
  # Where results go is checked before the analysis runs (it may take minutes), naming the flag.
  for name, flag in (("output", _OUTPUT), ("export_word2vec", _EXPORT_WORD2VEC)):
    if flag.value:
      path = Path(flag.value)
      if path.is_dir() or not path.name:
        raise quality.AnalysisError(f"--{name}={flag.value!r} is a directory; give a file path")
      check_not_a_run_file(name, flag.value)
      if not path.absolute().parent.is_dir():
        raise quality.AnalysisError(f"--{name}={flag.value!r}: the directory {str(path.absolute().parent)!r} does "
                                    f"not exist")
      why = unwritable(path.absolute().parent)
      if why:
        raise quality.AnalysisError(f"--{name}={flag.value!r}: the directory {str(path.absolute().parent)!r} is not "
                                    f"writable ({why})")
  if _EXPORT_WORD2VEC.value:
    quality.check_export_name(_EXPORT_WORD2VEC.value)
  if _EXPORT_PROJECTOR.value and Path(_EXPORT_PROJECTOR.value).exists() and \
      not Path(_EXPORT_PROJECTOR.value).is_dir():
    raise quality.AnalysisError(f"--export_projector={_EXPORT_PROJECTOR.value!r} is a file; give a directory (it "
                                f"is created)")
  if _POSITIONS_BATCHES.present and not _POSITIONS.value:
    raise quality.AnalysisError("--positions_batches is for --positions")
  if _POSITIONS_BATCHES.value < 1:
    raise quality.AnalysisError(f"--positions_batches={_POSITIONS_BATCHES.value} must be >= 1")


@run_main
def main(argv):
  if len(argv) > 1:
    raise quality.AnalysisError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)
  check_flags()
  if _WORKDIR.value:
    with interrupts.held():  # JAX's imports (seconds): a Ctrl-C during them is raised after them, not inside
      from research.train import loop
    loop.check_writable(Path(_WORKDIR.value) / "eval")  # before the analyses, not at their final write
    if _RARE.value:  # --rare's input, checked before the quality analysis writes its file
      rare.check_run_files(_WORKDIR.value)
  if _VECTORS.value:
    report = quality.analyze_vectors(_VECTORS.value, _FORMAT.value, unicode_errors=_UNICODE_ERRORS.value)
    if _OUTPUT.value:
      quality.write_json(report, _OUTPUT.value)
    print("\n".join(quality.summary_lines(report)))
    interrupts.check()
  else:
    analyze_workdir(_WORKDIR.value, _CHECKPOINT.value, export_word2vec=_EXPORT_WORD2VEC.value,
                    export_projector=_EXPORT_PROJECTOR.value, vectors_of=_VECTORS_OF.value, rare_tokens=_RARE.value,
                    positions_batches=_POSITIONS_BATCHES.value if _POSITIONS.value else None)
  for path in (_EXPORT_WORD2VEC.value, _EXPORT_PROJECTOR.value, _OUTPUT.value):
    if path:
      print(f"wrote {path}")


def run():
  hugepages.maybe_reexec()  # first: restarts the process with huge pages for XLA's buffers (Linux)
  sys.argv = expand_home_flags(sys.argv)  # --workdir=~/runs/x: the home directory, not a directory named ~
  try:
    interrupts.deliver()  # (a Ctrl-C recorded since the first line is raised here)
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:
    end_interrupted("rerun the command to analyze the run")


if __name__ == "__main__":
  interrupts.run_command(run)  # (as launch.py's)
