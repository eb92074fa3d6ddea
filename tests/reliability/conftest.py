"""Shares the trainer tests' persistent XLA compilation cache (same tiny steps, compiled once)."""
from tests.train.conftest import shared_compilation_cache  # noqa: F401  (a session-wide autouse fixture)
