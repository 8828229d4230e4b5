"""The import rule of docs/ARCHITECTURE.md, enforced: layers, the change engine's isolation,
no circles, lazy imports only with a stated reason, and purity (pure modules never run commands,
load NVML or read the environment).

The rule is read from the source with `ast`, so the test needs no import of the package and a
later change cannot quietly undo it. Each checker is tested on a small made-up graph first, so
a checker that stopped finding violations would fail here too.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "provision"

# Top to bottom: a module may import from any layer below its own, never from one above it,
# and never from a sibling on its own line. Inside one stage package imports are free.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__main__"}),
    frozenset({"cli"}),
    frozenset({"pipeline"}),
    frozenset({"render", "verify"}),
    frozenset({"placement", "change"}),
    frozenset({"hardware", "models"}),
    frozenset({"command"}),
    # Shared leaves: they may import each other, nothing else.
    frozenset(
        {
            "errors",
            "typed_load",
            "desired",
            "paths",
            "ollama",
            "rocm",
            "systemd",
            "assets",
            "units",
            "documents",
            "",
        }
    ),
)
# The change engine and verify know the world only through DesiredState, the manifest, paths
# and ollama: a dry run cannot disagree with a real run, and verify runs without the rig.
ISOLATED = {
    "change": frozenset({"placement", "render", "hardware", "models", "pipeline"}),
    "verify": frozenset({"placement", "render", "hardware", "models", "pipeline"}),
}
# Who may reach the outside world, and through what.
ONLY_IMPORTER = {"subprocess": "provision.command", "pynvml": "provision.hardware.nvml"}
READS_ENVIRON = frozenset(
    {
        "provision.cli.inspect",  # hands os.environ to the model resolver (OLLAMA_MODELS)
        "provision.cli.options",
        "provision.change.apply",  # the kill-at-step test hook
        "provision.verify.runner",  # shields the inner pytest run from the caller's PYTEST_*
    }
)
PURE = frozenset(
    {
        "provision.errors",
        "provision.typed_load",
        "provision.desired",
        "provision.paths",
        "provision.ollama",
        "provision.rocm",
        "provision.units",
        "provision.hardware.classify",
        "provision.models.spec",
        "provision.models.estimate",
        "provision.placement.fit",
        "provision.placement.place",
        "provision.placement.instances",
        "provision.placement.power",
        "provision.placement.decisions",
        "provision.placement.ollama_scheduler",
        "provision.placement.ollama_levers",
        "provision.render.files",
        "provision.render.filters",
        "provision.change.actions",
        "provision.change.plan",
        "provision.change.plan_models",
        "provision.change.plan_power",
        "provision.change.manifest",
        "provision.verify.checks",
        "provision.systemd",
        "provision.cli.report",
    }
)
IMPURE_IMPORTS = frozenset({"provision.command", "subprocess", "pynvml", "socket", "urllib", "sh"})


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. provision.change.plan
    target: str  # the imported module, e.g. provision.paths
    line: int
    lazy: bool  # inside a function
    commented: bool  # a comment on the line or above its block: the reason it is lazy


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(source: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes under `if TYPE_CHECKING:`: type-only imports cost nothing at run time."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(n) for child in node.body for n in ast.walk(child))
    return hidden


def imports_of(path: Path, known: Iterable[str]) -> list[Import]:
    """Every import in the file, resolved to a module (`from a import b`: a.b when a.b is one)."""
    source, text = module_name(path), path.read_text()
    tree = ast.parse(text)
    lines = text.splitlines()
    hidden = _type_checking_nodes(tree)
    in_function = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for n in ast.walk(f)
    }
    modules = set(known)
    found = []
    for node in ast.walk(tree):
        if id(node) in hidden or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = _resolve(source, node, path.name == "__init__.py")
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        commented = _reason_given(lines, node.lineno)
        lazy = id(node) in in_function
        found += [Import(source, t, node.lineno, lazy, commented) for t in dict.fromkeys(targets)]
    return found


def _reason_given(lines: list[str], lineno: int) -> bool:
    """A comment on the import line, or on the line above its block of imports."""
    if "#" in lines[lineno - 1]:
        return True
    above = lineno - 2
    while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


def stage(module: str) -> str:
    """provision.change.plan -> change; provision.paths -> paths; provision -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int:
    name = stage(module)
    for depth, members in enumerate(LAYERS):
        if name in members:
            return depth
    raise AssertionError(f"{module}: stage {name!r} is in no layer of LAYERS: add it there")


def layer_violations(imports: Iterable[Import]) -> list[str]:
    problems = []
    for imp in imports:
        if not imp.target.startswith("provision") or stage(imp.source) == stage(imp.target):
            continue
        here, there = layer_of(imp.source), layer_of(imp.target)
        leaf = len(LAYERS) - 1
        if there < here or (there == here and here != leaf):
            problems.append(f"{imp.source}:{imp.line} imports {imp.target}: {_why(here, there)}")
        for forbidden in ISOLATED.get(stage(imp.source), ()):
            if stage(imp.target) == forbidden:
                problems.append(
                    f"{imp.source}:{imp.line} imports {imp.target}: {stage(imp.source)}/ knows the "
                    "world only through DesiredState, the manifest, paths and ollama"
                )
    return problems


def _why(here: int, there: int) -> str:
    return "a layer above it" if there < here else "a sibling on its own layer"


def lazy_violations(imports: Iterable[Import]) -> list[str]:
    """A function-level import exists only for start-up speed, and says so on its line."""
    return [
        f"{i.source}:{i.line} imports {i.target} inside a function without a comment saying why "
        "(lazy imports are for start-up speed only; a circle is fixed by moving code)"
        for i in imports
        if i.lazy and not i.commented
    ]


def cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Circles among provision's modules over module-level imports (Tarjan's SCCs)."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        if i.target.startswith("provision") and not i.lazy and i.target != i.source:
            graph.setdefault(i.source, set()).add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def purity_violations(imports: Iterable[Import], environ_readers: Mapping[str, int]) -> list[str]:
    problems = []
    for i in imports:
        top = i.target.split(".")[0]
        owner = ONLY_IMPORTER.get(top)
        if owner is not None and i.source != owner:
            problems.append(f"{i.source}:{i.line} imports {top}: only {owner} may")
        if i.source in PURE and any(
            i.target == bad or i.target.startswith(bad + ".") for bad in IMPURE_IMPORTS
        ):
            problems.append(f"{i.source}:{i.line} is pure but imports {i.target}")
    for module, line in environ_readers.items():
        if module not in READS_ENVIRON:
            problems.append(
                f"{module}:{line} reads the environment: pass a mapping in from provision.cli"
            )
    return problems


def environ_reader_line(path: Path) -> int | None:
    """The first line that touches os.environ / os.getenv / os.putenv, if any."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
            return node.lineno
        names = {a.name for a in node.names} if isinstance(node, ast.ImportFrom) else set()
        if getattr(node, "module", None) == "os" and names & {"environ", "getenv", "putenv"}:
            return node.lineno
    return None


# --- the real tree ------------------------------------------------------------------------------

SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = [module_name(p) for p in SOURCES]
IMPORTS = [i for p in SOURCES for i in imports_of(p, MODULES)]


def test_every_module_sits_in_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_layers_hold() -> None:
    assert layer_violations(IMPORTS) == []


def test_no_circles() -> None:
    assert cycles(IMPORTS) == []


def test_lazy_imports_say_why() -> None:
    assert lazy_violations(IMPORTS) == []


def test_nothing_imports_the_cli() -> None:
    outside = [
        f"{i.source}:{i.line}"
        for i in IMPORTS
        if i.target.startswith("provision.cli") and stage(i.source) not in ("cli", "__main__")
    ]
    assert outside == []


def test_purity() -> None:
    readers = {module_name(p): line for p in SOURCES if (line := environ_reader_line(p))}
    assert purity_violations(IMPORTS, readers) == []


def test_pure_modules_exist() -> None:
    """A renamed module must not leave its purity unchecked."""
    assert sorted(PURE - set(MODULES)) == []
    assert sorted(READS_ENVIRON - set(MODULES)) == []


def test_every_package_is_in_pyproject() -> None:
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert sorted(packages - set(declared["packages"])) == []


# --- the checkers find what they are for -------------------------------------------------------


def _imp(source: str, target: str, lazy: bool = False, commented: bool = False) -> Import:
    return Import(source, target, 1, lazy, commented)


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("provision.verify.checks", "provision.render.files", "a sibling on its own layer"),
        ("provision.placement.fit", "provision.render.filters", "a layer above it"),
        ("provision.paths", "provision.command", "a layer above it"),
        ("provision.change.plan", "provision.models.spec", "knows the world only"),
        ("provision.verify.suite", "provision.placement.place", "knows the world only"),
        ("provision.hardware.rig", "provision.models.spec", "a sibling on its own layer"),
    ],
)
def test_layer_checker_finds(source: str, target: str, expected: str) -> None:
    problems = layer_violations([_imp(source, target)])
    assert problems and expected in problems[0]


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("provision.cli.main", "provision.change.apply"),
        ("provision.render.files", "provision.placement.decisions"),
        ("provision.change.plan", "provision.change.actions"),
        ("provision.paths", "provision.errors"),
        ("provision.verify.suite", "provision.change.observe"),
    ],
)
def test_layer_checker_allows(source: str, target: str) -> None:
    assert layer_violations([_imp(source, target)]) == []


def test_cycle_checker_finds_a_circle_and_ignores_lazy_edges() -> None:
    circle = [_imp("provision.a", "provision.b"), _imp("provision.b", "provision.a")]
    assert cycles(circle) == [["provision.a", "provision.b"]]
    assert cycles([circle[0], _imp("provision.b", "provision.a", lazy=True, commented=True)]) == []


def test_lazy_checker_wants_a_reason() -> None:
    assert lazy_violations([_imp("provision.x", "jinja2", lazy=True)])
    assert lazy_violations([_imp("provision.x", "jinja2", lazy=True, commented=True)]) == []


def test_purity_checker_finds() -> None:
    assert purity_violations([_imp("provision.change.host", "subprocess")], {})
    assert purity_violations([_imp("provision.render.files", "provision.command")], {})
    assert purity_violations([], {"provision.placement.place": 3})
    assert purity_violations([_imp("provision.command", "subprocess")], {}) == []


def test_environ_reader_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import os\n\n\ndef f():\n    return os.environ.get('X')\n")
    (tmp_path / "b.py").write_text("from os import getenv\n")
    (tmp_path / "c.py").write_text("import os\n\nos.path.join('a', 'b')\n")
    assert [environ_reader_line(tmp_path / n) for n in ("a.py", "b.py", "c.py")] == [5, 1, None]


def test_a_reason_covers_its_block_of_imports_only() -> None:
    lines = ["def f():", "    # lazy: start-up", "    import a", "    import b", "", "    import c"]
    assert [_reason_given(lines, n) for n in (3, 4, 6)] == [True, True, False]
    assert _reason_given(["    import d  # lazy: 30 ms"], 1)
