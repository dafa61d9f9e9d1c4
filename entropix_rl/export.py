"""A trained run's policy as a Hugging Face directory: config.json, safetensors,
generation_config.json and, for Hugging Face tokenizers, the tokenizer files.

The model config comes from the run's `run_info.json`, the params from its Orbax checkpoint
(restored alone, without the optimizer state), the sampling defaults from its config.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from absl import logging
from etils import epath
import jax

from entropix_rl import paths
from entropix_rl.models import ModelConfig, hf, init_params
from entropix_rl.models.architecture import RopeScaling
from entropix_rl.train import config_dict
from entropix_rl.train.checkpoint import Checkpointer
from entropix_rl.train.config import ExperimentConfig, make_tokenizer


def run_model_config(info: dict[str, Any]) -> ModelConfig:
  """The `ModelConfig` recorded in a run's `run_info.json`."""
  model = dict(info["model"])
  if model.get("rope_scaling") is not None:
    model["rope_scaling"] = RopeScaling(**model["rope_scaling"])
  return ModelConfig(**model)


def generation_config(config: ExperimentConfig, tokenizer) -> dict[str, Any]:
  """`generation_config.json`: the run's sampling settings and its stop and special tokens."""
  sampler = config.sampler
  out = {
      "bos_token_id": tokenizer.bos_id,
      "eos_token_id": list(tokenizer.stop_ids),
      "pad_token_id": tokenizer.pad_id,
      "do_sample": not sampler.greedy,
      "temperature": sampler.temperature,
      "top_p": sampler.top_p,
      "max_new_tokens": sampler.max_new_tokens,
  }
  if sampler.top_k:
    out["top_k"] = sampler.top_k
  return out


@dataclasses.dataclass(frozen=True)
class RunPolicy:
  """A training run's policy at one checkpoint step: its typed config, model and params."""

  config: ExperimentConfig
  model: ModelConfig
  params: Any
  step: int


def load_run_policy(workdir: epath.PathLike, step: int | None = None) -> RunPolicy:
  """The params of `workdir`'s checkpoint `step` (default: the latest), restored alone (no
  optimizer state) on one device, with the model config and typed config of `run_info.json`."""
  run = paths.as_path(workdir)
  info_path = run / "run_info.json"
  if not info_path.exists():
    raise FileNotFoundError(f"{info_path} does not exist: --workdir must be a training run")
  info = json.loads(info_path.read_text())
  config = config_dict.typed(info["config"])
  model_cfg = run_model_config(info)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      jax.eval_shape(lambda: init_params(model_cfg, jax.random.PRNGKey(0))),
  )
  checkpointer = Checkpointer(run / "checkpoints", save_every=1, keep=1 << 30)
  try:
    params, step = checkpointer.restore_params(abstract, step)
  finally:
    checkpointer.close()
  return RunPolicy(config=config, model=model_cfg, params=params, step=step)


def export_run(
    workdir: epath.PathLike, out: epath.PathLike, *, step: int | None = None
) -> dict[str, Any]:
  """Writes the policy of `workdir`'s checkpoint `step` (default: the latest) to `out`.

  Returns:
    A summary: the step, the directory, the files written and the tokenizer's kind: "hf" (its
    Hugging Face files) or "char" (`char_tokenizer.json`, the alphabet and special ids, which
    `tokenizer.load` reads; it has no Hugging Face form).
  """
  policy = load_run_policy(workdir, step)
  config = policy.config
  tokenizer = make_tokenizer(config)
  model_cfg = policy.model.replace(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
  target = paths.as_path(out)
  hf.save(target, model_cfg, jax.device_get(policy.params))
  (target / "generation_config.json").write_text(
      json.dumps(generation_config(config, tokenizer), indent=2)
  )
  tokenizer.save_pretrained(target)
  if config.tokenizer.kind == "char":
    logging.info(
        "the run used the character tokenizer, which has no Hugging Face form: %s holds its "
        "alphabet in char_tokenizer.json (entropix_rl.tokenizer.load reads it)",
        target,
    )
  return {
      "step": policy.step,
      "out": str(target),
      "files": sorted(p.name for p in target.iterdir()),
      "tokenizer": config.tokenizer.kind,
  }
