"""A stand-in MCP server (the MCP Python SDK, over stdio) for the examples: one ``query`` tool.

Run by the examples through an MCP configuration file (``mcp.json``) under the name they watch.
"""

from mcp.server.mcpserver import MCPServer

server = MCPServer("supabase-standin", version="1.0.0")


@server.tool()
def query(sql: str) -> str:
    """Answer any query with one row."""
    return f"1 row for {sql!r}"


if __name__ == "__main__":
    server.run("stdio")
