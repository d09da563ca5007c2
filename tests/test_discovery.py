"""Discovery over real HTTP: ``GET /orgs`` and ``GET /orgs/{org}/ds`` list what the caller
may see (anonymous, non-member, member, admin), paged like ``/sys/tasks``; the client's
``orgs()`` / ``datasets.list()`` and the CLI's ``procplat orgs`` / ``procplat datasets`` on
top of them; the 404 of a private dataset asked for without a token says so; an unknown tool
id lists the known ones and suggests the closest."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from procplat import client as pc
from tests.conftest import LiveServer, World
from tests.harness.cli import procplat

NO_TOKEN = "(no token was sent; private datasets are visible to members only)"


def _user(live: LiveServer, name: str) -> httpx.Client:
    created = live.client().post("/users", json={"username": name})
    assert created.status_code == 201, created.text
    return live.client(created.json()["token"])


def _made(client: httpx.Client, url: str, body: dict[str, Any]) -> None:
    response = client.post(url, json=body)
    assert response.status_code == 201, response.text


def _listed(client: httpx.Client, url: str, **params: Any) -> tuple[list[str], dict[str, Any]]:
    response = client.get(url, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"items", "total", "skip", "take"}
    return [item["slug"] for item in body["items"]], body


@pytest.fixture
def orgs(make_server: Any) -> dict[str, Any]:
    """alice owns acme (private + public dataset) and vault (private only); bob owns bobs
    (private); carol belongs to nothing; dave is a member of vault."""
    live = make_server()
    alice, bob, carol, dave = (_user(live, n) for n in ("alice", "bob", "carol", "dave"))
    _made(alice, "/orgs", {"slug": "acme", "name": "Acme Surveys"})
    _made(alice, "/orgs/acme/ds", {"slug": "plans", "visibility": "private"})
    _made(alice, "/orgs/acme/ds", {"slug": "open-data", "visibility": "public"})
    _made(alice, "/orgs", {"slug": "vault"})
    _made(alice, "/orgs/vault/ds", {"slug": "secret", "visibility": "private"})
    _made(alice, "/orgs/vault/members", {"username": "dave"})
    _made(bob, "/orgs", {"slug": "bobs"})
    _made(bob, "/orgs/bobs/ds", {"slug": "b1", "visibility": "private"})
    return {"live": live, "anonymous": live.client(None), "admin": live.client(),
            "alice": alice, "bob": bob, "carol": carol, "dave": dave}


def test_orgs_and_datasets_list_what_each_caller_may_see(orgs: dict[str, Any]) -> None:
    seen = {who: _listed(orgs[who], "/orgs")[0]
            for who in ("anonymous", "carol", "alice", "bob", "dave", "admin")}
    assert seen == {
        "anonymous": ["acme"],                      # orgs with a public dataset
        "carol": ["acme"],                          # a non-member: the same
        "alice": ["acme", "vault"],                 # her own
        "bob": ["acme", "bobs"],
        "dave": ["acme", "vault"],                  # a member of vault
        "admin": ["acme", "bobs", "vault"],         # everything
    }
    items = orgs["anonymous"].get("/orgs").json()["items"]
    assert items == [{"slug": "acme", "name": "Acme Surveys", "owner": "alice",
                      "createdAt": items[0]["createdAt"]}]

    for who, expected in [("anonymous", ["open-data"]), ("carol", ["open-data"]),
                          ("bob", ["open-data"]), ("alice", ["open-data", "plans"]),
                          ("admin", ["open-data", "plans"])]:
        slugs, body = _listed(orgs[who], "/orgs/acme/ds")
        assert slugs == expected, who
        assert body["total"] == len(expected)
        assert all(d["org"] == "acme" and d["canWrite"] == (who in ("alice", "admin"))
                   for d in body["items"]), (who, body)
    assert {d["slug"]: d["visibility"] for d in orgs["alice"].get("/orgs/acme/ds").json()["items"]} \
        == {"open-data": "public", "plans": "private"}
    assert _listed(orgs["dave"], "/orgs/vault/ds")[0] == ["secret"]

    # An org none of whose datasets the caller may see is as invisible as it is in /orgs.
    hidden = orgs["anonymous"].get("/orgs/vault/ds")
    assert hidden.status_code == 404
    assert hidden.json()["error"] == f"org 'vault' not found {NO_TOKEN}"
    for who in ("carol", "bob"):
        response = orgs[who].get("/orgs/vault/ds")
        assert response.status_code == 404 and response.json()["error"] == "org 'vault' not found"
    assert orgs["carol"].get("/orgs/nowhere/ds").json()["error"] == "org 'nowhere' not found"


def test_org_and_dataset_lists_page_with_skip_and_take(orgs: dict[str, Any]) -> None:
    alice = orgs["alice"]
    for n in range(5):
        _made(alice, "/orgs/vault/ds", {"slug": f"d{n}"})
    everything = ["d0", "d1", "d2", "d3", "d4", "secret"]
    assert _listed(alice, "/orgs/vault/ds")[0] == everything
    slugs, body = _listed(alice, "/orgs/vault/ds", skip=2, take=3)
    assert slugs == ["d2", "d3", "d4"] and (body["total"], body["skip"], body["take"]) == (6, 2, 3)
    assert _listed(alice, "/orgs/vault/ds", skip=5, take=3)[0] == ["secret"]
    assert _listed(alice, "/orgs/vault/ds", skip=9)[0] == []
    assert _listed(alice, "/orgs/vault/ds", take=0)[1]["take"] == 1      # clamped to 1..200
    assert _listed(alice, "/orgs/vault/ds", take=10**6)[1]["take"] == 200
    assert _listed(alice, "/orgs/vault/ds", skip=-4)[1]["skip"] == 0
    slugs, body = _listed(orgs["admin"], "/orgs", skip=1, take=1)
    assert slugs == ["bobs"] and body["total"] == 3
    for bad in ({"take": "many"}, {"skip": "1.5x"}):
        response = alice.get("/orgs", params=bad)
        assert response.status_code == 400 and "must be an integer" in response.json()["error"]


def test_a_private_dataset_asked_for_without_a_token_says_none_was_sent(world: World) -> None:
    anonymous = world.server.client(None)
    for url in (world.ds_url, f"{world.ds_url}/entries", f"{world.tasks_url}",
                f"/orgs/{world.org}/ds/no-such-ds"):
        response = anonymous.get(url)
        assert response.status_code == 404, url
        # the same words whether the dataset exists or not: nothing is revealed
        assert response.json()["error"].endswith(NO_TOKEN), response.json()
    stranger = world.server.client(world.admin.post(
        "/users", json={"username": f"{world.username}-x"}).json()["token"])
    response = stranger.get(world.ds_url)
    assert response.status_code == 404
    assert response.json()["error"] == f"dataset '{world.org}/{world.ds}' not found"


def test_an_unknown_tool_lists_the_known_ones_and_suggests_the_closest(world: World) -> None:
    response = world.submit("raster-exprot", {})
    assert response.status_code == 400
    body = response.json()
    assert "unknown tool 'raster-exprot' (did you mean 'raster-export'? known: " in body["error"]
    assert "align-raster" in body["error"] and "bulk-download" in body["error"]
    known = world.server.client(None).get("/sys/features").json()["taskTools"]
    assert body["error"].endswith(f"known: {', '.join(sorted(known))})")
    far = world.submit("zzzz", {}).json()
    assert "did you mean" not in far["error"] and "known: align-raster" in far["error"]


def test_openapi_describes_the_listing_routes(server: LiveServer) -> None:
    paths = server.client(None).get("/openapi.json").json()["paths"]
    for path in ("/orgs", "/orgs/{org}/ds"):
        listed = paths[path]["get"]
        assert {p["name"] for p in listed["parameters"] if p["in"] == "query"} == {"skip", "take"}
        assert "post" in paths[path]
    task_filters = {p["name"] for p in paths["/orgs/{org}/ds/{ds}/tasks"]["get"]["parameters"]}
    assert "taskId" in task_filters


def test_client_and_cli_list_orgs_and_datasets_following_pages(orgs: dict[str, Any]) -> None:
    live = orgs["live"]
    token = orgs["alice"].headers["authorization"].removeprefix("Bearer ")
    for n in range(203):  # more than one page of the service (200)
        _made(orgs["alice"], "/orgs/vault/ds", {"slug": f"v{n:03d}"})
    with pc.Client(live.url, token) as alice, pc.Client(live.url) as anonymous:
        assert [o.slug for o in alice.orgs()] == ["acme", "vault"]
        assert [(o.slug, o.owner) for o in anonymous.orgs()] == [("acme", "alice")]
        assert [o.slug for o in alice.orgs(skip=1)] == ["vault"]
        vault = alice.datasets.list("vault")
        assert [d.slug for d in vault] == ["secret"] + [f"v{n:03d}" for n in range(203)]
        assert vault[0] == alice.datasets.list("vault", take=1)[0]
        assert [d.slug for d in alice.datasets.list("vault", skip=199, take=3)] == [
            "v198", "v199", "v200"]
        mine = alice.datasets.list()
        assert [d.name for d in mine[:3]] == ["acme/open-data", "acme/plans", "vault/secret"]
        assert len(mine) == 206 and all(d.can_write for d in mine)
        assert [d.name for d in alice.datasets.list(skip=1, take=2)] == ["acme/plans", "vault/secret"]
        public = anonymous.datasets.list()
        assert [(d.name, d.visibility, d.can_write) for d in public] == [
            ("acme/open-data", "public", False)]
        assert anonymous.dataset(public[0].name).info()["slug"] == "open-data"
        with pytest.raises(pc.NotFound, match="no token was sent"):
            anonymous.datasets.list("vault")

    env = {"PROCPLAT_URL": live.url}
    shown = procplat("orgs", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split("\n")[0].split() == ["ORG", "NAME", "OWNER", "CREATED"]
    assert [line.split()[0] for line in shown.stdout.splitlines()[1:]] == ["acme"]
    shown = procplat("datasets", "--json", env=env | {"PROCPLAT_TOKEN": token})
    assert shown.returncode == 0, shown.stderr
    assert len(json.loads(shown.stdout)) == 206
    shown = procplat("datasets", "--org", "acme", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        shown.stdout.splitlines()[0], shown.stdout.splitlines()[1]]
    assert shown.stdout.splitlines()[1].split()[:3] == ["acme/open-data", "public", "read"]
    hidden = procplat("datasets", "--org", "vault", env=env)
    assert hidden.returncode == 3 and "no token was sent" in hidden.stderr
