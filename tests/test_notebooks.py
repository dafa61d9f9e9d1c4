"""The notebooks execute top to bottom (nbclient) from the logs committed in notebooks/data/."""

import os

from nbclient import NotebookClient
import nbformat
import pytest

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


@pytest.mark.parametrize(
    "name", ["entropy_performance_law.ipynb", "covariance_dynamics.ipynb", "size_law.ipynb"]
)
def test_notebook_runs(name):
  book = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  NotebookClient(book, timeout=120, kernel_name="python3",
                 resources={"metadata": {"path": NOTEBOOKS}}).execute()
  outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert images, "the notebook should draw its plots"
