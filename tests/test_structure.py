"""The package's structure: imports run one way (core ← methods/training/evidence ← orchestration), with no
circle; composing a config loads no trainer library; registries list their entries explicitly."""
import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "studykit"
CORE = {"__init__", "errors", "registry", "config", "validate", "stats", "answers", "testbed", "data", "models",
        "logprobs", "device_check", "objectives", "rewards", "placebo", "distributed"}
ORCHESTRATION = {"study", "runner", "cli", "reproduce"}


def layer(module: str) -> int:
    return 0 if module in CORE else 2 if module in ORCHESTRATION else 1


def kit_imports() -> nx.DiGraph:
    """module → kit module it imports, at the top or inside a function (every import counts)."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("studykit")):
                parts = (node.module or "").removeprefix("studykit").lstrip(".").split(".")
                names = [parts[0]] if parts[0] else [alias.name for alias in node.names]
                graph.add_edges_from((path.stem, name) for name in names if name in modules and name != path.stem)
    return graph


def test_every_module_has_a_layer_and_there_is_no_import_circle():
    graph = kit_imports()
    assert list(nx.simple_cycles(graph)) == []


def test_imports_never_run_back_up_a_layer():
    upward = [(a, b) for a, b in kit_imports().edges if layer(b) > layer(a)]
    assert upward == []


def test_the_library_never_imports_the_command_line():
    assert [a for a, b in kit_imports().edges if b == "cli"] == []


def test_composing_a_config_loads_no_trainer_library():
    code = ("import sys; from studykit.config import compose; "
            "[compose([f'study={s}']) for s in ('rl_post_training', 'preference_losses', 'sft_objectives')]; "
            "print(sorted(m for m in ('trl', 'transformers', 'datasets', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_class_registries_resolve_and_list_every_kit_trainer():
    import inspect

    from trl import GRPOTrainer

    from studykit import curriculum, grpo, hybrid_rl
    from studykit.registry import PREFERENCE_LOSSES, RL_METHODS, resolve

    assert all(issubclass(resolve(path), GRPOTrainer) for path in RL_METHODS.values())
    kit_rl = {f"{m.__name__}.{name}" for m in (curriculum, grpo, hybrid_rl)
              for name, obj in inspect.getmembers(m, inspect.isclass)
              if issubclass(obj, GRPOTrainer) and obj.__module__ == m.__name__}
    assert kit_rl == set(RL_METHODS.values())
    for spec in PREFERENCE_LOSSES.values():
        resolve(spec.trainer), resolve(spec.config)


def test_registries_are_literals_without_registration_decorators():
    """One registry style: a dict literal listing every entry; no function or class registers itself."""
    decorated = [f"{path.stem}.{node.name}" for path in PACKAGE.glob("*.py") for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                 and any("register" in ast.unparse(d) for d in node.decorator_list)]
    assert decorated == []
