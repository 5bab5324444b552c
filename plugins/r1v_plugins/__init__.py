"""r1v's built-in plugins, one module per component family, registered explicitly (not by
entry point), like pytest's own plugins."""

BUILTIN_MODULES = [
    "r1v_plugins.vision",
    "r1v_plugins.internvit",
    "r1v_plugins.hf_vision",
    "r1v_plugins.adapters",
    "r1v_plugins.backbones",
    "r1v_plugins.qwen2",
    "r1v_plugins.rewards",
    "r1v_plugins.length",
    "r1v_plugins.rollout",
    "r1v_plugins.datasets",
    "r1v_plugins.scorers",
    "r1v_plugins.revisers",
    "r1v_plugins.judge",
    "r1v_plugins.policy_losses",
    "r1v_plugins.benchmarks",
    "r1v_plugins.stages",
]
