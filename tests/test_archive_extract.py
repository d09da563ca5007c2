"""archive-extract over the real service (real HTTP, real Dask workers, real archives).

Every hostile archive is built here, byte for byte, and must fail the task with an error naming
the offending member while the dataset (files, sizes, hashes, ``.ddb``; ``.ddb/tmp`` empty
afterwards), its index and a sentinel folder outside it stay exactly as they were. Format
round trips and the everyday behaviours run on every server kind (``world``); the long list of
hostile archives and validation cases runs on one module-wide service to keep the suite fast.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import tarfile
import time
import unicodedata
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import py7zr
import pytest

from tests.harness import LiveServer, World, new_world, settings_for, start_server, tree_snapshot
from tools.archive.read import MAX_ENTRIES

TOOL = "archive-extract"
GIB = 1024**3


# --- building archives -----------------------------------------------------------------------


def zip_of(*members: tuple[str, bytes], stored: bool = False, zip64: bool = False) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of some archives
        with zipfile.ZipFile(buf, "w", method) as zf:
            for name, data in members:
                info = zipfile.ZipInfo(name)
                info.compress_type = method
                with zf.open(info, "w", force_zip64=zip64) as dst:
                    dst.write(data)
    return buf.getvalue()


def tar_of(*members: tarfile.TarInfo | tuple[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tf.addfile(info, io.BytesIO(member[1]))
    return buf.getvalue()


def tar_special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.devmajor, info.devminor = 1, 3
    return info


def seven_of(*members: tuple[str, bytes], password: str | None = None) -> bytes:
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", password=password, header_encryption=False) as sz:
        for name, data in members:
            sz.writestr(data, name)
    return buf.getvalue()


def seven_with_symlink(tmp: Path, target: Path) -> bytes:
    (tmp / "good.txt").write_bytes(b"fine")
    (tmp / "lnk").symlink_to(target)
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as sz:
        sz.write(tmp / "good.txt", "good.txt")
        sz.write(tmp / "lnk", "lnk")
    return buf.getvalue()


def zip_symlink(target: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("good.txt", b"fine")
        info = zipfile.ZipInfo("lnk")
        info.create_system = 3
        info.external_attr = (0o120777) << 16
        zf.writestr(info, target)
    return buf.getvalue()


def zip_encrypted() -> bytes:
    """A zip whose second member has the 'encrypted' flag set (local and central header)."""
    data = bytearray(zip_of(("good.txt", b"fine"), ("secret.txt", b"sealed"), stored=True))
    second = data.index(b"PK\x03\x04", 1)
    data[second + 6] |= 1
    central = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 1)
    data[central + 8] |= 1
    return bytes(data)


def zip_with_nul() -> bytes:
    return zip_of(("good.txt", b"fine"), ("nul_Xname.txt", b"x")).replace(b"nul_X", b"nul_\x00")


def zip_overlapping() -> bytes:
    """Two central-directory entries sharing one local header and compressed stream."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("good.txt", b"fine")
        zf.writestr("a.bin", bytes(100_000))
        a = zf.getinfo("a.bin")
        b = zipfile.ZipInfo("b.bin", date_time=a.date_time)
        for attr in ("compress_type", "CRC", "compress_size", "file_size", "header_offset",
                     "flag_bits", "external_attr", "create_system"):
            setattr(b, attr, getattr(a, attr))
        zf.filelist.append(b)
        zf.NameToInfo["b.bin"] = b
    return buf.getvalue()


def zip_bad_crc() -> bytes:
    payload = os.urandom(4000)
    data = bytearray(zip_of(("good.txt", b"fine"), ("data.bin", payload), stored=True))
    at = data.index(payload[:64])
    data[at + 100] ^= 0xFF
    return bytes(data)


def truncated_tar_gz() -> bytes:
    data = tar_of(("good.txt", b"fine"), ("big.bin", os.urandom(300_000)))
    return data[: len(data) * 6 // 10]


def repeated_streams(block: bytes, count: int, compress: Callable[[bytes], bytes]) -> bytes:
    """``count`` concatenated streams of ``block``: a valid multi-stream .gz/.bz2 file."""
    return compress(block) * count


# --- observing the dataset -------------------------------------------------------------------


def entries(world: World, **query: Any) -> dict[str, dict[str, Any]]:
    response = world.user.get(f"{world.ds_url}/entries", params={"recursive": "true", **query})
    assert response.status_code == 200, response.text
    return {e["path"]: e for e in response.json()}


def state_of(world: World, outside: Path) -> list[Any]:
    return [tree_snapshot(world.root, skip=".ddb/tmp"), tree_snapshot(outside), entries(world)]


def assert_tmp_empty(world: World) -> None:
    tmp = world.root / ".ddb" / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), list(tmp.iterdir())


def extract(world: World, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    response = world.submit(TOOL, params)
    assert response.status_code == 202, response.text
    return world.wait(response.json()["taskId"], timeout=timeout)


def log_of(world: World, status: dict[str, Any]) -> list[str]:
    return world.user.get(f"{world.tasks_url}/{status['taskId']}/log").json()["lines"]


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A sentinel folder beside (not inside) the dataset."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(b"do not touch")
    return folder


@pytest.fixture(scope="module")
def solo_server(
    dask_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One service (LocalCluster, SQLite) for the long lists of cases in this module."""
    live = start_server(settings_for(tmp_path_factory.mktemp("extract"), dask_address))
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def solo(solo_server: LiveServer) -> World:
    return new_world(solo_server)


@pytest.fixture(scope="session")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~6 MB zip holding one 6 GiB member of zeros (ZIP64), written as one deflate stream
    of identical full-flushed 1 MiB pieces: never more than a piece in memory or on disk."""
    size = 6 * GIB
    zeros = bytes(1024 * 1024)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    piece = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    assert first == piece
    tail = comp.flush(zlib.Z_FINISH)
    count = size // len(zeros)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        zf.writestr("readme.txt", b"harmless")
        info = zipfile.ZipInfo("zeros.bin", date_time=(2024, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = size
        info.compress_size = len(piece) * count + len(tail)
        info.CRC = crc
        info.external_attr = 0o600 << 16
        fp = zf.fp
        assert fp is not None
        info.header_offset = fp.tell()
        fp.write(info.FileHeader(zip64=True))
        for _ in range(count):
            fp.write(piece)
        fp.write(tail)
        zf.filelist.append(info)
        zf.NameToInfo[info.filename] = info
        zf.start_dir = fp.tell()  # type: ignore[attr-defined]
        zf._didModify = True  # type: ignore[attr-defined]
    return path


# --- round trips -----------------------------------------------------------------------------

FILES = {
    "docs/readme.md": b"# Flight 12\n\nNotes.\n",
    "vector/roads.geojson": b'{"type": "FeatureCollection", "features": []}',
    "notes.txt": b"plain text",
    "nested/deeper/inner.zip": zip_of(("x.txt", b"x")),
}
TYPES = {"docs/readme.md": "markdown", "vector/roads.geojson": "vector", "notes.txt": "generic",
         "nested/deeper/inner.zip": "archive"}
TAR_MODES = {"tar": "w", "tar.gz": "w:gz", "tgz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}


def archive_of(fmt: str) -> bytes:
    if fmt in ("zip", "zip64"):
        return zip_of(*FILES.items(), zip64=fmt == "zip64")
    if fmt == "7z":
        return seven_of(*FILES.items())
    folder = tarfile.TarInfo("docs")
    folder.type = tarfile.DIRTYPE
    return tar_of(folder, *FILES.items(), mode=TAR_MODES[fmt])


@pytest.mark.parametrize("fmt", ["zip", "zip64", "tar", "tar.gz", "tgz", "tar.bz2", "tar.xz", "7z"])
def test_each_archive_format_round_trips_and_is_indexed(world: World, fmt: str) -> None:
    suffix = "zip" if fmt == "zip64" else fmt
    world.upload(f"incoming/pack.{suffix}", archive_of(fmt))
    status = extract(world, {"sourcePath": f"incoming/pack.{suffix}", "destPath": "unpacked"})
    assert status["state"] == "Succeeded", status
    assert status["progress"]["percent"] == 100
    for rel, body in FILES.items():
        assert (world.root / "unpacked" / rel).read_bytes() == body
    listed = entries(world, path="unpacked")
    for rel, body in FILES.items():
        entry = listed[f"unpacked/{rel}"]
        assert entry["type"] == TYPES[rel], entry
        assert entry["size"] == len(body) and entry["hash"] == hashlib.sha256(body).hexdigest()
    assert listed["unpacked/docs"]["type"] == "directory"
    assert (world.root / "incoming" / f"pack.{suffix}").exists()
    log = log_of(world, status)
    for rel in FILES:
        assert any(f"Extracted {rel}" in line for line in log), log
    assert log[-1].endswith(f"Extraction complete: {len(FILES)} extracted, 0 skipped"), log
    assert status["result"]["extracted"] == len(FILES)
    assert_tmp_empty(world)


@pytest.mark.parametrize(("suffix", "compress"), [
    (".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)])
def test_single_file_archive_is_named_after_the_archive(
    world: World, suffix: str, compress: Callable[[bytes], bytes]
) -> None:
    body = b"x,y\n" + b"1,2\n" * 1000
    world.upload(f"tables/points.csv{suffix}", compress(body))
    status = extract(world, {"sourcePath": f"tables/points.csv{suffix}", "destPath": "tables"})
    assert status["state"] == "Succeeded", status
    assert (world.root / "tables" / "points.csv").read_bytes() == body
    entry = entries(world, path="tables")["tables/points.csv"]
    assert entry["type"] == "generic" and entry["size"] == len(body)
    assert log_of(world, status)[-1].endswith("Extraction complete: 1 extracted, 0 skipped")


# --- everyday behaviours ---------------------------------------------------------------------


def test_dest_path_defaults_to_the_dataset_root(world: World) -> None:
    """SPEC §4: "destPath defaults to the dataset root", wherever the archive is."""
    world.upload("a/b/x.zip", zip_of(("top.txt", b"top"), ("docs/readme.md", b"# hi")))
    status = extract(world, {"sourcePath": "a/b/x.zip"})
    assert status["state"] == "Succeeded", status
    assert (world.root / "top.txt").read_bytes() == b"top"
    assert (world.root / "docs" / "readme.md").read_bytes() == b"# hi"
    assert sorted(p.name for p in (world.root / "a" / "b").iterdir()) == ["x.zip"]
    listed = entries(world)
    assert {"top.txt", "docs", "docs/readme.md"} <= set(listed)
    assert not any(path.startswith("a/b/") and path != "a/b/x.zip" for path in listed)
    single = extract(world, {"sourcePath": "a/b/x.zip", "destPath": None})  # null = the default
    assert single["state"] == "Succeeded" and single["result"]["skipped"] == 2, single


def test_existing_files_are_skipped_unless_overwrite(world: World) -> None:
    world.upload("keep.txt", b"old")
    world.upload("pack.zip", zip_of(("keep.txt", b"new"), ("fresh.txt", b"fresh")))
    status = extract(world, {"sourcePath": "pack.zip"})
    assert status["state"] == "Succeeded", status
    assert log_of(world, status)[-1].endswith("Extraction complete: 1 extracted, 1 skipped")
    assert (world.root / "keep.txt").read_bytes() == b"old"
    assert entries(world)["keep.txt"]["hash"] == hashlib.sha256(b"old").hexdigest()

    status = extract(world, {"sourcePath": "pack.zip", "overwrite": True})
    assert status["state"] == "Succeeded", status
    assert log_of(world, status)[-1].endswith("Extraction complete: 2 extracted, 0 skipped")
    assert (world.root / "keep.txt").read_bytes() == b"new"
    listed = entries(world)
    assert listed["keep.txt"]["hash"] == hashlib.sha256(b"new").hexdigest()
    assert listed["keep.txt"]["size"] == 3


def test_delete_archive_removes_it_only_after_success(world: World, outside: Path) -> None:
    world.upload("in/good.tar.gz", tar_of(("a.txt", b"a")))
    status = extract(world, {"sourcePath": "in/good.tar.gz", "deleteArchive": True})
    assert status["state"] == "Succeeded", status
    assert not (world.root / "in" / "good.tar.gz").exists()
    listed = entries(world)
    assert "in/good.tar.gz" not in listed and listed["a.txt"]["type"] == "generic"
    assert any("Deleted in/good.tar.gz" in line for line in log_of(world, status))

    world.upload("in/bad.tar.gz", tar_of(("b.txt", b"b"), ("../escape.txt", b"x")))
    status = extract(world, {"sourcePath": "in/bad.tar.gz", "deleteArchive": True})
    assert status["state"] == "Failed"
    assert (world.root / "in" / "bad.tar.gz").exists()
    assert "in/bad.tar.gz" in entries(world)


def test_two_archives_cannot_combine_into_an_escape(world: World, outside: Path) -> None:
    # The first archive tries to plant a link to the outside: refused, nothing written.
    world.upload("one.tar", tar_of(tar_special("evil", tarfile.SYMTYPE, str(outside)), mode="w"))
    first = extract(world, {"sourcePath": "one.tar"})
    assert first["state"] == "Failed" and "'evil'" in first["error"], first
    assert not os.path.lexists(world.root / "evil")
    # The second writes through the name the link would have had: a real folder inside.
    world.upload("two.tar", tar_of(("evil/pwned.txt", b"pwned"), mode="w"))
    second = extract(world, {"sourcePath": "two.tar"})
    assert second["state"] == "Succeeded", second
    assert (world.root / "evil").is_dir() and not (world.root / "evil").is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]

    # Links already in the dataset (planted by any other means) are never followed.
    (world.root / "planted").symlink_to(outside)
    (world.root / "planted-file.txt").symlink_to(outside / "secret.txt")
    world.upload("three.zip", zip_of(("ok.txt", b"ok"), ("planted/pwned.txt", b"pwned")))
    world.upload("four.zip", zip_of(("planted-file.txt", b"pwned")))
    before = state_of(world, outside)
    third = extract(world, {"sourcePath": "three.zip", "overwrite": True})
    assert third["state"] == "Failed" and "'planted' is a symbolic link" in third["error"], third
    fourth = extract(world, {"sourcePath": "four.zip", "overwrite": True})
    assert fourth["state"] == "Failed" and "symbolic link" in fourth["error"], fourth
    assert state_of(world, outside) == before
    assert (outside / "secret.txt").read_bytes() == b"do not touch"
    assert_tmp_empty(world)


def test_cancel_during_a_large_extraction_stops_promptly_and_changes_nothing(
    world: World, outside: Path
) -> None:
    block = os.urandom(4096) * 256  # 1 MiB, ~55:1 in bzip2: below the ratio cap
    world.upload("big.bin.bz2", repeated_streams(block, 600, lambda b: bz2.compress(b, 9)))
    world.upload("small.txt", b"small")
    before = state_of(world, outside)
    task_id = world.submit(TOOL, {"sourcePath": "big.bin.bz2"}).json()["taskId"]
    staging = world.root / ".ddb" / "tmp" / f"archive-extract-{task_id}"
    deadline = time.monotonic() + 60
    while True:
        status = world.user.get(f"{world.tasks_url}/{task_id}").json()
        if status["progress"]["phase"] == "extracting" and status["progress"]["percent"] > 0:
            break
        assert status["state"] not in ("Succeeded", "Failed"), status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert staging.is_dir()
    cancelled_at = time.monotonic()
    assert world.user.delete(f"{world.tasks_url}/{task_id}").json()["state"] == "Deleted"
    work_dir = world.server.settings.work_dir
    while staging.exists() or any(p.name.startswith(task_id) for p in work_dir.iterdir()):
        assert time.monotonic() - cancelled_at < 10, "the extraction did not stop within 10 s"
        time.sleep(0.05)
    assert world.wait(task_id)["state"] == "Deleted"
    assert state_of(world, outside) == before
    assert_tmp_empty(world)


def test_byte_cap_counts_bytes_actually_written(make_server: Any, outside: Path) -> None:
    live = make_server(max_archive_extract_size_bytes=1_000_000)
    world = new_world(live)
    world.upload("keep.txt", b"keep")
    # tar members carry no size total up front: the cap trips while streaming the third one
    world.upload("a.tar.gz", tar_of(*((f"part{i}.bin", os.urandom(400_000)) for i in range(3))))
    world.upload("b.bz2", bz2.compress(os.urandom(1_200_000)))
    world.upload("c.zip", zip_of(("huge.bin", os.urandom(1_200_000)), stored=True))
    before = state_of(world, outside)
    for source, member in (("a.tar.gz", "part2.bin"), ("b.bz2", "b"), ("c.zip", "huge.bin")):
        status = extract(world, {"sourcePath": source})
        assert status["state"] == "Failed", status
        assert f"'{member}'" in status["error"] and "1000000 bytes" in status["error"], status
    assert state_of(world, outside) == before
    assert_tmp_empty(world)


def test_zip_bomb_of_6_gib_zeros_is_refused_before_writing(
    solo: World, zip_bomb: Path, outside: Path
) -> None:
    """With the default 5 GiB cap the declared 6 GiB is refused before any data is read."""
    solo.upload("bomb.zip", zip_bomb.read_bytes())
    before = state_of(solo, outside)
    status = extract(solo, {"sourcePath": "bomb.zip", "deleteArchive": True})
    assert status["state"] == "Failed", status
    assert "'zeros.bin'" in status["error"] and "MaxArchiveExtractSizeBytes" in status["error"]
    assert state_of(solo, outside) == before
    assert_tmp_empty(solo)


def test_compression_bombs_trip_the_ratio_cap_while_streaming(
    make_server: Any, zip_bomb: Path, outside: Path
) -> None:
    """Under a cap the bombs fit in, the ratio stops them after a few MiB: the 6 GiB zip and a
    2 GiB .gz of zeros (a format with no size in its header)."""
    world = new_world(make_server(max_archive_extract_size_bytes=8 * GIB))
    world.upload("bomb.zip", zip_bomb.read_bytes())
    world.upload("zeros.bin.gz", repeated_streams(bytes(1024 * 1024), 2048, gzip.compress))
    before = state_of(world, outside)
    for source, member in (("bomb.zip", "zeros.bin"), ("zeros.bin.gz", "zeros.bin")):
        started = time.monotonic()
        status = extract(world, {"sourcePath": source, "deleteArchive": True})
        assert status["state"] == "Failed", status
        assert f"'{member}'" in status["error"] and "200:1" in status["error"], status
        assert time.monotonic() - started < 20
    assert state_of(world, outside) == before
    assert_tmp_empty(world)


# --- hostile archives ------------------------------------------------------------------------


def hostile_case(case: str, outside: Path, tmp: Path, root: Path) -> tuple[str, bytes, str, str]:
    """(archive file name, bytes, member named in the error, reason in the error) of a case;
    only the requested archive is built."""
    slip = os.path.relpath(outside, root) + "/slip.txt"
    good = ("good.txt", b"fine")
    nfc, nfd = unicodedata.normalize("NFC", "café.txt"), unicodedata.normalize("NFD", "café.txt")
    many = lambda: zip_of(*((f"f{i:05d}", b"") for i in range(MAX_ENTRIES + 1)))  # noqa: E731
    cases: dict[str, tuple[str, Callable[[], bytes], str, str]] = {
        "zip-slip": ("slip.zip", lambda: zip_of(good, (slip, b"x")), slip, "'..'"),
        "dotdot": ("dotdot.tar.gz", lambda: tar_of(good, ("a/../../x", b"x")), "a/../../x",
                   "'..'"),
        "absolute": ("abs.tar", lambda: tar_of(good, (str(outside / "abs.txt"), b"x"), mode="w"),
                     str(outside / "abs.txt"), "absolute"),
        "absolute-zip": ("abs.zip", lambda: zip_of(good, ("/etc/x", b"x")), "/etc/x", "absolute"),
        "drive-letter": ("drive.zip", lambda: zip_of(good, ("C:/x", b"x")), "C:/x", "absolute"),
        "drive-backslash": ("drive2.zip", lambda: zip_of(good, ("C:\\x", b"x")), "C:\\\\x",
                            "backslash"),
        "nul": ("nul.zip", zip_with_nul, "nul_\\x00name.txt", "control character"),
        "ddb": ("ddb.tar.gz", lambda: tar_of(good, (".ddb/evil.txt", b"x")), ".ddb/evil.txt",
                "service folder"),
        "ddb-normalised": ("ddb2.zip", lambda: zip_of(good, ("./.DDB/build/x", b"x")),
                           "./.DDB/build/x", "service folder"),
        "tar-symlink": ("sym.tar.gz", lambda: tar_of(good, tar_special(
            "lnk", tarfile.SYMTYPE, str(outside))), "lnk", "symbolic link"),
        "tar-hardlink": ("hard.tar.gz", lambda: tar_of(good, tar_special(
            "hard", tarfile.LNKTYPE, str(outside / "secret.txt"))), "hard", "hard link"),
        "tar-device": ("dev.tar.gz", lambda: tar_of(good, tar_special("null", tarfile.CHRTYPE)),
                       "null", "device"),
        "tar-fifo": ("fifo.tar.gz", lambda: tar_of(good, tar_special("pipe", tarfile.FIFOTYPE)),
                     "pipe", "FIFO"),
        "zip-symlink": ("sym.zip", lambda: zip_symlink(str(outside)), "lnk", "symbolic link"),
        "7z-symlink": ("sym.7z", lambda: seven_with_symlink(tmp, outside), "lnk", "symbolic link"),
        "duplicate": ("dup.tar.gz", lambda: tar_of(good, ("dup.txt", b"1"), ("dup.txt", b"2")),
                      "dup.txt", "duplicate"),
        "duplicate-case": ("case.zip", lambda: zip_of(good, ("Photo.JPG", b"1"),
                                                      ("photo.jpg", b"2")), "photo.jpg",
                           "duplicate"),
        "duplicate-unicode": ("uni.tar", lambda: tar_of(good, (nfc, b"1"), (nfd, b"2"), mode="w"),
                              nfd, "duplicate"),
        "file-and-folder": ("ff.tar.gz", lambda: tar_of(good, ("x", b"1"), ("x/y.txt", b"2")),
                            "x/y.txt", "folder"),
        "too-many-entries": ("many.zip", many, f"f{MAX_ENTRIES:05d}", "entries"),
        "overlapping": ("overlap.zip", zip_overlapping, "a.bin", "overlap"),
        "truncated": ("cut.tar.gz", truncated_tar_gz, "big.bin", "truncated"),
        "corrupt-crc": ("crc.zip", zip_bad_crc, "data.bin", "CRC"),
        "encrypted": ("enc.zip", zip_encrypted, "secret.txt", "encrypted"),
        "encrypted-7z": ("enc.7z", lambda: seven_of(good, password="pw"), "good.txt",
                         "encrypted"),
    }
    name, build, member, reason = cases[case]
    return name, build(), member, reason


HOSTILE = ["zip-slip", "dotdot", "absolute", "absolute-zip", "drive-letter", "drive-backslash",
           "nul", "ddb", "ddb-normalised", "tar-symlink", "tar-hardlink", "tar-device",
           "tar-fifo", "zip-symlink", "7z-symlink", "duplicate", "duplicate-case",
           "duplicate-unicode", "file-and-folder", "too-many-entries", "overlapping",
           "truncated", "corrupt-crc", "encrypted", "encrypted-7z"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archive_fails_whole_and_changes_nothing(
    solo: World, outside: Path, tmp_path: Path, case: str
) -> None:
    name, body, member, reason = hostile_case(case, outside, tmp_path, solo.root)
    solo.upload("existing/keep.txt", b"keep")
    solo.upload(f"uploads/{name}", body)
    before = state_of(solo, outside)
    status = extract(solo, {"sourcePath": f"uploads/{name}", "destPath": "existing",
                            "deleteArchive": True, "overwrite": True})
    assert status["state"] == "Failed", status
    assert f"'{member}'" in status["error"], status["error"]
    assert reason.lower() in status["error"].lower(), status["error"]
    assert state_of(solo, outside) == before
    assert_tmp_empty(solo)


# --- validation before queueing --------------------------------------------------------------


@pytest.mark.parametrize(("params", "reason"), [
    ({}, "sourcePath"),
    ({"sourcePath": "../x.zip"}, "'..'"),
    ({"sourcePath": "/etc/x.zip"}, "absolute"),
    ({"sourcePath": ".ddb/x.zip"}, ".ddb"),
    ({"sourcePath": "nope.zip"}, "does not exist"),
    ({"sourcePath": "folder.zip"}, "not a file"),
    ({"sourcePath": "notes.txt"}, "not a supported archive"),
    ({"sourcePath": "pack.zip", "destPath": "../out"}, "'..'"),
    ({"sourcePath": "pack.zip", "destPath": ".ddb/tmp"}, ".ddb"),
    ({"sourcePath": "pack.zip", "destPath": "notes.txt"}, "is a file"),
    ({"sourcePath": "pack.zip", "bogus": 1}, "bogus"),
])
def test_bad_parameters_are_400_before_queueing(
    solo: World, params: dict[str, Any], reason: str
) -> None:
    solo.upload("pack.zip", zip_of(("a.txt", b"a")))
    solo.upload("notes.txt", b"notes")
    solo.upload("folder.zip/inside.txt", b"x")
    response = solo.submit(TOOL, params)
    assert response.status_code == 400, response.text
    assert reason.lower() in response.json()["error"].lower() + str(response.json()).lower()
    assert solo.user.get(solo.tasks_url).json() == []


# --- cancelled or killed around the move -----------------------------------------------------


def test_cancel_at_any_moment_leaves_dataset_and_index_in_agreement(
    solo: World, outside: Path
) -> None:
    """Cancel as late as possible (ideally while files are being moved in): either nothing was
    extracted, or everything was and all of it is indexed, even though the task is Deleted."""
    count = 1000
    solo.upload("many.tar", tar_of(*((f"f{i:04d}.txt", b"%d" % i) for i in range(count)),
                                   mode="w"))
    task_id = solo.submit(TOOL, {"sourcePath": "many.tar", "destPath": "out"}).json()["taskId"]
    deadline = time.monotonic() + 60
    while True:
        progress = solo.user.get(f"{solo.tasks_url}/{task_id}").json()["progress"]
        if progress["phase"] == "moving" or (progress["phase"] == "extracting"
                                             and progress["percent"] >= 80):
            break
        assert time.monotonic() < deadline, progress
        time.sleep(0.02)
    solo.user.delete(f"{solo.tasks_url}/{task_id}")
    staging = solo.root / ".ddb" / "tmp" / f"archive-extract-{task_id}"
    work_dir = solo.server.settings.work_dir
    on_disk: set[str] = set()
    indexed: set[str] = set()
    while time.monotonic() < deadline:
        busy = staging.exists() or any(p.name.startswith(task_id) for p in work_dir.iterdir())
        on_disk = {p.relative_to(solo.root).as_posix() for p in (solo.root / "out").rglob("*")}
        indexed = {p for p in entries(solo) if p.startswith("out/")}
        if not busy and on_disk == indexed:
            break
        time.sleep(0.1)
    assert on_disk == indexed
    assert len(on_disk) in (0, count), len(on_disk)
    assert solo.wait(task_id)["state"] == "Deleted"
    assert_tmp_empty(solo)


KILL_DURING_MOVE = """
import os, signal, sys
from pathlib import Path
from tools import archive_extract
from tools.contract import PrintReporter, ToolContext

real_replace = os.replace
moved = []

def replace_then_die(*args, **kwargs):
    if kwargs.get("src_dir_fd") is not None:  # a move into the dataset
        moved.append(args)
        if len(moved) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(*args, **kwargs)

os.replace = replace_then_die
root = Path(sys.argv[1])
ctx = ToolContext(task_id="killed", dataset_root=root, work_dir=root.parent,
                  reporter=PrintReporter(quiet=True))
archive_extract.run({"sourcePath": "pack.zip", "deleteArchive": True}, ctx)
"""


def test_an_attempt_killed_while_moving_is_finished_by_the_next_attempt(tmp_path: Path) -> None:
    """SIGKILL after two files moved in: the task's next attempt finishes the moves from the
    saved plan and reports every file for indexing (the tool-level half of a re-queued task)."""
    import signal
    import subprocess
    import sys

    from tools import archive_extract
    from tools.contract import PrintReporter, ToolContext

    root = tmp_path / "ds"
    (root / ".ddb" / "tmp").mkdir(parents=True)
    files = {f"f{i}.txt": b"%d" % i for i in range(5)}
    (root / "pack.zip").write_bytes(zip_of(*files.items()))
    child = subprocess.run([sys.executable, "-c", KILL_DURING_MOVE, str(root)],
                           cwd=Path(__file__).parent.parent, capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert sorted(p.name for p in root.glob("f*.txt")) == ["f0.txt", "f1.txt"]
    assert (root / ".ddb" / "tmp" / "archive-extract-killed" / "moves.json").is_file()

    ctx = ToolContext(task_id="killed", dataset_root=root, work_dir=tmp_path,
                      reporter=PrintReporter(quiet=True))
    result = archive_extract.run({"sourcePath": "pack.zip", "deleteArchive": True}, ctx)
    assert result.entries_added == sorted(files)
    assert result.entries_removed == ["pack.zip"]
    assert {p.name: p.read_bytes() for p in root.glob("f*.txt")} == files
    assert not (root / "pack.zip").exists()
    assert not any((root / ".ddb" / "tmp").iterdir())


def test_a_run_that_committed_is_not_reported_cancelled(
    dask_address: str, tmp_path: Path
) -> None:
    """The worker does not turn a run that already moved files into the dataset into a
    cancelled one (which would leave those files unindexed)."""
    from distributed import Client

    from procplat.engine.job import Job
    from procplat.engine.worker import run_job

    root = tmp_path / "ds"
    (root / ".ddb" / "tmp").mkdir(parents=True)
    (root / "pack.tar").write_bytes(tar_of(("a.txt", b"a"), ("b/c.txt", b"c"), mode="w"))
    job = Job(task_id=f"late-cancel-{time.time_ns()}", attempt=1,
              tool_module="tests.archive_extract_late_cancel", tool_id=TOOL,
              params={"sourcePath": "pack.tar"}, dataset_root=str(root),
              work_root=str(tmp_path / "work"), artifacts_root=str(tmp_path / "artifacts"))
    with Client(dask_address) as client:
        outcome = client.submit(run_job, job, key=job.task_id, pure=False).result(timeout=60)
    assert outcome["entriesAdded"] == ["a.txt", "b/c.txt"]
    assert (root / "b" / "c.txt").read_bytes() == b"c"


def test_entries_a_run_added_are_indexed_even_if_the_task_was_cancelled_meanwhile(
    solo: World,
) -> None:
    """The service side of the same race: the outcome of a committed run reaches the service
    after the task was marked Deleted; its new files are indexed all the same."""
    from procplat.engine.job import Outcome

    solo.upload("pack.zip", zip_of(("first.txt", b"1")))
    task_id = solo.submit(TOOL, {"sourcePath": "pack.zip"}).json()["taskId"]
    assert solo.user.delete(f"{solo.tasks_url}/{task_id}").json()["state"] == "Deleted"
    solo.wait(task_id)
    (solo.root / "late").mkdir()
    (solo.root / "late" / "added.txt").write_bytes(b"late")
    supervisor = solo.server.app_state.supervisor
    supervisor._record_outcome(Outcome(task_id=task_id, attempt=1, succeeded=True,
                                       entries_added=["late/added.txt"]))
    listed = entries(solo)
    assert listed["late/added.txt"]["hash"] == hashlib.sha256(b"late").hexdigest()
    assert listed["late"]["type"] == "directory"
    assert solo.wait(task_id)["state"] == "Deleted"


def test_a_move_that_fails_halfway_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename failing midway (disk full, say) puts back replaced files and removes new files
    and folders: the dataset is as it was (tool level; the service cannot fill a disk on cue)."""
    from tools import archive_extract
    from tools.contract import PrintReporter, ToolContext, ToolError

    root = tmp_path / "ds"
    (root / ".ddb" / "tmp").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"old a")
    (root / "pack.zip").write_bytes(zip_of(("a.txt", b"new a"), ("b/new.txt", b"b"),
                                           ("c/d/e.txt", b"e"), ("z.txt", b"z")))
    before = tree_snapshot(root)
    real_replace = os.replace
    moves: list[Any] = []

    def replace_or_fail(*args: Any, **kwargs: Any) -> None:
        if kwargs.get("src_dir_fd") is not None:
            moves.append(args)
            if len(moves) == 4:
                raise OSError(28, "No space left on device")
        real_replace(*args, **kwargs)

    monkeypatch.setattr(os, "replace", replace_or_fail)
    ctx = ToolContext(task_id="t", dataset_root=root, work_dir=tmp_path,
                      reporter=PrintReporter(quiet=True))
    with pytest.raises(ToolError, match="moving 'z.txt' into the dataset failed"):
        archive_extract.run({"sourcePath": "pack.zip", "overwrite": True}, ctx)
    monkeypatch.undo()
    assert tree_snapshot(root) == before
