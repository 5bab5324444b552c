"""Issue 9's pieces in isolation: the _target_ allow-list, the output-folder check, corrupt checkpoints,
reward failure shares, image modes, the data validator and its CLI."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from r1v.core.config import ConfigError, check_targets, check_writable
from r1v.runtime.runs import RunError, check_checkpoint, latest_good_checkpoint

# -- config safety ------------------------------------------------------------------------------------------------


def test_targets_outside_the_allow_list_are_refused():
    check_targets({"trainer": {"_target_": "lightning.pytorch.Trainer",
                               "strategy": {"_target_": "r1v.runtime.strategies.X"}},
                   "logger": {"csv": {"_target_": "r1v.runtime.loggers.RunCSVLogger"}}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"trainer\.strategy\._target_: 'os\.system' is not allowed"):
        check_targets({"trainer": {"strategy": {"_target_": "os.system"}}})
    with pytest.raises(ConfigError, match=r"logger\.x\[0\]\._target_: 'lightningx\.Evil'"):
        check_targets({"logger": {"x": [{"_target_": "lightningx.Evil"}]}})


def test_cli_refuses_a_foreign_target_before_anything_runs(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli(["+trainer.callbacks=[{_target_: subprocess.call, args: [touch, pwned]}]"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert "trainer.callbacks[0]._target_: 'subprocess.call' is not allowed" in proc.stderr
    assert not (tmp_path / "pwned").exists() and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"paths.runs: .*locked/runs is not writable"):
            check_writable(locked / "runs", "paths.runs")
    finally:
        locked.chmod(0o700)


def test_output_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"paths.runs: .*file/runs cannot be made: .*file is a file"):
        check_writable(tmp_path / "file" / "runs", "paths.runs")


# -- checkpoints --------------------------------------------------------------------------------------------------


def _ckpt(path, step: int) -> None:
    torch.save({"global_step": step, "w": torch.arange(1000.0)}, path)


def test_a_corrupt_checkpoint_is_named_and_the_previous_good_one_used(tmp_path, caplog):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    _ckpt(folder / "step000004.ckpt", 4)
    _ckpt(folder / "last.ckpt", 8)
    data = bytearray((folder / "last.ckpt").read_bytes())
    with zipfile.ZipFile(folder / "last.ckpt") as z:  # flip bytes inside a stored member: the CRC must catch it
        info = next(i for i in z.infolist() if i.file_size > 1000)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
    data[start : start + 8] = b"\xff" * 8
    (folder / "last.ckpt").write_bytes(bytes(data))
    (folder / ".last.ckpt.tmp-123").write_bytes(b"half")  # an interrupted save
    with pytest.raises(RunError, match=r"last.ckpt is corrupt \(member .* fails its CRC check\)"):
        check_checkpoint(folder / "last.ckpt")
    assert latest_good_checkpoint(tmp_path / "run") == folder / "step000004.ckpt"
    assert "skipping checkpoint" in caplog.text and not (folder / ".last.ckpt.tmp-123").exists()
    (folder / "step000004.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(
        RunError,
        match=r"no usable checkpoint \((step000004.ckpt, last.ckpt|last.ckpt, "
        r"step000004.ckpt) are all corrupt\)",
    ):  # newest first
        latest_good_checkpoint(tmp_path / "run")


# -- bounded rewards ----------------------------------------------------------------------------------------------


def test_a_reward_failing_on_most_calls_stops_with_its_name():
    from r1v.core.interfaces import RewardInput
    from r1v.rl.rewards import RewardFailureError, RewardRunner

    def flaky(x: RewardInput) -> dict[str, float]:
        if int(x.extra["id"]) % 4:  # 3 of 4 calls fail
            raise ValueError("sympy hung up")
        return {"flaky": 1.0}

    def inf(x: RewardInput) -> dict[str, float]:
        return {"inf": float("inf")}

    runner = RewardRunner({"flaky": (1.0, flaky), "ok": (1.0, lambda x: {"ok": 1.0})}, isolation="inline",
                          max_failure_share=0.5, min_calls=16)  # fmt: skip
    batch = [RewardInput("q", "c", "a", [], {"id": str(i)}) for i in range(8)]
    _, totals = runner.score(batch)  # 8 calls: under min_calls, counted only
    assert runner.failures["flaky"] == 6 and runner.failures["ok"] == 0 and totals[0] == 2.0 and totals[1] == 1.0
    with pytest.raises(RewardFailureError, match=r"reward 'flaky' failed on 12 of 16 calls \(75%.*sympy hung up"):
        runner.score(batch)
    runner = RewardRunner({"inf": (1.0, inf)}, isolation="inline", max_failure_share=None)
    _, totals = runner.score(batch[:2])
    assert totals == [0.0, 0.0] and runner.failures["inf"] == 2  # inf is a failure, not a reward


# -- images -------------------------------------------------------------------------------------------------------


def test_image_modes_become_the_rgb_a_viewer_shows():
    from r1v.data.images import to_rgb

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red: shows as the white background
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)
    deep = Image.fromarray(np.full((4, 4), 30000, dtype=np.uint16))  # 16-bit grey: scaled, not clipped to white
    assert to_rgb(deep).getpixel((0, 0)) == (117, 117, 117)
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 128, 255] * 256)
    assert to_rgb(pal).getpixel((0, 0)) == (0, 128, 255)
    assert to_rgb(Image.new("L", (4, 4), 200)).getpixel((0, 0)) == (200, 200, 200)
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    tall = Image.new("RGB", (2, 6), (9, 9, 9))
    exif = tall.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    tall.info["exif"] = exif.tobytes()
    tall = Image.open(_roundtrip(tall, exif))
    assert tall.size == (2, 6) and to_rgb(tall).size == (6, 2)


def _roundtrip(image: Image.Image, exif) -> object:
    import io

    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes())
    buf.seek(0)
    return buf


# -- the data validator and its CLI -------------------------------------------------------------------------------


def _bad_dataset(tmp_path):
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "ok.png")
    Image.new("RGBA", (32, 32), (10, 200, 10, 0)).save(tmp_path / "alpha.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    (tmp_path / "cut.png").write_bytes(_garbled_png((tmp_path / "ok.png").read_bytes()))
    rows = [
        {"id": "a", "images": ["ok.png"], "question": "<image>\nWhat colour?", "answer": "green"},
        {"id": "b", "images": ["alpha.png"], "question": "<image>\nWhat colour?", "answer": 0},  # answer 0 is fine
        {"id": "a", "images": ["ok.png"], "question": "<image>\nAgain?", "answer": "green"},  # duplicate id
        {"id": "c", "images": ["missing.png"], "question": "<image>\nQ", "answer": "x"},
        {"id": "d", "images": "ok.png", "question": "<image>\nQ", "answer": "x"},  # a string, not a list
        {"id": "e", "images": [], "question": "   ", "answer": "x"},  # blank question
        {"id": "f", "images": ["truncated.png"], "question": "<image>\nQ", "answer": "x"},
        {"id": "g", "images": ["cut.png"], "question": "<image>\nQ", "answer": "x"},  # fails only on full decode
        {"id": "h", "images": ["ok.png"], "question": "<image>\n" + "word " * 400, "answer": "x"},  # too long
        {"id": "i", "images": [], "question": {"text": "Q"}, "answer": "x"},  # wrong type
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    return path


def _garbled_png(good: bytes) -> bytes:
    """The PNG with its pixel data (IDAT) replaced by bytes that are not zlib, under a correct CRC: every
    header and checksum check passes, only decoding the pixels fails."""
    import struct
    import zlib

    out, pos = bytearray(good[:8]), 8
    while pos < len(good):
        (n,) = struct.unpack(">I", good[pos : pos + 4])
        kind, data = good[pos + 4 : pos + 8], good[pos + 8 : pos + 8 + n]
        if kind == b"IDAT":
            data = b"\x00garbage" * 4
        out += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        pos += 12 + n
    return bytes(out)


def test_data_check_reports_every_bad_row_with_file_and_line(tmp_path):
    from tests.conftest import run_cli

    path = _bad_dataset(tmp_path)
    proc = run_cli(["data", "check", str(path), "--max-tokens", "300"], tmp_path, module="r1v")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]  # bad rows, not a crash
    out = proc.stdout
    assert f"{path} (train): 11 rows, 8 bad" in out
    for line, kind in ((3, "duplicate id"), (4, "missing image"), (6, "missing field 'question'"),
                       (7, "corrupt image"), (8, "corrupt image"), (9, "too long"), (10, "wrong type"),
                       (11, "invalid JSON")):  # fmt: skip
        assert f"{path}:{line}: {kind}" in out, (line, kind, out)
    assert f"{path}:1:" not in out and f"{path}:2:" not in out and f"{path}:5:" not in out  # "images": "ok.png"
    assert "by kind: " in out


def test_training_skips_and_counts_a_row_that_fails_to_decode(tmp_path):
    """The header check passes cut.png; the loader's full decode fails: the row is skipped and counted,
    training goes on. Row 9 (2028 tokens) is over the tiny backbone's 512-token context: skipped too, not a
    batch padded past the context. run.json counts both, each once, beside the header-level skips."""
    from tests.conftest import run_cli

    path = _bad_dataset(tmp_path)
    proc = run_cli(["data=jsonl", f"data.train={path}", "run=r", "stage.max_steps=3", "stage.batch_size=8",
                    "stage.val_every=1000", "stage.val_generate=0", "logger=csv", "trainer.enable_progress_bar=false"],
                   tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((tmp_path / "runs" / "r" / "run.json").read_text())
    skipped = run["data"]["train"]["skipped"]
    assert run["data"]["train"]["rows"] == 5 and sum(skipped.values()) == 8, skipped  # 6 when read + 2 in training
    assert skipped["too long"] == 1 and skipped["corrupt image"] == 2, skipped  # truncated.png, then cut.png
    assert f"{path}:9: too long: 2028 tokens after image-token expansion (limit 512" in proc.stdout + proc.stderr
    assert "cut.png" in proc.stdout + proc.stderr  # the decode failure, named when it was skipped ...
    with open(tmp_path / "runs" / "r" / "metrics.csv") as f:  # ... and counted
        skipped = [float(r["train/skipped_samples"]) for r in __import__("csv").DictReader(f)
                   if r.get("train/skipped_samples")]  # fmt: skip
    assert max(skipped) >= 2


def test_on_bad_sample_error_stops_at_an_image_that_fails_to_decode(tmp_path):
    from r1v.data.datasets import DataError, JsonlDataset

    _bad_dataset(tmp_path)
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps({"images": [im], "question": "<image>\nQ", "answer": "x"}) + "\n"
                            for im in ("ok.png", "cut.png")))  # fmt: skip
    ds = JsonlDataset(path, on_bad_sample="error")  # the header check passes cut.png
    assert ds[0].images
    with pytest.raises(DataError) as e:
        ds[1]
    message = str(e.value)
    assert message.startswith(f"{path}:2: corrupt image: {tmp_path / 'cut.png'} cannot be decoded"), message
    assert "\n" not in message


def test_on_bad_sample_error_stops_training_at_an_over_long_row(tmp_path):
    from tests.conftest import one_error_line, reasoning_jsonl, run_cli

    path = reasoning_jsonl(tmp_path, n=4)
    long = {"id": "long", "images": ["a.png"], "question": "<image>\n" + "x" * 100_000, "answer": "3"}
    path.write_text(path.read_text() + json.dumps(long) + "\n")
    proc = run_cli(["data=jsonl", f"data.train={path}", "data.on_bad_sample=error", "run=r", "stage.max_steps=2",
                    "stage.batch_size=5", "stage.val_every=1000", "stage.val_generate=0",
                    "trainer.enable_progress_bar=false"], tmp_path)  # fmt: skip
    line = one_error_line(proc)
    assert line.startswith(f"r1v: error: {path}:5: too long: ") and "limit 512" in line, line


def test_a_preference_pair_over_the_length_limit_is_skipped_or_stops_the_run(tiny_vlm, tmp_path):
    """Preference data (MPO, reward model) obeys data.max_tokens like SFT rows: the longer of prompt + chosen and
    prompt + rejected counts; skipped and counted by kind, or under error one line naming file:line."""
    from r1v.data.collate import Limits, PairCollator
    from r1v.data.datasets import DataError, PairsDataset

    _, processor = tiny_vlm
    path = tmp_path / "pairs.jsonl"
    rows = [{"id": "ok", "question": "Q", "chosen": "short", "rejected": "no"},
            {"id": "long", "question": "Q", "chosen": "fine", "rejected": "word " * 600}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = PairsDataset(path)
    batch = PairCollator(processor, Limits(128, "skip", ds.where))([ds[0], ds[1]])
    assert batch["skipped"] == 1 and batch["skipped_rows"] == {"long": "too long"}
    assert [s.id for s in batch["samples"]] == ["ok"] and batch["input_ids"].shape[1] <= 128
    with pytest.raises(DataError) as e:
        PairCollator(processor, Limits(128, "error", ds.where))([ds[0], ds[1]])
    assert str(e.value).startswith(f"{path}:2: too long: ") and "limit 128" in str(e.value)
    whole = PairCollator(processor)([ds[0], ds[1]])  # no limit: both rows, the long one padded in
    assert whole["skipped"] == 0 and whole["input_ids"].shape[1] > 600


def test_a_scorer_past_its_time_limit_is_a_counted_failure():
    import time
    from collections import Counter

    from r1v.evaluation.sample_scores import run_scorer

    class Slow:
        def score(self, samples, ctx):
            out = []
            for s in samples:
                if s.id == "hang":
                    time.sleep(30)  # a scorer stuck on one sample
                out.append(float("inf") if s.id == "inf" else 1.0)
            return out

    from r1v.core.interfaces import Sample

    samples = [Sample(i, "q", "a", []) for i in ("a", "hang", "inf", "b")]
    failures: Counter[str] = Counter()
    t0 = time.perf_counter()
    values = run_scorer("slow", Slow(), samples, None, failures, "keep", timeout_s=0.3)
    assert values == [1.0, None, None, 1.0] and failures["slow"] == 2
    assert time.perf_counter() - t0 < 5  # the batch (1.2 s) and the stuck sample (0.3 s) were cut short


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (exited, waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_recipe_stage_dies_with_the_recipe(tmp_path):
    """kill -9 of python -m r1v.recipe takes its running stage with it (no orphan training on)."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "from pathlib import Path; from r1v.recipe import _run; "
        f"_run('timeit', ['-n', '1', 'import time; time.sleep(120)'], Path({str(tmp_path)!r}) / 'log.txt')"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])

    def children() -> list[int]:
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            try:  # the stage itself: imports may start short-lived helpers (a compiler probe) first
                stage = b"timeit" in (stat.parent / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == parent.pid and stage:
                out.append(int(stat.parent.name))
        return out

    deadline = time.time() + 60
    while not children() and time.time() < deadline:
        time.sleep(0.2)
    (child,) = children()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while _running(child) and time.time() < deadline:
        time.sleep(0.2)
    alive = _running(child)
    assert not alive, f"stage process {child} outlived the recipe"


def test_empty_batch_takes_part_in_the_all_reduce():
    """A rank whose batch is empty (all samples bad, or only a lock-step pad) returns a zero loss over its
    trainable weights when other ranks exist (so DDP's all-reduce does not hang), and skips the step alone."""
    from types import SimpleNamespace

    from r1v.stages.sft import SFTStage

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[0].requires_grad_(False)
    two = SimpleNamespace(world_size=2)
    fake = SimpleNamespace(_trainer=two, trainer=two, model=model)
    loss = SFTStage.empty_loss(fake)
    assert loss is not None and loss.requires_grad and float(loss) == 0.0
    loss.backward()
    assert model[0].weight.grad is None
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model[1].parameters())
    one = SimpleNamespace(world_size=1)
    assert SFTStage.empty_loss(SimpleNamespace(_trainer=one, trainer=one, model=model)) is None


def test_grads_finite_finds_one_bad_element_among_many_tensors():
    """The step guard's check: a single inf or nan in any gradient (fp32 or bf16) is found; none held → None."""
    import torch

    from r1v.runtime.steps import grads_finite

    model = torch.nn.Sequential(*(torch.nn.Linear(64, 64) for _ in range(30)), torch.nn.Linear(64, 8).bfloat16())
    assert grads_finite(model) is None
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e30)  # large but finite: the norm is taken in float32 per tensor
    assert grads_finite(model) is True
    for bad in (float("inf"), float("nan")):
        for index in (3, -1):  # an fp32 weight, the bf16 head's bias
            g = list(model.parameters())[index].grad
            g.view(-1)[-1] = bad
            assert grads_finite(model) is False, (bad, index)
            g.view(-1)[-1] = 1.0


def test_only_rank_zero_rewrites_a_resumed_runs_metrics(tmp_path, monkeypatch):
    """Two nodes share the run folder: a resumed rank other than 0 must not trim ``metrics.csv`` (CI saw rank 1's
    rename of ``metrics.csv.tmp`` race rank 0's and stop the run)."""
    from lightning.pytorch.utilities import rank_zero_only

    from r1v.runtime.loggers import RunCSVLogger

    (tmp_path / "metrics.csv").write_text("step,loss\n0,1.0\n5,0.5\n")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    RunCSVLogger(str(tmp_path), resume_step=3).experiment.log_metrics({"loss": 0.1}, 3)
    assert (tmp_path / "metrics.csv").read_text() == "step,loss\n0,1.0\n5,0.5\n"
    assert not (tmp_path / "metrics.csv.tmp").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert RunCSVLogger(str(tmp_path), resume_step=3).experiment.metrics_keys == ["step", "loss"]
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,loss", "0,1.0"]  # step 5 is re-done
