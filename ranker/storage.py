"""Files at a local path or a URI (s3://, gs://, file://, anything pyarrow.fs understands).

The one place that turns a path into a filesystem (`filesystem`) and the one atomic write
(`write_bytes`): a reader sees the old file or the new one, never half of one. Locally that is a
temp file renamed over the target; on an object store a single-object upload, which is atomic.

S3-compatible stores (MinIO, R2, a local test server) are reached through Arrow's own settings:
`AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`) in the environment, or `?endpoint_override=host:port`
on the URI; credentials come from the usual AWS chain (environment, profile, instance role).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from typing import IO

import pyarrow.fs as pafs

_UMASK = os.umask(0)
os.umask(_UMASK)


def is_uri(path: str | os.PathLike) -> bool:
    """True for `scheme://...` (s3, gs, file, ...), False for a plain local path."""
    return "://" in os.fspath(path)


def join(base: str, *parts: str) -> str:
    """`base/part/...` with '/' on URIs and os.path.join locally."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (with ~ expanded); URIs unchanged."""
    path = os.fspath(path)
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `path` and the path within it.

    Raises:
        OSError: the URI's scheme is unknown to pyarrow, or its filesystem cannot be set up
            (e.g. no credentials can be found for a bucket's region).
    """
    path = os.fspath(path)
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(path)
        except ValueError as e:  # pyarrow says "Unrecognized filesystem type in URI"
            raise OSError(f"{path}: {e}") from e
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_file(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def read_bytes(path: str) -> bytes:
    """The whole file.

    Raises:
        FileNotFoundError: there is no file at `path`.
    """
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise FileNotFoundError(f"{path}: no such file")
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_with(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(file)` and publish the result at `path` atomically.

    Locally the bytes go to a temp file beside `path` (mode 0666 & ~umask, as an ordinary
    file), renamed over it once `write` returns; on an object store they are buffered and
    uploaded as one object. On error nothing appears at `path`.
    """
    if is_uri(path):
        buf = io.BytesIO()
        write(buf)
        write_bytes(path, buf.getvalue())
        return
    path = absolute(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically (see `write_with`)."""
    if not is_uri(path):
        write_with(path, lambda f: f.write(data))
        return
    fs, p = filesystem(path)
    parent = p.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def listdir(path: str) -> list[str]:
    """Names directly under a directory, sorted ([] when it does not exist)."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(p)))


def files_under(path: str) -> list[str]:
    """Every file under a directory, as paths relative to it, sorted ([] when none)."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
    root = p.rstrip("/") + "/"
    return sorted(i.path[len(root) :] for i in infos if i.type == pafs.FileType.File)
