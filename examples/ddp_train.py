"""Train a tiny 3D U-Net with DistributedDataParallel on the CPU, one shmqueue Queue per rank.

Run on one machine with two ranks (gloo backend, no GPU needed):

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py

Rank 0 writes a few head phantoms (``shmqueue.demo.generate_dataset``, cached in the demo's
directory); every rank then builds a Queue over *all* subjects with a
:class:`shmqueue.DistributedSubjectSampler`, which gives each rank its own share, two worker
processes per rank, and trains for two epochs. With 5 subjects and 2 ranks the sampler pads one
rank's share by repeating a subject (torch's rule), and every rank runs the same number of
batches, which DDP needs: each ``backward()`` all-reduces the gradients across ranks.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import shmqueue as sq
from shmqueue.demo import TinyUNet, default_cache_dir, generate_dataset


def say(line: str) -> None:
    """Print a whole line in one write, so the ranks' lines do not interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_cache_dir(), help="phantom cache")
    parser.add_argument("--subjects", type=int, default=5, help="number of head phantoms")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="worker processes per rank")
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--patches-per-volume", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    return parser.parse_args()


def train(arguments: argparse.Namespace) -> None:
    where = sq.distributed_environment()
    # Share the cores between the ranks of this node (the queue's workers use one thread each).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // where.local_world_size))
    if where.rank == 0:  # one writer; the others wait, then only read the headers
        generate_dataset(arguments.data, arguments.subjects)
    dist.barrier()
    subjects = generate_dataset(arguments.data, arguments.subjects)

    subject_sampler = sq.DistributedSubjectSampler(subjects, shuffle=True, seed=0)
    patch_sampler = sq.LabelSampler(
        None,
        arguments.patch_size,
        label_name="seg",
        label_probabilities={0: 0.2, 1: 0.4, 2: 0.2, 3: 0.2},
    )
    transform = sq.Compose([sq.RescaleIntensity((0.0, 1.0)), sq.Flip(axes=(0,), p=0.5)])
    budget = sq.per_rank_memory_budget()  # this node's memory / LOCAL_WORLD_SIZE

    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts them)
    model = DistributedDataParallel(TinyUNet())
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = nn.CrossEntropyLoss()
    with sq.Queue(
        subjects,
        patch_sampler,
        max_length=4 * arguments.patches_per_volume,
        patches_per_volume=arguments.patches_per_volume,
        num_workers=arguments.workers,
        transform=transform,
        shuffle_subjects=False,  # the sampler decides the order
        subject_sampler=subject_sampler,
        seed=where.rank,
    ) as queue:
        estimate = queue.estimate_memory(
            batch_size=arguments.batch_size, ranks_per_node=where.local_world_size
        )
        say(
            f"rank {where.rank}: {queue} needs {estimate.total_per_rank / 2**20:.0f} MiB of its"
            f" {budget / 2**30:.1f} GiB budget ({where.local_world_size} ranks on this node)"
        )
        if estimate.total_per_rank > budget:
            raise MemoryError(f"rank {where.rank} needs more than its budget:\n{estimate}")
        loader = sq.SubjectsLoader(queue, batch_size=arguments.batch_size)
        for epoch in range(arguments.epochs):
            queue.set_epoch(epoch)  # forwards to the sampler: a new shuffle every epoch
            batches, loss_value = 0, float("nan")
            for batch in loader:
                optimiser.zero_grad()
                logits = model(batch.t1.data)
                loss = criterion(logits, batch.seg.data[:, 0].long())
                loss.backward()  # all-reduces the gradients with the other ranks
                optimiser.step()
                batches += 1
                loss_value = loss.item()
            say(
                f"rank {where.rank}: epoch {epoch}: {batches} batches from subjects"
                f" {sorted(subjects[index].name for index in subject_sampler)},"
                f" loss {loss_value:.3f}"
            )
            counts: list[int | None] = [None] * where.world_size
            dist.all_gather_object(counts, batches)
            if where.rank == 0:
                say(f"epoch {epoch}: batches per rank {counts}")
            if len(set(counts)) != 1:
                raise RuntimeError(f"ranks ran different numbers of batches: {counts}")


def main() -> None:
    arguments = parse_arguments()
    dist.init_process_group("gloo")
    try:
        train(arguments)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
