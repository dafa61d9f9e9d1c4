"""The paper recipe configs (configs/qwen25_7b.py, qwen25_32b.py) against the paper's setup (docs/interventions.md)."""

import os

from absl import flags
import ml_collections
from ml_collections import config_flags
import pytest

from configs import quickstart, qwen25_7b, qwen25_32b
from entropix_rl import interventions, memory
from entropix_rl.tokenizer import CharTokenizer
from entropix_rl.train.config import method_name, resolve
from entropix_rl.train.config_dict import typed

METHODS = ("grpo", "clip_higher", "clip_cov", "kl_cov")
RECIPES = {"7b": qwen25_7b, "32b": qwen25_32b}
# The paper's setup (lr) and KL-Cov's ratio per size (docs/interventions.md); tensor = KV heads (docs/scaling.md).
PER_SIZE = {
    "7b": dict(lr=5e-7, kl_cov_ratio=2e-3, tensor=4),
    "32b": dict(lr=1e-6, kl_cov_ratio=2e-4, tensor=8),
}
# The paper's GRPO baseline (ε 0.2), DAPO's Clip-Higher (0.2/0.28), Clip-Cov (its scripts clip
# 1/1), KL-Cov (no clipping; the fields stay at the 0.2 default).
CLIP = {
    "grpo": (0.2, 0.2),
    "clip_higher": (0.2, 0.28),
    "clip_cov": (1.0, 1.0),
    "kl_cov": (0.2, 0.2),
}
LOSS_NAME = {"grpo": "ppo", "clip_higher": "ppo", "clip_cov": "clip_cov", "kl_cov": "kl_cov"}


def _missing_keys(reference, config, path=""):
  """Dotted keys of `reference` (nested dicts) that `config` lacks; extra keys are allowed."""
  missing = []
  for key, value in reference.items():
    full = f"{path}{key}"
    if key not in config:
      missing.append(full)
    elif full == "task.kwargs":  # the task's own constructor arguments, not trainer fields
      continue
    elif isinstance(value, dict):
      if not isinstance(config[key], dict):
        missing.append(f"{full} (not a section)")
      else:
        missing += _missing_keys(value, config[key], full + ".")
  return missing


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", sorted(RECIPES))
def test_recipe_matches_interventions(size, method):
  config = RECIPES[size].get_config(method)
  assert isinstance(config, ml_collections.ConfigDict)
  cfg = interventions.resolve_loss_config(config.loss)

  # The paper's shared setup.
  assert config.rl.prompts_per_step == 256
  assert config.rl.group_size == 8
  assert config.rl.num_minibatches == 8  # mini-batch 32 prompts
  assert config.rl.ppo_epochs == 1
  assert config.rl.advantage == "grpo"
  assert config.rl.dynamic_sampling is True and config.rl.max_gen_batches == 10
  assert config.rl.use_reference is False and config.rl.remat is True
  assert config.optimizer.learning_rate == PER_SIZE[size]["lr"]
  assert config.optimizer.grad_clip_norm == 1.0
  assert config.sampler.temperature == 1.0 and config.sampler.max_new_tokens == 8192
  assert cfg.agg == "token-mean"
  assert cfg.kl_ref.coef == 0.0
  assert cfg.entropy_bonus.coef == 0.0 and not cfg.entropy_bonus.adaptive
  assert not cfg.entropy_advantage.enabled
  assert cfg.dual_clip_c is None

  # Model, data and mesh.
  assert config.model.init == "checkpoint" and config.model.checkpoint
  assert config.tokenizer.kind == "hf" and config.tokenizer.path == config.model.checkpoint
  assert config.model.param_dtype == "bfloat16" and config.model.compute_dtype == "bfloat16"
  assert config.task.name == "math" and config.data.source == "file" and config.data.path
  assert config.sft.steps == 0
  assert dict(config.mesh) == {"data": 1, "fsdp": -1, "tensor": PER_SIZE[size]["tensor"]}
  assert config.distributed.enabled is True

  # The method.
  assert cfg.name == LOSS_NAME[method]
  assert (cfg.clip_eps_low, cfg.clip_eps_high) == CLIP[method]
  if method == "clip_cov":
    assert (cfg.clip_cov.ratio, cfg.clip_cov.lb, cfg.clip_cov.ub) == (2e-4, 1.0, 5.0)
  if method == "kl_cov":
    assert cfg.kl_cov.ratio == PER_SIZE[size]["kl_cov_ratio"]
    assert cfg.kl_cov.coef == 1.0
  assert method_name(typed(config)) == method


@pytest.mark.parametrize("size", sorted(RECIPES))
def test_default_method_is_grpo(size):
  assert RECIPES[size].get_config().to_dict() == RECIPES[size].get_config("grpo").to_dict()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", sorted(RECIPES))
def test_recipe_has_every_quickstart_field(size, method):
  reference = quickstart.get_config().to_dict()
  config = RECIPES[size].get_config(method).to_dict()
  assert _missing_keys(reference, config) == []


@pytest.mark.parametrize("size", sorted(RECIPES))
def test_tensor_parallel_size_is_the_models_kv_heads(size):
  module = RECIPES[size]
  arch = memory.qwen25_config(module.MODEL_SIZE)
  assert arch.num_kv_heads == module.get_config().mesh.tensor == module.MESH_TENSOR


@pytest.mark.parametrize("size", sorted(RECIPES))
def test_bad_method_lists_allowed_values(size):
  with pytest.raises(ValueError, match="allowed") as info:
    RECIPES[size].get_config("dapo")
  for method in METHODS:
    assert method in str(info.value)


@pytest.mark.parametrize("size", sorted(RECIPES))
def test_tokenizer_path_follows_checkpoint(size):
  config = RECIPES[size].get_config("clip_cov")
  config.model.checkpoint = "/data/models/x"
  assert config.tokenizer.path == "/data/models/x"
  config.tokenizer.path = "/data/tokenizers/y"  # set on its own: the checkpoint is untouched
  assert config.model.checkpoint == "/data/models/x"
  assert config.tokenizer.path == "/data/tokenizers/y"


@pytest.mark.parametrize("size", sorted(RECIPES))
def test_config_flag_argument_selects_method(size):
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", f"qwen25_{size}.py")
  argv = [
      "prog",
      f"--config={path}:kl_cov",
      "--config.model.checkpoint=/ckpt",
      "--config.data.path=/data/dapo.parquet",
  ]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file(
      "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
  )
  values(argv)
  config = holder.value
  assert config.loss.name == "kl_cov"
  assert config.loss.kl_cov.ratio == PER_SIZE[size]["kl_cov_ratio"]
  assert config.model.checkpoint == "/ckpt" and config.tokenizer.path == "/ckpt"
  assert config.data.path == "/data/dapo.parquet"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  from hf_utils import make_hf_model, save_hf_model  # torch/transformers: only for this test

  return save_hf_model(make_hf_model("qwen2"), str(tmp_path_factory.mktemp("ckpt")))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", sorted(RECIPES))
def test_recipe_resolves_with_a_checkpoint(size, method, tiny_checkpoint):
  config = RECIPES[size].get_config(method)
  config.model.checkpoint = tiny_checkpoint
  config.data.max_prompt_len = 16
  config.sampler.max_new_tokens = 32  # 16 + 32 <= the tiny model's 256 positions
  exp = resolve(typed(config), tokenizer=CharTokenizer("0123456789"))
  rl = exp.config.rl
  assert exp.model.param_dtype == "bfloat16" and exp.model.compute_dtype == "bfloat16"
  assert exp.model.max_position_embeddings == 256
  assert rl.batch_size == 256 * 8 and rl.num_minibatches == 8 and rl.remat
  assert exp.loss.name == LOSS_NAME[method]
  assert exp.config.optimizer.learning_rate == PER_SIZE[size]["lr"]


@pytest.mark.parametrize("size", sorted(RECIPES))
def test_paper_context_checked_against_checkpoint(size, tiny_checkpoint):
  """With the paper's 2048 + 8192 context, the tiny 256-position model is rejected by name."""
  config = RECIPES[size].get_config("grpo")
  config.model.checkpoint = tiny_checkpoint
  with pytest.raises(ValueError, match="max_position_embeddings"):
    resolve(typed(config), tokenizer=CharTokenizer("0123456789"))
