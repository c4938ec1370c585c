"""The schema is the one place a default lives: no ``section.get("<schema key>", default)`` (or a bare
``.get("<schema key>")``) in ppihd/ or tools/. ``load_config`` fills every schema key, so such a read either restates
the schema's default (two places to change) or contradicts it (``Data.num_workers`` read as 1 where the schema says
2), and a misspelt key silently gives the fallback instead of a KeyError."""
import ast
import os
from typing import Iterable, List, Set, Tuple

from ppihd.utils.schema import DEFAULTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("ppihd", "tools")


def schema_key_names(tree=DEFAULTS) -> Set[str]:
    """Every key name of the schema, sections and leaves, at any depth."""
    out: Set[str] = set()
    for k, v in tree.items():
        out.add(k)
        if isinstance(v, dict):
            out |= schema_key_names(v)
    return out


def schema_gets(source: str, names: Set[str]) -> List[Tuple[int, str]]:
    """``(line, call)`` of each ``X.get("<name>", ...)`` in ``source`` whose first argument is a schema key name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in names):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def python_files(roots: Iterable[str]) -> List[str]:
    out = []
    for r in roots:
        for d, _, files in os.walk(os.path.join(ROOT, r)):
            out += [os.path.join(d, f) for f in files if f.endswith(".py")]
    return sorted(out)


#: Reads of dicts that are not config sections, whose key happens to share a schema key's name.
NOT_CONFIG = {
    ("ppihd/engine/report_html.py", "d.get('key_slices', {})"),     # a series JSON document
    ("ppihd/engine/report_html.py", "doc.get('key_slices')"),       # a study JSON document
    ("ppihd/engine/evaluator.py", "res.get('split', 'validation')"),  # the evaluation result
    # ppihd/engine/ablation.py: a row's own keys, read from its raw YAML files before the schema merge
    ("ppihd/engine/ablation.py", "switches.get('Data', {})"),
    ("ppihd/engine/ablation.py", "switches.get('Data', {}).get('pseudo_label_csv')"),
    ("ppihd/engine/ablation.py", "r.get('Ablation', {})"),
    ("ppihd/engine/ablation.py", "r.get('Ablation', {}).get('adds')"),
}


def test_the_scan_finds_a_config_fallback_and_ignores_other_dicts():
    names = schema_key_names()
    assert {"Global", "num_workers", "max_slices", "tau_h", "beta1"} <= names
    src = ('w = int(cfg["Data"].get("num_workers", 1))\n'
           'sid = row.get("sop_uid", "")\n'
           'm = data_cfg.get("max_slices")\n'
           'n = {}.get(len)\n')
    assert schema_gets(src, names) == [(1, "cfg['Data'].get('num_workers', 1)"), (3, "data_cfg.get('max_slices')")]


def test_no_config_get_fallbacks_outside_the_schema():
    names = schema_key_names()
    found = set()
    for path in python_files(SCANNED):
        rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
        with open(path, encoding="utf-8") as f:
            found |= {(rel, line, call) for line, call in schema_gets(f.read(), names)}
    bad = sorted((r, n, c) for r, n, c in found if (r, c) not in NOT_CONFIG)
    assert not bad, ("config keys read with .get() (the schema fills every key: index the section, "
                     "cfg['Section']['key']):\n" + "\n".join(f"  {r}:{n}: {c}" for r, n, c in bad))
    stale = sorted(NOT_CONFIG - {(r, c) for r, _, c in found})
    assert not stale, f"NOT_CONFIG entries that no longer occur (remove them): {stale}"
