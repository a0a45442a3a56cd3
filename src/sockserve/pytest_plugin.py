"""sockserve's pytest plugin (a ``pytest11`` entry point): fixtures for testing
a user's own handlers. Filled in by the work on issue 10."""

__all__: list[str] = []
