"""The bulk-download tool, its member selection and the streaming ZIP, called directly."""

from __future__ import annotations

import filecmp
import io
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from tools import bulk_download
from tools.archive.zip_policy import Member, archive_members, compress_type
from tools.archive.zip_stream import stream_zip, zip_size
from tools.contract import Cancelled, InvalidParams, ToolContext, ToolError, ToolResult
from tools.runtime.safepath import UnsafePath

TEXT_FILES = {
    "docs/readme.md": b"# Readme\n" * 500,
    "docs/notes.txt": b"some notes\n" * 300,
    "docs/sub/data.json": b'{"a": 1}\n' * 200,
    "docs/sub/deeper/points.las": b"LASF" + bytes(4000),
}
BINARY_FILES = {
    "photos/a.jpg": os.urandom(20_000),
    "photos/b.TIF": os.urandom(15_000),
    "cloud.laz": os.urandom(10_000),
}
SERVICE_FILES = {
    ".ddb/meta.json": b'{"dataset": true}\n',
    ".ddb/build/abc123/cog.tif": b"derived",
    ".ddb/tmp/upload.part": b"temporary",
}


class RecordingReporter:
    """Records progress and log calls; cancels after ``cancel_after`` progress calls or
    ``cancel_after_checks`` cancellation checks."""

    def __init__(self, cancel_after: int | None = None,
                 cancel_after_checks: int | None = None) -> None:
        self.progress_calls: list[tuple[float | None, str | None]] = []
        self.lines: list[str] = []
        self.cancel_after = cancel_after
        self.cancel_after_checks = cancel_after_checks
        self.cancel_checks = 0

    def progress(self, fraction: float | None, phase: str | None = None) -> None:
        self.progress_calls.append((fraction, phase))

    def log(self, message: str) -> None:
        self.lines.append(message)

    def cancelled(self) -> bool:
        if self.cancel_after_checks is not None:
            return self.cancel_checks >= self.cancel_after_checks
        return self.cancel_after is not None and len(self.progress_calls) >= self.cancel_after

    def check_cancelled(self) -> None:
        self.cancel_checks += 1
        if self.cancelled():
            raise Cancelled()


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "my-dataset"
    write_files(root, {**TEXT_FILES, **BINARY_FILES, **SERVICE_FILES})
    write_files(tmp_path / "outside", {"secret.txt": b"do not archive\n"})
    return root


@pytest.fixture()
def work_dir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def run_tool(root: Path, work_dir: Path, params: dict, reporter: RecordingReporter | None = None,
             ) -> tuple[ToolResult, RecordingReporter]:
    reporter = reporter or RecordingReporter()
    ctx = ToolContext(task_id="t1", dataset_root=root, work_dir=work_dir, reporter=reporter)
    bulk_download.validate(params, root)
    return bulk_download.run(params, ctx), reporter


def names_of(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as zf:
        return zf.namelist()


def unzip_test(archive: Path) -> None:
    done = subprocess.run(["unzip", "-t", str(archive)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No errors detected" in done.stdout


# --- policy ---------------------------------------------------------------------------------


def member_of(tmp_path: Path, name: str, data: bytes) -> Member:
    path = tmp_path / "files" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Member(name, path, len(data))


@pytest.mark.parametrize("name", [
    "a.jpg", "b.JPEG", "c.png", "d.webp", "g.laz", "h.zip", "i.7z", "j.tar.gz", "k.tgz",
    "l.bz2", "m.xz", "n.zst", "o.mp4", "p.mov", "q.mkv", "r.webm", "u.copc", "w.docx",
    "x.xlsx", "dir/y.jp2",
])
def test_compressed_formats_are_stored_by_name_alone(name: str, tmp_path: Path) -> None:
    """Formats compressed by definition are stored without reading them (here: text)."""
    assert compress_type(member_of(tmp_path, name, b"text " * 10_000)) == zipfile.ZIP_STORED


@pytest.mark.parametrize("name", [
    "a.txt", "b.md", "c.json", "d.geojson", "e.csv", "f.xml", "g.las", "h.obj", "i.ply",
    "j.gltf", "k.shp", "no_extension", ".hidden", "dir.jpg/file.txt", "l.bin", "m.glb",
    "n.pdf", "o.npz", "p.ts",
])
def test_files_of_other_names_are_deflated_when_they_compress(name: str, tmp_path: Path) -> None:
    text = TEXT_FILES["docs/readme.md"] * 100
    assert compress_type(member_of(tmp_path, name, text)) == zipfile.ZIP_DEFLATED
    noise = os.urandom(len(text))
    assert compress_type(member_of(tmp_path, name, noise)) == zipfile.ZIP_STORED


def test_folders_are_expanded_recursively_in_sorted_order(dataset: Path) -> None:
    members = archive_members(dataset, ["docs"])
    assert [m.arcname for m in members] == [
        "docs/notes.txt", "docs/readme.md", "docs/sub/data.json", "docs/sub/deeper/points.las",
    ]
    assert all(m.size == len(TEXT_FILES[m.arcname]) for m in members)
    assert all(m.path == dataset / m.arcname for m in members)


def test_a_file_selected_twice_appears_once(dataset: Path) -> None:
    members = archive_members(dataset, ["docs/readme.md", "docs", "./docs/readme.md"])
    arcnames = [m.arcname for m in members]
    assert arcnames[0] == "docs/readme.md"
    assert sorted(arcnames) == sorted(set(arcnames))
    assert len(arcnames) == 4


def test_whole_dataset_includes_ddb_but_not_build_or_tmp(dataset: Path) -> None:
    arcnames = {m.arcname for m in archive_members(dataset, None)}
    assert arcnames == set(TEXT_FILES) | set(BINARY_FILES) | {".ddb/meta.json"}


def test_missing_entry_is_invalid(dataset: Path) -> None:
    with pytest.raises(InvalidParams, match="entry 'docs/nope.txt' does not exist"):
        archive_members(dataset, ["docs/nope.txt"])


# --- validation -----------------------------------------------------------------------------


def test_schema_is_valid_2020_12_and_closed() -> None:
    schema = bulk_download.SPEC.input_schema
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    assert validator.is_valid({})
    assert validator.is_valid({"paths": None, "archiveName": None})
    assert validator.is_valid({"paths": ["a", "b/c"], "archiveName": "x"})
    assert not validator.is_valid({"path": ["a"]})
    assert not validator.is_valid({"paths": []})
    assert not validator.is_valid({"paths": ["a"] * 10001})
    assert not validator.is_valid({"archiveName": "x" * 201})
    spec = bulk_download.SPEC
    assert (spec.id, spec.version, spec.required_access) == ("bulk-download", "1", "Read")
    assert spec.produces_artifact and spec.result_extension == ".zip"


@pytest.mark.parametrize(("requested", "expected"), [
    ("export", "export.zip"),
    ("my export 2024", "my export 2024.zip"),
    ("already.zip", "already.zip"),
    ("UPPER.ZIP", "UPPER.ZIP"),
    ("v1.2", "v1.2.zip"),
    (None, "my-dataset.zip"),
])
def test_archive_name_gets_zip_appended(dataset: Path, work_dir: Path, requested: str | None,
                                        expected: str) -> None:
    result, _ = run_tool(dataset, work_dir, {"paths": ["cloud.laz"], "archiveName": requested})
    assert result.artifact == work_dir / expected
    assert result.artifact.is_file()


@pytest.mark.parametrize("name", [
    "a/b.zip", "a\\b.zip", "*.zip", "what?.zip", "[ab].zip", "..", ".", "", "   ",
    "a\x00b.zip", "tab\there.zip", "x" * 201,
])
def test_bad_archive_names_are_rejected(dataset: Path, name: str) -> None:
    with pytest.raises(InvalidParams):
        bulk_download.validate({"paths": ["cloud.laz"], "archiveName": name}, dataset)


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", ".ddb/x", ".ddb", ".DDB/meta.json",
                                  "a\x00b", "docs/../../outside/secret.txt", "C:/x", ""])
def test_unsafe_paths_are_rejected(dataset: Path, path: str) -> None:
    with pytest.raises(UnsafePath):
        bulk_download.validate({"paths": [path]}, dataset)


def test_symlink_escaping_the_dataset_is_rejected(dataset: Path, tmp_path: Path) -> None:
    (dataset / "escape.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (dataset / "escape_dir").symlink_to(tmp_path / "outside")
    (dataset / "into_service").symlink_to(dataset / ".ddb")
    for path in ("escape.txt", "escape_dir", "escape_dir/secret.txt", "into_service"):
        with pytest.raises(UnsafePath):
            bulk_download.validate({"paths": [path]}, dataset)


def test_symlinks_inside_a_selected_folder_stay_inside(dataset: Path, work_dir: Path,
                                                       tmp_path: Path) -> None:
    docs = dataset / "docs"
    (docs / "out_file.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (docs / "out_dir").symlink_to(tmp_path / "outside")
    (docs / "service").symlink_to(dataset / ".ddb")
    (docs / "loop").symlink_to(docs)
    (docs / "photo_link.jpg").symlink_to(dataset / "photos" / "a.jpg")
    result, _ = run_tool(dataset, work_dir, {"paths": ["docs"]})
    assert names_of(result.artifact) == [
        "docs/notes.txt", "docs/photo_link.jpg", "docs/readme.md", "docs/sub/data.json",
        "docs/sub/deeper/points.las",
    ]
    with zipfile.ZipFile(result.artifact) as zf:
        assert zf.read("docs/photo_link.jpg") == BINARY_FILES["photos/a.jpg"]


def test_symlink_out_of_the_dataset_is_skipped_in_whole_dataset_archive(
        dataset: Path, tmp_path: Path) -> None:
    (dataset / "out_dir").symlink_to(tmp_path / "outside")
    (dataset / "build_link").symlink_to(dataset / ".ddb" / "build")
    arcnames = {m.arcname for m in archive_members(dataset, None)}
    assert arcnames == set(TEXT_FILES) | set(BINARY_FILES) | {".ddb/meta.json"}


def test_estimate_covers_the_archive(dataset: Path, work_dir: Path) -> None:
    plan = bulk_download.validate({}, dataset)
    result, _ = run_tool(dataset, work_dir, {})
    kept = (*TEXT_FILES.values(), *BINARY_FILES.values(), SERVICE_FILES[".ddb/meta.json"])
    total = sum(len(d) for d in kept)
    assert plan.estimated_output_bytes > total
    assert result.summary["bytes"] == total


# --- the archive ----------------------------------------------------------------------------


def test_whole_dataset_archive_is_valid_and_identical(dataset: Path, work_dir: Path,
                                                      tmp_path: Path) -> None:
    old = time.mktime((2021, 6, 15, 12, 30, 44, 0, 0, -1))
    os.utime(dataset / "docs" / "readme.md", (old, old))
    result, _ = run_tool(dataset, work_dir, {})
    archive = result.artifact
    assert archive == work_dir / "my-dataset.zip"
    assert sorted(p.name for p in work_dir.iterdir()) == ["my-dataset.zip"]
    expected = {**TEXT_FILES, **BINARY_FILES, ".ddb/meta.json": SERVICE_FILES[".ddb/meta.json"]}
    assert result.summary == {
        "files": len(expected),
        "bytes": sum(len(d) for d in expected.values()),
        "archiveBytes": archive.stat().st_size,
    }
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted(expected)
        assert zf.getinfo("docs/readme.md").date_time == (2021, 6, 15, 12, 30, 44)
        for name, data in expected.items():
            assert zf.read(name) == data
        zf.extractall(tmp_path / "by_zipfile")
    unzip_test(archive)
    subprocess.run(["unzip", "-q", str(archive), "-d", str(tmp_path / "by_unzip")], check=True)
    for name in expected:
        assert filecmp.cmp(dataset / name, tmp_path / "by_zipfile" / name, shallow=False)
        assert filecmp.cmp(dataset / name, tmp_path / "by_unzip" / name, shallow=False)


def test_compression_follows_the_policy(dataset: Path, work_dir: Path) -> None:
    result, _ = run_tool(dataset, work_dir, {})
    with zipfile.ZipFile(result.artifact) as zf:
        kinds = {i.filename: i.compress_type for i in zf.infolist()}
    # meta.json is 18 bytes: deflate cannot shrink it, so it is stored
    assert {n for n, k in kinds.items() if k == zipfile.ZIP_STORED} == (
        set(BINARY_FILES) | {".ddb/meta.json"}
    )
    assert {n for n, k in kinds.items() if k == zipfile.ZIP_DEFLATED} == set(TEXT_FILES)
    with zipfile.ZipFile(result.artifact) as zf:
        readme = zf.getinfo("docs/readme.md")
        assert readme.compress_size < readme.file_size / 10


def test_progress_is_monotonic_and_ends_at_one(dataset: Path, work_dir: Path) -> None:
    write_files(dataset, {"big/one.bin": os.urandom(3 * 2**20), "big/two.txt": b"x" * 2**22})
    result, reporter = run_tool(dataset, work_dir, {})
    fractions = [f for f, _ in reporter.progress_calls if f is not None]
    assert fractions[0] == 0.0
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert {phase for _, phase in reporter.progress_calls} == {"archiving"}
    assert reporter.lines[0].startswith(f"Archiving {result.summary['files']} files (")
    assert reporter.lines[-1].startswith(f"Archive complete: {result.summary['files']} files, ")
    assert reporter.cancel_checks > 7


@pytest.mark.parametrize("cancel", [
    {"cancel_after": 1},
    {"cancel_after_checks": 4},
], ids=["after-first-progress", "inside-a-file"])
def test_cancel_midway_leaves_nothing(dataset: Path, work_dir: Path, cancel: dict) -> None:
    reporter = RecordingReporter(**cancel)
    write_files(dataset, {"big/one.bin": os.urandom(8 * 2**20)})
    with pytest.raises(Cancelled):
        run_tool(dataset, work_dir, {"paths": ["big", "docs"]}, reporter)
    assert list(work_dir.iterdir()) == []
    assert all(f is None or f < 1.0 for f, _ in reporter.progress_calls)
    assert not any(line.startswith("Archive complete") for line in reporter.lines)


def test_file_vanishing_before_the_run_is_a_tool_error(dataset: Path, work_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def members_then_delete(root: Path, rel_paths: list[str] | None) -> list[Member]:
        members = archive_members(root, rel_paths)
        (root / "docs" / "notes.txt").unlink()
        return members

    monkeypatch.setattr(bulk_download, "archive_members", members_then_delete)
    ctx = ToolContext(task_id="t", dataset_root=dataset, work_dir=work_dir,
                      reporter=RecordingReporter())
    with pytest.raises(ToolError, match="docs/notes.txt"):
        bulk_download.run({"paths": ["docs"]}, ctx)
    assert list(work_dir.iterdir()) == []


def test_selected_entry_vanished_before_the_run_is_a_tool_error(dataset: Path,
                                                                work_dir: Path) -> None:
    params = {"paths": ["docs/readme.md"]}
    bulk_download.validate(params, dataset)
    (dataset / "docs" / "readme.md").unlink()
    ctx = ToolContext(task_id="t", dataset_root=dataset, work_dir=work_dir,
                      reporter=RecordingReporter())
    with pytest.raises(ToolError, match="docs/readme.md"):
        bulk_download.run(params, ctx)


@pytest.fixture
def ram_work_dir(tmp_path: Path) -> Iterator[Path]:
    """A work folder in RAM when the machine has room (the archive is 4.5 GiB), else on disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 8 * 2**30:
        path = Path(tempfile.mkdtemp(dir=shm, prefix="procplat-zip64-"))
    else:
        path = tmp_path / "ram-work"
        path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def unzip_list(archive: Path) -> str:
    done = subprocess.run(["unzip", "-l", str(archive)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_zip64_archive_over_4_gib(tmp_path: Path, ram_work_dir: Path) -> None:
    work_dir = ram_work_dir
    root = tmp_path / "huge"
    root.mkdir()
    big_size = int(4.5 * 2**30)
    with open(root / "big.laz", "wb") as handle:
        handle.truncate(big_size)
    (root / "small.txt").write_bytes(b"small text\n" * 100)
    assert compress_type(Member("big.laz", root / "big.laz", big_size)) == zipfile.ZIP_STORED

    started = time.monotonic()
    result, reporter = run_tool(root, work_dir, {})
    written = time.monotonic()
    archive = result.artifact
    try:
        assert archive.stat().st_size > big_size
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo("big.laz")
            assert info.file_size == big_size
            assert info.compress_type == zipfile.ZIP_STORED
            read = 0
            with zf.open(info) as member:
                while block := member.read(16 * 2**20):
                    read += len(block)
            assert read == big_size
            assert zf.read("small.txt") == b"small text\n" * 100
        verified = time.monotonic()
        # unzip reads the ZIP64 central directory; the CRC was verified by zipfile above
        listing = unzip_list(archive)
        assert f"{big_size}  " in listing and "big.laz" in listing
        finished = time.monotonic()
        fractions = [f for f, _ in reporter.progress_calls if f is not None]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        print(f"\nZIP64 test: write {written - started:.1f}s, zipfile CRC read "
              f"{verified - written:.1f}s, unzip -l {finished - verified:.1f}s")
    finally:
        archive.unlink(missing_ok=True)


# --- streaming ------------------------------------------------------------------------------


def test_stream_zip_matches_the_files(dataset: Path, tmp_path: Path) -> None:
    members = archive_members(dataset, ["docs", "photos", "cloud.laz"])
    archive = tmp_path / "streamed.zip"
    archive.write_bytes(b"".join(stream_zip(members)))
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == [m.arcname for m in members]
        for member in members:
            assert zf.read(member.arcname) == member.path.read_bytes()
            assert zf.getinfo(member.arcname).compress_type == compress_type(member)
    unzip_test(archive)
    assert zip_size(members) is None


def test_zip_size_predicts_stored_only_archives(dataset: Path) -> None:
    members = archive_members(dataset, ["photos", "cloud.laz"])
    data = b"".join(stream_zip(members))
    assert zip_size(members) == len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.read("cloud.laz") == BINARY_FILES["cloud.laz"]


# --- parallel deflate ---------------------------------------------------------------------------


def text_block(seed: int, size: int) -> bytes:
    import random

    rng = random.Random(seed)
    words = [f"{rng.getrandbits(40):x}"[: rng.randint(3, 10)] for _ in range(3000)]
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choice(words) for _ in range(12)) + "\n").encode()
    return bytes(out[:size])


@pytest.fixture(scope="module")
def big_texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """31 MiB of text in five files, written once for the module (its tests only read it)."""
    root = tmp_path_factory.mktemp("big-texts") / "texts"  # the archive is named after it
    write_files(root, {
        "a/one.txt": text_block(1, 9 * 2**20),
        "a/two.csv": text_block(2, 12 * 2**20),
        "a/small.txt": b"small\n" * 100,
        "b/three.json": text_block(3, 10 * 2**20),
        "b/photo.jpg": os.urandom(2 * 2**20),
    })
    return root


def test_large_text_files_are_deflated_in_pieces_deterministically(
    big_texts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces: list[tuple[str, int]] = []
    original = bulk_download.deflate_piece

    def counting(piece, stop):  # type: ignore[no-untyped-def]
        pieces.append((piece.arcname, piece.offset))
        return original(piece, stop)

    monkeypatch.setattr(bulk_download, "deflate_piece", counting)
    runs = []
    for name in ("w1", "w2"):
        (tmp_path / name).mkdir()
        result, _ = run_tool(big_texts, tmp_path / name, {"paths": ["a", "b"]})
        assert os.listdir(tmp_path / name) == [result.artifact.name]
        runs.append(result.artifact.read_bytes())
    assert runs[0] == runs[1]
    assert sorted(set(pieces)) == sorted(
        [("a/one.txt", 0), ("a/one.txt", 8 * 2**20), ("a/two.csv", 0), ("a/two.csv", 8 * 2**20),
         ("b/three.json", 0), ("b/three.json", 8 * 2**20)]
    )
    archive = tmp_path / "w1" / "texts.zip"
    unzip_test(archive)
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            assert zf.read(name) == (big_texts / name).read_bytes()
        big = zf.getinfo("a/two.csv")
        assert big.compress_type == zipfile.ZIP_DEFLATED
        assert big.compress_size < big.file_size * 0.8


def test_cancel_during_parallel_deflate_leaves_nothing(big_texts: Path, work_dir: Path) -> None:
    reporter = RecordingReporter(cancel_after_checks=3)
    with pytest.raises(Cancelled):
        run_tool(big_texts, work_dir, {"paths": ["a", "b"]}, reporter)
    time.sleep(0.5)  # pieces already running finish or stop; their streams are removed
    assert not [p for p in work_dir.iterdir() if not p.name.startswith(".deflate-")]
    deadline = time.monotonic() + 10
    while list(work_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(work_dir.iterdir()) == []
