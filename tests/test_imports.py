"""The package's import graph: no cycle (function-level imports included), and the modules that
building the DAG and the figures environment (envs/figures.yaml, no torch) load import no torch."""

import ast
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "src" / "softlens"


def imports_of(path) -> set[str]:
    """The softlens modules a module imports anywhere in its body."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("softlens."):
            deps.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("softlens.")}
    return deps - {path.stem}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return found


def test_the_package_has_no_import_cycle():
    graph = {p.stem: imports_of(p) for p in PACKAGE.glob("*.py")}
    assert cycles(graph) == []


def test_cycles_are_found_where_there_are_some():
    assert cycles({"io": {"models"}, "models": {"io"}, "config": set()}) == [["io", "models", "io"]]


def test_the_dag_and_the_figures_import_no_torch():
    code = (
        "import sys; import softlens.config, softlens.workflow, softlens.training_settings, "
        "softlens.figures, softlens.costs; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
