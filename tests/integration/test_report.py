"""python -m r1v report: a self-contained HTML page with the metric plots and the GRPO rollouts, loaded in
headless Chromium (the browser test skips where chromium is not installed)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import run_cli

G, PROMPTS, STEPS = 4, 2, 3


@pytest.fixture(scope="module")
def report(tmp_path_factory, reassembled_run, default_run):
    cwd = tmp_path_factory.mktemp("report")
    args = ["stage=grpo", "model=tiny_reasoner", f"checkpoint={reassembled_run}", "stage.batch_size=2",
            f"stage.group_size={G}", "stage.micro_batch_size=8", "stage.max_new_tokens=40", f"stage.max_steps={STEPS}",
            "stage.val_every=1000", "stage.val_generate=0", "stage.completions_every=1",
            f"stage.completions_prompts={PROMPTS}", "stage.reward_isolation=inline", "run=g", "logger=csv",
            "trainer.enable_progress_bar=false"]  # fmt: skip
    proc = run_cli(args, cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = cwd / "report.html"
    proc = run_cli(["report", str(cwd / "runs" / "g"), str(default_run), "--out", str(out)], cwd, module="r1v")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_report_holds_plots_and_every_logged_rollout(report):
    page = report.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.search(r'(src|href)="(https?:)?//', page)  # self-contained: nothing fetched
    sections = re.findall(r'<section class="step" data-step="(\d+)">', page)
    assert sorted(int(s) for s in sections) == sorted(list(range(STEPS)) * PROMPTS)
    for section in page.split('<section class="step"')[1:]:
        assert section.count("<tr class=") == G  # each completion of the group, with reward and advantage
        assert 'src="data:image/png;base64,' in section  # the prompt's image thumbnail
        assert "reference: <b>" in section and ("thinking (" in section or "no &lt;/think&gt;" in section)
    plots = page.count('<div class="plots"><img') + page.count('><img alt="')
    assert plots >= 4  # loss, reward, response length of the GRPO run; loss / accuracy of the align run
    assert "<h2>g</h2>" in page and f"<h2>{report.parent.name}</h2>" not in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--log-level=0",
             "--window-size=1280,2400"]  # fmt: skip
    shot = tmp_path / "report.png"
    proc = subprocess.run(["chromium", *flags, f"--screenshot={shot}", report.as_uri()], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000  # a real rendering (plots and tables), not a blank page
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "rror" in line or "Uncaught" in line], console
    dom = subprocess.run(["chromium", *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    assert dom.count('<section class="step"') == STEPS * PROMPTS and 'id="stepfilter"' in dom
    print(f"screenshot for a human: {shot}")
