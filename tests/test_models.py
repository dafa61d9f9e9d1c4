"""The JAX decoder against transformers' PyTorch Qwen2, Llama, Qwen3 and Mistral, the KV cache,
and HF conversion."""

import json
import os

from hf_utils import make_hf_model, save_hf_model
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from entropix_rl.models import forward, forward_hidden, hf, init_cache, init_params, tiny_config

F32_TOL = 1e-4
# bfloat16 keeps 8 mantissa bits; logits of O(1) after 2 layers differ by a few 1e-2 between
# two bf16 implementations that round at different places. We compare both against the
# float32 reference and require the bf16 error to stay below this.
BF16_TOL = 0.1


def _tokens(batch=3, length=11, vocab=96, seed=0):
  return np.random.RandomState(seed).randint(3, vocab, (batch, length))


def _left_padded(tokens, pads):
  """`tokens` with row i's first `pads[i]` tokens made padding: (tokens, mask, positions)."""
  mask = (np.arange(tokens.shape[1])[None] >= np.asarray(pads)[:, None]).astype(np.int64)
  return np.where(mask == 1, tokens, 0), mask, np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def _random_params(config, seed):
  """Random params with every leaf random (norms around 1, biases around 0)."""
  params = init_params(config, jax.random.PRNGKey(seed), init_std=0.1)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return jax.tree.unflatten(
      tree, [x + 0.1 * jax.random.normal(key, x.shape, x.dtype) for x, key in zip(leaves, keys)]
  )


def _torch_logits(model, tokens, attention_mask=None, position_ids=None):
  with torch.no_grad():
    kwargs = {}
    if attention_mask is not None:
      kwargs["attention_mask"] = torch.tensor(attention_mask)
    if position_ids is not None:
      kwargs["position_ids"] = torch.tensor(position_ids)
    return model(torch.tensor(tokens), **kwargs).logits.float().numpy()


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


PARITY_CASES = [
    # (model_type, tie, num_heads, num_kv_heads, max_shard_size)
    ("qwen2", False, 4, 2, None),
    ("qwen2", True, 4, 4, None),
    ("qwen2", False, 8, 1, "20KB"),
    ("llama", False, 4, 2, None),
    ("llama", True, 8, 2, "20KB"),
    ("llama", False, 4, 4, None),
]


@pytest.mark.parametrize("model_type,tie,heads,kv_heads,shard", PARITY_CASES)
def test_logits_match_transformers(tmp_path, model_type, tie, heads, kv_heads, shard):
  model = make_hf_model(
      model_type,
      tie=tie,
      num_heads=heads,
      num_kv_heads=kv_heads,
      hidden_size=32 if heads == 4 else 64,
  )
  path = save_hf_model(model, str(tmp_path / "ckpt"), max_shard_size=shard)
  if shard:
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
  config, params = hf.load(path)
  assert config.tie_embeddings == tie and config.qkv_bias == (model_type == "qwen2")
  assert config.num_kv_heads == kv_heads and not config.qk_norm and config.sliding_window is None
  tokens = _tokens()
  ours, _ = forward(config, params, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(ours), _torch_logits(model, tokens), atol=F32_TOL, rtol=0)


@pytest.mark.parametrize("tie,heads,kv_heads", [(False, 4, 2), (True, 8, 2)])
def test_qwen3_logits_match_transformers(tmp_path, tie, heads, kv_heads):
  """q/k RMSNorm over an explicit head_dim (16, not hidden / heads), with left padding."""
  model = make_hf_model("qwen3", tie=tie, num_heads=heads, num_kv_heads=kv_heads, head_dim=16)
  config, params = hf.load(save_hf_model(model, str(tmp_path / "ckpt")))
  assert config.qk_norm and not config.qkv_bias and config.head_dim == 16
  assert config.tie_embeddings == tie and config.num_kv_heads == kv_heads
  tokens, mask, positions = _left_padded(_tokens(length=12), [4, 0, 1])
  ref = _torch_logits(model, tokens, attention_mask=mask, position_ids=positions)
  ours, _ = forward(config, params, jnp.asarray(tokens), mask=jnp.asarray(mask, bool))
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(ours)[valid], ref[valid], atol=F32_TOL, rtol=0)


@pytest.mark.parametrize("window,impl", [(8, "dense"), (8, "blockwise"), (None, "dense")])
def test_mistral_sliding_window_matches_transformers(tmp_path, window, impl):
  """20-token rows (longer than the window of 8), left-padded; blockwise tiles of 4 skip the
  key tiles outside the window."""
  model = make_hf_model("mistral", sliding_window=window, head_dim=16)
  config, params = hf.load(
      save_hf_model(model, str(tmp_path / "ckpt")),
      attention_impl=impl,
      attention_block_q=4,
      attention_block_k=4,
  )
  assert config.sliding_window == window and config.head_dim == 16
  tokens, mask, positions = _left_padded(_tokens(length=20), [5, 0, 1])
  ref = _torch_logits(model, tokens, attention_mask=mask, position_ids=positions)
  ours, _ = forward(config, params, jnp.asarray(tokens), mask=jnp.asarray(mask, bool))
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(ours)[valid], ref[valid], atol=F32_TOL, rtol=0)
  if window is not None:  # the window changes the logits of the tokens past it
    full, _ = forward(
        config.replace(sliding_window=None),
        params,
        jnp.asarray(tokens),
        mask=jnp.asarray(mask, bool),
    )
    assert np.abs(np.asarray(full) - ref)[valid].max() > 100 * F32_TOL


def test_llama3_rope_scaling_matches_transformers(tmp_path):
  rope = {
      "rope_type": "llama3",
      "rope_theta": 500000.0,
      "factor": 8.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": 16,
  }
  model = make_hf_model("llama", rope_parameters=rope, hidden_size=64, num_heads=4)
  config, params = hf.load(save_hf_model(model, str(tmp_path / "ckpt")))
  assert config.rope_scaling.rope_type == "llama3" and config.rope_theta == 500000.0
  tokens = _tokens(length=40)
  ours, _ = forward(config, params, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(ours), _torch_logits(model, tokens), atol=F32_TOL, rtol=0)


def test_left_padded_batch_matches_transformers(tmp_path):
  model = make_hf_model("qwen2")
  config, params = hf.load(save_hf_model(model, str(tmp_path / "ckpt")))
  tokens = _tokens(batch=3, length=9)
  mask = np.ones_like(tokens)
  mask[0, :4] = 0
  mask[1, :1] = 0
  tokens = np.where(mask == 1, tokens, 0)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  ref = _torch_logits(model, tokens, attention_mask=mask, position_ids=positions)
  ours, _ = forward(config, params, jnp.asarray(tokens), mask=jnp.asarray(mask, bool))
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(ours)[valid], ref[valid], atol=F32_TOL, rtol=0)


@pytest.mark.parametrize(
    "model_type,family_args",
    [("qwen2", {}), ("llama", {}), ("qwen3", {"head_dim": 16}), ("mistral", {"sliding_window": 4})],
    ids=["qwen2", "llama", "qwen3", "mistral-window4"],
)
def test_bfloat16_within_stated_tolerance(tmp_path, model_type, family_args):
  model = make_hf_model(model_type, **family_args)
  path = save_hf_model(model, str(tmp_path / "ckpt"))
  tokens = _tokens()
  reference = _torch_logits(model, tokens)
  config, params = hf.load(path, param_dtype="bfloat16")
  assert params["embed"].dtype == jnp.bfloat16
  ours, _ = forward(config, params, jnp.asarray(tokens))
  torch_bf16 = _torch_logits(model.to(torch.bfloat16), tokens)
  ours_err = np.abs(np.asarray(ours) - reference).max()
  torch_err = np.abs(torch_bf16 - reference).max()
  assert ours_err <= BF16_TOL, (ours_err, torch_err)
  np.testing.assert_allclose(np.asarray(ours), torch_bf16, atol=BF16_TOL, rtol=0)


@pytest.mark.parametrize(
    "model_type,tie,shard,window",
    [
        ("qwen2", False, None, None),
        ("llama", True, 5000, None),
        ("qwen3", False, None, None),
        ("mistral", True, None, 4),
        ("mistral", False, None, None),
    ],
)
def test_save_round_trip_through_transformers(tmp_path, model_type, tie, shard, window):
  config = tiny_config(
      model_type=model_type,
      tie_embeddings=tie,
      sliding_window=window,
      head_dim=16 if model_type == "qwen3" else 8,
      bos_token_id=1,
      eos_token_id=2,
  )
  params = _random_params(config, 3)
  path = str(tmp_path / "saved")
  hf.save(path, config, params, **({"max_shard_bytes": shard} if shard else {}))
  if shard:
    assert (
        len(json.load(open(os.path.join(path, "model.safetensors.index.json")))["weight_map"]) > 0
    )
  model = AutoModelForCausalLM.from_pretrained(path).eval()
  assert type(model).__name__ == config.family.hf_architecture
  tokens = _tokens(vocab=config.vocab_size)
  ours, _ = forward(config, params, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(ours), _torch_logits(model, tokens), atol=F32_TOL, rtol=0)
  config2, params2 = hf.load(path)
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params, params2)


@pytest.mark.parametrize("model_type,window", [("qwen2", None), ("mistral", 4)])
def test_kv_cache_decoding_equals_full_forward(model_type, window):
  """A 5-token prompt with left padding through the cache, then one token at a time; with a
  window of 4, both the prompt chunk and the decoded tokens see only the last 4 slots."""
  config = tiny_config(model_type=model_type, sliding_window=window)
  params = init_params(config, jax.random.PRNGKey(0), init_std=0.2)
  tokens = jnp.asarray(_tokens(batch=2, length=12, vocab=config.vocab_size))
  mask = jnp.ones(tokens.shape, bool).at[0, :3].set(False)
  full, _ = forward(config, params, tokens, mask=mask)
  cache = init_cache(config, batch_size=2, max_length=16)
  prompt = 5
  logits, cache = forward(config, params, tokens[:, :prompt], cache=cache, mask=mask[:, :prompt])
  steps = [logits]
  step = jax.jit(lambda p, t, c: forward(config, p, t, cache=c))
  for i in range(prompt, tokens.shape[1]):
    logits, cache = step(params, tokens[:, i : i + 1], cache)
    steps.append(logits)
  decoded = jnp.concatenate(steps, axis=1)
  valid = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(decoded)[valid], np.asarray(full)[valid], atol=1e-5, rtol=0)
  assert int(cache.index) == 12 and list(np.asarray(cache.lengths)) == [9, 12]


def test_remat_and_hidden_variant_agree_with_logits():
  config = tiny_config(tie_embeddings=True)
  params = init_params(config, jax.random.PRNGKey(1))
  tokens = jnp.asarray(_tokens(batch=2, length=7, vocab=config.vocab_size))
  logits, _ = forward(config, params, tokens)
  hidden, _ = forward_hidden(config, params, tokens, remat=True)
  np.testing.assert_allclose(np.asarray(hidden @ params["embed"].T), np.asarray(logits), atol=1e-5)
  loss = lambda p, r: forward_hidden(config, p, tokens, remat=r)[0].sum()
  g1, g2 = jax.grad(loss)(params, False), jax.grad(loss)(params, True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g1, g2)


@pytest.mark.parametrize(
    "model_type,tie",
    [("qwen2", False), ("llama", False), ("qwen3", False), ("qwen3", True), ("mistral", False)],
)
def test_param_count_matches_transformers(model_type, tie):
  model = make_hf_model(model_type, tie=tie)
  config = hf.config_from_hf(model.config.to_dict())
  assert config.num_params() == sum(p.numel() for p in model.parameters())
  embeddings = model.model.embed_tokens.weight.numel() * (1 if tie else 2)
  assert config.num_params(include_embeddings=False) == config.num_params() - embeddings
  assert config.kv_cache_bytes_per_token() == 2 * 2 * 2 * 8 * 4


class TestBadCheckpoints:

  def test_missing_directory(self, tmp_path):
    with pytest.raises(hf.CheckpointError, match="does not exist"):
      hf.load(str(tmp_path / "nope"))

  def test_missing_config(self, tmp_path):
    path = save_hf_model(make_hf_model("qwen2"), str(tmp_path / "ckpt"))
    os.remove(os.path.join(path, "config.json"))
    with pytest.raises(hf.CheckpointError, match="no config.json"):
      hf.load(path)

  def test_unknown_model_type(self, tmp_path):
    path = save_hf_model(make_hf_model("qwen2"), str(tmp_path / "ckpt"))
    raw = json.load(open(os.path.join(path, "config.json")))
    raw["model_type"] = "gpt_neox"
    json.dump(raw, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(
        hf.CheckpointError, match=r"model_type='gpt_neox'.*\('qwen2', 'llama', 'qwen3', 'mistral'\)"
    ):
      hf.load(path)

  @pytest.mark.parametrize(
      "model_type,field,value,message",
      [
          ("qwen3", "use_sliding_window", True, "use_sliding_window=true"),
          ("qwen2", "use_sliding_window", True, "use_sliding_window=true"),
          ("qwen3", "attention_bias", True, "o_proj bias"),
          ("llama", "attention_bias", True, "o_proj bias"),
          ("mistral", "sliding_window", 0, "sliding_window=0; allowed: a positive int or null"),
      ],
  )
  def test_unsupported_family_settings(self, tmp_path, model_type, field, value, message):
    path = save_hf_model(make_hf_model(model_type), str(tmp_path / "ckpt"))
    config_json = os.path.join(path, "config.json")
    with open(config_json) as f:
      raw = json.load(f)
    raw[field] = value
    with open(config_json, "w") as f:
      json.dump(raw, f)
    with pytest.raises(hf.CheckpointError, match=message):
      hf.load(path)

  def test_wrong_tensor_shape(self, tmp_path):
    path = save_hf_model(make_hf_model("qwen2"), str(tmp_path / "ckpt"))
    raw = json.load(open(os.path.join(path, "config.json")))
    raw["intermediate_size"] = 48
    json.dump(raw, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(
        hf.CheckpointError,
        match=r"mlp\.(gate|up|down)_proj\.weight' has shape \((64, 32|32, 64)\), "
        r"expected \((48, 32|32, 48)\)",
    ):
      hf.load(path)

  def test_missing_tensor(self, tmp_path):
    from safetensors.numpy import load_file, save_file

    path = save_hf_model(make_hf_model("qwen2"), str(tmp_path / "ckpt"))
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, file)
    with pytest.raises(
        hf.CheckpointError, match="missing tensors: model.layers.1.self_attn.k_proj.bias"
    ):
      hf.load(path)

  def test_missing_weights_file(self, tmp_path):
    path = save_hf_model(make_hf_model("qwen2"), str(tmp_path / "ckpt"))
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(hf.CheckpointError, match="neither model.safetensors"):
      hf.load(path)
