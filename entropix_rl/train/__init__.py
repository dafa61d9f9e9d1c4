"""The trainer: the typed experiment config, SFT and RL steps, rollouts, evaluation, checkpoints
and metric sinks (`experiment.run` is the loop; `experiments/train.py` the binary)."""
