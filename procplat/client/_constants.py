"""Constants shared by the client's modules."""

CHUNK_SIZE = 1024 * 1024
"""Bytes read from disk per upload chunk and written per download chunk."""

PAGE_SIZE = 200
"""Items asked for per page of a list route (the most the service gives)."""

USER_AGENT = "procplat-client/0.1"
