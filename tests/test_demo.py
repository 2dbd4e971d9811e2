"""The demo (``make demo``), shortened: it trains through the queue and draws its two pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shmqueue.demo import DemoSettings, generate_dataset, run_demo
from shmqueue.phantoms import head_phantom


def test_phantoms_look_like_heads() -> None:
    t1, labels = head_phantom(np.random.default_rng(0))
    assert t1.dtype == np.int16 and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    brain, ventricles, lesion = (labels == 1), (labels == 2), (labels == 3)
    # A T1 look: the lesion is brightest, ventricles darker than brain, background near zero.
    assert t1[lesion].mean() > t1[brain].mean() > t1[ventricles].mean()
    assert np.abs(t1[0:4, 0:4, 0:4]).mean() < 100


def test_the_dataset_is_generated_once(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path, num_subjects=2)
    stamps = [path.stat().st_mtime_ns for path in sorted(tmp_path.iterdir())]
    second = generate_dataset(tmp_path, num_subjects=2)
    assert [path.stat().st_mtime_ns for path in sorted(tmp_path.iterdir())] == stamps
    assert [s.name for s in first] == [s.name for s in second] == ["sub-00", "sub-01"]


@pytest.mark.timeout(300)
def test_a_short_demo_trains_and_draws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = DemoSettings(
        num_subjects=3, epochs=2, patches_per_volume=4, max_length=8, batch_size=4
    )
    assert run_demo(tmp_path / "out", tmp_path / "data", settings) == 0
    output = capsys.readouterr().out
    assert "Trained 2 epochs: 24 patches" in output
    for picture in ("patches.png", "timeline.png"):
        path = tmp_path / "out" / picture
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000


def test_the_command_line_runs_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shmqueue.demo
    from shmqueue.cli import main

    calls: list[tuple[Path, Path | None]] = []
    monkeypatch.setattr(
        shmqueue.demo, "run_demo", lambda output, data: calls.append((output, data)) or 0
    )
    assert main(["demo", "--output", str(tmp_path / "pictures")]) == 0
    assert calls == [(tmp_path / "pictures", None)]
