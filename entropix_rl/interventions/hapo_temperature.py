"""HAPO's adaptive sampling temperature (Liu et al. 2025, arXiv 2509.16591;
starriver030515/HAPO @ 7671dde).

A rollout intervention, no loss part. At every decoding step each row samples at

    T_t = T · (1 + τ · ĥ_t)

where ĥ_t is HAPO's normalised entropy score (`hapo.score_from_statistics`) of the live
next-token distribution's entropy (at the base temperature T), under the statistics (centre,
scale, extremes) of the previous rollout's behaviour-policy entropies, kept in intervention
state and refreshed after every update. High-entropy positions sample hotter, low-entropy ones
cooler. Until a first rollout has been seen, ĥ = 0 and T_t = T. `score_form` follows
`loss.hapo.score_form` (`absolute`, the authors' code, never cools: T_t ≥ T).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_bool, check_number
from entropix_rl.interventions import hapo
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention


@dataclasses.dataclass(frozen=True)
class HAPOTemperatureConfig:
  """Attributes: enabled; tau (τ ≥ 0, `temperature_tau` 0.05; lower it if training
  collapses, the authors warn)."""

  enabled: bool = False
  tau: float = 0.05

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    check_number(f"{path}.tau", self.tau, low=0.0)


def live_entropy(logits: jax.Array, temperature: jax.Array) -> jax.Array:
  """`[R]` entropy of softmax(logits / T) for `[R, V]` logits and a scalar temperature T."""
  chex.assert_rank([logits, temperature], [2, 0])
  log_probs = jax.nn.log_softmax(logits / temperature, axis=-1)
  return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def temperature_rule(cfg: LossConfig):
  """The sampler's rule `(logits, T, state) -> [R]` temperatures (module docstring)."""
  tau, form = cfg.hapo_temperature.tau, cfg.hapo.score_form

  def rule(logits: jax.Array, temperature: jax.Array, state: dict) -> jax.Array:
    score = hapo.score_from_statistics(live_entropy(logits, temperature), state, form)
    score = jnp.where(state["ready"], jnp.clip(score, -1.0, 1.0), 0.0)
    return temperature * (1.0 + tau * score)

  return rule


def _init_state(cfg: LossConfig) -> dict:
  return {
      "centre": jnp.float32(0),
      "scale": jnp.float32(1),
      "top": jnp.float32(1),
      "bottom": jnp.float32(1),
      "ready": jnp.bool_(False),
  }


def _after_update(cfg: LossConfig, state: dict, rollout: TokenBatch) -> tuple[dict, dict]:
  entropy = rollout.require("old_entropy", "hapo_temperature")
  stats = hapo.score_statistics(entropy, rollout.mask, pivot=cfg.hapo.entropy_pivot)
  stats = {k: v.astype(jnp.float32) for k, v in stats.items()}
  return dict(stats, ready=jnp.bool_(True)), {"log_entropy_centre": stats["centre"]}


INTERVENTION = Intervention(
    name="hapo_temperature",
    kind="rollout",
    apply=None,
    config=HAPOTemperatureConfig,
    active=lambda cfg: cfg.hapo_temperature.enabled,
    needs=lambda cfg: frozenset({"old_entropy"}),
    init_state=_init_state,
    after_update=_after_update,
    temperature_rule=temperature_rule,
)
