"""The entropy–performance law R = −a·exp(H) + b (Cui et al. 2025, arXiv 2505.22617, §2).

R is validation performance (an accuracy in [0, 1]) and H the policy entropy in nats on the
rollout batch of the same step, one (H, R) point per evaluation step
(docs/interventions.md, "The entropy-performance law"). At H = 0 the law gives its ceiling R = b − a; dR/dH = −a·exp(H),
so `a` is the rate at which entropy is converted into performance.

The model is linear in (a, b) given the feature x = −exp(H), so ordinary least squares on the
design matrix [−exp(H), 1] is the exact least-squares fit, in closed form (docs/interventions.md
notes that `scipy.optimize.curve_fit` converges to the same optimum). Standard errors come
from the OLS covariance σ²(XᵀX)⁻¹ with σ² = RSS / (n − 2).

Also here: early-stage prediction (fit the first ~15% of a run, extrapolate the rest; the
paper's Fig. 5), a joint fit across runs (the "algorithm-irrelevant" claim, Fig. 6), a fit of
a and b against log model size (Fig. 7), and plots of the first two.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math

import numpy as np
from numpy.typing import ArrayLike

from entropix_rl import plots


def _vector(name: str, values: ArrayLike) -> np.ndarray:
  """`values` as a finite float64 vector; ValueError naming `name` otherwise."""
  out = np.asarray(values, dtype=np.float64)
  if out.ndim != 1:
    raise ValueError(f"{name} must be one-dimensional, got shape {out.shape}")
  bad = ~np.isfinite(out)
  if bad.any():
    raise ValueError(
        f"{name} has {int(bad.sum())} non-finite value(s), first at index "
        f"{int(np.argmax(bad))}; drop them before fitting"
    )
  return out


def _paired(
    entropy: ArrayLike, reward: ArrayLike, *, min_points: int = 3
) -> tuple[np.ndarray, np.ndarray]:
  h, r = _vector("entropy", entropy), _vector("reward", reward)
  if h.shape != r.shape:
    raise ValueError(f"entropy and reward must have the same length, got {h.size} and {r.size}")
  if h.size < min_points:
    raise ValueError(
        f"the law has 2 coefficients and its standard errors need at least "
        f"{min_points} (entropy, reward) points, got {h.size}"
    )
  return h, r


def _finite_or_none(value: float) -> float | None:
  return value if math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class LawFit:
  """A least-squares fit of R = −a·exp(H) + b.

  Attributes:
    a: conversion rate of entropy into performance (reward units per unit of exp(H)).
    b: offset (reward units); the ceiling at H = 0 is `b − a`.
    a_stderr, b_stderr: OLS standard errors, sqrt of the diagonal of σ²(XᵀX)⁻¹, σ² = RSS/(n−2).
    ab_cov: OLS covariance of the a and b estimates (off-diagonal of σ²(XᵀX)⁻¹).
    r2: coefficient of determination, 1 − RSS/TSS (NaN when the rewards are all equal).
    rmse: sqrt(RSS / n), in reward units.
    n: number of (H, R) points fitted.
  """

  a: float
  b: float
  a_stderr: float
  b_stderr: float
  ab_cov: float
  r2: float
  rmse: float
  n: int

  @property
  def ceiling(self) -> float:
    """Performance at H = 0: R = b − a."""
    return self.b - self.a

  @property
  def ceiling_stderr(self) -> float:
    """Standard error of b − a: sqrt(Var a + Var b − 2 Cov(a, b))."""
    return math.sqrt(max(self.a_stderr**2 + self.b_stderr**2 - 2.0 * self.ab_cov, 0.0))

  def predict(self, entropy: ArrayLike) -> np.ndarray:
    """R̂ = −a·exp(H) + b for entropies `H` (nats, any shape); same shape, float64."""
    return -self.a * np.exp(np.asarray(entropy, dtype=np.float64)) + self.b

  def to_dict(self) -> dict[str, float | int | None]:
    """JSON-ready fields plus `ceiling` and `ceiling_stderr` (non-finite values become None)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    out.update(ceiling=self.ceiling, ceiling_stderr=self.ceiling_stderr)
    return {k: (v if isinstance(v, int) else _finite_or_none(float(v))) for k, v in out.items()}


def fit(entropy: ArrayLike, reward: ArrayLike) -> LawFit:
  """Fits R = −a·exp(H) + b by closed-form ordinary least squares.

  With x = −exp(H): a = Sxy / Sxx and b = R̄ − a·x̄ (Sxx, Sxy centred sums of squares and
  products), which is the least-squares solution on the design matrix [x, 1]. Its covariance
  σ²(XᵀX)⁻¹ is Var a = σ²/Sxx, Var b = σ²(1/n + x̄²/Sxx), Cov(a, b) = −x̄σ²/Sxx, σ² = RSS/(n−2).

  Args:
    entropy: `[n]` policy entropies H in nats, n >= 3.
    reward: `[n]` performance R at the same steps (e.g. validation accuracy in [0, 1]).

  Returns:
    The fit, with standard errors and goodness of fit.

  Raises:
    ValueError: fewer than 3 points, mismatched lengths, non-finite values, or all entropies
      equal (a is then not identifiable).
  """
  h, r = _paired(entropy, reward)
  n = h.size
  x = -np.exp(h)
  x_mean, r_mean = x.mean(), r.mean()
  sxx = float(np.sum((x - x_mean) ** 2))
  if sxx <= 1e-12 * max(float(np.sum(x**2)), 1e-300):
    raise ValueError(
        f"entropy has no spread (all {n} values ≈ {h[0]:.6g} nats): the slope a "
        "of R = −a·exp(H) + b cannot be identified"
    )
  a = float(np.sum((x - x_mean) * (r - r_mean)) / sxx)
  b = float(r_mean - a * x_mean)
  residual = r - (a * x + b)
  rss = float(np.sum(residual**2))
  tss = float(np.sum((r - r_mean) ** 2))
  sigma2 = rss / (n - 2)
  return LawFit(
      a=a,
      b=b,
      a_stderr=math.sqrt(sigma2 / sxx),
      b_stderr=math.sqrt(sigma2 * (1.0 / n + x_mean**2 / sxx)),
      ab_cov=float(-x_mean * sigma2 / sxx),
      r2=1.0 - rss / tss if tss > 0 else math.nan,
      rmse=math.sqrt(rss / n),
      n=n,
  )


def _rmse(error: np.ndarray) -> float:
  return float(np.sqrt(np.mean(error**2)))


def early_stage_prediction(
    steps: ArrayLike,
    entropy: ArrayLike,
    reward: ArrayLike,
    *,
    fit_fraction: float = 0.15,
    fit_steps: int | None = None,
) -> dict:
  """Fits the law on the start of a run and predicts the rest (Cui et al. Fig. 5).

  The paper fits the first 36 steps (~15% of the run) and reports the RMSE of the
  extrapolation over the remaining steps and the error at the final step.

  Args:
    steps: `[n]` training step of each point (any order; sorted here).
    entropy: `[n]` entropy H (nats) at those steps.
    reward: `[n]` performance R at those steps.
    fit_fraction: in (0, 1); fit on steps <= first + fit_fraction·(last − first).
    fit_steps: if given, fit on steps <= fit_steps instead (the paper's 36).

  Returns:
    A JSON-ready dict: `cutoff_step`, `n_fit`, `n_heldout`, `heldout_rmse` and
    `heldout_max_abs_error` (reward units, over the points after the cutoff), `final_step`,
    `final_reward`, `final_predicted`, `final_error` (predicted − actual at the last step) and
    `fit` (`LawFit.to_dict()` of the early fit).

  Raises:
    ValueError: bad inputs, a cutoff leaving fewer than 3 points to fit, or none held out.
  """
  s = _vector("steps", steps)
  h, r = _paired(entropy, reward)
  if s.shape != h.shape:
    raise ValueError(f"steps and entropy must have the same length, got {s.size} and {h.size}")
  order = np.argsort(s, kind="stable")
  s, h, r = s[order], h[order], r[order]
  if fit_steps is not None:
    cutoff = float(fit_steps)
  elif 0.0 < fit_fraction < 1.0:
    cutoff = s[0] + fit_fraction * (s[-1] - s[0])
  else:
    raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
  early = s <= cutoff
  n_fit, n_heldout = int(early.sum()), int((~early).sum())
  if n_fit < 3:
    raise ValueError(
        f"the early-stage cutoff (step <= {cutoff:g}) leaves {n_fit} point(s) to "
        f"fit, need at least 3: raise fit_fraction/fit_steps or evaluate more often "
        f"(points at steps {s.astype(int).tolist()})"
    )
  if n_heldout == 0:
    raise ValueError(
        f"the early-stage cutoff (step <= {cutoff:g}) holds out no points "
        f"(last step {s[-1]:g}): lower fit_fraction/fit_steps"
    )
  law = fit(h[early], r[early])
  error = law.predict(h[~early]) - r[~early]
  return {
      "cutoff_step": cutoff,
      "n_fit": n_fit,
      "n_heldout": n_heldout,
      "heldout_rmse": _rmse(error),
      "heldout_max_abs_error": float(np.max(np.abs(error))),
      "final_step": float(s[-1]),
      "final_reward": float(r[-1]),
      "final_predicted": float(law.predict(h[-1])),
      "final_error": float(error[-1]),
      "fit": law.to_dict(),
  }


@dataclasses.dataclass(frozen=True)
class JointFit:
  """One law fitted to the pooled points of several runs (Cui et al. Fig. 6).

  Attributes:
    fit: the pooled fit.
    per_run_n: points contributed by each run.
    per_run_rmse: RMSE of each run's points around the pooled curve (reward units).
    per_run_bias: mean residual (actual − predicted) of each run's points; a method whose
      points sit systematically above or below the shared curve shows here.
  """

  fit: LawFit
  per_run_n: dict[str, int]
  per_run_rmse: dict[str, float]
  per_run_bias: dict[str, float]

  def to_dict(self) -> dict:
    return {
        "fit": self.fit.to_dict(),
        "per_run": {
            name: {
                "n": self.per_run_n[name],
                "rmse": self.per_run_rmse[name],
                "bias": self.per_run_bias[name],
            }
            for name in self.per_run_n
        },
    }


def joint_fit(runs: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> JointFit:
  """Fits one law to all runs' (H, R) points together; reports each run's residuals.

  Args:
    runs: name -> (entropy `[n_i]`, reward `[n_i]`), n_i >= 1 each, Σ n_i >= 3.

  Returns:
    The pooled fit and per-run residual RMSE and bias.
  """
  if not runs:
    raise ValueError("joint_fit needs at least one run, got an empty mapping")
  pairs = {name: _paired(h, r, min_points=1) for name, (h, r) in runs.items()}
  law = fit(
      np.concatenate([h for h, _ in pairs.values()]), np.concatenate([r for _, r in pairs.values()])
  )
  residuals = {name: r - law.predict(h) for name, (h, r) in pairs.items()}
  return JointFit(
      fit=law,
      per_run_n={name: int(e.size) for name, e in residuals.items()},
      per_run_rmse={name: _rmse(e) for name, e in residuals.items()},
      per_run_bias={name: float(e.mean()) for name, e in residuals.items()},
  )


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
  """Least-squares y = slope·x + intercept; returns (slope, intercept, r2)."""
  x_mean, y_mean = x.mean(), y.mean()
  sxx = float(np.sum((x - x_mean) ** 2))
  slope = float(np.sum((x - x_mean) * (y - y_mean)) / sxx)
  intercept = float(y_mean - slope * x_mean)
  tss = float(np.sum((y - y_mean) ** 2))
  rss = float(np.sum((y - slope * x - intercept) ** 2))
  return slope, intercept, (1.0 - rss / tss if tss > 0 else math.nan)


@dataclasses.dataclass(frozen=True)
class SizeFit:
  """a and b each linear in log(N), N = non-embedding parameter count (Cui et al. Fig. 7).

  a(N) = a_slope·ln N + a_intercept and b(N) = b_slope·ln N + b_intercept (natural log).

  Attributes:
    a_slope, a_intercept, b_slope, b_intercept: the two lines.
    a_r2, b_r2: R² of each line (1 for two sizes; NaN if the values are all equal).
    n: number of (N, a, b) points.
  """

  a_slope: float
  a_intercept: float
  b_slope: float
  b_intercept: float
  a_r2: float
  b_r2: float
  n: int

  def predict(self, n_params: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) for non-embedding parameter counts `n_params` (any shape, > 0)."""
    n = np.asarray(n_params, dtype=np.float64)
    if np.any(n <= 0):
      raise ValueError(f"n_params must be positive, got {n}")
    log_n = np.log(n)
    return self.a_slope * log_n + self.a_intercept, self.b_slope * log_n + self.b_intercept

  def to_dict(self) -> dict[str, float | int | None]:
    return {
        f.name: (getattr(self, f.name) if f.name == "n" else _finite_or_none(getattr(self, f.name)))
        for f in dataclasses.fields(self)
    }


def size_fit(param_counts: ArrayLike, a_values: ArrayLike, b_values: ArrayLike) -> SizeFit:
  """Fits a and b as lines in ln(#non-embedding parameters).

  Args:
    param_counts: `[m]` non-embedding parameter counts, > 0, at least 2 distinct.
    a_values: `[m]` fitted a per model size.
    b_values: `[m]` fitted b per model size.
  """
  n = _vector("param_counts", param_counts)
  a, b = _vector("a_values", a_values), _vector("b_values", b_values)
  if not n.shape == a.shape == b.shape:
    raise ValueError(
        f"param_counts, a_values and b_values must have the same length, got "
        f"{n.size}, {a.size} and {b.size}"
    )
  if np.any(n <= 0):
    raise ValueError(f"param_counts must be positive, got {n.tolist()}")
  if np.unique(n).size < 2:
    raise ValueError(f"size_fit needs at least 2 distinct model sizes, got {np.unique(n).tolist()}")
  log_n = np.log(n)
  a_slope, a_intercept, a_r2 = _line(log_n, a)
  b_slope, b_intercept, b_r2 = _line(log_n, b)
  return SizeFit(
      a_slope=a_slope,
      a_intercept=a_intercept,
      b_slope=b_slope,
      b_intercept=b_intercept,
      a_r2=a_r2,
      b_r2=b_r2,
      n=int(n.size),
  )


# Two-sided 95% quantiles of Student's t for 1-10 degrees of freedom (scipy.stats.t.ppf(0.975)).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _t975(dof: int) -> float:
  return _T975[dof - 1] if dof <= len(_T975) else 1.96


@dataclasses.dataclass(frozen=True)
class SizeHoldout:
  """One coefficient (a or b) of a held-out model size, predicted from the other sizes' line.

  Attributes:
    n_params: the held-out size's non-embedding parameter count.
    predicted: the line's value at ln(n_params).
    interval: half-width of the line's 95% prediction interval there,
      t·s·sqrt(1 + 1/m + (x₀ − x̄)²/Sxx) with s² = RSS/(m − 2) over the m fitted sizes
      (NaN for m = 2: a line through two points has no residual to estimate s from).
    measured: the held-out size's own fitted coefficient.
    measured_stderr: its standard error.
    within: whether `measured` lies in predicted ± interval.
  """

  n_params: float
  predicted: float
  interval: float
  measured: float
  measured_stderr: float

  @property
  def within(self) -> bool:
    return bool(abs(self.measured - self.predicted) <= self.interval)

  def to_dict(self) -> dict[str, float | bool | None]:
    out = {f.name: _finite_or_none(getattr(self, f.name)) for f in dataclasses.fields(self)}
    return {**out, "within": self.within}


def size_holdout(
    param_counts: ArrayLike,
    values: ArrayLike,
    held_out_params: float,
    held_out_value: float,
    held_out_stderr: float,
) -> SizeHoldout:
  """Predicts a held-out size's a (or b) from a line in ln N through the other sizes.

  Args:
    param_counts: `[m]` non-embedding parameter counts of the fitted sizes, m >= 2 distinct.
    values: `[m]` their fitted coefficient (a or b).
    held_out_params: the held-out size's parameter count.
    held_out_value, held_out_stderr: its own fitted coefficient and standard error.

  Returns:
    The prediction, its 95% prediction interval and the measured value.
  """
  n, y = _vector("param_counts", param_counts), _vector("values", values)
  if n.shape != y.shape or np.unique(n).size < 2 or np.any(n <= 0):
    raise ValueError(
        f"size_holdout needs matching positive param_counts and values over at least 2 "
        f"distinct sizes, got {n.tolist()} and {y.tolist()}"
    )
  if not held_out_params > 0:
    raise ValueError(f"held_out_params must be positive, got {held_out_params}")
  x, x0 = np.log(n), math.log(held_out_params)
  slope, intercept, _ = _line(x, y)
  m = int(n.size)
  if m > 2:
    s2 = float(np.sum((y - slope * x - intercept) ** 2)) / (m - 2)
    sxx = float(np.sum((x - x.mean()) ** 2))
    interval = _t975(m - 2) * math.sqrt(s2 * (1.0 + 1.0 / m + (x0 - x.mean()) ** 2 / sxx))
  else:
    interval = math.nan
  return SizeHoldout(
      n_params=float(held_out_params),
      predicted=slope * x0 + intercept,
      interval=interval,
      measured=float(held_out_value),
      measured_stderr=float(held_out_stderr),
  )


def _save(fig, out_png: str) -> str:
  fig.tight_layout()
  plots.save_figure(fig, out_png)
  return out_png


def _law_label(law: LawFit) -> str:
  return f"R = −{law.a:.3g}·exp(H) + {law.b:.3g}  (R² {law.r2:.3f}, RMSE {law.rmse:.3g})"


def plot_fit(
    points: Mapping[str, tuple[ArrayLike, ArrayLike]], law: LawFit, out_png: str, *, title: str = ""
) -> str:
  """Scatter of (H, R) per run, the fitted curve from H = 0, and the ceiling b − a.

  Args:
    points: label -> (entropy `[n_i]` nats, reward `[n_i]`); one style per label
      (`plots.styles`: distinct colours, then markers, however many runs).
    law: the fit to draw.
    out_png: output path (directories are created).
    title: figure title.

  Returns:
    `out_png`.
  """
  fig, (ax,) = plots.new_figure(6.4, 4.6)
  h_max = 0.0
  for (label, (h_values, r_values)), style in zip(points.items(), plots.styles(len(points))):
    h, r = np.asarray(h_values, np.float64), np.asarray(r_values, np.float64)
    ax.scatter(h, r, s=16, alpha=0.8, label=label, **style)
    h_max = max(h_max, float(np.max(h)) if h.size else 0.0)
  grid = np.linspace(0.0, 1.05 * h_max if h_max > 0 else 1.0, 200)
  ax.plot(grid, law.predict(grid), color="black", lw=1.5, label=_law_label(law))
  ax.axhline(
      law.ceiling,
      color="gray",
      ls="--",
      lw=1,
      label=f"ceiling b − a = {law.ceiling:.3g} ± {law.ceiling_stderr:.2g}",
  )
  ax.set_xlabel("policy entropy H (nats)")
  ax.set_ylabel("performance R")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return _save(fig, out_png)


def plot_early_stage(
    steps: ArrayLike,
    entropy: ArrayLike,
    reward: ArrayLike,
    prediction: dict,
    out_png: str,
    *,
    title: str = "",
) -> str:
  """The early-stage experiment: points fitted vs held out, and the extrapolated curve.

  Left panel R against H with the early fit drawn over the whole entropy range; right panel R
  against step with the law's prediction from each step's entropy.

  Args:
    steps, entropy, reward: `[n]` the run's points, as given to `early_stage_prediction`.
    prediction: the dict `early_stage_prediction` returned for them.
    out_png: output path.
    title: figure title.

  Returns:
    `out_png`.
  """
  s = np.asarray(steps, np.float64)
  h, r = np.asarray(entropy, np.float64), np.asarray(reward, np.float64)
  order = np.argsort(s, kind="stable")
  s, h, r = s[order], h[order], r[order]
  a, b = prediction["fit"]["a"], prediction["fit"]["b"]

  def predict(x: np.ndarray) -> np.ndarray:
    return -a * np.exp(x) + b

  early = s <= prediction["cutoff_step"]
  fig, (ax_h, ax_s) = plots.new_figure(11.0, 4.4, ncols=2)
  ax_h.scatter(h[early], r[early], s=18, color="tab:blue", label=f"fitted ({prediction['n_fit']})")
  ax_h.scatter(
      h[~early], r[~early], s=18, color="tab:orange", label=f"held out ({prediction['n_heldout']})"
  )
  grid = np.linspace(0.0, 1.05 * float(h.max()), 200)
  ax_h.plot(
      grid,
      predict(grid),
      color="black",
      lw=1.2,
      label=f"early fit, held-out RMSE {prediction['heldout_rmse']:.3g}",
  )
  ax_h.set_xlabel("policy entropy H (nats)")
  ax_h.set_ylabel("performance R")
  ax_s.plot(s, r, marker=".", color="tab:blue", label="actual")
  ax_s.plot(s, predict(h), color="black", ls="--", label="predicted from H")
  ax_s.axvline(
      prediction["cutoff_step"],
      color="gray",
      lw=1,
      label=f"fit cutoff (step {prediction['cutoff_step']:g})",
  )
  ax_s.set_xlabel("RL step")
  ax_s.set_ylabel("performance R")
  ax_s.set_title(f"final-step error {prediction['final_error']:+.3g}", fontsize=9)
  for ax in (ax_h, ax_s):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(fig, out_png)
