"""The meshes and the cases of the 8-device checks: `tests/multidevice_checks.py` runs them
and `tests/test_sharding.py` asserts on them (it cannot import the former, which sets
`XLA_FLAGS` before JAX starts)."""

MESHES = {"8x1x1": (8, 1, 1), "2x4x1": (2, 4, 1), "2x2x2": (2, 2, 2)}
MICRO_LOSSES = ("ppo", "clip_cov", "kl_cov", "high_entropy_tokens", "steer", "lp_reg", "siren")
PACKED_LOSSES = ("ppo", "clip_cov", "kl_cov", "siren")
# Split (micro-batched or packed) updates: PPO on every mesh, the interventions on the mesh
# with every axis (data, fsdp and tensor), since their exactness on one device is tested in
# tests/test_update.py.
SPLIT_MESHES = {name: ("2x2x2",) for name in MICRO_LOSSES} | {"ppo": tuple(MESHES)}
