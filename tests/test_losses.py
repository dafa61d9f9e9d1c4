"""PPO surrogate, aggregation, KL, entropy bonus/controller and advantage shaping against NumPy
references written from the formulas in docs/interventions.md (the formulas with and without
jit, chex variants); the fixed `aux` contract; every surrogate checks its shapes."""

import math

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropix_rl import interventions
from entropix_rl.interventions import (
    aggregation,
    compose,
    entropy_bonus,
    kl_ref,
    lp_reg,
    registry,
    siren,
)
from entropix_rl.train.config_dict import apply_overrides

AUX_KEYS = {
    "per_token_loss",
    "selected",
    "clip_frac",
    "approx_kl",
    "n_selected",
    "n_tokens",
    "abs_log_ratio_sum",
    "selected_abs_log_ratio_sum",
    "pg_loss",
}


def make_batch(seed=0, rows=4, time=8, spread=0.6):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.05, 4.0, (rows, time))
  old = logp + rng.normal(0.0, spread, (rows, time))
  adv = np.repeat(rng.normal(0.0, 1.0, (rows, 1)), time, axis=1)
  lengths = rng.integers(2, time + 1, (rows, 1))
  lengths[0] = 0  # an all-padding row
  mask = (np.arange(time)[None, :] < lengths).astype(np.float32)
  entropy = rng.uniform(0.0, 3.0, (rows, time))
  ref = logp + rng.normal(0.0, 0.8, (rows, time))
  f32 = lambda x: np.asarray(x, np.float32)
  return dict(
      logp=f32(logp),
      old_logp=f32(old),
      advantages=f32(adv * mask),
      mask=mask,
      entropy=f32(entropy),
      ref_logp=f32(ref),
  )


def cfg(**overrides):
  """A LossConfig from dotted overrides on the default ConfigDict."""
  return interventions.resolve_loss_config(
      apply_overrides(interventions.default_loss_config(), overrides)
  )


def run(config, batch, variant=lambda fn: fn, **kwargs):
  """`policy_loss` on `batch`, wrapped by `variant` (a chex variant: jit or not)."""
  args = dict(
      logp=batch["logp"],
      old_logp=batch["old_logp"],
      advantages=batch["advantages"],
      mask=batch["mask"],
      rng=jax.random.PRNGKey(0),
  )
  args.update(kwargs)
  loss, aux = variant(lambda a: interventions.policy_loss(config, **a))(args)
  return float(loss), jax.tree.map(np.asarray, aux)


def np_ppo(logp, old, adv, eps_low, eps_high, c=None):
  ratio = np.exp(np.clip(logp.astype(np.float64) - old, -20, 20))
  l1 = -adv * ratio
  l2 = -adv * np.clip(ratio, 1 - eps_low, 1 + eps_high)
  loss = np.maximum(l1, l2)
  grad = np.where(l1 >= l2, -adv * ratio, 0.0) * (np.abs(logp - old) < 20)
  if c is not None:
    capped = (adv < 0) & (loss > -adv * c)
    loss = np.where(adv < 0, np.minimum(loss, -adv * c), loss)
    grad = np.where(capped, 0.0, grad)
  return loss, l2 > l1, grad


def np_agg(loss, weights, mode):
  if mode == "token-mean":
    return (loss * weights).sum() / weights.sum()
  if mode == "seq-mean-token-mean":
    keep = weights.sum(1) > 0
    return np.mean((loss * weights).sum(1)[keep] / weights.sum(1)[keep])
  return (loss * weights).sum() / loss.size


def np_k3(logp, ref):
  kl = np.clip(ref.astype(np.float64) - logp, -20, 20)
  return np.clip(np.exp(kl) - kl - 1, -10, 10)


CLIP_SETTINGS = [
    dict(clip_eps_low=0.2, clip_eps_high=0.2),
    dict(clip_eps_low=0.2, clip_eps_high=0.28),
    dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=1.5),
]


class FormulaTest(chex.TestCase):
  """The formulas, each with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      (f"{agg.replace('-', '_')}_clip{i}", clip, agg)
      for agg in aggregation.AGG_MODES
      for i, clip in enumerate(CLIP_SETTINGS)
  )
  def test_ppo_matches_reference(self, clip, agg):
    batch = make_batch(1)
    config = cfg(agg=agg, **clip)
    loss, aux = run(config, batch, variant=self.variant)
    m = batch["mask"]
    ref_loss, clipped, _ = np_ppo(
        batch["logp"],
        batch["old_logp"],
        batch["advantages"],
        clip["clip_eps_low"],
        clip["clip_eps_high"],
        clip.get("dual_clip_c"),
    )
    assert 0 < clipped[m > 0].mean() < 1  # the data exercises both branches
    assert loss == pytest.approx(np_agg(ref_loss, m, agg), rel=1e-5, abs=1e-6)
    assert aux["pg_loss"] == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(aux["per_token_loss"], ref_loss * m, rtol=1e-5, atol=1e-6)
    assert aux["clip_frac"] == pytest.approx(clipped[m > 0].mean(), rel=1e-6)
    assert aux["approx_kl"] == pytest.approx(
        np_k3(batch["logp"], batch["old_logp"])[m > 0].mean(), rel=1e-5
    )
    assert aux["n_tokens"] == m.sum() and aux["n_selected"] == 0 and not aux["selected"].any()
    drift = np.abs(batch["logp"] - batch["old_logp"])
    assert aux["abs_log_ratio_sum"] == pytest.approx((drift * m).sum(), rel=1e-5)
    assert aux["selected_abs_log_ratio_sum"] == 0

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters((f"clip{i}", clip) for i, clip in enumerate(CLIP_SETTINGS))
  def test_ppo_gradient_matches_reference(self, clip):
    batch = make_batch(2)
    config = cfg(**clip)
    grad_fn = self.variant(
        jax.grad(
            lambda lp, b: interventions.policy_loss(
                config,
                logp=lp,
                old_logp=b["old_logp"],
                advantages=b["advantages"],
                mask=b["mask"],
                rng=None,
            )[0]
        )
    )
    _, _, ref_grad = np_ppo(
        batch["logp"],
        batch["old_logp"],
        batch["advantages"],
        clip["clip_eps_low"],
        clip["clip_eps_high"],
        clip.get("dual_clip_c"),
    )
    m = batch["mask"]
    np.testing.assert_allclose(
        grad_fn(batch["logp"], batch), ref_grad * m / m.sum(), rtol=1e-5, atol=1e-7
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_log_ratio_is_clamped_before_exp(self):
    shape = (1, 2)
    logp = np.array([[0.0, 0.0]], np.float32)
    old = np.array([[-30.0, 0.0]], np.float32)  # log-ratio 30 on token 0
    adv = np.full(shape, -1.0, np.float32)
    batch = dict(logp=logp, old_logp=old, advantages=adv, mask=np.ones(shape, np.float32))
    _, aux = run(cfg(), batch, variant=self.variant)
    np.testing.assert_allclose(aux["per_token_loss"][0], [math.exp(20.0), 1.0], rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_aggregate_modes_on_a_hand_example(self):
    aggregate = self.variant(aggregation.aggregate, static_argnums=2)
    loss = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, np.inf], [7.0, 8.0, 9.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], np.float32)
    assert float(aggregate(loss, mask, "token-mean")) == pytest.approx(10 / 4)
    assert float(aggregate(loss, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
    assert float(aggregate(loss, mask, "seq-mean-token-sum-norm")) == pytest.approx(10 / 9)
    for mode in aggregation.AGG_MODES:
      assert float(aggregate(loss, np.zeros_like(mask), mode)) == 0.0

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters((e, e) for e in kl_ref.KL_ESTIMATORS)
  def test_kl_estimators_match_reference(self, estimator):
    logp = np.array([-1.0, -2.0, -0.5, -30.0, -0.1], np.float32)
    ref = np.array([-1.5, -1.0, -0.5, -0.1, -200.0], np.float32)
    delta = logp.astype(np.float64) - ref
    expected = {"k1": delta, "k2": 0.5 * delta**2, "k3": np_k3(logp, ref), "abs": np.abs(delta)}
    kl = self.variant(kl_ref.kl_estimate, static_argnums=2)(logp, ref, estimator)
    np.testing.assert_allclose(kl, expected[estimator], rtol=1e-5, atol=1e-6)
    if estimator == "k3":  # the +10 clamp is active; the ±20 log-ratio clamp keeps exp finite
      np.testing.assert_array_equal(expected["k3"][3:], 10.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_adaptive_entropy_controller_follows_skywork_rule(self):
    config = cfg(
        **{
            "entropy_bonus.adaptive": True,
            "entropy_bonus.coef": 0.0002,
            "entropy_bonus.delta": 0.001,
            "entropy_bonus.max_coef": 0.0025,
        }
    )
    update = self.variant(lambda s, h: entropy_bonus.update_entropy_controller(config, s, h))
    coefficient = self.variant(lambda s: entropy_bonus.entropy_coefficient(config, s))
    state = entropy_bonus.init_entropy_controller(config)
    assert float(coefficient(state)) == pytest.approx(0.0002)
    coef, expected = 0.0002, []
    measured = [0.1, 0.1, 0.1, 0.1, 0.3, 0.1, 0.2]  # target 0.2
    for h in measured:
      state = update(state, jnp.float32(h))
      coef = min(max(coef + (0.001 if h < 0.2 else -0.001), 0.0), 0.0025)
      expected.append((coef, coef if h < 0.2 else 0.0))
      assert float(state["coef"]) == pytest.approx(coef, abs=1e-8)
      assert float(coefficient(state)) == pytest.approx(expected[-1][1], abs=1e-8)
    assert [c for c, _ in expected][:4] == pytest.approx([0.0012, 0.0022, 0.0025, 0.0025])
    # Under jit, with the state as a traced pytree.
    step = jax.jit(lambda s, h: entropy_bonus.update_entropy_controller(config, s, h))
    assert float(step(state, jnp.float32(0.5))["coef"]) == pytest.approx(coef - 0.001, abs=1e-8)

  @chex.variants(with_jit=True, without_jit=True)
  def test_fixed_bonus_controller_is_empty_and_passes_through(self):
    config = cfg(**{"entropy_bonus.coef": 0.003})
    state = entropy_bonus.init_entropy_controller(config)
    update = self.variant(lambda s, h: entropy_bonus.update_entropy_controller(config, s, h))
    coefficient = self.variant(lambda s: entropy_bonus.entropy_coefficient(config, s))
    assert state == {} and update(state, 0.1) == {}
    assert float(coefficient(state)) == pytest.approx(0.003)


@pytest.mark.parametrize("estimator", kl_ref.KL_ESTIMATORS)
def test_kl_ref_regulariser(estimator):
  batch = make_batch(3)
  m = batch["mask"]
  kl = kl_ref.kl_estimate(batch["logp"], batch["ref_logp"], estimator)
  expected_kl = np_agg(np.asarray(kl, np.float64), m, "token-mean")
  base, _ = run(cfg(), batch)
  logged_only, aux = run(cfg(**{"kl_ref.estimator": estimator}), batch, ref_logp=batch["ref_logp"])
  assert logged_only == pytest.approx(base) and aux["kl_ref"] == pytest.approx(
      expected_kl, rel=1e-5
  )
  loss, aux = run(
      cfg(**{"kl_ref.coef": 0.3, "kl_ref.estimator": estimator}), batch, ref_logp=batch["ref_logp"]
  )
  assert loss == pytest.approx(base + 0.3 * expected_kl, rel=1e-5)
  assert "kl_ref" not in run(cfg(), batch)[1]  # no reference, no KL to it
  with pytest.raises(ValueError, match="loss.kl_ref.coef=0.3 needs ref_logp"):
    run(cfg(**{"kl_ref.coef": 0.3}), batch)


@pytest.mark.parametrize("agg", aggregation.AGG_MODES)
def test_fixed_entropy_bonus_value_gradient_and_override(agg):
  batch = make_batch(4)
  m, h = batch["mask"], batch["entropy"]
  base, _ = run(cfg(agg=agg), batch)
  config = cfg(agg=agg, **{"entropy_bonus.coef": 0.01})
  loss, aux = run(config, batch, entropy=h)
  assert aux["entropy_bonus"] == pytest.approx(0.01 * np_agg(h, m, agg), rel=1e-5)
  assert loss == pytest.approx(base - aux["entropy_bonus"], rel=1e-5, abs=1e-7)
  loss, aux = run(
      config,
      batch,
      entropy=h,
      states={"entropy_bonus": {"coef": jnp.float32(0.05), "enabled": True}},
  )
  assert loss == pytest.approx(base - 0.05 * np_agg(h, m, agg), rel=1e-5, abs=1e-7)
  if agg == "token-mean":
    grad = jax.grad(
        lambda e: interventions.policy_loss(
            config,
            logp=batch["logp"],
            old_logp=batch["old_logp"],
            advantages=batch["advantages"],
            mask=m,
            rng=None,
            entropy=e,
        )[0]
    )(h)
    np.testing.assert_allclose(grad, -0.01 * m / m.sum(), rtol=1e-5, atol=1e-9)


def test_entropy_advantage_shaping_matches_reference():
  batch = make_batch(5)
  m, a, h = batch["mask"], batch["advantages"], batch["entropy"]
  shaped = a + np.minimum(0.4 * h, np.abs(a) / 2.0) * m
  assert np.all(np.sign(shaped[m > 0]) == np.sign(a[m > 0]))  # κ = 2 keeps the sign
  config = cfg(**{"entropy_advantage.enabled": True})
  loss, _ = run(config, batch, entropy=h)
  ref_loss, _, _ = np_ppo(batch["logp"], batch["old_logp"], shaped, 0.2, 0.2)
  assert loss == pytest.approx(np_agg(ref_loss, m, "token-mean"), rel=1e-5)
  grad_h = jax.grad(
      lambda e: interventions.policy_loss(
          config,
          logp=batch["logp"],
          old_logp=batch["old_logp"],
          advantages=a,
          mask=m,
          rng=None,
          entropy=e,
      )[0]
  )(h)
  np.testing.assert_array_equal(grad_h, 0.0)  # entropy is detached in the shaping


@pytest.mark.parametrize("name", ["ppo", "clip_cov", "kl_cov", "high_entropy_tokens"])
def test_aux_holds_the_diagnostics_and_only_the_active_regularisers(name):
  batch = make_batch(6)
  _, aux = run(cfg(name=name), batch, entropy=batch["entropy"])
  assert set(aux) == AUX_KEYS  # regularisers that are off are not composed
  _, with_extras = run(
      cfg(name=name, **{"entropy_bonus.coef": 0.01}),
      batch,
      entropy=batch["entropy"],
      ref_logp=batch["ref_logp"],
  )
  assert set(with_extras) == AUX_KEYS | {"kl_ref", "entropy_bonus"}
  assert aux["per_token_loss"].shape == aux["selected"].shape == batch["mask"].shape
  assert aux["selected"].dtype == bool
  for key in AUX_KEYS - {"per_token_loss", "selected"}:
    assert aux[key].shape == () and np.isfinite(aux[key]), key
  assert aux["n_selected"] == aux["selected"].sum()


def test_loss_needs_entropy_and_its_gradient():
  assert "entropy" not in interventions.needs(cfg()) and "entropy" not in compose.grad_needs(cfg())
  for name in ("clip_cov", "kl_cov"):
    assert "entropy" not in interventions.needs(cfg(name=name))
  assert "entropy" in interventions.needs(cfg(name="high_entropy_tokens"))
  assert "entropy" not in compose.grad_needs(cfg(name="high_entropy_tokens"))
  assert "entropy" in interventions.needs(cfg(**{"entropy_advantage.enabled": True}))
  assert "entropy" not in compose.grad_needs(cfg(**{"entropy_advantage.enabled": True}))
  for bonus in ({"entropy_bonus.coef": 0.001}, {"entropy_bonus.adaptive": True}):
    assert "entropy" in interventions.needs(cfg(**bonus)) and "entropy" in compose.grad_needs(
        cfg(**bonus)
    )
  with pytest.raises(ValueError, match="pass entropy="):
    run(cfg(name="high_entropy_tokens"), make_batch())


def test_policy_loss_takes_the_typed_config_and_agrees_under_jit():
  batch = make_batch(7)
  config_dict = interventions.default_loss_config()
  config_dict.clip_eps_high = 0.28
  with pytest.raises(TypeError, match="resolve_loss_config"):
    run(config_dict, batch)
  resolved = interventions.resolve_loss_config(config_dict)
  eager, _ = run(resolved, batch)
  fn = jax.jit(lambda c, b: interventions.policy_loss(c, rng=None, **b)[0], static_argnums=0)
  jitted = fn(resolved, {k: batch[k] for k in ("logp", "old_logp", "advantages", "mask")})
  assert float(jitted) == pytest.approx(eager, rel=1e-6)


# ------------------------------------------------------------- every surrogate checks shapes


def _mismatched_batch(field):
  """A `TokenBatch` with every field a surrogate may read, `[4, 8]` but `field` `[4, 7]`."""
  data = make_batch(8)
  arrays = {k: data[k] for k in ("logp", "old_logp", "advantages", "mask", "entropy")}
  arrays[field] = arrays[field][:, :-1]
  return interventions.TokenBatch(
      **arrays,
      old_entropy=data["entropy"],
      ref_logp=data["ref_logp"],
      features={siren.FEATURE: data["entropy"]},
      old_features={lp_reg.PROXY: data["ref_logp"]},
  )


@pytest.mark.parametrize("field", ["old_logp", "advantages", "mask"])
@pytest.mark.parametrize("name", registry.names("surrogate"))
def test_every_surrogate_asserts_its_shapes(name, field):
  """`apply` checks its `[B, T]` fields with chex at entry, before reading its statistics."""
  with pytest.raises(AssertionError, match=r"\[Chex\]"):
    registry.get(name).apply(cfg(name=name), _mismatched_batch(field), None, None)


@pytest.mark.parametrize(
    "name", [e.name for e in registry.entries("surrogate") if e.scope_stats is not None]
)
def test_every_surrogate_statistic_asserts_its_shapes(name):
  entry = registry.get(name)
  with pytest.raises(AssertionError, match=r"\[Chex\]"):
    entry.scope_stats(cfg(name=name), _mismatched_batch("mask"), None, jax.random.PRNGKey(0))
