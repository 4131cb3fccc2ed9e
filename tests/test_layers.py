"""Imports only point down the layer order of docs/design.md; a module that imports from a layer
above it (even lazily, inside a function) fails this test."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "behavior_lm"
# lowest first; modules in one row may import each other
LAYERS = [
    ("errors", "version", "rundir", "recipe_file"),
    ("tokenization",),
    ("arguments",),
    ("data",),
    ("models",),
    ("tasks",),
    ("evaluation",),
    ("reporting",),
    ("training",),
    ("compare", "ensemble", "hub", "inference", "serving", "search", "update", "registry"),
    ("cli",),
]
LAYER = {name: i for i, row in enumerate(LAYERS) for name in row}


def layer_of(module: str) -> int:
    """``behavior_lm.data.streams`` -> the layer of ``data``; the package root is above all."""
    parts = module.split(".")
    if parts[0] != "behavior_lm":
        raise ValueError(module)
    if len(parts) == 1:
        return len(LAYERS)                           # `import behavior_lm`: the whole package
    return LAYER[parts[1]]


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "behavior_lm"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("behavior_lm"):
            if node.module == "behavior_lm":                       # from behavior_lm import x
                out += [(node.lineno, f"behavior_lm.{a.name}") if a.name in LAYER else (node.lineno, "behavior_lm")
                        for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if rel.parts[1:] == ("__init__",):
            continue
        assert rel.parts[1].removesuffix(".py") in LAYER, f"{rel}: add it to a layer in tests/test_layers.py and docs/design.md"


def test_imports_only_point_down():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        if rel.parts[1:] == ("__init__.py",):
            continue                                  # the package root registers everything
        own = LAYER[rel.parts[1].removesuffix(".py")]
        for line, module in imports(path):
            if layer_of(module) > own:
                wrong.append(f"{rel}:{line} imports {module} (layer {layer_of(module)} above {own})")
    assert not wrong, "\n".join(wrong)


def test_the_check_catches_an_upward_import(tmp_path):
    fake = tmp_path / "streams.py"
    fake.write_text("def f():\n    from behavior_lm.training.run import train\n")
    assert [layer_of(m) for _, m in imports(fake)] == [LAYER["training"]] and LAYER["training"] > LAYER["data"]


def test_no_task_name_comparisons_outside_tasks():
    """What differs between tasks is asked of the registered Task (``get_task(name).ranking``,
    ``.regression``, ...); comparing a task's name anywhere else is how ten files drifted apart."""
    import re

    pattern = re.compile(r"""task\w*\s*(==|!=|\bin\b|\bnot in\b)\s*[("'A-Z]|[A-Z]+_TASKS\b""")
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        if rel.parts[1] == "tasks":
            continue
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line.split("#")[0]):
                wrong.append(f"{rel}:{n}: {line.strip()}")
    assert not wrong, "\n".join(wrong)
    assert pattern.search('if task == "next-item":') and pattern.search("x in TOKEN_TASKS")
