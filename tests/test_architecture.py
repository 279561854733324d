"""The package's shape (docs/design.md): imports go down the layers and never around in a circle, and no logic is
written twice in src/."""

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "flywheel"

# Lowest first. A module may import its own layer and the ones below, never one above. (The registries find
# their entries by importing the modules that register, by name, on first lookup: flywheel.registry.)
LAYERS = [
    # "": the package (__version__; its API is lazy)
    ["", "console", "cpu_kernels", "cron", "errors", "faults", "rng", "precision", "model_card"],
    ["registry", "schemas", "sandbox", "supervisor", "columnar", "workflow_ends", "tracking_store", "run_lock",
     "termination"],
    ["io", "layout", "tasks", "tasks.*", "model_copies"],
    ["modeling", "versioning", "data"],
    ["config"],
    ["generation", "run_state", "infra", "export", "report", "round_metrics"],
    ["stages", "stages.*", "experimental", "experimental.*", "seed_model"],
    ["mlflow_model", "machine_checks", "model_registry"],
    ["tracking", "loop", "status"],
    ["kubeflow", "kubeflow.*", "argo", "argo.*", "tool_commands", "cli"],  # the doors
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        for pattern in layer:
            if name == pattern or (pattern.endswith(".*") and name.startswith(pattern[:-1])):
                return index
    raise AssertionError(f"flywheel.{name} is in no layer of tests/test_architecture.py: add it")


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    graph = {}
    for path in SRC.rglob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "flywheel":
                base = node.module.removeprefix("flywheel").lstrip(".")
                for alias in node.names:
                    full = f"{base}.{alias.name}".lstrip(".")
                    deps.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                deps |= {a.name.removeprefix("flywheel").lstrip(".") for a in node.names
                         if a.name.split(".")[0] == "flywheel"}
        graph[module_name(path)] = {d for d in deps if d in modules and d != module_name(path)}
    return graph


def test_every_import_goes_down_the_layers():
    upward = [f"flywheel.{a} -> flywheel.{b}" for a, deps in sorted(import_graph().items()) for b in sorted(deps)
              if layer_of(b) > layer_of(a)]
    assert upward == []


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


# Lines that are shape, not logic: argparse declarations, dataclass fields, imports, docstring-free punctuation.
SHAPE = re.compile(r"^(p\.add_argument|parser\.add_argument|[a-z_]+: [\w\[\], |.]+ = _f\(|from |import |@|\)|\]|\}|"
                   r"return$|else:$|try:$|\"\"\"|#)")


def logic_lines(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = re.sub(r"\s+", " ", line.strip())
        if text and not SHAPE.match(text) and len(text) > 3:
            out.append((number, text))
    return out


def test_no_six_lines_of_logic_are_written_twice():
    """The same six consecutive lines of logic (whitespace aside) in two places of src/ (the `duplicates` tool
    also finds renamed copies; this is the check CI can run)."""
    seen: dict[tuple, list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        lines = logic_lines(path)
        for start in range(len(lines) - 5):
            window = tuple(text for _, text in lines[start:start + 6])
            seen[window].append(f"{path.relative_to(SRC)}:{lines[start][0]}")
    repeated = {window: places for window, places in seen.items() if len(places) > 1}
    assert not repeated, "\n".join(f"{places}: {window[0]!r}..." for window, places in list(repeated.items())[:5])


def test_a_run_without_tracking_needs_no_mlflow():
    """`flywheel run --no-track` and the benchmarks load the loop and the report (which reads the tracking
    module's file names) without importing MLflow: a GPU machine carrying only the training libraries runs them."""
    import subprocess
    import sys

    code = ("import sys, flywheel.loop, flywheel.report, flywheel.tracking; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
