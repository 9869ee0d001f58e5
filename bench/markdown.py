"""The benchmarks' one way of writing their figures into docs/benchmarks.md."""

import re
from pathlib import Path


def write_section(path: Path, section: str) -> None:
    """Replaces, in the Markdown file ``path``, the section headed by ``section``'s first line (up to the next
    ``## `` heading), or appends ``section`` when the file has no such section."""
    heading = section.split("\n", 1)[0]
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
