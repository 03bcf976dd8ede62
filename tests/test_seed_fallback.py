"""The design document's fallback examples, against real local stand-ins for the outside services.

* ``MarketingTeam.generate_content`` (``@with_fallback(ResourceType.API_QUOTA)``) against three
  local HTTP servers acting as OpenAI (429 with ``Retry-After``), Anthropic (500) and a local
  model (answers);
* ``ResilientMCPClient.call_tool`` (``@with_fallback(ResourceType.MCP_SERVER)``) against real MCP
  servers built with the SDK: the primary killed, the secondary answers; both killed, the mock;
* ``ResilientA2AClient.send_task`` (``@retry(max_attempts=3)`` over
  ``@circuit_breaker("a2a_communication")``) against a local HTTP server that fails twice;
* ``process_request`` through ``with_resilience``, the full stack.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import buttress
from buttress import (
    FallbackAction,
    FallbackStrategy,
    ResilienceManager,
    ResourceType,
    circuit_breaker,
    circuit_breakers,
    retry,
    with_fallback,
)
from local_servers import Request, serve


class LLM:
    """A chat client that calls the provider the running call is switched to."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls

    async def invoke(self, prompt: str) -> str:
        url = self.urls[buttress.current_target() or "openai"]
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"{url}/v1/chat", params={"prompt": prompt})
            response.raise_for_status()  # httpx.HTTPStatusError carries the response
            return str(response.json()["text"])


def test_marketing_team_switches_providers_on_quota_and_server_errors() -> None:
    def openai(request: Request) -> tuple[Any, ...]:
        return (429, {"error": "quota exhausted"}, {"Retry-After": "60"})

    def anthropic(request: Request) -> tuple[Any, ...]:
        return (500, {"error": "internal"})

    def local(request: Request) -> tuple[Any, ...]:
        return (200, {"text": "local answer"})

    with (
        serve({"/v1/chat": openai}) as openai_server,
        serve({"/v1/chat": anthropic}) as anthropic_server,
        serve({"/v1/chat": local}) as local_server,
    ):
        urls = {
            "openai": openai_server.url,
            "anthropic": anthropic_server.url,
            "local": local_server.url,
        }

        class MarketingTeam:
            def __init__(self) -> None:
                self.resilience = ResilienceManager("marketing-team")
                self.llm = LLM(urls)

            @with_fallback(ResourceType.API_QUOTA)
            async def generate_content(self, prompt: str) -> str:
                # Automatically handles API quota failures
                return await self.llm.invoke(prompt)

        team = MarketingTeam()
        team.resilience.register_targets(ResourceType.API_QUOTA, ["openai", "anthropic", "local"])

        async def main() -> list[str]:
            return [await team.generate_content(f"post {i}") for i in range(3)]

        assert asyncio.run(main()) == ["local answer"] * 3
        # The first call tried each provider once, without sleeping a retry backoff; the next
        # calls went straight to the local model: the others are cooling down.
        assert len(openai_server.requests) == 1
        assert len(anthropic_server.requests) == 1
        assert len(local_server.requests) == 3
        states = team.resilience.provider_states()["api_quota"]
        assert states["openai"]["state"] == "cooling"
        assert states["openai"]["last_error"] == "HTTPStatusError"
        assert states["openai"]["expires_at"] >= states["anthropic"]["expires_at"]
        assert states["openai"]["expires_at"] - states["openai"]["since"] >= 60.0  # Retry-After
        assert states["local"]["state"] == "healthy"
        report = team.resilience.health_report()["protocols"]
        assert report["counts"]["api_quota"]["SWITCH_PROVIDER"] == {"failed": 1, "succeeded": 1}


def test_marketing_team_request_errors_are_not_switched() -> None:
    def refuses(request: Request) -> tuple[Any, ...]:
        return (400, {"error": "prompt too long"})

    with serve({"/v1/chat": refuses}) as openai_server, serve({"/v1/chat": refuses}) as other:

        class MarketingTeam:
            def __init__(self) -> None:
                self.resilience = ResilienceManager("marketing-team")
                self.llm = LLM({"openai": openai_server.url, "anthropic": other.url})

            @with_fallback(ResourceType.API_QUOTA)
            async def generate_content(self, prompt: str) -> str:
                return await self.llm.invoke(prompt)

        team = MarketingTeam()
        team.resilience.register_targets(ResourceType.API_QUOTA, ["openai", "anthropic"])
        with pytest.raises(httpx.HTTPStatusError):
            asyncio.run(team.generate_content("x" * 100))
        assert len(openai_server.requests) == 1
        assert other.requests == []
        assert team.resilience.provider_states()["api_quota"]["openai"]["state"] == "healthy"


# -- MCP ----------------------------------------------------------------------------------------


class MCPClient:
    """A minimal MCP client over streamable HTTP: the server to use is the current target."""

    def __init__(self, servers: dict[str, str]) -> None:
        self.servers = servers
        self.resilience = ResilienceManager("mcp-team")

    async def call_tool(self, server: str, tool: str, arguments: dict[str, Any]) -> Any:
        import httpx2
        from mcp.client.session import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        url = self.servers[buttress.current_target() or server]
        async with (
            httpx2.AsyncClient(timeout=httpx2.Timeout(5.0)) as client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool(tool, arguments)
            return result.content[0].text  # type: ignore[union-attr]


def test_resilient_mcp_client_uses_the_secondary_when_the_primary_dies() -> None:
    pytest.importorskip("mcp", reason="the MCP SDK is the mcp extra")
    from mcp_server import HttpServer

    class ResilientMCPClient(MCPClient):
        @with_fallback(ResourceType.MCP_SERVER)
        async def call_tool(self, server, tool, arguments):  # type: ignore[no-untyped-def]
            return await super().call_tool(server, tool, arguments)

    async def mock(server: str, tool: str, arguments: dict[str, Any]) -> str:
        return "mocked"

    with HttpServer() as primary, HttpServer() as secondary:
        client = ResilientMCPClient({"primary": primary.url, "secondary": secondary.url})
        client.resilience.register_targets(
            ResourceType.MCP_SERVER, {"primary": "primary", "secondary": "secondary", "mock": mock}
        )

        async def main() -> list[Any]:
            answers = [await client.call_tool("supabase", "add", {"a": 2, "b": 3})]
            primary.kill()
            answers.append(await client.call_tool("supabase", "add", {"a": 4, "b": 5}))
            secondary.kill()
            answers.append(await client.call_tool("supabase", "add", {"a": 1, "b": 1}))
            return answers

        assert asyncio.run(main()) == ["5", "9", "mocked"]
    states = client.resilience.provider_states()["mcp_server"]
    assert states["primary"]["state"] == "cooling"
    assert states["secondary"]["state"] == "cooling"
    assert states["mock"]["state"] == "healthy"


# -- A2A ----------------------------------------------------------------------------------------


def test_resilient_a2a_client_retries_through_its_breaker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRY_BASE_DELAY", "0.01")
    answers = [503, 503, 200]

    def task(request: Request) -> tuple[Any, ...]:
        status = answers.pop(0)
        return (status, {"accepted": status == 200})

    with serve({"/tasks": task}) as team_server:

        class A2AClient:
            async def send_task(
                self, target_team: str, task_description: str, context: Any = None
            ) -> Any:
                async with httpx.AsyncClient(timeout=5.0) as client:
                    response = await client.get(
                        f"{team_server.url}/tasks", params={"team": target_team}
                    )
                    response.raise_for_status()
                    return response.json()

        class ResilientA2AClient(A2AClient):
            @retry(max_attempts=3)
            @circuit_breaker("a2a_communication")
            async def send_task(self, target_team, task_description, context=None):  # type: ignore[no-untyped-def]
                return await super().send_task(target_team, task_description, context)

        try:
            result = asyncio.run(ResilientA2AClient().send_task("sales", "draft the brief"))
            assert result == {"accepted": True}
            assert len(team_server.requests) == 3
            assert circuit_breakers()["a2a_communication"].state.value == "closed"
        finally:
            circuit_breakers()["a2a_communication"].dispose()


# -- the full resilience stack ---------------------------------------------------------------------


def test_process_request_through_with_resilience() -> None:
    class Team:
        def __init__(self) -> None:
            self.resilience = ResilienceManager("stack-team")
            self.resilience.set_protocol(
                ResourceType.API_QUOTA,
                [
                    FallbackAction(FallbackStrategy.RETRY, attempts=2, base_delay=0.01),
                    FallbackAction(FallbackStrategy.USE_CACHE),
                ],
            )
            self.failures = [ConnectionError("reset"), None, ConnectionError("down")]
            self.handled: list[Any] = []

        async def _process_impl(self, request_data: dict[str, Any]) -> dict[str, Any]:
            failure = self.failures.pop(0) if self.failures else ConnectionError("down")
            if failure is not None:
                raise failure
            self.handled.append(request_data)
            return {"done": request_data["id"]}

        async def process_request(self, request_data: dict[str, Any]) -> Any:
            # Execute with full resilience protection
            return await self.resilience.with_resilience(
                self._process_impl, ResourceType.API_QUOTA, request_data
            )

    team = Team()
    try:
        assert asyncio.run(team.process_request({"id": 1})) == {"done": 1}
        # The retries fail now: the cached answer for the same request is served.
        assert asyncio.run(team.process_request({"id": 1})) == {"done": 1}
        assert team.handled == [{"id": 1}]
        report = team.resilience.health_report()
        assert "stack-team.api_quota" in report["circuits"]
        assert report["protocols"]["counts"]["api_quota"]["USE_CACHE"] == {"succeeded": 1}
    finally:
        circuit_breakers()["stack-team.api_quota"].dispose()


def test_call_with_resilience_is_the_sync_twin() -> None:
    manager = ResilienceManager("sync-stack")
    manager.set_protocol(
        ResourceType.DATABASE, [FallbackAction(FallbackStrategy.RETRY, attempts=1, base_delay=0)]
    )
    calls: list[int] = []

    def query(n: int) -> int:
        calls.append(n)
        if len(calls) == 1:
            raise ConnectionError("primary gone")
        return n * 2

    try:
        assert manager.call_with_resilience(query, ResourceType.DATABASE, 21) == 42
        assert calls == [21, 21]
    finally:
        circuit_breakers()["sync-stack.database"].dispose()
