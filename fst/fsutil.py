"""Writing files so that readers never see half of one, and the other small file helpers."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, move it into place.

    The temporary file is a dotfile ending in ``.tmp`` in the target's folder (so the
    final rename never crosses filesystems, and no image or model search picks up one
    left by a crash); it gets the permissions a plain ``open()`` would give, where
    mkstemp's 0600 would make models, images and caches private to one user. Writers
    must not infer the format from the name. On error it is removed and ``path`` is
    untouched.

    With ``overwrite=False`` an existing ``path`` raises FileExistsError, before the block
    runs and again at the end if the name appeared meanwhile (a hard link never
    clobbers); callers turn it into a message for their user.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(errno.EEXIST, "file exists", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # After writing: some writers (safetensors) replace the file and leave it 0600.
        os.chmod(tmp, 0o666 & ~umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _link_no_clobber(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # fails if the name exists: never replaces another writer's file
    except FileExistsError:
        raise
    except OSError:
        # No hard links on this filesystem: check-then-rename is the best left.
        if path.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    return atomic_write_bytes(path, text.encode(encoding), overwrite=overwrite)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def umask() -> int:
    """The process umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
