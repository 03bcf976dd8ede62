"""Fallback protocols, "MCP Client Enhancement": tool calls under the MCP_SERVER protocol.

``MCPClient`` is a stand-in client of MCP gateways on 127.0.0.1: the primary answers 503 (down),
the secondary answers. The MCP_SERVER protocol switches to the secondary at once (a server that
is down is not retried while an untried one remains); the next call skips the primary while it
cools down.
"""
# requires: buttress.with_fallback, buttress.current_target

import asyncio

from _standins import AsyncServiceClient, service

import buttress
from buttress import ResilienceManager, ResourceType, with_fallback


class MCPClient:
    def __init__(self, gateways):
        self.resilience = ResilienceManager("mcp-users")
        self.gateways = {name: AsyncServiceClient(url) for name, url in gateways.items()}
        self.resilience.register_targets(ResourceType.MCP_SERVER, list(gateways))

    async def call_tool(self, server, tool, arguments):
        gateway = self.gateways[buttress.current_target() or "primary"]
        return await gateway.call_tool(server, tool, arguments["sql"])


class ResilientMCPClient(MCPClient):
    @with_fallback(ResourceType.MCP_SERVER)
    async def call_tool(self, server, tool, arguments):
        return await super().call_tool(server, tool, arguments)


async def main(client):
    for sql in ("select 1", "select 2"):
        print("tool result:", await client.call_tool("supabase", "query", {"sql": sql}))


with service(call_tool=[(503, "restarting")]) as primary, \
        service(call_tool=[(200, {"rows": 1})]) as secondary:
    asyncio.run(main(ResilientMCPClient({"primary": primary.url, "secondary": secondary.url})))
    print("requests:", {"primary": primary.hits["/call_tool"],
                        "secondary": secondary.hits["/call_tool"]})
