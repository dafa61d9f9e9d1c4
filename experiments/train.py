r"""Train a policy with RL (after an optional SFT warm start).

  python experiments/train.py --config=configs/quickstart.py --workdir=/tmp/qs
  python experiments/train.py --config=configs/quickstart.py --config.loss.name=kl_cov \
      --workdir=/tmp/qs_klcov

Re-running with the same --workdir resumes from its latest checkpoint. A preempted run (SIGTERM,
or the distributed runtime's preemption notice) saves a checkpoint and exits with code 75
(`checkpoint.PREEMPTED_EXIT_CODE`); launch/sweep.py and launch/run.sh resume such runs. The
workdir may be on object storage (`--workdir=gs://BUCKET/run`).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from entropix_rl import console, sharding
from entropix_rl.train import config_dict, loop
from entropix_rl.train.checkpoint import PREEMPTED_EXIT_CODE

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  console.configure()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = config_dict.typed(_CONFIG.value)  # the one validation of the whole config
  sharding.initialize_distributed(config.distributed)
  try:
    loop.run(config, _WORKDIR.value)
  except loop.Preempted as stop:
    logging.warning("%s", stop)
    print(stop, flush=True)
    sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  app.run(main)
