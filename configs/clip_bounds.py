r"""The clip-low / clip-high control: random rewards, PPO clip bounds swept (Park et al. 2025,
arXiv 2509.26114; docs/results.md, "Clip bounds under random rewards").

Every response gets a Bernoulli(0.5) reward (`loss.random_reward`), so the task teaches
nothing, and any steady entropy drift comes from the clip: the lower bound (tokens with A < 0
whose ratio fell below 1 − ε_low) is claimed to raise entropy, the upper bound (A > 0, ratio
above 1 + ε_high) to lower it. The rest is the quickstart (same SFT warm start, 32 prompts x 8
samples, 4 mini-batches per step, so all but the first mini-batch are off-policy):

  python launch/sweep.py --config=configs/clip_bounds.py --workdir=/tmp/clip_bounds \
      --mode=local --jobs=2 --config.sft.shared_dir=..
  python experiments/compare_zoo.py --workdirs=/tmp/clip_bounds --out=/tmp/clip_bounds/compare

About 1.5 minutes per run on 2 CPU cores after the shared warm start; 10 runs.
"""

import os
import sys

import ml_collections

# Binaries load config files by path, so make the sibling quickstart importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import quickstart

# name -> (ε_low, ε_high); "no_clip" is the control with no active bound.
BOUNDS = {
    "symmetric": (0.2, 0.2),
    "clip_higher": (0.2, 0.28),
    "tight_low": (0.1, 0.2),
    "tight_high": (0.2, 0.1),
    "no_clip": (1.0, 100.0),
}
SEEDS = (0, 1)
PRESETS = tuple(BOUNDS)  # configs/clip_bounds.py:<bounds>


def get_config(arg: str = "symmetric") -> ml_collections.ConfigDict:
  """The quickstart with random rewards and the clip bounds `arg` (one of `BOUNDS`)."""
  name = arg or "symmetric"
  if name not in BOUNDS:
    raise ValueError(
        f"configs/clip_bounds.py:{name!r}: unknown bounds; allowed: " f"{tuple(BOUNDS)}"
    )
  config = quickstart.get_config()
  config.method = name
  config.rl.steps = 100
  config.loss.random_reward.enabled = True
  config.loss.clip_eps_low, config.loss.clip_eps_high = BOUNDS[name]
  config.eval.every = 100
  config.eval.num_prompts = 64
  return config


def get_sweep() -> list[dict]:
  """Every entry of `BOUNDS` x `SEEDS`, with one shared SFT warm start."""
  return [
      {
          "loss.clip_eps_low": low,
          "loss.clip_eps_high": high,
          "method": name,
          "seed": seed,
          "_name": f"{name}_seed{seed}",
      }
      for name, (low, high) in BOUNDS.items()
      for seed in SEEDS
  ]
