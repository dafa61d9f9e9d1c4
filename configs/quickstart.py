r"""The embedded default: entropy collapse under GRPO, and what Clip-Cov / KL-Cov do to it.

A ~0.6M-parameter Qwen2-architecture decoder, trained from scratch on sum decomposition
(`123=` -> any `a+b` with a + b = 123: many correct answers per prompt, so entropy has
something to stand for). An SFT warm start on random correct decompositions gives the
policy real competence and real entropy; then GRPO (32 prompts x 8 samples, 4 mini-batches
per rollout, Adam 3e-4, token-mean PPO loss with eps 0.2).

One method (about 2-3 minutes on 2 CPU cores after a ~1 minute SFT, shared via sft.shared_dir):

  python experiments/train.py --config=configs/quickstart.py --workdir=/tmp/qs/grpo
  python experiments/train.py --config=configs/quickstart.py --workdir=/tmp/qs/clip_cov \
      --config.loss.name=clip_cov

The three-method comparison (the README's first command):

  python experiments/quickstart.py --workdir=/tmp/entropix_quickstart

Ratios are scaled to the batch: a rollout holds ~2k completion tokens, a mini-batch ~510, so
the paper's 2e-4 / 2e-3 would select 0-1 tokens per mini-batch (the max(1, .) floor makes them
no-ops here). Clip-Cov uses
0.02 with the paper's bounds [1, 5]; KL-Cov uses 0.2 with coef 1 (configs/law.py sweeps KL-Cov's
ratio, coefficient and mini-batches; docs/results.md has the measurements).
"""

import ml_collections

from entropix_rl.train.config_dict import default_config

PRESETS = ("runlocal",)


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The quickstart (module docstring); `configs/quickstart.py:runlocal` is a smoke run of
  about a minute (20 SFT steps, 4 RL steps of 8 prompts)."""
  if preset not in ("",) + PRESETS:
    raise ValueError(f"configs/quickstart.py:{preset}: unknown preset; allowed: {PRESETS}")
  config = default_config()  # every field at its default; set here is only what differs
  config.task.kwargs = {"min_n": 100, "max_n": 999}

  config.model.hidden_size = 128
  config.model.num_layers = 3
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.head_dim = 32
  config.model.intermediate_size = 384
  config.model.max_position_embeddings = 64
  config.model.tie_embeddings = True

  config.sampler.max_new_tokens = 10
  config.sampler.decode_segment = 64

  config.sft.steps = 350
  config.sft.optimizer.learning_rate = 1e-3
  config.sft.optimizer.warmup_steps = 20

  # No warm-up, as in the paper's recipes; docs/results.md shows the first update's drop.
  config.optimizer.learning_rate = 3e-4

  config.loss.clip_cov.ratio = 0.02
  config.loss.kl_cov.ratio = 0.2

  config.eval.every = 50
  config.eval.pass_k = (1, 8)

  if preset == "runlocal":
    config.sft.steps = 20
    config.rl.steps = 4
    config.rl.dynamics_every = 1  # a few steps: one update program, measuring each step
    config.rl.prompts_per_step = 8
    config.rl.num_minibatches = 2
    config.eval.every = 2
    config.eval.num_prompts = 16
    config.eval.num_samples = 4
    config.eval.pass_k = (1, 4)
    config.checkpoint.save_every = 2
    config.logging.console_every = 1
  return config
