"""``python -m r1v report <run>…``: one self-contained HTML page per set of runs (no server, no network).

For every run: its stage and provenance, the metric panels of :mod:`r1v.reports.plots` (PNG, inlined), and for RL
runs the logged rollouts (``completions.jsonl``): per logged step and prompt, the image thumbnail, each audio clip's
file name and duration and each video's file name, sampled frames and first frame (issue 26), the question and
reference answer, and each of the G completions with its reward, reward parts, advantage and
length — the ``<think>`` chain folded — so reward hacking, collapse (all G the same), exploding length or
format failures show at a glance. A small inline script filters the steps; the page loads nothing else.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from r1v.core.interfaces import THINK_CLOSE
from r1v.data.images import to_rgb

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1b1f24;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
.plots img{width:560px;margin:4px;border:1px solid #eee}
.facts td{padding:1px 10px 1px 0;color:#444}
table.g{border-collapse:collapse;width:100%;margin:6px 0 18px}
table.g td,table.g th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
table.g th{background:#f6f8fa}
.pos{background:#eaf7ea}.neg{background:#fbecec}
.ans{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}
details.think summary{color:#666;cursor:pointer}
details.think pre{white-space:pre-wrap;font-size:12px;color:#555;margin:4px 0}
.q{display:flex;gap:12px;align-items:flex-start}.q img{width:96px;image-rendering:pixelated;border:1px solid #ccc}
.warn{color:#b3261e;font-weight:600}
.media{color:#444;font-size:12px}
"""

SCRIPT = """
document.getElementById('stepfilter').addEventListener('input', function (e) {
  var want = e.target.value.trim();
  document.querySelectorAll('section.step').forEach(function (s) {
    s.style.display = (!want || s.dataset.step === want) ? '' : 'none';
  });
});
"""


def thumbnail_b64(image: Any, size: int = 96) -> str | None:
    """A PIL image as a small base64 PNG (for completions.jsonl and the report); None without an image."""
    if image is None:
        return None
    im = to_rgb(image)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def sample_media(sample: Any) -> dict[str, Any]:
    """What a ``completions.jsonl`` row keeps of a sample's media for the report: ``thumb`` (the first image), and
    when present ``audios`` ([{name, seconds}]) and ``videos`` ([{name, frames, thumb}]: the frames sampled, the
    first one's thumbnail). A clip read from bytes (no file) is named by its position."""

    def names(paths: list[str], n: int, what: str) -> list[str]:
        return [Path(p).name for p in paths] if len(paths) == n else [f"{what} {k}" for k in range(n)]

    out: dict[str, Any] = {"thumb": thumbnail_b64(sample.images[0]) if sample.images else None}
    audios, videos = getattr(sample, "audios", None) or [], getattr(sample, "videos", None) or []
    if audios:
        out["audios"] = [{"name": name, "seconds": round(float(clip.seconds), 3)}
                         for name, clip in zip(names(sample.audio_paths, len(audios), "clip"), audios,
                                               strict=True)]  # fmt: skip
    if videos:
        out["videos"] = [{"name": name, "frames": len(frames), "thumb": thumbnail_b64(frames[0]) if frames else None}
                         for name, frames in zip(names(sample.video_paths, len(videos), "video"), videos,
                                                 strict=True)]  # fmt: skip
    return out


def _media_line(row: dict[str, Any]) -> str:
    """The row's audio clips and videos, one line (empty for an image-only row, as rows written before issue 26)."""
    items = [f"audio {html.escape(str(a.get('name')))} ({float(a.get('seconds', 0.0)):.2f} s)"
             for a in row.get("audios") or []]  # fmt: skip
    items += [f"video {html.escape(str(v.get('name')))} ({v.get('frames', 0)} frames)" for v in row.get("videos") or []]
    return f'<div class="media">{" · ".join(items)}</div>' if items else ""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _completion_cell(text: str) -> str:
    if THINK_CLOSE in text:
        thought, rest = text.split(THINK_CLOSE, 1)
        fold = (f'<details class="think"><summary>thinking ({len(thought)} characters)</summary>'
                f"<pre>{html.escape(thought.strip())}</pre></details>")  # fmt: skip
        return fold + f'<div class="ans">{html.escape(rest.strip())}</div>'
    return ('<div class="warn">no &lt;/think&gt;</div><details class="think"><summary>text '
            f'({len(text)} characters)</summary><pre>{html.escape(text)}</pre></details>')  # fmt: skip


def rollout_sections(rows: list[dict[str, Any]]) -> str:
    """HTML for completions.jsonl rows: one section per (step, prompt)."""
    out = []
    for row in rows:
        comps = row.get("completions") or []
        rewards = [c.get("reward", 0.0) for c in comps]
        lengths = [c.get("tokens", 0) for c in comps]
        same = len({c.get("text") for c in comps}) == 1 and len(comps) > 1
        part_names = sorted({k for c in comps for k in (c.get("parts") or {})})
        head = "".join(f"<th>{html.escape(p)}</th>" for p in part_names)
        body = []
        for k, c in enumerate(comps):
            adv = float(c.get("advantage", 0.0))
            cls = "pos" if adv > 1e-8 else "neg" if adv < -1e-8 else ""
            parts = "".join(f"<td>{(c.get('parts') or {}).get(p, 0.0):.3g}</td>" for p in part_names)
            cell = _completion_cell(str(c.get("text", "")))
            body.append(f'<tr class="{cls}"><td>{k}</td><td>{c.get("reward", 0.0):.3g}</td>{parts}'
                        f'<td>{adv:+.3f}</td><td>{c.get("tokens", 0)}</td><td>{cell}</td></tr>')  # fmt: skip
        thumb = f'<img alt="image" src="data:image/png;base64,{row["thumb"]}">' if row.get("thumb") else ""
        thumb += "".join(f'<img alt="video {html.escape(str(v.get("name")))}" src="data:image/png;base64,{v["thumb"]}">'
                         for v in row.get("videos") or [] if v.get("thumb"))  # fmt: skip
        stats = (f"reward mean {sum(rewards) / max(len(rewards), 1):.3f}, length {min(lengths, default=0)}–"
                 f"{max(lengths, default=0)} tokens") + (' · <span class="warn">all G completions identical</span>'
                                                         if same else "")  # fmt: skip
        step, rid = row.get("step"), html.escape(str(row.get("id")))
        question, reference = html.escape(str(row.get("question", ""))), html.escape(str(row.get("answer", "")))
        out.append(
            f'<section class="step" data-step="{step}"><h3>step {step} · {rid}</h3><div class="q">{thumb}<div>'
            f"<div>{question}</div>{_media_line(row)}<div>reference: <b>{reference}</b> · {stats}</div></div></div>"
            f'<table class="g"><tr><th>#</th><th>reward</th>{head}<th>advantage</th><th>tokens</th><th>completion</th>'
            f"</tr>{''.join(body)}</table></section>"
        )
    return "\n".join(out)


def _facts(run: Path) -> str:
    rows = []
    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        stage = cfg.get("stage") or {}
        model = cfg.get("model") or {}
        rows.append(("stage", stage.get("name")))
        rows.append(
            ("model", ", ".join(str((model.get(p) or {}).get("name")) for p in ("vision", "adapter", "backbone")))
        )
        rows.append(("max steps / lr", f"{stage.get('max_steps')} / {stage.get('lr')}"))
    if (run / "run.json").is_file():
        prov = json.loads((run / "run.json").read_text())
        rows.append(("started", prov.get("started") or prov.get("time")))
        rows.append(("resumed from", prov.get("resumed_from")))
    return '<table class="facts">' + "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                                             for k, v in rows if v is not None) + "</table>"  # fmt: skip


def build_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write the HTML page for ``run_dirs`` to ``out``; returns its path."""
    from r1v.reports.plots import plot_runs

    runs = [Path(r) for r in run_dirs]
    for r in runs:
        if not (r / "metrics.csv").is_file():
            raise FileNotFoundError(f"report: {r} is not a run folder with metrics.csv")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>r1v report: {html.escape(runs[0].name)}</title>"
             f"<style>{CSS}</style></head><body><h1>r1v report</h1>"]  # fmt: skip
    any_rollouts = False
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(runs):
            parts.append(f"<h2>{html.escape(run.name)}</h2>{_facts(run)}")
            pngs = plot_runs([run], Path(tmp) / str(i))
            parts.append('<div class="plots">' + "".join(_img(p) for p in pngs) + "</div>")
            comp = run / "completions.jsonl"
            if comp.is_file():
                rows = [json.loads(x) for x in comp.read_text().splitlines() if x.strip()]
                any_rollouts = any_rollouts or bool(rows)
                parts.append(f"<h3>rollouts ({len(rows)} logged groups)</h3>{rollout_sections(rows)}")
    if any_rollouts:
        parts.insert(1, '<p>show step: <input id="stepfilter" placeholder="all"></p>')
        parts.append(f"<script>{SCRIPT}</script>")
    parts.append("</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text("\n".join(parts), encoding="utf-8")
    tmp_out.replace(out)
    return out
