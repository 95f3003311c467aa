//! projstore node agent.
