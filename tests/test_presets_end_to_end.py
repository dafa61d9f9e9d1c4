"""The STEER, Lp-Reg and SIREN presets train two RL steps from one shared SFT warm start, with
finite losses and their own metrics. (Rollout-side presets run in test_rollout_interventions.py
and test_zoo_e.py; every preset runs 100 steps x 3 seeds in the zoo sweep, docs/results.md.)"""

from preset_runs import train_two_steps
import pytest

from configs import interventions as presets

PRESETS = {  # preset -> a metric only that intervention logs (None: the loss alone)
    "steer": None,
    "lp_reg": None,
    "siren_acting": "loss/siren",
}


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("shared_sft"))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_trains_two_steps(tmp_path, shared_dir, preset):
  config = presets.get_config(preset)
  history = train_two_steps(config, str(tmp_path), shared_dir)
  if PRESETS[preset]:
    assert PRESETS[preset] in history[-1]
