"""Two RL steps of a preset on a tiny budget: the end-to-end check the preset tests share."""

import numpy as np

from entropix_rl.train import loop
from entropix_rl.train.config_dict import typed


def train_two_steps(config, workdir: str, shared_dir: str = "") -> list[dict]:
  """Runs `config` for 2 RL steps after an 8-step SFT warm start; asserts finite losses."""
  config.sft.steps = 8
  config.sft.shared_dir = shared_dir
  config.rl.steps = 2
  config.rl.prompts_per_step = 8
  config.rl.num_minibatches = 2
  config.rl.dynamics_every = 1  # both steps measure the entropy change: one update program
  config.eval.every = 0
  config.logging.tensorboard = False
  history = loop.run(typed(config), workdir, log=False)
  assert len(history) == 2 and all(np.isfinite(h["loss/loss"]) for h in history)
  return history
