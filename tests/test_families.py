"""The model-family registry: each family's tensor tables against the decoder's param tree,
its config.json round trip, the decoder flags it fixes, and the registry's errors."""

import jax
import numpy as np
import pytest

from entropix_rl.models import families, hf, hf_layout, init_params, tiny_config
from entropix_rl.models.families.base import Family, top_tensors


@pytest.mark.parametrize("model_type", families.MODEL_TYPES)
@pytest.mark.parametrize("tie", [False, True])
def test_family_tables_are_the_param_tree(model_type, tie):
  """Every param is exactly one Hugging Face tensor of the family's tables, with our shape
  after its layout's conversion (which `to_hf` inverts), and the param count is the tree's."""
  config = tiny_config(model_type=model_type, head_dim=16, tie_embeddings=tie)
  params = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)

  def converted(tensors):
    shapes = {}
    for tensor in tensors:
      stored = rng.normal(size=tensor.shape)
      ours = hf_layout.to_ours(tensor.layout, stored, config.head_dim)
      np.testing.assert_array_equal(hf_layout.to_hf(tensor.layout, ours), stored)
      shapes[tensor.param] = ours.shape
    return shapes

  layer_tensors = config.family.layer_tensors(config).values()
  assert converted(layer_tensors) == {k: x.shape[1:] for k, x in params["layers"].items()}
  assert converted(top_tensors(config).values()) == {
      k: x.shape for k, x in params.items() if k != "layers"
  }
  assert config.num_params() == sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "model_type,window",
    [("qwen2", None), ("llama", None), ("qwen3", None), ("mistral", 7), ("mistral", None)],
)
def test_config_json_round_trip(model_type, window):
  config = tiny_config(model_type=model_type, sliding_window=window, bos_token_id=1, eos_token_id=2)
  raw = hf.config_to_hf(config)
  assert raw["model_type"] == model_type
  assert raw["architectures"] == [families.get(model_type).hf_architecture]
  assert hf.config_from_hf(raw) == config


def test_unknown_model_type_names_it_and_the_families():
  allowed = r"\('qwen2', 'llama', 'qwen3', 'mistral'\)"
  with pytest.raises(ValueError, match=rf"model_type='gpt2'; supported: {allowed}"):
    families.get("gpt2")
  with pytest.raises(ValueError, match=rf"model_type='gpt2'; supported: {allowed}"):
    tiny_config(model_type="gpt2")


def test_a_family_fills_the_flags_left_unset():
  qwen2, llama, qwen3, mistral = (tiny_config(model_type=t) for t in families.MODEL_TYPES)
  assert (qwen2.qkv_bias, qwen2.qk_norm, qwen2.sliding_window) == (True, False, None)
  assert (llama.qkv_bias, llama.qk_norm, llama.sliding_window) == (False, False, None)
  assert (qwen3.qkv_bias, qwen3.qk_norm, qwen3.sliding_window) == (False, True, None)
  assert (mistral.qkv_bias, mistral.qk_norm, mistral.sliding_window) == (False, False, None)
  assert tiny_config(model_type="mistral", sliding_window=16).sliding_window == 16
  assert tiny_config(model_type="qwen3", qk_norm=True) == qwen3  # explicit = default


@pytest.mark.parametrize(
    "model_type,flag,value,message",
    [
        (
            "qwen3",
            "qk_norm",
            False,
            "model.qk_norm=False does not fit model_type='qwen3': its checkpoints have qk_norm=True",
        ),
        ("qwen2", "qkv_bias", False, "model.qkv_bias=False does not fit model_type='qwen2'"),
        ("llama", "sliding_window", 8, "model.sliding_window=8 does not fit model_type='llama'"),
        ("mistral", "sliding_window", 0, r"model.sliding_window=0; allowed: an int >= 1 or None"),
    ],
)
def test_a_flag_the_family_cannot_hold_fails_naming_it(model_type, flag, value, message):
  with pytest.raises(ValueError, match=message):
    tiny_config(model_type=model_type, **{flag: value})


def test_a_family_must_set_every_decoder_flag_once():
  with pytest.raises(ValueError, match=r"family 'x'.*must split the decoder flags"):
    Family(model_type="x", hf_architecture="X", fixed_flags={"qkv_bias": False})
  with pytest.raises(ValueError, match=r"family 'x'.*must split the decoder flags"):
    Family(
        model_type="x",
        hf_architecture="X",
        default_flags={"qkv_bias": False},
        fixed_flags={"qkv_bias": False, "qk_norm": False, "sliding_window": None},
    )
