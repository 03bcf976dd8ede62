"""``buttress serve``: configuration files, a port in use, and the demo under a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from buttress.cli import main
from buttress.health.types import ResourceType
from buttress.server.serve import ConfigError, load_config
from server_helpers import free_port

SRC = str(Path(__file__).resolve().parent.parent / "src")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    return env


def test_a_toml_configuration_builds_the_team(tmp_path: Path) -> None:
    config = tmp_path / "team.toml"
    config.write_text(
        'team = "orders"\n'
        "check_interval = 7\n"
        "[[monitors]]\n"
        'type = "database"\n'
        'name = "orders"\n'
        f'target = "{tmp_path / "orders.db"}"\n'
        "required = true\n"
        "[[monitors]]\n"
        'type = "network"\n'
        'name = "payments"\n'
        'target = "http://127.0.0.1:9/health"\n'
        "interval = 3\n"
        "critical = false\n"
    )
    manager, token = load_config(config)
    assert token is None
    assert manager.team == "orders"
    assert manager.resources.check_interval == 7
    orders = manager.resources.monitor(ResourceType.DATABASE, "orders")
    assert orders.required is True
    payments = manager.resources.monitor(ResourceType.NETWORK, "payments")
    assert (payments.interval, payments.critical, payments.required) == (3, False, False)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"monitors": []}, "'team' must be a non-empty string"),
        ({"team": "t", "colour": 1}, "unknown key.*'colour'"),
        ({"team": "t", "check_interval": -1}, "check_interval must be > 0"),
        ({"team": "t", "monitors": {}}, "monitors must be a list"),
        ({"team": "t", "monitors": [{"type": "disk", "name": "x"}]}, r"monitors\[0\]\.type"),
        ({"team": "t", "monitors": [{"type": "database", "name": "x"}]}, "missing 'target'"),
        (
            {"team": "t", "monitors": [{"type": "network", "name": "x", "target": "ftp://x"}]},
            r"monitors\[0\] \(network 'x'\)",
        ),
        (
            {"team": "t", "monitors": [{"type": "cpu", "flavour": "x"}]},
            r"monitors\[0\] \(cpu 'system'\): unknown key.*'flavour'",
        ),
        (
            {"team": "t", "monitors": [{"type": "cpu", "required": "yes"}]},
            r"monitors\[0\]\.required must be true or false",
        ),
        ({"team": "t", "token_env": "BUTTRESS_TEST_UNSET_VARIABLE"}, "not set"),
        ({"team": "t", "monitors": [{"type": "api_quota", "name": "x"}]}, "need a function"),
    ],
)
def test_a_bad_configuration_names_the_key(
    tmp_path: Path, content: dict[str, Any], message: str
) -> None:
    config = tmp_path / "team.json"
    config.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(config)
    assert str(config) in str(caught.value)


def test_an_unreadable_or_unparsable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")
    broken = tmp_path / "team.toml"
    broken.write_text("team = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    other = tmp_path / "team.ini"
    other.write_text("[team]\n")
    with pytest.raises(ConfigError, match=r"unknown file type '\.ini'"):
        load_config(other)


def test_serve_reports_a_bad_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "team.json"
    config.write_text(json.dumps({"team": "t", "monitors": [{"type": "disk"}]}))
    assert main(["serve", "--config", str(config), "--port", "0"]) == 2
    assert "monitors[0].type" in capsys.readouterr().err


def test_serve_refuses_a_token_variable_unset_or_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "team.json"
    config.write_text(json.dumps({"team": "t"}))
    monkeypatch.delenv("BUTTRESS_TEST_UNSET_VARIABLE", raising=False)
    serve = ["serve", "--config", str(config), "--port", "0"]
    assert main([*serve, "--token-env", "BUTTRESS_TEST_UNSET_VARIABLE"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "buttress serve: bad configuration: --token-env names BUTTRESS_TEST_UNSET_VARIABLE, "
        "which is not set in the environment\n"
    )  # one line, not one per character
    monkeypatch.setenv("BUTTRESS_SERVER_TOKEN", " ")  # set to nothing: not an open door
    assert main(serve) == 2
    assert "BUTTRESS_SERVER_TOKEN is set but empty" in capsys.readouterr().err
    monkeypatch.delenv("BUTTRESS_SERVER_TOKEN")
    monkeypatch.setenv("ORDERS_TOKEN", "")
    config.write_text(json.dumps({"team": "t", "token_env": "ORDERS_TOKEN"}))
    assert main(serve) == 2
    assert "'token_env' names ORDERS_TOKEN, which is set but empty" in capsys.readouterr().err


def test_serve_says_clearly_that_the_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--demo", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert "Traceback" not in err


def test_serve_rejects_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--demo", "--port", "70000"])
    assert "port number" in capsys.readouterr().err


def test_demo_serves_a_changing_team_and_shuts_down_with_a_stream_open() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "buttress.cli", "serve", "--demo", "--port", str(port)],
        env=_env(BUTTRESS_SERVER_TOKEN="demo-token-123"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": "Bearer demo-token-123"}
        deadline = time.monotonic() + 30
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                state = httpx.get(f"{base}/state", headers=auth, timeout=5).json()
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if state["circuits"] and state["resources"] and state["rate_limits"]:
                break
            time.sleep(0.05)
        assert state["team"] == "demo-team"
        assert {"demo.payments", "demo.search", "demo.email"} <= set(state["circuits"])
        assert "network:inventory-api" in state["resources"]
        assert httpx.get(f"{base}/live", timeout=5).status_code == 200
        assert httpx.get(f"{base}/state", timeout=5).status_code == 401
        with (
            httpx.Client(base_url=base, headers=auth, timeout=10) as http,
            http.stream("GET", "/events") as stream,
        ):
            lines = stream.iter_lines()
            for line in lines:
                if line.startswith("event: state"):
                    break
            server.send_signal(signal.SIGTERM)
            # The stream ends with the server instead of holding its shutdown (the read below
            # returns only once the server has closed it).
            for _ in lines:
                pass
        output, _ = server.communicate(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=10)
    assert server.returncode == 0, output
    assert b"Traceback" not in output
    assert b"demo-token-123" not in output


def test_connections_on_the_served_socket_have_nagle_off() -> None:
    # A response written in two parts (headers, body) must not wait for the client's delayed
    # ACK: asyncio sets TCP_NODELAY only on sockets made with proto IPPROTO_TCP.
    import asyncio

    from buttress.server.serve import bind

    listening = bind("127.0.0.1", 0)
    assert listening.proto == socket.IPPROTO_TCP

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
        async with server:
            port = listening.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            result = await asyncio.wait_for(seen, 10)
            writer.close()
            return result

    assert asyncio.run(accepted_nodelay()) != 0


@pytest.mark.parametrize("command", [["serve", "--demo", "--port", "0"], ["demo", "--serve"]])
def test_without_the_server_extra_the_commands_say_so_once(command: list[str]) -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None  # as if it were not installed\n"
        "from buttress.cli import main\n"
        f"sys.exit(main({command!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.count("pip install 'buttress[server]'") == 1
    assert "Starlette" in done.stderr


def test_serve_names_every_problem_of_a_file_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what serving alone needs (a team name, api_quota monitors registered in code, the token's
    # variable set) was reported one problem per run
    monkeypatch.delenv("BUTTRESS_TEST_UNSET_VARIABLE", raising=False)
    config = tmp_path / "team.json"
    quota = {"type": "api_quota", "name": "openai"}
    content = {"monitors": [quota, quota | {"name": "anthropic"}]}
    config.write_text(json.dumps(content | {"token_env": "BUTTRESS_TEST_UNSET_VARIABLE"}))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    text = str(caught.value)
    for problem in (
        "monitors[0].type: api_quota monitors need a function",
        "monitors[1].type: api_quota monitors need a function",
        "'team' must be a non-empty string",
        "'token_env' names BUTTRESS_TEST_UNSET_VARIABLE, which is not set in the environment",
    ):
        assert problem in text
