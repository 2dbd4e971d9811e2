"""SubjectPipeline: what happens to one subject in an epoch, wherever it runs.

Load the subject (or, with a cache, read it preprocessed: :mod:`shmqueue.cache`), augment it
with the task's seed, prepare it for the sampler and draw the task's patch locations. The
in-process path and the engine's workers both call :meth:`run`, so a patch is
the same region of the same augmented volume in both (contracts 2 and 6 of DESIGN.md). A step
that is a plain callable, not a :class:`~shmqueue.Transform`, runs with the global generators
seeded from the task's (:func:`~shmqueue.transforms.apply_transform`, contract 13).

It also checks, in this one place for both paths, that the transformed subject's images are what
the ring was laid out for, from the images' headers and what the transform's deterministic steps
say they output (:mod:`shmqueue.catalog`): the same names with the same channels, in a dtype the
ring's can hold. Anything else would be copied wrongly (a channel broadcast into two, an
added image dropped), so it raises :class:`~shmqueue.errors.TransformOutputError` naming the
transform step that made the difference. Floating-point images may come out in another floating
dtype (e.g. float64 from a numpy-based transform): they are rounded to the ring's, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import islice

import torch

from .adapters.base import refuse_foreign_transforms
from .augmentation.deferred import deferred
from .cache import VolumeCache, cached_prefix
from .cache.prefix import preprocess
from .errors import SamplingError, TransformOutputError
from .machine import return_free_memory
from .plan import SubjectTask
from .sampling.base import PatchLocation, PatchSampler
from .subject import Subject
from .transforms import SubjectTransform, run_steps, step_name, transform_steps

RingImage = tuple[int, torch.dtype]
"""What the ring holds of one image: ``(channels, dtype)``."""


class SubjectPipeline:
    """The subjects, the transform and the sampler: everything a worker needs, and picklable.

    Args:
        subjects: the queue's subjects.
        transform: applied to each loaded subject, step by step (see
            :func:`~shmqueue.transforms.transform_steps`).
        sampler: prepares the transformed subject and draws the patch locations.
        images: what the ring holds of each image, name -> ``(channels, dtype)`` (the queue's
            ``layout.images``); :meth:`run` raises if the transformed subject differs.
        patch_evaluation: evaluate the augmentations after the last step that needs the whole
            volume (:class:`~shmqueue.Augmentation` steps) at the patches' voxels only (see
            :mod:`shmqueue.augmentation.deferred`); False evaluates them on the whole volume,
            the reference that patch evaluation equals.
        cache: where each subject is kept after loading and the transform's cached prefix
            (:func:`~shmqueue.cache.cached_prefix`), read back memory-mapped on later epochs;
            None loads and preprocesses every subject every time.
    """

    def __init__(
        self,
        subjects: Sequence[Subject],
        transform: SubjectTransform | None,
        sampler: PatchSampler,
        images: Mapping[str, RingImage],
        patch_evaluation: bool = True,
        cache: VolumeCache | None = None,
    ) -> None:
        refuse_foreign_transforms(transform)
        self.subjects = subjects
        self.transform = transform
        self.sampler = sampler
        self.images = dict(images)
        self.patch_evaluation = patch_evaluation
        self.cache = cache
        self._cached_steps = cached_prefix(transform) if cache is not None else []

    def run(self, task: SubjectTask) -> tuple[Subject, list[PatchLocation]]:
        """The augmented, prepared subject and exactly ``task.num_patches`` patch locations.

        The subject's images may be deferred (:meth:`~shmqueue.Image.deferred`): read each
        patch with :meth:`~shmqueue.Image.voxels_at` (or :meth:`~shmqueue.Image.crop`), which
        computes it alone.

        Raises:
            TransformOutputError: the transformed subject's images are not what the ring holds
                (see the module's docstring).
            SamplingError: the sampler gave another number of patches than planned.
        """
        return_free_memory()  # the previous subject's volumes, so that the process stays its size
        generator = torch.Generator().manual_seed(task.seed)
        # Each stage's image specs (from tensor shapes and dtypes, no voxel read), so that a
        # mismatch is blamed on the step that made it.
        stages: list[tuple[str, dict[str, RingImage]]] = []

        def record(number: int, step: SubjectTransform, result: Subject) -> None:
            name = f"transform step {number} ({step_name(step)})"
            stages.append((name, _image_specs(result)))

        def loaded(subject: Subject) -> None:
            stages.append(("loading the files", _image_specs(subject)))

        def preprocessed(subject: Subject) -> Subject:
            return preprocess(subject, self._cached_steps, loaded, record)

        subject = self.subjects[task.subject_index].copy()
        if self.cache is None:
            subject = preprocessed(subject)
        else:
            subject, hit = self.cache.preprocessed(subject, self._cached_steps, preprocessed)
            if hit:
                where = f"reading the cache in '{self.cache.directory}'"
                stages.append((where, _image_specs(subject)))
        # The cached steps come first among the transform's (they draw nothing): skip them.
        steps = islice(transform_steps(self.transform, generator), len(self._cached_steps), None)
        subject, pending = run_steps(
            steps, subject, generator, record, first_number=len(self._cached_steps) + 1
        )
        # The last augmentations: evaluated only where the patches are read, or on the whole
        # volume (the reference), with the same parameters either way.
        if self.patch_evaluation:
            subject = deferred(subject, pending.operations)
        else:
            subject = pending.evaluated(subject)
        subject = self.sampler.prepare(subject)
        subject.spatial_shape  # noqa: B018 -- raises if the transform broke the alignment
        stages.append((f"{type(self.sampler).__name__}.prepare", _image_specs(subject)))
        self._check_images(task, stages)
        locations = self.sampler.locations(subject, task.num_patches, generator)
        if len(locations) != task.num_patches:
            raise SamplingError(
                f"{type(self.sampler).__name__} gave {len(locations)} patches for"
                f" {subject.describe(task.subject_index)} where {task.num_patches} were planned"
                " from the shape predicted from the headers. Does a transform step change the"
                " spatial shape without saying so in its output_spec?"
            )
        return subject, locations

    def _check_images(
        self, task: SubjectTask, stages: list[tuple[str, dict[str, RingImage]]]
    ) -> None:
        """Raise unless the last stage's images are what the ring holds, naming the stage that
        first made them differ (a transform step, the sampler's preparation, or loading)."""
        final = stages[-1][1]
        for name in {**self.images, **final}:
            expected = self.images.get(name)
            if _fits(expected, final.get(name)):
                continue
            stage, specs = next(
                (stage, specs) for stage, specs in stages if not _fits(expected, specs.get(name))
            )
            verb = "added" if expected is None else "removed" if name not in specs else "changed"
            ring = (
                "the ring of patch slots (laid out from the headers and the transform's"
                " output_spec)"
            )
            held = "has no place for it" if expected is None else f"holds {_describe(expected)}"
            description = self.subjects[task.subject_index].describe(task.subject_index)
            raise TransformOutputError(
                f"{description}: image '{name}' is {_describe(final.get(name))} after the"
                f" transform, but {ring} {held}; {stage} {verb} it."
                f" {_advice(expected, final.get(name))}"
            )


def _image_specs(subject: Subject) -> dict[str, RingImage]:
    return {name: (image.num_channels, image.dtype) for name, image in subject.images.items()}


def _holds(ring: torch.dtype, produced: torch.dtype) -> bool:
    """Whether the ring's dtype keeps every value of ``produced``; floats round, as they did."""
    if ring.is_floating_point and produced.is_floating_point:
        return True
    return torch.promote_types(ring, produced) == ring


def _fits(expected: RingImage | None, produced: RingImage | None) -> bool:
    if expected is None or produced is None:
        return expected is produced
    return expected[0] == produced[0] and _holds(expected[1], produced[1])


def _describe(spec: RingImage | None) -> str:
    if spec is None:
        return "absent"
    channels, dtype = spec
    return f"{channels} channel{'' if channels == 1 else 's'} of {dtype}"


def _advice(expected: RingImage | None, produced: RingImage | None) -> str:
    if expected is not None and produced is not None and expected[0] == produced[0]:
        return (
            f"The ring's {expected[1]} cannot hold {produced[1]} values without changing them:"
            f" cast the image back to {expected[1]} in the transform, or remove that step."
        )
    return (
        "The ring is laid out before any transform runs, from the headers and what the"
        " transform's deterministic steps say they output (output_spec), so a step that adds or"
        " removes images or changes their channels must be deterministic and say so (e.g."
        " OneHot(num_classes=...), not a Lambda), before any random step: make it so, remove"
        " that step (e.g. apply it to each batch in the training loop instead), or store the"
        " images as it would make them."
    )
