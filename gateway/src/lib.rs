//! Breakwater gateway (skeleton; filled in by its own issue).
