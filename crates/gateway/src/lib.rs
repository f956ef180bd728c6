//! Serves exposed MCP servers over Streamable HTTP.
