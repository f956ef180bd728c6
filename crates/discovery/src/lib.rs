//! Finds the MCP servers configured in every MCP client on this machine.
