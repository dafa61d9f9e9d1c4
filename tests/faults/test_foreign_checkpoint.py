"""A checkpoint from another model config: a ValueError naming the param and both shapes."""

import jax
import numpy as np
import pytest

from entropix_rl.models import hf
from entropix_rl.models.config import ModelConfig
from entropix_rl.models.decoder import init_params
from entropix_rl.train.checkpoint import Checkpointer
from entropix_rl.train.optim import OptimizerConfig, make_optimizer
from entropix_rl.train.state import create_train_state

SMALL = ModelConfig(
    vocab_size=48,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    intermediate_size=32,
)


def _state(config: ModelConfig, seed: int = 0):
  params = init_params(config, jax.random.PRNGKey(seed))
  return create_train_state(
      params, make_optimizer(OptimizerConfig(learning_rate=1e-3)), jax.random.PRNGKey(seed)
  )


def test_orbax_restore_names_param_and_both_shapes(tmp_path):
  directory = str(tmp_path / "ckpt")
  saver = Checkpointer(directory, save_every=1, keep=1)
  saver.maybe_save(3, _state(SMALL), {"data_state": {}})
  saver.close()
  wider = SMALL.replace(hidden_size=24)
  restorer = Checkpointer(directory, save_every=1, keep=1)  # a fresh run resuming
  with pytest.raises(
      ValueError,
      match=r"checkpoint .*ckpt step 3: param 'params/embed' has "
      r"shape \(48, 16\) in the checkpoint but \(48, 24\) in "
      r"the model config \(and \d+ more params differ\)",
  ):
    restorer.restore(_state(wider))
  deeper = SMALL.replace(num_layers=3)
  with pytest.raises(
      ValueError,
      match=r"param 'params/layers/\w+' has shape \(2, [\d, ]+\) in "
      r"the checkpoint but \(3, [\d, ]+\) in the model config",
  ):
    restorer.restore(_state(deeper))
  # The same config still restores exactly.
  restored, extra, step = restorer.restore(_state(SMALL, seed=1))
  restorer.close()
  assert step == 3 and extra == {"data_state": {}}
  jax.tree.map(np.testing.assert_array_equal, restored.params, _state(SMALL).params)


def test_hf_load_names_param_and_both_shapes(tmp_path):
  path = str(tmp_path / "sft")
  hf.save(path, SMALL, init_params(SMALL, jax.random.PRNGKey(0)))
  config, params = hf.load(path, expected=SMALL)
  assert config == SMALL and params["embed"].shape == (48, 16)
  with pytest.raises(
      ValueError,
      match=r"checkpoint .*sft: param 'layers/down' has shape "
      r"\(2, 32, 16\) in the checkpoint but \(2, 64, 16\) in "
      r"the model config \(and 2 more params differ\)",
  ):
    hf.load(path, expected=SMALL.replace(intermediate_size=64))
  with pytest.raises(
      ValueError, match=r"param 'lm_head' is in the checkpoint but not in the " r"model config"
  ):
    hf.load(path, expected=SMALL.replace(tie_embeddings=True))
