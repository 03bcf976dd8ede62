"""The demo command runs end to end (shortened) and reports what the policies did."""

from __future__ import annotations

import pytest

from buttress.cli import main


def test_demo_runs_and_summarises(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--duration", "3", "--concurrency", "8"]) == 0
    out = capsys.readouterr().out
    assert "summary" in out
    assert "rejected by the breaker" in out
    assert "closed -> open" in out  # the outage tripped the breaker
    assert "answered" in out
    assert "TIER_1_FULL -> TIER_3_READ_ONLY (factor_api unhealthy)" in out  # the tier followed
    assert "over the rate limit" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--failure-rate", "1.5"],
        ["demo", "--duration", "-1"],
        ["demo", "--concurrency", "0"],
        [],
    ],
)
def test_demo_rejects_bad_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]])
def test_help_is_plain_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: buttress" in out
    assert "demo" in out
    for markup in ("``", ":class:", ":func:", ":meth:", "`"):
        assert markup not in out, f"reStructuredText {markup!r} in {' '.join(argv)}"


def test_a_reader_that_stops_reading_ends_the_command_quietly() -> None:
    # `buttress config check | head -1`: the rest of the output met a closed pipe, and the
    # command died with a BrokenPipeError traceback on stderr and status 1
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "buttress.cli", "config", "check"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""
