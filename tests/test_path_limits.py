"""Names and paths the file system cannot hold, and names that turn into paths.

A path within the schema's 1024 characters may still be too long for the disk: sixteen names
of 63 four-byte characters are 4047 UTF-8 bytes, and with the dataset root in front more than
Linux's ``PATH_MAX``. Every route and tool parameter that reaches the disk answers 400 naming
the limit, before anything is queued (the one safe-path function checks it). And a name that
Unicode compatibility folds into a separator or a dot-segment (``／``, ``‥``) never reaches
a client as a path in ``Content-Disposition``'s ASCII ``filename``.
"""

from __future__ import annotations

import errno
import io
import os
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import pytest

from tests.harness import World, write_geotiff
from tools.runtime.safepath import (
    MAX_NAME_BYTES,
    UnsafePath,
    normalize_relpath,
    output_file_name,
    path_limits,
    resolve_in_dataset,
)

FACE = "\N{GRINNING FACE}"  # four bytes in UTF-8
NAME_252 = FACE * 63
LONG = "/".join([NAME_252] * 16)  # 1023 characters, 4047 bytes: within the schemas' 1024
LONG_TIF = "/".join([NAME_252] * 15 + [FACE * 60 + ".tif"])  # 1024 characters, 4039 bytes
PATH_LIMIT = "paths in this dataset may have at most"
NAME_LIMIT = "a name may have at most 255 bytes"


def files_url(world: World, rel: str) -> str:
    return f"{world.ds_url}/files/{quote(rel)}"


def tasks(world: World) -> list[Any]:
    return world.user.get(world.tasks_url).json()


def write_raster(path: Path, size: int = 64) -> bytes:
    data = (np.arange(size * size * 3, dtype=np.uint32) % 251).astype(np.uint8)
    return write_geotiff(path, data.reshape(3, size, size), pixel=0.1).read_bytes()


def disposition(header: str) -> tuple[str, str]:
    """The ASCII ``filename`` and the decoded ``filename*`` (the fallback when absent)."""
    fallback = header.split('filename="', 1)[1].split('"', 1)[0]
    exact = fallback
    if "filename*=UTF-8''" in header:
        exact = unquote(header.split("filename*=UTF-8''", 1)[1].split(";", 1)[0], errors="strict")
    return fallback, exact


def assert_plain_base_name(fallback: str) -> None:
    assert fallback and fallback.isascii(), fallback
    assert not any(c in fallback for c in '/\\"%'), fallback
    assert ".." not in fallback and not fallback.startswith("."), fallback


# --- the safe-path function on the boundary -------------------------------------------------


@pytest.mark.parametrize("name", ["a" * 255, FACE * 63 + "abc", "é" * 127 + "a"])
def test_a_name_of_255_bytes_is_accepted(name: str) -> None:
    assert len(name.encode()) == MAX_NAME_BYTES
    assert normalize_relpath(f"folder/{name}") == f"folder/{name}"


@pytest.mark.parametrize("name", ["a" * 256, FACE * 64, "é" * 128])
def test_a_name_of_256_bytes_is_refused_naming_the_limit(name: str) -> None:
    with pytest.raises(UnsafePath, match="is 256 bytes long; a name may have at most 255 bytes"):
        normalize_relpath(f"folder/{name}/x.tif")


def path_of_bytes(n: int) -> str:
    """A relative path of exactly ``n`` UTF-8 bytes in few characters (the index allows 1024):
    names of 63 four-byte characters, the last one topped up with ASCII."""
    parts: list[str] = []
    while n > 253:
        parts.append(NAME_252)
        n -= 253
    parts.append(FACE * (n // 4) + "f" * (n % 4))
    return "/".join(parts)


def test_the_path_limit_is_exactly_what_the_file_system_accepts(tmp_path: Path) -> None:
    root = tmp_path / ("r" * 200) / "ds"  # a long root leaves fewer bytes to the dataset
    root.mkdir(parents=True)
    limits = path_limits(root)
    assert limits.name_bytes == os.pathconf(root, "PC_NAME_MAX") == 255
    assert limits.path_bytes == os.pathconf(root, "PC_PATH_MAX") - 2 - len(os.fsencode(root))

    longest = path_of_bytes(limits.path_bytes)
    assert len(longest.encode()) == limits.path_bytes
    target = resolve_in_dataset(root, longest)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"fits")  # the OS takes it ...
    assert (root / longest).read_bytes() == b"fits"

    one_more = longest + "f"
    with pytest.raises(OSError) as refused:  # ... and not one byte more
        (root / one_more).write_bytes(b"")
    assert refused.value.errno == errno.ENAMETOOLONG
    with pytest.raises(UnsafePath, match=f"is {limits.path_bytes + 1} bytes long .*"
                                         f"at most {limits.path_bytes} bytes"):
        resolve_in_dataset(root, one_more)


def test_the_root_counts_as_it_resolves_through_a_symlink(tmp_path: Path) -> None:
    deep = tmp_path / ("r" * 200) / ("s" * 200)
    deep.mkdir(parents=True)
    (tmp_path / "ds").symlink_to(deep)
    assert path_limits(tmp_path / "ds") == path_limits(deep)


# --- every user path that reaches the disk, over HTTP ---------------------------------------


@pytest.mark.parametrize("method", ["PUT", "GET", "HEAD", "DELETE"])
def test_file_routes_refuse_a_path_too_long_for_the_file_system(world: World, method: str) -> None:
    assert len(LONG) <= 1024 and len(LONG.encode()) == 4047  # within the documented limits
    response = world.user.request(method, files_url(world, LONG), content=b"x" if method == "PUT" else None)
    assert response.status_code == 400, response.text
    if method != "HEAD":
        error = response.json()["error"]
        assert "path is 4047 bytes long" in error and PATH_LIMIT in error, error
    assert [p.name for p in world.root.iterdir()] == [".ddb"]
    assert world.user.get(f"{world.ds_url}/entries").json() == []


def test_file_routes_refuse_a_name_too_long_naming_the_limit(world: World) -> None:
    response = world.user.put(files_url(world, f"a/{FACE * 64}.txt"), content=b"x")
    assert response.status_code == 400, response.text
    assert NAME_LIMIT in response.json()["error"]


@pytest.mark.parametrize("query", ["entries", "download"])
def test_path_queries_refuse_a_path_too_long(world: World, query: str) -> None:
    response = world.user.get(f"{world.ds_url}/{query}", params={"path": LONG})
    assert response.status_code == 400, response.text
    assert PATH_LIMIT in response.json()["error"]


# (tool, params) with LONG in one path parameter each; the other paths exist where the tool
# checks them first
TOOL_PATHS = [
    ("raster-export", {"path": LONG}),
    ("build", {"path": LONG}),
    ("bulk-download", {"paths": ["ok.txt", LONG]}),
    ("archive-extract", {"sourcePath": LONG}),
    ("archive-extract", {"sourcePath": "pack.zip", "destPath": LONG}),
    ("align-raster", {"sourcePath": LONG, "referencePath": "r.tif", "outputPath": "o.tif"}),
    ("align-raster", {"sourcePath": "s.tif", "referencePath": LONG, "outputPath": "o.tif"}),
    ("align-raster", {"sourcePath": "s.tif", "referencePath": "r.tif", "outputPath": LONG_TIF}),
    ("merge-multispectral", {"paths": ["s.tif", LONG], "outputPath": "o.tif"}),
    ("merge-multispectral", {"paths": ["s.tif", "r.tif"], "outputPath": LONG_TIF}),
]
TOOL_PATH_IDS = ["raster-export-path", "build-path", "bulk-download-paths",
                 "archive-extract-sourcePath", "archive-extract-destPath",
                 "align-raster-sourcePath", "align-raster-referencePath", "align-raster-outputPath",
                 "merge-multispectral-paths", "merge-multispectral-outputPath"]


@pytest.mark.parametrize(("tool", "params"), TOOL_PATHS, ids=TOOL_PATH_IDS)
def test_tool_path_parameters_refuse_a_path_too_long_before_queueing(
    world: World, tool: str, params: dict[str, Any]
) -> None:
    assert len(LONG_TIF.encode()) > path_limits(world.root).path_bytes  # too long here
    for name in ("ok.txt", "pack.zip", "s.tif", "r.tif"):
        world.upload(name, b"x")
    response = world.submit(tool, params)
    assert response.status_code == 400, response.text
    assert PATH_LIMIT in response.json()["error"], response.json()
    assert tasks(world) == []


def test_an_archive_member_too_long_for_the_dataset_fails_the_archive_naming_it(world: World) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fine.txt", b"fine")
        archive.writestr(LONG, b"too deep")
    world.upload("deep.zip", buffer.getvalue())
    response = world.submit("archive-extract", {"sourcePath": "deep.zip"})
    assert response.status_code == 202, response.text
    status = world.wait(response.json()["taskId"])
    assert status["state"] == "Failed", status
    assert "archive member" in status["error"] and PATH_LIMIT in status["error"], status["error"]
    assert "Traceback" not in status["error"]
    assert sorted(p.name for p in world.root.iterdir()) == [".ddb", "deep.zip"]
    listed = world.user.get(f"{world.ds_url}/entries", params={"recursive": "true"}).json()
    assert [e["path"] for e in listed] == ["deep.zip"]


def test_an_archive_member_name_too_long_fails_the_archive_naming_it(world: World) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"photos/{'n' * 256}.jpg", b"x")
    world.upload("wide.zip", buffer.getvalue())
    status = world.wait(world.submit("archive-extract", {"sourcePath": "wide.zip"}).json()["taskId"])
    assert status["state"] == "Failed", status
    assert "archive member" in status["error"] and "at most 255 bytes" in status["error"]
    assert sorted(p.name for p in world.root.iterdir()) == [".ddb", "wide.zip"]


def test_raster_export_of_a_raster_with_a_long_name_names_its_artifact_within_limits(
    world: World, tmp_path: Path
) -> None:
    name = "r" * 246 + ".tif"  # 250 bytes: "<stem>_export.tif" would be 257
    world.upload(f"flight/{name}", write_raster(tmp_path / "small.tif"))
    response = world.submit("raster-export", {"path": f"flight/{name}"})
    assert response.status_code == 202, response.text
    status = world.wait(response.json()["taskId"])
    assert status["state"] == "Succeeded", status
    file_name = status["artifact"]["fileName"]
    assert file_name.endswith("_export.tif") and file_name.startswith("rrrr")
    assert len(file_name.encode()) <= 200
    served = world.user.get(status["artifact"]["resultUrl"])
    assert served.status_code == 200 and served.content[:4] in (b"II*\x00", b"MM\x00*")


# --- names that compatibility normalisation would turn into paths ---------------------------


def test_an_uploaded_file_named_like_a_path_is_served_with_a_plain_fallback(world: World) -> None:
    name = "\uff0fetc\uff0fpasswd"  # ／etc／passwd
    created = world.user.put(files_url(world, name), content=b"not a password file")
    assert created.status_code == 201, created.text
    assert "%EF%BC%8F" in files_url(world, name)
    for method in ("GET", "HEAD"):
        response = world.user.request(method, files_url(world, name))
        assert response.status_code == 200
        fallback, exact = disposition(response.headers["content-disposition"])
        assert_plain_base_name(fallback)
        assert exact == name


def test_raster_export_artifact_of_a_path_like_name_has_a_plain_fallback(
    world: World, tmp_path: Path
) -> None:
    name = "\u2025\uff0f\u2025\uff0fevil.tif"  # ‥／‥／evil.tif, folded: ../../evil.tif
    world.upload(quote(name), write_raster(tmp_path / "small.tif"))
    status = world.wait(world.submit("raster-export", {"path": name}).json()["taskId"])
    assert status["state"] == "Succeeded", status
    response = world.user.get(status["artifact"]["resultUrl"])
    fallback, exact = disposition(response.headers["content-disposition"])
    assert_plain_base_name(fallback)
    assert exact == "\u2025\uff0f\u2025\uff0fevil_export.tif" == status["artifact"]["fileName"]


@pytest.mark.parametrize(("tool", "key", "name"), [
    ("raster-export", "fileName", "\uff0fetc\uff0fpasswd"),
    ("raster-export", "fileName", "\u2025"),
    ("raster-export", "fileName", "a\ufe68b.tif"),
    ("bulk-download", "archiveName", "\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fevil"),
    ("bulk-download", "archiveName", "\u2025"),
    ("bulk-download", "archiveName", "\u2024"),
])
def test_output_names_that_fold_into_a_path_are_refused_naming_the_parameter(
    world: World, tool: str, key: str, name: str
) -> None:
    world.upload("a.tif", b"x")
    params: dict[str, Any] = {key: name, **({"path": "a.tif"} if tool == "raster-export" else {})}
    response = world.submit(tool, params)
    assert response.status_code == 400, response.text
    assert key in response.json()["error"] and "plain file name" in response.json()["error"]
    assert tasks(world) == []


def test_bulk_download_archive_name_with_folding_dots_is_served_as_a_plain_name(world: World) -> None:
    name = "\u2025evil"  # folds to "..evil": a plain (hidden) name, allowed as typed
    world.upload("ok.txt", b"ok")
    response = world.submit("bulk-download", {"paths": ["ok.txt"], "archiveName": name})
    assert response.status_code == 202, response.text
    status = world.wait(response.json()["taskId"])
    assert status["state"] == "Succeeded", status
    served = world.user.get(status["artifact"]["resultUrl"])
    fallback, exact = disposition(served.headers["content-disposition"])
    assert_plain_base_name(fallback)
    assert exact == name + ".zip"


@pytest.mark.parametrize("name", ["\uff0fetc\uff0fpasswd", "\u2025", "\u2024", "\uff0e\uff0e",
                                  "a\ufe68b", "a\uff3cb", "x\uff1f"])
def test_output_file_name_refuses_names_that_fold_into_separators_or_dot_segments(name: str) -> None:
    with pytest.raises(UnsafePath, match="fileName .* must be a plain file name"):
        output_file_name(name, what="fileName", suffixes=(".tif",))


@pytest.mark.parametrize("name", ["a\u2215b", "a\u29f8b", "\u2025evil", "caf\u00e9", "\u65e5\u672c"])
def test_output_file_name_keeps_names_without_a_folded_separator(name: str) -> None:
    """U+2215 and U+29F8 have no compatibility form (they stay what they look like in the
    name; the ASCII fallback of Content-Disposition turns them into ``_``)."""
    assert output_file_name(name, what="fileName", suffixes=(".tif",)) == name + ".tif"
