"""The README's runnable code is run.

Convention: a fenced ``python`` block right after a ``<!-- run -->`` line is executed; a comment
``<!-- run: ... -->`` holds Python that is not shown (stand-ins for the services a block calls, or
assertions on what it did) and runs at its place. All of it runs in document order as one
program, in a fresh interpreter with this checkout's ``src`` first on the path, so a block can use
what an earlier one defined, as a reader going down the page would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_PIECE = re.compile(
    r"<!-- run -->\n```python\n(?P<block>.*?)\n```"
    r"|<!-- run:\n(?P<hidden>.*?)\n-->",
    re.DOTALL,
)


def runnable(text: str) -> list[tuple[str, int, str]]:
    """(kind, line, code) of every runnable piece, in document order."""
    pieces = []
    for match in _PIECE.finditer(text):
        line = text.count("\n", 0, match.start()) + 2
        if match.group("block") is not None:
            pieces.append(("block", line, match.group("block")))
        else:
            pieces.append(("hidden", line, match.group("hidden")))
    return pieces


def test_the_convention_finds_blocks_and_hidden_code() -> None:
    text = (
        "x\n<!-- run:\na = 1\n-->\n<!-- run -->\n```python\nb = a + 1\n```\n"
        "```python\nnot_run()\n```\n<!-- run -->\n```bash\nls\n```\n"
    )
    assert runnable(text) == [("hidden", 3, "a = 1"), ("block", 6, "b = a + 1")]


def test_every_marked_block_of_the_readme_runs() -> None:
    text = README.read_text(encoding="utf-8")
    pieces = runnable(text)
    blocks = [p for p in pieces if p[0] == "block"]
    # the tour, the pipeline, the structlog set-up and the OpenTelemetry set-up at least
    assert len(blocks) >= 4
    markers = re.findall(r"^<!-- run(?: -->|:)$", text, re.MULTILINE)
    assert len(markers) == len(pieces), "a run marker not followed by python, or not closed"
    program = ["import sys"]
    for number, (kind, line, code) in enumerate(pieces):
        program.append(f"# README.md line {line} ({kind})")
        program.append(code)
        program.append(f"print('piece {number} done', file=sys.stderr)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(program)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"README code failed:\n{done.stderr}"
    assert f"piece {len(pieces) - 1} done" in done.stderr
