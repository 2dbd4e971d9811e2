"""Subject: images and metadata, attribute access, shape checks from headers, copies."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from nibabel.arrayproxy import ArrayProxy

from shmqueue.errors import SubjectError
from shmqueue.image import LabelMap, ScalarImage
from shmqueue.subject import Subject

MakeNifti = Callable[..., Path]


def make_subject(**metadata: Any) -> Subject:
    return Subject(
        t1=ScalarImage(torch.rand(1, 6, 5, 4)),
        seg=LabelMap(torch.zeros(1, 6, 5, 4, dtype=torch.uint8)),
        **metadata,
    )


def test_images_and_metadata_by_key_and_attribute() -> None:
    subject = make_subject(age=42, site="A")
    assert subject.t1 is subject["t1"]
    assert subject.age == subject["age"] == 42
    assert list(subject.images) == ["t1", "seg"]
    assert subject.metadata == {"age": 42, "site": "A"}
    with pytest.raises(AttributeError, match="missing"):
        subject.missing  # noqa: B018


@pytest.mark.parametrize("key", ["name", "subject_id", "id"])
def test_name_comes_from_metadata(key: str) -> None:
    assert make_subject(**{key: 7}).name == "7"
    assert make_subject().name is None


def test_a_subject_needs_an_image() -> None:
    with pytest.raises(SubjectError, match=r"at least one image.*\['age'\]"):
        Subject(age=3)


def test_spatial_shape_comes_from_headers(
    make_nifti: MakeNifti, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = Subject(
        t1=ScalarImage(make_nifti("t1.nii.gz", np.zeros((6, 5, 4), np.int16))),
        seg=LabelMap(make_nifti("seg.nii.gz", np.zeros((6, 5, 4), np.uint8))),
    )

    def forbid(*_: Any) -> Any:
        raise AssertionError("voxels were read")

    monkeypatch.setattr(ArrayProxy, "get_unscaled", forbid)
    monkeypatch.setattr(ArrayProxy, "__array__", forbid)
    assert subject.spatial_shape == (6, 5, 4)
    assert not any(image.is_loaded for image in subject.images.values())


def test_different_spatial_shapes_name_the_subject_and_each_image(make_nifti: MakeNifti) -> None:
    subject = Subject(
        t1=ScalarImage(make_nifti("t1.nii.gz", np.zeros((6, 5, 4), np.int16))),
        seg=LabelMap(make_nifti("seg.nii.gz", np.zeros((6, 5, 3), np.uint8))),
        name="sub-07",
    )
    with pytest.raises(SubjectError) as raised:
        subject.spatial_shape  # noqa: B018
    message = str(raised.value)
    for expected in ("sub-07", "t1.nii.gz", "t1: (6, 5, 4)", "seg: (6, 5, 3)", "Resample"):
        assert expected in message


def test_load_reads_every_image(make_nifti: MakeNifti) -> None:
    subject = Subject(
        t1=ScalarImage(make_nifti("t1.nii", np.ones((4, 4, 4), np.int16))),
        seg=LabelMap(make_nifti("seg.nii", np.ones((4, 4, 4), np.uint8))),
    )
    subject.load()
    assert all(image.is_loaded for image in subject.images.values())


def test_copy_has_new_images_sharing_tensors() -> None:
    subject = make_subject(name="a", tags=["x"])
    clone = subject.copy()
    assert type(clone) is Subject
    assert clone.t1 is not subject.t1
    assert clone.t1.data is subject.t1.data
    clone["t1"] = ScalarImage(torch.zeros(1, 6, 5, 4))
    clone["extra"] = 1
    assert "extra" not in subject
    assert not torch.equal(subject.t1.data, clone.t1.data)


def test_describe_names_index_name_and_files(make_nifti: MakeNifti) -> None:
    path = make_nifti("t1.nii.gz", np.zeros((4, 4, 4), np.int16))
    subject = Subject(t1=ScalarImage(path), seg=LabelMap(torch.zeros(1, 4, 4, 4)), name="sub-03")
    assert subject.describe(3) == f"subject 3 'sub-03' (t1: '{path}', seg: in memory)"
    assert make_subject().describe() == "subject (t1: in memory, seg: in memory)"


def test_pickle_round_trip() -> None:
    subject = make_subject(name="a", age=1)
    clone = pickle.loads(pickle.dumps(subject))
    assert type(clone) is Subject
    assert clone.metadata == subject.metadata
    assert isinstance(clone.seg, LabelMap)
    assert torch.equal(clone.t1.data, subject.t1.data)
