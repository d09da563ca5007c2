"""``procplat db``: the index schema's migrations, run by an operator.

    procplat db upgrade    apply the migrations (what ``procplat serve`` does on start unless
                           ``--no-migrate``)
    procplat db current    the index's revision and the one this code needs

They read the same settings as ``procplat serve`` (``PROCPLAT_DATA``,
``PROCPLAT_DATABASE_URL``, ``PROCPLAT_CONFIG``). Exit codes: 0 done (``current``: at head),
1 the index is behind (``current``) or newer than this code, 3 the database could not be
reached or the upgrade failed (nothing is changed then: the migrations run in one transaction).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import TypeAlias

EXIT_OK, EXIT_BEHIND, EXIT_ERROR = 0, 1, 3
# what ``ArgumentParser.add_subparsers()`` returns: commands are added to it
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _url() -> str:
    from procplat.settings import load_settings

    return load_settings().sqlalchemy_url


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from procplat.index.migrate import SchemaNotCurrent, upgrade

    try:
        result = upgrade(_url())
    except SchemaNotCurrent as exc:
        print(f"procplat: error: {exc}", file=sys.stderr)
        return EXIT_BEHIND
    except SQLAlchemyError as exc:
        print(f"procplat: error: the index could not be upgraded: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if result.changed:
        print(f"upgraded the index from {result.before or 'nothing'} to {result.after}")
    else:
        print(f"the index is at {result.after} already")
    return EXIT_OK


def cmd_db_current(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from procplat.index.migrate import schema_status

    try:
        status = schema_status(_url())
    except SQLAlchemyError as exc:
        print(f"procplat: error: the index could not be read: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"index:   {status.url}")
    print(f"current: {status.current or 'none (not migrated yet)'}")
    print(f"head:    {status.head}")
    if status.current == status.head:
        return EXIT_OK
    if status.behind:
        print("behind: run `procplat db upgrade`", file=sys.stderr)
    else:
        print(f"{status.current} is newer than this procplat", file=sys.stderr)
    return EXIT_BEHIND


def _parser(commands: Subcommands, name: str, help: str, description: str, example: str,
            ) -> argparse.ArgumentParser:
    return commands.add_parser(
        name, help=help, description=textwrap.fill(description, 78),
        epilog="example:\n" + example, formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_db_commands(commands: Subcommands) -> None:
    """Register ``procplat db upgrade|current`` on the top-level subparsers."""
    settings = ("Reads the settings procplat serve reads (PROCPLAT_DATA, PROCPLAT_DATABASE_URL, "
                "PROCPLAT_CONFIG).")
    p = _parser(
        commands, "db", "the index schema: upgrade, current revision",
        "Migrate the index schema. procplat serve upgrades it on start; with several API "
        "replicas, run procplat db upgrade once first, then start the replicas with "
        "--no-migrate. " + settings,
        "  procplat db upgrade    # then: procplat serve --no-migrate (each replica)",
    )
    sub = p.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    q = _parser(
        sub, "upgrade", "apply the migrations",
        "Upgrade the index to the newest revision, one process at a time "
        "(a lock in the database), in one transaction; a no-op when it is there. Databases "
        "made before migrations are adopted with their data. " + settings,
        "  procplat db upgrade    # the index of PROCPLAT_DATABASE_URL, else in PROCPLAT_DATA",
    )
    q.set_defaults(run=cmd_db_upgrade)
    q = _parser(
        sub, "current", "the index's revision and the one this code needs",
        "Print the index's revision and the head this procplat needs; exit 0 when they are "
        "the same, 1 when the index is behind (or newer). " + settings,
        "  procplat db current",
    )
    q.set_defaults(run=cmd_db_current)
