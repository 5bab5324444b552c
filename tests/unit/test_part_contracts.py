"""Each part's contract is checked when the model is built (r1v.model.contract): a plugin that breaks it is one
line naming the plugin, what it returned and what was expected, not a traceback at the first forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from r1v import hookimpl
from r1v.core.errors import ModelConfigError
from r1v.core.registry import Registry, make_plugin_manager
from r1v.model.build import build


class PerPatchAdapter(nn.Module):
    """Declares downsample_ratio 0.5 but makes one token per patch (g² instead of (g/2)²), of width ``width``."""

    def __init__(self, vision_hidden: int, llm_hidden: int, width: int | None = None, attrs: bool = True) -> None:
        super().__init__()
        if attrs:
            self.in_features, self.out_features, self.downsample_ratio = vision_hidden, llm_hidden, 0.5
        self.proj = nn.Linear(vision_hidden, width or llm_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, g, g, C) -> (N, g², D)
        return self.proj(x.flatten(1, 2))


class PooledAdapter(PerPatchAdapter):
    """The right token count ((g/2)², by 2×2 average pooling), of width ``width``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        return self.proj(pooled.flatten(1, 2))


class FlatEncoder(nn.Module):
    """A vision encoder returning (N, g², C) tokens instead of the (N, g, g, C) grid."""

    image_size, grid_size, hidden_size = 64, 8, 16

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 16, 8, stride=8)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class _BadParts:
    @hookimpl
    def register_adapters(self, register):
        register("per_patch", lambda vision_hidden, llm_hidden: PerPatchAdapter(vision_hidden, llm_hidden))
        register("too_wide", lambda vision_hidden, llm_hidden: PooledAdapter(vision_hidden, llm_hidden, llm_hidden + 8))
        register("no_widths", lambda vision_hidden, llm_hidden: PooledAdapter(vision_hidden, llm_hidden, attrs=False))

    @hookimpl
    def register_vision_encoders(self, register):
        register("flat", FlatEncoder)


@pytest.fixture(scope="module")
def bad_registry():
    return Registry(make_plugin_manager(autoload=False, extra=[_BadParts()]))


@pytest.mark.parametrize(("parts", "line"), [
    ({"adapter": {"name": "per_patch"}},
     "adapter 'per_patch' returned (1, 64, 128) for one tile of 8×8×64 features (vision 'tiny'), expected "
     "(1, 16, 128): (8 × 0.5)² = 16 tokens per tile, as many as the <IMG_CONTEXT> slots the processor inserts for "
     "downsample_ratio 0.5, each of width 128 (backbone 'tiny_instruct')"),
    ({"adapter": {"name": "too_wide"}},
     "adapter 'too_wide' returned (1, 16, 136) for one tile of 8×8×64 features (vision 'tiny'), expected "
     "(1, 16, 128): (8 × 0.5)² = 16 tokens per tile, as many as the <IMG_CONTEXT> slots the processor inserts for "
     "downsample_ratio 0.5, each of width 128 (backbone 'tiny_instruct')"),
    ({"adapter": {"name": "no_widths"}},
     "adapter 'no_widths' returned PooledAdapter with in_features='missing', out_features='missing', "
     "downsample_ratio='missing'; an adapter needs positive integers in_features, out_features and a positive "
     "downsample_ratio (see docs/plugins.md)"),
    ({"vision": {"name": "flat"}},
     "vision 'flat' returned features (1, 64, 16) for one 64×64 tile, expected (1, 8, 8, 16) (grid_size 8, "
     "hidden_size 16)"),
    ({"adapter": {"name": "mlp", "downsample_ratio": 0.3}},
     "adapter 'mlp': downsample_ratio 0.3 does not fit the 8×8 grid of vision 'tiny' (grid_size × downsample_ratio "
     "= 2.4 must be a whole number ≥ 1)"),
])  # fmt: skip
def test_a_part_that_breaks_its_contract_is_one_line_at_build_time(compose, bad_registry, parts, line):
    model = compose()["model"]
    model["vision"]["pretrained"] = None  # no weights needed to check the shapes
    model.update(parts)
    with pytest.raises(ModelConfigError) as e:
        build(model, bad_registry)
    assert str(e.value) == line
