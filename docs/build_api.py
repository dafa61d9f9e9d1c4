"""Builds the API reference (HTML) from the docstrings of every `entropix_rl` module with pdoc.

    pip install -e ".[test]"   # pdoc is a test dependency
    python docs/build_api.py --out=/tmp/entropix_rl_api   # ~10 s; open index.html

Every module is listed explicitly, so subpackages whose `__init__` sets `__all__` (interventions,
models, tasks) still get a page per module. The test suite builds it (tests/test_code_quality.py).
"""

from __future__ import annotations

import argparse
import pathlib
import pkgutil

import pdoc
import pdoc.extract
import pdoc.render

import entropix_rl


def module_names() -> list[str]:
  """Every module of the package: what pdoc finds from `entropix_rl`, plus the modules it
  skips because a package's `__all__` does not name them."""
  found = pdoc.extract.walk_specs(["entropix_rl"])
  every = (info.name for info in pkgutil.walk_packages(entropix_rl.__path__, "entropix_rl."))
  return ["entropix_rl", *sorted(set(every) - set(found))]


def build(out: pathlib.Path) -> list[str]:
  """Writes the HTML reference under `out`; returns the modules it documents."""
  pdoc.render.configure(
      docformat="google",
      math=True,
      search=True,
      show_source=True,
      footer_text="entropix_rl API reference",
  )
  modules = module_names()
  pdoc.pdoc(*modules, output_directory=out)
  return modules


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--out",
      type=pathlib.Path,
      default=pathlib.Path("docs/api"),
      help="output directory (default docs/api, ignored by git)",
  )
  args = parser.parse_args()
  modules = build(args.out)
  print(f"documented {len(modules)} modules in {args.out}/index.html")


if __name__ == "__main__":
  main()
