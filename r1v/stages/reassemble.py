"""``stage=reassemble``: R1V's re-assembly step (no training).

Takes the adapter (and any other non-backbone weights) trained in one run — typically ``stage=align``
with a substitute LM such as Qwen2.5-32B-Instruct — and puts it in front of another backbone — such
as DeepSeek-R1-Distill-Qwen-32B — with that backbone's tokenizer:

1. builds the new composition (``model=...``; the backbone's tokenizer gains ``<img>``, ``</img>``,
   ``<IMG_CONTEXT>``, ``<think>``, ``</think>`` when missing, their embedding rows set to the mean
   of the existing rows: deterministic, so every later build of the same composition agrees);
2. reads ``checkpoint=`` (a run folder or a ``.safetensors`` file), refuses adapter widths that do not
   fit the new backbone (one line naming both), and never carries over the old backbone's weights;
3. writes ``final/trainable.safetensors`` (the adapter, bit-identical) and ``reassembly.json``
   (what came from where), so ``checkpoint=<this run>`` starts the next stage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from r1v.core.registry import get_registry
from r1v.model.build import ModelConfigError, build
from r1v.model.load import run_folder_of
from r1v.model.sources import RANDOM_INIT
from r1v.runtime.runs import trained_weights, weights_of, write_json_atomic
from r1v.runtime.weights import full_state

log = logging.getLogger(__name__)


class ReassembleError(ModelConfigError):
    """The checkpoint cannot be put in front of the new backbone (one line)."""


def checkpoint_file(checkpoint: str | None) -> Path:
    if not checkpoint:
        raise ReassembleError("stage=reassemble needs checkpoint=<align run folder or adapter .safetensors>")
    path = weights_of(checkpoint)
    if not path.is_file():
        raise ReassembleError(f"checkpoint {checkpoint}: no trained weights at {path}")
    return path


class Reassemble:
    """A stage that runs once, outside Lightning (``run_stage``)."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = dict(cfg)

    def run_stage(self, run_dir: Path) -> dict[str, Any]:
        source = checkpoint_file(self.cfg.get("checkpoint"))
        model, processor = build(self.cfg["model"], get_registry())
        own = dict(model.named_parameters())
        with safe_open(str(source), framework="pt") as f:
            keys = list(f.keys())
            adapter_keys = [k for k in keys if k.startswith("adapter.")]
            if not adapter_keys:
                raise ReassembleError(f"checkpoint {source} holds no adapter weights (keys: {', '.join(keys[:4])})")
            carried, skipped = {}, [k for k in keys if k.startswith("backbone.")]
            for key in keys:
                if key in skipped:
                    continue
                if key not in own:
                    raise ReassembleError(f"checkpoint {source}: '{key}' has no place in the new composition")
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != tuple(own[key].shape):
                    hint = ""
                    if key.startswith("adapter."):
                        hint = (f" — the adapter was trained for a backbone of width {tensor.shape[0]}, the new "
                                f"backbone has width {model.backbone.config.hidden_size}")  # fmt: skip
                    raise ReassembleError(
                        f"checkpoint {source}: {key} has shape {tuple(tensor.shape)} but the new composition needs "
                        f"{tuple(own[key].shape)}{hint}"
                    )
                carried[key] = tensor
        random = self._random_init(source, own)
        model.load_state_dict({**carried, **random}, strict=False)
        if random:  # the source run's frozen random parts (not its old backbone) stay with the chain
            with full_state(model, set(random)) as state:
                save_file(state, str(run_dir / f".{RANDOM_INIT}.tmp"))
                (run_dir / f".{RANDOM_INIT}.tmp").replace(run_dir / RANDOM_INIT)
        if skipped:
            log.warning("reassemble: %d weights of the old backbone were left behind (e.g. %s)", len(skipped),
                        skipped[0])  # fmt: skip
        out = trained_weights(run_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        with full_state(model, set(carried)) as state:
            tmp = out.with_name(f".{out.name}.tmp")
            save_file(state, str(tmp))
            tmp.replace(out)
        tok = processor.tokenizer
        report = {
            "source_checkpoint": str(source.resolve()),
            "carried": sorted(carried),
            "left_behind": len(skipped),
            "backbone": self.cfg["model"].get("backbone", {}).get("name") or self.cfg["model"].get("internvl"),
            "tokenizer_size": len(tok),
            "image_tokens": {t: tok.convert_tokens_to_ids(t) for t in ("<img>", "</img>", "<IMG_CONTEXT>")},
        }
        report["random_init_carried"] = sorted(random)
        write_json_atomic(run_dir / "reassembly.json", report)
        log.info("reassembled %d tensors from %s onto %s", len(carried), source, report["backbone"])
        return report

    @staticmethod
    def _random_init(source: Path, own: Mapping[str, Any]) -> dict[str, Any]:
        """The source run's saved random initialisation (:data:`r1v.model.sources.RANDOM_INIT`) of the parts the new
        composition keeps (every part but the backbone), where the shapes fit."""
        folder = run_folder_of(str(source))
        path = folder / RANDOM_INIT if folder is not None else None
        if path is None or not path.is_file():
            return {}
        with safe_open(str(path), framework="pt") as f:
            names = [k for k in list(f.keys()) if not k.startswith("backbone.") and k in own]
            return {k: f.get_tensor(k) for k in names if tuple(f.get_slice(k).get_shape()) == tuple(own[k].shape)}
