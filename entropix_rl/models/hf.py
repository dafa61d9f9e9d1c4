"""Hugging Face checkpoints (`config.json` + safetensors) to and from our param tree.

`load` checks every tensor's name and shape from the file headers, then either reads one file
at a time into host arrays, or, given shardings, builds each param directly in its sharding
with every device reading only its own block. `save` writes a checkpoint that `transformers`
loads.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np
from etils import epath
from safetensors import numpy as safetensors_numpy
from safetensors import safe_open

from entropix_rl import param_shapes, paths
from entropix_rl.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, RopeScaling
from entropix_rl.models.decoder import init_params

_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be read as a supported model."""


def _rope_scaling_from_hf(raw: dict[str, Any]) -> tuple[float, RopeScaling | None]:
  """Reads RoPE theta and scaling from transformers<5 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`)."""
  params = dict(raw.get("rope_parameters") or {})
  scaling = dict(raw.get("rope_scaling") or {})
  theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
  merged = {**scaling, **params}
  rope_type = merged.get("rope_type", merged.get("type", "default"))
  if rope_type == "default":
    return theta, None
  fields = {f: merged[f] for f in ("factor", "low_freq_factor", "high_freq_factor",
                                   "original_max_position_embeddings") if f in merged}
  try:
    return theta, RopeScaling(rope_type=rope_type, **fields)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"unsupported rope scaling {merged}: {e}") from e


def config_from_hf(raw: dict[str, Any], *, param_dtype: str | None = None,
                   compute_dtype: str | None = None) -> ModelConfig:
  """Builds a ModelConfig from a parsed Hugging Face `config.json`."""
  model_type = raw.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise CheckpointError(f"config.json has model_type={model_type!r}; supported model types: "
                          f"{SUPPORTED_MODEL_TYPES}")
  if raw.get("use_sliding_window"):
    raise CheckpointError("config.json sets use_sliding_window=true; sliding-window attention "
                          "is not supported")
  if raw.get("mlp_bias"):
    raise CheckpointError("config.json sets mlp_bias=true; MLP biases are not supported")
  if raw.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"config.json has hidden_act={raw['hidden_act']!r}; only 'silu' (SwiGLU) "
                          "is supported")
  if model_type == "llama" and raw.get("attention_bias"):
    raise CheckpointError("config.json sets attention_bias=true (o_proj bias); not supported")
  heads = int(raw["num_attention_heads"])
  theta, scaling = _rope_scaling_from_hf(raw)
  stored = str(raw.get("dtype") or raw.get("torch_dtype") or "float32")
  dtype = param_dtype or (stored if stored in _NP_DTYPES else "float32")
  eos = raw.get("eos_token_id")
  return ModelConfig(
      model_type=model_type,
      vocab_size=int(raw["vocab_size"]),
      hidden_size=int(raw["hidden_size"]),
      num_layers=int(raw["num_hidden_layers"]),
      num_heads=heads,
      num_kv_heads=int(raw.get("num_key_value_heads") or heads),
      head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads),
      intermediate_size=int(raw["intermediate_size"]),
      rope_theta=theta,
      rope_scaling=scaling,
      rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
      qkv_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
      tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
      max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
      param_dtype=dtype,
      compute_dtype=compute_dtype or dtype,
      bos_token_id=raw.get("bos_token_id"),
      eos_token_id=eos[0] if isinstance(eos, list) and eos else eos,
  )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """The `config.json` dict transformers needs to rebuild `config`."""
  rope = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling is not None:
    s = config.rope_scaling
    rope.update(rope_type=s.rope_type, factor=s.factor)
    if s.rope_type == "llama3":
      rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                  original_max_position_embeddings=s.original_max_position_embeddings)
  raw = {
      "architectures": [_ARCHITECTURES[config.model_type]],
      "model_type": config.model_type,
      "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "intermediate_size": config.intermediate_size,
      "hidden_act": "silu",
      "rms_norm_eps": config.rms_norm_eps,
      "rope_theta": config.rope_theta,
      "rope_parameters": rope,
      "tie_word_embeddings": config.tie_embeddings,
      "max_position_embeddings": config.max_position_embeddings,
      "dtype": config.param_dtype,
      "bos_token_id": config.bos_token_id,
      "eos_token_id": config.eos_token_id,
      "use_cache": True,
  }
  if config.model_type == "llama":
    raw.update(attention_bias=config.qkv_bias, mlp_bias=False)
  else:
    if not config.qkv_bias:
      raise ValueError("a qwen2 checkpoint always has qkv biases; use model_type='llama' "
                       "for a model without them")
    raw.update(use_sliding_window=False, sliding_window=None)
  return raw


def _layer_tensors(config: ModelConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
  """HF per-layer suffix -> (our layer param name, HF tensor shape)."""
  d, h, k, dh, f = (config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim,
                    config.intermediate_size)
  table = {
      "input_layernorm.weight": ("attn_norm", (d,)),
      "post_attention_layernorm.weight": ("mlp_norm", (d,)),
      "self_attn.q_proj.weight": ("q", (h * dh, d)),
      "self_attn.k_proj.weight": ("k", (k * dh, d)),
      "self_attn.v_proj.weight": ("v", (k * dh, d)),
      "self_attn.o_proj.weight": ("o", (d, h * dh)),
      "mlp.gate_proj.weight": ("gate", (f, d)),
      "mlp.up_proj.weight": ("up", (f, d)),
      "mlp.down_proj.weight": ("down", (d, f)),
  }
  if config.qkv_bias:
    table.update({
        "self_attn.q_proj.bias": ("q_bias", (h * dh,)),
        "self_attn.k_proj.bias": ("k_bias", (k * dh,)),
        "self_attn.v_proj.bias": ("v_bias", (k * dh,)),
    })
  return table


def _to_ours(name: str, x: np.ndarray, config: ModelConfig) -> np.ndarray:
  """Converts one HF tensor (torch Linear layout `[out, in]`) to our layout."""
  h, k, dh = config.num_heads, config.num_kv_heads, config.head_dim
  if name == "q":
    return x.T.reshape(-1, h, dh)
  if name in ("k", "v"):
    return x.T.reshape(-1, k, dh)
  if name == "o":
    return x.T.reshape(h, dh, -1)
  if name == "q_bias":
    return x.reshape(h, dh)
  if name in ("k_bias", "v_bias"):
    return x.reshape(k, dh)
  if name in ("gate", "up", "down"):
    return x.T
  return x


def _to_hf(name: str, x: np.ndarray) -> np.ndarray:
  """Inverse of `_to_ours` for one layer's tensor."""
  if name in ("q", "k", "v"):
    return x.reshape(x.shape[0], -1).T
  if name == "o":
    return x.reshape(-1, x.shape[-1]).T
  if name in ("q_bias", "k_bias", "v_bias"):
    return x.reshape(-1)
  if name in ("gate", "up", "down"):
    return x.T
  return x


def _shard_files(path: str) -> list[str]:
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
  elif os.path.exists(os.path.join(path, "model.safetensors")):
    files = ["model.safetensors"]
  else:
    raise CheckpointError(f"{path!r} has neither model.safetensors nor "
                          "model.safetensors.index.json (PyTorch .bin checkpoints are not supported)")
  missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
  if missing:
    raise CheckpointError(f"shards listed in the index are missing from {path!r}: {missing}")
  return [os.path.join(path, f) for f in files]


def read_config(path: epath.PathLike, **dtype_overrides: str | None) -> ModelConfig:
  """Reads and validates `path/config.json` (a local or `gs://` directory)."""
  directory = epath.Path(path)
  if not directory.is_dir():
    raise CheckpointError(f"checkpoint directory {os.fspath(path)!r} does not exist")
  if not (directory / "config.json").exists():
    raise CheckpointError(f"no config.json in checkpoint directory {os.fspath(path)!r}")
  return config_from_hf(json.loads((directory / "config.json").read_text()), **dtype_overrides)


def _iter_tensors(files: list[str]) -> Iterator[tuple[str, np.ndarray]]:
  for file in files:
    with safe_open(file, framework="numpy") as f:
      for name in f.keys():
        yield name, f.get_tensor(name)


def _tensor_index(path: str, config: ModelConfig) -> dict[str, tuple[str, str, int | None]]:
  """Checks every tensor's name and shape from the safetensors headers (no data is read).

  Returns:
    HF name -> (file, our param name, layer index or None), for the tensors we load.
  """
  d, n, v = config.hidden_size, config.num_layers, config.vocab_size
  layer_table = _layer_tensors(config)
  top = {"model.embed_tokens.weight": ("embed", (v, d)), "model.norm.weight": ("final_norm", (d,))}
  if not config.tie_embeddings:
    top["lm_head.weight"] = ("lm_head", (v, d))
  expected = set(top) | {f"model.layers.{i}.{s}" for i in range(n) for s in layer_table}
  index = {}
  for file in _shard_files(path):
    with safe_open(file, framework="numpy") as f:
      for name in f.keys():
        if _IGNORED.match(name) or (name == "lm_head.weight" and config.tie_embeddings):
          continue
        layer_match = _LAYER.match(name)
        if name in top:
          (ours, shape), layer = top[name], None
        elif layer_match and layer_match.group(2) in layer_table:
          (ours, shape), layer = layer_table[layer_match.group(2)], int(layer_match.group(1))
        else:
          raise CheckpointError(f"unexpected tensor {name!r} in {path!r} for a "
                                f"{config.model_type} model (qkv_bias={config.qkv_bias}, "
                                f"tied={config.tie_embeddings})")
        if layer is not None and layer >= n:
          raise CheckpointError(f"tensor {name!r} is beyond num_hidden_layers={n}")
        stored = tuple(f.get_slice(name).get_shape())
        if stored != shape:
          raise CheckpointError(f"tensor {name!r} has shape {stored}, expected {shape} "
                                "from config.json")
        index[name] = (file, ours, layer)
  missing = sorted(expected - set(index))
  if missing:
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    raise CheckpointError(f"checkpoint {path!r} is missing tensors: {shown}")
  return index


def _hf_read(reader: Any, name: str, ours: str, box: tuple[slice, ...],
             config: ModelConfig) -> np.ndarray:
  """Our-layout block `box` (slices of one layer's param, or of a top-level param) of HF
  tensor `name`, reading only the stored rows/columns it needs (`get_slice`)."""
  h, k, dh = config.num_heads, config.num_kv_heads, config.head_dim
  heads = {"q": h, "k": k, "v": k, "o": h, "q_bias": h, "k_bias": k, "v_bias": k}.get(ours)
  sl = reader.get_slice(name)
  if ours in ("q", "k", "v"):  # ours [D, heads, Dh] = hf[heads·Dh, D].T
    d_sl, h_sl, e_sl = box
    rows = slice(h_sl.start * dh, h_sl.stop * dh)
    block = sl[rows, d_sl].T.reshape(d_sl.stop - d_sl.start, h_sl.stop - h_sl.start, dh)
    return block[:, :, e_sl]
  if ours == "o":  # ours [H, Dh, D] = hf[D, H·Dh].T
    h_sl, e_sl, d_sl = box
    cols = slice(h_sl.start * dh, h_sl.stop * dh)
    block = sl[d_sl, cols].T.reshape(h_sl.stop - h_sl.start, dh, d_sl.stop - d_sl.start)
    return block[:, e_sl, :]
  if heads is not None:  # biases: ours [heads, Dh] = hf[heads·Dh]
    h_sl, e_sl = box
    return sl[h_sl.start * dh:h_sl.stop * dh].reshape(-1, dh)[:, e_sl]
  if ours in ("gate", "up", "down", "lm_head"):  # ours = hf.T
    return sl[box[1], box[0]].T
  return sl[box]


def _sharded_leaf(path: str, index: dict, ours: str, layer_names: list[str] | None,
                  shape: tuple[int, ...], dtype: Any, sharding_: Any,
                  config: ModelConfig) -> jax.Array:
  """One param as a global array; each device's block is read from the files by itself."""
  def block(idx: tuple[slice, ...]) -> np.ndarray:
    box = tuple(slice(*s.indices(dim)[:2]) for s, dim in zip(idx, shape))
    if layer_names is None:
      file = index[_name_of(index, ours)][0]
      with safe_open(file, framework="numpy") as f:
        return _hf_read(f, _name_of(index, ours), ours, box, config).astype(dtype)
    out = []
    for layer in range(box[0].start, box[0].stop):
      file = index[layer_names[layer]][0]
      with safe_open(file, framework="numpy") as f:
        out.append(_hf_read(f, layer_names[layer], ours, box[1:], config).astype(dtype))
    return np.stack(out)

  return jax.make_array_from_callback(shape, sharding_, block)


def _name_of(index: dict, ours: str) -> str:
  return next(name for name, (_, o, layer) in index.items() if o == ours and layer is None)


def check_model_config(path: str, stored: ModelConfig, expected: ModelConfig) -> None:
  """Raises ValueError if a param of the checkpoint at `path` (config `stored`) has another
  shape, or is missing, in a model built from `expected`."""
  shapes = lambda cfg: param_shapes.shapes_by_name(
      jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0))))
  param_shapes.check_same_shapes(f"checkpoint {path}", shapes(stored), shapes(expected),
                                 same_names=True)


def load(path: epath.PathLike, *, param_dtype: str | None = None,
         compute_dtype: str | None = None, shardings: Any = None,
         expected: ModelConfig | None = None,
         **config_overrides: Any) -> tuple[ModelConfig, dict]:
  """Loads a Hugging Face Qwen2/Llama checkpoint directory (local, or `gs://` through a
  temporary local copy).

  Without `shardings`, tensors are read one shard file at a time into host arrays (peak host
  memory: the model plus one file). With `shardings`, every param is created directly in its
  sharding (`jax.make_array_from_callback`): each device's block is read from the files on its
  own, only the stored rows and columns it needs (`safe_open(...).get_slice`), so no device and
  no host ever holds the whole model. Every tensor's name and shape is checked from the file
  headers before any data is read.

  Args:
    path: directory with `config.json` and `model.safetensors` or sharded
      `model-*.safetensors` with `model.safetensors.index.json`.
    param_dtype: override the stored dtype ("float32" or "bfloat16").
    compute_dtype: activation dtype (default: the param dtype).
    shardings: optional pytree of `jax.sharding.Sharding` matching the param tree
      (`sharding.param_shardings`).
    expected: the model config the caller built for (e.g. a run's `model.*`); a checkpoint
      whose params do not have its shapes is a ValueError naming the param and both shapes.
    **config_overrides: runtime `ModelConfig` fields that config.json does not hold
      (`attention_impl`, `attention_block_q`, `attention_block_k`).

  Returns:
    (config, params) with params a nested dict of jax arrays in `param_dtype`.

  Raises:
    CheckpointError: missing directory/config/shards, unsupported architecture, a tensor
      whose shape does not match the config (naming the tensor and both shapes), or a
      tensor missing from the checkpoint.
    ValueError: params whose shapes differ from `expected`'s.
  """
  with paths.local_directory(path) as local:
    return _load_local(local, param_dtype=param_dtype, compute_dtype=compute_dtype,
                       shardings=shardings, expected=expected, **config_overrides)


def _load_local(path: str, *, param_dtype: str | None, compute_dtype: str | None,
                shardings: Any, expected: ModelConfig | None,
                **config_overrides: Any) -> tuple[ModelConfig, dict]:
  config = read_config(path, param_dtype=param_dtype, compute_dtype=compute_dtype)
  if expected is not None:
    check_model_config(path, config, expected)
  if config_overrides:
    config = config.replace(**config_overrides)
  dtype = _NP_DTYPES[config.param_dtype]
  index = _tensor_index(path, config)
  if shardings is not None:
    by_layer: dict[str, list[str]] = {}
    for name, (_, ours, layer) in sorted(index.items(), key=lambda kv: kv[1][2] or 0):
      if layer is not None:
        by_layer.setdefault(ours, [None] * config.num_layers)[layer] = name
    abstract = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    leaf = lambda ours, layers, spec, sh: _sharded_leaf(path, index, ours, layers, spec.shape,
                                                        dtype, sh, config)
    params = {key: leaf(key, None, abstract[key], shardings[key])
              for key in abstract if key != "layers"}
    params["layers"] = {key: leaf(key, by_layer[key], abstract["layers"][key],
                                  shardings["layers"][key]) for key in abstract["layers"]}
    return config, params
  n = config.num_layers
  params: dict[str, Any] = {"layers": {}}
  for name, tensor in _iter_tensors(_shard_files(path)):
    if name not in index:
      continue
    _, ours, layer = index[name]
    if layer is None:
      params[ours] = (tensor.T if ours == "lm_head" else tensor).astype(dtype)
      continue
    converted = _to_ours(ours, tensor, config).astype(dtype)
    if ours not in params["layers"]:
      params["layers"][ours] = np.empty((n, *converted.shape), dtype)
    params["layers"][ours][layer] = converted
  return config, jax.tree.map(jax.numpy.asarray, params)


def _hf_tensors(config: ModelConfig, params: dict) -> Iterator[tuple[str, np.ndarray]]:
  table = {ours: suffix for suffix, (ours, _) in _layer_tensors(config).items()}
  yield "model.embed_tokens.weight", np.asarray(params["embed"])
  for i in range(config.num_layers):
    for ours, suffix in table.items():
      yield f"model.layers.{i}.{suffix}", _to_hf(ours, np.asarray(params["layers"][ours][i]))
  yield "model.norm.weight", np.asarray(params["final_norm"])
  if not config.tie_embeddings:
    yield "lm_head.weight", np.asarray(params["lm_head"]).T


def save(path: epath.PathLike, config: ModelConfig, params: dict, *,
         max_shard_bytes: int = 2 * 1024**3,
         progress: Callable[[str], None] | None = None) -> None:
  """Writes `config.json` and safetensors shards (with an index when more than one).

  Tensors are written in the param dtype. The directory (local or `gs://`) is created if
  needed; files are first written under temporary names and renamed, `config.json` last, so a
  crash never leaves a half-written checkpoint that looks complete.
  """
  path = epath.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, tensor in _hf_tensors(config, params):
    tensor = np.ascontiguousarray(tensor)
    if shards[-1] and size + tensor.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensor
    size += tensor.nbytes
  names = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  written = []
  for name, shard in zip(names, shards):
    (path / (name + ".tmp")).write_bytes(safetensors_numpy.save(shard, metadata={"format": "pt"}))
    written.append(name)
    if progress:
      progress(f"wrote {name}")
  if len(shards) > 1:
    weight_map = {t: n for n, shard in zip(names, shards) for t in shard}
    total = sum(t.nbytes for shard in shards for t in shard.values())
    (path / "model.safetensors.index.json.tmp").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    written.append("model.safetensors.index.json")
  (path / "config.json.tmp").write_text(json.dumps(config_to_hf(config), indent=2))
  written.append("config.json")
  for name in written:
    (path / (name + ".tmp")).replace(path / name)
