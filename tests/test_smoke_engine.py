"""Temporary smoke test to check the leak fixture works with real workers."""

import shmqueue as sq


def test_engine_smoke(tensor_subjects: list[sq.Subject]) -> None:
    sampler = sq.UniformSampler(None, 8)
    with sq.Queue(
        tensor_subjects, sampler, max_length=10, patches_per_volume=5, num_workers=2, seed=0
    ) as queue:
        batches = list(sq.SubjectsLoader(queue, batch_size=4))
    assert sum(b.t1.data.shape[0] for b in batches) == 25
