"""The code's own checks, run by the test command CI uses: formatting (pyink, Google style with
2-space indents), lint (ruff), the import rules (import-linter), the trainer's short functions,
and the API reference built from the docstrings (pdoc)."""

import ast
import glob
import os
import pkgutil
import subprocess
import sys
import warnings

import entropix_rl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "docs"))
import build_api  # noqa: E402


def _run(*command: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", *command],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )


def test_code_is_formatted_with_pyink():
  proc = _run("pyink", "--check", "--quiet", ".")
  assert proc.returncode == 0, (
      "these files need `pyink .` (settings in pyproject.toml):\n" + proc.stderr
  )


def test_ruff_finds_no_lint():
  proc = _run("ruff", "check", "--quiet", ".")
  assert proc.returncode == 0, f"`ruff check .` (rules in pyproject.toml):\n{proc.stdout}"


def test_import_contracts_hold():
  """The parts and what each may import (docs/design.md): `lint-imports`, with the contracts in
  pyproject.toml (layers, forbidden imports, no cycle between sibling modules or folders)."""
  proc = subprocess.run(
      [
          sys.executable,
          "-c",
          "from importlinter.cli import lint_imports_command; lint_imports_command()",
          "--no-cache",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "0 broken" in proc.stdout


def test_no_function_of_the_trainer_is_longer_than_80_lines():
  long = []
  for path in sorted(glob.glob(os.path.join(REPO, "entropix_rl", "train", "*.py"))):
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > 80:
          long.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name} ({lines} lines)")
  assert not long, long


def test_api_reference_documents_every_module_without_warnings(tmp_path):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    build_api.build(tmp_path)
  pdoc_warnings = [str(w.message) for w in caught if "pdoc" in w.filename]
  assert not pdoc_warnings, pdoc_warnings
  modules = ["entropix_rl"] + [
      m.name for m in pkgutil.walk_packages(entropix_rl.__path__, "entropix_rl.")
  ]
  missing = [m for m in modules if not (tmp_path / (m.replace(".", "/") + ".html")).exists()]
  assert not missing, missing
  page = (tmp_path / "entropix_rl" / "interventions" / "clip_cov.html").read_text()
  assert "Clip-Cov" in page and "Args" in page  # the docstrings, rendered in Google style
