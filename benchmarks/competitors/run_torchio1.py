"""TorchIO 1.x's pipeline: SubjectsDataset, Queue (its DataLoader's worker processes load and
augment whole subjects; the training process samples patches into the buffer), SubjectsLoader."""

from __future__ import annotations

import torchio as tio

from .runner import Pipeline, Request, main


def build(request: Request) -> Pipeline:
    """TorchIO 1.x's documented patch pipeline over the request's subjects."""
    subjects = [tio.Subject(t1=tio.ScalarImage(path)) for path in request.paths]
    transform = tio.Compose(
        [
            tio.RandomFlip(axes=(0,), flip_probability=request.flip_probability),
            tio.RandomNoise(std=(request.noise_std, request.noise_std)),  # a fixed std
        ]
    )
    queue = tio.Queue(
        tio.SubjectsDataset(subjects, transform=transform),
        max_length=request.max_length,
        samples_per_volume=request.patches_per_volume,
        sampler=tio.UniformSampler(request.patch_size),
        num_workers=request.num_workers,
    )
    loader = tio.SubjectsLoader(queue, batch_size=request.batch_size)
    return Pipeline(
        batches=lambda epoch: loader,
        patches_in=lambda batch: int(batch["t1"][tio.DATA].shape[0]),
        estimate=queue.get_max_memory,  # loads subjects[0]: called after training
        estimate_label="queue.get_max_memory(): 4 B x channels x patch voxels x max_length",
    )


if __name__ == "__main__":
    main("TorchIO", tio.__version__, build)
