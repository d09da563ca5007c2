"""Tools: one module per tool, pure functions and lazy graphs, independent of the service."""
