"""The HTML report in a real headless browser (Debian's chromium): it renders, every section is
shown, and no image is broken. Skipped when /usr/bin/chromium is absent.

Set RECALL_REPORT_SCREENSHOTS=FOLDER to keep the screenshots the test takes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from recall_merge.reports.html import slug, write_report

CHROMIUM = Path(os.environ.get("RECALL_CHROMIUM", "/usr/bin/chromium"))
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no browser at {CHROMIUM}: install Debian's chromium (apt-get install chromium) to run "
           "the headless-browser test of the HTML report")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=10000"]
WINDOW = (1200, 3000)
MERGE_SECTIONS = ["overview", "configuration", "typical-samples", "weights", "metrics", "timings"]
CONTINUAL_SECTIONS = ["overview", "configuration", "tasks", "metrics", "weights", "typical-samples",
                      "timings"]
# Injected into a copy of the page only (the report itself has no scripts): after load, record
# each image's decoded size and each section's rendered height on <body>.
PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]);
  const sections = [...document.querySelectorAll('section')].map(s => {
    const box = s.getBoundingClientRect(); const style = getComputedStyle(s);
    return [s.id, box.height, style.display !== 'none' && style.visibility !== 'hidden'];
  });
  document.body.setAttribute('data-probe', JSON.stringify({images, sections}));
});
</script>"""


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def probe_page(page: Path, tmp_path: Path) -> dict:
    """Load a probing copy of ``page`` and return what the browser measured."""
    copy = tmp_path / f"probe_{page.name}"
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                    encoding="utf-8")
    result = run_chromium([f"--window-size={WINDOW[0]},{WINDOW[1]}", "--dump-dom", copy.as_uri()],
                          tmp_path / "profile-dom")
    match = re.search(r"data-probe=\"([^\"]*)\"", result.stdout)
    assert match, f"browser gave no probe result; stderr: {result.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(match.group(1)))


def screenshot(page: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    result = run_chromium([f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={target}",
                           page.as_uri()], tmp_path / f"profile-{name}")
    assert target.exists(), f"no screenshot; stderr: {result.stderr[-2000:]}"
    keep = os.environ.get("RECALL_REPORT_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(target, Path(keep) / name)
    return target


def check_data_images(document: str) -> int:
    """Every <img> has a data: URI that decodes as a valid PNG or SVG; returns the count."""
    from PIL import Image

    sources = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", document)
    for source in sources:
        head, _, data = source.partition(",")
        assert head in ("data:image/png;base64", "data:image/svg+xml;base64"), head
        raw = base64.b64decode(data, validate=True)
        if head.startswith("data:image/png"):
            Image.open(io.BytesIO(raw)).verify()
        else:
            assert b"<svg" in raw[:2000]
    return len(sources)


def check_rendered(page: Path, sections: list[str], tmp_path: Path, name: str) -> None:
    from PIL import Image

    document = page.read_text(encoding="utf-8")
    count = check_data_images(document)
    measured = probe_page(page, tmp_path)
    assert [s[0] for s in measured["sections"]] == sections
    for section_id, height, visible in measured["sections"]:
        assert visible and height > 40, f"section {section_id} is not shown ({height} px)"
    assert len(measured["images"]) == count > 0
    for complete, width, height in measured["images"]:
        assert complete and width > 0 and height > 0, "an image did not decode in the browser"
    shot = Image.open(screenshot(page, tmp_path, name))
    assert shot.size == WINDOW
    colours = shot.convert("RGB").resize((300, 750)).getcolors(maxcolors=100_000)
    assert colours is None or len(colours) > 50, "the screenshot is (nearly) blank"


@pytest.fixture(scope="module")
def merge_folder(tiny_recall_merge) -> Path:
    return tiny_recall_merge


def test_merge_report_in_browser(merge_folder, tmp_path):
    page = write_report(merge_folder)
    check_rendered(page, MERGE_SECTIONS, tmp_path, "merge_report.png")


def test_continual_report_in_browser(merge_folder, tmp_path):
    run_dir = tmp_path / "run"
    name = "merge:recall:experts:base"
    for step in (1, 2):
        folder = run_dir / "strategies" / slug(name) / f"step{step}"
        folder.mkdir(parents=True)
        shutil.copy(merge_folder / "recall_report.json", folder)
    matrix = [[0.2, 0.25], [0.8, 0.3], [0.6, 0.75]]
    results = {
        "tasks": [{"name": n, "kind": "classification", "metric": "accuracy", "synthetic": True,
                   "num_train": 8, "num_eval": 4} for n in ("alpha", "beta")],
        "rows": ["base", "after step 1", "after step 2"], "normalisation": "T-1",
        "methods": {name: {"R": matrix, "AP": 0.675, "BWT": -0.2, "FWT": 0.05, "forgetting": [0.2],
                           "average_forgetting": 0.2, "kind": "merge", "uses_old_data": False},
                    "sequential": {"R": matrix, "AP": 0.675, "BWT": -0.2, "FWT": 0.05,
                                   "forgetting": [0.2], "average_forgetting": 0.2,
                                   "kind": "sequential", "uses_old_data": False}},
        "seed": 0, "config": {"model": "tiny-random"}, "versions": {}}
    (run_dir / "results.json").write_text(json.dumps(results))
    page = write_report(run_dir)
    check_rendered(page, CONTINUAL_SECTIONS, tmp_path, "continual_report.png")


@pytest.mark.skipif(not os.environ.get("RECALL_REPORT_PAGE"),
                    reason="set RECALL_REPORT_PAGE=path/to/report.html to check an existing page "
                           "(e.g. the demo's) in the browser")
def test_given_report_in_browser(tmp_path):
    page = Path(os.environ["RECALL_REPORT_PAGE"]).resolve()  # a relative path has no file URI
    document = page.read_text(encoding="utf-8")
    sections = re.findall(r'<section id="([^"]+)">', document)
    assert {"overview", "configuration", "weights", "metrics", "timings"} <= set(sections)
    check_rendered(page, sections, tmp_path, f"given_{page.parent.name}.png")
