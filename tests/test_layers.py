"""The shape of the code: `ranker/` and `search/` import each other as a DAG, `ranker/` never
imports ray, nothing reaches into Ray's private modules, and only `search/rundir.py` spells the
names of a run directory's files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ranker", "search")
# Every file name of a run directory; only the module that owns them may write them out.
RUN_FILES = ("spec.yaml", "run.json", "stages.json", "results.csv", "best.json", "model.pt",
             "summary.json", "analysis.json", "report.md", "report.html", "state.pt",
             "daily.npz", "point.json", "_daily.npz", "universes_daily.npz")  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path], me: str) -> set[str]:
    """Every module (ours or not) that `path` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text())
    out = set()
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in modules else base)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {i for i in _imports(p, modules, m) if i in modules} for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a path (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_packages_import_each_other_as_a_dag():
    graph = _graph()
    assert len(graph) > 20 and graph["search.cli"], "the parser finds the modules and imports"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    # ranker is the bottom layer: it never imports search.
    assert not [(m, i) for m, deps in graph.items() if m.startswith("ranker")
                for i in deps if i.startswith("search")]  # fmt: skip


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_ranker_never_imports_ray():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("ranker"):
            ray = {i for i in _imports(path, modules, name) if i.split(".")[0] == "ray"}
            assert not ray, f"{path} imports {ray}"


def test_no_private_ray_api():
    private = re.compile(
        r"_local_tuner|\bray\._(?!_)"
    )  # ray._raylet, ray._private; not __version__
    assert private.search("from ray._raylet import Config") and not private.search(
        "ray.__version__"
    )
    for path in [*(ROOT / "search").rglob("*.py"), *(ROOT / "ranker").rglob("*.py")]:
        found = private.findall(path.read_text())
        assert not found, f"{path} uses a private Ray API: {found}"


def test_only_rundir_spells_run_file_names():
    for name, path in _modules().items():
        if name == "search.rundir":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for f in RUN_FILES:
                    assert " " in node.value or not node.value.endswith(f), (
                        f"{path}:{node.lineno} spells the run file {node.value!r}; ask "
                        f"search.rundir for it"
                    )


LONG = 80  # lines; a longer function says why in its docstring
WHY_LONG = "long because"


def test_long_functions_say_why():
    """STYLE.md: a function does one job; past ~80 lines its docstring says why it cannot be
    split (with the words "long because")."""
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONG and WHY_LONG not in (ast.get_docstring(node) or ""):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, f"functions over {LONG} lines without a reason: {long}"


def test_the_run_directory_doc_lists_every_file():
    """docs/run-directory.md is the one listing of a run's files for users; search/rundir.py
    names them in code. Every name the code defines is in the doc."""
    import search.rundir as rundir

    doc = (ROOT / "docs" / "run-directory.md").read_text()
    names = [v for k, v in vars(rundir).items()
             if k.isupper() and k.endswith(("_FILE", "_DIR", "_MD", "_HTML")) and isinstance(v, str)]  # fmt: skip
    assert len(names) >= 12, names
    missing = [n for n in names if n not in doc]
    assert not missing, f"docs/run-directory.md does not mention {missing}"


def test_the_results_documents_are_read_by_attribute():
    """summary.json and analysis.json are records (`search.results`): outside that module no
    code under search/ reads them by string key."""
    pattern = re.compile(r'summary\[|summary\.get\(|analysis\[|analysis\.get\(|\["final"\]')
    found = []
    for name, path in _modules().items():
        if name.startswith("search") and name != "search.results":
            found += [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
                      for i, line in enumerate(path.read_text().splitlines(), 1)
                      if pattern.search(line)]  # fmt: skip
    assert not found, "\n".join(found)
