"""The ``shmqueue estimate`` command: text and JSON output, exit codes, globs, progress."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import shmqueue.cli as cli
from shmqueue.cli import main
from shmqueue.machine import MemoryCapacity


@pytest.fixture
def volumes(make_nifti: Callable[..., Path]) -> list[Path]:
    """Three int16 .nii.gz volumes of 24x20x16 in one directory."""
    rng = np.random.default_rng(0)
    return [
        make_nifti(f"t1_{index}.nii.gz", rng.integers(0, 500, (24, 20, 16), dtype=np.int16))
        for index in range(3)
    ]


def _estimate(*args: str) -> list[str]:
    return ["estimate", *args]


def test_text_output_fits(volumes: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        _estimate(
            *map(str, volumes), "--patch-size", "8", "--num-workers", "2", "--max-length", "30"
        )
    )
    output = capsys.readouterr().out
    assert status == 0
    assert "Memory estimate: 3 subject(s), patch 8x8x8, max_length 30, 2 worker(s)" in output
    assert "ring of patch slots (30 slots x" in output
    assert "total per rank" in output
    assert "Fits this machine" in output


def test_json_output(volumes: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    glob = str(volumes[0].parent / "*.nii.gz")
    status = main(
        _estimate(
            glob,
            "--patch-size",
            "8",
            "8",
            "4",
            "--num-workers",
            "1",
            "--batch-size",
            "4",
            "--ranks-per-node",
            "2",
            "--start-method",
            "spawn",
            "--json",
        )
    )
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["fits"] is True and report["problems"] == []
    assert report["config"]["num_subjects"] == 3
    assert report["config"]["patch_size"] == [8, 8, 4]
    assert report["config"]["start_method"] == "spawn"
    assert report["total_per_rank"] == (
        report["ring"]
        + report["workers"]
        + report["consumer"]["total"]
        + report["coordinator"]["total"]
    )
    assert report["total_per_node"] == 2 * report["total_per_rank"]


def test_does_not_fit_exits_1(
    volumes: list[Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ring of 100,000 slots of 2 KiB (195 MiB) fits 300 MiB, the whole plan does not."""
    monkeypatch.setattr(
        cli, "memory_capacity", lambda: MemoryCapacity(300 * 2**20, None, "300 MiB (test)")
    )
    arguments = _estimate(
        str(volumes[0]), "--patch-size", "8", "--num-workers", "1", "--max-length", "100000"
    )
    assert main(arguments) == 1
    output = capsys.readouterr().out
    assert "Does NOT fit this machine" in output
    assert "Lower max_length to at most" in output and "(now 100000)" in output
    assert main([*arguments, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["fits"] is False and len(report["problems"]) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "required"),
        (["estimate"], "required"),
        (["estimate", "{first}"], "--patch-size"),
        (["estimate", "{first}", "--patch-size", "8", "8"], "one number or three"),
        (["estimate", "{first}", "--patch-size", "0"], "positive integer"),
        (["estimate", "{first}", "--patch-size", "8", "--num-workers", "-1"], "positive"),
        (["estimate", "{directory}", "--patch-size", "8"], "is a directory"),
        (["estimate", "{directory}/*.nii", "--patch-size", "8"], "no file matches"),
        (["estimate", "{first}", "--patch-size", "64"], "larger than the volume"),
    ],
)
def test_usage_errors_exit_2(
    volumes: list[Path],
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    filled = [
        argument.format(first=volumes[0], directory=volumes[0].parent) for argument in arguments
    ]
    assert main(filled) == 2
    assert message in capsys.readouterr().err


def test_help_explains_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--help"]) == 0
    text = capsys.readouterr().out
    assert "example:" in text and "shmqueue estimate 'data/" in text
    assert "exit status: 0 if the plan fits this machine, 1 if it does not" in text


def test_progress_counter_on_a_terminal(
    make_nifti: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = np.zeros((8, 8, 8), dtype=np.uint8)
    paths = [make_nifti(f"v{index:02d}.nii", volume) for index in range(cli.PROGRESS_MIN_FILES)]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main(_estimate(str(paths[0].parent / "v*.nii"), "--patch-size", "4")) == 0
    counter = terminal.getvalue()
    assert f"\rReading headers: {len(paths)}/{len(paths)}\n" in counter


def test_measure_option(volumes: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    arguments = _estimate(str(volumes[0]), "--patch-size", "8", "--num-workers", "1")
    assert main([*arguments, "--measure", "--start-method", "fork", "--json"]) == 0
    worker = json.loads(capsys.readouterr().out)["worker"]
    assert worker["measured"] > 0 and worker["raw"] == 0


def test_python_dash_m_shmqueue(volumes: list[Path]) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "shmqueue", "estimate", str(volumes[0]), "--patch-size", "8"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "total per rank" in completed.stdout
