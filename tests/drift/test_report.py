"""The HTML report renders in headless Chromium; W&B offline runs hold the metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from raydl.drift import check
from raydl.drift.report import log_wandb, render_html, write_report


@pytest.fixture(scope="module")
def result_dict(suite_profile, suite_dir):
    return check(suite_profile, suite_dir / "all.parquet").to_dict()


def test_html_is_self_contained_and_ordered(result_dict) -> None:
    page = render_html(result_dict)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<script src" not in page
    feats = result_dict["features"]
    js = [f["stats"]["js"] for f in feats if f["drifted"]]
    assert js == sorted(js, reverse=True) and feats[0]["drifted"]
    order = [page.index(f'data-feature="{f["name"]}"') for f in feats]
    assert order == sorted(order)
    assert page.index('data-feature="x00"') < page.index('data-feature="x10"')
    assert 'class="threshold"' in page


def test_report_written_atomically(result_dict, tmp_path) -> None:
    out = write_report(result_dict, tmp_path / "r.html")
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temp file left behind


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not on PATH")
def test_report_renders_in_headless_chromium(result_dict, tmp_path) -> None:
    page = write_report(result_dict, tmp_path / "report.html")
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tempfile.mkdtemp()}"]
    dom = subprocess.run([*cmd, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count("<svg") == len(result_dict["features"]) + 1
    assert dom.count('class="ref"') > 0 and dom.count('class="cur"') > 0
    assert 'id="reconstruction"' in dom and 'class="threshold"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*cmd, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_wandb_offline_run_holds_metrics(result_dict, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    report = write_report(result_dict, tmp_path / "r.html")
    run_dir = Path(log_wandb(result_dict, report, tmp_path / "wandb"))
    assert list(run_dir.glob("run-*.wandb"))
    wandb_bin = shutil.which("wandb") or str(Path(__import__("sys").executable).parent / "wandb")
    out = subprocess.run([wandb_bin, "leet", "inspect", "--summary", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.fail(f"wandb leet inspect failed: {out.stderr[-500:]}")
    summary = json.loads(out.stdout)
    text = json.dumps(summary)
    assert "drift/x00/js" in text and "drift/reconstruction/mean" in text
