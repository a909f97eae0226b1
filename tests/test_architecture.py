"""The dependency rules of docs/architecture.md, checked on the source (imports, and modules named as strings)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "research").rglob("*.py"))


def _imports(path: Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module)
  return names


def _module(path: Path) -> str:
  return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("path", LIBRARY, ids=_module)
def test_the_library_imports_neither_configs_nor_entry_points(path):
  bad = {m for m in _imports(path) if m.split(".")[0] in ("configs", "experiments")}
  assert not bad, f"{_module(path)} imports {sorted(bad)}"
  # Nor starts them by module name (sweeps run the console scripts).
  strings = [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
             and isinstance(n.value, str)]
  assert not [s for s in strings if s.startswith(("experiments.", "configs."))], _module(path)


# Lower layers never import higher ones.
FORBIDDEN = {
    "research.embeddings": ("research.model", "research.train", "research.data", "research.evaluate",
                            "research.report", "research.sweeps"),
    "research.model": ("research.train", "research.data", "research.evaluate", "research.report", "research.sweeps"),
    "research.data": ("research.model", "research.embeddings", "research.train", "research.evaluate",
                      "research.report"),
    "research.report": ("research.model", "research.train", "research.embeddings", "research.evaluate", "jax",
                        "flax", "optax"),
}


@pytest.mark.parametrize("path", LIBRARY, ids=_module)
def test_imports_point_one_way(path):
  module = _module(path)
  for package, forbidden in FORBIDDEN.items():
    if module == package or module.startswith(package + "."):
      bad = {m for m in _imports(path) if any(m == f or m.startswith(f + ".") for f in forbidden)}
      assert not bad, f"{module} imports {sorted(bad)}"
