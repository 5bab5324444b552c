"""Every r1v hook, in one leaf module (it imports nothing from r1v).

A plugin is any module or object with functions marked ``@r1v.hookimpl``. Each ``register_*`` hook
receives a ``register`` callable::

    register(name: str, factory: Callable[..., Any], description: str = "", **meta) -> None

``factory`` is called later, with the knobs of the chosen Hydra config option as keyword arguments
(``vision=tiny vision.depth=4`` calls the factory of ``tiny`` with ``depth=4``). Factories must be
cheap to *register*: import heavy libraries and load weights inside the factory, never at import.

Hook implementations take exactly the argument names below and declare no defaults (pluggy treats
defaulted hookimpl arguments differently across versions).
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "r1v"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# kind name -> hook name. Later issues add kinds (policy losses, scorers, judges, benchmarks) here
# and as a hookspec below; the registry picks them up from this table.
KIND_HOOKS: dict[str, str] = {
    "vision": "register_vision_encoders",
    "adapter": "register_adapters",
    "backbone": "register_backbones",
    "reward": "register_rewards",
    "length": "register_length_controllers",
    "rollout": "register_rollout_engines",
    "dataset": "register_datasets",
    "stage": "register_stages",
    "scorer": "register_scorers",
    "reviser": "register_revisers",
    "policy_loss": "register_policy_losses",
    "benchmark": "register_benchmarks",
    "audio": "register_audio_encoders",
    "audio_adapter": "register_audio_adapters",
}


@hookspec
def register_vision_encoders(register: Any) -> None:
    """Register vision encoders: factory(**knobs) -> nn.Module with positive-integer attributes ``image_size``
    (S, the tile side in pixels), ``grid_size`` (g, patches per side) and ``hidden_size`` (C), and
    ``forward(pixels (N,3,S,S)) -> (N, g, g, C)`` grid features (optional ``image_mean``, ``image_std``).
    The builder checks the attributes and, on the meta device, the output shape (r1v.model.contract)."""


@hookspec
def register_adapters(register: Any) -> None:
    """Register adapters: factory(vision_hidden, llm_hidden, **knobs) -> nn.Module with attributes
    ``in_features`` (= the encoder's ``hidden_size`` C, the ``vision_hidden`` it is given), ``out_features``
    (= the backbone's hidden size, ``llm_hidden``) and ``downsample_ratio`` (r), mapping (N, g, g, C) grid features
    to (N, T, out_features) tokens with T = (g·r)², the ``<IMG_CONTEXT>`` slots the processor inserts per tile
    (g·r must be a whole number). The builder checks all of it when the parts are built (r1v.model.contract)."""


@hookspec
def register_backbones(register: Any) -> None:
    """Register language backbones: factory(**knobs) -> r1v.core.interfaces.LanguageBackbone
    (a causal LM with a KV cache plus its tokenizer and chat template)."""


@hookspec
def register_rewards(register: Any) -> None:
    """Register rewards: factory(**knobs) -> callable(r1v.core.interfaces.RewardInput) -> a number (the reward's one
    part) or dict[str, float] of named parts; the part named like the reward (or the sum of parts) is its total."""


@hookspec
def register_length_controllers(register: Any) -> None:
    """Register length controllers: factory(**knobs) -> object with either or both of
    ``sampling_params(scores: Mapping[str, float]) -> dict`` (per-sample sampling knobs from the
    sample's normalised difficulty scores ``vision``, ``text``, ``integration``, e.g. DRLC's
    ``{"repetition_penalty": P}``) and ``__call__(length: int) -> float`` (reward shaping)."""


@hookspec
def register_rollout_engines(register: Any) -> None:
    """Register rollout engines: factory(**knobs) -> object with ``generate(model, processor,
    samples, max_new_tokens, greedy=False, sample_params=None) -> list[str]`` completions, where
    ``sample_params`` optionally gives per-sample sampling knobs (e.g. ``repetition_penalty``)."""


@hookspec
def register_datasets(register: Any) -> None:
    """Register datasets: factory(split, **knobs) -> iterable of r1v.core.interfaces.Sample."""


@hookspec
def register_stages(register: Any) -> None:
    """Register training stages: factory(cfg) -> a :class:`r1v.core.interfaces.TrainingStage` (a LightningModule with
    ``attach_data``, ``configure_model``, ``export_trainable``) or a :class:`r1v.core.interfaces.RunOnceStage`
    (``run_stage(run_dir)``, outside Lightning)."""


@hookspec
def register_scorers(register: Any) -> None:
    """Register sample scorers (QDAM/VTIA parts, reward-model scores for iterative SFT):
    factory(**knobs) -> object with ``scale`` ("0-1", "0-5" or "unbounded") and
    ``score(samples: list[Sample], ctx: r1v.core.interfaces.ScoreContext) -> list[float]``. Raise to fail;
    the caller retries sample by sample and counts failures."""


@hookspec
def register_revisers(register: Any) -> None:
    """Register chain revisers for distillation: factory(**knobs) -> object with
    ``revise(samples, wrong_chains, ctx) -> list[str | None]``: a corrected ``<think>`` chain per
    sample (ending in its answer), or None to drop it."""


@hookspec
def register_policy_losses(register: Any) -> None:
    """Register RL policy losses: factory(**knobs) -> callable ``fn(logp, old_logp, ref_logp, advantages,
    mask) -> (loss, metrics)`` with ``[B, T]`` per-token log-probs (``ref_logp`` None when β = 0),
    ``[B]`` advantages and a ``[B, T]`` completion mask; ``metrics`` is a dict of float tensors."""


@hookspec
def register_benchmarks(register: Any) -> None:
    """Register evaluation benchmarks: factory(path=None, limit=None, **knobs) -> list of
    :class:`r1v.evaluation.scoring.EvalItem` (read from a local copy; never download)."""


@hookspec
def register_audio_encoders(register: Any) -> None:
    """Register audio encoders: factory(**knobs) -> nn.Module with positive-integer attributes ``hidden_size`` (C),
    ``n_mels``, ``sampling_rate`` (Hz), ``hop_length`` (samples per mel frame), ``window_frames`` (W, mel frames per
    fixed window) and ``frames_per_token`` (mel frames per output token), and ``forward(features (N, n_mels, W)) ->
    (N, ceil(W / frames_per_token), C)``. A window's tokens past its clip's end are dropped by the model
    (:func:`r1v.data.audio.tokens_for`). The builder checks all of it (r1v.model.contract)."""


@hookspec
def register_audio_adapters(register: Any) -> None:
    """Register audio adapters: factory(audio_hidden, llm_hidden, **knobs) -> nn.Module with ``in_features``
    (= the audio encoder's ``hidden_size``) and ``out_features`` (= the backbone's hidden size), mapping (N, T, C)
    encoder tokens to (N, T, out_features), one per ``<audio_ctx>`` slot."""


@hookspec
def register_configs(config_store: Any) -> None:
    """Add Hydra config options, e.g. ``config_store.store(group="vision", name="mine",
    node={"name": "mine", "depth": 2}, package="model.vision")``, so that ``vision=mine`` works,
    ``--help`` lists it and multirun can sweep it."""
