"""The package's import graph: no cycle between modules, and no import from a lower layer to a
higher one. Read from the source with ast (every import, at module level or inside a function),
so it holds for imports that only run when a command does. And no command imports PyTorch."""

import ast
import importlib.util
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ham_synth"

# Lowest first. A module may import from its own layer and the layers below it. An entry names a
# module or a package (every module under it); the longest matching entry places a module.
LAYERS = (
    # Infrastructure: configs, devices, state, files, logs.
    ("xla_cpu", "lazy", "fileio", "config_lib", "parallel", "state", "variables", "checkpoint",
     "environment", "grids", "metric_writer", "run_config", "optim"),
    ("models", "diffusion"),  # Networks and noise schedules.
    ("data", "tasks"),  # Sources and pipelines; the model families and their sampling loop.
    ("workdir",),  # A run rebuilt from its config and checkpoint.
    ("evaluators",),
    # Commands: one verb each (the prepare and convert-inception verbs live with their data).
    ("train", "synthesize", "evaluate", "predict", "memorization"),
    ("study",),
    ("main",),
)  # fmt: skip


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str, modules: set[str]) -> str:
    """`a.b.c` (a module, or a name in one) -> the longest prefix that is a module here."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (names relative to ham_synth; "" the root)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for full in names:
                if full == "ham_synth" or full.startswith("ham_synth."):
                    targets.add(resolve(full.removeprefix("ham_synth").lstrip("."), set(paths)))
        graph[name] = targets - {name}
    return graph


def layer(module: str) -> int:
    """The index of the longest LAYERS entry that is `module` or a package above it."""
    matches = [
        (len(entry), i)
        for i, entries in enumerate(LAYERS)
        for entry in entries
        if module == entry or module.startswith(entry + ".")
    ]
    if not matches:
        raise AssertionError(f"ham_synth.{module} is in no layer: add it to LAYERS.")
    return max(matches)[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer_and_imports_none_above_it():
    graph = import_graph()
    package_root = {""}  # `import ham_synth` runs no code of ours beyond the package docstring.
    upward = [
        f"ham_synth.{a} (layer {layer(a)}) imports ham_synth.{b} (layer {layer(b)})"
        for a, targets in sorted(graph.items())
        if a
        for b in sorted(targets - package_root)
        if layer(b) > layer(a)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


@pytest.mark.parametrize(
    "graph, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_find_cycle_on_known_graphs(graph, cycle):
    assert find_cycle(graph) == cycle


def test_layers_place_modules_by_their_longest_entry():
    assert layer("data.prepare") == layer("data") < layer("evaluators.convert_inception")
    assert layer("tasks.sampling") < layer("evaluators.samples") < layer("synthesize")
    with pytest.raises(AssertionError, match="in no layer"):
        layer("somewhere_new")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch installed")
def test_no_command_imports_pytorch_even_where_it_is_installed():
    # tensorboardX imports torch when it can; metric_writer hides it (no run needs PyTorch).
    code = (
        "import sys\n"
        "from ham_synth import evaluate, main, memorization, predict, synthesize, train\n"
        "from ham_synth.data import prepare\n"
        "from ham_synth.study import runner\n"
        "print(sorted(m for m in ('torch', 'tensorboardX') if m in sys.modules))\n"
        "import torch\n"  # Hidden only while tensorboardX imports: a user's own import works.
        "print(torch.ones(2).sum().item())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["['tensorboardX']", "2.0"], out.stdout + out.stderr
