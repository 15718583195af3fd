"""Imports point one way (docs/architecture.md): a package imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "yolopt"

BASE = {"errors", "fileio", "machine", "ops", "choices", "__init__"}  # importable from anywhere ("__init__": __version__)
ALLOWED = {
    "errors": set(), "choices": set(), "fileio": {"errors"}, "machine": {"__init__"}, "ops": {"errors"},
    "models": BASE,
    "data": BASE | {"models"},
    "runtime": BASE | {"models", "data"},
    "bench": BASE | {"data", "runtime"},
    "evaluate": BASE | {"data", "runtime"},
    "engine": BASE | {"models", "data", "runtime", "evaluate"},
    "export": BASE | {"models", "data", "runtime"},
    "compress": BASE | {"models", "data", "runtime", "evaluate", "bench", "engine", "export"},
    "profile": BASE | {"models", "data", "runtime", "evaluate", "bench", "export"},
    # quantize reads profile's per-layer runtime timings (speed-aware float layers); profile never imports it
    "quantize": BASE | {"models", "data", "runtime", "evaluate", "bench", "engine", "export", "profile"},
    "detect": BASE | {"data", "runtime"},
    "pipeline": BASE | {"models", "data", "runtime", "evaluate", "bench", "engine", "export", "compress",
                        "quantize", "profile", "detect"},
}


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    pkg_parts = list(path.relative_to(SRC).parent.parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - (node.level - 1)] if node.level > 1 else pkg_parts
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not target:  # `from .. import x` reaching the top level: a module, or a name of __init__
                    name = node.names[0].name
                    is_module = (SRC / name).is_dir() or (SRC / f"{name}.py").is_file()
                    target = [name if is_module else "__init__"]
            elif node.module and node.module.split(".")[0] == "yolopt":
                target = node.module.split(".")[1:] or [node.names[0].name]
            else:
                continue
            yield node.lineno, target[0].removesuffix(".py") if target else "__init__"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "yolopt" and "." in a.name:
                    yield node.lineno, a.name.split(".")[1]


def test_imports_point_one_way():
    bad = []
    for f in sorted(SRC.rglob("*.py")):
        pkg = _package(f)
        if pkg in ("commands", "cli", "__main__", "__init__"):
            continue  # the top: commands may use everything
        allowed = ALLOWED.get(pkg)
        assert allowed is not None, f"{f}: package {pkg} has no layer in ALLOWED (add it, and to docs/architecture.md)"
        for line, target in _imports(f):
            if target != pkg and target not in allowed:
                bad.append(f"{f.relative_to(SRC)}:{line} imports {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_layering_catches_a_violation(tmp_path, monkeypatch):
    """The checker itself: a models/ module importing commands/ is reported."""
    import test_architecture as me

    fake = tmp_path / "yolopt"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "x.py").write_text("from ..commands._common import add_precision_arg\n")
    monkeypatch.setattr(me, "SRC", fake)
    try:
        me.test_imports_point_one_way()
    except AssertionError as e:
        assert "models/x.py:1 imports commands" in str(e)
    else:
        raise AssertionError("a models -> commands import was not caught")


# ----------------------------------------------------------------------------- no `python -m yolopt` from the library

PROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output", "system", "popen", "create_subprocess_exec",
                 "create_subprocess_shell", *(f"exec{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")),
                 *(f"spawn{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe"))}
CLI_MODULES = {"yolopt", "yolopt.__main__", "yolopt.cli"}  # worker modules (yolopt.pipeline.worker) are fine


def _cli_in_text(text: str) -> bool:
    words = text.split()
    return any(a == "-m" and b in CLI_MODULES for a, b in zip(words, words[1:]))


def _cli_processes(path: Path) -> list[int]:
    """Lines of ``path`` that start the yolopt CLI as a process: an argv literal with ``"-m", "yolopt"``, or a
    process call (subprocess.*, os.system, os.exec*, ...) whose arguments hold ``-m yolopt`` in a string."""
    tree = ast.parse(path.read_text())
    hits = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            if any(a == "-m" and b in CLI_MODULES for a, b in zip(vals, vals[1:])):
                hits.add(node.lineno)
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in PROCESS_CALLS:
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and _cli_in_text(sub.value):
                        hits.add(node.lineno)
    return sorted(hits)


def test_the_library_starts_no_yolopt_cli_process():
    """The library calls the library: no `python -m yolopt COMMAND` child processes (worker modules with a
    JSON request, such as `python -m yolopt.pipeline.worker`, are allowed)."""
    bad = [f"{f.relative_to(SRC)}:{line}" for f in sorted(SRC.rglob("*.py")) for line in _cli_processes(f)]
    assert not bad, "`python -m yolopt` started as a process:\n" + "\n".join(bad)


def test_cli_process_check_catches_a_violation(tmp_path, monkeypatch):
    import test_architecture as me

    fake = tmp_path / "yolopt"
    (fake / "pipeline").mkdir(parents=True)
    (fake / "pipeline" / "a.py").write_text(
        "import os, subprocess, sys\n"
        "subprocess.run([sys.executable, '-m', 'yolopt', 'prune', 'x.pt'])\n"
        "os.system(f'{sys.executable} -m yolopt export x.pt')\n"
        "subprocess.run([sys.executable, '-m', 'yolopt.pipeline.worker', 'rq.json', 'out.json'])\n"
        "msg = 'run it as `torchrun -m yolopt train ...`'\n")
    monkeypatch.setattr(me, "SRC", fake)
    try:
        me.test_the_library_starts_no_yolopt_cli_process()
    except AssertionError as e:
        assert "pipeline/a.py:2" in str(e) and "pipeline/a.py:3" in str(e)
        assert "a.py:4" not in str(e) and "a.py:5" not in str(e)  # a worker module; a message
    else:
        raise AssertionError("a `python -m yolopt` process was not caught")


# ----------------------------------------------------------------------------- thin commands

MAX_COMMAND_LINES = 150


def test_command_modules_are_thin():
    """A command parses, calls the library and prints: each src/yolopt/commands/*.py stays within
    MAX_COMMAND_LINES lines."""
    long = {f.name: n for f in sorted((SRC / "commands").glob("*.py"))
            if (n := len(f.read_text().splitlines())) > MAX_COMMAND_LINES}
    assert not long, f"command modules over {MAX_COMMAND_LINES} lines (move their logic into the library): {long}"


MAX_PARAMETERS = 8


def _wide_public_functions(root: Path) -> list[str]:
    """``file:line name (n)`` for each public function or method under ``root`` taking more than MAX_PARAMETERS
    parameters (``self`` / ``cls`` not counted; ``*args`` and ``**kwargs`` count one each; a spec object is one)."""
    wide = []

    def visit(node, prefix: str, private: bool, path: Path):
        for n in ast.iter_child_nodes(node):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = n.args
                count = sum(x.arg not in ("self", "cls") for x in a.posonlyargs + a.args + a.kwonlyargs)
                count += bool(a.vararg) + bool(a.kwarg)
                public = not private and (not n.name.startswith("_") or n.name == "__init__")
                if public and count > MAX_PARAMETERS:
                    wide.append(f"{path.relative_to(root)}:{n.lineno} {prefix}{n.name} ({count})")
            elif isinstance(n, ast.ClassDef):
                visit(n, f"{prefix}{n.name}.", private or n.name.startswith("_"), path)

    for f in sorted(root.rglob("*.py")):
        visit(ast.parse(f.read_text()), "", f.name.startswith("_") and f.name != "__init__.py", f)
    return wide


def test_no_public_function_takes_more_than_eight_parameters(tmp_path):
    """Options travel as spec objects: no public function or method in src/ takes more than MAX_PARAMETERS
    parameters. The check itself catches a wide function (and ignores a private one)."""
    assert not _wide_public_functions(SRC), _wide_public_functions(SRC)
    (tmp_path / "m.py").write_text("def wide(a, b, c, d, e, f, g, h, i): pass\n"
                                   "def _private(a, b, c, d, e, f, g, h, i): pass\n"
                                   "class K:\n    def m(self, a, b, c, d, e, f, g, h, *rest): pass\n")
    assert _wide_public_functions(tmp_path) == ["m.py:1 wide (9)", "m.py:4 K.m (9)"]
