"""The policy: one decoder for every model family (`models.families`: Qwen2, Llama, Qwen3,
Mistral), its config, pure forward functions, KV cache and Hugging Face conversion."""

from entropix_rl.models.architecture import Architecture, RopeScaling
from entropix_rl.models.attention import ATTENTION_IMPLS
from entropix_rl.models.config import ModelConfig, tiny_config
from entropix_rl.models.decoder import (
    KVCache,
    forward,
    forward_hidden,
    init_cache,
    init_params,
    logits_from_hidden,
    prefill,
    unembedding,
)

__all__ = [
    "ATTENTION_IMPLS",
    "Architecture",
    "KVCache",
    "ModelConfig",
    "RopeScaling",
    "forward",
    "forward_hidden",
    "init_cache",
    "init_params",
    "logits_from_hidden",
    "prefill",
    "tiny_config",
    "unembedding",
]
