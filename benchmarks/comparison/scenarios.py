"""The comparison's scenarios: what every library runs, on which data, and how often."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..competitors.augmentation import VARIANTS, Augmentation
from ..competitors.preprocessing import Preprocessing
from ..competitors.runner import Request
from ..data import DatasetSpec, Shape, ensure_dataset, ensure_labels

SEED = 0


@dataclass(frozen=True)
class Scenario:
    """A question the comparison answers, and how its settings differ from each other."""

    key: str
    title: str
    question: str


STEADY = Scenario(
    "steady",
    "(a) Steady state",
    "Throughput, waits and memory while training, with a no-op step and with a 0.15 s step.",
)
FIRST_BATCH = Scenario(
    "first-batch",
    "(b) First batch when max_length holds the whole epoch",
    "How long the first batch takes when the buffer can hold every patch of the epoch.",
)
WORKERS = Scenario("workers", "(c) Number of workers", "Throughput with 1, 2 and 4 workers.")
TINY = Scenario(
    "tiny",
    "(d) Per-patch overhead",
    "Tiny patches (16^3, and 64x64x1 slices of the 3D volumes), 100 per volume, no-op step:"
    " loading is the same as in (a), so the difference is each library's cost per patch.",
)
AUGMENTATION = Scenario(
    "augmentation",
    "(f) Realistic augmentation",
    "Throughput, CPU time per patch and memory with the augmentation people train 3D"
    " segmentation with, in this order in every library: z-normalisation, brightness and"
    " contrast (multiplicative, as nnU-Net v2 defines them), then random affine, elastic"
    " deformation, bias field, gamma, blur, noise and a flip of each axis; patches centred on"
    " background or brain with equal probability. Brightness and contrast come before the"
    " spatial transforms (nnU-Net v2 applies them after), on the whole z-normalised volume once"
    " per subject in every library, because contrast needs the mean and range of its whole"
    " input: there, that input is a volume every library holds anyway, whereas after a"
    " resampling shmqueue, which computes only the patches' voxels, would have to compute the"
    " whole resampled volume once per subject for them. Each library runs the fastest"
    " configuration it documents (see the notes below);"
    " one epoch, no-op step. Two variants: nnU-Net v2's default probabilities (rotation and"
    " scaling 0.2, noise 0.1, blur 0.2, brightness 0.15, contrast 0.15, gamma 0.3, mirroring"
    " 0.5 per axis) plus elastic deformation at p 0.2 and bias field at p 0.1, which nnU-Net v2"
    " leaves out (our choice); and every transform at p = 1 (flips still 0.5 per axis).",
)
CACHE = Scenario(
    "cache",
    "(g) Cache: later epochs",
    "What a cache of loaded subjects buys once the first epoch has filled it: the steady state"
    " of (a) with the no-op step (a flip of the first axis and Gaussian noise), over 3 epochs,"
    " run by shmqueue without and with its cache (`Queue(cache_dir=...)`, a fresh directory on"
    " the data's disk for every run, removed after it), TorchIO 1.2.1 and TorchIO 2.0.0a2. The"
    " transform is random from its first step, so shmqueue's cache keeps each subject as"
    " loaded and maps it from its file in later epochs instead of inflating the .nii.gz again;"
    " each file is listed twice, so its second listing may already be read from the cache in"
    " the first epoch. TorchIO 1.2.1 has no cache and loads every subject every epoch; TorchIO"
    " 2.0.0a2 keeps every volume it has loaded in its subject list (see (a)'s notes), in"
    " memory. patches/s is given for the first epoch and for the epochs after it together;"
    " an epoch lasts from the previous epoch's last `next()` (the first request, for the first"
    " epoch) to its own last `next()`. Ratios are shmqueue with its cache ÷ each library.",
)
PREPROCESSING = Scenario(
    "preprocessing",
    "(h) Preprocessing",
    "What preprocessing costs every epoch, and what caching it buys: volumes stored at 1.3 mm"
    " in LPS orientation, each with its brain mask, are reoriented to RAS, resampled to 1 mm"
    " (linear for the volume, nearest for the mask), cropped or padded about their centre"
    " and z-normalised, then augmented with a flip of each axis (p 0.5 per axis) and Gaussian"
    " noise (std 0.1), in this order in every library; patches are drawn uniformly, 3 epochs,"
    " no-op step. Run by shmqueue without and with its cache (`cache_dir`, a fresh directory"
    " per run), TorchIO 1.2.1 (no cache: it preprocesses every subject again every epoch), and"
    " MONAI 1.6 with a PersistentDataset (its files in a fresh directory per run) and with a"
    " CacheDataset (in memory). Every cache keeps each subject after its deterministic steps,"
    " everything before the first flip, so later epochs only flip, add noise and cut patches."
    " patches/s is given for the first epoch and for the epochs after it, as in (g); ratios"
    " are shmqueue with its cache ÷ each library.",
)
SCENARIOS = (STEADY, FIRST_BATCH, WORKERS, TINY, AUGMENTATION, CACHE, PREPROCESSING)
LETTERS = {
    "a": STEADY,
    "b": FIRST_BATCH,
    "c": WORKERS,
    "d": TINY,
    "e": STEADY,
    "f": AUGMENTATION,
    "g": CACHE,
    "h": PREPROCESSING,
}
"""``--scenarios`` letters; (e), the memory table, is read from (a)'s runs."""


@dataclass(frozen=True)
class Setting:
    """One configuration of a scenario, run by every library ``repeats`` times on the same data."""

    scenario: Scenario
    label: str
    dataset: DatasetSpec
    listings: int  # each file appears this many times in the subject list
    patch_size: tuple[int, int, int]
    patches_per_volume: int
    max_length: int
    batch_size: int
    epochs: int
    num_workers: int
    step_seconds: float
    repeats: int
    timeout_seconds: float  # per run; only turns a hang into an error
    augmentation: Augmentation | None = None  # scenario (f)'s variant: labels and its pipeline
    preprocessing: Preprocessing | None = None  # scenario (h)'s: labels and its pipeline

    @property
    def key(self) -> str:
        return f"{self.scenario.key}: {self.label}"

    @property
    def labelled(self) -> bool:
        """Whether each subject comes with its brain mask: (f) samples by it, (h) resamples it."""
        return self.augmentation is not None or self.preprocessing is not None

    @property
    def num_subjects(self) -> int:
        return self.dataset.num_files * self.listings

    @property
    def expected_patches(self) -> int:
        """Patches per epoch when every subject yields ``patches_per_volume``."""
        return self.num_subjects * self.patches_per_volume

    def prepare(self) -> None:
        """Generate the setting's files if missing, before anything is timed."""
        ensure_dataset(self.dataset)
        if self.labelled:
            ensure_labels(self.dataset)

    def request(self) -> Request:
        """The runners' request: the dataset's files repeated ``listings`` times, as subjects,
        each with its brain mask when the setting is :attr:`labelled`; no cache (the driver
        asks for one per library)."""
        paths = ensure_dataset(self.dataset)
        labels = ensure_labels(self.dataset) if self.labelled else []
        return Request(
            paths=tuple(str(path) for _ in range(self.listings) for path in paths),
            label_paths=tuple(str(path) for _ in range(self.listings) for path in labels),
            augmentation=self.augmentation,
            preprocessing=self.preprocessing,
            patch_size=self.patch_size,
            patches_per_volume=self.patches_per_volume,
            max_length=self.max_length,
            batch_size=self.batch_size,
            epochs=self.epochs,
            num_workers=self.num_workers,
            step_seconds=self.step_seconds,
            seed=SEED,
        )

    def describe(self) -> str:
        px, py, pz = self.patch_size
        labels = " and their uint8 brain masks" if self.labelled else ""
        variant = "".join(
            f", {pipeline.describe()}"
            for pipeline in (self.augmentation, self.preprocessing)
            if pipeline is not None
        )
        return (
            f"{self.num_subjects} subjects ({self.dataset.describe()} .nii.gz"
            f" files{labels}, each listed {self.listings}x), patch {px}x{py}x{pz},"
            f" patches_per_volume {self.patches_per_volume}, max_length {self.max_length},"
            f" batch {self.batch_size}, {self.num_workers} worker(s), {self.epochs} epoch(s),"
            f" step {self.step_seconds:g} s, {self.repeats} repeat(s){variant}"
        )


@dataclass(frozen=True)
class Scale:
    """The sizes that differ between the full comparison and its quick smoke variant."""

    dataset: DatasetSpec
    patch: int  # edge of the steady state's cubic patches, and of the tiny slices (edge x edge x 1)
    max_length: int
    tiny: int  # edge of the tiny cubic patches
    tiny_patches_per_volume: int
    tiny_max_length: int
    repeats: dict[str, int]  # by scenario key
    timeout_seconds: float
    augmentation_patches: tuple[tuple[int, int], ...]  # (f): (cubic edge, patches_per_volume)
    augmentation_subjects: dict[str, int]  # (f): subjects per run, by variant name
    preprocessing_dataset: DatasetSpec  # (h): coarser than 1 mm, not RAS
    preprocessing_shape: Shape  # (h): what its volumes are cropped or padded to, at 1 mm


FULL = Scale(
    dataset=DatasetSpec(num_files=24, shape=(182, 218, 182)),
    patch=64,
    max_length=100,
    tiny=16,
    tiny_patches_per_volume=100,
    tiny_max_length=300,
    repeats={
        "steady": 3,
        "first-batch": 3,
        "workers": 3,
        "tiny": 3,
        "augmentation": 3,
        "cache": 3,
        "preprocessing": 3,
    },
    timeout_seconds=900.0,
    augmentation_patches=((64, 10), (128, 2)),
    # TorchIO 1.2.1 needs 10-15 s of CPU per subject with every transform at p = 1: few
    # subjects there; more where most transforms are skipped, so that the draws average out.
    augmentation_subjects={"nnU-Net p": 16, "all p = 1": 4},
    # 182x218x182 mm, the steady state's heads, at 1.3 mm: 182x218x182 voxels again at 1 mm.
    preprocessing_dataset=DatasetSpec(
        num_files=16, shape=(140, 168, 140), spacing=1.3, orientation="LPS"
    ),
    preprocessing_shape=(176, 208, 176),
)
QUICK = Scale(
    dataset=DatasetSpec(num_files=4, shape=(64, 64, 64)),
    patch=32,
    max_length=40,
    tiny=8,
    tiny_patches_per_volume=20,
    tiny_max_length=40,
    repeats={
        "steady": 1,
        "first-batch": 1,
        "workers": 1,
        "tiny": 1,
        "augmentation": 1,
        "cache": 1,
        "preprocessing": 1,
    },
    timeout_seconds=300.0,
    augmentation_patches=((16, 10), (32, 2)),
    augmentation_subjects={"nnU-Net p": 2, "all p = 1": 2},
    preprocessing_dataset=DatasetSpec(
        num_files=4, shape=(40, 48, 40), spacing=1.3, orientation="LPS"
    ),
    preprocessing_shape=(48, 56, 48),
)


def settings(scale: Scale, scenarios: Sequence[Scenario] = SCENARIOS) -> list[Setting]:
    """Every setting of ``scenarios`` at ``scale``, in the order they run within a repeat.

    The steady state lists each file twice and runs 2 epochs; the other scenarios list each file
    once and run one epoch with a no-op step, to keep (a)-(e) under 30 minutes. (f) takes 35-50
    minutes at full scale on 2 cores (3 repeats of 12-16), nearly half of it TorchIO 1.2.1's.
    (g) and (h) run 3 epochs with the no-op step; from (a)'s rates, (g) should take about 5
    minutes at full scale and (h), whose TorchIO 1.2.1 resamples every subject every epoch,
    10-15 (estimates: neither has run at full scale yet).
    """
    return [setting for setting in _all_settings(scale) if setting.scenario in scenarios]


def _all_settings(scale: Scale) -> list[Setting]:
    edge = scale.patch
    steady = Setting(
        scenario=STEADY,
        label="no-op step",
        dataset=scale.dataset,
        listings=2,
        patch_size=(edge, edge, edge),
        patches_per_volume=10,
        max_length=scale.max_length,
        batch_size=16,
        epochs=2,
        num_workers=2,
        step_seconds=0.0,
        repeats=scale.repeats[STEADY.key],
        timeout_seconds=scale.timeout_seconds,
    )
    once = replace(steady, listings=1, epochs=1)
    tiny = replace(
        once,
        scenario=TINY,
        patches_per_volume=scale.tiny_patches_per_volume,
        max_length=scale.tiny_max_length,
        repeats=scale.repeats[TINY.key],
    )
    return [
        steady,
        replace(steady, label="0.15 s step", step_seconds=0.15),
        replace(
            once,
            scenario=FIRST_BATCH,
            label="max_length = epoch",
            max_length=once.expected_patches,
            repeats=scale.repeats[FIRST_BATCH.key],
        ),
        *(
            replace(
                once,
                scenario=WORKERS,
                label=f"{count} worker{'s' if count > 1 else ''}",
                num_workers=count,
                repeats=scale.repeats[WORKERS.key],
            )
            for count in (1, 2, 4)
        ),
        replace(tiny, label=f"{scale.tiny}^3", patch_size=(scale.tiny,) * 3),
        replace(tiny, label=f"{edge}x{edge}x1", patch_size=(edge, edge, 1)),
        *_augmentation_settings(scale),
        replace(
            steady,
            scenario=CACHE,
            label="no-op step, 3 epochs",
            epochs=3,
            repeats=scale.repeats[CACHE.key],
        ),
        replace(
            steady,
            scenario=PREPROCESSING,
            label="no-op step, 3 epochs",
            dataset=scale.preprocessing_dataset,
            listings=1,
            epochs=3,
            repeats=scale.repeats[PREPROCESSING.key],
            preprocessing=Preprocessing(spacing=1.0, shape=scale.preprocessing_shape),
        ),
    ]


def _augmentation_settings(scale: Scale) -> list[Setting]:
    """(f): each variant with each patch size, on the first files of the steady state's data.

    A batch is one subject's patches (what MONAI's and nnU-Net's loaders yield) and the queues
    hold four subjects' worth, so every library works on whole subjects from the start; with one
    epoch on two workers busy throughout, patches/s over the run is the steady rate.
    """
    return [
        Setting(
            scenario=AUGMENTATION,
            label=f"{variant.name}, {edge}^3",
            dataset=replace(scale.dataset, num_files=scale.augmentation_subjects[variant.name]),
            listings=1,
            patch_size=(edge, edge, edge),
            patches_per_volume=patches_per_volume,
            max_length=4 * patches_per_volume,
            batch_size=patches_per_volume,
            epochs=1,
            num_workers=2,
            step_seconds=0.0,
            repeats=scale.repeats[AUGMENTATION.key],
            timeout_seconds=scale.timeout_seconds,
            augmentation=variant,
        )
        for variant in VARIANTS
        for edge, patches_per_volume in scale.augmentation_patches
    ]
