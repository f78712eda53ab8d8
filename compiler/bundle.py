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
        lines = "".join(f"{sha256_file(f)}  {f.relative_to(path).as_posix()}\n"
                        for f in sorted(path.rglob("*"), key=lambda f: f.relative_to(path).as_posix()) if f.is_file())
        return hashlib.sha256(lines.encode()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def verify_bundle_files(bundle: Path, manifest: dict) -> None:
    """Every component file exists and matches the sha256 the manifest records."""
    for name, comp in manifest["components"].items():
        path = Path(bundle) / comp["file"]
        if not path.exists():
            raise UsageError(f"bundle {bundle}: {name} file {comp['file']} is missing")
        digest = sha256_file(path)
        if digest != comp["sha256"]:
            raise UsageError(f"bundle {bundle}: {comp['file']} was altered after build (sha256 {digest[:12]}... != manifest {comp['sha256'][:12]}...)")


def copy_tree(src: Path, dst: Path) -> None:
    try:
        shutil.copytree(src, dst)
    except OSError as e:
        raise BuildError(f"cannot copy {src} into the bundle: {e}") from None
