"""The revisions, oldest first by number; Alembic reads them by path (this file only makes the
folder a package, so it is installed)."""
