"""Write a bundle atomically: build in a temporary folder beside the target, then swap it in.

A failed or interrupted build leaves the previous bundle untouched and no
partial one; a lock file stops two builds writing the same output at once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from lgc.compiler.errors import BuildError, UsageError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


def sha256_file(path: Path) -> str:
    """sha256 of a file; of a folder artifact (a Core ML ``.mlpackage``), of its ``sha256sum`` listing.

    For a folder, the digest is that of the text ``sha256sum`` prints for its
    files, sorted by relative path (``<hex>  <path>`` lines): an app or a shell
    (``cd X.mlpackage && find . -type f | sort | xargs sha256sum``, paths without ``./``) can recompute it.
    """
    path = Path(path)
    if path.is_dir():
        return listing_digest({f.relative_to(path).as_posix(): sha256_file(f) for f in path.rglob("*") if f.is_file()})
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def listing_digest(digests: dict[str, str]) -> str:
    """A folder artifact's sha256 from its files' (relative path -> sha256): that of the sorted ``sha256sum`` lines."""
    return hashlib.sha256("".join(f"{digests[rel]}  {rel}\n" for rel in sorted(digests)).encode()).hexdigest()


def size_bytes(path: Path) -> int:
    """Bytes of a file, or of every file in a folder artifact."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def write_json(path: Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def staged_bundle(target: Path):
    """Yield a fresh staging folder; on success it replaces ``target``, on any error it is removed."""
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"output folder is not writable: {parent}")
    lock_path = parent / f".{target.name}.lock"
    lock = open(lock_path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UsageError(f"another lgc build is writing {target} (lock {lock_path} is held)") from None
    stage = parent / f".{target.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        old = parent / f".{target.name}.old-{os.getpid()}"
        if target.exists():
            target.rename(old)
        stage.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if is_disk_full(e):
            raise BuildError(f"disk full while writing {target} ({e.strerror}); the previous bundle is untouched") from e
        raise
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


# Written by the build beside the artifacts for people, never read to run the bundle (timings vary run
# to run, so they cannot be under the byte-reproducible manifest's hashes). Everything else is listed.
REPORT_FILES = ("manifest.json", "report.json", "passes.json")


def bundle_file_names(folder: Path) -> list[str]:
    """Every file of a bundle folder but the reports, by POSIX path relative to it, sorted."""
    folder = Path(folder)
    return sorted(rel for rel in (f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file())
                  if rel not in REPORT_FILES)


def bundle_files(folder: Path) -> dict[str, str]:
    """The manifest's ``files``: every file but the reports, with its sha256."""
    return {rel: sha256_file(Path(folder) / rel) for rel in bundle_file_names(folder)}


def confined(bundle: Path, rel) -> Path:
    """``bundle / rel`` for a manifest path that stays inside the bundle folder; exit 2 otherwise."""
    from pathlib import PurePosixPath

    p = PurePosixPath(rel) if isinstance(rel, str) else None
    if (p is None or not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or rel.startswith("~")
            or any(ord(c) < 32 for c in rel)):  # NUL and control characters: no file system path holds them
        raise UsageError(f"bundle {bundle}: manifest path {rel!r} is not a plain relative path inside the bundle")
    full = Path(bundle) / p
    try:
        inside = full.resolve().is_relative_to(Path(bundle).resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the OS refuses
        inside = False
    if not inside:
        raise UsageError(f"bundle {bundle}: manifest path {rel!r} resolves outside the bundle")
    return full


def verify_bundle_files(bundle: Path, manifest: dict) -> None:
    """The bundle is exactly what its manifest lists: plain files, each at its sha256, nothing more, nothing outside.

    Run before anything from the bundle is loaded. The manifest's own sha256 therefore stands for the
    whole bundle: an app can pin it.
    """
    bundle = Path(bundle)
    for f in sorted(bundle.rglob("*")):
        if f.is_symlink():
            raise UsageError(f"bundle {bundle}: {f.relative_to(bundle).as_posix()} is a symbolic link; a bundle holds plain files only")
    listed = manifest["files"]
    verified = {}  # normalised relative path -> sha256, each file read once
    for rel, digest in listed.items():
        path = confined(bundle, rel)
        if not path.is_file():
            raise UsageError(f"bundle {bundle}: {rel} is listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise UsageError(f"bundle {bundle}: {rel} was altered after build (sha256 {actual[:12]}... != manifest {digest[:12]}...)")
        verified[path.relative_to(bundle).as_posix()] = actual
    unlisted = sorted(set(bundle_file_names(bundle)) - set(listed))
    if unlisted:
        raise UsageError(f"bundle {bundle}: {unlisted[0]} is not listed in the manifest ({len(unlisted)} unlisted file(s)); "
                         f"a bundle ships only what its manifest hashes")
    for name, comp in manifest["components"].items():
        path = confined(bundle, comp["file"])
        if not path.exists():
            raise UsageError(f"bundle {bundle}: {name} file {comp['file']} is missing")
        # Every file under it was hashed above (nothing unlisted remains): the digests are reused, not re-read.
        rel = path.relative_to(bundle).as_posix()
        digest = (listing_digest({k[len(rel) + 1:]: v for k, v in verified.items() if k.startswith(rel + "/")})
                  if path.is_dir() else verified.get(rel))
        if digest is None:  # a report file (manifest.json, ...) named as an artifact
            raise UsageError(f"bundle {bundle}: {name} file {comp['file']} is not among the files the manifest lists")
        if digest != comp["sha256"]:
            raise UsageError(f"bundle {bundle}: {comp['file']} was altered after build (sha256 {digest[:12]}... != manifest {comp['sha256'][:12]}...)")
    tokenizer = confined(bundle, manifest["tokenizer"]["folder"])
    if not tokenizer.is_dir() or not any(tokenizer.iterdir()):
        raise UsageError(f"bundle {bundle}: tokenizer folder {manifest['tokenizer']['folder']} is missing")
