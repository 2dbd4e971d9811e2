"""Every code block in the README and docs/ is true: Python blocks run, shell blocks name real
make targets."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(language: str) -> list[tuple[str, int, str]]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in re.finditer(rf"```{language}\n(.*?)```", text, re.S):
            line = text[: match.start()].count("\n") + 1
            found.append((document.relative_to(ROOT).as_posix(), line, match.group(1)))
    return found


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("document", "line", "code"), _blocks("python"), ids=lambda value: str(value)[:40]
)
def test_python_block_runs(
    document: str, line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    script = tmp_path / f"{Path(document).stem}_{line}.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")


def test_shell_blocks_use_real_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    lines = [
        line.split("#")[0].strip() for _, _, block in _blocks("sh") for line in block.splitlines()
    ]
    commands = [line for line in lines if line]
    assert commands
    for command in commands:
        if command.startswith("make "):
            assert command.split()[1] in targets, command
        else:
            assert command.split()[0] in {"python", "shmqueue", "torchrun"}, command


def test_documents_link_to_existing_files() -> None:
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#:]+)\)", document.read_text(encoding="utf-8")):
            assert (document.parent / target).exists(), f"{document.name} links {target}"
