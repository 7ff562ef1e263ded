"""Connecting to Ray: local, an existing cluster, or from inside a Ray job; storage checks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from search import store

# Filesystems that every node of a cluster can share.
_SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "glusterfs", "ceph", "beegfs",
              "gpfs", "fuse.", "efs", "9p", "virtiofs")  # fmt: skip


def init(address: str | None, log: Callable[[str], None]) -> Any:
    """ray.init for the CLI. Inside a Ray job (or with RAY_ADDRESS set) a bare ray.init() joins
    that cluster; `--address auto|ray://host:10001|host:6379` joins an existing one; otherwise a
    local Ray starts on this machine."""
    import ray

    if address:
        ctx = ray.init(address=address, log_to_driver=True)
        where = f"cluster at {address}"
    elif os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS"):
        ctx = ray.init()
        where = "the cluster of this Ray job"
    else:
        ctx = ray.init()
        where = "a local Ray on this machine"
    url = getattr(ctx, "dashboard_url", None)
    res = ray.cluster_resources()
    log(
        f"ray {ray.__version__}: {where}; {len(alive_nodes())} node(s), "
        f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"
        + (f"; dashboard http://{url}" if url else "; dashboard not running")
    )
    if url and os.environ.get("RAY_AUTH_MODE") == "token":
        log("  (token auth: open the dashboard with the token in ~/.ray/auth_token)")
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


def check_storage(storage: str) -> None:
    """Refuse a node-local storage path when the cluster has nodes on other machines.

    Tune writes checkpoints and results from every node to `storage`; with remote nodes that
    must be an s3:// / gs:// URI or a shared filesystem mounted at the same path everywhere.
    Set LIQUID_SEARCH_SHARED_STORAGE=1 to vouch for a shared path this check cannot recognise.
    """
    import ray

    if store.is_uri(storage) or os.environ.get("LIQUID_SEARCH_SHARED_STORAGE") == "1":
        return
    here = ray.util.get_node_ip_address()
    remote = sorted({n["NodeManagerAddress"] for n in alive_nodes()} - {here})
    if not remote:
        return
    probe = storage
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    fstype = mount_type(probe or "/")
    if any(fstype == s or (s.endswith(".") and fstype.startswith(s)) for s in _SHARED_FS):
        return
    raise SystemExit(
        f"storage {storage!r} is a node-local path ({fstype or 'unknown'} filesystem) but the "
        f"cluster has nodes on other machines ({', '.join(remote[:3])}): their trials could not "
        f"write checkpoints and results there. Fix: --storage s3://bucket/path or gs://bucket/path, "
        f"or an NFS mount present at the same path on every node (set "
        f"LIQUID_SEARCH_SHARED_STORAGE=1 if it is shared but not recognised)."
    )
