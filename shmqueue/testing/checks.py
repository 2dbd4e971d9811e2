"""check_transform and check_sampler: what the queue relies on from a user's components.

The queue derives one generator per (seed, epoch, subject) and gives it to the transform and the
sampler; workers are other processes. So a transform or sampler must draw only from that
generator (else patches depend on the worker and on time), must pickle (spawn and forkserver
workers get a pickled copy), must not write into its input (subjects are shared between epochs),
and must keep the shapes and dtypes the ring was laid out for. A sampler must return locations
inside the volume and patches that are copies (a view pins the whole volume in memory).

Both checkers find global random state by running the component several times with the same
generator while reseeding torch's, numpy's and Python's global generators one at a time: an
output that follows a global seed names the library whose global state it draws from.
"""

from __future__ import annotations

import pickle
import random
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch

from ..catalog import patch_count
from ..image import Image, LabelMap
from ..sampling.base import PATCH_LOCATION_KEY, PatchLocation, PatchSampler
from ..subject import Subject
from ..transforms import SubjectTransform, apply_transform, transform_steps
from .records import tensor_digest
from .report import Contract, Failure, Report, SamplerReport, TransformReport
from .ring_watch import storage_span

Output = TypeVar("Output")
ReportType = TypeVar("ReportType", bound=Report)

_BASE_GLOBAL_SEED = 12_345
_OTHER_GLOBAL_SEED = 54_321
_GLOBAL_SOURCES = {
    "torch": "torch's global generator (e.g. torch.rand or torch.randn without generator=)",
    "numpy": "numpy's global generator (e.g. np.random.rand; use np.random.default_rng"
    " seeded from the generator instead)",
    "random": "Python's global `random` module (e.g. random.random())",
}


@contextmanager
def _global_randomness(varied: str | None = None) -> Iterator[None]:
    """Seed torch's, numpy's and Python's global generators (``varied`` differently from the
    others), and restore their states afterwards."""
    seeds = {
        source: _OTHER_GLOBAL_SEED if source == varied else _BASE_GLOBAL_SEED
        for source in _GLOBAL_SOURCES
    }
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        torch.manual_seed(seeds["torch"])
        np.random.seed(seeds["numpy"])
        random.seed(seeds["random"])
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


def _check_randomness(
    run: Callable[[], Output],
    fingerprint: Callable[[Output], object],
    seed: int,
    report: Report,
    what: str,
) -> Output:
    """Run ``run`` under fixed and varied global seeds; report what its output depends on.

    Returns:
        The output of the run with every global generator at the base seed.
    """
    with _global_randomness():
        reference = run()
    with _global_randomness():
        repeated = run()
    expected = fingerprint(reference)
    if fingerprint(repeated) != expected:
        report.fail(
            Contract.DETERMINISM,
            f"{what} gave different outputs for the same generator seed {seed} and the same"
            " global seeds: it draws from a source the caller does not control (time, OS"
            " entropy, a fresh generator); draw only from the generator passed to it",
        )
        return reference
    for source, description in _GLOBAL_SOURCES.items():
        with _global_randomness(varied=source):
            varied = run()
        if fingerprint(varied) != expected:
            report.fail(
                Contract.GLOBAL_RANDOMNESS,
                f"{what} gave another output for generator seed {seed} when only the global"
                f" seed of {source} changed: it draws from {description}. Draw from the"
                " generator passed to it, so that patches do not depend on the worker",
            )
    return reference


def _loaded_copy(subject: Subject) -> Subject:
    """A copy with its own tensors: a component that writes into its input cannot reach the
    caller's subject."""
    return Subject(
        {
            key: value.with_data(value.data.clone()) if isinstance(value, Image) else value
            for key, value in subject.items()
        }
    )


def _snapshot(subject: Subject) -> dict[str, str]:
    return {name: tensor_digest(image.data) for name, image in subject.images.items()}


def _subject_fingerprint(subject: object) -> object:
    if not isinstance(subject, Subject):
        return repr(subject)
    return tuple(
        (name, image.data.dtype, tuple(image.data.shape), tensor_digest(image.data))
        for name, image in subject.images.items()
    )


def _check_unchanged(before: dict[str, str], subject: Subject, report: Report, what: str) -> None:
    changed = [name for name, digest in _snapshot(subject).items() if before.get(name) != digest]
    if changed:
        report.fail(
            Contract.INPUT_UNCHANGED,
            f"{what} wrote into the input's tensors of image(s) {changed}; build new tensors"
            " (image.with_data(...)) instead, or the next epoch sees modified data",
        )


def _check_pickle(component: object, report: Report) -> object | None:
    """A pickled and unpickled copy of ``component``, or None after reporting why not."""
    try:
        copy: object = pickle.loads(pickle.dumps(component))
    except Exception as error:
        report.fail(
            Contract.PICKLABLE,
            f"{type(component).__name__} cannot be pickled ({type(error).__name__}: {error});"
            " spawn and forkserver workers receive a pickled copy: define it at module level,"
            " without lambdas, open files or locks",
        )
        return None
    return copy


def check_transform(
    transform: SubjectTransform,
    subject: Subject,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    keeps_label_values: bool = True,
) -> TransformReport:
    """Check a transform against what the queue relies on.

    For each seed the transform runs on a copy of ``subject`` with
    ``torch.Generator().manual_seed(seed)``, as the queue runs it (a plain callable with the
    global generators seeded from that generator; an adapter seeds its library), several times,
    under different global seeds of torch, numpy and ``random``. Checked:

    * it returns a Subject with the same images;
    * **determinism:** the same generator seed gives the same output, bit for bit (not so,
      e.g., for a MONAI random transform nested in a custom one that does not pass
      ``set_random_state`` on: :class:`~shmqueue.MonaiAdapter` cannot reach its state);
    * **no global random state:** the output follows the generator and does not change with a
      global seed (the failure names the library whose global generator it uses: a
      :class:`~shmqueue.Transform` that draws from one, which the queue does not seed for it);
    * **shapes and dtypes** of every image are kept (the ring is laid out from the headers);
    * **label values:** a :class:`~shmqueue.LabelMap`'s values after are among those before,
      unless ``keeps_label_values=False``;
    * **input unchanged:** the input's tensors are not written to;
    * **picklable:** a pickled copy gives the same output (spawn workers get one).

    Global random state is restored afterwards.

    Args:
        transform: a :class:`~shmqueue.Transform` or any callable ``Subject -> Subject``.
        subject: a subject to transform (copied and loaded; never modified by the check).
        seeds: the generator seeds to try.
        keeps_label_values: False for transforms that may create label values (e.g. remapping
            labels); shapes and dtypes are still checked.

    Returns:
        A :class:`~shmqueue.testing.TransformReport`.

    Raises:
        Exception: whatever the transform raises.

    Example:
        >>> import torch, shmqueue as sq
        >>> from shmqueue.testing import check_transform
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.rand(1, 8, 8, 8)),
        ...                      seg=sq.LabelMap(torch.randint(0, 3, (1, 8, 8, 8))))
        >>> check_transform(sq.Compose([sq.Flip(axes=(1,)), sq.Noise()]), subject).ok
        True
        >>> leaky = sq.Lambda(lambda data: data + torch.rand(data.shape))  # global RNG
        >>> print(check_transform(leaky, subject).failures[0].contract)
        no global random state
    """
    report = TransformReport(target=repr(transform), seeds=list(seeds))
    report.checked = [
        str(contract)
        for contract in (
            Contract.RETURN_TYPE,
            Contract.DETERMINISM,
            Contract.GLOBAL_RANDOMNESS,
            Contract.SHAPE,
            Contract.DTYPE,
            Contract.LABEL_VALUES,
            Contract.INPUT_UNCHANGED,
            Contract.PICKLABLE,
        )
    ]
    if not keeps_label_values:
        report.checked.remove(str(Contract.LABEL_VALUES))
    source = _loaded_copy(subject)
    before = _snapshot(source)

    def run_with(component: SubjectTransform, seed: int) -> Callable[[], Any]:
        return lambda: _applied(component, source.copy(), seed)

    outputs = {}
    for seed in seeds:
        output = _check_randomness(
            run_with(transform, seed), _subject_fingerprint, seed, report, "the transform"
        )
        if not isinstance(output, Subject):
            report.fail(
                Contract.RETURN_TYPE,
                f"the transform returned {type(output).__name__}, not a Subject",
            )
            continue
        outputs[seed] = output
        _check_output(source, output, seed, keeps_label_values, report)
        _check_unchanged(before, source, report, "the transform")
    copy = _check_pickle(transform, report)
    if copy is not None and outputs:
        seed = next(iter(outputs))
        with _global_randomness():
            again = run_with(copy, seed)()  # type: ignore[arg-type]
        if _subject_fingerprint(again) != _subject_fingerprint(outputs[seed]):
            report.fail(
                Contract.PICKLABLE,
                f"the unpickled transform gives another output for seed {seed}: part of its"
                " state is lost or changed by pickling (check __getstate__/__reduce__)",
            )
    return _deduplicated(report)


def _applied(transform: SubjectTransform, subject: Subject, seed: int) -> Subject:
    """``transform`` applied to ``subject`` as the queue applies it with the generator seeded
    ``seed``: Composes step by step, plain callables with the global generators seeded from the
    generator (:func:`~shmqueue.transforms.apply_transform`)."""
    generator = torch.Generator().manual_seed(seed)
    for step in transform_steps(transform, generator):
        subject = apply_transform(step, subject, generator)
    return subject


def _check_output(
    source: Subject, output: Subject, seed: int, keeps_label_values: bool, report: Report
) -> None:
    before, after = source.images, output.images
    for name in sorted(set(before) ^ set(after)):
        state = "is missing from the output" if name in before else "was added"
        report.fail(Contract.SHAPE, f"image '{name}' {state} (generator seed {seed})")
    for name in sorted(set(before) & set(after)):
        old, new = before[name].data, after[name].data
        if old.shape != new.shape:
            report.fail(
                Contract.SHAPE,
                f"image '{name}' changed shape from {tuple(old.shape)} to {tuple(new.shape)}"
                f" (generator seed {seed}); patch positions are planned from the header's shape",
            )
        if old.dtype != new.dtype:
            report.fail(
                Contract.DTYPE,
                f"image '{name}' changed dtype from {old.dtype} to {new.dtype} (generator seed"
                f" {seed}); the ring is laid out for {old.dtype} and would cast silently",
            )
        if keeps_label_values and isinstance(before[name], LabelMap):
            created = sorted(set(torch.unique(new).tolist()) - set(torch.unique(old).tolist()))
            if created:
                report.fail(
                    Contract.LABEL_VALUES,
                    f"label map '{name}' has values {created[:10]} after the transform that it"
                    f" did not have before (generator seed {seed}); interpolate label maps with"
                    " nearest neighbours, or pass keeps_label_values=False if intended",
                )


def _deduplicated(report: ReportType) -> ReportType:
    """Keep the first of the failures that differ only in the generator seed."""
    kept: dict[tuple[Contract, str], Failure] = {}
    for failure in report.failures:
        kept.setdefault((failure.contract, re.sub(r"seed -?\d+", "seed", failure.message)), failure)
    report.failures = list(kept.values())
    return report


def check_sampler(
    sampler: PatchSampler,
    subject: Subject,
    num_patches: int = 4,
    seeds: Sequence[int] = (0, 1, 2),
) -> SamplerReport:
    """Check a patch sampler against the :class:`~shmqueue.PatchSampler` contract.

    For each seed, with ``torch.Generator().manual_seed(seed)``: ``sampler.locations`` on the
    prepared subject and ``sampler(subject, num_patches, generator)``. Checked:

    * **count:** exactly ``num_patches`` locations and patches (or all the sampler has, for a
      finite sampler such as the grid);
    * **locations inside the volume**, each of the sampler's patch size;
    * **determinism and no global random state**, as in :func:`check_transform`;
    * **copies, not views:** no patch shares storage with the subject's tensors or another
      patch (a view pins the whole volume);
    * **content:** each patch is the region at its ``patch_location`` of the prepared subject,
      at the locations ``locations()`` gives (the queue uses those), with the metadata;
    * **input unchanged** and **picklable**.

    Args:
        sampler: the sampler.
        subject: a subject to sample from (copied and loaded; never modified by the check).
        num_patches: patches to ask for on each run.
        seeds: the generator seeds to try.

    Returns:
        A :class:`~shmqueue.testing.SamplerReport`.

    Raises:
        Exception: whatever the sampler raises (e.g. a patch larger than the volume).

    Example:
        >>> import torch, shmqueue as sq
        >>> from shmqueue.testing import check_sampler
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.rand(1, 16, 12, 8)))
        >>> check_sampler(sq.UniformSampler(None, patch_size=(8, 4, 8)), subject).ok
        True
    """
    report = SamplerReport(target=repr(sampler), seeds=list(seeds), num_patches=num_patches)
    report.checked = [
        str(contract)
        for contract in (
            Contract.PATCH_COUNT,
            Contract.LOCATIONS_INSIDE,
            Contract.DETERMINISM,
            Contract.GLOBAL_RANDOMNESS,
            Contract.PATCH_COPIES,
            Contract.PATCH_CONTENT,
            Contract.INPUT_UNCHANGED,
            Contract.PICKLABLE,
        )
    ]
    source = _loaded_copy(subject)
    before = _snapshot(source)
    prepared = sampler.prepare(source.copy())
    count = patch_count(sampler, source.spatial_shape, num_patches)
    first_locations = None
    for seed in seeds:
        locations = _check_randomness(
            partial(_draw_locations, sampler, prepared, count, seed),
            tuple,
            seed,
            report,
            "sampler.locations()",
        )
        first_locations = locations if first_locations is None else first_locations
        _check_locations(sampler, prepared, locations, count, seed, report)
        with _global_randomness():
            generator = torch.Generator().manual_seed(seed)
            patches = list(sampler(source.copy(), num_patches, generator))
        _check_patches(sampler, source, prepared, patches, locations, count, seed, report)
        _check_unchanged(before, source, report, "the sampler")
    copy = _check_pickle(sampler, report)
    if isinstance(copy, PatchSampler) and seeds:
        with _global_randomness():
            again = _draw_locations(copy, prepared, count, seeds[0])
        if again != first_locations:
            report.fail(
                Contract.PICKLABLE,
                f"the unpickled sampler gives other locations for seed {seeds[0]}: part of its"
                " state is lost or changed by pickling",
            )
    return _deduplicated(report)


def _draw_locations(
    sampler: PatchSampler, prepared: Subject, count: int, seed: int
) -> list[PatchLocation]:
    return sampler.locations(prepared, count, torch.Generator().manual_seed(seed))


def _check_locations(
    sampler: PatchSampler,
    prepared: Subject,
    locations: list[PatchLocation],
    count: int,
    seed: int,
    report: Report,
) -> None:
    if len(locations) != count:
        report.fail(
            Contract.PATCH_COUNT,
            f"locations() gave {len(locations)} locations for {count} asked (generator seed"
            f" {seed}); the queue plans exactly that many patches per subject",
        )
    shape = prepared.spatial_shape
    for location in locations:
        inside = all(
            start >= 0 and stop <= size
            for start, stop, size in zip(location.index, location.stop, shape, strict=True)
        )
        if location.size != sampler.patch_size or not inside:
            report.fail(
                Contract.LOCATIONS_INSIDE,
                f"location {location.index} of size {location.size} is not a patch of size"
                f" {sampler.patch_size} inside the prepared volume {shape} (generator seed"
                f" {seed})",
            )


def _check_patches(
    sampler: PatchSampler,
    source: Subject,
    prepared: Subject,
    patches: list[Subject],
    locations: list[PatchLocation],
    count: int,
    seed: int,
    report: Report,
) -> None:
    if len(patches) != count:
        report.fail(
            Contract.PATCH_COUNT,
            f"sampler(subject, {count}, generator) yielded {len(patches)} patches (generator"
            f" seed {seed})",
        )
    volumes = [storage_span(image.data) for s in (source, prepared) for image in s.images.values()]
    spans: list[tuple[int, int]] = []
    for number, patch in enumerate(patches):
        location = patch.get(PATCH_LOCATION_KEY)
        if not isinstance(location, PatchLocation):
            report.fail(
                Contract.PATCH_CONTENT,
                f"patch {number} has no '{PATCH_LOCATION_KEY}' PatchLocation (generator seed"
                f" {seed})",
            )
            continue
        if number < len(locations) and location != locations[number]:
            report.fail(
                Contract.PATCH_CONTENT,
                f"patch {number} lies at {location.index} but locations() gives"
                f" {locations[number].index} for the same generator (seed {seed}); the queue"
                " cuts patches at locations()",
            )
        missing = {key for key in source.metadata if key not in patch}
        if missing:
            report.fail(
                Contract.PATCH_CONTENT,
                f"patch {number} lacks the subject's metadata {sorted(missing)}",
            )
        for name, image in patch.images.items():
            span = storage_span(image.data)
            if any(start < span[1] and span[0] < stop for start, stop in volumes + spans):
                report.fail(
                    Contract.PATCH_COPIES,
                    f"image '{name}' of patch {number} shares storage with the subject's volume"
                    " or another patch: it is a view, which keeps the whole volume in memory;"
                    " copy the region (image.crop() or .clone())",
                )
            spans.append(span)
            region = prepared.images[name].data[(slice(None), *location.to_slices())]
            if region.shape != image.data.shape or tensor_digest(region) != tensor_digest(
                image.data
            ):
                report.fail(
                    Contract.PATCH_CONTENT,
                    f"image '{name}' of patch {number} is not the region at {location.index}"
                    f" of the prepared subject (generator seed {seed})",
                )
