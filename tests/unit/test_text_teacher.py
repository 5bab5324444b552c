"""``stage.text_teacher`` (issue 26): the LM's states on the media pulled onto its states on the media's text."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from r1v.core.errors import ConfigError
from r1v.data import synthetic_omni as omni
from r1v.data.collate import Collator
from r1v.stages.sft import teacher_distance

pytest.importorskip("soxr")


@pytest.fixture(scope="module")
def tiny_omni():
    from r1v.model.handle import create_model

    return create_model("tiny_omni")


def test_twins_line_up_at_every_position_or_on_the_shared_suffix(tiny_omni):
    """A clip's text gives one digit per audio token: the twin is as long and every position is compared; an
    image + clip sample's twin is longer (a scene's words, not 64 tiles' tokens): only the shared question and
    answer after the last medium are; a sample without a text view has no twin and is counted."""
    proc = tiny_omni.processor
    audio = omni.generate(0, "train", tasks=("beeps",))
    mixed = omni.generate(0, "train", tasks=("beeps_vs_shapes",))
    bare = dataclasses.replace(audio, id="bare", meta={k: v for k, v in audio.meta.items() if k != "text_view"})
    batch = Collator(proc, "answer", teacher=True)([audio, mixed, bare])
    assert batch["teacher_missing"] == 1 and batch["teacher"]["input_ids"].shape[0] == 2
    ids, twin = batch["input_ids"], batch["teacher"]["input_ids"]
    src, dst = batch["teacher_src"], batch["teacher_dst"]
    n0 = int(batch["attention_mask"][0].sum())
    rows0 = src[:, 0] == 0
    assert src[rows0].tolist() == [[0, p] for p in range(n0)] and torch.equal(dst[rows0], src[rows0])
    differ = ids[0, :n0] != twin[0, :n0]  # exactly the clip's tokens, which the twin writes as digits
    ctx = proc.tokenizer.convert_tokens_to_ids("<audio_ctx>")
    assert torch.equal(differ, ids[0, :n0] == ctx) and int(differ.sum()) == len(mixed.meta["media_text"][-1][1])
    rows1 = src[:, 0] == 1
    s1, d1 = src[rows1], dst[rows1]
    assert torch.equal(ids[1, s1[:, 1]], twin[1, d1[:, 1]])  # the shared suffix, token for token
    first = int(s1[0, 1])
    assert proc.tokenizer.convert_ids_to_tokens([int(ids[1, first - 1]), int(ids[1, first])]) == [
        "<audio_ctx>",
        "</aud>",
    ]
    assert (
        "triangles" in proc.tokenizer.decode(ids[1, s1[:, 1]])
        and int(s1[-1, 1]) == int(batch["attention_mask"][1].sum()) - 1
    )
    with pytest.raises(ConfigError, match=r"stage\.text_teacher needs padded"):
        Collator(proc, "answer", pack_max_tokens=512, teacher=True)


def test_the_distance_is_zero_when_the_clip_reads_as_its_text_and_trains_only_the_adapter(tiny_omni):
    """Audio tokens replaced by the digits' own embeddings: every layer's states equal the twin's (distance 0);
    the untrained adapter's are far (relative distance well above 0), and the gradient reaches the audio
    adapter alone (encoder and LM frozen, as in the align stage)."""
    vlm, proc = tiny_omni.vlm, tiny_omni.processor
    for name, p in vlm.named_parameters():
        p.requires_grad_(name.startswith("audio_adapter."))
    samples = [omni.generate(i, "train", tasks=("beeps", "higher")) for i in range(4)]
    batch = Collator(proc, "answer", teacher=True)(samples)
    kw = {"audio_features": batch["audio_features"], "audio_frames": batch["audio_frames"]}
    twin = batch["teacher"]
    with torch.no_grad():
        ref = vlm.hidden_states(twin["input_ids"], twin["attention_mask"], all_layers=True)
    states = vlm.hidden_states(batch["input_ids"], batch["attention_mask"], None, all_layers=True, **kw)
    far = teacher_distance(states, ref, batch["teacher_src"], batch["teacher_dst"])
    assert len(states) == vlm.backbone.config.num_hidden_layers + 1 and float(far) > 0.05
    far.backward()
    grads = {n for n, p in vlm.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(n.startswith("audio_adapter.") for n in grads)

    ctx = proc.tokenizer.convert_tokens_to_ids("<audio_ctx>")
    digits = twin["input_ids"][batch["input_ids"] == ctx]  # the twin's digit at each clip token, row-major
    vlm.encode_audio = lambda features, frames: vlm.backbone.get_input_embeddings()(digits)  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            same = vlm.hidden_states(batch["input_ids"], batch["attention_mask"], None, all_layers=True, **kw)
    finally:
        del vlm.encode_audio
    assert float(teacher_distance(same, ref, batch["teacher_src"], batch["teacher_dst"])) < 1e-8
