"""Pipeline stages: pure functions over arrays. No I/O, no batching, no model calls here
beyond what the caller passes in."""
