"""The STEER, Lp-Reg and SIREN presets train two RL steps from one shared SFT warm start, with
finite losses and their own metrics. (Rollout-side presets run in test_rollout_interventions.py
and test_zoo_e.py; every preset runs 100 steps x 3 seeds in the zoo sweep, docs/results.md.)"""

import numpy as np
import pytest

from configs import interventions as presets
from entropix_rl.train import experiment

PRESETS = {  # preset -> a metric only that intervention logs (None: the loss alone)
    "steer": None, "lp_reg": None, "siren_acting": "loss/siren",
}


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("shared_sft"))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_trains_two_steps(tmp_path, shared_dir, preset):
  config = presets.get_config(preset)
  config.sft.steps = 8
  config.sft.shared_dir = shared_dir
  config.rl.steps = 2
  config.rl.prompts_per_step = 8
  config.rl.num_minibatches = 2
  config.eval.every = 0
  config.logging.tensorboard = False
  history = experiment.run(config, str(tmp_path), log=False)
  assert len(history) == 2 and all(np.isfinite(h["loss/loss"]) for h in history)
  if PRESETS[preset]:
    assert PRESETS[preset] in history[-1]
