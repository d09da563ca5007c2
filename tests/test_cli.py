"""The ``procplat`` command's client side, run as a real process against the real service:
upload, submit --wait --download, tasks list/status/log/cancel/download, tools, ``--help`` of
every command, ``--param`` parsing and the exit codes (0 ok, 1 task failed or cancelled,
2 usage, 3 HTTP error).

The CLI is a thin layer over :mod:`procplat.client` (tested on every server kind in
``test_client.py``), so these tests run on the LocalCluster service only."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from procplat import client as pc
from procplat.cli import UsageError, build_parser, main, param_arg, resolve_task_id
from tests.harness import World, big_text
from tests.harness.cli import cli_help, procplat

ON_ONE_SERVER = pytest.mark.parametrize("server", ["local-cluster"], indirect=True)

COMMANDS = [
    [], ["serve"], ["upload"], ["submit"], ["tasks"], ["tasks", "list"], ["tasks", "status"],
    ["tasks", "log"], ["tasks", "cancel"], ["tasks", "download"], ["tools"], ["orgs"],
    ["datasets"], ["token"], ["token", "reset"],
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c) or "procplat")
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    shown = cli_help(command)
    assert shown.startswith(f"usage: procplat {' '.join(command)}".rstrip())
    if command and command != ["serve"]:
        assert "example:\n  procplat " in shown, shown
    if command in (["upload"], ["submit"], ["tools"], ["tasks", "log"]):
        assert "$PROCPLAT_URL" in shown and "$PROCPLAT_TOKEN" in shown


def test_help_runs_as_a_program_and_serve_is_unchanged() -> None:
    done = procplat("--help")
    assert done.returncode == 0 and "serve" in done.stdout and "submit" in done.stdout
    serve = build_parser().parse_args(["serve", "--port", "9000"])
    assert (serve.host, serve.port, serve.log_level) == ("127.0.0.1", 9000, "info")


def test_param_values_are_json_when_they_parse_else_strings(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{"a": [1, 2]}')
    assert param_arg("n=3") == ("n", 3)
    assert param_arg("force=true") == ("force", True)
    assert param_arg('paths=["a", "b"]') == ("paths", ["a", "b"])
    assert param_arg("fileName=out.tif") == ("fileName", "out.tif")
    assert param_arg("formula=a=b") == ("formula", "a=b")
    assert param_arg('name="2024"') == ("name", "2024")
    assert param_arg(f"x=@{tmp_path / 'p.json'}") == ("x", {"a": [1, 2]})


@pytest.mark.parametrize("args", [
    ["submit", "bulk-download"],                                       # no --ds
    ["submit", "bulk-download", "--ds", "no-slash"],
    ["submit", "bulk-download", "--ds", "a/b", "--param", "novalue"],
    ["submit", "bulk-download", "--ds", "a/b", "--param", "k=@/nonexistent.json"],
    ["submit", "bulk-download", "--ds", "a/b", "-p", "k=1", "-p", "k=2"],
    ["upload", "--ds", "a/b", "/nonexistent/file.bin"],
    ["tasks"],
    ["frobnicate"],
], ids=lambda a: " ".join(a))
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code: int | str | None
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code  # argparse
    assert code == 2
    assert "usage: procplat" in capsys.readouterr().err


@ON_ONE_SERVER
def test_upload_submit_wait_download_and_follow_tasks(world: World, tmp_path: Path) -> None:
    ds = f"{world.org}/{world.ds}"
    local = tmp_path / "big.txt"
    local.write_bytes(big_text(3_000_000))
    done = procplat("upload", "--ds", ds, str(local), "in/", "--json", world=world)
    assert done.returncode == 0, done.stderr
    entry = json.loads(done.stdout)
    assert entry["path"] == "in/big.txt" and entry["hash"] == sha256(local)

    piped = procplat("upload", "--ds", ds, "-", "in/piped.txt", world=world, stdin="piped\n" * 1000)
    assert piped.returncode == 0, piped.stderr
    path, _type, size, digest = piped.stdout.strip().split("\t")
    assert (path, size) == ("in/piped.txt", "6000")
    assert digest == hashlib.sha256(b"piped\n" * 1000).hexdigest()

    dest = tmp_path / "out" / "cli.zip"
    dest.parent.mkdir()
    done = procplat(
        "submit", "bulk-download", "--ds", ds, "--param", 'paths=["in"]',
        "--param", "archiveName=cli", "--download", str(dest), world=world,
    )
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert len(task_id) == 36, done.stdout
    assert "100%" in done.stderr and "Archive complete" in done.stderr, done.stderr
    assert "sha256 verified" in done.stderr
    status = world.user.get(f"{world.tasks_url}/{task_id}").json()
    assert sha256(dest) == status["artifact"]["sha256"]

    listed = procplat("tasks", "list", "--ds", ds, world=world)
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[0].split() == ["TASK", "TOOL", "STATE", "DONE", "CREATED"]
    assert f"{task_id}  bulk-download  Succeeded  100%" in listed.stdout, listed.stdout

    shown = procplat("tasks", "status", "--ds", ds, task_id, world=world)
    assert shown.returncode == 0 and "state:    Succeeded" in shown.stdout, shown.stdout
    assert f"cli.zip ({status['artifact']['sizeBytes']} bytes" in shown.stdout
    as_json = procplat("tasks", "status", "--ds", ds, task_id, "--json", world=world)
    assert json.loads(as_json.stdout)["artifact"]["sha256"] == status["artifact"]["sha256"]

    log = procplat("tasks", "log", "--ds", ds, task_id, "--follow", world=world)
    assert log.returncode == 0 and "Archive complete" in log.stdout.splitlines()[-1]
    cursor = len(log.stdout.splitlines())
    assert procplat("tasks", "log", "--ds", ds, task_id, "--since", str(cursor),
                    world=world).stdout == ""

    again = procplat("tasks", "download", "--ds", ds, task_id, str(tmp_path), "-q", world=world)
    assert again.returncode == 0 and sha256(tmp_path / "cli.zip") == sha256(dest)

    tools = procplat("tools", "--url", world.server.url)  # anonymous, no dataset
    assert tools.returncode == 0 and "bulk-download" in tools.stdout.split()
    tools = procplat("tools", "--ds", ds, world=world)
    assert any(line.split()[:4] == ["bulk-download", "1", "Read", ".zip"]
               for line in tools.stdout.splitlines()), tools.stdout


@ON_ONE_SERVER
def test_exit_codes_for_failed_and_cancelled_tasks_and_http_errors(
    world: World, tmp_path: Path
) -> None:
    ds = f"{world.org}/{world.ds}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    world.upload("bad.tar.gz", buffer.getvalue())
    failed = procplat("submit", "archive-extract", "--ds", ds, "-p", "sourcePath=bad.tar.gz",
                      "--wait", "-q", world=world)
    assert failed.returncode == 1, failed.stderr
    assert "Failed" in failed.stderr and "escape.txt" in failed.stderr

    world.upload("slow/big.txt", big_text(60_000_000))
    task_id = world.submit("bulk-download", {"paths": ["slow"]}).json()["taskId"]
    world.wait(task_id, states=("Processing",))
    cancelled = procplat("tasks", "cancel", "--ds", ds, task_id, world=world)
    assert cancelled.returncode == 0 and cancelled.stdout.split() == [task_id, "Deleted"]
    gone = procplat("tasks", "download", "--ds", ds, task_id, str(tmp_path), world=world)
    assert gone.returncode == 1 and "Deleted" in gone.stderr

    missing = procplat("submit", "bulk-download", "--ds", f"{world.org}/nope", world=world)
    assert missing.returncode == 3 and "HTTP 404" in missing.stderr and "nope" in missing.stderr
    bad = procplat("submit", "bulk-download", "--ds", ds, "-p", "pathz=[]", world=world)
    assert bad.returncode == 3 and "HTTP 400: invalid parameters" in bad.stderr, bad.stderr
    denied = procplat("tasks", "list", "--ds", ds, "--token", "wrong", world=world)
    assert denied.returncode == 3 and "HTTP 401: invalid token" in denied.stderr
    unreachable = procplat("tools", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 3 and "Connection refused" in unreachable.stderr
    timed_out = procplat("submit", "bulk-download", "--ds", ds, "-p", 'paths=["slow"]',
                         "--force", "--wait", "--timeout", "0.3", "-q", world=world)
    assert timed_out.returncode == 1 and "after 0.3 s" in timed_out.stderr, timed_out.stderr
    world.user.delete(f"{world.tasks_url}/{timed_out.stdout.strip()}")


@ON_ONE_SERVER
def test_tasks_log_follow_into_head_exits_quietly_when_head_closes_the_pipe(world: World) -> None:
    ds = f"{world.org}/{world.ds}"
    world.upload("slow/big.txt", big_text(60_000_000))
    task_id = world.submit("bulk-download", {"paths": ["slow"]}).json()["taskId"]
    world.wait(task_id, states=("Processing",))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCPLAT_")}
    env |= {"PROCPLAT_URL": world.server.url, "PROCPLAT_TOKEN": world.token}
    follow = subprocess.Popen(  # a unique 8-character prefix, resolved by the service
        [sys.executable, "-m", "procplat.cli", "tasks", "log", "--ds", ds, "--follow",
         task_id[:8]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        stdin=subprocess.DEVNULL,
    )
    head = subprocess.Popen(["head", "-1"], stdin=follow.stdout, stdout=subprocess.PIPE)
    assert follow.stdout is not None
    follow.stdout.close()  # head holds the pipe's only reading end
    first, _ = head.communicate(timeout=60)
    assert head.returncode == 0 and first.decode().startswith("[")
    # head is gone; the task's next line ("Cancelled ...") meets a closed pipe
    assert world.user.delete(f"{world.tasks_url}/{task_id}").status_code == 200
    _, errors = follow.communicate(timeout=60)
    assert follow.returncode == 0, errors
    assert errors.decode() == ""


def test_a_task_id_prefix_resolves_to_its_one_task_or_is_a_usage_error() -> None:
    ids = ["0b6f12ab-1111-4000-8000-000000000000", "0b6f12ab-2222-4000-8000-000000000000"]
    assert resolve_task_id("0b6f12ab-1", ids[:1]) == ids[0]
    with pytest.raises(UsageError) as ambiguous:
        resolve_task_id("0b6f12ab", ids)
    assert "ambiguous" in str(ambiguous.value) and all(i in str(ambiguous.value) for i in ids)
    with pytest.raises(UsageError, match=r"\.\.\.$"):
        resolve_task_id("0b6f12ab", ids, more=True)  # more matches than are listed
    with pytest.raises(UsageError, match="at least its first 8 characters"):
        resolve_task_id("0b6f12a", ids)
    with pytest.raises(pc.NotFound, match="no task's id starts with '0b6f12ac'"):
        resolve_task_id("0b6f12ac", [])


@ON_ONE_SERVER
def test_tasks_commands_take_a_unique_prefix_of_8_or_more_characters(world: World) -> None:
    ds = f"{world.org}/{world.ds}"
    world.upload("p.txt", b"p")
    task_id = world.submit("bulk-download", {"paths": ["p.txt"]}).json()["taskId"]
    world.wait(task_id)
    for given in (task_id[:8], task_id[:13].upper(), task_id):
        shown = procplat("tasks", "status", "--ds", ds, given, world=world)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[0] == f"task:     {task_id}"
    short = procplat("tasks", "log", "--ds", ds, task_id[:7], world=world)
    assert short.returncode == 2 and "at least its first 8 characters" in short.stderr
    other = "f" * 8 if not task_id.startswith("f") else "0" * 8
    unknown = procplat("tasks", "cancel", "--ds", ds, other, world=world)
    assert unknown.returncode == 3 and f"no task's id starts with '{other}'" in unknown.stderr

    found = world.user.get(world.tasks_url, params={"taskId": task_id[:8]}).json()
    assert [t["taskId"] for t in found] == [task_id]
    assert world.user.get(world.tasks_url, params={"taskId": other}).json() == []
    bad = world.user.get(world.tasks_url, params={"taskId": "%_"})
    assert bad.status_code == 400 and "taskId" in bad.json()["error"]
