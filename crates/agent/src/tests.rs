//! Root-free tests of the agent logic against the fake driver and network.
