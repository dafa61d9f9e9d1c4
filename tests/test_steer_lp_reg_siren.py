"""STEER, Lp-Reg and SIREN against NumPy references written from the formulas in
docs/interventions.md and the authors' code: weights, picks, proxy and top-p features, values
and gradients (the formulas with and without jit, chex variants), the anchor state, and the seam
(needs, features, state hooks)."""

import fractions
import functools
import math

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropix_rl import interventions
from entropix_rl.interventions import compose, lp_reg, siren, steer
from entropix_rl.train.config_dict import apply_overrides


def cfg(**overrides):
  return interventions.resolve_loss_config(
      apply_overrides(interventions.default_loss_config(), overrides)
  )


def make_batch(seed=0, rows=6, time=10):
  rng = np.random.default_rng(seed)
  logp = -rng.exponential(1.5, (rows, time))
  old = logp + rng.normal(0.0, 0.3, (rows, time))
  adv = np.repeat(rng.normal(0.0, 1.0, (rows, 1)), time, axis=1)
  lengths = rng.integers(2, time + 1, (rows, 1))
  lengths[0] = 0  # an all-padding row
  mask = (np.arange(time)[None, :] < lengths).astype(np.float32)
  f32 = lambda x: np.asarray(x, np.float32)
  return dict(
      logp=f32(logp),
      old_logp=f32(old),
      advantages=f32(adv * mask),
      mask=mask,
      old_entropy=f32(rng.uniform(0.0, 3.0, (rows, time))),
  )


def np_ppo(logp, old, adv, eps_low=0.2, eps_high=0.2):
  """PPO token loss and d loss / d logp (no dual-clip)."""
  ratio = np.exp(np.clip(logp.astype(np.float64) - old, -20, 20))
  l1, l2 = -adv * ratio, -adv * np.clip(ratio, 1 - eps_low, 1 + eps_high)
  return np.maximum(l1, l2), np.where(l1 >= l2, -adv * ratio, 0.0)


def loss_and_grad(config, batch, wrt="logp", variant=lambda fn: fn, **extra):
  """`(loss, aux, d loss / d batch[wrt])`, the gradient function wrapped by `variant` (chex)."""
  fields = {k: v for k, v in batch.items()}
  fields.update(extra)

  def f(x, fields):
    args = dict(fields, **{wrt: x})
    logp, old, adv, mask = (args.pop(k) for k in ("logp", "old_logp", "advantages", "mask"))
    return interventions.policy_loss(
        config, logp=logp, old_logp=old, advantages=adv, mask=mask, rng=None, **args
    )

  (loss, aux), grad = variant(jax.value_and_grad(f, has_aux=True))(fields[wrt], fields)
  return float(loss), jax.tree.map(np.asarray, aux), jax.tree.map(np.asarray, grad)


# ---------------------------------------------------------------- STEER


def np_steer_weights(logp, old, adv, h_old, mask, mode, lmin, lmax):
  x = np.clip(np.exp(logp.astype(np.float64)), 1e-8, 1 - 1e-8)
  x_old = np.clip(np.exp(old.astype(np.float64)), 1e-8, 1.0)
  omega = adv / x_old * x * (1 - x) * (np.log(x) + h_old)
  m = np.abs(np.where(np.isfinite(omega), omega, 0.0))
  valid = mask > 0
  m_min, m_max = m[valid].min(), m[valid].max()
  if mode == "exp":
    k = -math.log(lmin) / max(m_max, 0.02)
    w = np.clip(np.exp(-k * m), lmin, 1.0)
  elif m_max > m_min:
    w = np.clip(lmax - (m - m_min) * (lmax - lmin) / (m_max - m_min), lmin, lmax)
  else:
    w = np.full(m.shape, (lmin + lmax) / 2)
  return w * mask, m


class SteerTest(chex.TestCase):
  """STEER's weights and loss, with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("exp", "exp", 0.8, 1.0), ("linear", "linear", 0.8, 1.2))
  def test_steer_weights_loss_and_gradient_match_reference(self, mode, lmin, lmax):
    batch = make_batch(1)
    config = cfg(
        name="steer", **{"steer.mode": mode, "steer.lambda_min": lmin, "steer.lambda_max": lmax}
    )
    m = batch["mask"]
    w, mag = np_steer_weights(
        batch["logp"],
        batch["old_logp"],
        batch["advantages"],
        batch["old_entropy"],
        m,
        mode,
        lmin,
        lmax,
    )
    ppo, ppo_grad = np_ppo(batch["logp"], batch["old_logp"], batch["advantages"])
    loss, aux, grad = loss_and_grad(config, batch, variant=self.variant)
    assert mag[m > 0].max() > 0.02  # λ_min is reached in exp mode
    assert loss == pytest.approx((w * ppo * m).sum() / m.sum(), rel=1e-5)
    np.testing.assert_allclose(aux["per_token_loss"], w * ppo * m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, w * ppo_grad * m / m.sum(), rtol=1e-5, atol=1e-8)
    valid = m > 0
    top = np.unravel_index(np.argmax(np.where(valid, mag, -1)), mag.shape)
    bottom = np.unravel_index(np.argmin(np.where(valid, mag, np.inf)), mag.shape)
    assert w[top] == pytest.approx(lmin)  # the largest |Ω| gets λ_min
    assert w[bottom] == pytest.approx(w[m > 0].max())
    if mode == "linear":
      assert w[bottom] == pytest.approx(lmax)  # the smallest |Ω| gets λ_max
    assert not aux["selected"].any()

  def stats_and_weights(self, config):
    """`steer_stats` and `steer_weights` under `config`, as the current variant."""
    stats = self.variant(lambda b: steer.steer_stats(config, b, None, None))
    weights = self.variant(lambda b, s: steer.steer_weights(config, b, s))
    return stats, weights

  @chex.variants(with_jit=True, without_jit=True)
  def test_steer_exp_weights_stay_above_lambda_min_below_the_floor(self):
    """k = −ln λ_min / max(m_max, 0.02) (the reference's floor): with every |Ω| < 0.02, no token
    reaches λ_min."""
    batch = make_batch(2)
    batch["advantages"] = batch["advantages"] * 1e-3
    steer_stats, steer_weights = self.stats_and_weights(cfg(name="steer"))
    stats = steer_stats(interventions.TokenBatch(**batch))
    w = np.asarray(steer_weights(interventions.TokenBatch(**batch), stats))
    m = batch["mask"] > 0
    assert float(stats["m_max"][0]) < 0.02
    assert w[m].min() > 0.8 + 1e-3 and w[m].max() <= 1.0 and np.all(w[~m] == 0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_steer_linear_weights_when_every_magnitude_is_equal(self):
    batch = make_batch(3)
    batch["advantages"] = np.zeros_like(batch["advantages"])  # Ω = 0 everywhere
    config = cfg(name="steer", **{"steer.mode": "linear", "steer.lambda_max": 1.2})
    steer_stats, steer_weights = self.stats_and_weights(config)
    tb = interventions.TokenBatch(**batch)
    w = np.asarray(steer_weights(tb, steer_stats(tb)))
    np.testing.assert_allclose(w[batch["mask"] > 0], 1.0)


def test_steer_weights_are_float32_from_bfloat16_inputs():
  batch = make_batch(4)
  low = {k: jnp.asarray(v, jnp.bfloat16) if k != "mask" else v for k, v in batch.items()}
  rounded = {k: np.asarray(jnp.asarray(v, jnp.float32)) for k, v in low.items()}
  _, aux_low, _ = loss_and_grad(cfg(name="steer"), low)
  _, aux_f32, _ = loss_and_grad(cfg(name="steer"), rounded)
  assert aux_low["per_token_loss"].dtype == np.float32
  np.testing.assert_allclose(aux_low["per_token_loss"], aux_f32["per_token_loss"], rtol=1e-6)


def test_steer_statistics_follow_the_selection_scope():
  """`microbatch` scope: m_min, m_max per chunk of rows, as the reference per micro-batch."""
  batch = make_batch(5, rows=8)
  config = cfg(name="steer", selection_scope="microbatch", microbatch_size=4)
  _, aux, _ = loss_and_grad(config, batch)
  ppo, _ = np_ppo(batch["logp"], batch["old_logp"], batch["advantages"])
  for rows in (slice(0, 4), slice(4, 8)):
    w, _ = np_steer_weights(
        *(batch[k][rows] for k in ("logp", "old_logp", "advantages", "old_entropy", "mask")),
        "exp",
        0.8,
        1.0,
    )
    np.testing.assert_allclose(
        aux["per_token_loss"][rows], w * ppo[rows] * batch["mask"][rows], rtol=1e-5, atol=1e-7
    )


def test_steer_reads_the_old_entropy():
  assert interventions.needs(cfg(name="steer")) == {"old_entropy"}
  assert "entropy" not in interventions.needs(cfg(name="steer"))
  batch = make_batch(6)
  del batch["old_entropy"]
  with pytest.raises(ValueError, match="steer reads 'old_entropy'"):
    loss_and_grad(cfg(name="steer"), batch)


# ---------------------------------------------------------------- Lp-Reg


def np_proxy(logits, targets, temperature, kappa):
  logits = logits.astype(np.float64)
  p1 = np.exp(logits - logits.max(-1, keepdims=True))
  p1 /= p1.sum(-1, keepdims=True)
  keep = p1 >= kappa * p1.max(-1, keepdims=True)
  z = np.where(keep, logits, -1e4) / temperature
  top = z.max(-1, keepdims=True)
  logp = z - top - np.log(np.exp(z - top).sum(-1, keepdims=True))
  return logp[np.arange(len(targets)), targets], keep


class MinPProxyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("t1", 1.0), ("t07", 0.7))
  def test_min_p_proxy_filters_at_temperature_one_then_divides(self, temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3.0, (64, 50)).astype(np.float32)
    targets = rng.integers(0, 50, 64)
    proxy = self.variant(
        functools.partial(lp_reg.min_p_proxy_logp, temperature=temperature, kappa=0.05)
    )
    got = np.asarray(proxy(logits, targets))
    want, keep = np_proxy(logits, targets, temperature, 0.05)
    kept = keep[np.arange(64), targets]
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(got[kept], want[kept], rtol=1e-5, atol=1e-5)
    assert np.all(got[~kept] < -1000)  # filtered tokens are never regularised
    if temperature == 1.0:  # the paper's proxy: log of π_old renormalised over the kept set
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      renorm = np.log(p[np.arange(64), targets] / np.where(keep, p, 0).sum(-1))
      np.testing.assert_allclose(got[kept], renorm[kept], rtol=1e-5, atol=1e-5)


def np_floor(ratio, n):
  return math.floor(fractions.Fraction(repr(ratio)) * n)


def np_lp_reg_pick(logp, proxy, adv, mask, ratio):
  negative = (mask > 0) & (adv < 0)
  k = max(1, np_floor(ratio, negative.sum()))
  out = np.zeros(logp.size, bool)
  if k > 1:
    order = np.argsort(np.where(negative.ravel(), logp.ravel(), np.inf), kind="stable")
    out[order[:k]] = True
  return out.reshape(logp.shape) & (logp < proxy)


def lp_batch(seed=7, rows=16, time=16):
  batch = make_batch(seed, rows, time)
  del batch["old_entropy"]
  rng = np.random.default_rng(seed + 100)
  gap = rng.normal(0.5, 1.5, batch["logp"].shape)  # proxy above ℓ for most, below for some
  batch["old_features"] = {lp_reg.PROXY: np.asarray(batch["logp"] + gap, np.float32)}
  return batch


class LpRegTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("few", 0.1), ("more", 0.3), ("all", 1.0))
  def test_lp_reg_pick_loss_and_gradient_match_reference(self, ratio):
    batch = lp_batch()
    proxy = batch["old_features"][lp_reg.PROXY]
    m, a, lp, old = batch["mask"], batch["advantages"], batch["logp"], batch["old_logp"]
    config = cfg(name="lp_reg", **{"lp_reg.ratio": ratio, "lp_reg.coef": 0.7})
    pick = np_lp_reg_pick(lp, proxy, a, m, ratio)
    loss, aux, grad = loss_and_grad(config, batch, variant=self.variant)
    np.testing.assert_array_equal(aux["selected"], pick)
    assert pick.sum() >= 2
    delta = proxy.astype(np.float64) - lp
    k3 = np.clip(np.exp(delta) - delta - 1, -10, 10)
    ratio_ = np.exp(lp.astype(np.float64) - old)
    ppo, ppo_grad = np_ppo(lp, old, a)
    per_token = np.where(pick, -a * ratio_ + 0.7 * k3, ppo)
    k3_grad = np.where(np.abs(np.exp(delta) - delta - 1) < 10, 1 - np.exp(delta), 0.0)
    grad_ref = np.where(pick, -a * ratio_ + 0.7 * k3_grad, ppo_grad)
    assert loss == pytest.approx((per_token * m).sum() / m.sum(), rel=1e-5)
    np.testing.assert_allclose(grad, grad_ref * m / m.sum(), rtol=1e-4, atol=1e-7)
    if ratio == 1.0:  # some picks sit past the k3 clamp: only −A·r is left there
      assert (pick & (k3 >= 10)).any()
      assert np.all(aux["selected"] <= ((m > 0) & (a < 0)))


def test_lp_reg_picks_nothing_when_the_count_is_one():
  """k = max(1, floor(ρ·N_neg)) = 1 → the reference's `if k > 1` skips the regulariser."""
  batch = lp_batch()
  n_neg = int(((batch["mask"] > 0) & (batch["advantages"] < 0)).sum())
  ratio = 1.5 / n_neg  # floor(ρ·N_neg) = 1
  loss, aux, _ = loss_and_grad(cfg(name="lp_reg", **{"lp_reg.ratio": round(ratio, 6)}), batch)
  base, _, _ = loss_and_grad(cfg(), batch)
  assert aux["n_selected"] == 0 and loss == pytest.approx(base, rel=1e-6)


def test_lp_reg_declares_its_old_feature_with_the_configured_kappa():
  config = cfg(name="lp_reg", **{"lp_reg.kappa": 0.1})
  assert interventions.needs(config) == {lp_reg.PROXY}
  (feature,) = interventions.features(config, "old")
  assert feature.name == lp_reg.PROXY and interventions.features(config, "current") == ()
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3.0, (16, 20)).astype(np.float32)
  targets = rng.integers(0, 20, 16)
  np.testing.assert_allclose(
      feature.fn(logits, targets, 1.0), lp_reg.min_p_proxy_logp(logits, targets, 1.0, kappa=0.1)
  )


# ---------------------------------------------------------------- SIREN


def np_top_p_entropy(logits, temperature, top_p, top_k):
  z = logits.astype(np.float64) / temperature
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = np.zeros(len(z))
  for i, row in enumerate(p):
    top = np.sort(row)[::-1][: min(top_k, len(row))]
    kept = top[np.cumsum(top) < top_p]
    if len(kept):
      q = kept / kept.sum()
      out[i] = -(q * np.log(q)).sum()
  return out


class SirenFormulaTest(chex.TestCase):
  """SIREN's feature and peak statistic, with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("k1000", 1000), ("k7", 7))
  def test_top_p_entropy_matches_reference_and_its_gradient(self, top_k):
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2.0, (32, 40)).astype(np.float32)
    logits[0, 3] = 30.0  # the top token alone holds p >= top_p: empty set, entropy 0
    top_p_entropy = self.variant(
        functools.partial(
            siren.top_p_entropy, targets=None, temperature=0.8, top_p=0.8, top_k=top_k
        )
    )
    got = np.asarray(top_p_entropy(logits))
    want = np_top_p_entropy(logits, 0.8, 0.8, top_k)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got[0] == 0.0 and (got > 0).mean() > 0.5

    p0 = np.asarray(jax.nn.softmax(logits / 0.8, axis=-1))
    order = np.argsort(-p0, axis=-1, kind="stable")[:, :top_k]
    keep = np.zeros(p0.shape, bool)
    np.put_along_axis(keep, order, np.cumsum(np.take_along_axis(p0, order, -1), -1) < 0.8, -1)

    def naive(z):  # the same kept set, entropy of the renormalised softmax (differentiable)
      kept = jnp.where(keep, jax.nn.softmax(z / 0.8, axis=-1), 0.0)
      q = kept / jnp.maximum(kept.sum(-1, keepdims=True), 1e-30)
      return -jnp.where(keep, q * jnp.log(jnp.where(keep, q, 1.0)), 0.0).sum(-1)

    weights = rng.normal(size=32).astype(np.float32)
    g = jax.grad(lambda z: (top_p_entropy(z) * weights).sum())(logits)
    g_ref = jax.grad(lambda z: (naive(z) * weights).sum())(logits)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(g)[0] == 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_peak_mask_and_the_every_row_seq_mean_token_mean(self):
    """Ĥ divides by every row, as the reference's `agg_loss`: rows H = [1..6] and [1] give
    Ĥ = (6 + 0)/2 = 3; the quantile mask is AND-ed with the response mask and excludes padding
    from the quantile."""
    h = np.array([[1, 2, 3, 4, 5, 6, 99.0], [1, 50, 50, 50, 50, 50, 50]], np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0]], np.float32)
    picked = np.asarray(self.variant(functools.partial(siren.peak_mask, mask_ratio=0.8))(h, mask))
    np.testing.assert_array_equal(picked, [[0, 0, 0, 0, 0, 1, 0], [0] * 7])
    assert float(self.variant(siren.peak_entropy)(h, picked)) == pytest.approx(3.0)


def np_peak(h, mask, ratio):
  out = np.zeros(h.shape, bool)
  for i in range(len(h)):
    valid = mask[i] > 0
    if valid.any():
      out[i] = valid & (h[i] > np.quantile(h[i][valid].astype(np.float64), ratio))
  return out


def siren_batch(seed=8, rows=6, time=12):
  batch = make_batch(seed, rows, time)
  del batch["old_entropy"]
  rng = np.random.default_rng(seed + 1)
  batch["features"] = {siren.FEATURE: rng.uniform(0, 2, (rows, time)).astype(np.float32)}
  return batch


class SirenLossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("anchored", True), ("plain", False))
  def test_siren_loss_metric_and_gradient(self, anchored):
    batch = siren_batch()
    h, m = batch["features"][siren.FEATURE], batch["mask"]
    config = cfg(**{"siren.enabled": True, "siren.coef": 0.3, "siren.anchored": anchored})
    picked = np_peak(h, m, 0.8)
    counts = picked.sum(1)
    value = np.mean([h[i][picked[i]].mean() if counts[i] else 0.0 for i in range(len(h))])
    base, _, _ = loss_and_grad(cfg(), batch, variant=self.variant)
    states = {"siren": {"anchor": jnp.float32(0.4), "anchor_set": jnp.bool_(True)}}
    loss, aux, grad = loss_and_grad(
        config,
        batch,
        wrt="features",
        variant=self.variant,
        **({"states": states} if anchored else {}),
    )
    assert counts[0] == 0 and counts.sum() > len(h)  # the padding row picks nothing
    assert aux["siren"] == pytest.approx(value, rel=1e-5)
    d_value = picked / np.maximum(counts, 1)[:, None] / len(h)
    if anchored:
      assert loss == pytest.approx(base + 0.3 * (value - 0.4) ** 2, rel=1e-5)
      np.testing.assert_allclose(
          grad[siren.FEATURE], 0.6 * (value - 0.4) * d_value, rtol=1e-5, atol=1e-8
      )
    else:
      assert loss == pytest.approx(base - 0.3 * value, rel=1e-5)
      np.testing.assert_allclose(grad[siren.FEATURE], -0.3 * d_value, rtol=1e-5, atol=1e-8)


def test_siren_anchor_is_set_once_from_the_old_statistic():
  config = cfg(**{"siren.enabled": True})
  states = interventions.init_states(config)
  assert not bool(states["siren"]["anchor_set"])
  batch = siren_batch(9)
  h_old = batch["features"][siren.FEATURE]
  rollout = interventions.TokenBatch(
      logp=batch["logp"],
      old_logp=batch["old_logp"],
      advantages=batch["advantages"],
      mask=batch["mask"],
      old_features={siren.OLD_FEATURE: h_old},
  )
  states, metrics = interventions.before_update(config, states, rollout)
  want = float(siren.peak_entropy(h_old, np_peak(h_old, batch["mask"], 0.8)))
  assert bool(states["siren"]["anchor_set"])
  assert float(states["siren"]["anchor"]) == pytest.approx(want)
  later = rollout.replace(old_features={siren.OLD_FEATURE: h_old + 1.0})
  states, metrics = jax.jit(lambda s, r: interventions.before_update(config, s, r))(states, later)
  assert float(states["siren"]["anchor"]) == pytest.approx(want)  # held
  rows_with_picks = np_peak(h_old, batch["mask"], 0.8).any(1).mean()  # the padding row counts 0
  assert float(metrics["siren/rollout_peak_entropy"]) == pytest.approx(
      want + rows_with_picks, rel=1e-6
  )
  # Unset anchor (a direct policy_loss call without a state): the term is 0.
  base, _, _ = loss_and_grad(cfg(), batch)
  loss, _, _ = loss_and_grad(config, batch)
  assert loss == pytest.approx(base, rel=1e-6)


def test_siren_seam_declarations():
  off = cfg()
  assert "siren" not in interventions.init_states(off) and not interventions.features(
      off, "current"
  )
  on = cfg(**{"siren.enabled": True})
  assert interventions.needs(on) == {siren.FEATURE, siren.OLD_FEATURE}
  assert compose.grad_needs(on) == {siren.FEATURE}
  assert [f.name for f in interventions.features(on, "current")] == [siren.FEATURE]
  assert [f.name for f in interventions.features(on, "old")] == [siren.OLD_FEATURE]
  assert interventions.needs_planning_pass(on)
  plain = cfg(**{"siren.enabled": True, "siren.anchored": False})
  assert (
      interventions.needs(plain) == {siren.FEATURE}
      and interventions.init_states(plain)["siren"] == {}
  )


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"steer.mode": "cubic"}, "loss.steer.mode='cubic'"),
        ({"steer.lambda_min": 1.2}, "loss.steer.lambda_min=1.2"),
        ({"steer.mode": "linear", "steer.lambda_max": 0.5}, "loss.steer.lambda_max=0.5"),
        ({"lp_reg.ratio": 0.0}, "loss.lp_reg.ratio=0.0"),
        ({"lp_reg.kappa": 0.0}, "loss.lp_reg.kappa=0.0"),
        ({"siren.top_k": 0}, "loss.siren.top_k=0"),
        ({"siren.top_p": 1.5}, "loss.siren.top_p=1.5"),
    ],
)
def test_bad_values_name_the_field(overrides, match):
  with pytest.raises(ValueError, match=match.replace("(", r"\(")):
    cfg(**overrides)


@pytest.mark.parametrize("preset", ["steer", "steer_linear", "lp_reg", "siren", "siren_acting"])
def test_presets_resolve_to_the_documented_settings(preset):
  from configs import interventions as presets

  loss = interventions.resolve_loss_config(presets.get_config(preset).loss)
  expected = {
      "steer": ("steer", "exp", None),
      "steer_linear": ("steer", "linear", None),
      "lp_reg": ("lp_reg", None, None),
      "siren": ("ppo", None, 0.005),
      "siren_acting": ("ppo", None, 0.05),
  }[preset]
  assert loss.name == expected[0]
  if expected[1]:
    assert loss.steer.mode == expected[1] and loss.steer.lambda_min == 0.8
  if preset == "lp_reg":
    assert loss.lp_reg.ratio == 0.1 and loss.lp_reg.kappa == 0.02
  assert loss.siren.enabled == (expected[2] is not None)
  if expected[2]:
    assert loss.siren.coef == expected[2] and loss.siren.anchored
