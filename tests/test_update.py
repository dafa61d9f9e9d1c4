"""Gradient accumulation in the RL update and the SFT step: splitting a mini-batch into
micro-batches of rows or of packed tokens (and the no-grad passes into row chunks or packed
bins) gives the unsplit update, for every aggregation mode and every token selector.

The optimizer is SGD, so parameter differences are gradient differences (Adam would turn
round-off in near-zero gradients into lr-sized steps). Tolerances: 2e-5 on loss and gradient
norm, relative to the value where it exceeds 1 (float32 sums in another order); 1e-4 on the
parameters after 4 SGD steps of size 0.2, which compound that round-off; token picks exactly.
"""

import dataclasses
import functools
import types

import jax
import numpy as np
import optax
import pytest

from entropix_rl import interventions
from entropix_rl.interventions import aggregation
from entropix_rl.models import init_params
from entropix_rl.train import update as update_lib
from entropix_rl.train.config import RLConfig, SFTConfig
from entropix_rl.train.config_dict import apply_overrides
from entropix_rl.train.sft import jit_sft_step
from entropix_rl.train.state import create_train_state
from entropix_rl.train.update import UpdateSpec, jit_rl_update
from tests.synthetic import UPDATE_MODEL, max_abs_diff, rl_rows

MODEL = UPDATE_MODEL
GROUPS, GROUP_SIZE, PROMPT, COMPLETION = 4, 4, 5, 9
TOL = 2e-5
PARAM_TOL = 1e-4
TWO_SHARDS = types.SimpleNamespace(shape={"data": 2, "fsdp": 1, "tensor": 1})  # a mesh's shape


def _batch(seed=0):
  return rl_rows(MODEL.vocab_size, GROUPS, GROUP_SIZE, PROMPT, COMPLETION, seed=seed, left_pad=True)


def update_spec(
    loss_cfg,
    model=MODEL,
    *,
    groups=GROUPS,
    group_size=GROUP_SIZE,
    measure_dynamics=False,
    **rl,
):
  """The `UpdateSpec` of `groups` x `group_size` rows; `rl` sets other `RLConfig` fields (here
  one epoch of one mini-batch, in token chunks of 16, unless given)."""
  fields = dict(prompts_per_step=groups, group_size=group_size, num_minibatches=1, token_chunk=16)
  return UpdateSpec(
      model=model,
      rl=RLConfig(**{**fields, **rl}),
      loss=loss_cfg,
      measure_dynamics=measure_dynamics,
  )


def _update(loss_overrides, micro, chunk, epochs=2, dynamics=False, info=None, tokens=(0, 0)):
  loss_cfg = interventions.resolve_loss_config(
      apply_overrides(interventions.default_loss_config(), loss_overrides)
  )
  spec = update_spec(
      loss_cfg,
      ppo_epochs=epochs,
      num_minibatches=2,
      measure_dynamics=dynamics,
      micro_batch_size=micro,
      logprob_micro_batch_size=chunk,
      micro_batch_tokens=tokens[0],
      logprob_micro_batch_tokens=tokens[1],
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
  return jit_rl_update(spec, optimizer)(state, batch)


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


@functools.cache
def _run(setting, agg, micro=0, chunk=0, tokens=(0, 0)):
  """The update of a setting (`SETTINGS`), cached: the unsplit one is every test's reference."""
  dynamics = setting == "ppo" and agg == "token-mean"  # its chunked pass, once
  overrides = dict(SETTINGS[setting], agg=agg)
  return _update(overrides, micro, chunk, dynamics=dynamics, info=INFO.get(setting), tokens=tokens)


def _assert_same_update(setting, agg, **split):
  ref_state, ref = _run(setting, agg)
  state, got = _run(setting, agg, **split)
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
  keys += [k for k in ("dynamics/measured_entropy_change",) if k in ref]
  for key in keys:
    want = float(ref[key])
    assert abs(float(got[key]) - want) < TOL * max(1.0, abs(want)), (key, split)
  assert float(got["loss/n_selected_total"]) == float(ref["loss/n_selected_total"])
  assert max_abs_diff(state.params, ref_state.params) < PARAM_TOL
  assert max_abs_diff(state.interventions, ref_state.interventions) < TOL


@pytest.mark.parametrize("setting,agg", CASES)
def test_micro_batches_give_the_unsplit_update(setting, agg):
  splits = ((1, 2), (4, 0)) if setting in TWO_MICRO_BATCHES else ((1, 2),)
  for micro, chunk in splits:  # mini-batch: 8 rows, so 8 and 2 micro-batches
    _assert_same_update(setting, agg, micro=micro, chunk=chunk)
  ref_state, ref = _run(setting, agg)
  assert (
      max_abs_diff(ref_state.params, init_params(MODEL, jax.random.PRNGKey(0), init_std=0.2)) > 1e-2
  )
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


@pytest.mark.parametrize("setting,agg", CASES)
def test_packed_micro_batches_give_the_unpacked_update(setting, agg):
  """Rows of 14 slots (5 prompt, 1-9 completion tokens) in bins of 20 tokens: 1 or 2 rows per
  micro-step, 4 to 8 steps per mini-batch of 8 rows; the no-grad passes in bins of 28."""
  _assert_same_update(setting, agg, tokens=(20, 28))


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
  with pytest.raises(ValueError, match="rl.micro_batch_size and rl.micro_batch_tokens"):
    RLConfig(micro_batch_size=2, micro_batch_tokens=4096)
  with pytest.raises(ValueError, match="rl.logprob_micro_batch_tokens=-1"):
    RLConfig(logprob_micro_batch_tokens=-1)
  with pytest.raises(ValueError, match="rl.micro_batch_size=3 must divide"):
    RLConfig(
        prompts_per_step=GROUPS, group_size=GROUP_SIZE, num_minibatches=2, micro_batch_size=3
    ).check_shards(1)
  with pytest.raises(ValueError, match="rl.logprob_micro_batch_size=-1"):
    RLConfig(prompts_per_step=GROUPS, group_size=GROUP_SIZE, logprob_micro_batch_size=-1)
  loss_cfg = interventions.resolve_loss_config(interventions.default_loss_config())
  with pytest.raises(ValueError, match="must divide by the mesh's data x fsdp"):
    jit_rl_update(update_spec(loss_cfg, num_minibatches=16), optax.sgd(0.1), mesh=TWO_SHARDS)


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
    step = jit_sft_step(
        MODEL, optimizer, SFTConfig(batch_size=16, micro_batch_size=micro), token_chunk=16
    )
    results.append(step(state, sft))
  (ref_state, ref), *others = results
  for state, metrics in others:
    assert abs(float(metrics["sft/nll"]) - float(ref["sft/nll"])) < TOL
    assert max_abs_diff(state.params, ref_state.params) < PARAM_TOL
  with pytest.raises(ValueError, match="sft.micro_batch_size=3"):
    jit_sft_step(MODEL, optimizer, SFTConfig(batch_size=16, micro_batch_size=3))


def test_update_spec_is_hashable_for_jit():
  loss_cfg = interventions.resolve_loss_config(interventions.default_loss_config())
  spec = update_spec(loss_cfg, micro_batch_size=1)
  assert hash(spec) == hash(dataclasses.replace(spec))


def test_rl_update_is_a_plain_function_callable_without_jit():
  """The update's parts are module-level functions: `rl_update` runs eagerly too, and gives
  the jitted update's metrics."""
  loss_cfg = interventions.resolve_loss_config(interventions.default_loss_config())
  spec = update_spec(loss_cfg, num_minibatches=2, measure_dynamics=False)
  optimizer = optax.sgd(0.2)

  def fresh():
    params = init_params(MODEL, jax.random.PRNGKey(0), init_std=0.2)
    return create_train_state(params, optimizer, jax.random.PRNGKey(1))

  _, eager = update_lib.rl_update(spec, optimizer, fresh(), _batch())
  _, jitted = jit_rl_update(spec, optimizer)(fresh(), _batch())
  for key in ("loss/loss", "loss/pg_loss", "loss/grad_norm", "cov/mean"):
    assert float(eager[key]) == pytest.approx(float(jitted[key]), rel=1e-5, abs=1e-7), key
  behaviour = update_lib.behaviour_pass(spec, fresh(), _batch())
  assert behaviour["old_logp"].shape == _batch()["completion"].shape
  assert behaviour["old_entropy"] is None  # nothing reads it
