"""Using a trained model: ``python -m r1v chat`` (streamed answers) and ``python -m r1v generate`` (batch
inference over a JSONL file, resumable).

Both load a checkpoint the way ``python -m r1v.eval`` does: a run folder (or a weights file inside one)
brings its own composition from its ``config.yaml``; trailing ``key=value`` overrides adjust it. The
rollout engine is the fastest one that runs the backbone: ``static`` (static KV cache, CUDA graphs on the
GPU) for Llama/Qwen-style decoders, else transformers' ``generate``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from r1v.core.interfaces import THINK_CLOSE
from r1v.data.datasets import DataError, JsonlDataset
from r1v.evaluation.answers import equivalent, extract_answer
from r1v.generation.stream import answer
from r1v.model.handle import as_sample

log = logging.getLogger(__name__)
R1V_SAMPLING = {"temperature": 0.6, "top_p": 0.95}  # R1V's recommended decoding (its README / paper)


class PromptDataset(JsonlDataset):
    """JSONL rows to answer: like training data, but ``answer`` is optional (scored when present)."""

    required = ("question",)


def load_images(paths: list[str]) -> list[Any]:
    from PIL import Image

    from r1v.data.images import to_rgb

    out = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"--image {p} does not exist")
        try:
            with Image.open(p) as im:
                out.append(to_rgb(im))
        except OSError as e:
            raise DataError(f"--image {p} cannot be read as an image ({type(e).__name__})") from None
    return out


def load_audios(paths: list[str]) -> list[Any]:
    """``--audio`` files -> decoded clips (soundfile); a missing or unreadable file is one line."""
    from r1v.data.audio import decode

    out = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"--audio {p} does not exist")
        try:
            out.append(decode(p))
        except ImportError:
            raise DataError("--audio needs soundfile: pip install 'r1v[media]'") from None
        except Exception as e:  # soundfile raises its own LibsndfileError (a RuntimeError) on non-audio files
            raise DataError(f"--audio {p} cannot be read as audio ({type(e).__name__})") from None
    return out


def load_videos(paths: list[str], frames: int) -> list[list[Any]]:
    """``--video`` files -> ``frames`` frames each, sampled uniformly (PyAV); a missing, unreadable or zero-frame
    file is one line."""
    from r1v.data.video import read_frames

    out = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"--video {p} does not exist")
        try:
            out.append(read_frames(p, frames))
        except ImportError:
            raise DataError("--video needs PyAV: pip install 'r1v[media]'") from None
        except Exception as e:  # PyAV's errors (InvalidDataError, …) differ by version; the kind is what matters
            raise DataError(f"--video {p} cannot be read as video ({type(e).__name__}: {e})") from None
    return out


def media_sample(question: str, images: list[Any], audios: list[Any], audio_paths: list[str],
                 videos: list[list[Any]] | None = None, video_paths: list[str] | None = None,
                 sample_id: str = "chat") -> Any:  # fmt: skip
    """A chat question with its images, clips and videos (placeholders prepended by the processor when absent)."""
    sample = as_sample(question, images, sample_id)
    sample.audios, sample.audio_paths = list(audios), list(audio_paths)
    sample.videos, sample.video_paths = list(videos or []), list(video_paths or [])
    return sample


def check_media(processor: Any, audios: list[Any]) -> None:
    """Refuse ``--audio`` for a model without an audio encoder, in one line, before anything is generated."""
    if audios and getattr(processor, "audio", None) is None:
        from r1v.core.errors import ConfigError

        raise ConfigError("--audio: this checkpoint's model has no audio encoder (train one with audio=whisper_tiny)")


# -- chat ------------------------------------------------------------------------------------------------------------
def chat(model: Any, processor: Any, engine: Any, images: list[Any], question: str | None, max_new_tokens: int,
         greedy: bool, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, audios: list[Any] | None = None,
         audio_paths: list[str] | None = None, videos: list[list[Any]] | None = None,
         video_paths: list[str] | None = None) -> None:  # fmt: skip
    """One question, or (without one) a loop reading questions from ``stdin``: ``/image PATH`` adds an image,
    ``/reset`` drops them, ``/quit`` or end of input stops. Each question is answered on its own (single turn)."""

    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    def turn(q: str) -> None:
        sample = media_sample(q, images, audios or [], audio_paths or [], videos, video_paths)
        text = answer(model, processor, engine, sample, max_new_tokens, greedy, write)
        final = extract_answer(text)
        closed = "thought closed" if THINK_CLOSE in text else "no </think>"
        write(f"\n\n[answer: {final if final is not None else '-'}; {closed}]\n")

    if question is not None:
        turn(question)
        return
    write(f"r1v chat: {len(images)} image(s). Ask a question; /image PATH, /reset, /quit.\n")
    while True:
        write("> ")
        line = stdin.readline()
        if not line or line.strip() == "/quit":
            write("\n")
            return
        line = line.strip()
        if not line:
            continue
        if line.startswith("/image "):
            images.extend(load_images([line.split(" ", 1)[1].strip()]))
            write(f"[{len(images)} image(s)]\n")
        elif line == "/reset":
            images.clear()
            write("[no images]\n")
        else:
            turn(line)


# -- batch generation ------------------------------------------------------------------------------------------------
def done_samples(out: Path) -> dict[str, set[int]]:
    """For each row id already in ``out``, the sample numbers it has complete lines for. A last line cut by a
    kill is removed from the file (it will be redone); the rest of the file is never rewritten."""
    if not out.is_file():
        return {}
    data = out.read_bytes()
    lines = data.split(b"\n")
    keep_bytes = 0
    done: dict[str, set[int]] = {}
    for i, raw in enumerate(lines):
        if not raw.strip():
            keep_bytes += len(raw) + (1 if i < len(lines) - 1 else 0)
            continue
        complete = i < len(lines) - 1  # followed by a newline
        try:
            row = json.loads(raw) if complete else None
        except json.JSONDecodeError:
            row = None
        if row is None:
            break
        have = done.setdefault(str(row["id"]), set())
        # a line without a sample number (written by hand) takes the lowest free one
        k = row.get("sample")
        have.add(k if isinstance(k, int) else min(set(range(len(have) + 1)) - have))
        keep_bytes += len(raw) + 1
    if keep_bytes < len(data):
        log.warning("generate: %s ended in a partial line (an interrupted write); it is redone", out)
        with open(out, "r+b") as f:
            f.truncate(keep_bytes)
    return done


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def generate_file(model: Any, processor: Any, engine: Any, data: str | Path, out: str | Path, *, max_new_tokens: int,
                  greedy: bool, n: int = 1, batch_size: int = 16, limit: int | None = None,
                  engine_name: str = "?") -> dict[str, Any]:  # fmt: skip
    """Answer every row of ``data`` (n samples each) into ``out``, one JSON line per completion; returns a
    summary. Resumable: a row's sample numbers already in ``out`` are skipped, so a run killed mid-write
    generates only a row's missing samples (appending them keeps the finished ones, which cost as much to
    make, and the file is never rewritten: no line can be lost or doubled)."""
    ds = PromptDataset(data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_samples(out)
    missing = {i: [k for k in range(n) if k not in done.get(str(ds.rows[i]["id"]), set())] for i in range(len(ds))}
    finished = [i for i in range(len(ds)) if not missing[i]]
    todo = [i for i in range(len(ds)) if missing[i]][: None if limit is None else limit]
    tok = processor.tokenizer
    eos = tok.eos_token_id
    written = correct = scored = tokens = 0
    t_all = time.perf_counter()
    with out.open("a") as f:
        for chunk in _batches(todo, max(1, batch_size)):
            expanded = []  # (sample, its sample number) for each completion still missing
            for i in chunk:
                s = ds[i]
                if s.meta.get("_error"):
                    log.warning("generate: skipping %s: %s", s.id, s.meta["_error"])
                else:
                    expanded += [(s, k) for k in missing[i]]
            if not expanded:
                continue
            t0 = time.perf_counter()
            rows = engine.generate_ids(model, processor, [s for s, _ in expanded], max_new_tokens, greedy=greedy)
            seconds = time.perf_counter() - t0
            lines = []
            for k, ids in enumerate(rows):
                s, sample = expanded[k]
                text = processor.decode_completion(ids)
                pred = extract_answer(text)
                ok = equivalent(pred, s.answer) if s.answer else None
                thought = text.split(THINK_CLOSE, 1)[0] if THINK_CLOSE in text else None
                lines.append({"id": s.id, "sample": sample, "prompt": s.question, "completion": text,
                              "extracted_answer": pred, "answer": s.answer or None, "correct": ok,
                              "completion_tokens": len(ids), "finished": bool(ids) and ids[-1] == eos,
                              "think_tokens": len(tok(thought, add_special_tokens=False)["input_ids"])
                              if thought is not None else None,
                              "seconds": round(seconds / len(rows), 4), "engine": engine_name})  # fmt: skip
                tokens += len(ids)
                if ok is not None:
                    scored += 1
                    correct += ok
            f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in lines))
            f.flush()
            os.fsync(f.fileno())
            written += len(lines)
    elapsed = time.perf_counter() - t_all
    return {"out": str(out), "rows": len(ds), "already_done": len(finished), "written": written,
            "skipped_bad_rows": sum(ds.skipped.values()), "accuracy": correct / scored if scored else None,
            "scored": scored, "tokens_per_s": tokens / elapsed if elapsed else 0.0, "engine": engine_name}  # fmt: skip
