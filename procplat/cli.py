"""The ``procplat`` command: ``procplat serve`` runs the service; the other commands are a
client of a running service, built on :mod:`procplat.client`.

    procplat serve [--no-migrate] [--role R]         run the HTTP service
    procplat db upgrade|current                      the index schema's migrations
    procplat upload LOCAL [PATH] --ds org/ds          upload a file (streamed)
    procplat submit TOOL --ds org/ds --param k=v ... [--wait] [--download DEST]
    procplat tasks list|status|log|cancel|download    follow and manage tasks
    procplat tools [--ds org/ds]                      the tools a task can run
    procplat orgs | datasets [--org ORG]              the orgs and datasets you may see
    procplat token reset USER                         issue a new token (on the service's host)

Connection: ``--url`` (else ``$PROCPLAT_URL``, else ``http://127.0.0.1:8000``, where
``procplat serve`` listens by default) and ``--token`` (else ``$PROCPLAT_TOKEN``; without one
the calls are anonymous, which can read public datasets only; prefer the variable, since a
``--token`` shows in the process list). A dataset is ``--ds org/ds``. A task is its id or the
first 8 or more characters of it (what the dashboard and the progress bar show), resolved by
the service (``GET .../tasks?taskId=<prefix>``, so any number of tasks is searched); a prefix
several tasks share is a usage error that lists them.

A closed stdout (``... | head -1``) ends a command quietly with exit 0, as Unix tools do.

``--param key=value`` (repeatable): the value is JSON when it parses as JSON (``n=3``,
``force=true``, ``paths=["a","b"]``) and a plain string otherwise (``fileName=out.tif``); quote
a string that looks like JSON (``archiveName='"2024"'``). ``key=@file.json`` takes the value
from a JSON file. A repeated key is a usage error.

Output: what a script wants goes to stdout (the task id from ``submit``, tables, log lines,
``--json`` documents); progress bars and messages go to stderr.

Exit codes: 0 success; 1 the task failed or was cancelled (or ``--timeout`` ran out);
2 usage error (bad arguments, unreadable ``@file``, a task id prefix that is too short or
ambiguous); 3 the service answered with an error, could not be reached, a download did not
verify, or a local file could not be read or written (``token reset``: no index or no such
user).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procplat.db_commands import Subcommands, add_db_commands
from procplat.states import TaskState

if TYPE_CHECKING:  # imported where used: most commands need neither the client nor the service
    from procplat.client import Client, Task
    from procplat.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_OK, EXIT_TASK, EXIT_USAGE, EXIT_HTTP = 0, 1, 2, 3
MIN_TASK_PREFIX = 8  # the dashboard and the progress bar show a task's first 8 characters
PREFIX_MATCHES_SHOWN = 10
FULL_TASK_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def serve(args: argparse.Namespace) -> int:
    from procplat.settings import load_settings

    settings = load_settings()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    # the schema first, before the service's heavy imports: a refusal is quick and plain
    from procplat.index.migrate import SchemaNotCurrent, require_current, upgrade

    try:
        if args.no_migrate:
            require_current(settings.sqlalchemy_url)
        else:
            upgrade(settings.sqlalchemy_url)
    except SchemaNotCurrent as exc:
        print(f"procplat: error: {exc}", file=sys.stderr)
        return 1
    import uvicorn

    from procplat.api.app import create_app

    # upgraded above; the app checks it is current
    app = create_app(settings, migrate=False, role=args.role)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=10)
    return 0


def token_reset(args: argparse.Namespace) -> int:
    """Issue a new token for a user straight in the index the service's settings name
    (``PROCPLAT_DATA`` / ``PROCPLAT_DATABASE_URL``), revoking the user's other tokens."""
    from procplat.core.auth import reset_token
    from procplat.errors import NotFound
    from procplat.index.db import Database
    from procplat.settings import load_settings

    settings = load_settings()
    if settings.database_url is None and not settings.sqlite_path.is_file():
        print(f"procplat: error: no index at {settings.sqlite_path.resolve()}: run this where "
              "the service runs, with its PROCPLAT_DATA (or PROCPLAT_DATABASE_URL), after it "
              "has started once", file=sys.stderr)
        return EXIT_HTTP
    db = Database(settings.sqlalchemy_url, migrate=False)
    try:
        token = reset_token(db, args.username)
    except NotFound as exc:
        print(f"procplat: error: {exc.message} in the index {_index_name(settings)}",
              file=sys.stderr)
        return EXIT_HTTP
    finally:
        db.dispose()
    print(token, flush=True)
    print(f"procplat: new token for '{args.username}'; its earlier tokens are revoked "
          "(a running service stops accepting them within a second)", file=sys.stderr)
    return EXIT_OK


def _index_name(settings: Settings) -> str:
    if settings.database_url is None:
        return str(settings.sqlite_path.resolve())
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


# --- argument types ------------------------------------------------------------------------


def dataset_arg(value: str) -> str:
    """``--ds``: ``org/ds``."""
    org, sep, ds = value.partition("/")
    if not sep or not org or not ds or "/" in ds:
        raise argparse.ArgumentTypeError(f"a dataset is written org/ds, not {value!r}")
    return value


def param_arg(value: str) -> tuple[str, Any]:
    """``--param key=value``: JSON if it parses, else the string; ``key=@file.json``."""
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, not {value!r}")
    if raw.startswith("@"):
        try:
            return key, json.loads(Path(raw[1:]).read_text())
        except (OSError, ValueError) as exc:
            raise argparse.ArgumentTypeError(
                f"{key}: cannot read JSON from {raw[1:]}: {exc}"
            ) from None
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def params_dict(pairs: list[tuple[str, Any]] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in pairs or []:
        if key in params:
            raise UsageError(f"--param {key} is given twice")
        params[key] = value
    return params


class UsageError(Exception):
    """Arguments argparse accepted but that make no sense together (exit 2)."""


# --- client commands -----------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    from procplat.client import Client

    return Client(args.url, args.token or None, timeout=args.http_timeout)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def cmd_upload(args: argparse.Namespace) -> int:
    local = args.local
    if local == "-" and (not args.path or args.path.endswith("/")):
        raise UsageError("uploading from stdin (-) needs the file's PATH in the dataset")
    path = args.path or Path(local).name
    if path.endswith("/"):
        path += Path(local).name
    source: Any = sys.stdin.buffer if local == "-" else Path(local)
    if local != "-" and not Path(local).is_file():
        raise UsageError(f"{local}: no such file")
    with _client(args) as client:
        entry = client.dataset(args.ds).upload(path, source)
    if args.json:
        _print_json(entry.raw)
    else:
        print(f"{entry.path}\t{entry.type}\t{entry.size}\t{entry.hash}")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    params = params_dict(args.param)
    with _client(args) as client:
        task = client.dataset(args.ds).submit(
            args.tool, params, path=args.path, force=args.force, version=args.version
        )
        submission = task.submission
        assert submission is not None
        if not args.json:
            print(task.id, flush=True)
        if not args.quiet:
            how = "an equal task is running or done" if submission.deduplicated else "queued"
            print(f"submitted {submission.tool_id} {task.id} ({how})", file=sys.stderr)
        if not (args.wait or args.download):
            if args.json:
                _print_json(dataclasses.asdict(submission))
            return EXIT_OK
        return _wait_and_download(task, args)


def _wait_and_download(task: Task, args: argparse.Namespace) -> int:
    from procplat.client import TaskError

    try:
        status = task.wait(progress=not args.quiet, timeout=args.timeout)
    except TaskError as exc:
        print(f"task {task.id} {exc.status.state}: {exc.message}", file=sys.stderr)
        if args.json:
            _print_json(exc.status.raw)
        return EXIT_TASK
    if args.json:
        _print_json(status.raw)
    if args.download:
        saved = task.download(args.download, progress=not args.quiet)
        if not args.quiet:
            print(f"saved {saved} ({saved.stat().st_size} bytes, sha256 verified)",
                  file=sys.stderr)
    return EXIT_OK


def cmd_tasks_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        tasks = client.dataset(args.ds).tasks(
            tool=args.tool, state=args.state, skip=args.skip, take=args.take
        )
    if args.json:
        _print_json([t.raw for t in tasks])
        return EXIT_OK
    rows = [[t.task_id, t.tool_id, t.state, f"{t.percent}%", t.created_at or ""] for t in tasks]
    _table(rows, ["TASK", "TOOL", "STATE", "DONE", "CREATED"])
    return EXIT_OK


def resolve_task_id(given: str, matches: list[str], *, more: bool = False) -> str:
    """The one task id among ``matches`` (the ids starting with ``given``); a usage error
    when ``given`` is shorter than :data:`MIN_TASK_PREFIX` or matches several."""
    if len(given) < MIN_TASK_PREFIX:
        raise UsageError(
            f"task id {given!r} is too short: give the whole id or at least its first "
            f"{MIN_TASK_PREFIX} characters"
        )
    if len(matches) == 1:
        return matches[0]
    if not matches:
        from procplat.client import NotFound

        raise NotFound(404, f"no task's id starts with '{given}'")
    listed = "\n  ".join(matches) + ("\n  ..." if more else "")
    raise UsageError(f"task id prefix '{given}' is ambiguous; it starts these:\n  {listed}")


def _task(client: Client, args: argparse.Namespace) -> Task:
    """The task handle of ``TASK``: a whole id as given, a prefix resolved by the service's
    ``taskId`` filter on the dataset's task list."""
    dataset = client.dataset(args.ds)
    given = args.task.strip().lower()
    if FULL_TASK_ID.match(given):
        return dataset.task(given)
    if len(given) < MIN_TASK_PREFIX:
        return dataset.task(resolve_task_id(given, []))
    found = [t.task_id for t in dataset.tasks(id_prefix=given, take=PREFIX_MATCHES_SHOWN + 1)]
    return dataset.task(resolve_task_id(
        given, found[:PREFIX_MATCHES_SHOWN], more=len(found) > PREFIX_MATCHES_SHOWN))


def cmd_tasks_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = _task(client, args).status()
    if args.json:
        _print_json(status.raw)
        return EXIT_OK
    lines = {
        "task": status.task_id,
        "tool": f"{status.tool_id} {status.version}",
        "state": status.state,
        "progress": f"{status.percent}% {status.phase or ''}".rstrip(),
        "created": status.created_at, "started": status.started_at,
        "finished": status.finished_at, "error": status.error,
    }
    if status.artifact is not None:
        a = status.artifact
        lines["artifact"] = f"{a.file_name} ({a.size_bytes} bytes, sha256 {a.sha256})"
        lines["expires"] = a.expires_at
    if status.result is not None:
        lines["result"] = json.dumps(status.result, sort_keys=True)
    for key, value in lines.items():
        if value is not None:
            print(f"{key + ':':<10}{value}")
    return EXIT_OK


def cmd_tasks_log(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = _task(client, args)
        for line in task.log(args.since, follow=args.follow):
            print(line, flush=args.follow)
    return EXIT_OK


def cmd_tasks_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = _task(client, args).cancel()
    print(f"{status.task_id}\t{status.state}")
    return EXIT_OK


def cmd_tasks_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        saved = _task(client, args).download(
            args.dest, progress=not args.quiet
        )
    print(saved)
    return EXIT_OK


def cmd_orgs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        orgs = client.orgs()
    if args.json:
        _print_json([o.raw for o in orgs])
        return EXIT_OK
    _table([[o.slug, o.name, o.owner or "", o.created_at or ""] for o in orgs],
           ["ORG", "NAME", "OWNER", "CREATED"])
    return EXIT_OK


def cmd_datasets(args: argparse.Namespace) -> int:
    with _client(args) as client:
        datasets = client.datasets.list(args.org)
    if args.json:
        _print_json([d.raw for d in datasets])
        return EXIT_OK
    rows = [[d.name, d.visibility, "write" if d.can_write else "read", d.created_at or ""]
            for d in datasets]
    _table(rows, ["DATASET", "VISIBILITY", "ACCESS", "CREATED"])
    return EXIT_OK


def cmd_tools(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.ds is None:
            ids = client.tool_ids()
            if args.json:
                _print_json(ids)
            else:
                print("\n".join(ids))
            return EXIT_OK
        tools = client.dataset(args.ds).tools()
    if args.json:
        _print_json([dataclasses.asdict(t) for t in tools])
        return EXIT_OK
    rows = [[t.id, t.version, t.required_access, t.result_extension or "-", t.title] for t in tools]
    _table(rows, ["TOOL", "VERSION", "ACCESS", "ARTIFACT", "TITLE"])
    return EXIT_OK


# --- parser --------------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--url", default=os.environ.get("PROCPLAT_URL") or DEFAULT_URL,
        help=f"service URL (default: $PROCPLAT_URL, else {DEFAULT_URL})",
    )
    group.add_argument(
        "--token", default=os.environ.get("PROCPLAT_TOKEN"),
        help="API token (default: $PROCPLAT_TOKEN; none: anonymous, public datasets only)",
    )
    group.add_argument(
        "--http-timeout", type=float, default=60.0, metavar="S",
        help="seconds to wait for each HTTP answer (default 60)",
    )
    return parent


def _add(
    commands: Subcommands, name: str, parents: list[argparse.ArgumentParser], help: str,
    description: str, example: str,
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name, parents=parents, help=help, description=textwrap.fill(description, 78),
        epilog="example:\n" + example, formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _ds(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--ds", type=dataset_arg, required=required, metavar="ORG/DS",
        help="the dataset, written org/ds",
    )


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="procplat", description="Geospatial processing service on Dask, and its client.",
        epilog="Client commands read --url/--token from $PROCPLAT_URL/$PROCPLAT_TOKEN. Exit "
        "codes: 0 ok, 1 task failed or cancelled, 2 usage, 3 HTTP or transfer error.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the service. Settings come from PROCPLAT_* environment variables "
        "(PROCPLAT_DATA, PROCPLAT_DATABASE_URL, PROCPLAT_DASK_ADDRESS, PROCPLAT_ADMIN_TOKEN, ...).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--no-migrate", action="store_true",
        help="do not upgrade the index schema on start; refuse to start when it is behind "
        "(run procplat db upgrade first)",
    )
    p.add_argument(
        "--role", default="all", choices=["all", "api", "supervisor"],
        help="all (default): serve the API and supervise when this process holds the "
        "supervisor lease; api: serve the API only; supervisor: supervise (when it holds the "
        "lease) and answer /sys/health only",
    )
    p.set_defaults(run=serve)
    add_db_commands(commands)

    p = _add(
        commands, "token", [], "manage API tokens on the service's host",
        "Tokens of users, handled in the service's own index (no HTTP, no token needed); see "
        "procplat token reset --help.",
        "  procplat token reset admin",
    )
    sub = p.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    q = _add(
        sub, "reset", [], "issue a new token for a user, revoking the others",
        "Issue a new API token for USER and print it on stdout; the user's earlier tokens stop "
        "working (in a running service within a second). It writes to the index the "
        "service's settings name (PROCPLAT_DATA, else ./procplat-data; PROCPLAT_DATABASE_URL; "
        "PROCPLAT_CONFIG), so run it where the service runs, with the same settings. This is "
        "how a lost admin token is recovered.",
        "  procplat token reset admin\n"
        "  export PROCPLAT_ADMIN_TOKEN=$(procplat token reset admin)   # in a shell",
    )
    q.add_argument("username", metavar="USER", help="the user, e.g. admin")
    q.set_defaults(run=token_reset)

    conn = [_connection_options()]
    p = _add(
        commands, "upload", conn, "upload a file into a dataset",
        "Upload LOCAL (a file, or - for stdin) to PATH in the dataset, streamed from disk. "
        "PATH defaults to LOCAL's file name; a PATH ending in / is a folder. Replaces an "
        "existing file. Prints the indexed entry: path, type, size, sha256.",
        "  procplat upload --ds acme/survey site.tif ortho/site.tif",
    )
    p.add_argument("local", metavar="LOCAL", help="the file to upload, or - for stdin")
    p.add_argument("path", metavar="PATH", nargs="?", help="where in the dataset")
    _ds(p)
    _json_flag(p)
    p.set_defaults(run=cmd_upload)

    p = _add(
        commands, "submit", conn, "submit a task",
        "Submit a task running TOOL on the dataset and print its id on stdout. With --wait, "
        "follow it (a progress bar with percent and phase, and its log lines, on stderr) "
        "until it ends; exit 1 if it failed or was cancelled. --download DEST implies "
        "--wait and saves the artifact (resumable, sha256-verified). --param values are "
        "JSON when they parse, else strings; key=@file.json reads a JSON file.",
        "  procplat submit bulk-download --ds acme/survey --param 'paths=[\"ortho\"]' \\\n"
        "      --param archiveName=ortho --download ortho.zip\n"
        "  procplat submit raster-export --ds acme/survey --path ortho/site.tif \\\n"
        "      --param formula=NDVI --param colormap=rdylgn --wait",
    )
    p.add_argument("tool", metavar="TOOL", help="tool id, e.g. bulk-download (see procplat tools)")
    _ds(p)
    p.add_argument(
        "--param", "-p", type=param_arg, action="append", metavar="KEY=VALUE",
        help="a tool parameter (repeatable)",
    )
    p.add_argument("--path", help="the entry the tool works on (for tools taking a path)")
    p.add_argument("--version", help="tool version (default: the highest)")
    p.add_argument("--force", action="store_true", help="run again even if an equal task exists")
    p.add_argument("--wait", action="store_true", help="follow the task until it ends")
    p.add_argument("--download", metavar="DEST", help="wait, then save the artifact to DEST")
    p.add_argument("--timeout", type=float, metavar="S", help="give up waiting after S seconds")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or messages")
    _json_flag(p)
    p.set_defaults(run=cmd_submit)

    p = _add(
        commands, "tasks", [], "list, inspect, follow, cancel and download tasks",
        "Manage the tasks of a dataset; see procplat tasks COMMAND --help.",
        "  procplat tasks list --ds acme/survey --state Processing",
    )
    sub = p.add_subparsers(dest="tasks_command", required=True, metavar="COMMAND")
    q = _add(
        sub, "list", conn, "the dataset's tasks, newest first",
        "List the dataset's tasks, newest first: id, tool, state, percent done, created.",
        "  procplat tasks list --ds acme/survey --tool bulk-download --take 10",
    )
    _ds(q)
    q.add_argument("--tool", help="only this tool")
    q.add_argument("--state", help=f"only this state ({', '.join(TaskState)})")
    q.add_argument("--skip", type=int, default=0)
    q.add_argument("--take", type=int, default=50, help="at most this many (1..200)")
    _json_flag(q)
    q.set_defaults(run=cmd_tasks_list)
    for name, run, help, description, example in [
        ("status", cmd_tasks_status, "a task's state, progress, error and artifact",
         "Show a task's state, progress, error, artifact and result.",
         "  procplat tasks status --ds acme/survey 0b6f12ab"),
        ("log", cmd_tasks_log, "a task's log lines",
         "Print a task's log lines (those still kept: the log is a ring buffer). --follow "
         "keeps printing new lines until the task ends.",
         "  procplat tasks log --ds acme/survey --follow 0b6f12ab | head -1"),
        ("cancel", cmd_tasks_cancel, "cancel a task (or delete a finished one)",
         "Cancel an active task (its work stops within seconds), or mark a finished one "
         "Deleted and purge its artifact. Prints the id and the new state.",
         "  procplat tasks cancel --ds acme/survey 0b6f12ab"),
        ("download", cmd_tasks_download, "save a task's artifact",
         "Download a task's artifact to DEST (a file, or a folder to keep its name) through "
         "DEST.part, resuming an interrupted download, and verify its sha256.",
         "  procplat tasks download --ds acme/survey 0b6f12ab ortho.zip"),
    ]:
        q = _add(sub, name, conn, help, description, example)
        q.add_argument("task", metavar="TASK", help="the task id, or its first 8 or more "
                       "characters (as the dashboard and the progress bar show it)")
        _ds(q)
        if name == "status":
            _json_flag(q)
        elif name == "log":
            q.add_argument("--follow", "-f", action="store_true", help="wait for new lines")
            q.add_argument("--since", type=int, default=0, metavar="N",
                           help="start at line N (a cursor)")
        elif name == "download":
            q.add_argument("dest", metavar="DEST", help="file or folder to save to")
            q.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        q.set_defaults(run=run)

    p = _add(
        commands, "orgs", conn, "the orgs you may see",
        "List the orgs you may see: those with a public dataset, and your own (every org for "
        "an admin): slug, name, owner, created.",
        "  procplat orgs --json",
    )
    _json_flag(p)
    p.set_defaults(run=cmd_orgs)

    p = _add(
        commands, "datasets", conn, "the datasets you may see",
        "List the datasets you may see, of one org (--org) or of every org `procplat orgs` "
        "lists: org/ds, visibility, your access (read or write), created. Members see all of "
        "their orgs' datasets, everyone else the public ones.",
        "  procplat datasets --org acme",
    )
    p.add_argument("--org", help="only this org's datasets")
    _json_flag(p)
    p.set_defaults(run=cmd_datasets)

    p = _add(
        commands, "tools", conn, "the tools tasks can run",
        "List the tools. Without --ds, their ids (anonymous, from /sys/features); with --ds, "
        "id, version, required access, artifact type and title (--json adds each tool's "
        "parameter schema).",
        "  procplat tools --ds acme/survey --json",
    )
    _ds(p, required=False)
    _json_flag(p)
    p.set_defaults(run=cmd_tools)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run in (serve, token_reset) or args.command == "db":
        return int(args.run(args))
    from procplat.client import HTTPError, ProcplatError, TaskError

    try:
        code = int(args.run(args))
        sys.stdout.flush()  # inside the try: a reader that went away is seen here, not at exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"procplat: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TaskError as exc:
        print(f"procplat: task {exc.status.state}: {exc.message}", file=sys.stderr)
        return EXIT_TASK
    except TimeoutError as exc:
        print(f"procplat: {exc}", file=sys.stderr)
        return EXIT_TASK
    except HTTPError as exc:
        print(f"procplat: error: {exc}", file=sys.stderr)
        if exc.details:
            for detail in exc.details if isinstance(exc.details, list) else [exc.details]:
                print(f"  {json.dumps(detail) if not isinstance(detail, str) else detail}",
                      file=sys.stderr)
        return EXIT_HTTP
    except (ProcplatError, OSError) as exc:
        print(f"procplat: error: {exc}", file=sys.stderr)
        return EXIT_HTTP
    except KeyboardInterrupt:
        print("procplat: interrupted (a submitted task keeps running)", file=sys.stderr)
        return 130


def _stdout_closed() -> int:
    """The reader of stdout went away (``procplat tasks log --follow ... | head -1``): stop
    quietly with success, as Unix tools do. What is still buffered goes to /dev/null, so the
    interpreter's own flush at exit does not complain a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
