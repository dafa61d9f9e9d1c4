"""Policy losses and entropy interventions, composed by `policy_loss(config, ...)`.

Each intervention lives in its own module and registers itself by name (`registry.register`);
importing it here is all that wiring takes. See docs/interventions.md.
"""

from entropix_rl.losses import (  # noqa: F401  (imported for registration, in this order)
    ppo,
    clip_cov,
    kl_cov,
    high_entropy_tokens,
    entropy_advantage,
    kl_ref,
    entropy_bonus,
)
from entropix_rl.losses.aggregation import aggregate
from entropix_rl.losses.compose import loss_needs_entropy, loss_needs_entropy_grad, policy_loss
from entropix_rl.losses.config import (
    AGG_MODES,
    SELECTION_SCOPES,
    LossConfig,
    default_loss_config,
    resolve_loss_config,
)
from entropix_rl.losses.entropy_bonus import (
    entropy_coefficient,
    init_entropy_controller,
    update_entropy_controller,
)
from entropix_rl.losses.kl_ref import KL_ESTIMATORS, kl_estimate
from entropix_rl.losses.registry import register

__all__ = [
    "AGG_MODES",
    "KL_ESTIMATORS",
    "SELECTION_SCOPES",
    "LossConfig",
    "aggregate",
    "default_loss_config",
    "entropy_coefficient",
    "init_entropy_controller",
    "kl_estimate",
    "loss_needs_entropy",
    "loss_needs_entropy_grad",
    "policy_loss",
    "register",
    "resolve_loss_config",
    "update_entropy_controller",
]
