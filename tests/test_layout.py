"""The package layout's contracts (docs/design.md): no import cycle (imports inside functions
included), no use of another module's private name, modules of a bounded size, and the CPU speed
layer reached only through `ascl_jax.xla_cpu`; README's Layout table in the import order."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "ascl_jax"
MAX_LINES = 500
# Modules that hold one kind of thing may be longer (as optax's loss files are): the config schema
# (every field, its default and its check).
LONG_MODULES = {"ascl_jax.config"}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(target: str, mods: dict[str, pathlib.Path]) -> str | None:
    """The module `target` names (a module, or a package), or None outside ascl_jax."""
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def _imports(name: str, path: pathlib.Path, mods) -> set[str]:
    """Every ascl_jax module `name` imports, at the top or inside functions."""
    tree = ast.parse(path.read_text())
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("ascl_jax"):
                    out.add(_resolve(a.name, mods))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if not mod.startswith("ascl_jax"):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in mods else _resolve(mod, mods))
    out.discard(None)
    out.discard(name)
    return out


def _graph():
    mods = _modules()
    return mods, {n: _imports(n, p, mods) for n, p in mods.items()}


def _is_parent_package(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_cycles():
    """A package's __init__ re-exporting its submodules is not a cycle; anything else is."""
    _, graph = _graph()
    # Edges from a package to its own submodules (re-exports) and from a submodule to a sibling
    # through its package are kept: a submodule importing its parent package's __init__ would close
    # a cycle through the re-exports, which is what this test is for.
    state, cycles = {}, []

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cyc = stack[stack.index(m) :] + [m]
                if not all(_is_parent_package(x, y) for x, y in zip(cyc, cyc[1:])):
                    cycles.append(" -> ".join(cyc))
            elif m not in state:
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _private_uses(path: pathlib.Path, mods) -> list[str]:
    """`module._name` attribute uses and `from module import _name` of another ascl_jax module."""
    tree = ast.parse(path.read_text())
    aliases = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ascl_jax"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in mods:
                    aliases[a.asname or a.name] = full
                elif a.name.startswith("_"):
                    found.append(f"{path.name}:{node.lineno} from {node.module} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("ascl_jax") and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_no_private_names_of_other_modules():
    """ascl_jax, bench/ and scripts/ use only public names of other ascl_jax modules."""
    mods = _modules()
    files = (
        sorted(PKG.rglob("*.py"))
        + sorted((ROOT / "bench").glob("*.py"))
        + sorted((ROOT / "scripts").glob("*.py"))
    )
    found = [u for p in files for u in _private_uses(p, mods)]
    assert not found, "private names of other modules:\n" + "\n".join(found)


def test_module_sizes():
    too_long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    too_long = {n: k for n, k in too_long.items() if k > MAX_LINES and n not in LONG_MODULES}
    assert not too_long, too_long


# The named points where the library consults the CPU speed layer (ascl_jax/xla_cpu/__init__.py).
SPEED_LAYER_POINTS = {
    "ascl_jax.main",
    "ascl_jax.models.layers",
    "ascl_jax.models.norm",
    "ascl_jax.attacks",
    "ascl_jax.attacks.pgd",
    "ascl_jax.evaluation.programs",
    "ascl_jax.losses.similarity",
}


def test_speed_layer_reached_only_at_its_named_points():
    """Only the named modules import ascl_jax.xla_cpu, and no module outside it checks the backend."""
    mods, graph = _graph()
    users = {
        n
        for n, deps in graph.items()
        if not n.startswith("ascl_jax.xla_cpu")
        and any(d == "ascl_jax.xla_cpu" or d.startswith("ascl_jax.xla_cpu.") for d in deps)
    }
    assert users == SPEED_LAYER_POINTS
    backend = [
        n
        for n, p in mods.items()
        if not n.startswith("ascl_jax.xla_cpu") and "default_backend()" in p.read_text()
    ]
    assert not backend, backend


# The import order of the top-level modules (docs/design.md): each imports only modules to its left.
# It is the data flow config -> data -> model -> loss -> attack -> step/loop -> evaluation ->
# analysis, with the generic pieces (xla_cpu, parallel, workdir, checkpointing) where they are
# first needed; train/ holds the loop and what runs after it (train/run_eval), so it comes last.
LAYERS = (
    "xla_cpu",
    "config",
    "parallel",
    "data",
    "models",
    "torchio",
    "losses",
    "attacks",
    "storage",
    "workdir",
    "checkpointing",
    "evaluation",
    "analysis",
    "train",
    "main",
)


def test_modules_import_only_earlier_layers():
    mods, graph = _graph()
    top = {n: n.split(".")[1] for n in mods if n != "ascl_jax"}
    assert set(top.values()) == set(LAYERS), set(top.values()) ^ set(LAYERS)
    rank = {name: i for i, name in enumerate(LAYERS)}
    back = [
        f"{n} imports {d}"
        for n, deps in graph.items()
        if n in top
        for d in deps
        if d in top and rank[top[d]] > rank[top[n]]
    ]
    assert not back, "imports against the layer order:\n" + "\n".join(back)


def test_readme_layout_table_lists_the_layers_in_order():
    """README's Layout table is the import order this file enforces (LAYERS), row by row."""
    text = (ROOT / "README.md").read_text()
    table = text.split("\n## Layout\n", 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    names = []
    for row in table.splitlines()[2:]:  # after the header and the |---| line
        cell = row.split("|")[1]
        names += [m.rstrip("/").removesuffix(".py") for m in re.findall(r"`(?:ascl_jax/)?([\w./]+)`", cell)]
    assert names == list(LAYERS)
