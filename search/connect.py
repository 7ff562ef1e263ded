"""Connecting to Ray: local, an existing cluster, or from inside a Ray job; storage checks."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray
from ray.exceptions import AuthenticationError

from ranker import storage as store
from search.errors import ClusterError

log = logging.getLogger("liquid_search")

# Filesystems that every node of a cluster can share.
_SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "glusterfs", "ceph", "beegfs",
              "gpfs", "fuse.", "efs", "9p", "virtiofs")  # fmt: skip


def in_ray_job() -> bool:
    """True in the driver of a job submitted with `ray job submit` (or the Jobs API)."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or os.environ.get("RAY_JOB_ID"))


JOB_STORAGE_ROOT = "~/liquid-search"


def run_storage(path: str) -> str:
    """Where runs go, as an absolute path or a URI.

    Inside a Ray job the working directory is the job's working_dir package, a temporary copy
    that Ray deletes once the job is over: a relative path (the spec's default ./runs included)
    is taken under ~/liquid-search on the driver's node instead, and an absolute path inside the
    working directory is refused.

    Raises:
        ClusterError: an absolute storage path inside a Ray job's working directory.
    """
    if store.is_uri(path) or not in_ray_job():
        return store.absolute(path)
    expanded = os.path.expanduser(path)
    if not os.path.isabs(expanded):
        return os.path.normpath(os.path.join(os.path.expanduser(JOB_STORAGE_ROOT), expanded))
    cwd = os.getcwd()
    if os.path.commonpath([os.path.abspath(expanded), cwd]) == cwd:
        raise ClusterError(
            f"storage {path!r} is inside this Ray job's working directory {cwd}, a temporary copy "
            f"Ray deletes when the job ends. Fix: --storage with a durable path (e.g. "
            f"{JOB_STORAGE_ROOT}/runs, an NFS mount, or s3://bucket/path)."
        )
    return os.path.abspath(expanded)


def token_file() -> str:
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")


def _auth_refused(e: BaseException | None) -> bool:
    """Whether ray.init failed because the cluster wants a token. Ray 2.60 raises it, after ~20 s
    of retries, as ConnectionError <- RuntimeError whose text holds the AuthenticationError."""
    while e is not None:
        if isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e):
            return True
        e = e.__cause__
    return False


def init(address: str | None, *, verbose: bool = False) -> Any:
    """ray.init for the CLI. Inside a Ray job (or with RAY_ADDRESS set) a bare ray.init() joins
    that cluster; `--address auto|ray://host:10001|host:6379` joins an existing one; otherwise a
    local Ray starts on this machine.

    Token auth is Ray's own business: with no address (or `auto`) Ray turns it on by itself when
    it finds a cluster on this machine and a token file; for an explicit address it sends a
    token only when `RAY_AUTH_MODE=token` is exported, and nothing here sends one on its behalf.

    Args:
        address: None, "auto", "ray://host:10001" or "host:port".
        verbose: keep Ray's and Tune's own INFO lines (start-up, per-stage bookkeeping) and
            echo what trials and tasks print; otherwise only Ray's warnings and errors show.

    Raises:
        ClusterError: the cluster refused the connection or could not be reached.
    """
    if ray.is_initialized():  # this process started Ray already (a notebook, a test): use it
        log.info(f"ray {ray.__version__}: the Ray this process is connected to")
        return None
    if address:
        where = f"the cluster at {address}"
    elif in_ray_job() or os.environ.get("RAY_ADDRESS", "local") != "local":
        where = "the cluster of this Ray job"
    else:
        where = "a local Ray on this machine"
    # Trials and tasks write to their own logs (each trial's start and end lines among them:
    # the dashboard's Actors and Jobs pages show them); echoed here they would interleave,
    # late, with the one line per trial this process prints. --verbose echoes them.
    kwargs: dict[str, Any] = {"log_to_driver": verbose}
    if address and address.startswith("ray://"):
        # Through Ray Client, Tune runs each stage in an actor on the cluster: give it the old
        # (silent at verbose=0) output engine that this process uses, or it prints its own
        # configuration box and progress for every stage. And Ray Client prints every line a
        # worker writes twice; our progress lines come back through a queue instead
        # (stages.StageProgress).
        kwargs["runtime_env"] = {"env_vars": {"RAY_AIR_NEW_OUTPUT": "0"}}
        kwargs["log_to_driver"] = False
    try:
        ctx = _init(address, logging.INFO if verbose else logging.WARNING, kwargs)
    except (AuthenticationError, ConnectionError) as e:
        if _auth_refused(e):
            raise ClusterError(
                f"{where} refused the connection: it uses token auth and this shell sends no "
                f"valid token. Fix: export RAY_AUTH_MODE=token and put the cluster's token in "
                f"{token_file()} (or point RAY_AUTH_TOKEN_PATH at it)."
            ) from None
        raise ClusterError(
            f"cannot connect to {where} ({_first_line(e)}). Fix: check the address (the head's "
            f"GCS host:6379, ray://host:10001, or auto on a cluster node) and that it is running."
        ) from None
    url = getattr(ctx, "dashboard_url", None)
    res = ray.cluster_resources()
    log.info(
        f"ray {ray.__version__}: {where}; {len(alive_nodes())} node(s), "
        f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"
        + (f"; dashboard http://{url}" if url else "; dashboard not running")
    )
    if url and os.environ.get("RAY_AUTH_MODE") == "token":
        log.info(
            f"  the dashboard asks for the token in {token_file()} (REST: Authorization: Bearer <token>)"
        )
    return ctx


# A Ray Client server starts a process of its own for each client session; on a busy head that
# start can fail ("Initialization failure from server", with no reason given) and succeed a moment
# later, so a ray:// connection is tried this many times, this many seconds apart.
CLIENT_ATTEMPTS, CLIENT_RETRY_S = 3, 3.0


def _init(address: str | None, level: int, kwargs: dict[str, Any]) -> Any:
    """ray.init, with a ray:// session that the client server failed to start tried again."""
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            return ray.init(address=address, logging_level=level, **kwargs)
        except ConnectionAbortedError as e:
            client = bool(address and address.startswith("ray://"))
            if not client or "Initialization failure" not in str(e) or attempt == CLIENT_ATTEMPTS:
                raise
            log.warning(f"the Ray Client server at {address} could not start this session "
                        f"(attempt {attempt} of {CLIENT_ATTEMPTS}); trying again")  # fmt: skip
            ray.shutdown()
            time.sleep(CLIENT_RETRY_S)
    raise AssertionError("unreachable")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def is_client() -> bool:
    """Connected through Ray Client (ray://host:10001)."""
    return ray.util.client.ray.is_connected()


def alive_nodes() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def resource_problem(
    cpu: float, gpu: float, nodes: list[dict[str, float]], autoscale: bool
) -> str | None:
    """Why no trial (nor the final model) could be placed on these nodes, or None.

    Args:
        cpu, gpu: what one trial reserves (resources.cpu, resources.gpu).
        nodes: each alive node's total resources (`{"CPU": 8, "GPU": 1, ...}`).
        autoscale: the cluster adds nodes for waiting trials (resources.autoscale).
    """
    if autoscale or any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return None
    have = ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU" for n in nodes)
    fix = ("train on CPUs with resources.gpu=0, or join nodes with a GPU" if gpu > 0
           else f"resources.cpu={max((n.get('CPU', 0) for n in nodes), default=1):g} or less")  # fmt: skip
    return (
        f"no node of this cluster can hold one trial's resources.cpu={cpu:g} "
        f"resources.gpu={gpu:g} (its nodes have: {have}), so every trial would wait forever. "
        f"Fix: {fix}; if the cluster's autoscaler adds such nodes, set resources.autoscale=true."
    )


def check_resources(cpu: float, gpu: float, autoscale: bool) -> None:
    """Refuse, before any trial starts, resources no node of the cluster has.

    Raises:
        ClusterError: no alive node can hold one trial (and the cluster does not autoscale).
    """
    nodes = [dict(n.get("Resources", {})) for n in alive_nodes()]
    problem = resource_problem(cpu, gpu, nodes, autoscale)
    if problem:
        raise ClusterError(problem)


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

    Raises:
        ClusterError: the path is node-local and some nodes are on other machines.
    """
    if os.environ.get("LIQUID_SEARCH_SHARED_STORAGE") == "1":
        return
    probe = storage
    while probe and not store.is_uri(probe) and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    fstype = "" if store.is_uri(storage) else mount_type(probe or "/")
    ips = {n["NodeManagerAddress"] for n in alive_nodes()}
    problem = storage_problem(storage, ray.util.get_node_ip_address(), ips, fstype)
    if problem:
        raise ClusterError(problem)
