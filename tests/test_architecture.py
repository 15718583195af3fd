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
