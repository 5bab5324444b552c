"""The shipped tiny parts: recorded hashes, and that they are actually pre-trained."""

from __future__ import annotations

import torch

from r1v.core.interfaces import IMG_END, IMG_START
from r1v.data.synthetic import generate
from r1v.evaluation.answers import equivalent, extract_answer
from r1v.model.parts import tiny


def test_files_match_manifest():
    manifest = tiny.manifest()
    assert set(manifest["sha256"]) == {"tokenizer.json", *tiny.WEIGHTS.values()}
    for name, digest in manifest["sha256"].items():
        assert tiny.sha256(tiny.HERE / name) == digest, f"{name} differs from MANIFEST.json"
        assert (tiny.HERE / name).stat().st_size < 4_000_000


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
