"""Writing a benchmark's section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
from pathlib import Path


def machine_line(threads: int) -> str:
    """Cores, architecture, torch threads, native bf16, torch version, date and load average, for a table's header."""
    import torch

    from training.precision import cpu_has_native_bf16

    native = "yes" if cpu_has_native_bf16() else "no"
    return (f"{os.cpu_count()} cores, {platform.machine()}, {threads} torch threads, native bf16 {native}, torch "
            f"{torch.__version__}, {datetime.date.today().isoformat()}; load average {os.getloadavg()[0]:.1f} at "
            "the end")


def benchmark_parser(doc: str, *, repeats: int) -> argparse.ArgumentParser:
    """The options every side-by-side benchmark takes: --repeats, --threads (torch CPU threads) and --no-write."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    return parser


def publish(text: str, heading: str, write: bool) -> None:
    """Print a benchmark's section and, when `write`, put it into docs/benchmarks.md."""
    print(text)
    if write:
        write_section(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md", heading, text)


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the section that starts with the line `heading` (up to the next ``## `` heading) by `text`, or
    append it; the other sections stay as they are. Written to a temporary file, then renamed."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = text.rstrip() + "\n\n"
    updated = pattern.sub(lambda _: section, current) if pattern.search(current) else \
        current.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(updated.rstrip() + "\n")
    tmp.replace(path)
