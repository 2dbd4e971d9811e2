"""The comparison benchmark's own arithmetic: dataset names and per-epoch rates."""

from __future__ import annotations

from typing import Any

from benchmarks.comparison.runs import Run
from benchmarks.competitors.runner import Request, Result
from benchmarks.data import DatasetSpec


def test_the_default_grid_keeps_the_existing_file_names() -> None:
    assert DatasetSpec(24, (182, 218, 182)).file_name(0) == "head-v1-182x218x182-seed0-000.nii.gz"
    coarse = DatasetSpec(16, (140, 168, 140), spacing=1.3, orientation="LPS")
    assert coarse.file_name(3) == "head-v1-140x168x140-1.3mm-LPS-seed0-003.nii.gz"
    assert coarse.label_file_name(3).endswith("-1.3mm-LPS-seed0-003-brain.nii.gz")


def _run(calls: list[list[float]], epoch_patches: list[int]) -> Run:
    result = Result("shmqueue", "0", 0.0, calls=calls, epoch_patches=epoch_patches)
    unused: Any = None  # the rates read only the result
    return Run(unused, unused, 0, result, unused)


def test_an_epoch_lasts_from_the_previous_epochs_last_call_to_its_own() -> None:
    # epoch 1: batches arrive at 1 and 2 s, its end at 4 s; epoch 2: batches at 5 and 6 s, end 6 s
    calls = [[1.0, 1.0, 8], [2.0, 0.1, 8], [4.0, 0.0, 0], [5.0, 0.5, 8], [6.0, 0.2, 8], [6.0, 0, 0]]
    run = _run(calls, [16, 16])
    assert run.epoch_ends == [4.0, 6.0]
    assert run.epoch_patches_per_second == [4.0, 8.0]
    assert run.later_epochs_patches_per_second == 8.0


def test_a_request_without_the_cache_fields_still_reads() -> None:
    request = Request(("a.nii.gz",), (8, 8, 8), 2, 4, 2, 1, 0, 0.0, 0)
    assert Request.from_json(request.to_json()) == request
