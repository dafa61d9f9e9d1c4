"""Gradient accumulation in the RL update and the SFT step: splitting a mini-batch into
micro-batches (and the no-grad passes into row chunks) gives the unsplit update, for every
aggregation mode and every token selector.

The optimizer is SGD, so parameter differences are gradient differences (Adam would turn
round-off in near-zero gradients into lr-sized steps). Tolerances: 2e-5 on loss and gradient
norm, relative to the value where it exceeds 1 (float32 sums in another order); 1e-4 on the
parameters after 4 SGD steps of size 0.2, which compound that round-off; token picks exactly.
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from entropix_rl import interventions
from entropix_rl.config_overrides import apply_overrides
from entropix_rl.interventions import aggregation
from entropix_rl.models import init_params, tiny_config
from entropix_rl.train.rl_step import RLUpdateConfig, make_rl_update
from entropix_rl.train.sft_step import make_sft_step
from entropix_rl.train.state import create_train_state

MODEL = tiny_config(
    vocab_size=32,
    hidden_size=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    intermediate_size=64,
    max_position_embeddings=64,
)
GROUPS, GROUP_SIZE, PROMPT, COMPLETION = 4, 4, 5, 9
TOL = 2e-5
PARAM_TOL = 1e-4


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  n = GROUPS * GROUP_SIZE
  prompt = rng.integers(3, MODEL.vocab_size, (n, PROMPT)).astype(np.int32)
  completion = rng.integers(3, MODEL.vocab_size, (n, COMPLETION)).astype(np.int32)
  lengths = rng.integers(1, COMPLETION + 1, n)
  cmask = (np.arange(COMPLETION)[None] < lengths[:, None]).astype(np.float32)
  pmask = np.ones((n, PROMPT), bool)
  pmask[::3, :2] = False  # some left padding
  return {
      "tokens": np.concatenate([np.where(pmask, prompt, 0), completion], 1),
      "attention_mask": np.concatenate([pmask, cmask > 0], 1),
      "completion": completion,
      "completion_mask": cmask,
      "rewards": rng.integers(0, 2, n).astype(np.float32),
      "group_ids": np.repeat(np.arange(GROUPS), GROUP_SIZE).astype(np.int32),
  }


def _update(loss_overrides, micro, chunk, epochs=2, dynamics=False, info=None):
  loss_cfg = interventions.resolve_loss_config(
      apply_overrides(interventions.default_loss_config(), loss_overrides)
  )
  rl_cfg = RLUpdateConfig(
      num_groups=GROUPS,
      group_size=GROUP_SIZE,
      ppo_epochs=epochs,
      num_minibatches=2,
      token_chunk=16,
      measure_dynamics=dynamics,
      micro_batch_size=micro,
      logprob_micro_batch_size=chunk,
  )
  optimizer = optax.sgd(0.2)
  params = init_params(MODEL, jax.random.PRNGKey(0), init_std=0.2)
  state = create_train_state(
      params,
      optimizer,
      jax.random.PRNGKey(1),
      interventions=interventions.init_states(loss_cfg),
      ref_params=jax.tree.map(np.array, params),
  )
  batch = _batch() if info is None else dict(_batch(), info=info(GROUPS * GROUP_SIZE))
  return make_rl_update(MODEL, rl_cfg, loss_cfg, optimizer)(state, batch)


def _max_diff(a, b):
  return max(
      (
          float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
      ),
      default=0.0,
  )


SETTINGS = {
    "ppo": {},
    "clip_higher_dual": {"clip_eps_high": 0.28, "dual_clip_c": 3.0},
    "clip_cov": {
        "name": "clip_cov",
        "clip_cov.ratio": 0.1,
        "clip_cov.lb": -1e9,
        "clip_cov.ub": 1e9,
    },
    "kl_cov": {"name": "kl_cov", "kl_cov.ratio": 0.1},
    "high_entropy_tokens": {"name": "high_entropy_tokens"},
    "bonus_kl_ref": {"entropy_bonus.coef": 0.01, "kl_ref.coef": 0.1},
    "adaptive_bonus": {"entropy_bonus.adaptive": True, "entropy_bonus.coef": 0.003},
    "entropy_advantage": {"entropy_advantage.enabled": True},
    "empg": {"empg.enabled": True},
    "epo": {"epo.enabled": True, "epo.coef": 0.05, "epo.min_ratio": 0.95, "epo.max_ratio": 1.05},
    "ce_gppo": {"name": "gppo", "gppo.positive_nll_coef": 0.1, "dual_clip_c": 3.0},
    "gspo": {"name": "gspo", "gspo.clip_eps_low": 0.02, "gspo.clip_eps_high": 0.03},
    "cispo": {"name": "cispo"},
    "hapo": {"name": "hapo", "dual_clip_c": 3.0},
    "hapo_token_advantage": {"name": "hapo", "hapo_token_advantage.enabled": True},
    "aepo_agentic": {"name": "aepo_agentic", "dual_clip_c": 3.0},
    "ettrl_ear": {"ettrl.enabled": True, "ettrl.ear": True, "ettrl.ear_power": 2.0},
    "ares": {"ares.enabled": True, "ares.kl_coef": 0.1},
    # STEER: scope statistics (m_min, m_max) from a planning pass, old entropy from the
    # behaviour pass.
    "steer": {"name": "steer"},
    "steer_linear": {"name": "steer", "steer.mode": "linear", "steer.lambda_max": 1.2},
    # Lp-Reg: an old logit feature (the min-p proxy) and picks from a planning pass; κ = 0.3
    # filters enough of this tiny model's flat distributions for the proxy to exceed ℓ.
    "lp_reg": {"name": "lp_reg", "lp_reg.ratio": 1.0, "lp_reg.kappa": 0.3},
    # SIREN: a differentiable current logit feature, per-row picks, a loss non-linear in an
    # aggregate (replayed from the planning pass) and an anchor set by a state hook.
    "siren": {"siren.enabled": True, "siren.coef": 0.5},
    "siren_plain": {"siren.enabled": True, "siren.coef": 0.5, "siren.anchored": False},
}
# Per-row `info` that a setting's interventions read (written by their rollout side).
INFO = {
    "ares": lambda n: {
        "ares_difficulty": np.arange(n, dtype=np.int32) // GROUP_SIZE % 3,
        "ares_hwe_count": np.arange(n, dtype=np.float32) % 5,
        "ares_window_p95": np.linspace(0.5, 2.0, n, dtype=np.float32),
    }
}


CASES = [(name, "token-mean") for name in sorted(SETTINGS)] + [
    (name, agg) for name in ("ppo", "siren") for agg in aggregation.AGG_MODES[1:]
]
# Every setting is checked with 8 micro-batches of 1 row and no-grad chunks of 2; these also
# with 2 micro-batches of 4 and unchunked no-grad passes (one selector of each kind, the
# non-linear aggregate, and the plain loss), to keep the suite's time.
TWO_MICRO_BATCHES = ("ppo", "clip_cov", "kl_cov", "high_entropy_tokens", "siren", "steer")


@pytest.mark.parametrize("setting,agg", CASES)
def test_micro_batches_give_the_unsplit_update(setting, agg):
  overrides = dict(SETTINGS[setting], agg=agg)
  dynamics = setting == "ppo" and agg == "token-mean"  # its chunked pass, once
  info = INFO.get(setting)
  ref_state, ref = _update(overrides, micro=0, chunk=0, dynamics=dynamics, info=info)
  splits = ((1, 2), (4, 0)) if setting in TWO_MICRO_BATCHES else ((1, 2),)
  for micro, chunk in splits:  # mini-batch: 8 rows, so 8 and 2 micro-batches
    state, got = _update(overrides, micro=micro, chunk=chunk, dynamics=dynamics, info=info)
    keys = [
        "loss/loss",
        "loss/pg_loss",
        "loss/grad_norm",
        "loss/clip_frac",
        "entropy/sampled_nll",
        "loss/off_policy_abs_log_ratio",
        "loss/selected_abs_log_ratio",
    ]
    keys += [k for k in ("loss/ares_kl", "loss/entropy_bonus", "loss/kl_ref") if k in ref]
    keys += [k for k in ("loss/siren", "siren/anchor", "siren/rollout_peak_entropy") if k in ref]
    for key in keys + ["dynamics/measured_entropy_change"] * dynamics:
      want = float(ref[key])
      assert abs(float(got[key]) - want) < TOL * max(1.0, abs(want)), (key, micro, chunk)
    assert float(got["loss/n_selected_total"]) == float(ref["loss/n_selected_total"])
    assert _max_diff(state.params, ref_state.params) < PARAM_TOL
    assert _max_diff(state.interventions, ref_state.interventions) < TOL
  assert _max_diff(ref_state.params, init_params(MODEL, jax.random.PRNGKey(0), init_std=0.2)) > 1e-2
  if setting in ("clip_cov", "kl_cov", "high_entropy_tokens", "lp_reg"):
    assert float(ref["loss/n_selected_total"]) > 0
  if setting == "kl_cov":  # the later mini-batches have moved off the rollout's policy
    assert (
        0 < float(ref["loss/off_policy_abs_log_ratio"]) < float(ref["loss/selected_abs_log_ratio"])
    )
  if setting == "siren":  # the anchor is set from the first rollout and the term acts
    assert bool(ref_state.interventions["siren"]["anchor_set"])
    assert float(ref["siren/anchor"]) == pytest.approx(float(ref["siren/rollout_peak_entropy"]))
    assert float(ref["loss/siren"]) > 0


def test_planning_pass_runs_only_when_an_intervention_needs_it():
  cfg = lambda **o: interventions.resolve_loss_config(
      apply_overrides(interventions.default_loss_config(), o)
  )
  assert not interventions.needs_planning_pass(cfg())
  assert not interventions.needs_planning_pass(cfg(**{"entropy_bonus.coef": 0.01}))
  for name in ("clip_cov", "kl_cov", "high_entropy_tokens", "steer", "lp_reg"):
    assert interventions.needs_planning_pass(cfg(name=name))
  assert interventions.needs_planning_pass(cfg(**{"siren.enabled": True}))


def test_microbatch_scope_selects_per_chunk_as_verl():
  """selection_scope='microbatch': each chunk of `microbatch_size` rows picks on its own, so
  KL-Cov picks max(1, floor(ρ·N_chunk)) per chunk (here 8 chunks of 2 rows per epoch)."""
  _, whole = _update({"name": "kl_cov", "kl_cov.ratio": 0.1}, micro=2, chunk=0, epochs=1)
  _, micro = _update(
      {
          "name": "kl_cov",
          "kl_cov.ratio": 0.1,
          "selection_scope": "microbatch",
          "microbatch_size": 2,
      },
      micro=2,
      chunk=0,
      epochs=1,
  )
  assert float(micro["loss/n_selected_total"]) > float(whole["loss/n_selected_total"])
  assert float(micro["loss/n_selected_total"]) >= 8  # at least one per chunk


def test_bad_micro_batch_sizes_name_the_field():
  with pytest.raises(ValueError, match="rl.micro_batch_size=3 must divide"):
    RLUpdateConfig(
        num_groups=GROUPS, group_size=GROUP_SIZE, num_minibatches=2, micro_batch_size=3
    ).check_shards(1)
  with pytest.raises(ValueError, match="rl.logprob_micro_batch_size=-1"):
    RLUpdateConfig(num_groups=GROUPS, group_size=GROUP_SIZE, logprob_micro_batch_size=-1)


def test_sft_micro_batches_give_the_unsplit_step():
  batch = _batch(3)
  sft = {
      "tokens": batch["tokens"],
      "attention_mask": batch["attention_mask"],
      "loss_mask": np.concatenate(
          [np.zeros((16, PROMPT), np.float32), batch["completion_mask"]], 1
      ),
  }
  optimizer = optax.sgd(0.5)
  results = []
  for micro in (0, 1, 4):
    state = create_train_state(
        init_params(MODEL, jax.random.PRNGKey(0), init_std=0.2), optimizer, jax.random.PRNGKey(1)
    )
    step = make_sft_step(MODEL, optimizer, token_chunk=16, micro_batch_size=micro, batch_size=16)
    results.append(step(state, sft))
  (ref_state, ref), *others = results
  for state, metrics in others:
    assert abs(float(metrics["sft/nll"]) - float(ref["sft/nll"])) < TOL
    assert _max_diff(state.params, ref_state.params) < PARAM_TOL
  with pytest.raises(ValueError, match="sft.micro_batch_size=3"):
    make_sft_step(MODEL, optimizer, micro_batch_size=3, batch_size=16)


def test_update_config_is_hashable_for_jit():
  cfg = RLUpdateConfig(num_groups=2, group_size=2, micro_batch_size=1)
  assert hash(cfg) == hash(dataclasses.replace(cfg))
