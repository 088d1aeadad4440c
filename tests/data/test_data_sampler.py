"""The resumable sampler: seeded per-epoch order, and resuming from a state continues exactly."""
import itertools

import pytest
import torch

from rlhf.data import ResumableLoader, ResumableSampler


def drain(sampler, n_batches):
    """The next `n_batches` index batches across epochs (via next_batch)."""
    return [sampler.next_batch() for _ in range(n_batches)]


@pytest.mark.parametrize("n, batch_size, drop_last", [(10, 3, False), (10, 3, True), (12, 4, False), (7, 7, True)])
def test_resume_continues_exactly_like_an_uninterrupted_run(n, batch_size, drop_last):
    total = 4 * ((n + batch_size - 1) // batch_size)  # several epochs' worth
    reference = drain(ResumableSampler(n, batch_size, seed=3, drop_last=drop_last), total)
    for stop in range(total):
        first = ResumableSampler(n, batch_size, seed=3, drop_last=drop_last)
        head = drain(first, stop)
        state = dict(first.state_dict())
        resumed = ResumableSampler(n, batch_size, seed=3, drop_last=drop_last)
        resumed.load_state_dict(state)
        assert head + drain(resumed, total - stop) == reference, f"resumed after {stop} batches"


def test_epochs_are_seeded_permutations():
    sampler = ResumableSampler(10, 3, seed=1)
    epoch0, epoch1 = list(sampler), list(sampler)
    assert [len(b) for b in epoch0] == [3, 3, 3, 1] and sampler.epoch == 2 and sampler.position == 0
    flat0, flat1 = list(itertools.chain(*epoch0)), list(itertools.chain(*epoch1))
    assert sorted(flat0) == sorted(flat1) == list(range(10))
    assert flat0 != flat1  # a new order each epoch
    assert flat0 == ResumableSampler(10, 3, seed=1).order(0) != ResumableSampler(10, 3, seed=2).order(0)
    assert list(ResumableSampler(5, 2, shuffle=False)) == [[0, 1], [2, 3], [4]]
    assert [len(b) for b in ResumableSampler(10, 3, drop_last=True)] == [3, 3, 3]


def test_iteration_resumes_mid_epoch():
    full = ResumableSampler(20, 4, seed=5)
    expected = list(full) + list(full)
    first = ResumableSampler(20, 4, seed=5)
    seen = []
    for batch in first:  # stop after 2 batches, as a crash after a checkpoint would
        seen.append(batch)
        if len(seen) == 2:
            break
    state = first.state_dict()
    assert state["epoch"] == 0 and state["position"] == 8
    resumed = ResumableSampler(20, 4, seed=5)
    resumed.load_state_dict(state)
    assert seen + list(resumed) + list(resumed) == expected


def test_load_state_dict_refuses_a_different_dataset():
    state = ResumableSampler(10, 2, seed=0).state_dict()
    with pytest.raises(ValueError, match="num_examples=10 but this sampler has 11"):
        ResumableSampler(11, 2, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=0 but this sampler has 1"):
        ResumableSampler(10, 2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="out of range"):
        ResumableSampler(10, 2).load_state_dict({**state, "position": 11})


def test_loader_collates_and_resumes():
    data = list(range(100, 110))
    collate = lambda xs: torch.tensor(xs)  # noqa: E731
    loader = ResumableLoader(data, 4, collate_fn=collate, seed=7)
    batches = [loader.next_batch().tolist() for _ in range(7)]
    assert sorted(itertools.chain(*batches[:3])) == data  # epoch 0: batches of 4, 4, 2
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2, 4]
    probe = ResumableLoader(data, 4, collate_fn=collate, seed=7)
    head = [probe.next_batch().tolist() for _ in range(3)]
    resumed = ResumableLoader(data, 4, collate_fn=collate, seed=7)
    resumed.load_state_dict(probe.state_dict())
    assert head + [resumed.next_batch().tolist() for _ in range(4)] == batches
    # also as a DataLoader batch sampler (num_workers=0: no prefetching, so the state is exact)
    sampler = ResumableSampler(len(data), 4, seed=7)
    dl = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate)
    assert [b.tolist() for b in dl] == [b.tolist() for b in ResumableLoader(data, 4, collate_fn=collate, seed=7)]
