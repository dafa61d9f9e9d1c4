r"""Export a trained policy to a Hugging Face directory (transformers, vLLM and SGLang load it).

  python experiments/export_hf.py --workdir=/tmp/entropix_quickstart/grpo \
      --out=/tmp/entropix_quickstart/grpo_hf [--step=300]

Reads the run's model config from `run_info.json` and the params of its latest checkpoint (or
`--step`), and writes `config.json`, `model.safetensors` (sharded with an index above 2 GB),
`generation_config.json` (the run's sampling settings, stop and special tokens) and, when the
run used a Hugging Face tokenizer, its tokenizer files. A few seconds for the quickstart model;
about the time to write the weights for a 7B model. `--workdir` and `--out` may be `gs://`.
"""

import json

from absl import app, flags

from entropix_rl import console, export

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.")
_OUT = flags.DEFINE_string("out", None, "The Hugging Face directory to write.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  console.configure()
  summary = export.export_run(_WORKDIR.value, _OUT.value, step=_STEP.value)
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
