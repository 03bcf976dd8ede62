"""Fallback protocols, "MCP Client Enhancement": tool calls under the MCP_SERVER protocol.

``MCPClient`` is a stand-in client of an MCP gateway on 127.0.0.1 whose first tool call fails
with 503; the protocol's first step, a retry, gets the answer.
"""
# requires: buttress.with_fallback

import asyncio

from _standins import AsyncServiceClient, service

from buttress import ResilienceManager, ResourceType
from buttress import with_fallback


class MCPClient:
    def __init__(self, url):
        self.resilience = ResilienceManager("mcp-users")
        self.http = AsyncServiceClient(url)

    async def call_tool(self, server, tool, arguments):
        return await self.http.call_tool(server, tool, arguments["sql"])


class ResilientMCPClient(MCPClient):
    @with_fallback(ResourceType.MCP_SERVER)
    async def call_tool(self, server, tool, arguments):
        return await super().call_tool(server, tool, arguments)


with service(call_tool=[(503, "restarting"), (200, {"rows": 1})]) as gateway:
    client = ResilientMCPClient(gateway.url)
    print("tool result:", asyncio.run(client.call_tool("supabase", "query", {"sql": "select 1"})))
    print("requests:", gateway.hits["/call_tool"])
