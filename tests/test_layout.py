"""The package's shape: commands over a library over the model, no command importing another, shallow imports."""

import ast
import functools

from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "recipe"
COMMANDS = {"train", "data", "generate", "evaluate", "plot", "push", "convert"}
TRAINING = {"trainer", "callbacks", "launch", "step_guard", "throughput", "share_evaluation", "staged_checkpoints",
            "resumable_data"}
MODEL = {"configuration_gpt", "modeling_gpt"}
MODULES = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}


def imported_modules(name: str) -> set[str]:
    """The recipe modules a module imports (at the top or inside functions; not type-checking-only imports)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    type_checking_only = {
        id(child) for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING" for child in ast.walk(node)
    }
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in type_checking_only and node.module:
            if node.level == 1:
                imported.add(node.module.split(".")[0])
            elif node.module.startswith("recipe."):
                imported.add(node.module.split(".")[1])
    return imported & MODULES


@functools.cache
def longest_chain(name: str) -> tuple[str, ...]:
    chains = [(name, *longest_chain(dependency)) for dependency in imported_modules(name)]
    return max(chains, key=len, default=(name,))


def test_no_command_imports_another_and_the_layers_point_down():
    for name in MODULES:
        imported = imported_modules(name)
        if name in COMMANDS:
            assert not imported & COMMANDS, f"command {name} imports command(s) {imported & COMMANDS}"
        elif name in TRAINING:
            assert not imported & COMMANDS, name
        elif name in MODEL:
            assert imported <= MODEL, f"{name} must stay self-contained (it is copied into every checkpoint)"
        else:  # the library
            assert not imported & (COMMANDS | TRAINING), f"library module {name} imports {imported & (COMMANDS | TRAINING)}"


def test_the_import_graph_is_at_most_four_levels_deep():
    deepest = max((longest_chain(name) for name in MODULES), key=len)
    assert len(deepest) - 1 <= 4, " -> ".join(deepest)
