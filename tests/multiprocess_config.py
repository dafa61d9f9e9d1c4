"""The config `tests/test_multiprocess.py` trains: a tiny quickstart on 1-digit addition.

One-digit sums (`3+4=` -> `7`) give a policy non-zero rewards after 4 SFT steps, so the
rewards, accuracies and distinct-answer counts the test compares are not all zero.
"""

import ml_collections

from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config("runlocal")
  config.task = ml_collections.ConfigDict({"name": "arithmetic", "kwargs": {"digits": 1}})
  config.model.update(hidden_size=32, num_layers=2, head_dim=8, intermediate_size=64)
  config.sft.update(steps=4, batch_size=64, log_every=2)
  config.sft.optimizer.update(learning_rate=1e-2, warmup_steps=0)
  config.eval.num_prompts = 8
  config.logging.tensorboard = False
  return config
