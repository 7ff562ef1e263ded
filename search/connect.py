"""Connecting to Ray: local, an existing cluster, or from inside a Ray job; storage checks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from search import store

# Filesystems that every node of a cluster can share.
_SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "glusterfs", "ceph", "beegfs",
              "gpfs", "fuse.", "efs", "9p", "virtiofs")  # fmt: skip


def in_ray_job() -> bool:
    """True in the driver of a job submitted with `ray job submit` (or the Jobs API)."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or os.environ.get("RAY_JOB_ID"))


def _token_file() -> str:
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")


def _use_token_auth() -> None:
    """Token mode for this process. Ray reads RAY_AUTH_MODE into a cached config when it is
    imported, so setting the variable alone goes unseen; Ray's own switch
    (`authentication_token_setup._enable_token_auth`) re-initialises the config the same way."""
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")


def _auth_refused(e: BaseException | None) -> bool:
    """Whether ray.init failed because the cluster wants a token. Ray 2.60 raises it, after ~20 s
    of retries, as ConnectionError <- RuntimeError whose text holds the AuthenticationError."""
    from ray.exceptions import AuthenticationError

    while e is not None:
        if isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e):
            return True
        e = e.__cause__
    return False


def init(address: str | None, log: Callable[[str], None]) -> Any:
    """ray.init for the CLI. Inside a Ray job (or with RAY_ADDRESS set) a bare ray.init() joins
    that cluster; `--address auto|ray://host:10001|host:6379` joins an existing one; otherwise a
    local Ray starts on this machine.

    A token-auth cluster (Ray 2.59+ turns it on for clusters started by `ray start` when a token
    exists) refuses clients without RAY_AUTH_MODE=token: when a token file exists and the mode is
    unset, the connection is retried once with it.
    """
    import ray
    from ray.exceptions import AuthenticationError

    if address:
        where = f"the cluster at {address}"
    elif in_ray_job() or os.environ.get("RAY_ADDRESS", "local") != "local":
        where = "the cluster of this Ray job"
    else:
        where = "a local Ray on this machine"
    try:
        ctx = ray.init(address=address)
    except (AuthenticationError, ConnectionError) as e:
        if not _auth_refused(e):
            raise
        if os.environ.get("RAY_AUTH_MODE") or not os.path.exists(_token_file()):
            raise SystemExit(
                f"{where} refused the connection ({e}). Fix: export RAY_AUTH_MODE=token and put "
                f"the cluster's token in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH)."
            ) from None
        _use_token_auth()
        log(f"{where} uses token auth: retrying with RAY_AUTH_MODE=token and {_token_file()}")
        ctx = ray.init(address=address)
    url = getattr(ctx, "dashboard_url", None)
    res = ray.cluster_resources()
    log(
        f"ray {ray.__version__}: {where}; {len(alive_nodes())} node(s), "
        f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"
        + (f"; dashboard http://{url}" if url else "; dashboard not running")
    )
    if url and (os.environ.get("RAY_AUTH_MODE") == "token" or os.path.exists(_token_file())):
        log(
            f"  the dashboard asks for the token in {_token_file()} (REST: Authorization: Bearer <token>)"
        )
    return ctx


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def mount_type(path: str) -> str:
    """The filesystem type of the mount holding `path` ('' when unknown)."""
    path = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        return ""
    return fstype


def storage_problem(storage: str, here: str, node_ips: set[str], fstype: str) -> str | None:
    """Why `storage` cannot serve this cluster, or None when it can.

    Args:
        storage: the run directory (a local path or a URI).
        here: this driver's node IP; node_ips: the IPs of every alive node.
        fstype: the filesystem type of the mount holding `storage` ('' if unknown).
    """
    if store.is_uri(storage):
        return None
    remote = sorted(node_ips - {here})
    if not remote:
        return None
    if any(fstype == s or (s.endswith(".") and fstype.startswith(s)) for s in _SHARED_FS):
        return None
    return (
        f"storage {storage!r} is a node-local path ({fstype or 'unknown'} filesystem) but the "
        f"cluster has nodes on other machines ({', '.join(remote[:3])}): their trials could not "
        f"write checkpoints and results there. Fix: --storage s3://bucket/path or gs://bucket/path, "
        f"or an NFS mount present at the same path on every node (set "
        f"LIQUID_SEARCH_SHARED_STORAGE=1 if it is shared but not recognised)."
    )


def check_storage(storage: str) -> None:
    """Refuse a node-local storage path when the cluster has nodes on other machines.

    Tune writes checkpoints and results from every node to `storage`; with remote nodes that
    must be an s3:// / gs:// URI or a shared filesystem mounted at the same path everywhere.
    Set LIQUID_SEARCH_SHARED_STORAGE=1 to vouch for a shared path this check cannot recognise.
    """
    import ray

    if os.environ.get("LIQUID_SEARCH_SHARED_STORAGE") == "1":
        return
    probe = storage
    while probe and not store.is_uri(probe) and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    fstype = "" if store.is_uri(storage) else mount_type(probe or "/")
    ips = {n["NodeManagerAddress"] for n in alive_nodes()}
    problem = storage_problem(storage, ray.util.get_node_ip_address(), ips, fstype)
    if problem:
        raise SystemExit(problem)
