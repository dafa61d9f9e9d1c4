"""The entropy-dynamics theorem inside training: single optimizer updates on real rollouts.

Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning Language Models" (arXiv
2505.22617, §3; docs/interventions.md, "The entropy-dynamics theorem"). For one update
θ → θ' (one or k sequential mini-batch optimizer steps) on a rollout batch, at every sampled
state `s_t` (the prompt and completion prefix, teacher-forced before and after the update)
with logits `z_t = z_θ(s_t)/T`, `π_t = softmax(z_t)`, sampled token `a_t`, `ℓ_t = log π_t(a_t)`,
`H_t = H(π_t)` and advantage `A_t`:

  (a) measured   ΔH_t = H(softmax(z'_t)) − H(softmax(z_t))                 (exact, full vocabulary)
  (b) Lemma 1    ΔH_t ≈ −Cov_{a~π_t}(log π_t(a), Δz_t(a)),  Δz_t = z'_t − z_t   (the actual change)
  (c) Theorem 1 (vanilla PG, tabular softmax: Δz(s,a) = η·π(a|s)·A(s,a))
                 ΔH(s) ≈ −η·Cov_{a~π(·|s)}(log π(a|s), π(a|s)·A(s,a))
      Theorem 2 (natural PG: Δz(s,a) = η·A(s,a))
                 ΔH(s) ≈ −η·Cov_{a~π(·|s)}(log π(a|s), A(s,a))

(a) and (b) are `dynamics.entropy_change_from_hidden`. For (c) a rollout knows `A(s,a)` only
at the sampled action, so two estimators of the theorems' covariance are computed:

* per token, single sample (`sampled_theorem_terms`): since `E_{a~π}[log π(a)] = −H`,
  `Cov_{a~π}(log π, f) = E_{a~π}[(log π(a) + H)·f(a)]` exactly, and with `a_t ~ π_t`
  `ĉ_t = (ℓ_t + H_t)·f(a_t)` is an unbiased estimate of it, f = π·A (Theorem 1) or f = A
  (Theorem 2). Per-state centring uses the exact `H_t`, so no batch mean enters.
* over the batch (`batch_covariance_forms`), the paper's practical token-level estimate (its
  Eq. 11, the quantity Clip-Cov and KL-Cov select on): the covariance over the valid sampled
  tokens of the batch, `(1/N) Σ_t (ℓ_t − ℓ̄)(f_t − f̄)` (ddof = 0), f_t = π_t(a_t)·A_t or A_t.

The theorems are statements about logit-space steps of a tabular softmax; a network's
parameter step has no single η in logit space (every token's gradient moves every state's
logits), so the binary reports the correlation of (c) with (a) and the fitted scale, not an
identity. The loss is plain policy gradient, `L = −Σ_t m_t·A_t·ℓ_t / Σ_t m_t` (token mean over
the mini-batch), whose gradient at the rollout params is PPO's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from entropix_rl import dynamics
from entropix_rl.models import ModelConfig, unembedding
from entropix_rl.train import update

OPTIMIZERS: dict[str, Callable[[jax.Array], optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "adam": optax.adam,
}
PROBE_FIELDS = ("tokens", "attention_mask", "completion", "completion_mask", "advantages")


def pg_loss(
    model_cfg: ModelConfig, params: Any, rows: dict, *, temperature: float, token_chunk: int
) -> jax.Array:
  """Vanilla policy-gradient loss `−Σ_t m_t·A_t·ℓ_t / max(Σ_t m_t, 1)` (token mean).

  Args:
    rows: `tokens [R, P+C]`, `attention_mask [R, P+C]`, `completion [R, C]`,
      `completion_mask [R, C]`, `advantages [R, C]` (per-token `A_t`).

  Returns:
    float32 scalar.
  """
  logp = update.completion_quantities(
      model_cfg, params, rows, temperature=temperature, token_chunk=token_chunk, with_entropy=False
  )["logp"]
  mask = rows["completion_mask"].astype(jnp.float32)
  return -(rows["advantages"] * logp * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def make_probe_update(
    model_cfg: ModelConfig,
    optimizer: str,
    num_minibatches: int,
    *,
    temperature: float = 1.0,
    token_chunk: int = 2048,
) -> Callable[[Any, dict, jax.Array, jax.Array], dict[str, jax.Array]]:
  """Builds the jitted `probe(params, batch, learning_rate, key) -> per-token dict`.

  One probe: from `params` and a fresh optimizer state, `num_minibatches` sequential
  `pg_loss` steps, one per mini-batch of `N / num_minibatches` rows (rows shuffled with `key`,
  as the trainer's one epoch), then the measured (a) and first-order (b) entropy change of the
  whole update at every completion position, and the pre-update `ℓ_t`, `H_t` for (c).

  Args:
    model_cfg: the policy's config.
    optimizer: a key of `OPTIMIZERS` ("sgd": `θ −= η·g`; "adam": optax.adam, fresh moments,
      so its first step is `−η·g/(|g| + 1e-8)` elementwise).
    num_minibatches: k, sequential optimizer steps; must divide the batch rows.
    temperature: logits / T, the rollout temperature.
    token_chunk: tokens per chunk of the chunked log-prob/entropy passes.

  Returns:
    `probe(params, batch, learning_rate, key)` with `batch` holding `PROBE_FIELDS` for N rows
    (`advantages [N, C]` per token) and a scalar `learning_rate`; it returns float32 `[N, C]`
    arrays `measured`, `predicted`, `logp`, `entropy`, `advantages`, `mask`.

  Raises:
    ValueError: for an unknown optimizer or k < 1.
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer={optimizer!r}; allowed: {tuple(OPTIMIZERS)}")
  if num_minibatches < 1:
    raise ValueError(f"num_minibatches={num_minibatches} must be >= 1")
  loss = lambda params, rows: pg_loss(
      model_cfg, params, rows, temperature=temperature, token_chunk=token_chunk
  )

  def probe(
      params: Any, batch: dict, learning_rate: jax.Array, key: jax.Array
  ) -> dict[str, jax.Array]:
    batch = {k: batch[k] for k in PROBE_FIELDS}
    n = batch["completion"].shape[0]
    if n % num_minibatches:
      raise ValueError(f"num_minibatches={num_minibatches} must divide the {n} rows")
    before = update.completion_quantities(
        model_cfg,
        params,
        batch,
        temperature=temperature,
        token_chunk=token_chunk,
        with_entropy=True,
    )
    opt = OPTIMIZERS[optimizer](learning_rate)
    order = jax.random.permutation(key, n).reshape(num_minibatches, n // num_minibatches)

    def step(carry, rows):
      p, opt_state = carry
      grads = jax.grad(loss)(p, jax.tree.map(lambda x: x[rows], batch))
      updates, opt_state = opt.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), None

    (new_params, _), _ = jax.lax.scan(step, (params, opt.init(params)), order)
    predicted, measured = dynamics.entropy_change_from_hidden(
        update.completion_hidden(model_cfg, params, batch),
        unembedding(model_cfg, params),
        update.completion_hidden(model_cfg, new_params, batch),
        unembedding(model_cfg, new_params),
        temperature=temperature,
        token_chunk=token_chunk,
    )
    mask = batch["completion_mask"].astype(jnp.float32)
    return {
        "measured": measured * mask,
        "predicted": predicted * mask,
        "logp": before["logp"] * mask,
        "entropy": before["entropy"] * mask,
        "advantages": batch["advantages"] * mask,
        "mask": mask,
    }

  return jax.jit(probe)


def sampled_theorem_terms(
    logp: jax.Array, entropy: jax.Array, advantages: jax.Array, mask: jax.Array
) -> dict[str, jax.Array]:
  """Per-token single-sample estimates of the theorems' per-state covariance.

      pg_t  = (ℓ_t + H_t)·π_t(a_t)·A_t   ≈ Cov_{a~π_t}(log π_t, π_t·A)   (Theorem 1)
      npg_t = (ℓ_t + H_t)·A_t            ≈ Cov_{a~π_t}(log π_t, A)       (Theorem 2)

  Unbiased for `a_t ~ π_t` because `Cov_π(log π, f) = E_π[(log π + H)·f]` exactly. The
  predicted entropy change at `s_t` is `−η·pg_t` (resp. `−η·npg_t`).

  Args:
    logp: `[...]` log-prob `ℓ_t` of the sampled token (pre-update).
    entropy: `[...]` full-vocabulary entropy `H_t` at the state (pre-update, nats).
    advantages: `[...]` advantage `A_t` of the sampled token.
    mask: `[...]` 1 at valid tokens.

  Returns:
    `{"pg": [...], "npg": [...]}` float32, 0 at masked tokens.
  """
  logp = logp.astype(jnp.float32)
  m = mask.astype(jnp.float32)
  npg = (logp + entropy.astype(jnp.float32)) * advantages.astype(jnp.float32) * m
  return {"pg": npg * jnp.exp(logp), "npg": npg}


def batch_covariance_forms(
    logp: jax.Array, advantages: jax.Array, mask: jax.Array
) -> dict[str, jax.Array]:
  """The paper's token-level estimate of the theorems' covariance over a batch (Eq. 11).

      pg  = (1/N) Σ_t (ℓ_t − ℓ̄)(π_t A_t − mean(π A))     (Theorem 1: ΔH ≈ −η·pg)
      npg = (1/N) Σ_t (ℓ_t − ℓ̄)(A_t − Ā)                (Theorem 2: ΔH ≈ −η·npg)

  over the N valid tokens (ddof = 0), `π_t = exp(ℓ_t)`: `dynamics.token_covariance` with
  `π·A` (resp. `A`) in place of the advantages.

  Args:
    logp: `[B, T]` log-probs of the sampled tokens; advantages: `[B, T]`; mask: `[B, T]`.

  Returns:
    `{"pg": scalar, "npg": scalar}` float32.
  """
  n = jnp.maximum(mask.astype(jnp.float32).sum(), 1.0)
  weighted = jnp.exp(logp.astype(jnp.float32)) * advantages
  return {
      "pg": dynamics.token_covariance(logp, weighted, mask).sum() / n,
      "npg": dynamics.token_covariance(logp, advantages, mask).sum() / n,
  }


def agreement(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
  """How well `predicted` tracks `measured` (1-D arrays of equal length, float64 on the host).

      pearson_r       the correlation coefficient
      slope           least squares through the origin, measured ≈ slope·predicted:
                      Σ x·y / Σ x²  (1 for a correct prediction of the right size)
      rmse            sqrt(mean (y − x)²), the units of the inputs
      ratio_of_means  mean(y) / mean(x)
      sign_agreement  fraction of entries with sign(x) == sign(y)

  NaN where undefined (fewer than 2 entries, zero variance, zero denominator).

  Returns:
    dict of Python floats, plus `n` (entries).
  """
  x = np.asarray(predicted, np.float64).reshape(-1)
  y = np.asarray(measured, np.float64).reshape(-1)
  if x.shape != y.shape:
    raise ValueError(f"predicted {x.shape} and measured {y.shape} must have the same size")
  n = x.size
  nan = float("nan")
  ok = n >= 2 and x.std() > 0 and y.std() > 0
  sxx = float((x * x).sum())
  return {
      "n": n,
      "pearson_r": float(np.corrcoef(x, y)[0, 1]) if ok else nan,
      "slope": float((x * y).sum() / sxx) if sxx > 0 else nan,
      "rmse": float(np.sqrt(((y - x) ** 2).mean())) if n else nan,
      "ratio_of_means": float(y.mean() / x.mean()) if n and x.mean() != 0 else nan,
      "sign_agreement": float((np.sign(x) == np.sign(y)).mean()) if n else nan,
  }
