"""The code's shape, checked from its text (ast only, nothing imported): docs/architecture.md "Layout rules".

- no file over 600 lines and no function over 80 lines in ``maskedkd/`` and ``pipeline/``, unless
  listed below with the reason docs/architecture.md gives;
- no private name (``_x``) reached from outside the module or package that owns it
  (``from pipeline.a import _x``, ``a._x`` on an imported module or class), except by the tests
  of that module's package (tests mirror the package layout); a ``_module``'s names are its
  package's infrastructure, public inside the package (and to tests);
- imports go one way (``maskedkd`` < infrastructure < ``config``/``data``/``labels`` <
  ``precompute``/``train`` < ``report`` < ``run`` < ``bench``/CLI; ``precompute`` and ``train``
  never import each other), and no module reaches itself through other modules (no import
  circles; function-local and annotation-only imports count).

Each failure names the file (and line or function) and the rule it breaks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("maskedkd", "pipeline")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
# namedtuple's public API starts with an underscore
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}

# Exceptions, each with its reason (docs/architecture.md "Layout rules" lists them);
# test_allowlists_hold_only_offenders names an entry that no longer offends.
LONG_FILES: dict[str, str] = {}
LONG_FUNCTIONS: dict[str, str] = {}  # "file:qualified name"
PRIVATE_IMPORTS: dict[str, str] = {  # "file:dotted name reached"
    # online and offline MaskedKD must draw the same keep sets: the test holds the trainer's loaded
    # online teacher beside precompute's task, on precompute's fixtures
    "tests/pipeline/precompute/test_online_keep.py:pipeline.train.loop._Online": "online vs offline keep sets",
}
LAYER_EXCEPTIONS: dict[str, str] = {}  # "file:imported module"
CIRCLES: dict[str, str] = {}  # the circle's modules, sorted, joined by " <-> "

# Layers, lowest first: a module may import its own layer and the ones below, never one above.
# Keys are module-name prefixes; the longest matching prefix decides a module's layer.
LAYERS: dict[str, int] = {
    "maskedkd": 0,
    "pipeline._atomic": 1,
    "pipeline._version": 1,
    "pipeline._fingerprint": 1,
    "pipeline._schemas": 1,
    "pipeline._console": 1,
    "pipeline._cores": 1,
    "pipeline._gpu": 1,
    "pipeline._lock": 1,
    "pipeline._lock_parts": 1,  # the run lock's partition records files
    "pipeline._cli_options": 6,  # click options shared by the CLI modules
    "pipeline.devices": 1,  # compute.device: auto resolved (the only place)
    "pipeline.errors": 1,
    "pipeline.placement": 1,  # where models and tensors go (the one set of functions)
    "pipeline.models": 1,
    "pipeline.paths": 1,  # local paths and object-store URIs: the one filesystem layer
    "pipeline.config": 2,
    "pipeline.data": 2,
    "pipeline.labels": 2,
    "pipeline.fingerprints": 2,  # every stage's inputs: read by precompute (partition fingerprints) and run
    "pipeline.precompute": 3,
    "pipeline.train": 3,
    "pipeline.report": 4,
    "pipeline.run": 5,
    "pipeline.bench": 6,
    "pipeline.cli": 6,
    "pipeline": 6,  # the package's __init__: the public face, lazily exporting the trainer's dataset
}
EDGE = 6  # every package's cli.py sits at the edge with the CLI
# Packages of one layer that never import each other.
NEVER_EACH_OTHER = [("pipeline.precompute", "pipeline.train")]


@dataclass(frozen=True)
class Module:
    name: str  # dotted: pipeline.run.runner
    path: Path
    rel: str  # pipeline/run/runner.py
    tree: ast.Module
    lines: int


@cache
def modules() -> dict[str, Module]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            parts = rel[:-3].split("/")
            if parts[-1] == "__init__":
                parts = parts[:-1]
            text = path.read_text()
            found[".".join(parts)] = Module(".".join(parts), path, rel, ast.parse(text, rel), len(text.splitlines()))
    return found


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


@dataclass(frozen=True)
class Import:
    target: str  # the dotted name imported: a module, or module.name
    line: int
    bound: str  # the local name it binds
    bound_to: str  # what that local name refers to (``import a.b`` binds ``a`` to ``a``)


def imports_of(mod: Module) -> list[Import]:
    """Every first-party import in a module, at any depth (function-local and ``if TYPE_CHECKING:`` ones included)."""
    out = []
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    bound_to = a.name if a.asname else a.name.split(".")[0]
                    out.append(Import(a.name, node.lineno, a.asname or bound_to, bound_to))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for a in node.names:
                target = f"{node.module}.{a.name}"
                out.append(Import(target, node.lineno, a.asname or a.name, target))
    return out


def module_of(target: str) -> str:
    """The module an imported dotted name lives in (``pipeline.a.f`` -> ``pipeline.a``)."""
    mods = modules()
    while target not in mods and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def owner_of_private(target: str) -> str | None:
    """The module or package a dotted name's last private part belongs to; None when it has none.

    ``pipeline.a._x`` belongs to ``pipeline.a``; ``pipeline._atomic.write`` to ``pipeline`` (a
    ``_module`` is the infrastructure of its package, usable anywhere inside it).
    """
    parts = target.split(".")
    private = [i for i, p in enumerate(parts) if _is_private(p) and p not in NAMEDTUPLE_API]
    return ".".join(parts[: private[-1]]) if private else None


def _inside(name: str, owner: str) -> bool:
    return name == owner or name.startswith(owner + ".")


def _attribute_chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    attrs = []
    cur: ast.expr = node
    while isinstance(cur, ast.Attribute):
        attrs.append(cur.attr)
        cur = cur.value
    return (cur.id, attrs[::-1]) if isinstance(cur, ast.Name) else None


def private_reaches(mod: Module, importer: str, may_reach=None) -> list[tuple[int, str]]:
    """(line, dotted name) of each private name the module reaches outside what ``importer`` owns."""
    if may_reach is None:
        def may_reach(owner: str) -> bool:
            return _inside(importer, owner)
    found = []
    bound: dict[str, str] = {}
    for imp in imports_of(mod):
        owner = owner_of_private(imp.target)
        if owner is not None and not may_reach(owner):
            found.append((imp.line, imp.target))
        bound[imp.bound] = imp.bound_to
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in NAMEDTUPLE_API:
            chain = _attribute_chain(node)
            if chain is None or chain[0] not in bound:
                continue
            target = ".".join([bound[chain[0]], *chain[1]])
            owner = owner_of_private(target)
            if owner is not None and not may_reach(owner):
                found.append((node.lineno, target))
    return sorted(set(found))


def layer_of(name: str) -> tuple[str, int]:
    if name.endswith(".cli"):
        return name, EDGE
    best = max((p for p in LAYERS if _inside(name, p)), key=len)
    return best, LAYERS[best]


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported first-party module: first line}, imports for annotations included (a module
    that needs another's types depends on it as much as one that calls it)."""
    graph: dict[str, dict[str, int]] = {}
    for name, mod in modules().items():
        edges = graph.setdefault(name, {})
        for imp in imports_of(mod):
            dep = module_of(imp.target)
            if dep != name:
                edges.setdefault(dep, imp.line)
    return graph


def find_circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(circles)


def _functions(tree: ast.Module):
    """(qualified name, node) of every function and method, nested ones included."""
    def walk(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield qual, child
                yield from walk(child, qual + ".")
            else:
                yield from walk(child, prefix)
    yield from walk(tree, "")


def _package_of_test(path: Path) -> str:
    """tests/pipeline/run/test_runner.py -> pipeline.run (tests mirror the package layout); else "tests"."""
    parts = path.relative_to(ROOT / "tests").parts[:-1]
    return ".".join(parts) if parts and parts[0] in PACKAGES else "tests"


def _test_may_reach(owner: str, package: str) -> bool:
    """A test reaches the privates of the modules of the package it mirrors, and `_infrastructure` modules."""
    if owner in PACKAGES or owner == package:
        return True
    mod = modules().get(owner)
    return mod is not None and mod.path.name != "__init__.py" and owner.rsplit(".", 1)[0] == package


# Each rule: {allowlist key: what breaks it}, every offender of today, allowed or not.

def long_files() -> dict[str, str]:
    return {m.rel: f"{m.rel}: {m.lines} lines" for m in modules().values() if m.lines > MAX_FILE_LINES}


def long_functions() -> dict[str, str]:
    found = {}
    for m in modules().values():
        for qual, node in _functions(m.tree):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found[f"{m.rel}:{qual}"] = f"{m.rel}:{node.lineno} {qual}: {length} lines"
    return found


def private_offenders() -> dict[str, str]:
    found = {}
    for name, m in modules().items():
        for line, target in private_reaches(m, name):
            found.setdefault(f"{m.rel}:{target}", f"{m.rel}:{line} reaches {target}")
    for path in sorted((ROOT / "tests").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        package = _package_of_test(path)
        mod = Module(rel, path, rel, ast.parse(path.read_text(), rel), 0)
        for line, target in private_reaches(mod, rel, partial(_test_may_reach, package=package)):
            found.setdefault(f"{rel}:{target}", f"{rel}:{line} reaches {target} (a test of {package})")
    return found


def layer_offenders() -> dict[str, str]:
    found = {}
    for name, edges in import_graph().items():
        src_key, src_layer = layer_of(name)
        rel = modules()[name].rel
        for dep, line in edges.items():
            dep_key, dep_layer = layer_of(dep)
            if dep_layer > src_layer:
                found[f"{rel}:{dep}"] = (f"{rel}:{line} imports {dep}: {src_key} (layer {src_layer}) reaches up to "
                                         f"{dep_key} (layer {dep_layer})")
            for a, b in NEVER_EACH_OTHER:
                if (_inside(name, a) and _inside(dep, b)) or (_inside(name, b) and _inside(dep, a)):
                    found[f"{rel}:{dep}"] = f"{rel}:{line} imports {dep}: {a} and {b} never import each other"
    return found


def circle_offenders() -> dict[str, str]:
    graph = import_graph()
    found = {}
    for circle in find_circles(graph):
        edges = [f"{modules()[a].rel}:{graph[a][b]} imports {b}" for a in circle for b in circle if b in graph[a]]
        found[" <-> ".join(circle)] = " <-> ".join(circle) + ": " + "; ".join(edges)
    return found


RULES = {  # test id: (rule, its offenders, its allowlist's name)
    "files": (f"no file over {MAX_FILE_LINES} lines", long_files, "LONG_FILES"),
    "functions": (f"no function over {MAX_FUNCTION_LINES} lines", long_functions, "LONG_FUNCTIONS"),
    "private": ("no private name reached from another module (tests: their own package's)", private_offenders,
                "PRIVATE_IMPORTS"),
    "layers": ("imports go one way (maskedkd < config/data/labels < precompute/train < report < run < bench/CLI)",
               layer_offenders, "LAYER_EXCEPTIONS"),
    "circles": ("no import circles", circle_offenders, "CIRCLES"),
}


@pytest.mark.parametrize("rule_id", list(RULES))
def test_rule_holds(rule_id: str):
    rule, offenders, allow_name = RULES[rule_id]
    allowed = globals()[allow_name]
    problems = [msg for key, msg in offenders().items() if key not in allowed]
    if problems:
        pytest.fail(f"{len(problems)} break the rule '{rule}' (docs/architecture.md \"Layout rules\"; "
                    f"an exception goes in {allow_name} in {Path(__file__).name} with its reason):\n  "
                    + "\n  ".join(problems), pytrace=False)


@pytest.mark.parametrize("rule_id", list(RULES))
def test_allowlists_hold_only_offenders(rule_id: str):
    rule, offenders, allow_name = RULES[rule_id]
    stale = sorted(set(globals()[allow_name]) - set(offenders()))
    if stale:
        pytest.fail(f"{allow_name} in {Path(__file__).name} lists what no longer breaks '{rule}': remove\n  "
                    + "\n  ".join(stale), pytrace=False)


def test_maskedkd_never_imports_pipeline():
    problems = [f"{modules()[name].rel}:{line} imports {dep}" for name, edges in import_graph().items()
                if _inside(name, "maskedkd") for dep, line in edges.items() if _inside(dep, "pipeline")]
    assert not problems, "maskedkd never imports pipeline:\n  " + "\n  ".join(problems)


# The checker checks itself: each rule catches a made-up offender.

def test_rules_catch_offenders(tmp_path: Path):
    src = ("from pipeline.labels.paths import _secret\n"
           "from pipeline import _atomic\n"
           "import maskedkd._vit as vit\n"
           "from pipeline.run import runner\n"
           "x = runner._private_helper\n"
           "y = vit.check_maskable\n"
           "z = thing._replace\n")
    mod = Module("pipeline.data.fake", tmp_path / "fake.py", "pipeline/data/fake.py", ast.parse(src), 7)
    assert private_reaches(mod, "pipeline.data.fake") == [
        (1, "pipeline.labels.paths._secret"), (3, "maskedkd._vit"), (5, "pipeline.run.runner._private_helper")]
    # inside maskedkd its _vit is infrastructure, pipeline's _atomic is not
    assert [t for _, t in private_reaches(mod, "maskedkd.keep")] == [
        "pipeline.labels.paths._secret", "pipeline._atomic", "pipeline.run.runner._private_helper"]
    assert [t for _, t in private_reaches(mod, "pipeline.run.runner")] == ["pipeline.labels.paths._secret", "maskedkd._vit"]
    in_run_tests = lambda owner: _test_may_reach(owner, "pipeline.run")  # noqa: E731
    # a test of pipeline.run reaches the runner's privates and any package's _infrastructure modules
    assert [t for _, t in private_reaches(mod, "tests/pipeline/run/test_x.py", in_run_tests)] == [
        "pipeline.labels.paths._secret"]
    assert find_circles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert find_circles({"a": {"b": 1}, "b": {}}) == []
    assert layer_of("pipeline.run.runner") == ("pipeline.run", 5)
    assert layer_of("pipeline.cli") == ("pipeline.cli", 6)
    assert layer_of("pipeline._atomic") == ("pipeline._atomic", 1)
    assert layer_of("pipeline.config.cli")[1] == EDGE
    assert _package_of_test(ROOT / "tests/pipeline/run/test_runner.py") == "pipeline.run"
    assert _package_of_test(ROOT / "tests/reliability/test_gc.py") == "tests"
    long_fn = "def f():\n" + "    x = 1\n" * 90
    assert [(q, n.end_lineno - n.lineno + 1) for q, n in _functions(ast.parse(long_fn))] == [("f", 91)]
