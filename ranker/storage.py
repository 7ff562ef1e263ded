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
import re
import tempfile
import threading
from collections.abc import Callable
from typing import IO, Any

import pyarrow.fs as pafs

_UMASK = os.umask(0)
os.umask(_UMASK)


class StorageError(OSError):
    """A path or URI that cannot serve as asked; the message is one line naming it and what to
    check."""


PROBE_SECONDS = 20.0  # how long `check_dir` waits for an object store to answer


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


def delete(path: str) -> None:
    """Remove the file at `path` (nothing when there is none)."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


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


def check_dir(path: str, *, create: bool = False, what: str = "directory") -> None:
    """Check, before any work, that `path` is a directory (or, with `create`, can become one):
    for a URI, that its bucket exists and answers with these credentials; locally, that it is
    not a file and that it or its nearest existing parent is writable.

    Args:
        path: a local path or a URI.
        create: the directory may not exist yet (it will be made).
        what: what the path is for, in messages ("run directory", "storage", "data").

    Raises:
        StorageError: one line naming the path and what to check.
    """
    if not str(path).strip():
        raise StorageError(f"the {what} path is empty. Fix: pass a path or an s3:// / gs:// URI.")
    if is_uri(path):
        _check_uri_dir(str(path), create, what)
        return
    local = absolute(path)
    if os.path.exists(local):
        if not os.path.isdir(local):
            raise StorageError(f"{local} is a file, not a {what}. Fix: pass a directory.")
        if create and not os.access(local, os.W_OK | os.X_OK):
            raise StorageError(f"{local} is not writable. Fix: pass a {what} you can write to.")
        return
    if not create:
        raise StorageError(f"{local} does not exist. Fix: check the path of the {what}.")
    parent = os.path.dirname(local)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise StorageError(f"{local} cannot be created: {parent} is a file. Fix: another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(
            f"{local} cannot be created: {parent} is not writable. Fix: a path you can write to."
        )


def _check_uri_dir(uri: str, create: bool, what: str) -> None:
    try:
        fs, p = filesystem(uri)
    except OSError as e:
        raise StorageError(f"{uri}: {_first_line(e)}. Fix: check the URI's scheme.") from None
    # An object store's first path part is its bucket (file:// and others have none).
    bucket = p.split("/", 1)[0] if fs.type_name in ("s3", "gcs") else ""
    infos = answer(lambda: (fs.get_file_info(bucket or p), fs.get_file_info(p)), uri)
    if bucket and infos[0].type == pafs.FileType.NotFound:
        raise StorageError(
            f"{uri}: the bucket {bucket!r} does not exist (or these credentials cannot see it). "
            f"Fix: create it, or check the URI and the credentials."
        )
    if infos[1].type == pafs.FileType.File:
        raise StorageError(f"{uri} is a file, not a {what}. Fix: pass a prefix (a directory).")
    if infos[1].type == pafs.FileType.NotFound and not create:
        raise StorageError(f"{uri} does not exist. Fix: check the URI of the {what}.")


class Unanswered(StorageError):
    """A remote service did not answer as asked: `kind` is "timeout", "denied", "down" or
    "other", `detail` the first line of what it said."""

    def __init__(self, message: str, kind: str, detail: str) -> None:
        super().__init__(message)
        self.kind, self.detail = kind, detail


# What to check, by kind of failure, for an object store.
_STORE_FIX = {
    "timeout": "check the endpoint (AWS_ENDPOINT_URL, or ?endpoint_override= on the URI) and "
               "the network",
    "down": "check the endpoint (AWS_ENDPOINT_URL, or ?endpoint_override= on the URI) and the "
            "network",
    "denied": "check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
              "the instance role or service account)",
    "other": "check the URI and the credentials",
}  # fmt: skip
_WHAT = {"timeout": "no answer within {s:g} s", "down": "the endpoint does not answer",
         "denied": "access denied", "other": "cannot be reached"}  # fmt: skip


def answer(
    call: Callable[[], Any], uri: str, seconds: float = PROBE_SECONDS,
    fixes: dict[str, str] | None = None,
) -> Any:  # fmt: skip
    """`call()` on a thread, waiting at most `seconds`: an unreachable endpoint can keep a
    client (an object store's, a tracking server's) retrying for minutes.

    Args:
        fixes: what to check, by kind of failure (default: an object store's).

    Raises:
        Unanswered: no answer in time, or a refusal (credentials, network), in one line.
    """
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except Exception as e:  # re-raised below, on the caller's thread, as one line
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        kind, detail = "timeout", ""
    elif "error" in out:
        kind, detail = _kind(out["error"]), _first_line(out["error"])
    else:
        return out["value"]
    what = _WHAT[kind].format(s=seconds) + (f" ({detail})" if detail else "")
    fix = (fixes or _STORE_FIX)[kind]
    raise Unanswered(f"{uri}: {what}. Fix: {fix}.", kind, detail)


def describe_fault(e: BaseException) -> tuple[str, str]:
    """A failed read or write of a storage that was working, as (what happened, what to do):
    out of space, read-only, gone, permission refused, or an object store that refuses, is
    throttling or does not answer."""
    import errno

    code = getattr(e, "errno", None)
    low = str(e).lower()
    if code == errno.ENOSPC or "no space left" in low:
        return "no space left on the device", "free space on it"
    if code == errno.EDQUOT or "quota" in low:
        return "the disk quota is used up", "free space or raise the quota"
    if code == errno.EROFS or "read-only" in low:
        return "the filesystem is read-only", "remount it writable"
    if code in (errno.ENOENT, errno.ESTALE) or "no such file" in low:
        return "a path the run writes to has vanished", "mount the storage again"
    if code == errno.EACCES or code == errno.EPERM:
        return "permission denied", "give this user write access to the run directory"
    if any(k in low for k in ("slowdown", "slow down", "throttl", "503", "toomanyrequests")):
        return "the object store is throttling requests", "wait, or raise the request limits"
    kind = _kind(e)
    if kind == "denied":
        return "the object store refused the credentials", _STORE_FIX["denied"]
    if kind == "down":
        return "the object store does not answer", _STORE_FIX["down"]
    return _first_line(e), "check the storage"


def diagnose(path: str, seconds: float = 10.0) -> tuple[str, str] | None:
    """What is wrong with a storage now, as `describe_fault` says it, when an error said too
    little (a file cut short, an unreadable record): a local path that vanished, turned
    read-only, is not writable or has no space left; an object store that does not answer or
    refuses. None when it looks fine."""
    import errno
    import shutil

    if is_uri(path):
        try:
            fs, p = filesystem(path)
            answer(lambda: fs.get_file_info(p), path, seconds)
        except Unanswered as e:
            err = OSError(e.detail or e.kind)
            return (
                describe_fault(err) if e.kind != "timeout" else describe_fault(OSError("timed out"))
            )
        except OSError as e:
            return describe_fault(e)
        return None
    local = absolute(path)
    if not os.path.exists(local):
        return describe_fault(OSError(errno.ENOENT, "vanished"))
    if os.statvfs(local).f_flag & os.ST_RDONLY:
        return describe_fault(OSError(errno.EROFS, "read-only"))
    if not os.access(local, os.W_OK | os.X_OK):
        return describe_fault(OSError(errno.EACCES, "denied"))
    if shutil.disk_usage(local).free < 1 << 20:
        return describe_fault(OSError(errno.ENOSPC, "full"))
    return None


def _kind(e: BaseException) -> str:
    """An error from a remote service, by kind: down, denied or other. An endpoint that does not
    answer is recognised first: its message names a host and port, whose digits can read as a
    status code."""
    low = str(e).lower()
    if any(k in low for k in ("network_connection", "couldn't connect", "curlcode",
                              "connection refused", "timed out", "timeout", "resolve",
                              "max retries")):  # fmt: skip
        return "down"
    if any(k in low for k in ("access_denied", "accessdenied", "forbidden", "invalidaccesskeyid",
                              "signaturedoesnotmatch", "credential")) or re.search(
        r"\b(403|401)\b(?!\.)", re.sub(r"[\d.]+:\d+", "", low)
    ):  # fmt: skip
        return "denied"
    return "other"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
