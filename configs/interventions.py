r"""Every entropy intervention as a named preset on the embedded task (configs/quickstart.py).

The text after ':' picks a preset; each is the quickstart config (sum decomposition, a 0.6M
decoder, SFT warm start, 300 GRPO steps of 32 prompts x 8 samples) with the intervention's
settings on top:

  python experiments/train.py --config=configs/interventions.py:steer --workdir=/tmp/zoo/steer \
      --config.sft.shared_dir=..

About 2-3 minutes per preset on 2 CPU cores after the shared SFT warm start (about 1 minute).
`PRESETS` below lists them with their settings: each method runs at its authors' default
scaled to this batch (a rollout holds about 1.5k completion tokens), and docs/interventions.md
says, per method, where a default had to be scaled or made to act at this size.
"""

import os
import sys

import ml_collections

# Binaries load config files by path, so make the sibling quickstart importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import quickstart
from entropix_rl.train.config_dict import apply_overrides

# name -> dotted overrides of the quickstart config.
PRESETS: dict[str, dict] = {
    "grpo": {"loss.name": "ppo"},
    "clip_higher": {"loss.name": "ppo", "loss.clip_eps_high": 0.28},
    "entropy_bonus": {"loss.entropy_bonus.coef": 0.005},
    "adaptive_entropy": {
        "loss.entropy_bonus.adaptive": True,
        "loss.entropy_bonus.target": 0.2,
        "loss.entropy_bonus.max_coef": 0.005,
    },
    "high_entropy_tokens": {
        "loss.name": "high_entropy_tokens",
        "loss.high_entropy_tokens.ratio": 0.2,
    },
    "entropy_advantage": {"loss.entropy_advantage.enabled": True},
    "clip_cov": {"loss.name": "clip_cov", "loss.clip_cov.ratio": 0.02},
    "kl_cov": {"loss.name": "kl_cov", "loss.kl_cov.ratio": 0.2, "loss.kl_cov.coef": 1.0},
    "empg": {"loss.empg.enabled": True},
    "empg_steps": {"loss.empg.enabled": True, "rl.step_delimiter": "+"},
    "epo": {"loss.epo.enabled": True},
    "seed_grpo": {"loss.seed_grpo.enabled": True, "rl.cluster_by": "value"},
    "seed_grpo_exact": {"loss.seed_grpo.enabled": True, "rl.cluster_by": "exact_string"},
    "gppo": {
        "loss.name": "gppo",
        "loss.gppo.beta1": 1.0,
        "loss.gppo.beta2": 1.0,
        "loss.dual_clip_c": 10.0,
    },
    "ce_gppo": {
        "loss.name": "gppo",
        "loss.gppo.beta1": 0.75,
        "loss.gppo.beta2": 1.0,
        "loss.gppo.positive_nll_coef": 0.1,
        "loss.dual_clip_c": 10.0,
    },
    "gspo": {
        "loss.name": "gspo",
        "loss.agg": "seq-mean-token-mean",
        "loss.gspo.clip_eps_low": 3e-4,
        "loss.gspo.clip_eps_high": 4e-4,
    },
    "cispo": {
        "loss.name": "cispo",
        "loss.cispo.clip_eps_low": 1.0,
        "loss.cispo.clip_eps_high": 0.2,
    },
    "hapo": {"loss.name": "hapo", "loss.dual_clip_c": 10.0},
    "hapo_token_advantage": {
        "loss.name": "hapo",
        "loss.dual_clip_c": 10.0,
        "loss.hapo_token_advantage.enabled": True,
    },
    "ttrl": {"loss.ttrl.enabled": True, "loss.ttrl.n_vote": 16},
    "ttrl_value": {"loss.ttrl.enabled": True, "loss.ttrl.n_vote": 16, "loss.ttrl.vote_by": "value"},
    "empo": {"loss.empo.enabled": True, "loss.empo.cluster_by": "value"},
    "empo_exact": {"loss.empo.enabled": True, "loss.empo.cluster_by": "exact_string"},
    "cure": {"loss.cure.enabled": True, "loss.cure.n1": 2, "loss.cure.n2": 3},
    "cure_two_stage": {
        "loss.cure.enabled": True,
        "loss.cure.n1": 2,
        "loss.cure.n2": 3,
        "loss.cure.stage1_steps": 150,
    },
    "aepo": {"loss.aepo.enabled": True, "loss.aepo.target": 0.3},
    "hapo_temperature": {"loss.hapo_temperature.enabled": True},
    "ettrl": {"loss.ettrl.enabled": True, "model.max_position_embeddings": 64},
    "ettrl_ear": {
        "loss.ettrl.enabled": True,
        "loss.ettrl.ear": True,
        "model.max_position_embeddings": 64,
    },
    "aepo_agentic": {
        "loss.name": "aepo_agentic",
        "loss.aepo_agentic.branching": True,
        "rl.step_delimiter": "+",
        "loss.dual_clip_c": 3.0,
        "model.max_position_embeddings": 64,
    },
    "aepo_agentic_loss": {"loss.name": "aepo_agentic", "loss.dual_clip_c": 3.0},
    "ares": {
        "loss.ares.enabled": True,
        "loss.ares.window": 2,
        "rl.use_reference": True,
        "loss.clip_eps_high": 0.3,
        "loss.dual_clip_c": 3.0,
    },
    "steer": {"loss.name": "steer", "loss.steer.mode": "exp", "loss.steer.lambda_min": 0.8},
    "steer_linear": {
        "loss.name": "steer",
        "loss.steer.mode": "linear",
        "loss.steer.lambda_min": 0.8,
        "loss.steer.lambda_max": 1.2,
    },
    "lp_reg": {
        "loss.name": "lp_reg",
        "loss.lp_reg.ratio": 0.1,
        "loss.lp_reg.kappa": 0.02,
        "loss.lp_reg.coef": 1.0,
    },
    "siren": {"loss.siren.enabled": True, "loss.siren.coef": 0.005},
    # SIREN's 0.005 is a no-op at this size (the peak top-p entropy falls from 1.45 to ~0.01 in
    # 25 steps, as without it); 0.05 holds it for ~100 steps; 0.2 and 0.5 wreck the policy.
    "siren_acting": {"loss.siren.enabled": True, "loss.siren.coef": 0.05},
}


# The comparison (docs/results.md): one preset per method, plus a variant that acts at this scale
# where the authors' default does not. Equal budget for every run.
ZOO = (
    "grpo",
    "clip_higher",
    "entropy_bonus",
    "adaptive_entropy",
    "high_entropy_tokens",
    "entropy_advantage",
    "clip_cov",
    "kl_cov",
    "steer",
    "lp_reg",
    "siren",
    "empg",
    "epo",
    "hapo",
    "gppo",
    "ce_gppo",
    "seed_grpo",
    "gspo",
    "cispo",
    "aepo",
    "aepo_agentic",
    "hapo_temperature",
    "ares",
    "cure",
    "empo",
    "ttrl",
    "ettrl",
)
ZOO_SEEDS = (0, 1, 2)
ZOO_BUDGET = {
    "rl.steps": 100,
    "eval.every": 20,
    "eval.num_prompts": 64,
    "eval.num_samples": 64,
    "eval.pass_k": (1, 2, 4, 8, 16, 32, 64),
}


def get_zoo_sweep() -> list[dict]:
  """Every intervention at an equal budget, 3 seeds each, sharing one SFT warm start:

    python launch/sweep.py --config=configs/interventions.py --sweep=get_zoo_sweep \
        --workdir=/tmp/zoo --mode=local --jobs=2 --config.sft.shared_dir=..
    python experiments/compare_zoo.py --workdirs=/tmp/zoo --out=/tmp/zoo/compare

  84 runs; 1 h 45 min with --jobs=2 on 2 CPU cores (docs/results.md, "Every intervention side
  by side"): 1.5 minutes (GRPO) to 6 minutes (AEPO-agentic) per run alone.
  """
  names = [name for name in ZOO if name in PRESETS]
  names += [name for name in PRESETS if name.endswith("_acting")]
  return [
      dict(ZOO_BUDGET, **PRESETS[name], method=name, seed=seed, _name=f"{name}_seed{seed}")
      for name in names
      for seed in ZOO_SEEDS
  ]


def get_config(arg: str = "grpo") -> ml_collections.ConfigDict:
  """The quickstart config with preset `arg` (one of `PRESETS`) applied."""
  name = arg or "grpo"
  if name not in PRESETS:
    raise ValueError(
        f"configs/interventions.py:{name!r}: unknown preset; allowed: " f"{tuple(PRESETS)}"
    )
  config = apply_overrides(quickstart.get_config(), PRESETS[name])
  config.method = name
  return config
