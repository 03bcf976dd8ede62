"""``buttress demo --story team``: the provider switch and return told end to end (shortened), the
dashboard served while it runs, and ``buttress config check``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from buttress.cli import main
from buttress.config import VARIABLES, ConfigError, build_manager

SRC = str(Path(__file__).resolve().parent.parent / "src")


def test_the_team_story_switches_providers_and_returns_to_the_primary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--story", "team", "--duration", "4"]) == 0
    out = capsys.readouterr().out
    assert "'marketing-team'" in out
    assert "[  1.0s]" in out  # progress once a second
    assert "summary (team)" in out
    assert "errors surfaced          0" in out  # nothing reached the callers
    assert "primary returned         yes" in out
    route = re.search(r"route +(.*)", out)
    assert route is not None
    stops = re.findall(r"(\w+) \(at", route.group(1))
    assert stops[0] == "openai"
    assert stops[-1] == "openai"
    assert "anthropic" in stops  # the calls switched to the next provider
    # the primary answered 429 and cooled, its quota went critical, and both recovered
    assert "openai: healthy -> cooling (rate_limited)" in out
    assert "openai: cooling -> healthy (recovered)" in out
    assert re.search(r"api_quota:openai +.*critical.* -> healthy", out)
    assert "SWITCH_PROVIDER anthropic succeeded" in out
    assert re.search(r"overall health +healthy", out)
    served = re.search(r"served by +openai (\d+), anthropic (\d+), local (\d+)", out)
    assert served is not None
    assert all(int(n) > 0 for n in served.groups())


def test_both_stories_run_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--duration", "1"]) == 0
    out = capsys.readouterr().out
    assert out.index("\nsummary\n") < out.index("summary (team)")


def test_serve_needs_the_team_story(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--story", "policies", "--serve"])
    assert info.value.code == 2
    assert "--story team" in capsys.readouterr().err


def test_serve_says_clearly_that_the_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("uvicorn")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--serve", "--port", str(port), "--duration", "1"]) == 1
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err


def test_serve_answers_on_the_printed_port_while_the_demo_runs() -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    env.pop("BUTTRESS_SERVER_TOKEN", None)
    demo = subprocess.Popen(
        [sys.executable, "-m", "buttress.cli", "demo", "--serve", "--port", "0", "--duration", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        url = None
        for line in demo.stdout:  # ends with the process if it never prints the address
            found = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", line)
            if found:
                url = found.group(1)
                break
        assert url is not None, "no dashboard address printed"
        health = httpx.get(f"{url}health", timeout=5)
        assert health.status_code in (200, 503)
        assert health.headers["content-type"].startswith("application/json")
        state: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = httpx.get(f"{url}state", timeout=5).json()
            if "api_quota:openai" in state.get("resources", {}):
                break
            time.sleep(0.05)
        assert state["team"] == "marketing-team"
        assert "api_quota:openai" in state["resources"]
        assert httpx.get(url, timeout=5).status_code == 200  # the dashboard page
        output, _ = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate(timeout=10)
    assert demo.returncode == 0, output
    assert "summary (team)" in output
    assert "Traceback" not in output
    with pytest.raises(httpx.TransportError):  # shut down with the demo
        httpx.get(f"{url}health", timeout=2)


# -- buttress config check -----------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in VARIABLES:
        monkeypatch.delenv(var.name, raising=False)
    return monkeypatch


GOOD = """\
team = "marketing-team"
check_interval = 20

[fallback_strategies]
api_quota = [
  { strategy = "switch_provider", target = "anthropic" },
  { strategy = "use_cache", priority = 1 },
]

[[monitors]]
type = "network"
name = "billing"
target = "http://127.0.0.1:8080/health"
"""


def _row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.split()[:1] == [name])
    return line.split(None, 2)


def test_config_check_prints_each_setting_and_its_source(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("BUTTRESS_ENV", "development")
    clean_env.setenv("RETRY_MAX_ATTEMPTS", "7")
    team = tmp_path / "team.toml"
    team.write_text(GOOD)
    assert main(["config", "check", str(team)]) == 0
    out = capsys.readouterr().out
    for var in VARIABLES:
        assert var.name in out
    assert _row(out, "RETRY_MAX_ATTEMPTS") == ["RETRY_MAX_ATTEMPTS", "7", "environment"]
    assert _row(out, "CIRCUIT_FAILURE_THRESHOLD") == [
        "CIRCUIT_FAILURE_THRESHOLD",
        "10",
        "development profile default",
    ]
    assert _row(out, "RETRY_MAX_DELAY") == ["RETRY_MAX_DELAY", "60.0", "default"]
    assert _row(out, "BUTTRESS_ENV") == ["BUTTRESS_ENV", "development", "environment"]
    assert "marketing-team" in out
    assert "network:billing" in out
    assert "api_quota: switch_provider(anthropic) -> cached" in out
    assert "configuration ok" in out


def test_config_check_without_a_file_checks_the_environment(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert _row(out, "CIRCUIT_FAILURE_THRESHOLD") == ["CIRCUIT_FAILURE_THRESHOLD", "5", "default"]
    assert _row(out, "MCP_CONFIG") == ["MCP_CONFIG", "./mcp.json", "default"]
    assert "team file" not in out


def test_config_check_never_prints_a_storage_password(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("BUTTRESS_STORAGE_URL", "redis://app:Env-s3cret@127.0.0.1:6379/0")
    team = tmp_path / "team.toml"
    team.write_text('team = "t"\nstorage = "redis://app:File-s3cret@127.0.0.1:6379/1"\n')
    assert main(["config", "check", str(team)]) == 0
    out = capsys.readouterr().out
    assert "redis://app:***@127.0.0.1:6379/0" in out
    assert "Env-s3cret" not in out
    assert "File-s3cret" not in out


def test_config_check_lists_every_bad_variable_and_key(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("RETRY_MAX_ATTEMPTS", "zero")
    clean_env.setenv("CIRCUIT_RECOVERY_TIMEOUT", "-1")
    team = tmp_path / "team.json"
    team.write_text(json.dumps({"team": "t", "colour": 1, "monitors": [{"type": "disk"}]}))
    assert main(["config", "check", str(team)]) == 1
    captured = capsys.readouterr()
    assert "configuration ok" not in captured.out
    err = captured.err
    assert "RETRY_MAX_ATTEMPTS must be an integer >= 1, got 'zero'" in err
    assert "CIRCUIT_RECOVERY_TIMEOUT" in err
    assert "'colour'" in err
    assert "monitors[0].type" in err
    assert str(team) in err


def test_config_check_with_a_good_environment_and_a_bad_file_fails(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    team = tmp_path / "team.toml"
    team.write_text(GOOD.replace("check_interval = 20", "check_interval = -3"))
    assert main(["config", "check", str(team)]) == 1
    assert "check_interval" in capsys.readouterr().err
    assert main(["config", "check", str(tmp_path / "missing.toml")]) == 1
    assert "missing.toml" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"storage": "bogus://"}, "storage='bogus://': unknown storage"),
        ({"storage": "redis://app:pw-s3cret@h:notaport/0"}, "the port 'notaport'"),
        ({"storage": "sqlite:///missing-dir/state.db"}, "the directory missing-dir does not exist"),
        (
            {"monitors": [{"type": "network", "name": "n", "target": "not a url"}]},
            "monitors[0] (network 'n'): network target must be",
        ),
        ({"thresholds": {"memory": {"critical": 50}}}, "'degraded' must be <= 'critical'"),
    ],
)
def test_config_check_refuses_what_building_the_team_refuses(
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    data: dict[str, Any],
    named: str,
) -> None:
    clean_env.chdir(tmp_path)
    team = tmp_path / "team.json"
    team.write_text(json.dumps({"team": "t", **data}))
    with pytest.raises(ConfigError) as built:
        build_manager(str(team))
    assert named in str(built.value)
    assert main(["config", "check", str(team)]) == 1
    captured = capsys.readouterr()
    assert "configuration ok" not in captured.out
    assert named in captured.err
    assert "pw-s3cret" not in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["team.json"]  # nothing was opened


def test_config_check_passes_what_builds_and_opens_no_store(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    team = tmp_path / "team.json"
    state = tmp_path / "state.db"
    team.write_text(json.dumps({"team": "t", "storage": f"sqlite:///{state}"}))
    assert main(["config", "check", str(team)]) == 0
    assert "configuration ok" in capsys.readouterr().out
    assert not state.exists()
    build_manager(str(team)).close()
    assert state.exists()


def test_config_check_refuses_a_check_interval_below_the_least(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    team = tmp_path / "team.toml"
    team.write_text(GOOD.replace("check_interval = 20", "check_interval = 1e-9"))
    assert main(["config", "check", str(team)]) == 1
    assert "check_interval must be at least 0.01 seconds" in capsys.readouterr().err
    clean_env.setenv("RESILIENCE_CHECK_INTERVAL", "1e-9")
    assert main(["config", "check"]) == 1
    err = capsys.readouterr().err
    assert "RESILIENCE_CHECK_INTERVAL must be a number of seconds >= 0.01, got '1e-9'" in err


def test_config_check_shows_the_state_file_and_refuses_one_that_cannot_be_made(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("RESILIENCE_STORAGE_PATH", str(tmp_path))  # a directory: state.db in it
    assert main(["config", "check"]) == 0
    assert f"(its state file)                 {tmp_path / 'state.db'}" in capsys.readouterr().out
    clean_env.setenv("RESILIENCE_STORAGE_PATH", str(tmp_path / "data" / "resilience"))
    assert main(["config", "check"]) == 0  # made at the first use
    assert f"{tmp_path}/data/resilience/state.db" in capsys.readouterr().out
    (tmp_path / "blocker").write_text("a file where a directory should be")
    clean_env.setenv("RESILIENCE_STORAGE_PATH", str(tmp_path / "blocker" / "resilience"))
    assert main(["config", "check"]) == 1
    captured = capsys.readouterr()
    assert "configuration ok" not in captured.out
    assert f"{tmp_path / 'blocker'} is not a directory" in captured.err
