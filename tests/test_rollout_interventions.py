"""Rollout- and reward-side interventions (TTRL, EMPO, CURE, AEPO, HAPO's temperature) and the
rollout capabilities they use, against references written from their formulas (the jnp formulas
with and without jit, chex variants; the host-side NumPy ones as they are); and each preset run
end to end for two RL steps."""

import dataclasses
import functools

import chex
import jax.numpy as jnp
import numpy as np
from preset_runs import train_two_steps
import pytest

from configs import interventions as presets
from entropix_rl import interventions
from entropix_rl.interventions import aepo, cure, empo, hapo, hapo_temperature, rollout_ops, ttrl
from entropix_rl.train.rollout import Responses


def _cfg(**overrides):
  cfg = interventions.default_loss_config()
  for key, value in overrides.items():
    node = cfg
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return interventions.resolve_loss_config(cfg)


def _responses(rows=6, width=4, budget=5, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, budget + 1, rows)
  mask = np.arange(budget)[None] < lengths[:, None]
  return Responses(
      prompt_tokens=np.tile(np.arange(3, 3 + width, dtype=np.int32), (rows, 1)),
      prompt_lengths=np.full(rows, width, np.int32),
      completion_tokens=np.where(mask, rng.integers(3, 20, (rows, budget)), 0).astype(np.int32),
      completion_mask=mask,
      logp=-rng.random((rows, budget)).astype(np.float32),
      entropy=rng.random((rows, budget)).astype(np.float32),
      truncated=np.zeros(rows, bool),
      group_ids=np.repeat(np.arange(rows // 3), 3).astype(np.int32),
      examples=[None] * rows,
      texts=[f"t{i}" for i in range(rows)],
      rewards=np.zeros(rows, np.float32),
      correct=np.zeros(rows, bool),
  )


# ------------------------------------------------------------------ capabilities


def test_window_mean_covers_the_tokens_after_each_position():
  values = np.arange(6, dtype=np.float32)[None].repeat(2, 0)
  mask = np.ones((2, 6), bool)
  mask[1, 4:] = False
  got = rollout_ops.window_mean(values, mask, 2)
  np.testing.assert_allclose(got[0, :4], [1.5, 2.5, 3.5, 4.5])
  assert np.isnan(got[0, 4:]).all() and np.isnan(got[1, 2:]).all()
  np.testing.assert_allclose(got[1, :2], [1.5, 2.5])


def test_branch_prompts_append_the_prefix_and_regenerate_the_cut_token():
  r = _responses()
  tokens, lengths = rollout_ops.branch_prompts(
      r, np.array([0, 1]), np.array([2, 0]), min_bucket=4, pad_id=0
  )
  assert tokens.shape[1] == 8 and list(lengths) == [6, 4]
  np.testing.assert_array_equal(
      tokens[0, -6:], np.concatenate([r.prompt_tokens[0, :], r.completion_tokens[0, :2]])
  )
  np.testing.assert_array_equal(tokens[1, -4:], r.prompt_tokens[1])
  with pytest.raises(ValueError, match="cuts"):
    rollout_ops.branch_prompts(r, np.array([0]), np.array([99]), min_bucket=4, pad_id=0)


def test_majority_labels_and_cluster_fractions():
  keys = ["a", "b", "a", None, None, "c"]
  groups = np.array([0, 0, 0, 1, 1, 1])
  assert rollout_ops.majority_labels(keys, groups) == {0: "a", 1: "c"}
  np.testing.assert_allclose(
      rollout_ops.cluster_fractions(keys, groups), [2 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3]
  )


# ------------------------------------------------------------------ TTRL, EMPO


def test_ttrl_rewards_agreement_with_the_vote_winner():
  votes = ["12+3", "15", "12+3", "7+8", None, None]
  values = [15, 15, 15, 15, None, None]  # every answer of group 0 is worth 15
  groups = np.array([0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(
      ttrl.pseudo_label_rewards(votes, values, groups), [1, 1, 1, 1, 0, 0]
  )
  np.testing.assert_array_equal(ttrl.pseudo_label_rewards(votes, votes, groups), [1, 0, 1, 1, 0, 0])


def test_ttrl_keeps_the_first_group_size_rows():
  r = _responses(rows=8)
  r = dataclasses.replace(r, group_ids=np.repeat([0, 1], 4).astype(np.int32))
  ctx = type("Ctx", (), {"group_size": 2, "answer_keys": lambda self, rs, mode: list(rs.texts)})()
  out = ttrl.ttrl_rollout(_cfg(**{"ttrl.enabled": True, "ttrl.n_vote": 4}), r, ctx, None)
  assert out.rows == 4 and out.texts == ["t0", "t1", "t4", "t5"]


def test_empo_rewards_are_cluster_shares():
  keys = ["x", "x", "y", None]
  groups = np.zeros(4, int)
  got = empo.cluster_rewards(keys, groups, empty_reward="singleton", zero_max_entropy=False)
  np.testing.assert_allclose(got, [0.5, 0.5, 0.25, 0.25])
  # Σ_i r_i = G Σ_c p_c², counting the answerless response as a singleton.
  assert got.sum() == pytest.approx(4 * (0.5**2 + 0.25**2 + 0.25**2))
  np.testing.assert_allclose(
      empo.cluster_rewards(keys, groups, empty_reward="zero", zero_max_entropy=False),
      [0.5, 0.5, 0.25, 0],
  )
  distinct = empo.cluster_rewards(
      ["a", "b"], np.zeros(2, int), empty_reward="singleton", zero_max_entropy=True
  )
  np.testing.assert_array_equal(distinct, [0, 0])


# ------------------------------------------------------------------ CURE


def test_cure_critical_positions_are_high_entropy_non_stop_tokens():
  entropy = np.array([[5.0, 1.0, 3.0, 2.0, 9.0]])
  mask = np.array([[True, True, True, True, False]])
  tokens = np.array([[4, 2, 5, 6, 0]])  # 2 is a stop token
  rng = np.random.default_rng(0)
  picks = {int(cure.critical_positions(entropy, mask, tokens, (2,), 2, rng)[0]) for _ in range(50)}
  assert picks == {2, 3}  # position 0, the stop token and padding never
  none = cure.critical_positions(entropy, np.zeros_like(mask), tokens, (2,), 2, rng)
  assert none[0] == 0


# ------------------------------------------------------------------ AEPO


class AEPOTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_aepo_temperature_switches_at_the_target(self):
    cfg = _cfg(**{"aepo.enabled": True, "aepo.target": 0.5})
    temperature = self.variant(lambda state: aepo.aepo_temperature(cfg, state))
    assert float(temperature({"entropy": jnp.float32(0.2)})) == pytest.approx(1.2)
    assert float(temperature({"entropy": jnp.float32(0.7)})) == pytest.approx(0.8)

  @chex.variants(with_jit=True, without_jit=True)
  def test_aepo_advantages_leave_marked_rows_out(self):
    rewards = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    marked = jnp.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    groups = jnp.array([0, 0, 0, 1, 1, 1])
    mask = jnp.ones((6, 2))
    batch = interventions.TokenBatch(
        logp=jnp.zeros((6, 2)),
        old_logp=jnp.zeros((6, 2)),
        advantages=jnp.zeros((6, 2)),
        mask=mask,
        rewards=rewards,
        group_ids=groups,
        info={aepo.FLAG: marked},
    )
    config = _cfg()
    advantages = self.variant(lambda b: aepo.aepo_advantages(config, b, None, None))
    adv = np.asarray(advantages(batch))[:, 0]
    assert adv[0] == 0
    np.testing.assert_allclose(adv[1:3], [-0.7071, 0.7071], atol=1e-3)  # {0, 1}, ddof 1
    np.testing.assert_allclose(adv[3:], [1.1547, -0.5774, -0.5774], atol=1e-3)


# ------------------------------------------------------------------ HAPO temperature


class HAPOTemperatureTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hapo_temperature_rule_heats_high_and_cools_low_entropy_rows(self):
    cfg = _cfg(**{"hapo_temperature.enabled": True, "hapo_temperature.tau": 0.5})
    rule = self.variant(hapo_temperature.temperature_rule(cfg))
    # uniform (highest entropy), in between, near one-hot (lowest)
    logits = jnp.stack([jnp.zeros(16), jnp.arange(16.0) * 0.3, jnp.arange(16.0) * 5.0])
    state = dict(hapo_temperature._init_state(cfg))
    np.testing.assert_allclose(rule(logits, jnp.float32(1.0), state), [1.0] * 3)  # not ready
    entropy = self.variant(hapo_temperature.live_entropy)(logits, 1.0)
    statistics = self.variant(functools.partial(hapo.score_statistics, pivot=0.5))
    stats = statistics(entropy[None], jnp.ones((1, 3)))  # centre: the middle
    temps = np.asarray(rule(logits, jnp.float32(1.0), dict(stats, ready=jnp.bool_(True))))
    np.testing.assert_allclose(temps, [1.5, 1.0, 0.5], rtol=1e-5)


# ------------------------------------------------------------------ end to end


@pytest.mark.parametrize("preset", ["ttrl", "empo", "cure_two_stage", "aepo", "hapo_temperature"])
def test_preset_trains_two_steps(tmp_path, preset):
  config = presets.get_config(preset)
  if preset == "cure_two_stage":
    config.loss.cure.stage1_steps = 1  # step 1 branches, step 2 samples plainly
  history = train_two_steps(config, str(tmp_path))
  if preset == "aepo":
    assert "aepo/next_temperature" in history[-1]
