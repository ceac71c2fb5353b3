"""edgec report: one self-contained HTML page per bundle, checked as HTML and rendered in headless Chromium."""

from __future__ import annotations

import base64
import html.parser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgec.compiler.cli import cli
from edgec.compiler.node_times import TOP_NODES, node_times
from edgec.compiler.report import to_plain
from edgec.compiler.report_html import plain
from edgec.compiler.report_page import page_path, render_page
from edgec.runtime import load
from edgec.runtime.devices import verify_on_device
from edgec.targets.registry import get_target

SECTIONS = ("model-card", "passes", "node-times", "why-not-faster", "sensitivity", "search", "device")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
PNG = b"\x89PNG\r\n\x1a\n"


class _Page(html.parser.HTMLParser):
    """Each section's text and element count, every image source, and every resource reference."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.images: list[str] = []
        self.references: list[str] = []  # src/href/... attribute values and CSS url()/@import
        self._section: str | None = None
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs.get("id")
            self.sections[self._section] = {"text": "", "elements": 0, "images": 0}
        elif self._section:
            self.sections[self._section]["elements"] += 1
        if tag == "img":
            self.images.append(attrs.get("src", ""))
            if self._section:
                self.sections[self._section]["images"] += 1
        self._in_style = tag == "style"
        for key in ("src", "href", "srcset", "action", "poster", "data", "background"):
            if attrs.get(key):
                self.references.append(attrs[key])

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.references += re.findall(r"url\(([^)]*)\)|@import\s+(\S+)", data)
        elif self._section:
            self.sections[self._section]["text"] += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _assert_complete_and_offline(text: str) -> _Page:
    """Every section present with text of its own beyond the heading; nothing fetched from anywhere."""
    page = _parse(text)
    assert list(page.sections) == list(SECTIONS)
    for ident, section in page.sections.items():
        assert section["elements"] >= 2 and len(section["text"].split()) >= 8, (ident, section)
    remote = [ref for ref in page.references if re.match(r"\s*(https?:|//|ftp:)", str(ref), re.I)]
    assert remote == [] and "<script" not in text.lower()
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    return page


@pytest.fixture(scope="module")
def int8_build(tmp_path_factory):
    """mnist-resnet int8 under --max-drop: pass records with the why-not-faster findings and a sensitivity ranking."""
    out = tmp_path_factory.mktemp("report") / "rn"
    result = CliRunner().invoke(cli, ["build", "zoo:mnist-resnet", "--target", "cpu-x86", "--passes",
                                      "cleanup,fuse,quantize-int8", "--max-drop", "0.005", "-o", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_build_writes_the_page_next_to_the_bundle_with_every_section_filled(int8_build):
    out, stdout = int8_build
    path = page_path(out)
    assert path == out.with_name("rn.report.html") and f"report: {path}" in stdout
    text = path.read_text(encoding="utf-8")
    page = _assert_complete_and_offline(text)
    manifest = load(out).manifest
    # Per-node times: the original and the final model, the slowest first, each with the EP ORT gave it.
    times = manifest["metrics"]["node_times"]
    assert times["providers"] == ["CPUExecutionProvider"] and "error" not in times
    for side in ("before", "after"):
        nodes = times[side]["nodes"]
        assert 1 <= len(nodes) <= TOP_NODES and {n["provider"] for n in nodes} == {"CPUExecutionProvider"}
        assert [n["total_ms"] for n in nodes] == sorted((n["total_ms"] for n in nodes), reverse=True)
        assert sum(o["share"] for o in times[side]["by_op"]) == pytest.approx(1.0, abs=1e-6)  # < 15 op types
        assert times[side]["by_provider"]["CPUExecutionProvider"] == pytest.approx(1.0, abs=1e-9)
    # The int8 model runs QLinearConv after ORT's fusion; the original does not.
    assert "QLinearConv" in {o["op_type"] for o in times["after"]["by_op"]}
    assert "QLinearConv" not in {o["op_type"] for o in times["before"]["by_op"]}
    assert times["after"]["nodes"][0]["name"] in page.sections["node-times"]["text"]
    # The findings in words: each kind's count as the pass recorded it.
    why = manifest["passes"][2]["stats"]["why_not_faster"]
    words = page.sections["why-not-faster"]["text"]
    for kind, count in why["counts"].items():
        assert f"{count} " in words and kind in words
    # Sensitivity ranking as a chart; the model card's figures as the manifest has them.
    assert page.sections["sensitivity"]["images"] == 1
    card = page.sections["model-card"]["text"]
    task = manifest["metrics"]["calibration"]["task"]
    assert task["metric"] in card and plain(task["after"], ".4f") in card
    assert plain(manifest["metrics"]["host_latency_ms"]["after"], ".4g", " ms") in card
    assert "No search" in page.sections["search"]["text"] and "No device run" in page.sections["device"]["text"]
    # `edgec report` on the bundle writes the same page (from the same manifest) where -o says.
    again = out.parent / "again.html"
    result = CliRunner().invoke(cli, ["report", str(out), "-o", str(again)], catch_exceptions=False)
    assert result.exit_code == 0 and again.read_text(encoding="utf-8") == text


@pytest.fixture(scope="module")
def search_build(tmp_path_factory):
    """A small search on digits-cnn: two candidates, a target every candidate meets."""
    out = tmp_path_factory.mktemp("search") / "dc"
    result = CliRunner().invoke(cli, ["build", "zoo:digits-cnn", "--target", "cpu-x86", "--latency-ms", "1000",
                                      "--budget", "2", "--layer-budget", "0", "-o", str(out), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_search_page_marks_the_chosen_point_and_shows_shares_and_predicted_vs_measured(search_build):
    page = _assert_complete_and_offline(page_path(search_build).read_text(encoding="utf-8"))
    search = load(search_build).manifest["metrics"]["search"]
    section = page.sections["search"]
    assert section["images"] == 1  # the Pareto front
    chosen = [row for row in search["pareto"] if row["chosen"]]
    assert len(chosen) == 1 and f"★ chosen{chosen[0]['candidate']}" in section["text"]
    for row in search["pass_shares"]:
        assert row["pass"] in section["text"] and plain(row["ms_after"], ".4g") in section["text"]
    latency = search["chosen"]["latency_ms"]
    for figure in (latency["predicted"], latency["measured"]):
        assert plain(figure, ".4g") in section["text"]
    ratio = latency["measured"] / latency["predicted"]
    assert plain(ratio, ".2f", "x") in section["text"]
    assert "No latency calibration" in section["text"]  # timed on this host: no device file to calibrate


def render_in_chromium(page: Path, png: Path, width: int = 1280, height: int = 2400) -> str:
    """Load ``page`` in headless Chromium: its DOM after rendering, and a screenshot of the window into ``png``.

    For a full-page picture (docs/report-resnet18.png) give a tall window and crop the background below the page.
    """
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={png}", f"--window-size={width},{height}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium; apt-get install -y chromium")
def test_page_renders_in_headless_chromium_with_a_device_run(int8_build, tmp_path):
    out, _ = int8_build
    run = tmp_path / "verify.json"
    run.write_text(json.dumps(to_plain(verify_on_device(out, "local")), default=str))
    page = tmp_path / "page.html"
    result = CliRunner().invoke(cli, ["report", str(out), "-o", str(page), "--device-run", str(run)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rendered = _assert_complete_and_offline(render_in_chromium(page, tmp_path / "page.png"))
    assert "Parity on local" in rendered.sections["device"]["text"]
    assert "matches the host's outputs" in rendered.sections["device"]["text"]
    from PIL import Image

    image = np.asarray(Image.open(tmp_path / "page.png").convert("RGB")).astype(int)
    assert image.shape == (2400, 1280, 3)
    # Not a blank page: the header's navy band, many colours (text, tables, charts), most of it drawn on.
    assert np.abs(image[20, 20] - (0x1F, 0x3A, 0x5F)).max() <= 2
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 200
    background = np.all(np.abs(image - (0xF4, 0xF5, 0xF7)) <= 2, axis=2).mean()
    assert background < 0.5, background


def test_text_from_the_manifest_is_escaped(int8_build, tmp_path):
    out, _ = int8_build
    bundle = tmp_path / "evil"
    shutil.copytree(out, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())  # not checksummed: the page must not trust it
    manifest["target"]["profile"]["description"] = "<script>alert(1)</script>"
    manifest["passes"][0]["name"] = '<img src="https://example.com/x.png">'
    manifest["metrics"]["node_times"] = {"error": "<b onmouseover=alert(1)>boom</b>"}
    manifest["metrics"]["search"] = {"pareto": 5, "chosen": "x", "pass_shares": [{"pass": "</section>"}]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    text = render_page(load(bundle).manifest, "evil")
    page = _assert_complete_and_offline(text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<b onmouseover" not in text
    assert page.images == [src for src in page.images if src.startswith("data:")]  # the pass name stayed text
    assert "boom" in page.sections["node-times"]["text"]


def test_a_bad_or_missing_manifest_is_one_line_and_exit_2(int8_build, tmp_path):
    out, _ = int8_build
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "manifest.json").write_text("{")
    for bundle in (broken, tmp_path / "missing"):
        result = CliRunner().invoke(cli, ["report", str(bundle), "-o", str(tmp_path / "p.html")])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert str(bundle) in result.stderr and not (tmp_path / "p.html").exists()


def test_a_failed_node_profile_is_recorded_not_raised():
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    wrong = {"x": np.zeros((3, 3), np.float32)}  # ORT refuses the shape: the profile fails
    times = node_times(proto, proto, get_target("cpu-x86"), wrong)
    assert "before" not in times and "x" in times["error"]
    ok = node_times(proto, proto, get_target("cpu-x86"), {"x": np.ones(2, np.float32)})
    assert [n["op_type"] for n in ok["after"]["nodes"]] == ["Relu"]
    assert ok["after"]["nodes"][0]["share"] == pytest.approx(1.0, abs=1e-9)
