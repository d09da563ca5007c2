"""The ``procplat`` command: ``procplat serve`` runs the service."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn


def serve(args: argparse.Namespace) -> int:
    from procplat.api.app import create_app
    from procplat.settings import load_settings

    settings = load_settings()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=10)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="procplat", description="Geospatial processing service on Dask.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the service. Settings come from PROCPLAT_* environment variables "
        "(PROCPLAT_DATA, PROCPLAT_DATABASE_URL, PROCPLAT_DASK_ADDRESS, PROCPLAT_ADMIN_TOKEN, ...).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(run=serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
