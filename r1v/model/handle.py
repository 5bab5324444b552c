"""A model in a notebook: :class:`Model` holds the VLM, its processor and its composed config, and answers
questions about images the way ``python -m r1v chat`` and ``generate`` do (the fastest engine that runs the
backbone, R1V's prompt with ``<think>`` pre-filled). Made by :func:`r1v.load` and :func:`r1v.create_model`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from r1v.core.config import compose
from r1v.core.errors import DataError
from r1v.core.interfaces import IMAGE_PLACEHOLDER, THINK_CLOSE, Sample
from r1v.core.registry import get_registry
from r1v.evaluation.answers import extract_answer
from r1v.generation.choose import fastest_engine
from r1v.generation.stream import answer
from r1v.model.build import apply_freeze, build
from r1v.model.internvl import UNRENAME, export_folder, parse_size, read_config, to_r1v
from r1v.model.load import checkpoint_lora, inference_config, load_for_inference
from r1v.model.lora import LoraSpec, apply_lora, lora_layers, unload_lora, write_apart

ImageLike = Any  # a PIL image or a path to an image file
PART_KINDS = ("vision", "adapter", "backbone")


def as_image(image: ImageLike) -> Any:
    """A PIL image in RGB from an image or a path (one line naming the path when it cannot be read)."""
    from PIL import Image

    from r1v.data.images import to_rgb

    if not isinstance(image, str | Path):
        return to_rgb(image)
    if not Path(image).is_file():
        raise FileNotFoundError(f"image {image} does not exist")
    try:
        with Image.open(image) as im:
            return to_rgb(im)
    except OSError as e:
        raise DataError(f"image {image} cannot be read as an image ({type(e).__name__})") from None


def as_sample(question: str | Sample, images: Sequence[ImageLike] = (), sample_id: str = "api") -> Sample:
    """A :class:`Sample` with one ``<image>`` per image (prepended when the question has none)."""
    if isinstance(question, Sample):
        return question
    pics = [as_image(i) for i in images]
    if pics and IMAGE_PLACEHOLDER not in question:
        question = "\n".join([IMAGE_PLACEHOLDER] * len(pics) + [question])
    return Sample(sample_id, question, "", pics)


@dataclass
class Model:
    """A composed (and possibly trained) model, ready to answer questions.

    ``vlm`` is the :class:`~r1v.model.vlm.VisionLanguageModel` (a ``torch.nn.Module``), ``processor`` turns samples
    into token ids and tiles, ``config`` is the composed config it was built from (``config["model"]`` names the
    parts). Greedy decoding by default; ``greedy=False`` samples with R1V's temperature 0.6 and top-p 0.95.
    """

    vlm: torch.nn.Module
    processor: Any
    config: dict[str, Any]
    _engines: dict[tuple[float, float], tuple[Any, str]] = field(default_factory=dict, repr=False)

    def engine(self, temperature: float = 0.6, top_p: float = 0.95) -> tuple[Any, str]:
        """(engine, name): ``static`` where it runs the backbone, else ``hf``; one per sampling setting."""
        key = (float(temperature), float(top_p))
        if key not in self._engines:
            self._engines[key] = fastest_engine(self.vlm, temperature=temperature, top_p=top_p)
        return self._engines[key]

    def generate(self, questions: str | Sample | Sequence[str | Sample], images: Sequence[ImageLike] = (), *,
                 max_new_tokens: int = 512, greedy: bool = True, temperature: float = 0.6,
                 top_p: float = 0.95) -> str | list[str]:  # fmt: skip
        """Completions (``<think>`` chain, then the answer) for one question or a list of them. ``images`` go with
        a single question; for a list, pass :class:`~r1v.core.interfaces.Sample` objects with their own images."""
        single = isinstance(questions, str | Sample)
        batch = [as_sample(questions, images)] if single else [as_sample(q) for q in questions]  # type: ignore[union-attr]
        if not single and images:
            raise ValueError("images go with a single question; for several, pass Samples with their own images")
        engine, _ = self.engine(temperature, top_p)
        with torch.no_grad():
            texts = engine.generate(self.vlm, self.processor, batch, max_new_tokens, greedy=greedy)
        return texts[0] if single else texts

    def chat(self, question: str, images: Sequence[ImageLike] = (), *, max_new_tokens: int = 512,
             greedy: bool = True, stream: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
        """One turn: the completion, the extracted answer and whether ``</think>`` closed. ``stream(text)`` gets
        the text as it is generated (the static engine streams token by token)."""
        engine, _ = self.engine()
        with torch.no_grad():
            text = answer(self.vlm, self.processor, engine, as_sample(question, images), max_new_tokens, greedy, stream)
        return {"completion": text, "answer": extract_answer(text), "closed_think": THINK_CLOSE in text}

    def export(self, out: str | Path, *, shard_size: int | str = "5GB", overwrite: bool = False) -> Path:
        """Write the model as a Skywork-R1V / InternVL-chat folder (config.json, InternVL-named safetensors shards of
        at most ``shard_size`` — bytes or "5GB", "500MB", "2GiB" —, the tokenizer with the chat template); only
        InternViT → mlp → Qwen2 models have that layout. Atomic: written beside ``out``, then renamed.

        A model holding LoRA layers (``r1v.load(run, merge_lora=False)``) is written as its base with the LoRA
        weights apart, a PEFT adapter folder ``<out>/lora`` (:func:`r1v.model.lora.write_apart`); its LoRA
        layers are taken out for that (the model is the base afterwards)."""
        source = self.config["model"].get("internvl")  # its config.json and remote code are carried over
        size = parse_size(shard_size) if isinstance(shard_size, str) else int(shard_size)
        lora = unload_lora(self.vlm) if lora_layers(self.vlm) else None
        folder = export_folder(self.vlm, self.processor.tokenizer, out, read_config(source) if source else None, size,
                               chat_template=self.processor.chat_template, max_tiles=self.processor.max_tiles,
                               use_thumbnail=self.processor.use_thumbnail, source_folder=source,
                               overwrite=overwrite)  # fmt: skip
        if lora:
            spec = LoraSpec.from_node(self.config.get("lora")) or LoraSpec()
            write_apart(lora, spec, Path(folder) / "lora", lambda n: to_r1v(n, UNRENAME) or n)
        return folder

    @property
    def parts(self) -> dict[str, str]:
        """The registry names of the parts (or the InternVL folder the model came from)."""
        m = self.config["model"]
        return {"internvl": m["internvl"]} if m.get("internvl") else {p: m[p]["name"] for p in PART_KINDS}


def load_model(checkpoint: str | Path | None, *overrides: str, device: str = "auto", merge_lora: bool = True) -> Model:
    """:func:`r1v.load`: a run folder, a weights file inside one, or an InternVL-chat folder (None: the composition
    the overrides make, untrained). A LoRA run's LoRA is merged into the base weights (plain linear layers: every
    engine runs them at full speed) unless ``merge_lora=False``, which keeps PEFT's LoRA layers."""
    path = Path(checkpoint or "")
    if checkpoint and path.is_dir() and (path / "config.json").is_file() and not (path / "run.json").is_file():
        overrides = ("model=internvl_chat", f"model.internvl={path}", *overrides)  # an InternVL-chat folder
        checkpoint = None  # type: ignore[assignment]
    cfg = inference_config(None if checkpoint is None else str(checkpoint), list(overrides), device)
    vlm, processor, cfg = load_for_inference(cfg, list(overrides), keep_lora=not merge_lora)
    spec = checkpoint_lora(str(checkpoint)) if checkpoint and lora_layers(vlm) else None
    return Model(vlm, processor, {**cfg, "lora": spec.to_node() if spec else None})


def create_model(preset: str | None = None, *overrides: str, device: str = "cpu", **parts: str) -> Model:
    """:func:`r1v.create_model`: a composition by preset (``model=`` option) and/or parts (``vision=``, ``adapter=``,
    ``backbone=``), plus Hydra overrides; ``device="meta"`` builds shapes only (no memory, no weights)."""
    unknown = sorted(set(parts) - set(PART_KINDS))
    if unknown:
        raise ValueError(f"create_model: unknown part '{unknown[0]}' (parts: {', '.join(PART_KINDS)})")
    args = [*([f"model={preset}"] if preset else []), *(f"{k}={v}" for k, v in parts.items()), *overrides]
    cfg = compose(args)
    lora = LoraSpec.from_node(cfg["stage"].get("lora"))
    with torch.device(device):
        vlm, processor = build(cfg["model"], get_registry())
        if lora is not None:  # stage.lora: its layers (inspect counts them), made on the same device
            apply_lora(vlm, lora)
    apply_freeze(vlm, list(cfg["stage"].get("trainable") or ["all"]))
    for name, p in vlm.named_parameters():
        p.requires_grad_(p.requires_grad or ".lora_" in name)
    return Model(vlm if device == "meta" else vlm.eval(), processor, cfg)


def plugin_table(kind: str | None = None) -> list[dict[str, Any]]:
    """:func:`r1v.list_plugins`: every registered component of ``kind`` (all kinds when None), and a row of kind
    ``plugin`` for each third-party plugin that failed to load."""
    reg = get_registry()
    rows = [{"kind": e.kind, "name": e.name, "provider": e.provider, "description": e.description,
             "knobs": e.knobs()} for e in reg.entries(kind)]  # fmt: skip
    return rows + [{"kind": "plugin", "name": f.name, "provider": f.provider, "description":
                    f"FAILED to load: {f.error}", "knobs": []} for f in reg.failed.values()]  # fmt: skip
