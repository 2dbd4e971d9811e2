"""shmqueue's pipeline, as its README shows it: Queue with worker processes, SubjectsLoader."""

from __future__ import annotations

import shmqueue as sq

from .runner import Pipeline, Request, main


def build(request: Request) -> Pipeline:
    """A :class:`shmqueue.Queue` over the request's subjects, batched by a SubjectsLoader."""
    subjects = [sq.Subject(t1=sq.ScalarImage(path)) for path in request.paths]
    transform = sq.Compose(
        [sq.Flip(axes=(0,), p=request.flip_probability), sq.Noise(std=request.noise_std)]
    )
    queue = sq.Queue(
        subjects,
        patch_sampler=sq.UniformSampler(subjects[0], patch_size=request.patch_size),
        max_length=request.max_length,
        patches_per_volume=request.patches_per_volume,
        num_workers=request.num_workers,
        transform=transform,
        seed=request.seed,
    )
    loader = sq.SubjectsLoader(queue, batch_size=request.batch_size)
    # The full estimate where the queue has it; else TorchIO's buffer-only figure.
    if hasattr(queue, "estimate_memory"):
        estimate = queue.estimate_memory(batch_size=request.batch_size).total_per_rank
        label = "queue.estimate_memory().total_per_rank"
    else:
        estimate, label = queue.max_memory, "queue.max_memory"
    return Pipeline(
        batches=lambda epoch: loader,
        patches_in=lambda batch: int(batch.t1.data.shape[0]),
        estimate=lambda: estimate,
        estimate_label=label,
        reserved_bytes=queue.layout.ring_bytes if request.num_workers else 0,
        close=queue.close,
    )


if __name__ == "__main__":
    main("shmqueue", sq.__version__, build)
