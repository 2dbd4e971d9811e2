"""TorchIO 2.0's pipeline, the seed's code: Queue with background threads, SubjectsLoader."""

from __future__ import annotations

import torchio as tio
from torchio.loader import SubjectsLoader

from .runner import Pipeline, Request, main


def build(request: Request) -> Pipeline:
    """The seed's example over the request's subjects."""
    subjects = [tio.Subject(t1=tio.ScalarImage(path)) for path in request.paths]
    transform = tio.Compose(
        [tio.Flip(axes=(0,), p=request.flip_probability), tio.Noise(std=request.noise_std)]
    )
    queue = tio.Queue(
        subjects,
        patch_sampler=tio.UniformSampler(subjects[0], patch_size=request.patch_size),
        max_length=request.max_length,
        patches_per_volume=request.patches_per_volume,
        num_workers=request.num_workers,
        transform=transform,
    )
    loader = SubjectsLoader(queue, batch_size=request.batch_size)
    return Pipeline(
        batches=lambda epoch: loader,
        patches_in=lambda batch: int(batch.t1.data.shape[0]),
        estimate=lambda: int(queue.max_memory),
        estimate_label="queue.max_memory: 4 B x channels x patch voxels x max_length",
    )


if __name__ == "__main__":
    main("TorchIO", tio.__version__, build)
