"""Constants shared by the client's modules."""

CHUNK_SIZE = 1024 * 1024
"""Bytes read from disk per upload chunk and written per download chunk."""

USER_AGENT = "procplat-client/0.1"
