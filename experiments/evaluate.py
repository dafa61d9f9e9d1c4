r"""Evaluate a policy on benchmark files: avg@n and unbiased pass@k curves, JSON and a PNG.

  # a Hugging Face checkpoint on MATH-500 / AIME / AMC files (jsonl or parquet with
  # problem + answer fields, any case; MATH's solution with \boxed{} also works):
  python experiments/evaluate.py --checkpoint=/data/Qwen2.5-7B --data=/data/aime_2024.jsonl,\
/data/amc_2023.jsonl --n=32 --temperature=0.6 --max_new_tokens=8192 --out=/tmp/eval_7b

  # a training run's latest (or --step) checkpoint, on its task's eval split:
  python experiments/evaluate.py --workdir=/tmp/entropix_quickstart/grpo --n=16 \
      --out=/tmp/entropix_quickstart/grpo_eval

The sampling settings (--temperature, --top_p, --top_k, --max_new_tokens, --n) are separate
from training's. With --checkpoint every file is scored with math-verify on the last boxed
answer; with --workdir and no --data, the run's task verifier scores `--num_prompts` prompts of
its eval split. Writes `eval.json` (the settings, with the run's checkpoint step; per dataset:
avg@n, pass@k for k = 1, 2, 4, ..., n, mean length, time) and `pass_at_k.png` to --out,
printing progress with an ETA. A missing run, checkpoint or file is one line naming it. The quickstart
model on 128 eval prompts x 16 samples takes about 20 s on 2 CPU cores.
"""

import json
import os

from absl import app, flags

from entropix_rl import benchmark_eval, console, data, export, paths, plots, sampling, tasks
from entropix_rl import tokenizer as tokenizer_lib
from entropix_rl.models import hf
from entropix_rl.train import cli
from entropix_rl.train.checkpoint import CheckpointError
from entropix_rl.train.config import make_tokenizer

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A Hugging Face model directory.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer directory (default: --checkpoint).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run (its Orbax checkpoint).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: latest).")
_DATA = flags.DEFINE_list("data", [], "Benchmark files (.jsonl or .parquet).")
_NUM_PROMPTS = flags.DEFINE_integer(
    "num_prompts", 128, "Eval-split prompts of a generated task (--workdir only)."
)
_N = flags.DEFINE_integer("n", 16, "Samples per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.6, "Sampling temperature.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k (0 = off).")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", None, "Generation budget (default: the run's, or 4096)."
)
_MAX_PROMPT_LEN = flags.DEFINE_integer(
    "max_prompt_len", None, "Prompt budget (default: the run's, or 1024)."
)
_BATCH_PROMPTS = flags.DEFINE_integer("batch_prompts", 64, "Prompts sampled together.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUT = flags.DEFINE_string("out", None, "Output directory for eval.json and pass_at_k.png.")
flags.mark_flags_as_required(["out"])


def _datasets(task, config) -> dict[str, list]:
  if _DATA.value:
    return {os.path.basename(path): data.read_prompt_file(path) for path in _DATA.value}
  if config is None or not isinstance(task, tasks.GeneratedTask):
    raise app.UsageError("--data is required unless --workdir names a run on a generated task")
  return {
      f"{task.name}_eval": [task.example(config.seed, "eval", i) for i in range(_NUM_PROMPTS.value)]
  }


def _plot(results: dict, out: str) -> str:
  fig, (ax,) = plots.new_figure(6.0, 4.2)
  for name, result in results.items():
    ks = [int(k) for k in result["pass@k"]]
    ax.plot(ks, list(result["pass@k"].values()), marker="o", label=name)
  ax.set(xscale="log", xlabel="k", ylabel="pass@k (unbiased)", ylim=(0, 1.02))
  ax.set_xticks(ks, [str(k) for k in ks])
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = os.path.join(out, "pass_at_k.png")
  plots.save_figure(fig, path)
  return path


def _policy():
  """(model config, params, tokenizer, task, run config or None, checkpoint step or None)."""
  if _CHECKPOINT.value:
    model_cfg, params = hf.load(_CHECKPOINT.value)
    tokenizer = tokenizer_lib.load(_TOKENIZER.value or _CHECKPOINT.value)
    return model_cfg, params, tokenizer, tasks.get_task("math"), None, None
  policy = export.load_run_policy(_WORKDIR.value, _STEP.value)
  config = policy.config
  task = tasks.get_task(config.task.name, **config.task.kwargs)
  return policy.model, policy.params, make_tokenizer(config), task, config, policy.step


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  console.configure()
  if bool(_CHECKPOINT.value) == bool(_WORKDIR.value):
    raise app.UsageError("give exactly one of --checkpoint (Hugging Face) or --workdir (a run)")
  with cli.one_line_errors(FileNotFoundError, ValueError, CheckpointError):
    model_cfg, params, tokenizer, task, config, step = _policy()
    datasets = _datasets(task, config)
  max_new = _MAX_NEW_TOKENS.value or (config.sampler.max_new_tokens if config else 4096)
  max_prompt = _MAX_PROMPT_LEN.value or (config.data.max_prompt_len if config else 1024)
  sampler_cfg = sampling.SamplerConfig(
      temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value, max_new_tokens=max_new
  )
  results = {}
  for name, examples in datasets.items():
    result = benchmark_eval.evaluate_benchmark(
        model_cfg,
        params,
        examples,
        tokenizer,
        task.verify,
        sampler_cfg,
        n=_N.value,
        max_prompt_len=max_prompt,
        batch_prompts=_BATCH_PROMPTS.value,
        seed=_SEED.value,
        label=name,
    )
    results[name] = result
    print(
        json.dumps(
            {"dataset": name, **{k: v for k, v in result.items() if k != "per_prompt_correct"}}
        ),
        flush=True,
    )
  out = paths.as_path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  settings = {
      "temperature": _TEMPERATURE.value,
      "top_p": _TOP_P.value,
      "top_k": _TOP_K.value,
      "max_new_tokens": max_new,
      "n": _N.value,
      "seed": _SEED.value,
      "model": _CHECKPOINT.value or _WORKDIR.value,
      "checkpoint_step": step,  # the run's checkpoint scored (None for a Hugging Face model)
  }
  (out / "eval.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2))
  print(f"wrote {out / 'eval.json'} and {_plot(results, os.fspath(out))}")


if __name__ == "__main__":
  app.run(main)
