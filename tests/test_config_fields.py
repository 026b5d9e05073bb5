"""Every config field has an effect: each dataclass field in replaygrpo/config.py is read by
code outside the schema. A documented key that nothing reads is a promise nothing keeps.

"Read" is an attribute access `.field` or a string naming it ("field" or "section.field",
for code that reads keys by name) in the package, outside config.py and validation.py (the
schema and its checks do not act on a key) and outside memplan.py (the memory plan budgets for what a key promises,
e.g. a prompt-length bound; it keeps no promise itself). An AST scan, so comments and
docstrings do not count.
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import replaygrpo.config as config_module

PACKAGE = Path(config_module.__file__).parent
NOT_READERS = {PACKAGE / "config.py", PACKAGE / "validation.py", PACKAGE / "memplan.py"}

ALLOWED: dict[str, str] = {
    "plan.gpu_memory_gb": "the memory plan's own input: memplan.py is its reader",
}
"""Fields read only where the scan does not look, each with the reason."""


def schema_fields() -> dict[str, str]:
    """{"section.field" (or "field" for top-level ones): field name} over the Config tree."""
    out: dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                out[prefix + f.name] = f.name  # the section itself (cfg.trainer) is read too
                walk(sub, f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = f.name

    walk(config_module.Config, "")
    return out


def names_read() -> tuple[set[str], set[str]]:
    """(attribute names accessed, string constants) in the package's modules that act on keys."""
    attrs: set[str] = set()
    strings: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path in NOT_READERS:
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                attrs.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                strings.add(node.value)
    return attrs, strings


def unread_fields() -> list[str]:
    attrs, strings = names_read()
    return sorted(key for key, name in schema_fields().items()
                  if key not in ALLOWED and name not in attrs and name not in strings and key not in strings)


def test_every_config_field_is_read_somewhere():
    assert unread_fields() == [], (
        "config fields that nothing outside config.py reads (implement them, remove them, or add "
        "them to ALLOWED with the reason)")


def test_allowlist_is_current():
    keys = schema_fields()
    assert all(key in keys for key in ALLOWED), "ALLOWED names a key the schema no longer has"
