"""Every file under cluster/ holds what the tool that reads it requires.

Launcher YAMLs are checked against the schema that ships with the installed Ray and through Ray's
own config preparation; KubeRay manifests against the fields the operator needs; runtime envs
through `ray.runtime_env.RuntimeEnv`. Every file names the one Ray version that pyproject.toml
pins, GPU workers fit the trials the docs ask for, and storage credentials are bucket-only.
Nothing here starts Ray or touches the network.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
# `ray[default,tune]==X.Y.Z`: the one Ray version of the package, the images and the runtime envs.
RAY_PIN = re.compile(r"^ray(?:\[[\w,\s-]*\])?\s*==\s*(?P<version>\d+\.\d+\.\d+)$")


def _ray_requirement() -> str:
    """The `ray...` entry of pyproject.toml's dependencies ('' if there is none or several)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    rays = [d for d in deps if re.match(r"ray\b(?!-)", d)]
    return rays[0] if len(rays) == 1 else ""


RAY_REQUIREMENT = _ray_requirement()
_pin = RAY_PIN.match(RAY_REQUIREMENT)
# test_ray_is_pinned_to_the_installed_version says why when this is "unpinned".
RAY_VERSION = _pin["version"] if _pin else "unpinned"
RAY_IMAGE = re.compile(rf"^rayproject/ray:{re.escape(RAY_VERSION)}(-py311)?(-gpu)?$")
CLI_SUBCOMMANDS = {"run", "stage", "resume", "status", "synth", "train"}
# runtime_env keys that combine with `ray job submit --working-dir` (which sets working_dir).
RUNTIME_ENV_KEYS = {
    "excludes",
    "env_vars",
    "pip",
    "uv",
    "conda",
    "py_modules",
    "config",
    "worker_process_setup_hook",
}
# What must never be uploaded with the working dir.
RUNTIME_ENV_EXCLUDES = {".venv/", "runs/", "data/", "*.pqt"}

YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{_rel(path)}: no YAML document"
    for d in docs:
        assert isinstance(d, dict), (
            f"{_rel(path)}: a document is {type(d).__name__}, expected a mapping"
        )
    return docs


def _kind(path: Path) -> str:
    """Which tool reads the file: 'launcher', 'kuberay', 'kubernetes' (ServiceAccounts),
    'runtime_env', or 'unknown'."""
    if path.name.startswith("runtime_env"):
        return "runtime_env"
    docs = _docs(path)
    if all(str(d.get("apiVersion", "")).startswith("ray.io/") for d in docs):
        return "kuberay"
    if all(d.get("apiVersion") == "v1" and d.get("kind") == "ServiceAccount" for d in docs):
        return "kubernetes"
    if len(docs) == 1 and "provider" in docs[0]:
        return "launcher"
    return "unknown"


def _of_kind(kind: str) -> list[Path]:
    """Files of one kind, for parametrize; a file that fails to parse fails its own test."""
    out = []
    for p in YAML_FILES:
        try:
            if _kind(p) == kind:
                out.append(p)
        except (yaml.YAMLError, AssertionError):
            pass
    return out


def test_cluster_dir_has_every_config() -> None:
    names = {_rel(p) for p in YAML_FILES}
    expected = {
        "cluster/aws.yaml",
        "cluster/gcp.yaml",
        "cluster/runtime_env.yaml",
        "cluster/kuberay/raycluster.yaml",
        "cluster/kuberay/rayjob.yaml",
        "cluster/kuberay/runtime_env.yaml",
        "cluster/kuberay/serviceaccount.yaml",
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"
    assert (CLUSTER / "local.sh").is_file()
    assert (CLUSTER / "README.md").is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_parses_and_is_recognised(path: Path) -> None:
    assert _kind(path) != "unknown", (
        f"{_rel(path)}: not a launcher config (top-level `provider`), a KubeRay manifest "
        "(apiVersion ray.io/v1), ServiceAccounts (apiVersion v1) or a runtime env (named "
        "runtime_env*.yaml); no test checks it"
    )


# ---------------------------------------------------------------- one Ray version

# Every way a file can name a Ray version; each must name RAY_VERSION, with `==` for requirements.
RAY_VERSION_MENTIONS = {
    "requirement": re.compile(
        r"(?<![\w/-])ray(?:\[[\w,\s-]*\])?\s*(?P<op>==|>=|<=|~=|!=|>|<)\s*(?P<version>\d[\w.]*)"
    ),
    "image": re.compile(r"\brayproject/ray(?:-ml)?:(?P<version>[^\s\"'`-]+)"),
    "rayVersion": re.compile(r"\brayVersion:\s*[\"']?(?P<version>[^\s\"']+)"),
    "prose": re.compile(r"\bRay (?P<version>\d+\.\d+\.\d+)\b", re.IGNORECASE),
}


def test_ray_is_pinned_to_the_installed_version() -> None:
    import ray

    assert RAY_PIN.match(RAY_REQUIREMENT), (
        f"pyproject.toml: Ray must be one exact pin such as 'ray[default,tune]==2.60.0' (the "
        f"images' version), got {RAY_REQUIREMENT or 'no single ray entry'!r}"
    )
    extras = set(re.findall(r"[\w-]+", RAY_REQUIREMENT.partition("[")[2].partition("]")[0]))
    assert {"default", "tune"} <= extras, (
        f"pyproject.toml: {RAY_REQUIREMENT!r} lacks [default,tune]"
    )
    assert ray.__version__ == RAY_VERSION, (
        f"installed ray {ray.__version__}, but pyproject.toml pins {RAY_VERSION}: "
        "run `pip install -e .` again"
    )


def test_every_file_names_the_pinned_ray_version() -> None:
    paths = [
        ROOT / "pyproject.toml",
        ROOT / "README.md",
        *sorted(p for p in CLUSTER.rglob("*") if p.is_file()),
    ]
    found = 0
    for path in paths:
        text = path.read_text(errors="replace")  # an image or other binary file names no version
        for what, pattern in RAY_VERSION_MENTIONS.items():
            for m in pattern.finditer(text):
                found += 1
                line = text.count("\n", 0, m.start()) + 1
                where = f"{_rel(path)}:{line}: {m.group(0)!r}"
                assert m.groupdict().get("op") in (None, "=="), (
                    f"{where}: pin Ray exactly (==), as pyproject.toml does"
                )
                assert m["version"] == RAY_VERSION, (
                    f"{where} names Ray {m['version']} ({what}); pyproject.toml pins {RAY_VERSION}"
                )
    assert found >= 10, f"found only {found} Ray versions named; did a pattern stop matching?"


# ---------------------------------------------------------------- cluster launcher


def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _commands(cfg: dict[str, Any], key: str) -> str:
    return "\n".join(cfg.get(key) or [])


@pytest.mark.parametrize("path", _of_kind("launcher"), ids=_rel)
def test_launcher_config(path: Path) -> None:
    import jsonschema

    (cfg,) = _docs(path)
    where = _rel(path)
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types"):
        assert key in cfg, f"{where}: missing `{key}`"
    jsonschema.validate(cfg, _ray_schema())

    provider = cfg["provider"]
    assert provider.get("type") in ("aws", "gcp"), (
        f"{where}: provider.type={provider.get('type')!r}"
    )
    assert provider.get("region"), f"{where}: provider.region is empty"
    if provider["type"] == "gcp":
        assert provider.get("project_id"), f"{where}: provider.project_id is empty"
        assert provider.get("availability_zone"), f"{where}: provider.availability_zone is empty"
    assert cfg["auth"].get("ssh_user"), f"{where}: auth.ssh_user is empty"

    types = cfg["available_node_types"]
    head = cfg.get("head_node_type")
    assert head in types, f"{where}: head_node_type={head!r} is not one of {sorted(types)}"
    for name, nt in types.items():
        for key in ("node_config", "resources", "min_workers", "max_workers"):
            assert key in nt, f"{where}: node type {name} lacks `{key}`"
        assert 0 <= nt["min_workers"] <= nt["max_workers"], f"{where}: {name} min/max_workers"
    assert types[head]["resources"].get("CPU") == 0, (
        f"{where}: the head must advertise CPU: 0 so that no trial runs there, "
        f"got {types[head]['resources']}"
    )
    workers = {n: nt for n, nt in types.items() if n != head}
    assert workers, f"{where}: no worker node type"
    for name, nt in workers.items():
        assert nt["resources"].get("GPU", 0) >= 1, (
            f"{where}: worker type {name} has no GPU resource"
        )
        assert nt["resources"].get("CPU", 0) >= 1, (
            f"{where}: worker type {name} has no CPU resource"
        )
        assert nt["max_workers"] <= cfg["max_workers"], f"{where}: {name}.max_workers > max_workers"
        node = nt["node_config"]
        if provider["type"] == "gcp":
            assert node.get("guestAccelerators"), f"{where}: {name} has no guestAccelerators"
            # The Compute API wants an object; a list (as in some Ray examples) is rejected.
            sched = node.get("scheduling")
            assert isinstance(sched, dict) and sched.get("onHostMaintenance") == "TERMINATE", (
                f"{where}: GPU node {name} needs scheduling: {{onHostMaintenance: TERMINATE}}, "
                f"got {sched!r}"
            )

    docker = cfg.get("docker") or {}
    for key in ("head_image", "worker_image"):
        assert RAY_IMAGE.match(docker.get(key, "")), f"{where}: docker.{key}={docker.get(key)!r}"
    assert docker["worker_image"].endswith("-gpu"), f"{where}: GPU workers need the -gpu image"

    setup = _commands(cfg, "setup_commands") + _commands(cfg, "head_setup_commands")
    assert "liquid-search" in setup and "pip install" in setup, (
        f"{where}: setup commands must install the project"
    )
    assert "liquid-search" in _commands(cfg, "worker_setup_commands") or "liquid-search" in (
        _commands(cfg, "setup_commands")
    ), f"{where}: workers never install the project"
    head_start = _commands(cfg, "head_start_ray_commands")
    worker_start = _commands(cfg, "worker_start_ray_commands")
    assert "ray start --head" in head_start, (
        f"{where}: head_start_ray_commands lack `ray start --head`"
    )
    assert "ray start --address" in worker_start, (
        f"{where}: worker_start_ray_commands lack `ray start`"
    )
    for label, cmds in (("head", head_start), ("worker", worker_start)):
        assert "RAY_AUTH_MODE=token" in cmds, (
            f"{where}: {label} start commands run without token auth"
        )
    mounts = cfg.get("file_mounts") or {}
    assert "~/.ray" in mounts, (
        f"{where}: file_mounts must copy ~/.ray (the auth token) to the nodes"
    )


@pytest.mark.parametrize("path", _of_kind("launcher"), ids=_rel)
def test_launcher_config_passes_rays_own_checks(path: Path) -> None:
    """What `ray up` runs on the file before it talks to the cloud."""
    from ray.autoscaler._private.docker import validate_docker_config
    from ray.autoscaler._private.util import prepare_config, validate_config

    (cfg,) = _docs(path)
    prepared = prepare_config(cfg)
    validate_config(prepared)
    validate_docker_config(prepared)


# ---------------------------------------------------------------- KubeRay


def _containers(pod_template: dict[str, Any], where: str) -> list[dict[str, Any]]:
    containers = (pod_template.get("spec") or {}).get("containers") or []
    assert containers, f"{where}: pod template without containers"
    return containers


def _check_ray_cluster_spec(spec: dict[str, Any], where: str) -> None:
    assert spec.get("rayVersion") == RAY_VERSION, f"{where}: rayVersion={spec.get('rayVersion')!r}"
    assert (spec.get("authOptions") or {}).get("mode") == "token", (
        f"{where}: authOptions.mode != token"
    )

    head = spec.get("headGroupSpec")
    assert head, f"{where}: no headGroupSpec"
    params = head.get("rayStartParams")
    assert isinstance(params, dict), f"{where}: headGroupSpec.rayStartParams missing"
    for k, v in params.items():
        assert isinstance(v, str), f"{where}: rayStartParams.{k}={v!r} must be a string"
    assert params.get("dashboard-host") == "0.0.0.0", f"{where}: head needs dashboard-host 0.0.0.0"
    assert params.get("num-cpus") == "0", f"{where}: head must advertise num-cpus 0 (no trials)"
    head_image = _containers(head.get("template") or {}, f"{where} head")[0].get("image", "")
    assert RAY_IMAGE.match(head_image), (
        f"{where}: head image {head_image!r} is not ray {RAY_VERSION}"
    )

    groups = spec.get("workerGroupSpecs") or []
    assert groups, f"{where}: no workerGroupSpecs"
    for g in groups:
        name = g.get("groupName")
        assert name, f"{where}: a worker group without groupName"
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(g.get(key), int), f"{where}: group {name} lacks integer `{key}`"
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], (
            f"{where}: group {name} replicas"
        )
        assert isinstance(g.get("rayStartParams"), dict), (
            f"{where}: group {name} lacks rayStartParams"
        )
        container = _containers(g.get("template") or {}, f"{where} group {name}")[0]
        image = container.get("image", "")
        assert RAY_IMAGE.match(image) and image.endswith("-gpu"), (
            f"{where}: group {name} image {image!r} is not the ray {RAY_VERSION} GPU image"
        )
        limits = (container.get("resources") or {}).get("limits") or {}
        assert int(limits.get("nvidia.com/gpu", 0)) >= 1, (
            f"{where}: group {name} has no nvidia.com/gpu limit"
        )


def _runtime_env_problems(env: dict[str, Any], where: str) -> None:
    from ray.runtime_env import RuntimeEnv

    unknown = set(env) - RUNTIME_ENV_KEYS - {"working_dir"}
    assert not unknown, f"{where}: runtime_env keys {sorted(unknown)} are not allowed"
    for k, v in (env.get("env_vars") or {}).items():
        assert isinstance(v, str), f"{where}: env_vars.{k}={v!r} must be a string (quote it)"
    RuntimeEnv(**env)  # Ray's own type checks


@pytest.mark.parametrize("path", _of_kind("kuberay"), ids=_rel)
def test_kuberay_manifest(path: Path) -> None:
    where = _rel(path)
    for doc in _docs(path):
        assert doc.get("apiVersion") == "ray.io/v1", (
            f"{where}: apiVersion={doc.get('apiVersion')!r}"
        )
        assert doc.get("kind") in ("RayCluster", "RayJob"), f"{where}: kind={doc.get('kind')!r}"
        assert (doc.get("metadata") or {}).get("name"), f"{where}: metadata.name is empty"
        spec = doc.get("spec") or {}
        if doc["kind"] == "RayCluster":
            _check_ray_cluster_spec(spec, f"{where} RayCluster")
            continue
        entry = " ".join(str(spec.get("entrypoint", "")).split())
        assert entry.startswith("liquid-search run"), f"{where}: entrypoint {entry[:60]!r}"
        _check_cli_command("run", entry.removeprefix("liquid-search run"), f"{where} entrypoint")
        assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: shutdownAfterJobFinishes"
        assert "rayClusterSpec" in spec, f"{where}: RayJob without rayClusterSpec"
        _check_ray_cluster_spec(spec["rayClusterSpec"], f"{where} RayJob.rayClusterSpec")
        raw = spec.get("runtimeEnvYAML")
        assert isinstance(raw, str), f"{where}: runtimeEnvYAML must be a YAML string"
        # KubeRay puts it in a double-quoted shell word, where `$` would be expanded away.
        assert "$" not in raw, (
            f"{where}: runtimeEnvYAML holds `$`, which the submitter shell expands"
        )
        env = yaml.safe_load(raw)
        assert isinstance(env, dict), f"{where}: runtimeEnvYAML is not a mapping"
        assert env.get("working_dir") and env.get("pip"), (
            f"{where}: runtimeEnvYAML needs working_dir and pip"
        )
        _runtime_env_problems(env, where)


# ---------------------------------------------------------------- GPU fit and storage credentials

# (vCPUs, GPUs) of the launcher configs' machine types, as the providers publish them; GCP adds its
# GPUs from guestAccelerators, and KubeRay pods take theirs from the container limits.
MACHINES = {
    "g5.xlarge": (4, 1),  # AWS: 4 vCPU, 1x A10G
    "n1-standard-8": (8, 0),  # GCP: 8 vCPU
}
# What the docs run on the cloud: four trials share a GPU, one CPU each.
DOCUMENTED_TRIAL = (1.0, 0.25)
TRIAL_SHAPE = re.compile(r"resources\.cpu=([\d.]+)\s+resources\.gpu=([\d.]+)")


def _trial_shapes(text: str) -> set[tuple[float, float]]:
    """(cpu, gpu) per trial: the documented default and every pair the file's commands use."""
    shapes = {(float(c), float(g)) for c, g in TRIAL_SHAPE.findall(text)}
    return shapes | {DOCUMENTED_TRIAL}


def _check_trials_fit(
    where: str, cpus: float, gpus: float, shapes: set[tuple[float, float]]
) -> None:
    assert gpus >= 1, f"{where}: advertises {gpus} GPUs, a GPU worker needs at least 1"
    for cpu, gpu in sorted(shapes):
        if gpu == 0:
            continue
        # Ray counts resources in 1e-4 units, so 1 / 0.25 is 4, not 3.999...
        on_gpus = math.floor(gpus / gpu + 1e-6)
        on_cpus = math.floor(cpus / cpu + 1e-6)
        assert on_cpus >= on_gpus, (
            f"{where}: {on_gpus} trials of resources.cpu={cpu} resources.gpu={gpu} share its "
            f"{gpus:g} GPUs, but its {cpus:g} CPUs hold only {on_cpus}: give it "
            f"{math.ceil(on_gpus * cpu)} CPUs"
        )


@pytest.mark.parametrize("path", _of_kind("launcher"), ids=_rel)
def test_launcher_gpu_workers_fit_the_documented_trials(path: Path) -> None:
    (cfg,) = _docs(path)
    shapes = _trial_shapes(path.read_text())
    head = cfg["head_node_type"]
    for name, nt in cfg["available_node_types"].items():
        if name == head:
            continue
        where = f"{_rel(path)} {name}"
        node = nt["node_config"]
        machine = node.get("InstanceType") or node.get("machineType")
        assert machine in MACHINES, (
            f"{where}: machine type {machine!r} is not in MACHINES; add its vCPUs and GPUs there"
        )
        vcpus, gpus = MACHINES[machine]
        gpus += sum(a.get("acceleratorCount", 0) for a in node.get("guestAccelerators") or [])
        # Ray starts the node with exactly these (the autoscaler plans with them too).
        advertised = nt["resources"]
        assert advertised.get("CPU") == vcpus and advertised.get("GPU") == gpus, (
            f"{where}: advertises {advertised}, but a {machine} has CPU {vcpus}, GPU {gpus}: "
            "advertise what the machine has"
        )
        _check_trials_fit(where, vcpus, gpus, shapes)


# The identities `ray up` creates for the head, with rights far beyond one bucket.
LAUNCHER_DEFAULT_IDENTITIES = {"aws": "ray-autoscaler-v1", "gcp": "ray-autoscaler-sa-v1"}


def _identity(node: dict[str, Any]) -> str | None:
    """The instance profile (AWS) or service account (GCP) a node runs as, by name."""
    profile = node.get("IamInstanceProfile")
    if profile:
        return profile.get("Name") or str(profile.get("Arn", "")).rpartition("/")[2]
    accounts = node.get("serviceAccounts")
    if accounts:
        return accounts[0]["email"].partition("@")[0]
    return None


@pytest.mark.parametrize("path", _of_kind("launcher"), ids=_rel)
def test_launcher_workers_get_bucket_only_credentials(path: Path) -> None:
    (cfg,) = _docs(path)
    where = _rel(path)
    provider = cfg["provider"]["type"]
    default = LAUNCHER_DEFAULT_IDENTITIES[provider]
    head = cfg["head_node_type"]
    head_identity = _identity(cfg["available_node_types"][head]["node_config"]) or default
    if provider == "aws":
        # ray-autoscaler-v1 would hold AmazonS3FullAccess; the head names its own profile.
        assert head_identity != default, (
            f"{where}: the head runs as {default} (S3 full access); name a profile with the "
            "autoscaler's EC2 rights and the one bucket (cluster/README.md, Shared storage)"
        )
    for name, nt in cfg["available_node_types"].items():
        if name == head:
            continue
        identity = _identity(nt["node_config"])
        assert identity, (
            f"{where}: worker {name} has no credentials, so trials cannot reach --storage"
        )
        assert identity not in (default, head_identity), (
            f"{where}: worker {name} runs as {identity}, the head's identity with the autoscaler's "
            "rights; give it a bucket-only one (cluster/README.md, Shared storage)"
        )


def _iam_statements(text: str) -> list[dict[str, Any]]:
    """The statements of every ```json block of a markdown text (each must parse)."""
    out = []
    for block in re.findall(r"```json\n(.*?)```", text, re.DOTALL):
        out += json.loads(block).get("Statement", [])
    return out


def test_readme_describes_bucket_only_policies() -> None:
    statements = _iam_statements((CLUSTER / "README.md").read_text())
    granted: dict[str, set[str]] = {}
    for st in statements:
        assert st.get("Effect") == "Allow", st
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        assert "*" not in actions and "*" not in resources, f"wildcard grant: {st}"
        for action in actions:
            assert action != "s3:*", f"s3:* grants more than the bucket needs: {st}"
            if action.startswith("s3:"):
                for r in resources:
                    assert r in ("arn:aws:s3:::YOUR_BUCKET", "arn:aws:s3:::YOUR_BUCKET/*"), (
                        f"{action} on {r}: S3 rights must name YOUR_BUCKET only"
                    )
                    granted.setdefault(r, set()).add(action)
    assert "s3:ListBucket" in granted.get("arn:aws:s3:::YOUR_BUCKET", set()), granted
    objects = granted.get("arn:aws:s3:::YOUR_BUCKET/*", set())
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= objects, granted


def _cluster_specs(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, RayCluster spec) of every cluster a KubeRay manifest creates."""
    out = []
    for doc in _docs(path):
        spec = doc.get("spec") or {}
        if doc.get("kind") == "RayJob":
            out.append((f"{_rel(path)} RayJob.rayClusterSpec", spec.get("rayClusterSpec") or {}))
        else:
            out.append((f"{_rel(path)} {doc.get('kind')}", spec))
    return out


def _pods(spec: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, rayStartParams, pod spec) of the head and of every worker group."""
    head = spec.get("headGroupSpec") or {}
    out = [(f"{where} head", head.get("rayStartParams") or {}, head["template"]["spec"])]
    for g in spec.get("workerGroupSpecs") or []:
        out.append(
            (
                f"{where} group {g['groupName']}",
                g.get("rayStartParams") or {},
                g["template"]["spec"],
            )
        )
    return out


QUANTITY_SUFFIXES = {
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("4", "500m", "16Gi") as a number."""
    m = re.fullmatch(r"([\d.]+)([a-zA-Z]*)", str(value))
    assert m and (not m[2] or m[2] in QUANTITY_SUFFIXES), f"not a quantity: {value!r}"
    return float(m[1]) * QUANTITY_SUFFIXES.get(m[2], 1)


@pytest.mark.parametrize("path", _of_kind("kuberay"), ids=_rel)
def test_kuberay_gpu_groups_fit_the_documented_trials(path: Path) -> None:
    shapes = _trial_shapes(path.read_text())
    for where, spec in _cluster_specs(path):
        for group_where, params, pod in _pods(spec, where)[1:]:
            res = pod["containers"][0].get("resources") or {}
            limits, requests = res.get("limits") or {}, res.get("requests") or {}
            assert "cpu" in limits and requests.get("cpu") == limits["cpu"], (
                f"{group_where}: set cpu requests = limits, so the pod is sure of the CPUs Ray "
                f"advertises; got requests {requests.get('cpu')!r}, limits {limits.get('cpu')!r}"
            )
            limit = _quantity(limits["cpu"])
            # KubeRay's num-cpus: rayStartParams, else the limit rounded up.
            cpus = float(params.get("num-cpus", math.ceil(limit)))
            assert cpus <= limit, f"{group_where}: num-cpus {cpus:g} > the pod's {limit:g} CPUs"
            gpus = float(params.get("num-gpus", _quantity(limits.get("nvidia.com/gpu", 0))))
            _check_trials_fit(group_where, cpus, gpus, shapes)


@pytest.mark.parametrize("path", _of_kind("kuberay"), ids=_rel)
def test_kuberay_object_store_and_shm_are_bounded(path: Path) -> None:
    for where, spec in _cluster_specs(path):
        for pod_where, params, pod in _pods(spec, where):
            container = pod["containers"][0]
            memory = _quantity(((container.get("resources") or {}).get("limits") or {})["memory"])
            assert "object-store-memory" in params, (
                f"{pod_where}: set rayStartParams.object-store-memory (bytes) rather than leave "
                "the object store to Ray's share of the pod"
            )
            store = int(params["object-store-memory"])
            volumes = {v["name"]: v for v in pod.get("volumes") or []}
            for name, v in volumes.items():
                empty = v.get("emptyDir")
                if empty is not None and empty.get("medium") == "Memory":
                    # Memory-backed volumes are charged to the pod and otherwise grow to its limit.
                    assert "sizeLimit" in empty, (
                        f"{pod_where}: memory emptyDir {name} has no sizeLimit"
                    )
            shm = [
                m["name"]
                for m in container.get("volumeMounts") or []
                if m["mountPath"] == "/dev/shm"
            ]
            for name in shm:
                size = _quantity(volumes[name]["emptyDir"]["sizeLimit"])
                # Ray moves the object store to slow /tmp when /dev/shm is smaller than it.
                assert store < size < memory, (
                    f"{pod_where}: /dev/shm sizeLimit {size / 2**30:g} GiB must exceed "
                    f"object-store-memory {store / 2**30:g} GiB and stay below the pod's "
                    f"{memory / 2**30:g} GiB"
                )


def _service_accounts() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for p in _of_kind("kubernetes") for d in _docs(p)}


@pytest.mark.parametrize("path", _of_kind("kubernetes"), ids=_rel)
def test_service_accounts_map_to_a_bucket_identity(path: Path) -> None:
    for doc in _docs(path):
        name = (doc.get("metadata") or {}).get("name")
        assert name, f"{_rel(path)}: a ServiceAccount without metadata.name"
        notes = doc["metadata"].get("annotations") or {}
        # IRSA on EKS, Workload Identity on GKE: the cloud identity that can use the bucket.
        for key in ("eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account"):
            assert notes.get(key), f"{_rel(path)}: ServiceAccount {name} lacks the {key} annotation"


@pytest.mark.parametrize("path", _of_kind("kuberay"), ids=_rel)
def test_kuberay_pods_run_as_the_bucket_service_accounts(path: Path) -> None:
    accounts = _service_accounts()
    for where, spec in _cluster_specs(path):
        pods = _pods(spec, where)
        names = [pod.get("serviceAccountName") for _, _, pod in pods]
        for (pod_where, _, _), name in zip(pods, names, strict=True):
            assert name in accounts, (
                f"{pod_where}: serviceAccountName {name!r} is none of the ServiceAccounts in "
                f"cluster/kuberay ({sorted(accounts)}); pods need one for bucket credentials"
            )
        # KubeRay binds its autoscaler Role (create and delete pods) to the head's account.
        assert names[0] not in names[1:], (
            f"{where}: the workers share the head's account {names[0]!r} and with it the "
            "autoscaler's rights to create and delete pods; give them their own"
        )


# ---------------------------------------------------------------- runtime env


@pytest.mark.parametrize("path", _of_kind("runtime_env"), ids=_rel)
def test_runtime_env(path: Path) -> None:
    where = _rel(path)
    (env,) = _docs(path)
    assert "working_dir" not in env, (
        f"{where}: working_dir comes from `ray job submit --working-dir`"
    )
    _runtime_env_problems(env, where)
    missing = RUNTIME_ENV_EXCLUDES - set(env.get("excludes") or [])
    assert not missing, f"{where}: excludes lack {sorted(missing)}; the upload would carry them"
    assert (env.get("env_vars") or {}).get("OMP_NUM_THREADS") == "1", f"{where}: OMP_NUM_THREADS"


# ---------------------------------------------------------------- local.sh and docs


def test_local_sh_is_valid_bash() -> None:
    bash = shutil.which("bash")
    assert bash, "bash is not installed"
    script = CLUSTER / "local.sh"
    res = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"bash -n cluster/local.sh: {res.stderr}"
    text = script.read_text()
    assert "set -euo pipefail" in text
    # Ray 2.60: `ray start --head` never makes a token, and every node and client needs the mode.
    assert "export RAY_AUTH_MODE=" in text and "ray get-auth-token --generate" in text
    # Without a command it prints its usage and exits 2, before touching Ray.
    res = subprocess.run([bash, str(script)], capture_output=True, text=True, check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    for cmd in ("start", "status", "stop"):
        assert f"local.sh {cmd}" in res.stdout, f"usage does not mention `{cmd}`: {res.stdout}"


def _doc_texts() -> dict[str, str]:
    paths = [*YAML_FILES, CLUSTER / "README.md", CLUSTER / "local.sh"]
    return {_rel(p): p.read_text() for p in paths}


# `liquid-search SUB ...` where it is a command: after `-- ` (ray job submit), at the start of a
# line, after `$ ` or inside backticks. Continued lines (`\` + newline, in comments too) are joined.
CLI_USE = re.compile(r"(?:--|^|\$|`)[ \t]*liquid-search[ \t]+([a-z]+)([^\n`]*)", re.MULTILINE)
CLI_FLAGS = {"config", "data", "address", "storage", "name", "run", "scale"}


def _check_cli_command(sub: str, rest: str, where: str) -> None:
    assert sub in CLI_SUBCOMMANDS, f"{where}: `liquid-search {sub}` is not a CLI subcommand"
    for flag in re.findall(r"(?<![\w-])--([a-z][\w-]*)", rest):
        assert flag in CLI_FLAGS, f"{where}: `liquid-search {sub} --{flag}` is not a CLI flag"


def test_docs_name_existing_files_and_cli_commands() -> None:
    uses = 0
    for where, text in _doc_texts().items():
        for ref in set(re.findall(r"\b(?:cluster|configs)/[\w./-]+\.(?:yaml|sh|md)\b", text)):
            assert (ROOT / ref).is_file(), f"{where} names {ref}, which does not exist"
        joined = re.sub(r"\\\n[ \t]*(?:#[ \t]*)?", " ", text)
        for sub, rest in CLI_USE.findall(joined):
            uses += 1
            _check_cli_command(sub, rest, where)
    assert uses >= 8, f"found only {uses} liquid-search commands in the cluster docs"
