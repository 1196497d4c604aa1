//! Fuzz target logic (filled below).
