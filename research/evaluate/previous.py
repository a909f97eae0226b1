"""The evaluation files an evaluation is about to replace, kept under RUN/eval/previous/<UTC time>/ (where research-sweep
keeps what its evaluations rewrite, `sweeps.keep_previous_evaluation`; research-report does not read it): every
research-evaluate rewrote its files, so one that scored nothing (a length beyond the table), another split or
fewer passkey cells lost the earlier figures. No JAX here: extrapolation.py, by_position.py and passkey.py call it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence


def folder(eval_dir: Path, names: Sequence[str]) -> Path:
  """A folder eval_dir/previous/<UTC time>/ for kept files of these `names`, created: one that holds none of them
  yet (two keeps within the same second: <UTC time>-2/, which sorts after it), so no kept file replaces another.
  research-evaluate's copies, research-sweep's (`sweeps.keep_previous_evaluation`) and the loss-by-position file set
  aside (`extrapolation.set_aside_unmatched_by_position`) all go through it."""
  stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
  target, n = Path(eval_dir) / "previous" / stamp, 1
  while any((target / name).exists() for name in names):
    n += 1
    target = Path(eval_dir) / "previous" / f"{stamp}-{n}"
  target.mkdir(parents=True, exist_ok=True)
  return target


def keep_previous(path: Path, report: dict[str, Any] | None = None) -> Path | None:
  """Copies `path`, a file an evaluation is about to replace (with `report`), to eval/previous/<UTC time>/. Not
  copied when it holds `report` already (nothing is lost), nor again when the newest copy there holds the same
  bytes (the sweep's own copy). Returns the copy, or None."""
  if not path.is_file():
    return None
  try:
    if report is not None and json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(report)):
      return None
  except ValueError:  # not JSON (damaged): kept, as any other
    pass
  copies = sorted((path.parent / "previous").glob(f"*/{path.name}"))  # the folders' names sort by time
  if copies and copies[-1].read_bytes() == path.read_bytes():
    return copies[-1]
  target = folder(path.parent, [path.name])
  shutil.copy2(path, target / path.name)
  return target / path.name
