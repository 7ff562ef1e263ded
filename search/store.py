"""Files under a run directory that is a local path or a URI (s3://, gs://, file://).

Writes are atomic: a reader sees the old file or the new one, never half of one (a temp file
renamed over the target locally; a single-object upload on object stores).
"""

from __future__ import annotations

import os
import tempfile

import pyarrow.fs as pafs

_UMASK = os.umask(0)
os.umask(_UMASK)


def is_uri(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def absolute(path: str) -> str:
    """A local path made absolute (with ~ expanded); URIs unchanged."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def exists(path: str) -> bool:
    fs, p = _fs(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def write_bytes(path: str, data: bytes) -> None:
    if not is_uri(path):
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def read_bytes(path: str) -> bytes:
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def listdir(path: str) -> list[str]:
    """Names directly under a directory ([] when it does not exist)."""
    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(p)))


def move(src: str, dst: str) -> None:
    fs, s = _fs(src)
    _, d = _fs(dst)
    fs.move(s, d)
