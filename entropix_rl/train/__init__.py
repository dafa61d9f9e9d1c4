"""The trainer: the typed experiment config and its ConfigDict edge, the run loop, the rollout,
the RL update, the SFT warm start, evaluation, checkpoints and metric sinks (`loop.run` is the
loop; `experiments/train.py` the binary; docs/design.md follows one RL step through them)."""
