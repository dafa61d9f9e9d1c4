r"""One full GRPO step (rollout + update) of the quickstart model: entropix_rl vs TRL's GRPOTrainer.

  pip install -e ".[bench]" && python benchmarks/rl_step.py [--steps=3 --threads=2]

Both sides use the same random weights (ours are saved with `models.hf.save` and loaded by
transformers), the same character vocabulary, 32 prompts x 8 samples, up to 10 new tokens
sampled at temperature 1 until <eos>, 4 optimizer updates per rollout with a token-mean PPO
loss (eps 0.2), no reference model, on this CPU (torch with `--threads` threads). A "step" is
one rollout plus its 4 updates; the figure is the median over `--steps` steps after one
warm-up step (our compile time is reported separately). Completion lengths are not forced, so
the mean length each side produced is printed with the timings.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import quickstart  # noqa: E402
from entropix_rl import sharding, tasks  # noqa: E402
from entropix_rl.models import hf, init_params  # noqa: E402
from entropix_rl.tokenizer import CharTokenizer  # noqa: E402
from entropix_rl.train import experiment  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 3, "Measured steps per side (after one warm-up step).")
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads (match the cores JAX uses).")


def emit(**record) -> None:
  print(json.dumps(record), flush=True)


def bench_config():
  config = quickstart.get_config()
  config.sft.steps = 0
  config.eval.every = 0
  config.rl.use_reference = False
  config.rl.measure_dynamics = False
  config.logging.tensorboard = False
  config.logging.console_every = 10**6
  config.checkpoint.save_every = 10**6
  return config


def ours(config, workdir: str) -> tuple[list[float], float, float]:
  """Returns (step seconds, first-step seconds incl. compile, mean completion length)."""
  tokenizer = experiment.make_tokenizer(config)
  exp = experiment.resolve(config, tokenizer=tokenizer)
  task = tasks.get_task(config.task.name, **config.task.kwargs)
  params = init_params(exp.model, jax.random.PRNGKey(0))
  run = experiment.RLRun(exp, workdir, tokenizer, task, exp.model, params,
                         sharding.make_mesh(config.mesh), log=False)
  times, lengths = [], []
  for _ in range(_STEPS.value + 1):
    t0 = time.perf_counter()
    rng, key = jax.random.split(run.state.rng)
    run.state = run.state.replace(rng=rng)
    batch, metrics = run._collect(key)
    run.state, update_metrics = run.update(run.state, batch)
    jax.block_until_ready(run.state.params)
    times.append(time.perf_counter() - t0)
    lengths.append(metrics["response/length_mean"])
  run.checkpointer.close()
  return times[1:], times[0], float(np.mean(lengths))


def char_hf_tokenizer(char_tok: CharTokenizer, path: str):
  from tokenizers import Regex, Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
  vocab.update({c: i + 3 for i, c in enumerate(char_tok.alphabet)})
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                 eos_token="<eos>")
  fast.padding_side = "left"
  fast.save_pretrained(path)
  return fast


def trl(config, model_dir: str, workdir: str) -> tuple[list[float], float]:
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

  def reward(prompts, completions, **kwargs):
    del kwargs
    return [task.verify(by_prompt[p.replace("<bos>", "")], c.replace("<eos>", ""))
            for p, c in zip(prompts, completions)]

  step_times: list[float] = []

  class Timer(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
      self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
      step_times.append(time.perf_counter() - self.t0)

  args = GRPOConfig(
      output_dir=workdir, per_device_train_batch_size=groups * n // minibatches,
      gradient_accumulation_steps=1, steps_per_generation=minibatches, num_generations=n,
      max_completion_length=config.sampler.max_new_tokens, temperature=1.0, top_p=1.0,
      beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo", learning_rate=3e-4,
      max_steps=minibatches * (_STEPS.value + 1), use_cpu=True, report_to=[], logging_steps=10**6,
      save_strategy="no", bf16=False, shuffle_dataset=False, max_grad_norm=1.0, seed=0,
      dataloader_num_workers=0)
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                        processing_class=tokenizer, callbacks=[Timer()])
  trainer.train()
  per_rollout = [sum(step_times[i:i + minibatches]) for i in range(0, len(step_times), minibatches)]
  return per_rollout[1:], per_rollout[0]


def main(argv):
  del argv
  config = bench_config()
  with tempfile.TemporaryDirectory() as tmp:
    our_times, our_first, our_len = ours(config, os.path.join(tmp, "ours"))
    exp = experiment.resolve(config)
    hf.save(os.path.join(tmp, "model"), exp.model, init_params(exp.model, jax.random.PRNGKey(0)))
    trl_times, trl_first = trl(config, os.path.join(tmp, "model"), os.path.join(tmp, "trl"))
  ours_med, trl_med = statistics.median(our_times), statistics.median(trl_times)
  emit(benchmark="rl_step", figure="grpo_step_seconds_median", ours=ours_med, baseline=trl_med,
       ratio=ours_med / trl_med, speedup=trl_med / ours_med, unit="s", target="speedup >= 2",
       baseline_impl="trl GRPOTrainer", ours_all_s=our_times, baseline_all_s=trl_times,
       ours_first_step_s_incl_compile=our_first, baseline_first_step_s=trl_first,
       ours_mean_completion_len=our_len, prompts=config.rl.prompts_per_step,
       group_size=config.rl.group_size, minibatches=config.rl.num_minibatches,
       max_new_tokens=config.sampler.max_new_tokens, params=exp.model.num_params())

if __name__ == "__main__":
  app.run(main)
