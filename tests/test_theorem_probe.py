"""The theorem probe (`entropix_rl.theorem_probe`, experiments/theorem_probe.py): the first-order
prediction of a real update converges to the measured change, the sampled estimators of the
paper's Theorems 1-2 on an exact softmax bandit, and the binary's JSON."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropix_rl import dynamics, theorem_probe
from entropix_rl.models import init_params, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def np_log_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_entropy(z):
  log_pi = np_log_softmax(z)
  return -(np.exp(log_pi) * log_pi).sum(axis=-1)


def np_policy_cov(z, x):
  """`Cov_{a~π}(log π(a), x(a))` per state, exact expectation under π = softmax(z)."""
  log_pi = np_log_softmax(z)
  pi = np.exp(log_pi)
  mean = lambda y: (pi * y).sum(axis=-1, keepdims=True)
  return (pi * (log_pi - mean(log_pi)) * (x - mean(x))).sum(axis=-1)


# ------------------------------------------------------- (i) a real update on a tiny model


def random_rows(cfg, rows=8, prompt=4, completion=6, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (rows, prompt + completion)).astype(np.int32)
  lengths = rng.integers(2, completion + 1, rows)
  completion_mask = (np.arange(completion)[None, :] < lengths[:, None]).astype(np.float32)
  attention_mask = np.concatenate([np.ones((rows, prompt), bool), completion_mask > 0], axis=1)
  advantages = rng.normal(0.0, 1.0, (rows, 1)).astype(np.float32) * completion_mask
  return {
      "tokens": tokens,
      "attention_mask": attention_mask,
      "completion": tokens[:, prompt:],
      "completion_mask": completion_mask,
      "advantages": advantages,
  }


@pytest.mark.parametrize(
    "optimizer,lrs", [("sgd", (1e-2, 1e-3, 1e-4)), ("adam", (1e-3, 1e-4, 1e-5))]
)
def test_first_order_prediction_converges_to_measured_change(optimizer, lrs):
  cfg = tiny_config(vocab_size=16)
  params = init_params(cfg, jax.random.PRNGKey(0), init_std=0.2)
  batch = random_rows(cfg)
  probe = theorem_probe.make_probe_update(cfg, optimizer, 1, token_chunk=16)
  relative = []
  for lr in lrs:
    out = jax.device_get(probe(params, batch, jnp.float32(lr), jax.random.PRNGKey(1)))
    valid = out["mask"] > 0
    fit = theorem_probe.agreement(out["predicted"][valid], out["measured"][valid])
    relative.append(fit["rmse"] / np.abs(out["measured"][valid]).mean())
  # The prediction is first order in Δz: its error is O(lr²), so relative to the O(lr) change
  # it shrinks about tenfold with every tenfold smaller step.
  assert relative[0] > 5 * relative[1] > 25 * relative[2], relative
  assert fit["pearson_r"] > 0.999 and abs(fit["slope"] - 1) < 0.02, fit
  assert abs(fit["ratio_of_means"] - 1) < 0.02 and relative[-1] < 0.03, (fit, relative)


def test_probe_with_minibatches_and_bad_arguments():
  cfg = tiny_config(vocab_size=16)
  params = init_params(cfg, jax.random.PRNGKey(0), init_std=0.2)
  batch = random_rows(cfg)
  out = theorem_probe.make_probe_update(cfg, "adam", 4, token_chunk=16)(
      params, batch, jnp.float32(1e-4), jax.random.PRNGKey(2)
  )
  assert set(out) == {"measured", "predicted", "logp", "entropy", "advantages", "mask"}
  assert all(v.shape == batch["completion"].shape for v in out.values())
  assert np.all(np.asarray(out["measured"])[batch["completion_mask"] == 0] == 0)
  with pytest.raises(ValueError, match="optimizer"):
    theorem_probe.make_probe_update(cfg, "rmsprop", 1)
  with pytest.raises(ValueError, match="divide"):
    theorem_probe.make_probe_update(cfg, "sgd", 3)(
        params, batch, jnp.float32(0.1), jax.random.PRNGKey(0)
    )


# ------------------------------------------------- (ii) the exact softmax bandit, no network


def test_policy_gradient_form_on_an_exact_bandit():
  rng = np.random.default_rng(3)
  z = rng.normal(0.0, 1.5, (3, 6))
  adv = rng.normal(0.0, 1.0, (3, 6))
  pi = np.exp(np_log_softmax(z))
  eta = 1e-3
  for form, direction in (("pg", pi * adv), ("npg", adv)):
    # Theorem 1 (Δz = η·π·A) / Theorem 2 (Δz = η·A) through Lemma 1, against an independent
    # covariance and against the exact entropy change.
    theorem = -eta * np_policy_cov(z, direction)
    lemma = np.asarray(
        dynamics.predicted_entropy_change(
            jnp.asarray(z, jnp.float32), jnp.asarray(eta * direction, jnp.float32)
        )
    )
    np.testing.assert_allclose(lemma, theorem, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(np_entropy(z + eta * direction) - np_entropy(z), theorem, rtol=2e-2)

    # With sampled actions only: a_t ~ π(·|s), A_t = A(s, a_t).
    draws = 200_000
    for s in range(3):
      actions = rng.choice(6, draws, p=pi[s])
      logp = np_log_softmax(z[s])[actions]
      adv_t = adv[s, actions]
      entropy_t = np.full(draws, np_entropy(z[s]))
      mask = np.ones(draws, np.float32)
      single = np.asarray(
          theorem_probe.sampled_theorem_terms(
              jnp.asarray(logp), jnp.asarray(entropy_t), jnp.asarray(adv_t), mask
          )[form],
          np.float64,
      )
      exact = np_policy_cov(z[s], direction[s])
      # The single-sample term is unbiased: its mean is Cov_π within 4 standard errors.
      assert abs(single.mean() - exact) < 4 * single.std() / np.sqrt(draws), (form, s)
      # One state: the paper's token covariance over the batch estimates the same Cov_π.
      batch = float(
          theorem_probe.batch_covariance_forms(
              jnp.asarray(logp)[None], jnp.asarray(adv_t)[None], mask[None]
          )[form]
      )
      f = np.exp(logp) * adv_t if form == "pg" else adv_t
      np.testing.assert_allclose(batch, np.cov(logp, f, ddof=0)[0, 1], rtol=1e-3)
      products = (logp - logp.mean()) * (f - f.mean())
      assert abs(batch - exact) < 4 * products.std() / np.sqrt(draws), (form, s, batch, exact)


def test_agreement_figures():
  x = np.array([1.0, 2.0, -1.0, 4.0])
  fit = theorem_probe.agreement(x, 2 * x)
  assert fit["pearson_r"] == pytest.approx(1.0) and fit["slope"] == pytest.approx(2.0)
  assert fit["rmse"] == pytest.approx(np.sqrt((x**2).mean()))
  assert fit["ratio_of_means"] == pytest.approx(2.0) and fit["sign_agreement"] == 1.0
  assert fit["n"] == 4
  assert np.isnan(theorem_probe.agreement(np.ones(3), x[:3])["pearson_r"])
  with pytest.raises(ValueError, match="same size"):
    theorem_probe.agreement(x, x[:2])


# ------------------------------------------------------------------- (iii) the binary


@pytest.mark.slow  # about 30 s on 2 CPU cores: SFT, sampling and two probe compilations
def test_binary_writes_the_figures(tmp_path):
  out = tmp_path / "probe"
  cmd = [
      sys.executable,
      os.path.join(REPO, "experiments", "theorem_probe.py"),
      f"--out={out}",
      "--num_rollouts=2",
      "--sgd_lrs=0.1,0.01",
      "--adam_lrs=1e-4",
      "--multi_lrs=1e-4",
      "--ks=1",
      "--scatter_points=50",
      "--config.model.hidden_size=32",
      "--config.model.num_layers=2",
      "--config.model.head_dim=8",
      "--config.model.intermediate_size=64",
      "--config.sft.steps=5",
      "--config.sft.batch_size=16",
      "--config.sft.log_every=5",
      "--config.rl.prompts_per_step=4",
      "--config.rl.group_size=4",
  ]
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  report = json.loads((out / "theorem_probe.json").read_text())
  assert (out / "theorem_probe.png").stat().st_size > 0
  assert (out / "sft" / "config.json").exists()
  assert [(s["optimizer"], s["lr"], s["k"]) for s in report["settings"]] == [
      ("sgd", 0.1, 1),
      ("sgd", 0.01, 1),
      ("adam", 1e-4, 1),
  ]  # adam 1e-4 k=1 once
  assert lines == report["settings"]
  assert report["rollouts"]["count"] == 2 and report["rollouts"]["rows"] == 16
  for setting in report["settings"]:
    assert set(setting["per_token"]) == {
        "lemma",
        "lemma_rollout_median",
        "pg_single_sample",
        "npg_single_sample",
    }
    assert set(setting["per_step"]) == {
        "predicted",
        "pg_batch",
        "npg_batch",
        "pg_token_mean",
        "npg_token_mean",
    }
    lemma = setting["per_token"]["lemma"]
    assert set(lemma) == {"n", "pearson_r", "slope", "rmse", "ratio_of_means", "sign_agreement"}
    assert lemma["n"] > 0 and len(setting["measured_step_means"]) == 2
