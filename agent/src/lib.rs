//! Breakwater device agent.
pub mod buffer;
