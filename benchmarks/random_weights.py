"""Write one random initialisation of a composition as loadable local weights, so that runs under
different strategies (ZeRO-2 vs ZeRO-3, which draws its own random init on the GPU) start from the
same model: ``<out>/backbone/`` (HF folder + tokenizer), ``<out>/vision.safetensors``,
``<out>/adapter.safetensors``. Prints the overrides that load them.

    python benchmarks/random_weights.py model=r1v_small --out /tmp/w
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=r1v_small")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from r1v.core.config import register_resolvers

    register_resolvers()
    from r1v.core.config import conf_dir, register_plugin_configs
    from r1v.core.registry import get_registry
    from r1v.model.build import build

    register_plugin_configs(get_registry())
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=args.overrides), resolve=True)
    torch.manual_seed(args.seed)
    model, processor = build(cfg["model"], get_registry())
    args.out.mkdir(parents=True, exist_ok=True)
    backbone = args.out / "backbone"
    model.backbone.save_pretrained(str(backbone))
    processor.tokenizer.save_pretrained(str(backbone))
    for part in ("vision", "adapter"):
        state = {k: v.detach().contiguous() for k, v in getattr(model, part).state_dict().items()}
        save_file(state, str(args.out / f"{part}.safetensors"))
    print(f"model.backbone.pretrained={backbone} model.vision.pretrained={args.out / 'vision.safetensors'} "
          f"model.adapter.pretrained={args.out / 'adapter.safetensors'}")  # fmt: skip


if __name__ == "__main__":
    main()
