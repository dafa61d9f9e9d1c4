r"""One full GRPO step (rollout + update) of the quickstart model: entropix_rl vs TRL's
GRPOTrainer and tunix's GRPOLearner.

  pip install -e ".[bench]" && python benchmarks/rl_step.py [--steps=3 --threads=2]
      [--tunix_venv=~/.cache/entropix_rl/tunix-venv]

All sides use the same random weights (ours are saved with `models.hf.save`; transformers and
tunix load that checkpoint), the same character vocabulary, 32 prompts x 8 samples, up to 10
new tokens sampled at temperature 1 until <eos>, 4 optimizer updates per step with a
token-mean PPO loss (eps 0.2), AdamW 3e-4 with global-norm clipping 1.0, no reference model,
on this CPU (torch with `--threads` threads; both JAX sides on one CPU device). A "step" is
the 32 x 8 rollout plus its 4 updates; each figure is the median over `--steps` steps after one
warm-up step (compile time is reported separately).

tunix pins `safetensors<0.8`, so it runs in its own virtual environment: `--tunix_venv` is
reused when it imports tunix, otherwise it is created with `python -m venv` and
`pip install google-tunix==0.1.7 jax==0.10.2 jaxlib==0.10.2` (a few minutes, once). The tunix
side (`benchmarks/tunix_grpo.py`) runs in a subprocess from a JSON spec written here, checks
that its model's logits match ours, and reports which settings it could not match (chiefly: tunix
rolls out each of the 4 mini-batches separately, so it computes no old log-probs). If the
environment cannot be made (no network), the tunix line says why and the rest still runs.

`--shape=long_tail` runs the same comparison at RL's lengths: a hidden-512 model (4 layers, 8
query and 2 KV heads, MLP 1536, the quickstart's 15-token vocabulary, tied embeddings scaled by
2 with the <eos> row zeroed, so every side draws long-tailed lengths: mean about 60, median
about 37, 1-2% cut at 256), 8 prompts x 8 samples, up to 256 new tokens, 4 updates per step.
Every side samples its own completions from the same weights, so each reports its mean
length. About 5 minutes.

Output, JSON lines: the original ours-vs-TRL figure, then one line per baseline
(`baseline_name`: trl, tunix) and per variant of ours (`ours_variant`: `default`, which
recomputes the old log-probs as verl and TRL do, and `old_logp_from_rollout`, which reuses the
sampler's; tunix computes none) with both medians, `speedup` (baseline / ours), each side's work
per step (rollouts, samples, old log-prob rows, updates) and its time split as far as that side
exposes it, and the mean completion length each side produced (lengths are not forced). With
the defaults it takes about 2 minutes on 2 cores, plus the environment's creation the first
time; numbers from a busy machine are noisy.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from absl import app, flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import quickstart
from entropix_rl import sharding, tasks
from entropix_rl.models import forward, hf, init_params
from entropix_rl.tokenizer import CharTokenizer
from entropix_rl.train import config_dict, loop
from entropix_rl.train.config import Experiment, ExperimentConfig, resolve

_STEPS = flags.DEFINE_integer("steps", 3, "Measured steps per side (after one warm-up step).")
_SHAPE = flags.DEFINE_enum(
    "shape",
    "toy",
    ["toy", "long_tail"],
    "toy: the quickstart model and task as they are; long_tail: a hidden-512 model whose "
    "completions have long-tailed lengths of mean about 60 up to 256 tokens (module docstring).",
)
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads (match the cores JAX uses).")
_TUNIX_VENV = flags.DEFINE_string(
    "tunix_venv",
    os.path.expanduser("~/.cache/entropix_rl/tunix-venv"),
    "Virtual environment with tunix: reused if it imports tunix, else created here.",
)

TUNIX_PACKAGES = ("google-tunix==0.1.7", "jax==0.10.2", "jaxlib==0.10.2")
TUNIX_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tunix_grpo.py")
CHECK_ROWS = 4
# The long-tail shape: the quickstart's task and vocabulary (15 ids) on a model whose matmuls
# dominate, 8 prompts x 8 samples, completions up to 256 tokens.
LONG_TAIL = {
    "model.hidden_size": 512,
    "model.num_layers": 4,
    "model.num_heads": 8,
    "model.num_kv_heads": 2,
    "model.head_dim": 64,
    "model.intermediate_size": 1536,
    "model.max_position_embeddings": 512,
    "sampler.max_new_tokens": 256,
    "rl.prompts_per_step": 8,
}
# The tied embedding is scaled by this and its <eos> row zeroed: <eos>'s logit is 0 and the
# others spread, so lengths are long-tailed: mean about 60, median about 37, 1-2% at 256.
LONG_TAIL_EMBED_SCALE = 2.0


def emit(**record) -> None:
  print(json.dumps(record), flush=True)


def bench_config(old_logp_from_rollout: bool = False) -> ExperimentConfig:
  config = quickstart.get_config()
  if _SHAPE.value == "long_tail":
    config = config_dict.apply_overrides(config, LONG_TAIL)
  config.rl.old_logp_from_rollout = old_logp_from_rollout
  config.sft.steps = 0
  config.eval.every = 0
  config.rl.use_reference = False
  config.rl.dynamics_every = 0
  config.logging.tensorboard = False
  config.logging.console_every = 10**6
  config.checkpoint.save_every = 10**6
  return config_dict.typed(config)


def one_rollout_work(config) -> dict[str, int]:
  """Work per step when all prompts are rolled out once, old log-probs are computed for every
  sample (unless `rl.old_logp_from_rollout` reuses the sampler's), and the updates split that
  rollout (ours and TRL)."""
  samples = config.rl.prompts_per_step * config.rl.group_size
  recomputed = 0 if config.rl.old_logp_from_rollout else samples
  return {
      "rollouts": 1,
      "samples_per_rollout": samples,
      "old_logprob_rows": recomputed,
      "updates": config.rl.num_minibatches,
      "rows_per_update": samples // config.rl.num_minibatches,
  }


def bench_params(exp: Experiment) -> dict:
  """The weights every side starts from (random; the long-tail shape's <eos> made rare)."""
  params = init_params(exp.model, jax.random.PRNGKey(0))
  if _SHAPE.value == "long_tail":
    embed = params["embed"] * LONG_TAIL_EMBED_SCALE
    params = dict(params, embed=embed.at[exp.tokenizer.eos_id].set(0.0))
  return params


def ours(config: ExperimentConfig, workdir: str, params: dict) -> dict[str, Any]:
  """Times `collect` (rollout, decode, score) and `update` (old log-probs + mini-batch
  updates, one jitted call) of the trainer; the first step includes compilation."""
  exp = resolve(config)
  run = loop.RLRun(exp, workdir, params, sharding.make_mesh(config.mesh))
  collect_s, update_s, lengths = [], [], []
  for step in range(1, _STEPS.value + 2):
    t0 = time.perf_counter()
    batch, responses, _ = run.collect(run.next_key())
    t1 = time.perf_counter()
    run.update(step, batch)  # returns the metrics, so the update has finished
    collect_s.append(t1 - t0)
    update_s.append(time.perf_counter() - t1)
    lengths.append(float(responses.completion_mask.sum(axis=1).mean()))
  run.close()
  times = [c + u for c, u in zip(collect_s, update_s)]
  return {
      "steps_s": times[1:],
      "first_step_s_incl_compile": times[0],
      "mean_completion_len": float(np.mean(lengths)),
      "work": one_rollout_work(config),
      "split_median_s": {
          "source": "wall clock around RLRun.collect and RLRun.update",
          "rollout": statistics.median(collect_s[1:]),
          "old_logprobs_and_updates": statistics.median(update_s[1:]),
      },
  }


def char_hf_tokenizer(char_tok: CharTokenizer, path: str):
  from tokenizers import Regex, Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
  vocab.update({c: i + 3 for i, c in enumerate(char_tok.alphabet)})
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
  fast = PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
  )
  fast.padding_side = "left"
  fast.save_pretrained(path)
  return fast


def trl(config, model_dir: str, workdir: str) -> dict[str, Any]:
  """TRL's GRPOTrainer: one generation per 4 optimizer steps (`steps_per_generation`). Since
  `gradient_accumulation_steps` (1) is not a multiple of that, TRL computes old log-probs."""
  import datasets
  import torch
  from transformers import AutoModelForCausalLM, TrainerCallback
  from trl import GRPOConfig, GRPOTrainer

  torch.set_num_threads(_THREADS.value)
  task = tasks.get_task(config.task.name, **config.task.kwargs)
  char_tok = CharTokenizer(task.alphabet)
  tokenizer = char_hf_tokenizer(char_tok, model_dir)
  groups, n = config.rl.prompts_per_step, config.rl.group_size
  minibatches = config.rl.num_minibatches
  examples = [task.example(config.seed, "train", i) for i in range(groups * (_STEPS.value + 2))]
  by_prompt = {ex.prompt: ex for ex in examples}
  dataset = datasets.Dataset.from_dict({"prompt": ["<bos>" + ex.prompt for ex in examples]})
  lengths: list[int] = []

  def reward(prompts, completions, completion_ids, **kwargs):
    del kwargs
    lengths.extend(len(ids) for ids in completion_ids)
    return [
        task.verify(by_prompt[p.replace("<bos>", "")], c.replace("<eos>", ""))
        for p, c in zip(prompts, completions)
    ]

  step_times: list[float] = []

  class Timer(TrainerCallback):

    def on_step_begin(self, args, state, control, **kwargs):
      self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
      step_times.append(time.perf_counter() - self.t0)

  args = GRPOConfig(
      output_dir=workdir,
      per_device_train_batch_size=groups * n // minibatches,
      gradient_accumulation_steps=1,
      steps_per_generation=minibatches,
      num_generations=n,
      max_completion_length=config.sampler.max_new_tokens,
      temperature=1.0,
      top_p=1.0,
      beta=0.0,
      num_iterations=1,
      epsilon=0.2,
      loss_type="dapo",
      learning_rate=3e-4,
      max_steps=minibatches * (_STEPS.value + 1),
      use_cpu=True,
      report_to=[],
      logging_steps=10**6,
      save_strategy="no",
      bf16=False,
      shuffle_dataset=False,
      max_grad_norm=1.0,
      seed=0,
      dataloader_num_workers=0,
  )
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  trainer = GRPOTrainer(
      model=model,
      reward_funcs=reward,
      args=args,
      train_dataset=dataset,
      processing_class=tokenizer,
      callbacks=[Timer()],
  )
  with contextlib.redirect_stdout(sys.stderr):  # its end-of-training dict; stdout is JSON only
    trainer.train()
  blocks = [step_times[i : i + minibatches] for i in range(0, len(step_times), minibatches)]
  # The first optimizer step of a block also generates, scores and computes old log-probs;
  # the others only update.
  update_only = [statistics.mean(b[1:]) for b in blocks[1:]]
  return {
      "steps_s": [sum(b) for b in blocks[1:]],
      "first_step_s_incl_compile": sum(blocks[0]),
      "mean_completion_len": float(np.mean(lengths)),
      "work": one_rollout_work(config),
      "split_median_s": {
          "source": "derived from TRL's per-optimizer-step times: rollout = the block's "
          "first step minus the mean of its other steps, updates = that mean "
          f"x {minibatches}",
          "rollout_and_old_logprobs": statistics.median(
              b[0] - u for b, u in zip(blocks[1:], update_only)
          ),
          "updates": statistics.median(u * minibatches for u in update_only),
      },
  }


def tunix_python(venv: str) -> str:
  """The python of `venv`, after creating it and installing tunix where needed.

  Raises:
    RuntimeError: with the failing command's last output lines (e.g. no network).
  """
  python = os.path.join(venv, "bin", "python")
  probe = [python, "-c", "import tunix.rl.grpo.grpo_learner"]
  if os.path.exists(python) and subprocess.run(probe, capture_output=True).returncode == 0:
    return python
  for cmd in (
      [sys.executable, "-m", "venv", venv],
      [python, "-m", "pip", "install", "--quiet", *TUNIX_PACKAGES],
  ):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
      tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
      raise RuntimeError(f"`{' '.join(cmd)}` failed: " + " | ".join(tail))
  return python


def tunix_spec(exp: Experiment, params: dict, model_dir: str, tmp: str) -> str:
  """Writes the spec `tunix_grpo.py` reads (and our logits for its check); returns its path."""
  config, model = exp.config, exp.model
  task = tasks.get_task(config.task.name, **config.task.kwargs)
  tok = CharTokenizer(task.alphabet)
  groups = config.rl.prompts_per_step
  width, new = config.data.max_prompt_len, exp.sampler.max_new_tokens
  examples = [task.example(config.seed, "train", i) for i in range(groups * (_STEPS.value + 1))]
  demo_rng = np.random.default_rng(config.seed)
  prompts = np.full((CHECK_ROWS, width), tok.pad_id, np.int32)
  completions = np.full((CHECK_ROWS, new), tok.pad_id, np.int32)
  for row, ex in enumerate(examples[:CHECK_ROWS]):
    ids = [tok.bos_id] + tok.encode(ex.prompt)
    prompts[row, width - len(ids) :] = ids
    done = tok.encode(task.demonstration(ex, demo_rng)) + [tok.eos_id]
    done = done[: min(new, len(done) - row)]  # row r drops its last r tokens: ragged ends
    completions[row, : len(done)] = done
  tokens = np.concatenate([prompts, completions], axis=1)
  logits, _ = forward(model, params, tokens, mask=tokens != tok.pad_id)
  logits_path = os.path.join(tmp, "check_logits.npz")
  np.savez(logits_path, logits=np.asarray(logits))
  opt = exp.config.optimizer
  spec = {
      "task": config.task.name,
      "model_dir": model_dir,
      "model": {
          "num_layers": model.num_layers,
          "vocab_size": model.vocab_size,
          "hidden_size": model.hidden_size,
          "intermediate_size": model.intermediate_size,
          "num_heads": model.num_heads,
          "head_dim": model.head_dim,
          "num_kv_heads": model.num_kv_heads,
          "rope_theta": model.rope_theta,
          "rms_norm_eps": model.rms_norm_eps,
          "tie_embeddings": model.tie_embeddings,
      },
      "alphabet": tok.alphabet,
      "pad_id": tok.pad_id,
      "bos_id": tok.bos_id,
      "eos_id": tok.eos_id,
      "prompts": [{"prompt": ex.prompt, "n": int(ex.info["n"])} for ex in examples],
      "prompts_per_step": groups,
      "group_size": exp.config.rl.group_size,
      "num_minibatches": exp.config.rl.num_minibatches,
      "max_prompt_len": width,
      "max_new_tokens": new,
      "temperature": exp.sampler.temperature,
      "clip_eps": exp.loss.clip_eps_low,
      "seed": config.seed,
      "optimizer": {
          "learning_rate": opt.learning_rate,
          "grad_clip_norm": opt.grad_clip_norm,
          "b1": opt.b1,
          "b2": opt.b2,
          "eps": opt.eps,
          "weight_decay": opt.weight_decay,
      },
      "check": {
          "prompt_tokens": prompts.tolist(),
          "completion_tokens": completions.tolist(),
          "logits_path": logits_path,
      },
  }
  path = os.path.join(tmp, "tunix_spec.json")
  with open(path, "w") as f:
    json.dump(spec, f)
  return path


def tunix(exp: Experiment, params: dict, model_dir: str, tmp: str) -> dict[str, Any]:
  """Runs `tunix_grpo.py` in the tunix environment; returns its record or {"error": why}."""
  try:
    python = tunix_python(_TUNIX_VENV.value)
  except (RuntimeError, OSError) as e:
    return {"error": f"no tunix environment at {_TUNIX_VENV.value}: {e}"}
  spec = tunix_spec(exp, params, model_dir, tmp)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  done = subprocess.run(
      [python, TUNIX_SCRIPT, f"--spec={spec}"], capture_output=True, text=True, env=env
  )
  lines = done.stdout.strip().splitlines()
  if done.returncode or not lines:
    tail = (done.stdout + done.stderr).strip().splitlines()[-10:]
    return {"error": f"tunix_grpo.py exited with {done.returncode}: " + " | ".join(tail)}
  return json.loads(lines[-1])


def main(argv):
  del argv
  config = bench_config()
  exp = resolve(config)
  reuse = bench_config(old_logp_from_rollout=True)
  params = jax.tree.map(np.array, bench_params(exp))  # on the host: each run donates its copy
  with tempfile.TemporaryDirectory() as tmp:
    our = ours(config, os.path.join(tmp, "ours"), params)
    our_reuse = ours(reuse, os.path.join(tmp, "ours_reuse"), params)
    model_dir = os.path.join(tmp, "model")
    hf.save(model_dir, exp.model, params)
    baselines = {
        "trl": trl(config, model_dir, os.path.join(tmp, "trl")),
        "tunix": tunix(exp, params, model_dir, tmp),
    }
  ours_med, trl_med = statistics.median(our["steps_s"]), statistics.median(
      baselines["trl"]["steps_s"]
  )
  emit(
      benchmark="rl_step",
      figure="grpo_step_seconds_median",
      shape=_SHAPE.value,
      ours=ours_med,
      baseline=trl_med,
      ratio=ours_med / trl_med,
      speedup=trl_med / ours_med,
      unit="s",
      target="speedup >= 2",
      baseline_impl="trl GRPOTrainer",
      ours_all_s=our["steps_s"],
      baseline_all_s=baselines["trl"]["steps_s"],
      ours_first_step_s_incl_compile=our["first_step_s_incl_compile"],
      baseline_first_step_s=baselines["trl"]["first_step_s_incl_compile"],
      ours_mean_completion_len=our["mean_completion_len"],
      prompts=config.rl.prompts_per_step,
      group_size=config.rl.group_size,
      minibatches=config.rl.num_minibatches,
      max_new_tokens=config.sampler.max_new_tokens,
      params=exp.model.num_params(),
  )
  targets = {"trl": "speedup >= 2", "tunix": "speedup >= 1.5"}
  variants = {"default": our, "old_logp_from_rollout": our_reuse}
  for variant, side in variants.items():
    side_med = statistics.median(side["steps_s"])
    for name, base in baselines.items():
      if "error" in base:
        emit(
            benchmark="rl_step",
            figure="grpo_step_speedup",
            baseline_name=name,
            ours_variant=variant,
            ours_median_s=side_med,
            error=base["error"],
        )
        continue
      base_med = statistics.median(base["steps_s"])
      emit(
          benchmark="rl_step",
          figure="grpo_step_speedup",
          shape=_SHAPE.value,
          baseline_name=name,
          ours_variant=variant,
          ours_median_s=side_med,
          baseline_median_s=base_med,
          speedup=base_med / side_med,
          target=targets[name],
          ours_work=side["work"],
          baseline_work=base["work"],
          ours_split_median_s=side["split_median_s"],
          baseline_split_median_s=base["split_median_s"],
          ours_mean_completion_len=side["mean_completion_len"],
          baseline_mean_completion_len=base["mean_completion_len"],
          ours_all_s=side["steps_s"],
          baseline_all_s=base["steps_s"],
          baseline_first_step_s=base["first_step_s_incl_compile"],
          **{k: base[k] for k in ("logits_max_abs_diff", "unmatched") if k in base},
      )


if __name__ == "__main__":
  app.run(main)
