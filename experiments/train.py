r"""Train a policy with RL (after an optional SFT warm start).

  python experiments/train.py --config=configs/quickstart.py --workdir=/tmp/qs
  python experiments/train.py --config=configs/quickstart.py --config.loss.name=kl_cov \
      --workdir=/tmp/qs_klcov
  python experiments/train.py --config=configs/quickstart.py:runlocal --workdir=/tmp/smoke
  python experiments/train.py --config=configs/interventions.py --list_presets
  python experiments/train.py --config=configs/quickstart.py --print_config

Every field of the config can be set with `--config.SECTION.FIELD=VALUE`; `--print_config`
prints them all (with what the run derives from them) and `--list_presets` the presets of a
config file (the text after `:`). A bad key or value is one line naming it, before any work.

Re-running with the same --workdir resumes from its latest checkpoint. The workdir keeps the
config the run started with (`run_info.json`): a re-run may change only its length
(`rl.steps`), logging, evaluation and checkpoint cadence, mesh and processes; any other change
is refused, naming the fields, unless `--allow_config_change` (the change is then recorded).
A re-run of a finished run says so and changes nothing. A run stopped by SIGTERM (preemption)
saves a checkpoint and exits with code 75 (`checkpoint.PREEMPTED_EXIT_CODE`); launch/sweep.py
and launch/run.sh resume such runs. Ctrl-C saves the step it is in and exits with code 130
(`checkpoint.INTERRUPTED_EXIT_CODE`); a second Ctrl-C exits at once, keeping the last finished
checkpoint. The workdir may be on object storage (`--workdir=gs://BUCKET/run`).
"""

import sys

from absl import app, flags, logging

from entropix_rl import console, sharding
from entropix_rl.train import cli, config_dict, loop
from entropix_rl.train.checkpoint import INTERRUPTED_EXIT_CODE

_CONFIG = cli.define_config(None, "Path to a config file (PATH[:PRESET]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Continue the workdir's run with a config that differs in more than its length, logging "
    "and cadence (the change is recorded in run_info.json).",
)
flags.mark_flags_as_required(["config"])


def main(argv):
  console.configure()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.answer_and_exit(_CONFIG.value, sys.argv)
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required to train")
  with cli.one_line_errors():
    config = config_dict.typed(_CONFIG.value)  # the one validation of the whole config
    sharding.initialize_distributed(config.distributed)
    try:
      loop.run(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    except loop.Stopped as stop:
      logging.warning("%s", stop)
      print(stop, flush=True)
      sys.exit(stop.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before the RL steps: nothing of the run is lost
      print(
          "interrupted (Ctrl-C) before the first RL step; run the same command to start again",
          flush=True,
      )
      sys.exit(INTERRUPTED_EXIT_CODE)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
