//! Otter agent.
