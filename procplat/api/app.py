"""The Starlette application: builds the index, registry, datasets, artifacts, supervisor
and task services on start-up and wires the routes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from procplat.api import docs_routes, link_routes, platform_routes, system_routes, task_routes
from procplat.api.http import EXCEPTION_HANDLERS, RejectNulInUrl
from procplat.core.artifacts import Artifacts
from procplat.core.auth import ensure_admin
from procplat.core.datasets import Datasets
from procplat.core.links import Links
from procplat.core.registry import Registry
from procplat.core.signing import secret_key
from procplat.core.supervisor import Supervisor
from procplat.core.tasks import Tasks
from procplat.index.db import Database
from procplat.settings import Settings, load_settings
from procplat.web import console_mount

log = logging.getLogger("procplat")


def create_app(
    settings: Settings | None = None, *, migrate: bool = True, role: str = "all"
) -> Starlette:
    """The app; on start it upgrades the index schema, or with ``migrate=False`` refuses to
    start unless the schema is current (``procplat serve --no-migrate``). ``role`` is what
    this process does in a fleet (:data:`procplat.core.supervisor.ROLES`): the ``supervisor``
    role answers ``/sys/health`` only."""
    settings = settings or load_settings()
    secret = secret_key(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for folder in (settings.data, settings.datasets_dir, settings.artifacts_dir, settings.work_dir):
            folder.mkdir(parents=True, exist_ok=True)
        db = Database(settings.sqlalchemy_url, migrate=migrate)
        ensure_admin(db, settings.admin_token)
        registry = Registry()
        datasets = Datasets(db, settings.datasets_dir)
        artifacts = Artifacts(settings=settings, db=db)
        supervisor = Supervisor(settings=settings, db=db, registry=registry, datasets=datasets,
                                artifacts=artifacts, role=role)
        await supervisor.start()
        app.state.settings = settings
        app.state.db = db
        app.state.datasets = datasets
        app.state.supervisor = supervisor
        app.state.tasks = Tasks(
            settings=settings, db=db, registry=registry, datasets=datasets, artifacts=artifacts,
            supervisor=supervisor,
        )
        app.state.links = Links(tasks=app.state.tasks, secret=secret,
                                max_expiry_seconds=settings.link_max_expiry_seconds)
        app.state.principal_cache = {}
        log.info("procplat ready; Dask dashboard: %s", supervisor.dashboard_link)
        try:
            yield
        finally:
            await supervisor.close()
            db.dispose()

    routes = [*platform_routes.ROUTES, *task_routes.ROUTES, *link_routes.ROUTES,
              *system_routes.ROUTES, *docs_routes.ROUTES,
              *console_mount(settings, secret)]
    if role == "supervisor":
        routes = [system_routes.HEALTH]
    return Starlette(
        routes=routes,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[*_cors(settings), Middleware(RejectNulInUrl)],
        lifespan=lifespan,
    )


# What a page on another origin may read of a response besides the CORS-safelisted headers:
# what downloads, resumed ranges and submissions need.
_EXPOSED_HEADERS = ["ETag", "Content-Range", "Content-Length", "Accept-Ranges",
                    "Content-Disposition", "Location", "Retry-After", "Last-Modified"]


def _cors(settings: Settings) -> list[Middleware]:
    """Cross-origin requests from the origins of ``PROCPLAT_CORS_ORIGINS`` (none by default)."""
    origins = settings.cors_origin_list
    if not origins:
        return []
    return [Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                       allow_headers=["*"], expose_headers=_EXPOSED_HEADERS, max_age=600)]
