"""The service on a real socket in this process (uvicorn on a thread), and a free port."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx
    import uvicorn

    from procplat.settings import Settings

ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A running service: its URL and settings; :meth:`client` makes clients it closes at
    :meth:`stop`."""

    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = ADMIN_TOKEN) -> httpx.Client:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=60)
        self.clients.append(client)
        return client

    @property
    def app_state(self) -> Any:
        return self.server.config.app.state  # type: ignore[union-attr]

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.server.should_exit = True
        self.thread.join(timeout=60)


def start_server(settings: Settings, *, nodelay: bool = True) -> LiveServer:
    """Start the app of ``settings`` on a free port of 127.0.0.1; returns once it (and its
    lifespan: index, cluster) is up.

    ``nodelay``: the socket is made with proto=IPPROTO_TCP, as ``uvicorn.run(host=, port=)``
    gets it from getaddrinfo, so asyncio sets TCP_NODELAY on accepted connections. With proto 0
    (a plain ``socket.socket()``) it does not, and Nagle + delayed ACK add ~40 ms whenever a
    response goes out in two writes (headers, then body)."""
    import uvicorn

    from procplat.api.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP if nodelay else 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on",
                            access_log=False, backlog=4096)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.02)
    return LiveServer(url=f"http://127.0.0.1:{port}", settings=settings, server=server,
                      thread=thread)


def settings_for(data: Path, dask_address: str | None, **overrides: Any) -> Settings:
    """The tests' settings: data in ``data``, the admin token :data:`ADMIN_TOKEN`, progress
    sent every 0.2 s, the dashboard on a free port."""
    from procplat.settings import Settings

    return Settings(
        data=data,
        dask_address=dask_address,
        admin_token=ADMIN_TOKEN,
        progress_update_throttle_seconds=0.2,
        dashboard_address=":0",
        **overrides,
    )
