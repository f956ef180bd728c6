//! Client of Anthropic's self-hosted environment-worker protocol: poll, lease, heartbeat, session events, tool results.
