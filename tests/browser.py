"""Headless Chromium for the report tests: the page as a browser lays it out (Debian's chromium package,
installed by `make test-deps`)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

# What a machine without network needs: no background connections, no first-run pages, no sandbox as root.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)  # fmt: skip


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("no chromium on PATH: `make test-deps` installs Debian's chromium package")
    return found


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def screenshot(page: Path, out: Path, width: int, height: int) -> Path:
    _run([f"--window-size={width},{height}", f"--screenshot={out}", page.as_uri()], out.parent / ".chromium")
    return out


def dom(page: Path, width: int, script: str | None = None) -> str:
    """The page's DOM after its scripts ran; ``script`` is added at the end of the body first (a copy)."""
    source = page
    if script is not None:
        source = page.with_name(page.stem + ".probe.html")
        source.write_text(page.read_text().replace("</body>", f"<script>{script}</script></body>"))
    done = _run([f"--window-size={width},900", "--virtual-time-budget=5000", "--dump-dom", source.as_uri()],
                page.parent / ".chromium")  # fmt: skip
    return done.stdout


def probe(page: Path, width: int, expression: str) -> Any:
    """The value of a JavaScript ``expression`` (JSON-able) evaluated in the laid-out page."""
    script = f"document.body.setAttribute('data-probe', JSON.stringify((() => {{ {expression} }})()));"
    found = re.search(r'<body[^>]*data-probe="([^"]*)"', dom(page, width, script))
    if found is None:
        raise AssertionError("the probe did not run in the page")
    return json.loads(html.unescape(found.group(1)))
