//! Multi-process test support.
