r"""Per-device memory of the real jitted steps at full size, proven by compilation on CPU.

  python benchmarks/memory.py --config=configs/qwen25_7b.py:clip_cov --arch=qwen2.5-7b \
      --devices=16 --mesh=1,4,4 --chip=v5p [--config.rl.micro_batch_size=1 ...]

Simulates `--devices` CPU devices (`--xla_force_host_platform_device_count`), builds the
config's `rl_update`, the sampler's prefill, decode and refill programs (the refill at its
worst: every row freed at once, with the decode cache resident; its estimate is the prefill's)
and `sft_step` for the full-size architecture on the `--mesh` (data, fsdp, tensor), lowers and compiles each with
abstract inputs (nothing is allocated) and reads `compiled.memory_analysis()`, which on CPU
reports the per-device bytes of the SPMD-partitioned program. One JSON line per function:

* `argument_gib`, `output_gib`, `alias_gib` (outputs that reuse donated inputs),
  `temp_gib` (XLA's scratch), `resident_gib` (train state that stays in HBM while the
  function runs but is not its argument: the optimizer state and reference during sampling);
* `peak_gib` = argument + output − alias + temp + resident, against the chip's HBM
  (`hbm_fraction`, `fits` at most 90%);
* `estimate_gib`, the analytic `entropix_rl.memory` budget of the same phase, and
  `ratio` = compiled / estimate (the baseline of this benchmark);
* `cpu_f32_copies_gib`: float32 copies of bfloat16 operands that XLA:CPU inserts because its
  dot kernels have no bfloat16 path (a TPU or GPU multiplies bfloat16 natively). They are
  found in the buffer assignment of the optimized HLO (f32 `convert` values of arrays that
  also exist in bf16), reported with one example line (`cpu_f32_example`), and
  `peak_without_cpu_copies_gib` subtracts the temp memory they occupy when all are live.

Attention compiles with `--attention` (default `blockwise`): the TPU splash and GPU cuDNN
kernels cannot be compiled for CPU devices; `blockwise` has the same linear memory in the
sequence length, so it stands in for them. Each function takes 1-6 minutes to compile for a
7B model on 2 CPU cores (`compile_s` in each line).
"""

from __future__ import annotations

import os
import sys
import tempfile

_DEVICES = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--devices=")), 8)
_DUMP = tempfile.mkdtemp(prefix="entropix_memory_")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_DEVICES}"
    f" --xla_dump_to={_DUMP} --xla_dump_hlo_pass_re=NONE"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from entropix_rl import interventions, memory, sampling, sharding  # noqa: E402
from entropix_rl.models import init_params  # noqa: E402
from entropix_rl.train import cli, config_dict  # noqa: E402
from entropix_rl.train.config import resolve  # noqa: E402
from entropix_rl.train.optim import make_optimizer  # noqa: E402
from entropix_rl.train.rollout import abstract_rl_batch  # noqa: E402
from entropix_rl.train.sft import jit_sft_step  # noqa: E402
from entropix_rl.train.state import create_train_state  # noqa: E402
from entropix_rl.train.update import UpdateSpec, jit_rl_update  # noqa: E402

_CONFIG = cli.define_config(None, "Experiment config (e.g. a recipe).")
_ARCH = flags.DEFINE_enum(
    "arch",
    "qwen2.5-7b",
    [f"qwen2.5-{s.lower()}" for s in memory.QWEN25_SIZES],
    "Architecture to compile.",
)
flags.DEFINE_integer("devices", 8, "Simulated CPU devices (read before JAX starts).")
_MESH = flags.DEFINE_string("mesh", "", "data,fsdp,tensor sizes (default: the config's mesh).")
_CHIP = flags.DEFINE_enum("chip", "v5p", list(memory.HBM_GIB), "Chip whose HBM to compare with.")
_ATTENTION = flags.DEFINE_string("attention", "blockwise", "model.attention_impl to compile.")
_DTYPE = flags.DEFINE_enum(
    "dtype",
    "bfloat16",
    ["bfloat16", "float32"],
    "Param and compute dtype. float32 validates the analytic model: "
    "XLA:CPU then makes no float32 copies of bfloat16 operands.",
)
_FUNCTIONS = flags.DEFINE_list(
    "functions",
    ["rl_update", "prefill", "decode", "refill", "sft_step"],
    "Functions to compile.",
)
_HEADROOM = 0.9
GIB = memory.GIB


def _abstract(tree, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def _device_bytes(tree) -> int:
  """Per-device bytes of abstract arrays with shardings (the first device's shard)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
  return total


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\((.*?)\)")
_VALUE = re.compile(r"<\d+ (\S+) @0> \(size=(\d+),offset=(\d+)\)")


def _cpu_f32_copies(dump_dir: str, module: str, hlo: str) -> tuple[int, str]:
  """Temp bytes that XLA:CPU's float32 copies of bfloat16 weights and caches occupy, and one
  example HLO line.

  A copy is an f32 instruction whose operand is a bf16 array of the same dimensions read
  from an argument or a loop-carried value (a weight or the KV cache), outside fused
  computations (whose parameters are fusion operands): XLA:CPU converts them
  because its dot kernels have no bfloat16 path, where a TPU or GPU reads the bf16 array
  directly. Temp buffers are slots shared by values at one offset (the buffer assignment);
  a slot whose largest value is a copy would shrink to its largest other value, and the
  saving is summed over slots.
  """
  types, operands, ops, lines = {}, {}, {}, {}
  fused = False
  for line in hlo.splitlines():
    if line.startswith("%") or line.startswith("ENTRY"):  # a computation's header
      fused = "computation" in line.split(" ")[0]
    match = None if fused else _INSTRUCTION.match(line)
    if match:
      name, dtype, dims, op, args = match.groups()
      types[name], ops[name], lines[name] = (dtype, dims), op, line.strip()
      operands[name] = re.findall(r"%([\w.\-]+)", args)
  sources = {n for n, op in ops.items() if op in ("parameter", "get-tuple-element")}
  copies = {
      name
      for name, (dtype, dims) in types.items()
      if dtype == "f32"
      and "convert" in name
      and any(a in sources and types.get(a) == ("bf16", dims) for a in operands[name])
  }
  paths = [
      os.path.join(dump_dir, f)
      for f in os.listdir(dump_dir)
      if f"jit_{module}." in f and f.endswith("after_optimizations-buffer-assignment.txt")
  ]
  if not copies or not paths:
    return 0, ""
  text = open(max(paths, key=os.path.getmtime)).read()
  temp = re.search(r"allocation \d+: size \d+, preallocated-temp:\n((?: value:.*\n)*)", text)
  slots: dict[int, list[tuple[int, bool]]] = {}
  for line in (temp.group(1).splitlines() if temp else []):
    match = _VALUE.search(line)
    if match:
      slots.setdefault(int(match.group(3)), []).append(
          (int(match.group(2)), match.group(1) in copies)
      )
  saved = 0
  for values in slots.values():
    largest = max(size for size, _ in values)
    if any(is_copy and size == largest for size, is_copy in values):
      saved += largest - max((size for size, is_copy in values if not is_copy), default=0)
  largest_copy = max(copies, key=lambda n: np.prod([int(d) for d in types[n][1].split(",") if d]))
  return saved, lines[largest_copy][:240]


def _report(
    name: str, lowered, *, module: str, resident: int, estimate: int, hbm: int, context: dict
) -> None:
  start = time.perf_counter()
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  copies, example = _cpu_f32_copies(_DUMP, module, compiled.as_text())
  peak = (
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      - mem.alias_size_in_bytes
      + mem.temp_size_in_bytes
      + resident
  )
  record = dict(
      benchmark="memory",
      function=name,
      **context,
      argument_gib=mem.argument_size_in_bytes / GIB,
      output_gib=mem.output_size_in_bytes / GIB,
      alias_gib=mem.alias_size_in_bytes / GIB,
      temp_gib=mem.temp_size_in_bytes / GIB,
      resident_gib=resident / GIB,
      peak_gib=peak / GIB,
      hbm_gib=hbm / GIB,
      hbm_fraction=peak / hbm,
      fits=peak <= _HEADROOM * hbm,
      estimate_gib=estimate / GIB,
      ratio=peak / estimate if estimate else None,
      baseline_name="entropix_rl.memory estimate",
      cpu_f32_copies_gib=copies / GIB,
      peak_without_cpu_copies_gib=(peak - copies) / GIB,
      fits_without_cpu_copies=peak - copies <= _HEADROOM * hbm,
      cpu_f32_example=example,
      compile_s=seconds,
  )
  print(json.dumps(record), flush=True)


def main(argv):
  del argv
  config = _CONFIG.value
  if _MESH.value:
    data, fsdp, tensor = (int(x) for x in _MESH.value.split(","))
    config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  config = config_dict.typed(config)
  model_cfg = memory.qwen25_config(_ARCH.value.split("-", 1)[1].upper()).replace(
      attention_impl=_ATTENTION.value,
      attention_block_q=config.model.attention_block_q,
      attention_block_k=config.model.attention_block_k,
      param_dtype=_DTYPE.value,
      compute_dtype=_DTYPE.value,
  )
  stand_in = types.SimpleNamespace(
      stop_ids=(151643,), pad_id=151643, vocab_size=model_cfg.vocab_size
  )
  exp = resolve(config, tokenizer=stand_in, model=model_cfg)
  rl = exp.config.rl
  mesh = sharding.make_mesh(exp.config.mesh)
  shards = sharding.batch_shards(mesh)
  hbm = memory.device_hbm_bytes(_CHIP.value)
  prompt, completion = config.data.max_prompt_len, exp.sampler.max_new_tokens
  n = rl.batch_size
  context = dict(
      arch=_ARCH.value,
      config=sys.argv[1] if len(sys.argv) > 1 else "",
      devices=jax.device_count(),
      mesh=dict(mesh.shape),
      chip=_CHIP.value,
      attention=model_cfg.attention_impl,
      dtype=_DTYPE.value,
      rollouts=n,
      prompt_len=prompt,
      response_len=completion,
      micro_batch_size=rl.micro_batch_size,
      logprob_micro_batch_size=rl.logprob_micro_batch_size,
      max_decode_rows=exp.sampler.max_decode_rows,
  )
  params = jax.eval_shape(lambda: init_params(model_cfg, jax.random.PRNGKey(0)))
  params = _abstract(params, sharding.param_shardings(model_cfg, mesh))
  estimate = memory.estimate_for_experiment(model_cfg, exp, dict(mesh.shape))

  optimizer = make_optimizer(exp.config.optimizer)

  def train_state(opt, with_reference):
    build = lambda p: create_train_state(
        p,
        opt,
        jax.random.PRNGKey(0),
        interventions=interventions.init_states(exp.loss),
        ref_params=p if with_reference else None,
    )
    abstract = jax.eval_shape(build, params)
    return _abstract(abstract, sharding.state_shardings(abstract, opt, mesh))

  state = train_state(optimizer, rl.use_reference)
  rows = lambda shape, dtype: jax.ShapeDtypeStruct(
      shape, dtype, sharding=sharding.batch_sharding(mesh)
  )
  if "rl_update" in _FUNCTIONS.value:
    batch = abstract_rl_batch(n, prompt, completion, sharding.batch_sharding(mesh))
    update = jit_rl_update(
        UpdateSpec.of(exp),
        optimizer,
        mesh=mesh,
        state_sharding=jax.tree.map(lambda x: x.sharding, state),
    )
    _report(
        "rl_update",
        module="rl_update",
        lowered=update.lower(state, batch),
        resident=0,
        estimate=estimate.train_peak,
        hbm=hbm,
        context=context,
    )

  sampler_cfg = dataclasses.replace(exp.sampler, num_samples=rl.group_size)
  per_pass = sampler_cfg.prompts_per_pass or rl.prompts_per_step
  per_pass = -(-per_pass // shards) * shards
  pass_rows = per_pass * sampler_cfg.num_samples
  resident = _device_bytes(state) - _device_bytes(state.params)
  context = dict(context, decode_rows=pass_rows)
  decode_state = _abstract(
      jax.eval_shape(lambda: sampling.empty_state(model_cfg, pass_rows, prompt + completion)),
      sampling.state_shardings(model_cfg, mesh),
  )
  if "prefill" in _FUNCTIONS.value:
    fn = sampling.compiled_prefill(model_cfg, sampler_cfg, mesh)
    lowered = fn.lower(
        params,
        rows((per_pass, prompt), jnp.int32),
        rows((per_pass, prompt), bool),
        rows((pass_rows, 2), jnp.uint32),
        rows((pass_rows,), jnp.int32),
        jnp.float32(1.0),
        None,
    )
    _report(
        "prefill",
        module="_prefill",
        lowered=lowered,
        resident=resident,
        estimate=estimate.prefill_peak,
        hbm=hbm,
        context=context,
    )
  if "decode" in _FUNCTIONS.value:
    fn = sampling.compiled_decode(
        model_cfg, sampler_cfg, sampler_cfg.decode_segment or completion, mesh
    )
    _report(
        "decode",
        module="_decode",
        lowered=fn.lower(params, decode_state, jnp.float32(1.0), None),
        resident=resident,
        estimate=estimate.decode_peak,
        hbm=hbm,
        context=context,
    )
  if "refill" in _FUNCTIONS.value:
    # The worst refill: every row of the batch freed at once, its prompts as many as the batch
    # started with (sampling._admitted caps them there), the decode cache resident.
    fn = sampling.compiled_refill(model_cfg, sampler_cfg, mesh)
    lowered = fn.lower(
        params,
        decode_state,
        *sampling.abstract_refill_inputs(mesh, per_pass, pass_rows, prompt),
        jnp.float32(1.0),
        None,
    )
    _report(
        "refill",
        module="_refill",
        lowered=lowered,
        resident=resident,
        estimate=estimate.prefill_peak,
        hbm=hbm,
        context=context,
    )
  if "sft_step" in _FUNCTIONS.value:
    sft_optimizer = make_optimizer(exp.config.sft.optimizer)
    sft_state = train_state(sft_optimizer, False)
    b = exp.config.sft.batch_size
    step = jit_sft_step(
        model_cfg,
        sft_optimizer,
        exp.config.sft,
        token_chunk=rl.token_chunk,
        remat=rl.remat,
        mesh=mesh,
        state_sharding=jax.tree.map(lambda x: x.sharding, sft_state),
    )
    batch = {
        "tokens": rows((b, prompt + completion), jnp.int32),
        "attention_mask": rows((b, prompt + completion), bool),
        "loss_mask": rows((b, prompt + completion), jnp.float32),
    }
    _report(
        "sft_step",
        module="sft_step",
        lowered=step.lower(sft_state, batch),
        resident=0,
        estimate=estimate.sft_peak,
        hbm=hbm,
        context=dict(context, sft_batch=b),
    )


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
