"""Advantage estimators against NumPy references written from the formulas (and verl's loops),
each with and without jit (chex variants)."""

from absl.testing import parameterized
import chex
import numpy as np
import pytest

from entropix_rl import advantages as adv

# Groups of sizes 3, 1 (singleton), 4 and 2, ids interleaved and not sorted.
GROUP_IDS = np.array([2, 0, 2, 1, 3, 2, 0, 2, 0, 3], np.int32)
NUM_GROUPS = 4
REWARDS = np.array([1.0, 0.0, 0.5, 0.7, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0], np.float32)
LENGTHS = np.array([3, 5, 1, 4, 2, 6, 2, 3, 1, 5], np.float32)


def groups():
  return {g: np.flatnonzero(GROUP_IDS == g) for g in range(NUM_GROUPS)}


def np_grpo(rewards, std_normalize=True, eps=1e-6):
  out = np.zeros_like(rewards, np.float64)
  for idx in groups().values():
    r = rewards[idx].astype(np.float64)
    mean, std = (0.0, 1.0) if len(idx) == 1 else (r.mean(), r.std(ddof=1))
    out[idx] = (r - mean) / (std + eps) if std_normalize else r - mean
  return out


def np_rloo(rewards):
  out = np.zeros_like(rewards, np.float64)
  for idx in groups().values():
    if len(idx) == 1:
      continue
    for i in idx:
      others = [j for j in idx if j != i]
      out[i] = rewards[i] - np.mean(rewards[others])
  return out


def np_reinforce_pp_baseline(rewards, lengths, eps=1e-8):
  """verl's route: subtract the group mean, tile over tokens, masked_whiten over the tokens."""
  centred = rewards.astype(np.float64).copy()
  for idx in groups().values():
    if len(idx) > 1:
      centred[idx] -= rewards[idx].mean()
  time = int(lengths.max())
  mask = (np.arange(time)[None, :] < lengths[:, None]).astype(np.float64)
  tokens = centred[:, None] * mask
  mean = (tokens * mask).sum() / mask.sum()
  var = (((tokens - mean) ** 2) * mask).sum() / mask.sum() * mask.sum() / (mask.sum() - 1)
  return (centred - mean) / np.sqrt(var + eps)


class AdvantagesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_grpo_matches_reference_with_bessel_and_singleton(self):
    grpo = self.variant(adv.grpo, static_argnums=2)
    got = np.asarray(grpo(REWARDS, GROUP_IDS, NUM_GROUPS))
    np.testing.assert_allclose(got, np_grpo(REWARDS), rtol=1e-5, atol=1e-6)
    assert got[3] == pytest.approx(0.7 / (1 + 1e-6))  # singleton: mean 0, std 1
    # Group 2 = [1, .5, 0, 1]: std with ddof=1, not ddof=0.
    r = np.array([1.0, 0.5, 0.0, 1.0])
    assert got[0] == pytest.approx((1 - r.mean()) / (r.std(ddof=1) + 1e-6), rel=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_grpo_constant_group_gives_zero(self):
    grpo = self.variant(adv.grpo, static_argnums=2)
    got = np.asarray(grpo(np.ones(4, np.float32), np.array([0, 0, 1, 1]), 2))
    np.testing.assert_array_equal(got, 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_dr_grpo_matches_reference(self):
    got = np.asarray(self.variant(adv.dr_grpo, static_argnums=2)(REWARDS, GROUP_IDS, NUM_GROUPS))
    np.testing.assert_allclose(got, np_grpo(REWARDS, std_normalize=False), rtol=1e-6, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_rloo_matches_leave_one_out_and_singleton_is_zero(self):
    got = np.asarray(self.variant(adv.rloo, static_argnums=2)(REWARDS, GROUP_IDS, NUM_GROUPS))
    np.testing.assert_allclose(got, np_rloo(REWARDS), rtol=1e-5, atol=1e-6)
    assert got[3] == 0.0

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("per_response", False), ("per_token", True))
  def test_reinforce_pp_baseline_matches_token_level_whitening(self, use_lengths):
    lengths = LENGTHS if use_lengths else np.ones_like(LENGTHS)
    baseline = self.variant(adv.reinforce_pp_baseline, static_argnums=2)
    got = np.asarray(
        baseline(REWARDS, GROUP_IDS, NUM_GROUPS, lengths=lengths if use_lengths else None)
    )
    np.testing.assert_allclose(
        got, np_reinforce_pp_baseline(REWARDS, lengths), rtol=1e-5, atol=1e-6
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_compute_advantages_dispatch_jit_and_unknown_name(self):
    fn = self.variant(adv.compute_advantages, static_argnums=(0, 3))
    for name, reference in [
        ("grpo", np_grpo(REWARDS)),
        ("rloo", np_rloo(REWARDS)),
        ("dr_grpo", np_grpo(REWARDS, std_normalize=False)),
    ]:
      np.testing.assert_allclose(
          fn(name, REWARDS, GROUP_IDS, NUM_GROUPS), reference, rtol=1e-5, atol=1e-6
      )
    got = fn("reinforce_pp_baseline", REWARDS, GROUP_IDS, NUM_GROUPS, lengths=LENGTHS)
    np.testing.assert_allclose(
        got, np_reinforce_pp_baseline(REWARDS, LENGTHS), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match=r"'ppo_gae' is unknown; allowed: \('grpo', 'dr_grpo'"):
      fn("ppo_gae", REWARDS, GROUP_IDS, NUM_GROUPS)

  @chex.variants(with_jit=True, without_jit=True)
  def test_token_advantages_broadcasts_over_mask(self):
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    got = np.asarray(self.variant(adv.token_advantages)(np.array([2.0, -1.0], np.float32), mask))
    np.testing.assert_array_equal(got, [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])
