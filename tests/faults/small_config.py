"""tests/test_train.py's small config as a config file for the train binary, with dotted
overrides from the SMALL_CONFIG_OVERRIDES environment variable (JSON)."""

import json
import os

from tests.test_train import small_config


def get_config():
  return small_config(**json.loads(os.environ.get("SMALL_CONFIG_OVERRIDES", "{}")))
