"""Policy losses and entropy interventions, composed by `compute_loss` / `policy_loss`.

Each intervention is one module in this package that defines an `INTERVENTION`
(`registry.Intervention`). `INTERVENTIONS` below registers them; its order is the composition
order within each kind (docs/interventions.md, "How the loss is composed").
"""

from entropix_rl.interventions import (
    aepo,
    aepo_agentic,
    ares,
    cispo,
    clip_cov,
    cure,
    empg,
    empo,
    entropy_advantage,
    entropy_bonus,
    epo,
    ettrl,
    gppo,
    gspo,
    hapo,
    hapo_temperature,
    hapo_token_advantage,
    high_entropy_tokens,
    kl_cov,
    kl_ref,
    lp_reg,
    ppo,
    random_reward,
    registry,
    seed_grpo,
    siren,
    steer,
    ttrl,
)

INTERVENTIONS = (
    # rollout: on the host, on the sampled rows (rewards, extra samples, temperature)
    random_reward.INTERVENTION,
    ttrl.INTERVENTION,
    empo.INTERVENTION,
    cure.INTERVENTION,
    aepo.ROLLOUT,
    hapo_temperature.INTERVENTION,
    ettrl.ROLLOUT,
    aepo_agentic.ROLLOUT,
    ares.ROLLOUT,
    # advantage: once per update, on the whole rollout
    hapo_token_advantage.INTERVENTION,
    aepo.ADVANTAGE,
    seed_grpo.INTERVENTION,
    empg.INTERVENTION,
    ettrl.EAR,
    # advantage_shaper: in every loss call, before the surrogate
    entropy_advantage.INTERVENTION,
    aepo_agentic.ADVANTAGE,
    # surrogate: the one named by loss.name
    ppo.INTERVENTION,
    clip_cov.INTERVENTION,
    kl_cov.INTERVENTION,
    high_entropy_tokens.INTERVENTION,
    gppo.INTERVENTION,
    gspo.INTERVENTION,
    cispo.INTERVENTION,
    hapo.INTERVENTION,
    aepo_agentic.SURROGATE,
    steer.INTERVENTION,
    lp_reg.INTERVENTION,
    # regulariser: added to the loss, in this order
    kl_ref.INTERVENTION,
    entropy_bonus.INTERVENTION,
    gppo.POSITIVE_NLL,
    epo.INTERVENTION,
    aepo.REGULARISER,
    ares.KL,
    siren.INTERVENTION,
)
for _entry in INTERVENTIONS:
  registry.register(_entry)

# pylint: disable=wrong-import-position
from entropix_rl.interventions.batch import TokenBatch  # noqa: E402
from entropix_rl.interventions.compose import (  # noqa: E402
    after_update,
    before_update,
    changes_temperature,
    compute_loss,
    features,
    init_states,
    needs,
    needs_planning_pass,
    policy_loss,
    reshape,
    rollout_advantages,
    samples_per_prompt,
    sampling_temperature,
    temperature_rule,
)
from entropix_rl.interventions.config import (  # noqa: E402
    LossConfig,
    default_loss_config,
    resolve_loss_config,
)
from entropix_rl.interventions.registry import Intervention, register  # noqa: E402

__all__ = [
    "INTERVENTIONS",
    "Intervention",
    "LossConfig",
    "TokenBatch",
    "after_update",
    "before_update",
    "changes_temperature",
    "compute_loss",
    "default_loss_config",
    "features",
    "init_states",
    "needs",
    "needs_planning_pass",
    "policy_loss",
    "register",
    "reshape",
    "resolve_loss_config",
    "rollout_advantages",
    "samples_per_prompt",
    "sampling_temperature",
    "temperature_rule",
]
