"""The entropy-dynamics theorem (Cui et al. 2025 §3; docs/interventions.md) on tabular softmax
policies, and the covariance statistics of `entropix_rl.dynamics` against NumPy references."""

import numpy as np
import pytest

from entropix_rl import dynamics


def np_log_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_entropy(z):
  log_pi = np_log_softmax(np.asarray(z, np.float64))
  return -(np.exp(log_pi) * log_pi).sum(axis=-1)


def np_policy_cov(z, x):
  """`Cov_{a~π}(log π(a), x(a))` per state, exact expectation under π = softmax(z)."""
  log_pi = np_log_softmax(np.asarray(z, np.float64))
  pi = np.exp(log_pi)
  mean = lambda y: (pi * y).sum(axis=-1, keepdims=True)
  return (pi * (log_pi - mean(log_pi)) * (x - mean(x))).sum(axis=-1)


def as_f32_exact(x):
  """float64 values that are exactly representable in float32 (what the float32 kernel sees)."""
  return np.asarray(x, np.float32).astype(np.float64)


# ------------------------------------------------------------------ the theorem, tabular


@pytest.mark.parametrize("form", ["vanilla_pg", "natural_pg", "random"])
def test_predicted_entropy_change_is_first_order_exact(form):
  rng = np.random.default_rng(0)
  z = as_f32_exact(rng.normal(0.0, 1.5, (6, 10)))
  adv = rng.normal(0.0, 1.0, (6, 10))
  pi = np.exp(np_log_softmax(z))
  direction = {
      "vanilla_pg": pi * adv,  # Prop. 1 / Theorem 1: Δz = η·π·A
      "natural_pg": adv,  # Theorem 2: Δz = η·A
      "random": rng.normal(0.0, 1.0, (6, 10)),
  }[form]
  etas = (1e-1, 1e-2, 1e-3)
  errors, relative = [], []
  for eta in etas:
    delta = as_f32_exact(eta * direction)
    predicted = np.asarray(
        dynamics.predicted_entropy_change(z.astype(np.float32), delta.astype(np.float32)),
        np.float64,
    )
    # The theorem's closed form: ΔH ≈ −Cov_π(log π, Δz) = −η·Cov_π(log π, π·A) (or A).
    np.testing.assert_allclose(predicted, -np_policy_cov(z, delta), rtol=1e-4, atol=1e-9)
    exact = np_entropy(z + delta) - np_entropy(z)
    errors.append(np.linalg.norm(predicted - exact))
    relative.append(errors[-1] / np.linalg.norm(exact))
  # Error O(η²): shrinking η tenfold shrinks the error ~100-fold; error/η² stays bounded.
  assert errors[0] / errors[1] > 50 and errors[1] / errors[2] > 50, errors
  scaled = [e / eta**2 for e, eta in zip(errors, etas)]
  assert max(scaled) < 3 * min(scaled), scaled
  assert relative[-1] < 1e-2, relative


def test_predicted_entropy_change_sign_follows_the_covariance():
  """High-probability, high-advantage actions (positive covariance) lower the entropy."""
  z = np.array([[2.0, 1.0, 0.0, -1.0]], np.float32)
  favour_likely = np.array([[1.0, 0.0, 0.0, -1.0]], np.float32)
  assert float(dynamics.predicted_entropy_change(z, 0.01 * favour_likely)[0]) < 0
  assert float(dynamics.predicted_entropy_change(z, -0.01 * favour_likely)[0]) > 0
  # A constant shift of the logits is no change of the policy.
  assert float(dynamics.predicted_entropy_change(z, np.full_like(z, 0.3))[0]) == pytest.approx(
      0.0, abs=1e-7
  )
  with pytest.raises(ValueError, match="same shape"):
    dynamics.predicted_entropy_change(z, z[:, :3])


def test_entropy_matches_numpy():
  z = np.random.default_rng(1).normal(0.0, 3.0, (3, 5, 17)).astype(np.float32)
  np.testing.assert_allclose(dynamics.entropy(z), np_entropy(z), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------- token-level covariance -----


def make_batch(seed=0, rows=6, time=40):
  rng = np.random.default_rng(seed)
  logp = -rng.exponential(1.0, (rows, time))
  adv = np.repeat(rng.normal(0.0, 1.0, (rows, 1)), time, axis=1) + rng.normal(0, 0.1, (rows, time))
  lengths = rng.integers(1, time + 1, rows)
  lengths[0] = 0  # an all-padding row
  mask = (np.arange(time)[None, :] < lengths[:, None]).astype(np.float32)
  valid = mask > 0
  logp = np.where(valid, logp, -40.0)  # padding values that would show if they leaked in
  adv = np.where(valid, adv, 25.0)
  return logp.astype(np.float32), adv.astype(np.float32), mask


def np_token_cov(logp, adv, mask):
  valid = mask > 0
  logp, adv = logp.astype(np.float64), adv.astype(np.float64)
  return np.where(valid, (adv - adv[valid].mean()) * (logp - logp[valid].mean()), 0.0)


def test_token_covariance_matches_numpy():
  logp, adv, mask = make_batch(2)
  cov = np.asarray(dynamics.token_covariance(logp, adv, mask))
  np.testing.assert_allclose(cov, np_token_cov(logp, adv, mask), rtol=1e-4, atol=1e-6)
  assert (cov[mask == 0] == 0).all()
  # The mean of c_t over the valid tokens is the (ddof = 0) batch covariance of ℓ and A.
  valid = mask > 0
  assert cov[valid].mean() == pytest.approx(np.cov(logp[valid], adv[valid], ddof=0)[0, 1], rel=1e-4)


@pytest.mark.parametrize(
    "shape,fracs", [((6, 40), (0.0002, 0.002)), ((16, 96), (0.0002, 0.002, 0.05, 0.3))]
)
def test_covariance_metrics_match_numpy(shape, fracs):
  logp, adv, mask = make_batch(3, *shape)
  metrics = {
      k: float(v) for k, v in dynamics.covariance_metrics(logp, adv, mask, top_fracs=fracs).items()
  }
  valid = mask > 0
  cov = np_token_cov(logp, adv, mask)[valid]
  n = cov.size
  expected = {"cov/mean": cov.mean(), "cov/frac_positive": (cov > 0).mean()}
  for q in (0.01, 0.25, 0.5, 0.75, 0.99):
    expected[f"cov/q{round(q * 100):02d}"] = np.quantile(cov, q)  # linear interpolation
  descending = np.sort(cov)[::-1]
  for f in fracs:
    k = max(1, int(np.floor(f * n)))
    expected[f"cov/top_{f * 100:g}pct"] = descending[:k].mean()
  assert "cov/top_0.02pct" in expected and "cov/top_0.2pct" in expected
  assert set(metrics) == set(expected)
  for key, value in expected.items():
    assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_covariance_metrics_without_valid_tokens_are_zero():
  logp, adv, mask = make_batch(4)
  metrics = dynamics.covariance_metrics(logp, adv, np.zeros_like(mask))
  assert all(float(v) == 0.0 for v in metrics.values())


# ------------------------------------------------------ response-level (bandit) covariance


@pytest.mark.parametrize("per_token_adv", [False, True])
def test_response_covariance_matches_numpy(per_token_adv):
  rng = np.random.default_rng(5)
  rows, time = 10, 12
  group_ids = np.array([0, 0, 0, 0, 1, 1, 1, 2, 3, 3], np.int32)  # group 2: a singleton
  lengths = rng.integers(1, time + 1, rows)
  lengths[9] = 0  # group 3 keeps one response with tokens: singleton too
  mask = (np.arange(time)[None, :] < lengths[:, None]).astype(np.float32)
  logp = np.where(mask > 0, -rng.exponential(1.0, (rows, time)), -40.0).astype(np.float32)
  seq_adv = rng.normal(0.0, 1.0, rows).astype(np.float32)
  adv = np.where(mask > 0, seq_adv[:, None], 9.0).astype(np.float32) if per_token_adv else seq_adv
  per_group, mean = dynamics.response_covariance(logp, adv, mask, group_ids, num_groups=5)

  # Eq. 9: length-normalised response log-prob; Eq. 8: within-group covariance (ddof = 0).
  seq_logp = (logp * mask).sum(1) / np.maximum(mask.sum(1), 1)
  expected = np.zeros(5)
  for g in range(5):
    members = (group_ids == g) & (mask.sum(1) > 0)
    if members.sum() >= 2:
      x, y = seq_logp[members].astype(np.float64), seq_adv[members].astype(np.float64)
      expected[g] = ((x - x.mean()) * (y - y.mean())).mean()
  np.testing.assert_allclose(per_group, expected, rtol=1e-5, atol=1e-7)
  assert expected[2] == expected[3] == expected[4] == 0 and expected[:2].all()
  assert float(mean) == pytest.approx(expected[:2].mean(), rel=1e-5)


# ------------------------------------------- predicted vs measured entropy change of a model


@pytest.mark.parametrize(
    "token_chunk,vocab_chunk,temperature",
    [(1024, None, 1.0), (4, 3, 1.0), (4, 4, 0.7), (1, 10, 1.3)],
)
def test_entropy_change_from_hidden_matches_direct_computation(
    token_chunk, vocab_chunk, temperature
):
  rng = np.random.default_rng(6)
  d, v = 4, 10
  h0 = rng.normal(0.0, 1.0, (2, 3, d)).astype(np.float32)
  w0 = rng.normal(0.0, 1.0, (d, v)).astype(np.float32)
  h1 = (h0 + rng.normal(0.0, 0.01, h0.shape)).astype(np.float32)
  w1 = (w0 + rng.normal(0.0, 0.01, w0.shape)).astype(np.float32)
  predicted, measured = dynamics.entropy_change_from_hidden(
      h0, w0, h1, w1, temperature=temperature, token_chunk=token_chunk, vocab_chunk=vocab_chunk
  )
  assert predicted.shape == measured.shape == (2, 3)

  z0 = np.einsum("...d,dv->...v", h0.astype(np.float64), w0) / temperature
  z1 = np.einsum("...d,dv->...v", h1.astype(np.float64), w1) / temperature
  np.testing.assert_allclose(predicted, -np_policy_cov(z0, z1 - z0), rtol=1e-4, atol=2e-6)
  np.testing.assert_allclose(measured, np_entropy(z1) - np_entropy(z0), rtol=1e-4, atol=2e-6)
  # A small update: the first-order prediction tracks the measured change.
  np.testing.assert_allclose(predicted, measured, atol=0.05 * np.abs(measured).max())
