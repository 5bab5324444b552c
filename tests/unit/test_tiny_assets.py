"""The shipped tiny parts: recorded hashes, and that they are actually pre-trained."""

from __future__ import annotations

import torch

from r1v.core.interfaces import IMG_END, IMG_START
from r1v.data.synthetic import COLORS, SHAPES, generate
from r1v.evaluation.answers import equivalent, extract_answer
from r1v.model.parts import tiny


def test_files_match_manifest():
    manifest = tiny.manifest()
    assert set(manifest["sha256"]) == {"tokenizer.json", *tiny.WEIGHTS.values()}
    for name, digest in manifest["sha256"].items():
        assert tiny.sha256(tiny.HERE / name) == digest, f"{name} differs from MANIFEST.json"
        assert (tiny.HERE / name).stat().st_size < 4_000_000


def test_internvit_file_matches_its_manifest():
    """The tiny InternViT ships with its own provenance file; the default parts' MANIFEST.json does not list it."""
    manifest = tiny.internvit_manifest()
    assert manifest["sha256"] == {tiny.INTERNVIT_WEIGHTS: tiny.sha256(tiny.HERE / tiny.INTERNVIT_WEIGHTS)}
    assert "--only internvit" in manifest["command"] and tiny.INTERNVIT_WEIGHTS not in tiny.manifest()["sha256"]
    assert (tiny.HERE / tiny.INTERNVIT_WEIGHTS).stat().st_size < 1_000_000


def cell_probe_accuracy(enc) -> float:
    """Held-out accuracy, on the cells that hold a shape, of a least-squares linear probe from a cell's pooled
    features to its contents (empty or one of the 12 colour-shape pairs), fitted on 96 scenes, tested on 48 others."""
    from r1v.data.images import preprocess

    classes = [None] + [(c, s) for c in COLORS for s in SHAPES]

    def cells(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for i in range(n):
            sample, scene = generate(i, split)
            xs.append(preprocess(sample.images[0], enc.image_size))
            y = torch.zeros(9, dtype=torch.long)
            for o in scene:
                y[o.cell] = classes.index((o.color, o.shape))
            ys.append(y)
        with torch.no_grad():
            feats = enc.eval()(torch.cat(xs)).permute(0, 3, 1, 2)  # (N,C,g,g)
        pooled = torch.nn.functional.adaptive_avg_pool2d(feats, 3).flatten(2).transpose(1, 2)  # (N,9,C)
        pooled = pooled.reshape(-1, pooled.shape[-1])
        return torch.cat([pooled, torch.ones(len(pooled), 1)], 1).double(), torch.cat(ys)

    x, y = cells("train", 96)
    w = torch.linalg.solve(x.T @ x + 1e-3 * torch.eye(x.shape[1], dtype=x.dtype),
                           x.T @ torch.nn.functional.one_hot(y, len(classes)).double())  # fmt: skip
    xv, yv = cells("val", 48)
    shapes = yv > 0  # two thirds of the cells are empty: all-empty would score 0.67 over every cell
    return ((xv @ w).argmax(-1)[shapes] == yv[shapes]).double().mean().item()


def test_internvit_features_tell_colour_and_shape_per_cell(registry):
    torch.manual_seed(0)
    random_init = cell_probe_accuracy(registry.build("vision", "internvit_tiny_pretrained", pretrained=None))
    pretrained = cell_probe_accuracy(registry.build("vision", "internvit_tiny_pretrained"))
    assert pretrained >= random_init + 0.15, (pretrained, random_init)  # 0.41 vs 0.21 (the tiny timm ViT: 0.90)


def text_accuracy(backbone, n: int = 40, max_new_tokens: int = 12, blind: bool = False) -> float:
    """Greedy answers from scene *text* (what the LMs were pre-trained on) on held-out scenes;
    ``blind`` leaves the scene out (the accuracy of guessing from the question alone)."""
    tok, model = backbone.tokenizer, backbone.model.eval()
    correct = 0
    for i in range(n):
        s, _ = generate(i, "val")
        scene = "" if blind else s.meta["scene"]
        q = s.question.replace("<image>", f"{IMG_START}{scene}{IMG_END}")
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], chat_template=backbone.chat_template,
                                         tokenize=False, add_generation_prompt=True)  # fmt: skip
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=False)
        correct += equivalent(extract_answer(text.split(tok.eos_token)[0]), s.answer)
    return correct / n


def test_instruct_lm_answers_from_scene_text(registry):
    lm = registry.build("backbone", "tiny_instruct")
    seeing, blind = text_accuracy(lm, n=60), text_accuracy(lm, n=60, blind=True)
    assert seeing >= blind + 0.2 and seeing >= 0.5, (seeing, blind)


def test_reasoner_lm_reasons_then_answers(registry):
    lm = registry.build("backbone", "tiny_reasoner")
    assert text_accuracy(lm, n=24, max_new_tokens=100) >= 0.6
