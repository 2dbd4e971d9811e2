"""Write docs/api.md, the API reference, from the docstrings of ``shmqueue.__all__``.

Run ``python tools/api_reference.py``; tests/test_docstrings.py fails when docs/api.md is stale.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import shmqueue

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "api.md"
HEADER = """# API reference

Generated from the docstrings by `python tools/api_reference.py`; do not edit by hand.
Everything here is importable from `shmqueue` (`import shmqueue as sq`).
"""


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""


def _members(cls: type) -> list[str]:
    lines = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name not in ("__call__", "__iter__", "__len__"):
            continue
        doc = inspect.getdoc(member)
        if not doc:
            continue
        summary = doc.split("\n\n")[0].replace("\n", " ")
        if isinstance(member, property):
            lines.append(f"- `{name}` (property): {summary}")
        elif callable(member) or isinstance(member, (classmethod, staticmethod)):
            function = (
                member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            )
            lines.append(f"- `{name}{_signature(function)}`: {summary}")
    return lines


def render() -> str:
    """The whole reference as markdown."""
    sections = [HEADER]
    for name in sorted(shmqueue.__all__, key=str.lower):
        obj = getattr(shmqueue, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        kind = "class" if inspect.isclass(obj) else "function"
        doc = inspect.getdoc(obj) or ""
        sections.append(f"## `{name}`\n\n{kind} `{name}{_signature(obj)}`\n\n```text\n{doc}\n```\n")
        if inspect.isclass(obj):
            members = _members(obj)
            if members:
                sections.append("\n".join(members) + "\n")
    return "\n".join(sections)


if __name__ == "__main__":
    OUTPUT.write_text(render())
    sys.stdout.write(f"wrote {OUTPUT}\n")
