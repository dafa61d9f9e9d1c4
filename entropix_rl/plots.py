"""Plots a person looks at after a run: entropy and accuracy against step, per method.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot's
global state, so importing this module does not switch the backend of a notebook.
"""

from __future__ import annotations

from etils import epath
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from entropix_rl import paths, run_logs

PANELS = (
    ("entropy/paper", "policy entropy (nats, paper's Eq. 5)"),
    ("eval/sampled_accuracy", "sampled accuracy (held-out prompts)"),
    ("accuracy/distinct_correct_per_group", "distinct correct answers per group"),
)


def new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list]:
  """A `width` x `height` inch figure with `ncols` side-by-side axes on the Agg canvas (no
  pyplot state)."""
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def styles(n: int) -> list[dict[str, str]]:
  """`n` distinct (colour, marker) styles, for one series per run: tab10's colours for up to
  10, tab20's for up to 20, and past that each colour again with another marker."""
  palette = colormaps["tab10" if n <= 10 else "tab20"].colors
  return [
      {"color": palette[i % len(palette)], "marker": MARKERS[(i // len(palette)) % len(MARKERS)]}
      for i in range(n)
  ]


def plot_runs(runs: dict[str, str], out_png: str, panels=PANELS) -> str:
  """One panel per metric, one line per run. `runs` maps a label to a workdir."""
  fig, axes = new_figure(5.2 * len(panels), 4.0, ncols=len(panels))
  for (label, workdir), style in zip(runs.items(), styles(len(runs))):
    run = run_logs.load_run(workdir)
    for ax, (key, _) in zip(axes, panels):
      if key in run.keys():
        steps, values = run.series(key)
        marker = style["marker"] if len(steps) < 30 else None
        ax.plot(steps, values, label=label, color=style["color"], marker=marker, markersize=3)
  for ax, (_, title) in zip(axes, panels):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("RL step")
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  save_figure(fig, out_png)
  return out_png


def save_figure(fig: Figure, out_png: epath.PathLike, dpi: int = 110) -> None:
  """Writes `fig` as a PNG to a local or `gs://` path (parents created)."""
  out = paths.as_path(out_png)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("wb") as f:
    fig.savefig(f, format="png", dpi=dpi)
