"""Writing a benchmark's section of docs/benchmarks.md."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the section that starts with the line `heading` (up to the next ``## `` heading) by `text`, or
    append it; the other sections stay as they are. Written to a temporary file, then renamed."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = text.rstrip() + "\n\n"
    updated = pattern.sub(lambda _: section, current) if pattern.search(current) else \
        current.rstrip() + "\n\n" + section
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(updated.rstrip() + "\n")
    tmp.replace(path)
