"""Render an HTML page in headless Chromium (Debian's `chromium`, installed by scripts/install.sh):
which images loaded, which section headings the browser shows, and a screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Runs in the page after `load`: every <img> must be complete with a real width to count as loaded.
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var out = document.createElement('pre');
  out.id = 'render-check';
  out.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                  .map(function (i) { return (i.getAttribute('alt') || '') + ' ' + i.getAttribute('src').slice(0, 60); }),
    headings: Array.from(document.querySelectorAll('h2')).map(function (h) { return h.textContent; })
  });
  document.body.appendChild(out);
});
</script>"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]


@dataclass
class Rendering:
    images: int
    broken: list[str]
    headings: list[str]
    screenshot: Path


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise AssertionError("no headless Chromium on PATH: run `bash scripts/install.sh` (it installs Debian's chromium)")


def render(page: Path, work: Path, width: int = 1280, height: int = 4000) -> Rendering:
    """Load a copy of `page` (with the check script) in Chromium; dump its DOM and screenshot it."""
    work.mkdir(parents=True, exist_ok=True)
    probe = work / page.name
    probe.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    browser = chromium()
    dom = subprocess.run([browser, *FLAGS, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="render-check">(.*?)</pre>', dom, re.S)
    assert found, f"Chromium did not run the page's check script; DOM starts: {dom[:300]!r}"
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    screenshot = work / "screenshot.png"
    subprocess.run([browser, *FLAGS, f"--window-size={width},{height}", f"--screenshot={screenshot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    return Rendering(check["images"], check["broken"], check["headings"], screenshot)
