"""Import direction: every ppihd module imports only its own subpackage or a lower layer (read with ``ast``,
function-level imports included). Layers, bottom up: the ``ppihd`` root (labels) < utils < postprocess
< data, arch, loss, metric, optimizer, synthetic < engine (docs/architecture.md)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "ppihd")
LAYERS = {"": 0, "utils": 1, "postprocess": 2, "data": 3, "arch": 3, "loss": 3, "metric": 3, "optimizer": 3,
          "synthetic": 3, "engine": 4}


def _modules():
    for root, _, names in os.walk(PKG):
        for n in sorted(names):
            if n.endswith(".py"):
                path = os.path.join(root, n)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    yield path, parts[:-1], True
                else:
                    yield path, parts, False


def _imported(tree, parts, is_pkg):
    """The dotted names of the ppihd modules a module imports (relative imports resolved)."""
    here = parts if is_pkg else parts[:-1]   # the package a relative import starts from
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            elif node.module:
                yield node.module


def _subpackage(dotted):
    parts = dotted.split(".")
    return None if parts[0] != "ppihd" else (parts[1] if len(parts) > 1 and parts[1] in LAYERS else "")


def test_every_subpackage_has_a_layer():
    subs = sorted(d for d in os.listdir(PKG) if os.path.isfile(os.path.join(PKG, d, "__init__.py")))
    assert subs and set(subs) <= set(LAYERS), f"give {sorted(set(subs) - set(LAYERS))} a layer in LAYERS"


def test_relative_imports_resolve():
    # ppihd/data/pseudo.py: "from ..postprocess.pseudo_label import" -> ppihd.postprocess.pseudo_label
    tree = ast.parse("from ..postprocess.pseudo_label import x\nfrom . import cache\nfrom .. import LABELS\n")
    assert list(_imported(tree, ["ppihd", "data", "pseudo"], False)) == [
        "ppihd.postprocess.pseudo_label", "ppihd.data", "ppihd"]


def test_imports_run_downwards_only():
    bad = []
    n_modules = n_edges = 0
    for path, parts, is_pkg in _modules():
        mine = parts[1] if len(parts) > 1 and (is_pkg or len(parts) > 2) else ""
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        n_modules += 1
        for dotted in _imported(tree, parts, is_pkg):
            sub = _subpackage(dotted)
            if sub is None or sub == mine:
                continue
            n_edges += 1
            if LAYERS[sub] >= LAYERS[mine]:
                bad.append(f"{os.path.relpath(path, ROOT)} (layer {mine or 'ppihd'}) imports {dotted}")
    assert n_modules > 50 and n_edges > 50   # the walk really read the package
    assert not bad, "imports that do not run downwards:\n  " + "\n  ".join(bad)
