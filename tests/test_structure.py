"""The house rules, checked: imports run downward, one package touches HDF5, one module imports click."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "kdcache"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """kdcache modules imported by ``path`` (top-level and inside functions)."""
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            if mod.startswith("kdcache"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kdcache"))
    return found


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    g = {}
    for name, path in mods.items():
        # an import of a package's submodule counts as an import of that module (and of the package)
        g[name] = {m for m in imports(path) if m in mods and m != name}
    return g


def test_no_two_modules_import_each_other():
    g = graph()
    # The package __init__ files only re-export (kdcache/__init__ lazily); ignore edges *into* a package from
    # its own submodules, which are how Python resolves relative imports, not a dependency on the re-exports.
    for name in g:
        g[name] = {m for m in g[name] if not (m in ("kdcache", "kdcache.cache", "kdcache.cli") and name.startswith(m))}

    def reach(a: str, b: str, seen: frozenset = frozenset()) -> bool:
        return b in g[a] or any(reach(c, b, seen | {a}) for c in g[a] if c not in seen)

    cycles = sorted({tuple(sorted((a, b))) for a in g for b in g[a] if reach(b, a)})
    assert cycles == [], f"modules that import each other: {cycles}"


def test_only_the_cache_package_touches_hdf5():
    users = sorted(module_name(p) for p in PKG.rglob("*.py") if "h5py" in p.read_text())
    assert users and all(u.startswith("kdcache.cache") for u in users), users


def test_only_the_cli_imports_click():
    users = sorted(module_name(p) for p in PKG.rglob("*.py")
                   if any(line.strip().startswith(("import click", "from click")) for line in p.read_text().splitlines()))
    assert users and all(u == "kdcache.cli" or u.startswith("kdcache.cli.") for u in users), users


def test_the_public_api_is_lazy_and_documented():
    """`import kdcache` loads neither torch nor h5py (the CLI starts fast); every exported callable has a docstring."""
    import subprocess
    import sys

    import kdcache

    r = subprocess.run([sys.executable, "-c", "import sys, kdcache; print(sorted(m for m in ('torch', 'h5py') "
                        "if m in sys.modules))"], capture_output=True, text=True, cwd=PKG.parent)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
    undocumented = [n for n in kdcache.__all__ if callable(getattr(kdcache, n)) and not (getattr(kdcache, n).__doc__
                                                                                          or "").strip()]
    assert undocumented == []
    for name in ("open_cache", "LogitCache", "CachedDataset", "StreamedCachedDataset", "collate", "kd_loss", "TopK",
                 "train_student", "evaluate_checkpoint", "dump_logits", "KDCacheError", "CacheError"):
        assert name in kdcache.__all__ and name in dir(kdcache), name
