"""Where every benchmark leaves its figures: a JSON file for machines and a Markdown table for people."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any


def write(out: Path, name: str, payload: Any, lines: list[str]) -> None:
    """Write ``<out>/<name>.json`` (with the machine it ran on) and ``<out>/<name>.md``; print the table."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version()}
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": payload}, indent=2))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
