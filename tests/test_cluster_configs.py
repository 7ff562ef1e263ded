"""Every file under cluster/ holds what the tool that reads it requires.

Launcher YAMLs are checked against the schema that ships with the installed Ray and through Ray's
own config preparation; KubeRay manifests against the fields the operator needs; runtime envs
through `ray.runtime_env.RuntimeEnv`. Nothing here starts Ray or touches the network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
RAY_VERSION = "2.60.0"
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
    """Which tool reads the file: 'launcher', 'kuberay', 'runtime_env', or 'unknown'."""
    if path.name.startswith("runtime_env"):
        return "runtime_env"
    docs = _docs(path)
    if all(str(d.get("apiVersion", "")).startswith("ray.io/") for d in docs):
        return "kuberay"
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
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"
    assert (CLUSTER / "local.sh").is_file()
    assert (CLUSTER / "README.md").is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_parses_and_is_recognised(path: Path) -> None:
    assert _kind(path) != "unknown", (
        f"{_rel(path)}: not a launcher config (top-level `provider`), a KubeRay manifest "
        "(apiVersion ray.io/v1) or a runtime env (named runtime_env*.yaml); no test checks it"
    )


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
