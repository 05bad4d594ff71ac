//! Breakwater agent (skeleton; filled in by its own issue).
