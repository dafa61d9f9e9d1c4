r"""The entropy-dynamics theorem inside training (issue 15, point 3): single updates, measured.

  python experiments/theorem_probe.py --out=/tmp/theorem_probe

Warm-starts the quickstart policy with the trainer's SFT (`train.sft.warm_start`; reused from
`--sft_dir/sft` when it exists), samples `--num_rollouts` real rollouts (quickstart prompts x
group size, scored by the task verifier, GRPO advantages), then for every optimizer and
learning rate of the grids takes ONE plain policy-gradient update from the warm start on each
rollout, and for every Adam learning rate of `--multi_lrs` k = `--ks` sequential mini-batch
updates per rollout, as the trainer does (fresh Adam moments and no gradient clipping, unlike
the trainer). Per setting it compares (`entropix_rl.theorem_probe`):

  per token  (a) measured ΔH_t against (b) Lemma 1's −Cov_π(log π, Δz) from the actual logit
             change (pooled over the rollouts, and the median of the per-rollout figures), and
             against the single-sample theorem terms −η·(ℓ+H)·π·A, −η·(ℓ+H)·A
  per step   the rollout's mean measured ΔH against the mean of (b), against the paper's
             batch token covariance −η·Cov_tok(ℓ, π·A) (Theorem 1) and −η·Cov_tok(ℓ, A)
             (Theorem 2), and against the means of the single-sample terms, across the
             rollouts (η = the learning rate; the slope is the fitted logit-space scale)

and prints one JSON line per (optimizer, lr, k), then writes `theorem_probe.json` and
`theorem_probe.png` (predicted vs measured per token, one panel per setting) to `--out`.

Time on 2 CPU cores shared with other jobs: 240-270 s of SFT (350 steps; skipped when
`--sft_dir/sft` exists) plus 160-170 s for the 12 rollouts and 14 settings x 12 probes
(compilation included), 434 s in all. `--num_rollouts` and the grids scale the second part.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from entropix_rl import advantages as advantages_lib
from entropix_rl import data as data_lib
from entropix_rl import sharding, theorem_probe
from entropix_rl.plots import save_figure
from entropix_rl.train import cli, config_dict, sft
from entropix_rl.train import rollout as rollout_lib
from entropix_rl.train.config import Experiment, resolve

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_CONFIG = cli.define_config(
    "configs/quickstart.py", "Experiment config: model, task, sampler, SFT."
)
_OUT = flags.DEFINE_string("out", "/tmp/theorem_probe", "Output directory.")
_SFT_DIR = flags.DEFINE_string(
    "sft_dir", "", "Directory whose sft/ holds (or receives) the " "SFT warm start; empty = --out."
)
_SGD_LRS = flags.DEFINE_list(
    "sgd_lrs", ["1e-5", "1e-4", "1e-3", "1e-2", "1e-1"], "SGD learning rates (one update)."
)
_ADAM_LRS = flags.DEFINE_list(
    "adam_lrs", ["1e-7", "1e-6", "1e-5", "1e-4"], "Adam learning rates (one update, fresh moments)."
)
_MULTI_LRS = flags.DEFINE_list(
    "multi_lrs",
    ["1e-5", "3e-4"],
    "Adam learning rates of the k-update runs (3e-4: the quickstart " "trainer's).",
)
_KS = flags.DEFINE_list("ks", ["1", "2", "4"], "Sequential mini-batch updates per rollout.")
_NUM_ROLLOUTS = flags.DEFINE_integer("num_rollouts", 12, "Rollouts (steps) per setting.")
_SCATTER_POINTS = flags.DEFINE_integer("scatter_points", 3000, "Tokens drawn per panel of the PNG.")


def collect_rollouts(exp: Experiment, params, num_rollouts: int) -> list[dict[str, np.ndarray]]:
  """`num_rollouts` scored rollouts of `rl.prompts_per_step` prompts x `rl.group_size` samples
  from the train split, as `Responses.rl_batch` arrays plus per-token GRPO `advantages [N, C]`."""
  rl = exp.config.rl
  sampler = rollout_lib.Sampler(exp.model, exp.sampler, exp.task, exp.tokenizer)
  pipeline = data_lib.make_prompt_pipeline(
      exp.config.data,
      exp.tokenizer,
      batch_size=rl.prompts_per_step,
      seed=exp.config.seed,
      split="train",
      task=exp.task,
  )
  key = jax.random.PRNGKey(exp.config.seed + 17)
  batches = []
  for i in range(num_rollouts):
    prompts = next(pipeline)
    rows = sampler(
        params,
        prompts["prompt_tokens"],
        prompts["prompt_lengths"],
        prompts["examples"],
        np.arange(rl.prompts_per_step),
        rl.group_size,
        jax.random.fold_in(key, i),
    )
    batch = rows.rl_batch(rl.group_size)
    seq_adv = advantages_lib.compute_advantages(
        rl.advantage, batch["rewards"], batch["group_ids"], rl.prompts_per_step
    )
    batch["advantages"] = np.asarray(seq_adv)[:, None] * batch["completion_mask"]
    batches.append(batch)
  return batches


def probe_setting(probe, params, batches: list[dict], lr: float, seed: int) -> dict:
  """Runs one probe per rollout; returns the setting's figures and its per-token arrays."""
  tokens = {k: [] for k in ("measured", "predicted", "pg", "npg")}
  per_rollout = []
  steps = {
      k: []
      for k in ("measured", "predicted", "pg_batch", "npg_batch", "pg_token_mean", "npg_token_mean")
  }
  for i, batch in enumerate(batches):
    out = jax.device_get(probe(params, batch, jnp.float32(lr), jax.random.PRNGKey(seed + i)))
    valid = out["mask"] > 0
    terms = jax.device_get(
        theorem_probe.sampled_theorem_terms(
            out["logp"], out["entropy"], out["advantages"], out["mask"]
        )
    )
    covs = jax.device_get(
        theorem_probe.batch_covariance_forms(out["logp"], out["advantages"], out["mask"])
    )
    tokens["measured"].append(out["measured"][valid])
    tokens["predicted"].append(out["predicted"][valid])
    per_rollout.append(theorem_probe.agreement(tokens["predicted"][-1], tokens["measured"][-1]))
    for form in ("pg", "npg"):
      tokens[form].append(-lr * terms[form][valid])
      steps[f"{form}_batch"].append(-lr * float(covs[form]))
      steps[f"{form}_token_mean"].append(-lr * float(terms[form][valid].mean()))
    steps["measured"].append(float(out["measured"][valid].mean()))
    steps["predicted"].append(float(out["predicted"][valid].mean()))
  tokens = {k: np.concatenate(v) for k, v in tokens.items()}
  measured = tokens["measured"]
  figures = {
      "measured_token_mean_abs": float(np.abs(measured).mean()),
      "measured_step_means": steps["measured"],
      "per_token": {
          "lemma": theorem_probe.agreement(tokens["predicted"], measured),
          "lemma_rollout_median": {
              k: float(np.median([f[k] for f in per_rollout])) for k in ("pearson_r", "slope")
          },
          "pg_single_sample": theorem_probe.agreement(tokens["pg"], measured),
          "npg_single_sample": theorem_probe.agreement(tokens["npg"], measured),
      },
      "per_step": {
          name: theorem_probe.agreement(steps[name], steps["measured"])
          for name in ("predicted", "pg_batch", "npg_batch", "pg_token_mean", "npg_token_mean")
      },
  }
  return figures, tokens


def plot(panels: list[tuple[str, dict]], out_png: str, points: int) -> None:
  """Predicted (b) against measured (a) per token, one panel per setting, with y = x; both
  axes symlog, linear within the median |measured|, so the bulk and the tails both show."""
  cols = min(4, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
  rng = np.random.default_rng(0)
  for ax, (title, tokens) in zip(axes.flat, panels):
    x, y = tokens["predicted"], tokens["measured"]
    pick = rng.choice(x.size, min(points, x.size), replace=False)
    ax.scatter(x[pick], y[pick], s=3, alpha=0.4)
    lim = float(np.abs(np.concatenate([x, y])).max())
    ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.7)
    linear = max(float(np.median(np.abs(y))), 1e-12)
    ax.set_xscale("symlog", linthresh=linear)
    ax.set_yscale("symlog", linthresh=linear)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("predicted −Cov(log π, Δz)", fontsize=8)
    ax.set_ylabel("measured ΔH", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels) :]:
    ax.axis("off")
  fig.tight_layout()
  save_figure(fig, out_png)


def settings() -> list[tuple[str, float, int]]:
  """(optimizer, lr, k) in order: the single-update grids, then Adam at `--multi_lrs` per k."""
  single = [("sgd", float(lr), 1) for lr in _SGD_LRS.value]
  single += [("adam", float(lr), 1) for lr in _ADAM_LRS.value]
  multi = [("adam", float(lr), int(k)) for lr in _MULTI_LRS.value for k in _KS.value]
  return single + [s for s in multi if s not in single]


def run(config, out: str, sft_dir: str) -> dict:
  """The whole probe (module docstring); returns what it writes to `theorem_probe.json`."""
  t0 = time.perf_counter()
  os.makedirs(out, exist_ok=True)
  exp = resolve(config_dict.typed(config))
  mesh = sharding.make_mesh(exp.config.mesh)
  model_cfg, params = sft.warm_start(exp, sft_dir or out, mesh)
  t_sft = time.perf_counter() - t0
  batches = collect_rollouts(exp, params, _NUM_ROLLOUTS.value)
  rollouts = {
      "count": len(batches),
      "rows": int(batches[0]["completion"].shape[0]),
      "tokens_mean": float(np.mean([b["completion_mask"].sum() for b in batches])),
      "reward_mean": float(np.mean([b["rewards"].mean() for b in batches])),
      "nonzero_advantage_frac": float(
          np.mean([(b["advantages"] != 0).any(axis=1).mean() for b in batches])
      ),
  }
  logging.info("rollouts: %s", rollouts)
  results, panels, probes = [], [], {}
  for optimizer, lr, k in settings():
    if (optimizer, k) not in probes:
      probes[optimizer, k] = theorem_probe.make_probe_update(
          model_cfg,
          optimizer,
          k,
          temperature=exp.sampler.temperature,
          token_chunk=exp.config.rl.token_chunk,
      )
    figures, tokens = probe_setting(probes[optimizer, k], params, batches, lr, exp.config.seed)
    row = {"optimizer": optimizer, "lr": lr, "k": k, **figures}
    print(json.dumps(row), flush=True)
    results.append(row)
    panels.append(
        (
            f"{optimizer} lr={lr:g} k={k}: r={figures['per_token']['lemma']['pearson_r']:.3f}"
            f" slope={figures['per_token']['lemma']['slope']:.2f}",
            tokens,
        )
    )
  plot(panels, os.path.join(out, "theorem_probe.png"), _SCATTER_POINTS.value)
  report = {
      "rollouts": rollouts,
      "settings": results,
      "sft_s": t_sft,
      "total_s": time.perf_counter() - t0,
  }
  with open(os.path.join(out, "theorem_probe.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report


def main(argv):
  del argv
  report = run(_CONFIG.value, _OUT.value, _SFT_DIR.value)
  print(
      f"wrote {_OUT.value}/theorem_probe.json and theorem_probe.png; total "
      f"{report['total_s']:.0f} s (SFT {report['sft_s']:.0f} s)",
      flush=True,
  )


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
