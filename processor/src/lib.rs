//! Breakwater processor (skeleton; filled in by its own issue).
