"""Hugging Face checkpoints (`config.json` + safetensors) to and from our param tree.

The `config.json` fields and tensors every family shares are read and written here; the model
family of `model_type` (`models.families`) adds its own fields, tensors and architecture name.
`load` checks every tensor's name and shape from the file headers, then either reads one file
at a time into host arrays, or, given shardings, builds each param directly in its sharding
with every device reading only its own block. `save` writes a checkpoint that `transformers`
loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import json
import os
import re
from typing import Any

from etils import epath
import jax
import ml_dtypes
import numpy as np
from safetensors import numpy as safetensors_numpy
from safetensors import safe_open

from entropix_rl import param_shapes, paths
from entropix_rl.models import families, hf_layout
from entropix_rl.models.architecture import RopeScaling
from entropix_rl.models.config import ModelConfig
from entropix_rl.models.decoder import init_params
from entropix_rl.models.families.base import CheckpointError, top_tensors
from entropix_rl.models.hf_layout import Tensor

__all__ = [
    "CheckpointError",
    "check_model_config",
    "config_from_hf",
    "config_to_hf",
    "load",
    "read_config",
    "save",
]

_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _rope_scaling_from_hf(raw: dict[str, Any]) -> tuple[float, RopeScaling | None]:
  """RoPE theta and scaling from transformers<5 (`rope_theta`, `rope_scaling`) or 5
  (`rope_parameters`)."""
  params = dict(raw.get("rope_parameters") or {})
  scaling = dict(raw.get("rope_scaling") or {})
  theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
  merged = {**scaling, **params}
  rope_type = merged.get("rope_type", merged.get("type", "default"))
  if rope_type == "default":
    return theta, None
  fields = {
      f: merged[f]
      for f in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
      if f in merged
  }
  try:
    return theta, RopeScaling(rope_type=rope_type, **fields)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"unsupported rope scaling {merged}: {e}") from e


def config_from_hf(
    raw: dict[str, Any], *, param_dtype: str | None = None, compute_dtype: str | None = None
) -> ModelConfig:
  """Builds a ModelConfig from a parsed Hugging Face `config.json`.

  Raises:
    CheckpointError: an unsupported `model_type`, or a setting the decoder does not implement.
  """
  model_type = raw.get("model_type")
  try:
    family = families.get(model_type)
  except ValueError as err:
    raise CheckpointError(f"config.json has {err}") from None
  flags = family.flags_from_hf(raw)
  if raw.get("mlp_bias"):
    raise CheckpointError("config.json sets mlp_bias=true; MLP biases are not supported")
  if raw.get("hidden_act", "silu") != "silu":
    raise CheckpointError(
        f"config.json has hidden_act={raw['hidden_act']!r}; only 'silu' (SwiGLU) " "is supported"
    )
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
      tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
      max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
      param_dtype=dtype,
      compute_dtype=compute_dtype or dtype,
      bos_token_id=raw.get("bos_token_id"),
      eos_token_id=eos[0] if isinstance(eos, list) and eos else eos,
      **flags,
  )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """The `config.json` dict transformers needs to rebuild `config`."""
  rope = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling is not None:
    s = config.rope_scaling
    rope.update(rope_type=s.rope_type, factor=s.factor)
    if s.rope_type == "llama3":
      rope.update(
          low_freq_factor=s.low_freq_factor,
          high_freq_factor=s.high_freq_factor,
          original_max_position_embeddings=s.original_max_position_embeddings,
      )
  family = config.family
  return {
      "architectures": [family.hf_architecture],
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
      **family.hf_fields(config),
  }


def _shard_files(path: str) -> list[str]:
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
  elif os.path.exists(os.path.join(path, "model.safetensors")):
    files = ["model.safetensors"]
  else:
    raise CheckpointError(
        f"{path!r} has neither model.safetensors nor "
        "model.safetensors.index.json (PyTorch .bin checkpoints are not supported)"
    )
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


_Index = dict[str, tuple[str, Tensor, int | None]]


def _tensor_index(path: str, config: ModelConfig) -> _Index:
  """Checks every tensor's name and shape from the safetensors headers (no data is read).

  Returns:
    HF name -> (file, its table entry, layer index or None), for the tensors we load.
  """
  n = config.num_layers
  layer_table = config.family.layer_tensors(config)
  top = top_tensors(config)
  expected = set(top) | {f"model.layers.{i}.{s}" for i in range(n) for s in layer_table}
  index = {}
  for file in _shard_files(path):
    with safe_open(file, framework="numpy") as f:
      for name in f.keys():
        if _IGNORED.match(name) or (name == "lm_head.weight" and config.tie_embeddings):
          continue
        layer_match = _LAYER.match(name)
        if name in top:
          tensor, layer = top[name], None
        elif layer_match and layer_match.group(2) in layer_table:
          tensor, layer = layer_table[layer_match.group(2)], int(layer_match.group(1))
        else:
          flags = ", ".join(f"{flag}={getattr(config, flag)}" for flag in families.FLAGS)
          raise CheckpointError(
              f"unexpected tensor {name!r} in {path!r} for a "
              f"{config.model_type} model ({flags}, "
              f"tied={config.tie_embeddings})"
          )
        if layer is not None and layer >= n:
          raise CheckpointError(f"tensor {name!r} is beyond num_hidden_layers={n}")
        stored = tuple(f.get_slice(name).get_shape())
        if stored != tensor.shape:
          raise CheckpointError(
              f"tensor {name!r} has shape {stored}, expected {tensor.shape} " "from config.json"
          )
        index[name] = (file, tensor, layer)
  missing = sorted(expected - set(index))
  if missing:
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    raise CheckpointError(f"checkpoint {path!r} is missing tensors: {shown}")
  return index


def _sharded_leaf(
    index: _Index,
    names: str | list[str],
    shape: tuple[int, ...],
    dtype: Any,
    sharding_: Any,
    head_dim: int,
) -> jax.Array:
  """One param as a global array; each device's block is read from the files by itself.

  Args:
    names: the HF tensor of a top-level param, or one per layer of a stacked layer param.
  """

  def read(name: str, box: tuple[slice, ...]) -> np.ndarray:
    file, tensor, _ = index[name]
    with safe_open(file, framework="numpy") as f:
      return hf_layout.read_block(f.get_slice(name), tensor.layout, box, head_dim).astype(dtype)

  def block(idx: tuple[slice, ...]) -> np.ndarray:
    box = tuple(slice(*s.indices(dim)[:2]) for s, dim in zip(idx, shape))
    if isinstance(names, str):
      return read(names, box)
    return np.stack([read(names[layer], box[1:]) for layer in range(box[0].start, box[0].stop)])

  return jax.make_array_from_callback(shape, sharding_, block)


def check_model_config(path: str, stored: ModelConfig, expected: ModelConfig) -> None:
  """Raises ValueError if a param of the checkpoint at `path` (config `stored`) has another
  shape, or is missing, in a model built from `expected`."""
  shapes = lambda cfg: param_shapes.shapes_by_name(
      jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  )
  param_shapes.check_same_shapes(
      f"checkpoint {path}", shapes(stored), shapes(expected), same_names=True
  )


def load(
    path: epath.PathLike,
    *,
    param_dtype: str | None = None,
    compute_dtype: str | None = None,
    shardings: Any = None,
    expected: ModelConfig | None = None,
    **config_overrides: Any,
) -> tuple[ModelConfig, dict]:
  """Loads a Hugging Face checkpoint directory of a supported model family
  (`models.families`; local, or `gs://` through a temporary local copy).

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
    return _load_local(
        local,
        param_dtype=param_dtype,
        compute_dtype=compute_dtype,
        shardings=shardings,
        expected=expected,
        **config_overrides,
    )


def _load_local(
    path: str,
    *,
    param_dtype: str | None,
    compute_dtype: str | None,
    shardings: Any,
    expected: ModelConfig | None,
    **config_overrides: Any,
) -> tuple[ModelConfig, dict]:
  config = read_config(path, param_dtype=param_dtype, compute_dtype=compute_dtype)
  if expected is not None:
    check_model_config(path, config, expected)
  if config_overrides:
    config = config.replace(**config_overrides)
  dtype = _NP_DTYPES[config.param_dtype]
  index = _tensor_index(path, config)
  if shardings is not None:
    top: dict[str, str] = {}
    by_layer: dict[str, list[str]] = {}
    for name, (_, tensor, layer) in index.items():
      if layer is None:
        top[tensor.param] = name
      else:
        by_layer.setdefault(tensor.param, [""] * config.num_layers)[layer] = name
    abstract = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    leaf = lambda names, spec, sh: _sharded_leaf(
        index, names, spec.shape, dtype, sh, config.head_dim
    )
    params = {
        key: leaf(top[key], abstract[key], shardings[key]) for key in abstract if key != "layers"
    }
    params["layers"] = {
        key: leaf(by_layer[key], abstract["layers"][key], shardings["layers"][key])
        for key in abstract["layers"]
    }
    return config, params
  n = config.num_layers
  params: dict[str, Any] = {"layers": {}}
  for name, array in _iter_tensors(_shard_files(path)):
    if name not in index:
      continue
    _, tensor, layer = index[name]
    converted = hf_layout.to_ours(tensor.layout, array, config.head_dim).astype(dtype)
    if layer is None:
      params[tensor.param] = converted
      continue
    if tensor.param not in params["layers"]:
      params["layers"][tensor.param] = np.empty((n, *converted.shape), dtype)
    params["layers"][tensor.param][layer] = converted
  return config, jax.tree.map(jax.numpy.asarray, params)


def _hf_tensors(config: ModelConfig, params: dict) -> Iterator[tuple[str, np.ndarray]]:
  for name, tensor in top_tensors(config).items():
    yield name, hf_layout.to_hf(tensor.layout, np.asarray(params[tensor.param]))
  layer_table = config.family.layer_tensors(config)
  for i in range(config.num_layers):
    for suffix, tensor in layer_table.items():
      yield (
          f"model.layers.{i}.{suffix}",
          hf_layout.to_hf(tensor.layout, np.asarray(params["layers"][tensor.param][i])),
      )


def save(
    path: epath.PathLike,
    config: ModelConfig,
    params: dict,
    *,
    max_shard_bytes: int = 2 * 1024**3,
    progress: Callable[[str], None] | None = None,
) -> None:
  """Writes `config.json` and safetensors shards (with an index when more than one).

  Tensors are written in the param dtype. The directory (local or `gs://`) is created if
  needed; files are first written under temporary names and renamed, `config.json` last, so a
  crash never leaves a half-written checkpoint that looks complete.
  """
  path = epath.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, stored in _hf_tensors(config, params):
    tensor = np.ascontiguousarray(stored)
    if shards[-1] and size + tensor.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensor
    size += tensor.nbytes
  names = (
      ["model.safetensors"]
      if len(shards) == 1
      else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  )
  written = []
  for name, shard in zip(names, shards):
    (path / (name + ".tmp")).write_bytes(safetensors_numpy.save(shard, metadata={"format": "pt"}))
    written.append(name)
    if progress:
      progress(f"wrote {name}")
  if len(shards) > 1:
    weight_map = {t: n for n, shard in zip(names, shards) for t in shard}
    total = sum(t.nbytes for shard in shards for t in shard.values())
    (path / "model.safetensors.index.json.tmp").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    written.append("model.safetensors.index.json")
  (path / "config.json.tmp").write_text(json.dumps(config_to_hf(config), indent=2))
  written.append("config.json")
  for name in written:
    (path / (name + ".tmp")).replace(path / name)
