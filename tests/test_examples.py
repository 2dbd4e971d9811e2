"""The examples run: the TorchIO 1.x script with only its import changed (on shmqueue and on
TorchIO), and the Lightning example fitting a few steps with a whole-volume validation loader."""

from __future__ import annotations

import ast
import runpy
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
TORCHIO1_SCRIPT = EXAMPLES / "torchio1_train.py"
SHMQUEUE_IMPORT = (
    "import shmqueue as tio  # the one line changed from TorchIO: was `import torchio as tio`"
)


def load(path: Path) -> dict[str, Any]:
    return runpy.run_path(str(path), run_name="example")


def test_the_torchio1_script_imports_shmqueue_once_as_tio() -> None:
    tree = ast.parse(TORCHIO1_SCRIPT.read_text())
    imports = [
        (alias.name, alias.asname)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.startswith("shmqueue")
    ]
    assert imports == [("shmqueue", "tio")]
    assert not [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shmqueue")
    ]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_torchio1_script_trains_on_shmqueue(num_workers: int, tmp_path: Path) -> None:
    results = load(TORCHIO1_SCRIPT)["main"](
        ["--workers", str(num_workers), "--epochs", "2", "--data", str(tmp_path)]
    )
    assert set(results) == {"training_loss", "validation_loss", "dice"}
    assert results["dice"] > 0.5  # learnt the spheres, and the grid aggregation reassembled them


def test_the_torchio1_script_trains_on_torchio_too(tmp_path: Path) -> None:
    pytest.importorskip("torchio")
    script = tmp_path / "torchio1_train_on_torchio.py"
    source = TORCHIO1_SCRIPT.read_text()
    assert source.count(SHMQUEUE_IMPORT) == 1
    script.write_text(source.replace(SHMQUEUE_IMPORT, "import torchio as tio"))
    data = tmp_path / "data"
    data.mkdir()
    results = load(script)["main"](["--workers", "0", "--epochs", "1", "--data", str(data)])
    assert set(results) == {"training_loss", "validation_loss", "dice"}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_lightning_example_fits_and_validates_whole_volumes(num_workers: int) -> None:
    pytest.importorskip("lightning")
    trainer, model = load(EXAMPLES / "lightning_train.py")["main"](
        ["--workers", str(num_workers), "--max-steps", "6"]
    )
    assert trainer.global_step == 6  # 4 batches of patches per epoch: a second epoch began
    assert trainer.num_val_batches == [3]  # whole volumes of the 3 validation subjects
    assert model.validation_batches == 3
    assert {"training_loss", "validation_loss"} <= set(trainer.callback_metrics)
