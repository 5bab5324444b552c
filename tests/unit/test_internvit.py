"""InternViT plugin: sizes (meta device), InternVL key names, shapes, an independent reference, loading, composition."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from r1v.core.interfaces import Sample
from r1v.data.synthetic import generate
from r1v.model.parts.internvit import InternViT, internvit_6b, internvit_300m, internvit_tiny

# The published shapes, written out here (not imported) so the counts are checked independently.
SIX_B = dict(image=448, patch=14, c=3200, depth=45, mlp=12800, qkv_bias=False, qk_norm=True, norm="rms")
M300 = dict(image=448, patch=14, c=1024, depth=24, mlp=4096, qkv_bias=True, qk_norm=False, norm="layer")


def count_from_shapes(image, patch, c, depth, mlp, qkv_bias, qk_norm, norm) -> int:
    g = image // patch
    embeddings = c + (3 * patch * patch * c + c) + (1 + g * g) * c  # class, patch conv (w + b), positions
    norm_params = c if norm == "rms" else 2 * c
    layer = (
        2 * norm_params  # norm1, norm2
        + 3 * c * c + (3 * c if qkv_bias else 0)  # attn.qkv
        + (2 * c if qk_norm else 0)  # attn.q_norm, attn.k_norm
        + c * c + c  # attn.proj
        + c * mlp + mlp + mlp * c + c  # mlp.fc1, mlp.fc2
        + 2 * c  # ls1, ls2
    )  # fmt: skip
    return embeddings + depth * layer


@pytest.mark.parametrize(
    ("factory", "spec", "published"),
    [(internvit_6b, SIX_B, 5.54e9), (internvit_300m, M300, 0.30e9)],
    ids=["6b", "300m"],
)
def test_parameter_counts_on_meta_device(factory, spec, published):
    with torch.device("meta"):
        m = factory(pretrained="/nonexistent.safetensors")  # loading is skipped on the meta device
    n = sum(p.numel() for p in m.parameters())
    exact = count_from_shapes(**spec)
    print(f"{factory.__name__}: {n:,} parameters (from shapes: {exact:,})")
    assert n == exact
    assert n == pytest.approx(published, rel=0.005 if published > 1e9 else 0.02)
    assert (m.image_size, m.grid_size, m.hidden_size) == (448, 32, spec["c"])


def tiny_expected_keys(depth: int = 2, c: int = 64) -> dict[str, tuple[int, ...]]:
    keys = {
        "embeddings.class_embedding": (1, 1, c),
        "embeddings.patch_embedding.weight": (c, 3, 8, 8),
        "embeddings.patch_embedding.bias": (c,),
        "embeddings.position_embedding": (1, 1 + 8 * 8, c),
    }
    for i in range(depth):
        layer = {
            "norm1.weight": (c,), "norm2.weight": (c,),
            "attn.qkv.weight": (3 * c, c), "attn.q_norm.weight": (c,), "attn.k_norm.weight": (c,),
            "attn.proj.weight": (c, c), "attn.proj.bias": (c,),
            "mlp.fc1.weight": (2 * c, c), "mlp.fc1.bias": (2 * c,), "mlp.fc2.weight": (c, 2 * c), "mlp.fc2.bias": (c,),
            "ls1": (c,), "ls2": (c,),
        }  # fmt: skip
        keys.update({f"encoder.layers.{i}.{k}": v for k, v in layer.items()})
    return keys


def test_key_names_are_internvl_names():
    m = internvit_tiny()
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == tiny_expected_keys()
    with torch.device("meta"):
        big = internvit_300m()
    names = set(big.state_dict())
    assert {"encoder.layers.23.attn.qkv.bias", "encoder.layers.0.norm1.bias"} <= names  # qkv bias, LayerNorm
    assert not any("q_norm" in k for k in names) and "encoder.layers.24.ls1" not in names
    assert torch.equal(m.encoder.layers[0].ls1, torch.full((64,), 0.1))


def test_forward_shapes_select_layer_and_position_interpolation():
    torch.manual_seed(0)
    m = internvit_tiny().eval()
    assert (m.image_size, m.grid_size, m.hidden_size) == (64, 8, 64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        last = m(x)
        assert last.shape == (2, 8, 8, 64)
        m2 = internvit_tiny(select_layer=-2).eval()
        m2.load_state_dict(m.state_dict())
        assert m2(x).shape == (2, 8, 8, 64) and not torch.allclose(m2(x), last)
        x96 = torch.randn(2, 3, 96, 96)
        big = m(x96)  # a 96-px input to the 64-px model: positions interpolated 8×8 -> 12×12
        assert big.shape == (2, 12, 12, 64) and torch.isfinite(big).all()
        m3 = internvit_tiny(image_size=96).eval()  # the override keeps the checkpoint's 8×8 position table
        m3.load_state_dict(m.state_dict())
        assert (m3.image_size, m3.grid_size) == (96, 12)
        torch.testing.assert_close(m3(x96), big)
    with pytest.raises(ValueError, match="select_layer 3 is out of range"):
        internvit_tiny(select_layer=3)
    with pytest.raises(ValueError, match="odd grid"):
        internvit_tiny(image_size=72)


# ---- an independent, straightforward reference (per image, per head, written from the InternVL code) ----


def ref_rms(x, w, eps=1e-6):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def ref_layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def ref_linear(x, sd, name):
    bias = sd.get(name + ".bias")
    return x @ sd[name + ".weight"].T + (0 if bias is None else bias)


def ref_embed(img, sd, patch):  # (3, S, S) -> (1 + g*g, C)
    g = img.shape[-1] // patch
    w = sd["embeddings.patch_embedding.weight"]  # (C, 3, p, p)
    patches = img.reshape(3, g, patch, g, patch).permute(1, 3, 0, 2, 4).reshape(g * g, -1)  # row-major patches
    tokens = patches @ w.reshape(w.shape[0], -1).T + sd["embeddings.patch_embedding.bias"]
    pos = sd["embeddings.position_embedding"][0]  # (1 + G*G, C)
    side = math.isqrt(pos.shape[0] - 1)
    grid_pos = pos[1:].T.reshape(1, -1, side, side)
    grid_pos = torch.nn.functional.interpolate(grid_pos, size=(g, g), mode="bicubic", align_corners=False)
    return torch.cat([sd["embeddings.class_embedding"][0], tokens]) + torch.cat([pos[:1], grid_pos[0].flatten(1).T])


def ref_layer(x, sd, p, heads):  # (L, C) -> (L, C)
    def norm(t, name):
        if p + name + ".bias" in sd:
            return ref_layer_norm(t, sd[p + name + ".weight"], sd[p + name + ".bias"])
        return ref_rms(t, sd[p + name + ".weight"])

    c = x.shape[-1]
    d = c // heads
    qkv = ref_linear(norm(x, "norm1"), sd, p + "attn.qkv")
    q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
    if p + "attn.q_norm.weight" in sd:
        q, k = ref_rms(q, sd[p + "attn.q_norm.weight"]), ref_rms(k, sd[p + "attn.k_norm.weight"])
    outs = []
    for h in range(heads):
        qh, kh, vh = (t[:, h * d : (h + 1) * d] for t in (q, k, v))
        outs.append(torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1) @ vh)
    x = x + ref_linear(torch.cat(outs, -1), sd, p + "attn.proj") * sd[p + "ls1"]
    hid = ref_linear(norm(x, "norm2"), sd, p + "mlp.fc1")
    hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))  # exact GELU
    return x + ref_linear(hid, sd, p + "mlp.fc2") * sd[p + "ls2"]


@pytest.mark.parametrize("variant", ["6b-like", "300m-like"])
def test_matches_straightforward_reference(variant):
    torch.manual_seed(0)
    kind = dict(qkv_bias=False, qk_normalization=True, norm="rms_norm") if variant == "6b-like" else \
        dict(qkv_bias=True, qk_normalization=False, norm="layer_norm")  # fmt: skip
    m = InternViT(image_size=64, patch_size=8, hidden_size=64, depth=2, num_heads=4, mlp_size=128, **kind).eval()
    with torch.no_grad():  # randomise the norms and layer scales so every term matters
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name and "weight" in name else 0.0))
    sd = m.state_dict()
    for size in (64, 96):  # native grid and an interpolated one
        x = torch.randn(2, 3, size, size)
        g = size // 8
        with torch.no_grad():
            out = m(x)
            ref = torch.stack([ref_layer(ref_layer(ref_embed(img, sd, 8), sd, "encoder.layers.0.", 4), sd,
                                         "encoder.layers.1.", 4) for img in x])  # fmt: skip
        torch.testing.assert_close(out, ref[:, 1:].reshape(2, g, g, 64), atol=1e-4, rtol=1e-4)
    first = InternViT(image_size=64, patch_size=8, hidden_size=64, depth=2, num_heads=4, mlp_size=128, **kind,
                      select_layer=-2).eval()  # fmt: skip
    first.load_state_dict(sd)  # select_layer=-2: the hidden state after the first of two layers
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        one = ref_layer(ref_embed(x[0], sd, 8), sd, "encoder.layers.0.", 4)
        torch.testing.assert_close(first(x)[0], one[1:].reshape(8, 8, 64), atol=1e-4, rtol=1e-4)


def test_pretrained_loads_and_wrong_shapes_are_named(tmp_path):
    torch.manual_seed(0)
    a = internvit_tiny().eval()
    state = a.state_dict()
    save_file(state, tmp_path / "vit.safetensors")
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    b = internvit_tiny(pretrained=str(tmp_path / "vit.safetensors")).eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        # the InternVL / R1V file layout: vision_model.<key>, next to the other parts' keys
        full = {f"vision_model.{k}": v for k, v in state.items()} | {"mlp1.0.weight": torch.ones(4)}
        save_file(full, tmp_path / "full.safetensors")
        assert torch.equal(a(x), internvit_tiny(pretrained=str(tmp_path / "full.safetensors")).eval()(x))
    bad = dict(state) | {"encoder.layers.0.mlp.fc1.weight": torch.zeros(130, 64)}
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as e:
        internvit_tiny(pretrained=str(tmp_path / "bad.safetensors"))
    msg = str(e.value)
    assert "encoder.layers.0.mlp.fc1.weight" in msg and "(130, 64)" in msg and "(128, 64)" in msg, msg
    save_file({f"vision_model.{k}": v for k, v in bad.items()}, tmp_path / "bad_full.safetensors")
    with pytest.raises(RuntimeError) as e:  # prefixed keys: torch's own size check names key and shapes
        internvit_tiny(pretrained=str(tmp_path / "bad_full.safetensors"))
    msg = str(e.value)
    assert "encoder.layers.0.mlp.fc1.weight" in msg and "[130, 64]" in msg and "[128, 64]" in msg, msg


def test_composes_into_the_tiny_vlm(compose):
    from r1v.core.registry import get_registry
    from r1v.model.build import build

    registry = get_registry(refresh=True)
    assert {"internvit_6b", "internvit_300m", "internvit_tiny"} <= set(registry.names("vision"))
    assert compose("vision=internvit_tiny")["model"]["vision"]["name"] == "internvit_tiny"
    cfg = compose()["model"]
    cfg["vision"] = {"name": "internvit_tiny"}
    torch.manual_seed(0)
    model, proc = build(cfg, registry)
    assert proc.image_size == 64 and model.tokens_per_tile == 16
    s, _ = generate(0, "val")
    batch = proc.collate([proc.encode(Sample(s.id, s.question, s.answer, s.images), "answer")])
    out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.vision.encoder.layers[-1].attn.qkv.weight.grad is not None  # gradients reach the encoder
