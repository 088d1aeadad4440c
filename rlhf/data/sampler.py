"""Deterministic, resumable data order: seeded shuffle per epoch, state = (epoch, position).

    loader = ResumableLoader(dataset, batch_size=64, collate_fn=dataset.collate, seed=0)
    for batch in loader: ...                 # the rest of the current epoch, then epoch += 1
    batch = loader.next_batch()              # or an endless stream across epochs (PPO)
    state = loader.state_dict()              # {"epoch", "position", "seed", "num_examples", ...}
    loader.load_state_dict(state)            # continues with exactly the batch that came next

The order of epoch e is a permutation drawn from a torch generator seeded with (seed, e) alone, so
it does not depend on how many batches were drawn before — which is what makes resuming exact. The
state advances BEFORE a batch is handed out: a checkpoint saved while training on batch k records the
position after batch k, and resuming yields batch k+1.

`ResumableSampler` is also a batch sampler for `torch.utils.data.DataLoader(batch_sampler=...)`; with
`num_workers > 0` the DataLoader prefetches batches, so the sampler's state runs ahead of what
training consumed — checkpoint the `ResumableLoader` state (or use `num_workers=0`) instead.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch

_EPOCH_STRIDE = 1_000_003  # seed of epoch e is seed * stride + e: distinct streams for small seeds/epochs


class ResumableSampler(torch.utils.data.Sampler):
    """Batches of indices into a dataset of `num_examples`, in a seeded per-epoch order.

    Args:
        num_examples: dataset size.
        batch_size: indices per batch.
        seed: shuffle seed.
        shuffle: False keeps the order 0..n−1 in every epoch.
        drop_last: drop the final short batch of an epoch (so every batch has `batch_size` rows).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False):
        if num_examples <= 0 or batch_size <= 0:
            raise ValueError(f"num_examples and batch_size must be positive, got {num_examples}, {batch_size}")
        if drop_last and batch_size > num_examples:
            raise ValueError(f"drop_last with batch_size={batch_size} > num_examples={num_examples} yields no batch")
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch = 0  # current epoch
        self.position = 0  # examples of the current epoch already handed out
        self._cached: tuple[int, list[int]] | None = None  # (epoch, order) of the last epoch asked for

    def order(self, epoch: int) -> list[int]:
        """The permutation of dataset indices used in `epoch`."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        if self.shuffle:
            generator = torch.Generator().manual_seed((self.seed * _EPOCH_STRIDE + epoch) % 2**63)
            order = torch.randperm(self.num_examples, generator=generator).tolist()
        else:
            order = list(range(self.num_examples))
        self._cached = (epoch, order)
        return order

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return self.batches_per_epoch()

    def _epoch_done(self) -> bool:
        remaining = self.num_examples - self.position
        return remaining <= 0 or (self.drop_last and remaining < self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        """Index batches for the rest of the current epoch; afterwards the state is the next epoch's start."""
        if self._epoch_done():  # a state saved exactly at an epoch's end resumes in the next epoch
            self.epoch, self.position = self.epoch + 1, 0
        order = self.order(self.epoch)
        while not self._epoch_done():
            batch = order[self.position: self.position + self.batch_size]
            self.position += len(batch)  # advance before yielding: a checkpoint now resumes after `batch`
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def next_batch(self) -> list[int]:
        """The next index batch, moving into the next epoch when the current one is exhausted."""
        if self._epoch_done():
            self.epoch, self.position = self.epoch + 1, 0
        batch = self.order(self.epoch)[self.position: self.position + self.batch_size]
        self.position += len(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_examples": self.num_examples, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position; refuses a state taken over a different dataset size, seed or shuffle."""
        for key in ("num_examples", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler has "
                                 f"{getattr(self, key)!r}; the saved position would point elsewhere")
        if not 0 <= state["position"] <= self.num_examples or state["epoch"] < 0:
            raise ValueError(f"sampler state out of range: epoch={state['epoch']}, position={state['position']}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class ResumableLoader:
    """Collated batches of `dataset` in the order of a `ResumableSampler` (same args), resumable exactly."""

    def __init__(self, dataset: Sequence[Any], batch_size: int, collate_fn: Callable[[list[Any]], Any] | None = None,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = False):
        self.dataset = dataset
        self.collate_fn = collate_fn if collate_fn is not None else getattr(dataset, "collate", list)
        self.sampler = ResumableSampler(len(dataset), batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        for indices in self.sampler:
            yield self.collate_fn([self.dataset[i] for i in indices])

    def next_batch(self) -> Any:
        return self.collate_fn([self.dataset[i] for i in self.sampler.next_batch()])

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
