"""Audio beyond SFT (issue 26, second slice): GRPO rollouts, old/reference log-probs and updates carry the clips;
preference pairs carry them; rewards see the sample's audio and video paths (old reward plugins unchanged); chat and
generate take ``--audio`` on a tiny audio checkpoint."""

from __future__ import annotations

import csv

import pytest
import torch

pytest.importorskip("soundfile")
pytest.importorskip("soxr")

AUDIO = ("audio=whisper_tiny",)


@pytest.fixture(scope="module")
def audio_grpo_run(tmp_path_factory):
    """Two GRPO steps with audio composed (only the audio adapter trains) on synthetic beeps: (run folder, data)."""
    from r1v.data.synthetic_audio import write_beeps
    from tests.conftest import run_cli

    tmp = tmp_path_factory.mktemp("audio_grpo")
    train = write_beeps(tmp / "beeps", 4)
    proc = run_cli([*AUDIO, "stage=grpo", "data=jsonl", f"data.train={train}", "data.val=null", "run=g",
                    "stage.trainable=[audio_adapter]", "stage.max_steps=2", "stage.batch_size=2", "stage.group_size=2",
                    "stage.max_new_tokens=6", "stage.val_every=1000", "stage.val_generate=0", "stage.ckpt_every=0",
                    "logger=csv", "trainer.enable_progress_bar=false"], tmp)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "runs" / "g", tmp / "beeps"


def test_a_tiny_grpo_run_with_audio_takes_two_steps(audio_grpo_run):
    run, _ = audio_grpo_run
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), losses
    assert (run / "final" / "trainable.safetensors").is_file()


def test_chat_generate_and_eval_take_audio(audio_grpo_run, tmp_path):
    """``python -m r1v chat --audio`` on the audio checkpoint; ``generate`` over an ``audios`` JSONL and the ``jsonl``
    benchmark of ``python -m r1v.eval`` (both in process: the CLI plumbing is the images'); a model without an audio
    encoder refuses ``--audio``, and a file that is not audio is one line."""
    from r1v.cli.infer import check_media, generate_file, load_audios
    from r1v.core.errors import ConfigError, DataError
    from r1v.core.registry import get_registry
    from r1v.evaluation.harness import evaluate
    from r1v.model.handle import load_model
    from tests.conftest import run_cli

    run, data = audio_grpo_run
    clip = sorted((data / "audio").glob("*.wav"))[0]
    proc = run_cli(["chat", "--checkpoint", str(run), "--question", "How many beeps?", "--audio", str(clip),
                    "--max-new-tokens", "4"], tmp_path, module="r1v")  # fmt: skip
    assert proc.returncode == 0 and "[answer:" in proc.stdout, proc.stderr[-2000:]
    model = load_model(run, device="cpu")
    engine, name = model.engine()
    out = tmp_path / "gen.jsonl"
    summary = generate_file(model.vlm, model.processor, engine, data / "train.jsonl", out, max_new_tokens=4,
                            greedy=True, limit=2, engine_name=name)  # fmt: skip
    assert summary["written"] == 2 and summary["skipped_bad_rows"] == 0
    items = get_registry().build("benchmark", "jsonl", path=str(data / "train.jsonl"), limit=2)
    assert items[0].audios == [str((data / "audio" / "train_00000.wav").resolve())]
    result = evaluate(model.vlm, model.processor, engine, items, tmp_path / "eval", max_new_tokens=4)
    assert (tmp_path / "eval" / "samples.jsonl").is_file() and result
    with pytest.raises(ConfigError, match="--audio: this checkpoint's model has no audio encoder"):
        check_media(type("P", (), {"audio": None})(), load_audios([str(clip)]))
    (tmp_path / "x.wav").write_text("not audio")
    with pytest.raises(DataError, match="cannot be read as audio"):
        load_audios([str(tmp_path / "x.wav")])


def test_preference_pairs_carry_their_audio(registry, compose, tmp_path):
    """PairCollator puts each pair's clips twice (chosen rows, then rejected), and their log-probs run."""
    import numpy as np
    import soundfile

    from r1v.core.interfaces import Sample
    from r1v.data.audio import audio_inputs, decode
    from r1v.data.collate import PairCollator
    from r1v.model.build import build
    from r1v.rl.grpo import token_logprobs

    torch.manual_seed(0)
    model, processor = build(compose(*AUDIO)["model"], registry)
    path = tmp_path / "a.wav"
    soundfile.write(str(path), (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32), 16000)
    s = Sample("p", "<audio>\nHow many beeps?", "1", audios=[decode(path)], audio_paths=[str(path)],
               meta={"chosen": "1", "rejected": "2"})  # fmt: skip
    batch = PairCollator(processor)([s])
    assert batch["audio_features"].shape[0] == 2 and batch["audio_frames"].tolist() == [50, 50]
    logp, _ = token_logprobs(model.eval(), batch["input_ids"], batch["attention_mask"], None,
                             batch["completion_mask"].shape[1], **audio_inputs(batch))  # fmt: skip
    assert logp.shape == batch["completion_mask"].shape and torch.isfinite(logp).all()


def old_style_reward(x):  # a plugin written before audio: positional RewardInput fields only
    return float(x.completion == x.answer)


def test_rewards_see_audio_and_video_paths_and_old_plugins_keep_working():
    from r1v.core.interfaces import RewardInput, Sample
    from r1v.rl.rewards import RewardRunner

    legacy = RewardInput("q", "1", "1", [], {})  # how an old plugin's test builds one: still valid
    assert legacy.audios == [] and legacy.videos == []
    s = Sample("a", "<audio>\n<video>\nq", "1", audio_paths=["/d/a.wav"], video_paths=["/d/v.mp4"], meta={"k": 1})
    inp = RewardInput.of(s, "1", id="a")
    assert (inp.audios, inp.videos, inp.extra) == (["/d/a.wav"], ["/d/v.mp4"], {"k": 1, "id": "a"})
    seen = []
    runner = RewardRunner({"old": (1.0, old_style_reward), "new": (1.0, lambda x: seen.append(x.audios) or 0.5)},
                          isolation="inline")  # fmt: skip
    _, totals = runner.score([inp, legacy])
    assert totals == [1.5, 1.5] and seen == [["/d/a.wav"], []]


def test_export_writes_the_audio_parts_beside_the_internvl_folder_and_import_reads_them(compose, registry, tmp_path,
                                                                                        caplog):  # fmt: skip
    import logging

    import numpy as np
    from safetensors.torch import load_file

    from r1v.core.interfaces import Sample
    from r1v.data.audio import AudioClip, audio_inputs
    from r1v.model.build import build
    from r1v.model.internvl import build_from_folder, export_folder, read_config

    torch.manual_seed(0)
    model, proc = build(compose("vision=internvit_tiny", *AUDIO)["model"], registry)
    with caplog.at_level(logging.INFO, logger="r1v.model.internvl"):
        export_folder(model.eval(), proc.tokenizer, tmp_path / "out", None, chat_template=proc.chat_template)
    assert "written beside it as audio.safetensors" in caplog.text
    cfg = read_config(tmp_path / "out")
    assert cfg["r1v_audio"]["audio"]["name"] == "whisper" and cfg["r1v_audio"]["audio_adapter"]["name"] == "mlp"
    assert {k.split(".")[0] for k in load_file(str(tmp_path / "out" / "audio.safetensors"))} == {
        "audio",
        "audio_adapter",
    }
    assert not [k for k in load_file(str(tmp_path / "out" / "model.safetensors")) if k.startswith("audio")]
    again, proc2 = build_from_folder(tmp_path / "out", reasoning=proc.reasoning)  # the folder does not record it
    clip = AudioClip((0.3 * np.sin(np.arange(12000) / 4)).astype(np.float32), 16000)
    sample = Sample("a", "<audio>\nHow many beeps?", "2", audios=[clip])
    out = []
    for m, p in ((model, proc), (again.eval(), proc2)):
        batch = p.collate([p.encode(sample)])
        with torch.no_grad():
            out.append(m(batch["input_ids"], batch["attention_mask"], None, **audio_inputs(batch)).logits)
    assert torch.equal(out[0], out[1])


def test_the_planner_and_inspect_count_the_audio_branch():
    """``inspect`` lists the audio parts; their activations count only when gradients reach the audio branch (its
    own adapter trains), never because the image adapter trains."""
    from r1v.cli.describe import inspect, model_parts
    from r1v.model.handle import create_model
    from r1v.runtime import planner

    lines = inspect(["audio=whisper_tiny", "stage.trainable=[audio_adapter]", "planner.audio_windows=3"])
    assert any(x.startswith("audio_adapter ") and x.rstrip().endswith("24,960") for x in lines), lines
    assert any("1 tile(s) per sample, 3 audio window(s)" in x for x in lines)
    s = planner.Settings(seq_len=512, audio_windows=2)
    for trainable, audio_acts in (("[audio_adapter]", True), ("[adapter]", False)):
        vlm = create_model(None, "audio=whisper_tiny", f"stage.trainable={trainable}", device="meta").vlm
        parts = model_parts(vlm, 1, 2)
        assert [p.name for p in parts] == ["vision", "adapter", "audio", "audio_adapter", "backbone"]
        assert parts[2].tokens == 2 * 200 and parts[3].tokens == 2 * 50  # encoder frames, kept tokens per window
        acts = planner.estimate(parts, s).per_part_activations
        assert ("audio_adapter" in acts) is audio_acts and "audio" not in acts and "backbone" in acts
        assert ("adapter" in acts) is (not audio_acts)
