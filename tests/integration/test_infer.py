"""python -m r1v chat and python -m r1v generate on the trained default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    proc = run_cli(["data", "synth", "--out", str(folder / "d"), "--n", "10", "--split", "val"], folder, module="r1v")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder / "d" / "val.jsonl"


def test_generate_writes_scored_lines_and_resumes_after_a_cut_write(default_run, synth, tmp_path):
    common = ["generate", "--checkpoint", str(default_run), "--data", str(synth), "--max-new-tokens", "24",
              "--batch-size", "4", "--device", "cpu"]  # fmt: skip
    whole = run_cli([*common, "--out", str(tmp_path / "whole.jsonl")], tmp_path, module="r1v")
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "10 completions written" in whole.stdout and "rollout=static" in whole.stdout
    rows = [json.loads(x) for x in (tmp_path / "whole.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and len({r["id"] for r in rows}) == 10
    for r in rows:
        assert r["answer"] and isinstance(r["correct"], bool) and r["completion_tokens"] > 0 and r["seconds"] > 0
        if r["extracted_answer"] is None:
            assert r["correct"] is False
    assert sum(r["correct"] for r in rows) >= 3  # the trained adapter answers (held-out accuracy ≈ 0.6)
    # a run cut after 4 rows, with its last line half written, then the same command again
    part = tmp_path / "part.jsonl"
    first = run_cli([*common, "--out", str(part), "--limit", "4"], tmp_path, module="r1v")
    assert first.returncode == 0, first.stderr[-2000:]
    text = part.read_text()
    part.write_text(text + text.splitlines()[0][:40])  # a kill in the middle of a write
    again = run_cli([*common, "--out", str(part)], tmp_path, module="r1v")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "6 completions written" in again.stdout and "4 rows already there" in again.stdout
    resumed = [json.loads(x) for x in part.read_text().splitlines()]
    by_id = {r["id"]: r["completion"] for r in rows}
    assert sorted(r["id"] for r in resumed) == sorted(by_id)  # nothing twice, nothing lost
    assert all(r["completion"] == by_id[r["id"]] for r in resumed)  # greedy: the same answers


def test_generate_n_tops_up_a_row_cut_between_its_completions(default_run, synth, tmp_path):
    ids = [json.loads(x)["id"] for x in synth.read_text().splitlines()]
    out = tmp_path / "n3.jsonl"
    # row 0 finished (3 of 3), row 1 killed after 1 of 3 with its second line half written
    done = [{"id": ids[0], "sample": k, "completion": f"kept {k}"} for k in range(3)]
    cut = [{"id": ids[1], "sample": 0, "completion": "kept 0"}]
    out.write_text("".join(json.dumps(r) + "\n" for r in done + cut) + json.dumps({"id": ids[1], "sample": 1})[:12])
    cmd = ["generate", "--checkpoint", str(default_run), "--data", str(synth), "--max-new-tokens", "8", "--n", "3",
           "--limit", "1", "--device", "cpu", "--out", str(out)]  # fmt: skip
    proc = run_cli(cmd, tmp_path, module="r1v")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 completions written" in proc.stdout and "1 rows already there" in proc.stdout
    rows = [json.loads(x) for x in out.read_text().splitlines()]  # every line whole
    assert rows[:4] == done + cut  # finished lines are kept, never rewritten
    by_id: dict[str, list[int]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r["sample"])
    assert {i: sorted(k) for i, k in by_id.items()} == {ids[0]: [0, 1, 2], ids[1]: [0, 1, 2]}
    assert all(r["completion_tokens"] > 0 for r in rows[4:])


def test_chat_streams_the_answer_and_loops_on_stdin(default_run, synth, tmp_path):
    row = json.loads(synth.read_text().splitlines()[0])
    image = str(synth.parent / row["images"][0])
    question = row["question"].replace("<image>\n", "")
    once = run_cli(["chat", "--checkpoint", str(default_run), "--image", image, "--question", question, "--greedy",
                    "--max-new-tokens", "24", "--device", "cpu"], tmp_path, module="r1v")  # fmt: skip
    assert once.returncode == 0, once.stderr[-2000:]
    assert "[answer: " in once.stdout
    cmd = [sys.executable, "-m", "r1v", "chat", "--checkpoint", str(default_run), "--image", image, "--greedy",
           "--max-new-tokens", "24", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, input=f"{question}\n/reset\n/image {image}\n\n/quit\n", capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("r1v chat: 1 image(s)") and "[no images]" in out and "[1 image(s)]" in out
    assert out.count("[answer: ") == 1 and once.stdout.strip() in out  # the loop answers as the one-shot did


def test_streamed_chunks_join_to_the_completion(registry, tiny_vlm):
    """answer(): with the static engine the text arrives in several pieces, and they are the final text."""
    from r1v.data.synthetic import generate
    from r1v.generation.choose import fastest_engine
    from r1v.generation.stream import answer

    model, processor = tiny_vlm
    engine, name = fastest_engine(model)
    assert name == "static"
    chunks: list[str] = []
    sample = generate(0, "val")[0]
    text = answer(model, processor, engine, sample, 20, True, chunks.append)
    assert len(chunks) > 3 and "".join(chunks) == text
    assert text == registry.build("rollout", "hf").generate(model, processor, [sample], 20, greedy=True)[0]


def test_bad_inputs_are_one_line(default_run, tmp_path):
    proc = run_cli(["chat", "--checkpoint", str(default_run), "--image", "nope.png", "--question", "q"], tmp_path,
                   module="r1v")  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == "r1v: error: --image nope.png does not exist"
    proc = run_cli(["generate", "--checkpoint", str(tmp_path / "missing"), "--data", "x.jsonl", "--out", "o.jsonl"],
                   tmp_path, module="r1v")  # fmt: skip
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr and "does not exist" in proc.stderr
