//! The agent-init protocol.
