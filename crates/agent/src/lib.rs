//! Composition of the agent: config, state, control API.
