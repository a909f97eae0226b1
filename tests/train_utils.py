"""Helpers for tests that train real (tiny) runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

from configs import tiny
from research.train import configuration

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  return configuration.apply_overrides(tiny.get_config(), overrides)


def cli(*args, env=None, timeout=300, **kwargs):
  """Runs `python -m experiments.train ...` (or another module given as the first arg) in a subprocess."""
  module = args[0] if args and args[0].startswith("experiments.") else "experiments.train"
  args = args[1:] if args and args[0].startswith("experiments.") else args
  full_env = {**os.environ, **(env or {})}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=full_env, capture_output=True,
                        text=True, timeout=timeout, **kwargs)


def read_metrics(workdir, split="train"):
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


def dot_generals(jaxpr) -> list:
  """Every dot_general equation of a jaxpr, including those in nested jaxprs (jit, scan, custom_vjp, ...)."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(eqn)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr wraps a Jaxpr
        if hasattr(sub, "eqns"):
          found += dot_generals(sub)
  return found
