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
