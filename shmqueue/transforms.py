"""Transforms: functions of a Subject whose randomness comes from a generator the caller passes.

A transform never touches global random state: :meth:`Transform.__call__` takes an explicit
``torch.Generator``. The queue derives that generator from ``(seed, epoch, subject index)``, so an
augmented subject is the same whichever worker process made it and whenever. Transforms never
write into their input's tensors; they return a new Subject with new images.

Any callable ``Subject -> Subject`` is accepted wherever a transform is; such a callable gets no
generator, so it runs with torch's, numpy's and Python's global generators seeded from the
caller's (see :func:`apply_transform`): reproducible, and independent of the worker.

Every transform also describes itself without voxels (:mod:`shmqueue.specs`): its output given
its input's description, whether it is random, how much of the volume it needs, and what it
allocates. The queue and the memory estimator ask these questions of each transform
(:func:`described`), so a new transform is a single class.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import ClassVar, TypeGuard

import torch

from .image import Image
from .seeding import seeded_global_generators
from .specs import (
    UNKNOWN,
    VOXELWISE,
    WHOLE_VOLUME,
    ImageSpec,
    Locality,
    SubjectSpec,
    Unknown,
    VolumeCost,
)
from .subject import Subject

SubjectTransform = Callable[[Subject], Subject]


def fresh_generator() -> torch.Generator:
    """A generator seeded from the OS's entropy, for callers that do not care to reproduce."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def apply_transform(
    transform: SubjectTransform | None, subject: Subject, generator: torch.Generator
) -> Subject:
    """Apply a shmqueue transform (with the generator) or any plain callable (without it).

    A plain callable gets no generator, so it runs with torch's, numpy's and Python's global
    generators seeded from ``generator`` and restored afterwards
    (:func:`~shmqueue.seeding.seeded_global_generators`): one that draws from them is
    reproducible from ``(seed, epoch, subject)`` and independent of the worker (contract 13),
    instead of repeating the random state a forked worker inherited. This holds wherever it
    runs: as a queue's step, inside any Compose (or subclass), in a SubjectsDataset.
    """
    if transform is None:
        return subject
    if isinstance(transform, Transform):
        return transform(subject, generator)
    with seeded_global_generators(generator):
        result = transform(subject)
    if not isinstance(result, Subject):
        raise TypeError(
            f"The transform {transform!r} returned {type(result).__name__}, not a Subject. A"
            " transform must be a callable Subject -> Subject."
        )
    return result


def transform_steps(
    transform: SubjectTransform | None, generator: torch.Generator | None = None
) -> Iterator[SubjectTransform]:
    """The transforms that applying ``transform`` applies in turn, with Composes unpacked.

    Applying the steps one by one gives the same subject as applying ``transform`` (a Compose's
    probability is drawn from ``generator`` at the same point), but the caller then holds only
    the current step's input: a Compose holds its input, the loaded volumes, until its last
    transform returns, one volume more per image at the peak. Without a generator, every
    Compose's steps, as if each Compose happened (what the memory estimator assumes).
    """
    if transform is None:
        return
    if type(transform) is not Compose:  # a subclass may override apply: it is one step
        yield transform
        return
    if (
        generator is not None
        and transform.p < 1.0
        and torch.rand((), generator=generator).item() >= transform.p
    ):
        return
    for inner in transform.transforms:
        yield from transform_steps(inner, generator)


def deterministic_prefix(transform: SubjectTransform | None) -> list[SubjectTransform]:
    """The steps of :func:`transform_steps` before the first random one: what every
    application of ``transform`` runs alike, whatever the generator (a Compose with ``p < 1`` is
    random as a whole, its steps included).

    Example:
        >>> import shmqueue as sq
        >>> deterministic_prefix(sq.Compose([sq.Clamp(0), sq.Noise(), sq.Clamp(1)]))
        [Clamp(p=1.0, include=None, exclude=None, out_min=0, out_max=None)]
    """
    prefix: list[SubjectTransform] = []

    def walk(step: SubjectTransform) -> bool:
        """Add ``step``'s deterministic steps; whether all of them were."""
        if type(step) is Compose and step.p == 1.0:  # as transform_steps unpacks it
            return all(walk(inner) for inner in step.transforms)
        if described(step).is_random:
            return False
        prefix.append(step)
        return True

    if transform is not None:
        walk(transform)
    return prefix


def step_name(step: SubjectTransform) -> str:
    """A transform's name for messages: a function's qualified name, else its class's."""
    return getattr(step, "__qualname__", type(step).__name__)


def described(transform: SubjectTransform) -> Transform:
    """What answers for ``transform``'s description: itself if it is a :class:`Transform`, else
    a Transform that knows nothing of itself (a plain callable cannot say what it does)."""
    return transform if isinstance(transform, Transform) else _PLAIN_CALLABLE


def described_steps(
    steps: Iterable[SubjectTransform], images: SubjectSpec
) -> Iterator[tuple[Transform, dict[str, ImageSpec], dict[str, ImageSpec]]]:
    """Each step, :func:`described`, with the descriptions of its input and its output, the
    first input being ``images``.

    A step whose output is :data:`~shmqueue.specs.UNKNOWN` is taken to give what it was given:
    the ring is laid out on the same assumption.
    """
    current = dict(images)
    for step in steps:
        transform = described(step)
        output = transform.output_spec(current)
        following = current if isinstance(output, Unknown) else dict(output)
        yield transform, current, following
        current = following


class Transform:
    """Base class: applied with probability ``p``, drawing from the caller's generator.

    Subclasses implement :meth:`apply`, which receives a shallow copy of the subject (new Subject
    and Image objects, shared tensors) and must replace images rather than modify tensors.

    A transform also describes itself, without voxels, for the queue and the memory estimator:
    :meth:`output_spec`, :attr:`is_random`, :attr:`locality` and :meth:`memory_cost`. The base
    class answers as for a transform it knows nothing of (output unknown, random, the whole
    volume needed, two volumes of every image at once); a subclass overrides what it can
    promise, and one that derives from a shmqueue transform inherits that transform's answers.

    Args:
        p: probability of applying the transform, in [0, 1].

    Example:
        >>> import numpy as np, torch, shmqueue as sq
        >>> from shmqueue.specs import ImageSpec
        >>> t1 = ImageSpec(sq.ScalarImage, 1, (64, 64, 64), torch.float32, np.eye(4))
        >>> noise = sq.Noise()
        >>> noise.output_spec({"t1": t1}) == {"t1": t1}, noise.is_random, noise.locality.margin
        (True, True, 0)
        >>> [cost.output for cost in noise.memory_cost({"t1": t1})] == [t1.nbytes]
        True
    """

    draws: ClassVar[bool] = True
    """Whether :meth:`apply` draws from its generator; a deterministic transform says False."""

    def __init__(self, p: float = 1.0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.p = p

    def __call__(self, subject: Subject, generator: torch.Generator | None = None) -> Subject:
        generator = fresh_generator() if generator is None else generator
        if not self.happens(generator):
            return subject
        return self.apply(subject.copy(), generator)

    def happens(self, generator: torch.Generator) -> bool:
        """Whether this application takes place: drawn from ``generator`` when ``p < 1``."""
        return self.p == 1.0 or torch.rand((), generator=generator).item() < self.p

    def apply(self, subject: Subject, generator: torch.Generator) -> Subject:
        raise NotImplementedError

    # What the transform says of itself ----------------------------------------------------------

    def output_spec(self, images: SubjectSpec) -> dict[str, ImageSpec] | Unknown:
        """The description of the output, given the input's, by image name; or
        :data:`~shmqueue.specs.UNKNOWN` if it cannot be told without running the transform."""
        return UNKNOWN

    @property
    def is_random(self) -> bool:
        """Whether two applications to the same subject may differ: with ``p < 1`` always, else
        if the transform draws from its generator (:attr:`draws`)."""
        return self.p < 1.0 or self.draws

    @property
    def locality(self) -> Locality:
        """How much of the volume the transform needs to give a patch's voxels."""
        return WHOLE_VOLUME

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """What one application allocates for each image it makes anew, in the order it makes
        them, given its input's description (images it keeps are not listed)."""
        return _volume_costs(images, (Image,), peak=2, output=1)

    def process_cost(self) -> int:
        """Bytes a process spends once, the first time it applies this transform, and keeps:
        kernels a library initialises lazily (a convolution's). None, unless a subclass says."""
        return 0

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({fields})"


_PLAIN_CALLABLE = Transform()
"""What describes a plain callable: a Transform that knows nothing of itself."""


def _volume_costs(
    images: SubjectSpec, kinds: tuple[type[Image], ...], peak: int, output: int
) -> list[VolumeCost]:
    """The costs of a transform that makes a new volume for every image of ``kinds``, with
    ``peak`` volumes alive at once while it makes one, of which it returns ``output``."""
    return [
        VolumeCost(name, peak * spec.nbytes, output * spec.nbytes)
        for name, spec in images.items()
        if issubclass(spec.kind, kinds)
    ]


def _replace_images(
    subject: Subject, function: Callable[[torch.Tensor], torch.Tensor], kinds: tuple[type, ...]
) -> Subject:
    for name, image in subject.images.items():
        if isinstance(image, kinds):
            subject[name] = image.with_data(function(image.data))
    return subject


class Deferrable(Transform):
    """A transform whose application is drawn first (:meth:`draw`: its random parameters, as
    opaque operations) and evaluated later (:meth:`evaluate`), together with the deferrable
    transforms next to it: :class:`~shmqueue.Augmentation` is the one kind.
    """

    @property
    def deferrable(self) -> bool:
        """Whether this instance can be drawn and evaluated later."""
        return True

    def draw(self, subject: Subject, generator: torch.Generator) -> list[object]:
        raise NotImplementedError

    def evaluate(self, subject: Subject, operations: Sequence[object]) -> Subject:
        raise NotImplementedError

    def region_cost(self, name: str, spec: ImageSpec) -> int:
        """Bytes in flight per voxel of a region of image ``name`` (described by ``spec``)
        while this transform's operations are evaluated on that region, its result included
        (0: it leaves the image alone). The memory estimator bounds a patch's evaluation, and a
        whole volume's slab by slab, by the largest of a pipeline's."""
        raise NotImplementedError


def is_deferrable(step: SubjectTransform) -> TypeGuard[Deferrable]:
    """Whether ``step`` can be drawn now and evaluated later, with the deferrable steps next to
    it (at the patches, in a queue): the one rule :func:`run_steps`, transform groups and the
    memory estimator follow."""
    return isinstance(step, Deferrable) and step.deferrable


class Pending:
    """Deferrable transforms drawn and not yet evaluated (see :func:`run_steps`)."""

    def __init__(self) -> None:
        self.operations: list[object] = []
        self.evaluator: Deferrable | None = None

    def add(self, step: Deferrable, subject: Subject, generator: torch.Generator) -> None:
        self.operations += step.draw(subject, generator)
        self.evaluator = step

    def evaluated(self, subject: Subject) -> Subject:
        """``subject`` with the pending operations evaluated on the whole volume (none left)."""
        if self.evaluator is None or not self.operations:
            return subject
        result = self.evaluator.evaluate(subject, self.operations)
        self.operations, self.evaluator = [], None
        return result


def run_steps(
    steps: Iterable[SubjectTransform],
    subject: Subject,
    generator: torch.Generator,
    after_step: Callable[[int, SubjectTransform, Subject], None] | None = None,
    first_number: int = 1,
) -> tuple[Subject, Pending]:
    """Apply ``steps`` in order, drawing consecutive deferrable transforms without evaluating
    them: they are evaluated together (one resampling) before the next step of another kind,
    and those left at the end are returned pending, for the caller to evaluate
    (:meth:`Pending.evaluated`) or to defer to the patches (the queue). ``after_step`` sees
    each other step's number (from ``first_number``, counting every step), the step and its
    result.

    The generator is drawn from as applying each step in turn draws from it, so a subject's
    parameters do not depend on how its augmentations are evaluated.
    """
    pending = Pending()
    for number, step in enumerate(steps, start=first_number):
        if is_deferrable(step):
            pending.add(step, subject, generator)
            continue
        subject = apply_transform(step, pending.evaluated(subject), generator)
        if after_step is not None:
            after_step(number, step, subject)
    return subject, pending


class TransformGroup(Deferrable):
    """A transform that applies others in turn, chosen by :meth:`members` (:class:`Compose`
    all of them; :class:`~shmqueue.OneOf` and :class:`~shmqueue.SomeOf` a random choice).

    Its members run as a queue runs its steps (:func:`run_steps`: consecutive augmentations
    evaluated together, with one resampling), and it is deferrable when every member is: the
    queue then evaluates the augmentations it applies at the patches.
    """

    transforms: list[SubjectTransform]

    def members(self, generator: torch.Generator) -> list[SubjectTransform]:
        """The transforms one application applies, in order (drawn from ``generator``)."""
        raise NotImplementedError

    def apply(self, subject: Subject, generator: torch.Generator) -> Subject:
        subject, pending = run_steps(self.members(generator), subject, generator)
        return pending.evaluated(subject)

    @property
    def deferrable(self) -> bool:
        """When every member is (and :meth:`apply` is not overridden)."""
        return type(self).apply is TransformGroup.apply and all(
            is_deferrable(step) for step in self.transforms
        )

    def draw(self, subject: Subject, generator: torch.Generator) -> list[object]:
        """Whether it happens, its members, then their operations: as :meth:`apply` draws."""
        if not self.happens(generator):
            return []
        operations: list[object] = []
        for step in self.members(generator):
            assert isinstance(step, Deferrable)  # deferrable: every member is
            operations += step.draw(subject, generator)
        return operations

    def evaluate(self, subject: Subject, operations: Sequence[object]) -> Subject:
        first = self.transforms[0]
        assert isinstance(first, Deferrable)  # deferrable: every member is
        return first.evaluate(subject, operations)

    def process_cost(self) -> int:
        """The largest of its members'."""
        return max((described(step).process_cost() for step in self.transforms), default=0)

    def region_cost(self, name: str, spec: ImageSpec) -> int:
        """The largest of its members'."""
        return max(
            (
                step.region_cost(name, spec)
                for step in self.transforms
                if isinstance(step, Deferrable)
            ),
            default=0,
        )


class Compose(TransformGroup):
    """Apply transforms in order, all drawing from the same generator.

    Consecutive augmentations are evaluated together, with one resampling, as a queue does;
    inside a :class:`~shmqueue.OneOf`, a Compose of augmentations is evaluated at the patches.

    Example:
        >>> import torch, shmqueue as sq
        >>> transform = sq.Compose([sq.Flip(axes=(0,), p=0.5), sq.Noise(std=0.1)])
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.zeros(1, 4, 4, 4)))
        >>> transform(subject, torch.Generator().manual_seed(0)).t1.data.shape
        torch.Size([1, 4, 4, 4])
    """

    def __init__(self, transforms: Sequence[SubjectTransform], p: float = 1.0) -> None:
        super().__init__(p)
        self.transforms = list(transforms)

    def members(self, generator: torch.Generator) -> list[SubjectTransform]:
        """All its transforms."""
        return self.transforms

    def output_spec(self, images: SubjectSpec) -> dict[str, ImageSpec] | Unknown:
        """The last step's output, each step given the previous one's; unknown if any step's is."""
        current: dict[str, ImageSpec] | Unknown = dict(images)
        for transform in self.transforms:
            if isinstance(current, Unknown):
                return UNKNOWN
            current = described(transform).output_spec(current)
        return current

    @property
    def is_random(self) -> bool:
        return self.p < 1.0 or any(described(step).is_random for step in self.transforms)

    @property
    def locality(self) -> Locality:
        """The steps' localities in turn (see :meth:`~shmqueue.specs.Locality.then`)."""
        combined = VOXELWISE
        for step in self.transforms:
            combined = combined.then(described(step).locality)
        return combined

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """Every step's volumes, as if all stayed alive until the Compose returns: what it costs
        applied as one step. The queue applies a Compose step by step, freeing each step's input
        (:func:`transform_steps`), and the estimator counts it that way."""
        return [
            cost
            for step, inputs, _ in described_steps(self.transforms, images)
            for cost in step.memory_cost(inputs)
        ]


class Lambda(Transform):
    """Apply ``function(tensor) -> tensor`` to each image (or only to ``types_to_apply``).

    The function receives the ``(C, X, Y, Z)`` tensor and must not modify it in place.

    It is called once per image, separately, and gets no generator: it must be deterministic.
    A random function would draw anew for each image, so a label map would no longer match its
    image (``Lambda(torchio.RandomAffine())`` gives a foreground Dice of about 0.76 between
    them), and it would draw from global random state, which the queue does not seed for it.
    For a random transform of the whole subject, pass a callable ``Subject -> Subject`` as the
    transform (the queue seeds torch's, numpy's and Python's global generators for it from
    ``(seed, epoch, subject)``), or wrap a TorchIO or MONAI transform in
    :class:`~shmqueue.TorchioAdapter` or :class:`~shmqueue.MonaiAdapter`.
    """

    draws = False  # the function gets no generator (it must be deterministic)

    def __init__(
        self,
        function: Callable[[torch.Tensor], torch.Tensor],
        types_to_apply: tuple[type[Image], ...] | None = None,
        p: float = 1.0,
    ) -> None:
        super().__init__(p)
        self.function = function
        self.types_to_apply = types_to_apply

    def apply(self, subject: Subject, generator: torch.Generator) -> Subject:
        return _replace_images(subject, self.function, self._kinds)

    @property
    def _kinds(self) -> tuple[type[Image], ...]:
        return self.types_to_apply or (Image,)

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """Two volumes of every image it applies to at once, one of which it returns."""
        return _volume_costs(images, self._kinds, peak=2, output=1)
