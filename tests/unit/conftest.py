"""Unit-test fixtures: the engine tests' remote peers are closed after each test."""

from tests.fixtures.engine import close_remotes  # noqa: F401 (an autouse fixture)
