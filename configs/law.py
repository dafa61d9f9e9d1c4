r"""The entropy-performance law experiment: R = −a·exp(H) + b fitted sharply per run.

The quickstart's 350-step warm start leaves sampled accuracy at 0.86–0.89, so its runs give the
law almost no range (docs/results.md). Here the warm start is short (120 SFT steps: held-out
sampled accuracy 0.04–0.06, entropy about 1.1 nats), so GRPO has the whole rise to make, and
the evaluations are frequent and large: every 4 steps on 256 held-out prompts × 8 samples (2048
samples, 31 points over 120 steps). The RL learning rate warms up over 5 steps and then decays
on a cosine to a tenth, so the policy settles instead of swinging after its entropy collapses.

One run (about 2 minutes on 2 idle CPU cores, its SFT warm start included; the warm start is
written beside the run's workdir, `sft.shared_dir=../sft_seed0`, and reused by the runs next to
it):

  python experiments/train.py --config=configs/law.py --workdir=/tmp/law/grpo_seed0

The four methods × 3 seeds (each seed its own SFT warm start; about 20 minutes with --jobs=2),
then the fits (per run, jointly, and the early-stage prediction from the first 25% of steps):

  python launch/sweep.py --config=configs/law.py --workdir=/tmp/law --mode=local --jobs=2
  python experiments/fit_law.py --workdirs=/tmp/law --reward_key=eval/sampled_accuracy \
      --fit_fraction=0.25 --out=/tmp/law/fit

`get_size_lr_sweep` and `get_size_sweep` below are the size law, `get_kl_cov_sweep` the KL-Cov
ablations of docs/results.md, each with its command.
"""

import os
import sys

import ml_collections

# Binaries load config files by path, so make the sibling quickstart importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import quickstart

SEEDS = (0, 1, 2)

# The four methods of the joint fit, at the quickstart's batch-scaled settings.
METHODS: dict[str, dict] = {
    "grpo": {"loss.name": "ppo"},
    "clip_cov": {"loss.name": "clip_cov", "loss.clip_cov.ratio": 0.02},
    "kl_cov": {"loss.name": "kl_cov", "loss.kl_cov.ratio": 0.2, "loss.kl_cov.coef": 1.0},
    "entropy_bonus": {"loss.name": "ppo", "loss.entropy_bonus.coef": 0.005},
}

# Widths of the size law, largest first (see get_size_lr_sweep): hidden -> (heads, kv heads, SFT
# steps); head_dim 32, MLP 3x hidden, 3 layers. Narrower models learn the answer format more
# slowly, so their warm starts are longer: each width starts RL at a held-out sampled accuracy of
# about 0.05-0.2 (calibrated on seed 0; at 120 SFT steps widths 64 and 96 start below 0.01 and
# never leave it, since a group with no correct answer has no gradient).
WIDTHS = {192: (6, 2, 120), 64: (2, 1, 260), 96: (3, 1, 260), 128: (4, 2, 120)}
# Learning rates scanned per width on seed 0 (get_size_lr_sweep).
SIZE_LEARNING_RATES = (1e-4, 3e-4, 1e-3)
# The scan's pick per width: the highest held-out accuracy at the end of the run (mean of the last
# 3 evaluations; notebooks/size_law.ipynb recomputes it from the logs). 1e-3 collapses widths
# 96-192 to accuracy 0; width 64 is still learning at 3e-4.
SIZE_LEARNING_RATE = {192: 3e-4, 64: 1e-3, 96: 3e-4, 128: 3e-4}
# The size law is also fitted with every width at one learning rate (no per-width tuning).
COMMON_LEARNING_RATE = 3e-4


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.sft.steps = 120
  config.sft.shared_dir = "../sft_seed0"  # beside the run's workdir, shared by the sweep's runs

  config.rl.steps = 120
  # notebooks/covariance_dynamics.ipynb reads the entropy-change measurement of every step.
  config.rl.dynamics_every = 1
  config.optimizer.warmup_steps = 5
  config.optimizer.schedule = "cosine"
  # Optimizer updates: 4 mini-batches per step, so the decay spans the run's 480 updates.
  config.optimizer.decay_steps = 480
  config.optimizer.final_lr_fraction = 0.1

  config.eval.every = 4
  config.eval.num_prompts = 256
  config.checkpoint.save_every = 60
  config.logging.console_every = 20
  return config


def _with_seed(name: str, overrides: dict, seed: int, sft_root: str) -> dict:
  return {
      **overrides,
      "seed": seed,
      "method": name,
      "sft.shared_dir": f"{sft_root}/sft_seed{seed}",
      "_name": f"{name}_seed{seed}",
  }


def get_sweep(sft_root: str = "..") -> list[dict]:
  """The four methods × 3 seeds. GRPO's seeds come first, so that with `--jobs=2` each seed's
  SFT warm start is written by exactly one run before the other methods reuse it."""
  return [
      _with_seed(name, overrides, seed, sft_root)
      for name, overrides in METHODS.items()
      for seed in SEEDS
  ]


def _size_run(width: int, lr: float, seed: int, sft_root: str) -> dict:
  heads, kv_heads, sft_steps = WIDTHS[width]
  return {
      "model.hidden_size": width,
      "model.num_heads": heads,
      "model.num_kv_heads": kv_heads,
      "model.intermediate_size": 3 * width,
      "loss.name": "ppo",
      "seed": seed,
      "method": f"grpo_w{width}",
      "optimizer.learning_rate": lr,
      "sft.steps": sft_steps,
      "sft.shared_dir": f"{sft_root}/sft_w{width}_seed{seed}",
      "_name": f"w{width}_lr{lr:g}_seed{seed}",
  }


def get_size_lr_sweep(sft_root: str = "..") -> list[dict]:
  """GRPO at four widths (0.15M–1.3M non-embedding parameters) × 3 learning rates, seed 0, each
  width with its own SFT warm start (written by the width's first run; the widest goes first,
  alone, so no two runs write one warm start at once):

    python launch/sweep.py --config=configs/law.py --sweep=get_size_lr_sweep \
        --workdir=/tmp/law_sizes --mode=local --jobs=2

  About 20 minutes with --jobs=2 (12 runs; the 192-wide ones take the longest).
  """
  return [_size_run(w, lr, 0, sft_root) for lr in SIZE_LEARNING_RATES for w in WIDTHS]


def get_size_sweep(sft_root: str = "..") -> list[dict]:
  """The size law: each width at its chosen learning rate and at the common 3e-4, on seeds 0 and
  1 (the seed-0 runs are the scan's, so with the same workdir they are skipped as done):

    python launch/sweep.py --config=configs/law.py --sweep=get_size_sweep \
        --workdir=/tmp/law_sizes --mode=local --jobs=2

  About 15 minutes for the 5 seed-1 runs (each writes its own SFT warm start). The fits per size
  and against size are in notebooks/size_law.ipynb (export the logs with
  notebooks/export_logs.py); `experiments/fit_law.py` with one learning rate's runs gives the
  same per-size fits.
  """
  runs = {}
  for seed in (0, 1):
    for w in WIDTHS:
      for lr in (SIZE_LEARNING_RATE[w], COMMON_LEARNING_RATE):
        run = _size_run(w, lr, seed, sft_root)
        runs[run["_name"]] = run
  return list(runs.values())


# KL-Cov ablations (docs/results.md, "KL-Cov at this scale"): name -> overrides of get_config.
# The baseline (ratio 0.2, coef 1, 4 mini-batches, one epoch) is the law sweep's `kl_cov`.
KL_COV_ABLATIONS: dict[str, dict] = {
    # Plain unclipped policy gradient: KL-Cov with its penalty's weight at 0.
    "kl_cov_coef0": {"loss.name": "kl_cov", "loss.kl_cov.ratio": 0.2, "loss.kl_cov.coef": 0.0},
    "kl_cov_coef5": {"loss.name": "kl_cov", "loss.kl_cov.ratio": 0.2, "loss.kl_cov.coef": 5.0},
    "kl_cov_r0.02": {"loss.name": "kl_cov", "loss.kl_cov.ratio": 0.02, "loss.kl_cov.coef": 1.0},
    # One mini-batch per rollout: every update is on-policy, so the penalty never acts.
    "kl_cov_1mb": {**METHODS["kl_cov"], "rl.num_minibatches": 1},
    # More off-policy drift: 8 mini-batches, or 2 epochs over 4.
    "kl_cov_8mb": {**METHODS["kl_cov"], "rl.num_minibatches": 8},
    "kl_cov_2ep": {**METHODS["kl_cov"], "rl.ppo_epochs": 2},
    "grpo_2ep": {"loss.name": "ppo", "rl.ppo_epochs": 2},
    # Selection per 16-sequence chunk instead of over the mini-batch.
    "kl_cov_micro": {
        **METHODS["kl_cov"],
        "loss.selection_scope": "microbatch",
        "loss.microbatch_size": 16,
    },
}


def get_kl_cov_sweep(sft_root: str = "../../law") -> list[dict]:
  """The KL-Cov ablations on seeds 0–2, reusing the SFT warm starts of the law sweep in
  `../law` (beside this sweep's directory, as in the command):

    python launch/sweep.py --config=configs/law.py --sweep=get_kl_cov_sweep \
        --workdir=/tmp/law_kl_cov --mode=local --jobs=2
    python experiments/compare_zoo.py --workdirs=/tmp/law_kl_cov,/tmp/law --out=/tmp/law_kl_cov/cmp
  """
  return [
      _with_seed(name, overrides, seed, sft_root)
      for seed in SEEDS
      for name, overrides in KL_COV_ABLATIONS.items()
  ]
