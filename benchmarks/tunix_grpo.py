r"""tunix's side of `benchmarks/rl_step.py`: its GRPO learner on the quickstart model, on CPU.

Runs in tunix's own virtual environment (tunix pins `safetensors<0.8`; entropix_rl is not
installed there and this file does not import it). `rl_step.py` writes the spec and runs

  TUNIX_VENV/bin/python benchmarks/tunix_grpo.py --spec=SPEC.json

The spec (JSON) names the Hugging Face checkpoint that `rl_step.py` saved from our random
weights (`model_dir`, loaded with tunix's own safetensors mapping into a tunix `Qwen2`), the
model shape, the character vocabulary, the prompts with the numbers the reward checks, and
the GRPO settings; the prompts fill one batch per step, the first step being the warm-up.
The steps run through `GRPOLearner` with an `RLCluster` on one CPU device (actor and rollout
share the weights; tunix's vanilla rollout engine samples). Before training, the tunix
model's logits on the spec's check rows are compared with ours (`check`); a difference above
`--logits_atol` stops the run.

Prints one JSON object on the last line of stdout: per-step wall-clock seconds, the mean
completion length, the step split that tunix's perf tracer reports (rollout, old log-probs,
updates), the logits difference and the settings that could not be matched.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
import importlib.metadata
import json
import re
import statistics
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tunix.models.qwen2 import model as qwen2_model
from tunix.models.qwen2 import params as qwen2_params
from tunix.perf import export as perf_export
from tunix.perf import metrics as perf_metrics
from tunix.rl import common, rl_cluster
from tunix.rl.grpo import grpo_learner
from tunix.rl.rollout import base_rollout
from tunix.utils import mesh as tunix_mesh

_ANSWER = re.compile(r"([0-9]{1,12})\+([0-9]{1,12})")
_MODE = str(rl_cluster.Mode.TRAIN)


class CharTokenizer:
  """tunix's tokenizer interface over the benchmark's character vocabulary.

  Ids as `entropix_rl.tokenizer.CharTokenizer`: pad, bos, eos, then one id per character of
  the alphabet. `decode` drops special ids and stops at the first eos, as ours does.
  """

  def __init__(self, alphabet: str, pad_id: int, bos_id: int, eos_id: int):
    self._specials = (pad_id, bos_id, eos_id)
    self._first = max(self._specials) + 1
    self._to_id = {c: i + self._first for i, c in enumerate(alphabet)}
    self._alphabet = alphabet

  def encode(self, text: str, **kwargs: Any) -> list[int]:
    del kwargs
    return [self._to_id[c] for c in str(text)]

  def decode(self, ids: Sequence[int], **kwargs: Any) -> str:
    del kwargs
    out = []
    for token in ids:
      i = int(token)
      if i == self.eos_id():
        break
      if i >= self._first:
        out.append(self._alphabet[i - self._first])
    return "".join(out)

  def pad_id(self) -> int:
    return self._specials[0]

  def bos_id(self) -> int:
    return self._specials[1]

  def eos_id(self) -> int:
    return self._specials[2]


def decomposition_reward(
    prompts: list[str], completions: list[str], n: Sequence[int], **kwargs: Any
) -> list[float]:
  """The decomposition task's check: `a+b` with positive a, b and a + b = n scores 1, else 0.

  The same rule as `entropix_rl.tasks.Decomposition.verify`, written out here because this
  environment does not have entropix_rl; the completion is only parsed, never executed.
  """
  del prompts, kwargs
  rewards = []
  for completion, target in zip(completions, n):
    match = _ANSWER.fullmatch(completion.strip())
    ok = (
        match is not None
        and int(match.group(1)) >= 1
        and int(match.group(2)) >= 1
        and (int(match.group(1)) + int(match.group(2)) == int(target))
    )
    rewards.append(float(ok))
  return rewards


def model_config(spec: dict[str, Any]) -> qwen2_model.ModelConfig:
  """tunix's Qwen2 config for the spec's shape (tunix's Qwen2 always has qkv biases)."""
  m = spec["model"]
  return qwen2_model.ModelConfig(
      num_layers=m["num_layers"],
      vocab_size=m["vocab_size"],
      embed_dim=m["hidden_size"],
      hidden_dim=m["intermediate_size"],
      num_heads=m["num_heads"],
      head_dim=m["head_dim"],
      num_kv_heads=m["num_kv_heads"],
      rope_theta=m["rope_theta"],
      norm_eps=m["rms_norm_eps"],
      use_tied_embedding=m["tie_embeddings"],
  )


def logits_difference(
    model: qwen2_model.Qwen2, check: dict[str, Any], pad_id: int, eos_id: int
) -> float:
  """Max |tunix logits - our logits| over the real (non-pad) positions of the check rows.

  The rows go through tunix's own `process_ids` (the positions and attention mask its
  learner uses for left-padded prompts and right-padded completions).
  """
  with np.load(check["logits_path"]) as f:
    ours = f["logits"]
  prompts = jnp.asarray(check["prompt_tokens"], jnp.int32)
  completions = jnp.asarray(check["completion_tokens"], jnp.int32)
  tokens, positions, attn_mask, segment_ids = common.process_ids(
      prompts, completions, pad_id, eos_id
  )
  logits, _ = model(
      tokens, positions=positions, cache=None, attention_mask=attn_mask, segment_ids=segment_ids
  )
  real = np.asarray(tokens) != pad_id
  return float(np.abs(np.asarray(logits) - ours)[real].max())


def timed_batches(
    spec: dict[str, Any], stamps: list[float], sync: Callable[[], None]
) -> Iterator[dict[str, Any]]:
  """One batch of `prompts_per_step` prompts per step; stamps the time each is requested.

  The learner asks for batch k + 1 when step k is done, so consecutive stamps bound one
  step. `sync` waits for the actor's weights first (the last update may still be running).
  """
  size = spec["prompts_per_step"]
  rows = spec["prompts"]
  for start in range(0, len(rows), size):
    sync()
    stamps.append(time.perf_counter())
    chunk = rows[start : start + size]
    yield {"prompts": [r["prompt"] for r in chunk], "n": np.asarray([r["n"] for r in chunk])}
  sync()
  stamps.append(time.perf_counter())


def record_lengths(cluster: rl_cluster.RLCluster, max_new_tokens: int, lengths: list[int]) -> None:
  """Makes `cluster.generate` append each completion's length, counting the stop token as
  ours does. tunix's sampler returns completions cut before their eos, and its own
  `completions/mean_length` also leaves out pad ids sampled inside a completion."""
  generate = cluster.generate

  def generate_and_record(*args: Any, **kwargs: Any) -> base_rollout.RolloutOutput:
    out = generate(*args, **kwargs)
    lengths.extend(len(t) + (len(t) < max_new_tokens) for t in out.tokens)
    return out

  cluster.generate = generate_and_record


def unmatched(spec: dict[str, Any]) -> list[str]:
  """Where this run differs from ours (and TRL's) because tunix offers no knob for it."""
  groups, minibatches = spec["prompts_per_step"], spec["num_minibatches"]
  return [
      f"tunix rolls out each mini-batch on its own (one mini-batch = one optimizer update, "
      f"sampled from the policy the earlier updates left): {minibatches} rollouts of "
      f"{groups // minibatches} prompts x {spec['group_size']} samples per step, where ours "
      f"and TRL roll out all {groups} prompts once and take {minibatches} updates on parts "
      f"of that rollout",
      "hence no old log-probs: with num_iterations=1 the ratio's denominator is the "
      "stop-gradient of the current log-probs, so the ratio is 1 and the eps clip never acts",
      "mini-batches are whole prompt groups in data order; ours shuffles rows each epoch",
      "tunix's sampler cuts each completion before its <eos>, so the eos token gets no loss "
      "term (mean_completion_len here counts it, as ours and TRL's do)",
      "tunix tells padding by token id: a <pad> the policy samples inside a completion is "
      "left out of attention (when sampling and in the loss) and of the loss mask; ours and "
      "TRL keep it as an ordinary token",
      "tunix's loss also computes the full-vocabulary entropy of every completion token "
      "(for logging)",
      "every rollout reuses one fixed PRNG key (RolloutConfig.seed)",
  ]


def run(spec: dict[str, Any], logits_atol: float) -> dict[str, Any]:
  """Builds the tunix model, cluster and learner from `spec`; trains; returns the record."""
  tokenizer = CharTokenizer(spec["alphabet"], spec["pad_id"], spec["bos_id"], spec["eos_id"])
  mesh = tunix_mesh.create_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1])
  model = qwen2_params.create_model_from_safe_tensors(spec["model_dir"], model_config(spec), mesh)
  diff = logits_difference(model, spec["check"], spec["pad_id"], spec["eos_id"])
  if not diff <= logits_atol:
    raise SystemExit(f"tunix logits differ from ours by {diff:.3g} > --logits_atol={logits_atol}")

  opt = spec["optimizer"]
  optimizer = optax.chain(
      optax.clip_by_global_norm(opt["grad_clip_norm"]),
      optax.adamw(
          opt["learning_rate"],
          b1=opt["b1"],
          b2=opt["b2"],
          eps=opt["eps"],
          weight_decay=opt["weight_decay"],
      ),
  )
  groups, minibatches = spec["prompts_per_step"], spec["num_minibatches"]
  total_steps = len(spec["prompts"]) // groups
  cluster_config = rl_cluster.ClusterConfig(
      role_to_mesh={
          role: mesh
          for role in (rl_cluster.Role.ACTOR, rl_cluster.Role.REFERENCE, rl_cluster.Role.ROLLOUT)
      },
      rollout_engine="vanilla",
      offload_to_cpu=False,
      training_config=rl_cluster.RLTrainingConfig(
          actor_optimizer=optimizer,
          eval_every_n_steps=1,  # no eval set is given
          # One step more than the data holds, so training ends when the data runs out and
          # the last stamp is taken after the last step.
          max_steps=minibatches * (total_steps + 1),
          mini_batch_size=groups // minibatches,
          train_micro_batch_size=groups // minibatches,
      ),
      rollout_config=base_rollout.RolloutConfig(
          max_tokens_to_generate=spec["max_new_tokens"],
          temperature=spec["temperature"],
          top_p=1.0,
          top_k=None,
          seed=spec["seed"],
          max_prompt_length=spec["max_prompt_len"],
          kv_cache_size=spec["max_prompt_len"] + spec["max_new_tokens"],
          eos_tokens=[spec["eos_id"]],
      ),
  )
  perf_config = perf_metrics.PerfMetricsConfig(
      custom_export_fn=perf_export.PerfMetricsExport.from_cluster_config(cluster_config)
  )
  cluster = rl_cluster.RLCluster(
      actor=model,
      reference=None,
      tokenizer=tokenizer,
      cluster_config=cluster_config,
      perf_config=perf_config,
  )
  algo_config = grpo_learner.GRPOConfig(
      num_generations=spec["group_size"],
      num_iterations=1,
      beta=0.0,
      epsilon=spec["clip_eps"],
      loss_agg_mode="token-mean",
  )
  learner = grpo_learner.GRPOLearner(
      rl_cluster=cluster, algo_config=algo_config, reward_fns=decomposition_reward
  )
  lengths: list[int] = []
  record_lengths(cluster, spec["max_new_tokens"], lengths)
  actor = cluster.actor_trainer.model
  stamps: list[float] = []
  learner.train(timed_batches(spec, stamps, lambda: jax.block_until_ready(nnx.state(actor))))

  logger = cluster.actor_trainer.metrics_logger

  def history(prefix: str, name: str) -> list[float]:  # one value per global step
    return np.ravel(logger.get_metric_history(prefix, name, _MODE)).tolist()

  step_s = np.diff(stamps).tolist()
  rollout_s = history("perf", "sum/rollout_time")
  update_s = history("perf", "sum/actor_train_time")
  rows = spec["prompts_per_step"] * spec["group_size"] // minibatches
  return {
      "impl": "tunix GRPOLearner (RLCluster, vanilla rollout, CPU)",
      "tunix_version": importlib.metadata.version("google-tunix"),
      "jax_version": jax.__version__,
      "steps_s": step_s[1:],
      "first_step_s_incl_compile": step_s[0],
      "mean_completion_len": float(np.mean(lengths)),
      "tunix_mean_completion_len_without_eos": float(
          np.mean(history("completions", "mean_length"))
      ),
      "reward_mean": float(np.mean(history("rewards", "score/mean"))),
      "split_median_s": {
          "source": "tunix perf tracer (v1) spans, summed over the step's mini-batches; "
          "global_step includes rewards, advantages and data handling",
          "rollout": statistics.median(rollout_s[1:]),
          "old_logprobs": 0.0,
          "updates": statistics.median(update_s[1:]),
          "global_step": statistics.median(history("perf", "global_step_time")[1:]),
      },
      "work": {
          "rollouts": minibatches,
          "samples_per_rollout": rows,
          "old_logprob_rows": 0,
          "updates": minibatches,
          "rows_per_update": rows,
      },
      "logits_max_abs_diff": diff,
      "unmatched": unmatched(spec),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--spec", required=True, help="JSON spec written by rl_step.py")
  parser.add_argument(
      "--logits_atol",
      type=float,
      default=1e-4,
      help="largest allowed |tunix logits - our logits| on the check rows",
  )
  args = parser.parse_args()
  with open(args.spec) as f:
    spec = json.load(f)
  if spec["task"] != "decomposition":
    raise SystemExit(
        f"tunix_grpo.py implements the decomposition reward only; the spec "
        f"asks for {spec['task']!r}"
    )
  print(json.dumps(run(spec, args.logits_atol)), flush=True)


if __name__ == "__main__":
  main()
