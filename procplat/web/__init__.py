"""The web console at ``/ui/``: server-rendered pages over the core services (datasets,
files, tasks with live progress, forms from the tool schemas, previews, the admin view),
signed in with an API token kept in a signed session cookie."""

from procplat.web.routes import console_mount

__all__ = ["console_mount"]
