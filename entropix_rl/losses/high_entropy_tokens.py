"""Train on the high-entropy minority only: the "80/20" rule (Wang et al. 2025,
arXiv 2506.01939; INTERVENTIONS.md §6; reference `get_global_entropy_top_mask`).

    s_t = 1 for the ceil(ρ·N) valid tokens of the scope with the largest H_t (sg, ranking only)
    L   = Agg(L^ppo, m ⊙ s)

The surrogate is the configured PPO loss (the reference runs ε_l 0.2, ε_h 0.28, dual-clip
c = 10: set `clip_eps_high` and `dual_clip_c` for that). The aggregation mask is `m ⊙ s`, so
with `token-mean` the denominator is the selected count (each kept token weighs ~1/ρ times
more than under plain PPO) and the other tokens carry no gradient.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from entropix_rl.losses import selection
from entropix_rl.losses.base import LossInputs, SurrogateOutput
from entropix_rl.losses.config import LossConfig, check_ratio
from entropix_rl.losses.ppo import ppo_terms_from_config
from entropix_rl.losses.registry import register


@dataclasses.dataclass(frozen=True)
class HighEntropyTokensConfig:
  """Constants of the 80/20 selector.

  Attributes:
    ratio: ρ, fraction of the scope's valid tokens kept, by entropy (`entropy_top_ratio` 0.2).
  """

  ratio: float = 0.2

  def validate(self, path: str) -> None:
    check_ratio(f"{path}.ratio", self.ratio)


def high_entropy_pick(entropy: jax.Array, mask: jax.Array, *, ratio: float) -> jax.Array:
  """Top `ceil(ρ·N)` valid tokens by entropy within one scope chunk (bool `[rows, T]`)."""
  valid = mask > 0
  k = selection.count_ceil(ratio, valid.sum())
  k_max = selection.count_ceil(ratio, mask.size)
  score = jax.lax.stop_gradient(entropy)
  return selection.top_k_mask(score.ravel(), valid.ravel(), k, k_max).reshape(mask.shape)


@register("high_entropy_tokens", config=HighEntropyTokensConfig, needs_entropy=True)
def high_entropy_tokens(cfg: LossConfig, inputs: LossInputs) -> SurrogateOutput:
  """80/20 surrogate (module docstring); `selected` is the kept set s."""
  terms = ppo_terms_from_config(cfg, inputs)
  ratio = cfg.high_entropy_tokens.ratio
  pick = lambda entropy, mask, key: high_entropy_pick(entropy, mask, ratio=ratio)
  selected = selection.select_per_scope(cfg, pick, (inputs.entropy, inputs.mask))
  return SurrogateOutput(per_token_loss=terms.loss,
                         loss_mask=inputs.mask * selected.astype(jnp.float32),
                         selected=selected, clipped=terms.clipped)
