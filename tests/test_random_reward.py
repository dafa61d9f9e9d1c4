"""The random-reward control (`loss.random_reward`): the Bernoulli draw (with and without jit,
chex variants), the rollout hook, and its clip-bounds config."""

from absl.testing import parameterized
import chex
import jax
import numpy as np
from preset_runs import train_two_steps
import pytest

from configs import clip_bounds
from entropix_rl import interventions
from entropix_rl.interventions import random_reward
from entropix_rl.train.rollout import Responses


def _responses(rows):
  mask = np.ones((rows, 3), bool)
  return Responses(
      prompt_tokens=np.full((rows, 2), 3, np.int32),
      prompt_lengths=np.full(rows, 2, np.int32),
      completion_tokens=np.full((rows, 3), 4, np.int32),
      completion_mask=mask,
      logp=np.zeros((rows, 3), np.float32),
      entropy=np.zeros((rows, 3), np.float32),
      truncated=np.zeros(rows, bool),
      group_ids=np.repeat(np.arange(rows // 4), 4),
      examples=[None] * rows,
      texts=["t"] * rows,
      rewards=np.ones(rows, np.float32),
      correct=np.ones(rows, bool),
  )


def _cfg(p):
  cfg = interventions.default_loss_config()
  cfg.random_reward.enabled = True
  cfg.random_reward.p = p
  return interventions.resolve_loss_config(cfg)


class BernoulliRewardsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("never", 0.0), ("quarter", 0.25), ("half", 0.5), ("always", 1.0))
  def test_bernoulli_rewards_are_a_function_of_the_key(self, p):
    draw = self.variant(random_reward.bernoulli_rewards, static_argnums=1)
    key = jax.random.PRNGKey(3)
    rewards = np.asarray(draw(key, 4000, p))
    assert rewards.shape == (4000,) and rewards.dtype == np.float32
    assert set(np.unique(rewards)) <= {0.0, 1.0}
    assert abs(rewards.mean() - p) < 0.03
    np.testing.assert_array_equal(rewards, np.asarray(draw(key, 4000, p)))
    other = np.asarray(draw(jax.random.PRNGKey(4), 4000, p))
    assert np.array_equal(rewards, other) == (p in (0.0, 1.0))
    # the rollout draws them from its key
    ctx = type("Ctx", (), {"key": key})()
    out = random_reward.random_reward_rollout(_cfg(p), _responses(4000), ctx, None)
    np.testing.assert_array_equal(out.rewards, draw(jax.random.fold_in(key, 41), 4000, p))


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_rewards_are_bernoulli_and_independent_of_correctness(p):
  ctx = type("Ctx", (), {"key": jax.random.PRNGKey(3)})()
  out = random_reward.random_reward_rollout(_cfg(p), _responses(4000), ctx, None)
  assert set(np.unique(out.rewards)) <= {0.0, 1.0}
  assert abs(out.rewards.mean() - p) < 0.03
  assert out.correct.all()  # the verifier's judgement is kept for the accuracy metrics
  again = random_reward.random_reward_rollout(_cfg(p), _responses(4000), ctx, None)
  np.testing.assert_array_equal(out.rewards, again.rewards)  # a function of the key
  other = type("Ctx", (), {"key": jax.random.PRNGKey(4)})()
  if 0 < p < 1:
    assert not np.array_equal(
        out.rewards,
        random_reward.random_reward_rollout(_cfg(p), _responses(4000), other, None).rewards,
    )


def test_bad_probability_names_the_field():
  with pytest.raises(ValueError, match=r"loss.random_reward.p=1.5"):
    _cfg(1.5)


def test_clip_bounds_config_and_sweep(tmp_path):
  sweep = clip_bounds.get_sweep()
  assert len(sweep) == len(clip_bounds.BOUNDS) * len(clip_bounds.SEEDS)
  with pytest.raises(ValueError, match="unknown bounds; allowed"):
    clip_bounds.get_config("loose")
  config = clip_bounds.get_config("tight_low")
  assert (config.loss.clip_eps_low, config.loss.clip_eps_high) == (0.1, 0.2)
  assert config.loss.random_reward.enabled
  train_two_steps(config, str(tmp_path))  # asserts two finite steps
