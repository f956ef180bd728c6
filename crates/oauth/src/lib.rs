//! OAuth 2.1 authorization server for exposed MCP servers: metadata, PKCE, tokens, client registration, approvals, audit (SQLite).
