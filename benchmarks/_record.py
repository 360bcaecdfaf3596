"""Append a benchmark section to docs/benchmarks.md (shared by every benchmark script)."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = ("# Benchmarks\n\nRatios against the named baseline, with the command that reproduces each row. "
          "Machine: 2 cores, 24 GiB, no GPU unless stated.\n")


def append_section(text: str, doc: Path = DOC) -> Path:
    """Append ``text`` (a markdown section) to the benchmarks document, creating it if needed."""
    doc.parent.mkdir(exist_ok=True)
    if not doc.exists():
        doc.write_text(HEADER)
    with doc.open("a") as fh:
        fh.write(text)
    return doc


def publish(text: str, write: bool = True, doc: Path = DOC) -> None:
    """Print a benchmark's markdown section and, unless ``write`` is False, append it to the doc."""
    print(text)
    if write:
        print(f"appended to {append_section(text, doc)}")
