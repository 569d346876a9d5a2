"""The trainer's epoch order: which rows make up each global batch (docs/design.md §6).

One epoch's order is a pure function of ``(seed, epoch)``, the shard list and three numbers of the
recipe that do not depend on the world size: the global batch size ``B``, ``lanes`` (``L``) and
``interleave`` (``k``); with ``pair`` / ``elem`` mixing also of the pairs of each shard
(:func:`maskedkd.views.mix_pairs`, drawn per view epoch):

1. the shards are visited in a permutation seeded by ``(seed, epoch)`` and cut into groups of
   ``k`` consecutive shards;
2. the rows of a group are shuffled together by a permutation seeded by ``(seed, epoch, the
   group's shards)`` (several shards open at once, as webdataset's and timm's shard interleaving
   with a shuffle buffer, but exact); with pairs, the *pairs* are shuffled, each staying two
   adjacent rows, and a shard's unpaired row (odd row counts) sits the epoch out;
3. the groups' rows, one after the other, form the epoch's stream of ``N`` rows, cut into ``L``
   contiguous lanes of ``N // L`` rows (rounded down to even with pairs);
4. global batch ``b`` is, for each lane in turn, its ``b``-th chunk of ``B / L`` rows (within a
   chunk the rows are grouped by shard, pairs staying adjacent); an epoch has
   ``(N // L) // (B / L)`` batches, the rows left over are dropped.

Rank ``r`` of ``W`` takes the contiguous ``1/W`` of every global batch (:func:`rank_slice`).
When ``W`` divides ``L`` that is whole lanes, so a rank reads only its lanes' shards, about
``1/W`` of the data (plus at most the groups cut by its lanes' two ends); the global batch, and so
resuming mid-epoch, never depends on ``W``. Every pair lies within one chunk, so its partner is
in the same rank's rows of the same batch and is rendered once. With ``L = k = 1`` and no pairs
this is the order the trainer used before lanes existed (shard after shard).

With repeated augmentation (``views.repeats`` R) an epoch reads only its :func:`epoch_shards
<pipeline.labels.contract.epoch_shards>` (1/R of them) and each unit of step 2 (a row, or a pair)
stands for its R repeats, adjacent in the stream (``(a, 0), (b, 0), (a, 1), (b, 1), ...``), so a
row's repeats are trained in the same global batch where the chunk allows, as DeiT's sampler does.
A row of repeat ``r`` of a shard of ``n`` rows is written ``r * n + row`` in a plan
(:func:`split_repeats`). ``N`` is then fixed by the shard list, not by the epoch's draw: R times
the rows of the smallest of the R parts a cycle splits the shards into (:func:`epoch_rows`), so
every epoch has as many batches.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from maskedkd.views import ViewSpec, mix_pairs
from pipeline.errors import ConfigError
from pipeline.labels.contract import ShardRef, derive_seed, epoch_shards, repeat_parts

PlanSegment = tuple[ShardRef, np.ndarray]  # a shard and rows of it, in batch order
PairsOf = Callable[[ShardRef], np.ndarray]  # each row's partner (a row index, -1: none)


def shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which an epoch visits the shards."""
    return np.random.default_rng(derive_seed("shards", seed, epoch)).permutation(num_shards)


def row_order(rows: int, seed: int, epoch: int, shard: str) -> np.ndarray:
    """The order in which an epoch visits one shard's rows (a group of one shard, no pairs)."""
    return np.random.default_rng(derive_seed("rows", seed, epoch, shard)).permutation(rows)


def stream_rows(shards: Sequence[ShardRef], pairs: bool) -> int:
    """``N``: rows in an epoch's stream (with pairs, each shard's unpaired row sits out)."""
    return sum(s.rows - (s.rows % 2 if pairs else 0) for s in shards)


def epoch_rows(shards: Sequence[ShardRef], pairs: bool, repeats: int = 1) -> int:
    """``N``, the rows an epoch trains on: the stream's, or with ``repeats`` R, R times the stream rows
    of the smallest of a cycle's R parts (:func:`~pipeline.labels.contract.repeat_parts`: what every
    epoch's part holds at least)."""
    if repeats == 1:
        return stream_rows(shards, pairs)
    return repeats * min(stream_rows([shards[i] for i in part], pairs) for part in repeat_parts(shards, repeats))


def lane_rows(shards: Sequence[ShardRef], lanes: int, pairs: bool, repeats: int = 1) -> int:
    """Rows of each lane: ``N // lanes``, even with pairs (a pair never straddles two lanes)."""
    n = epoch_rows(shards, pairs, repeats) // lanes
    return n - n % 2 if pairs else n


def epoch_steps(shards: Sequence[ShardRef], batch_size: int, lanes: int = 1, pairs: bool = False,
                repeats: int = 1) -> int:
    """Global batches per epoch: the same for every epoch, world size and loader worker count."""
    return lane_rows(shards, lanes, pairs, repeats) // (batch_size // lanes)


def checked_steps(shards: Sequence[ShardRef], batch_size: int, lanes: int = 1, pairs: bool = False,
                  repeats: int = 1) -> int:
    """:func:`epoch_steps`, refusing an epoch without a batch with a :class:`ConfigError` that says how
    many rows an epoch trains on."""
    steps = epoch_steps(shards, batch_size, lanes, pairs, repeats)
    if steps < 1:
        rows, total = epoch_rows(shards, pairs, repeats), sum(s.rows for s in shards)
        why = f"; views.repeats {repeats}: {repeats} x the smallest of {repeats} parts of the shards" if repeats > 1 else ""
        of = f" (of {total} samples{why})" if rows != total else ""
        raise ConfigError(f"train.batch_size {batch_size} is larger than the {rows} rows an epoch trains on{of}")
    return steps


def split_repeats(rows: np.ndarray, shard_rows: int, repeats: int) -> list[tuple[int, np.ndarray]]:
    """A plan's rows of one shard as ``(repeat, rows of the shard)``, repeats in order of first
    appearance, each keeping its rows' order (``repeats == 1``: ``[(0, rows)]``)."""
    if repeats == 1:
        return [(0, rows)]
    rep = rows // shard_rows
    seen, at = np.unique(rep, return_index=True)
    return [(int(r), rows[rep == r] % shard_rows) for r in seen[np.argsort(at)]]


def check_order(batch_size: int, lanes: int, world: int, pairs: bool) -> None:
    """Refuse a batch size that does not split into lanes (and pairs) with a :class:`ConfigError`."""
    if lanes < 1 or batch_size % lanes:
        raise ConfigError(f"train.batch_size {batch_size} must be divisible by train.lanes {lanes}")
    if pairs and (batch_size // lanes) % 2:
        raise ConfigError(f"train.batch_size / train.lanes = {batch_size // lanes} must be even with pair or elem "
                          f"mixing (views.mix_mode): a pair stays in one lane's chunk")
    if pairs and (batch_size // world) % 2:
        raise ConfigError(f"train.batch_size / world size = {batch_size // world} must be even with pair or elem "
                          f"mixing (views.mix_mode): a pair stays on one rank")


def _repeated(unit_shard: np.ndarray, unit_rows: np.ndarray, sizes: np.ndarray, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """Units ``[U, w]`` (a row, or a pair) as ``(shard index, row)`` in stream order, each unit
    followed by its other repeats: ``r * n + row`` for a shard of ``n`` rows."""
    w = unit_rows.shape[1]
    offsets = np.arange(repeats, dtype=np.int64)[None, :, None] * sizes[unit_shard][:, None, None]
    rows = (unit_rows[:, None, :] + offsets).reshape(-1)
    return np.repeat(unit_shard, repeats * w), rows


def _group(shards: Sequence[ShardRef], group: Sequence[int], seed: int, epoch: int,
           pairs: PairsOf | None, repeats: int, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(shard index, row)`` of one group's rows in stream order (``sizes``: every shard's rows)."""
    if pairs is None and len(group) == 1:
        ref = shards[group[0]]
        rows = row_order(ref.rows, seed, epoch, ref.name)
        return _repeated(np.full(ref.rows, group[0], dtype=np.int64), rows[:, None], sizes, repeats)
    who, first, second = [], [], []
    for si in group:
        if pairs is None:
            a = np.arange(shards[si].rows, dtype=np.int64)
            b = np.full_like(a, -1)
        else:
            partner = np.asarray(pairs(shards[si]), dtype=np.int64)
            a = np.flatnonzero(partner > np.arange(len(partner)))  # each pair once, by its first row
            b = partner[a]
        who.append(np.full(len(a), si, dtype=np.int64))
        first.append(a)
        second.append(b)
    unit_shard, unit_a, unit_b = np.concatenate(who), np.concatenate(first), np.concatenate(second)
    perm = np.random.default_rng(derive_seed("group", seed, epoch, *(shards[i].name for i in group))).permutation(len(unit_a))
    unit_shard, unit_a, unit_b = unit_shard[perm], unit_a[perm], unit_b[perm]
    units = unit_a[:, None] if pairs is None else np.stack([unit_a, unit_b], axis=1)
    return _repeated(unit_shard, units, sizes, repeats)


class EpochOrder:
    """One epoch's global batches as ``(ShardRef, rows)`` plans: index arithmetic, nothing read.

    Args:
        shards: the training shards and the rows used of each.
        seed, epoch: the order seed (``train.seed``) and the training epoch.
        batch_size: the global batch size ``B``.
        lanes, interleave: ``train.lanes`` and ``train.interleave`` (see the module docstring).
        pairs: each shard's mixing pairs for ``pair`` / ``elem`` mixing (:func:`maskedkd.views.mix_pairs`
            of the view epoch); None: rows are independent.
        repeats: ``views.repeats``: the epoch reads its :func:`~pipeline.labels.contract.epoch_shards`,
            every row that many times (rows written ``r * n + row``, :func:`split_repeats`).
    """

    def __init__(self, shards: Sequence[ShardRef], *, seed: int, epoch: int, batch_size: int, lanes: int = 1,
                 interleave: int = 1, pairs: PairsOf | None = None, repeats: int = 1) -> None:
        self.seed, self.epoch, self.batch_size = int(seed), int(epoch), int(batch_size)
        self.repeats = int(repeats)
        self.shards = epoch_shards(shards, self.seed, self.epoch, self.repeats)
        self.lanes, self.interleave = int(lanes), max(1, int(interleave))
        check_order(self.batch_size, self.lanes, 1, pairs is not None)
        self.chunk = self.batch_size // self.lanes
        self.lane_rows = lane_rows(shards, self.lanes, pairs is not None, self.repeats)
        self.steps = self.lane_rows // self.chunk
        order = [int(i) for i in shard_order(len(self.shards), self.seed, self.epoch)]
        sizes = np.array([s.rows for s in self.shards], dtype=np.int64)
        parts = [_group(self.shards, order[g:g + self.interleave], self.seed, self.epoch, pairs, self.repeats, sizes)
                 for g in range(0, len(order), self.interleave)]
        self._shard = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        self._row = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.steps

    def batch(self, b: int) -> list[PlanSegment]:
        """Global batch ``b``: each lane's ``b``-th chunk in lane order, its rows grouped by shard."""
        out: list[PlanSegment] = []
        for lane in range(self.lanes):
            lo = lane * self.lane_rows + b * self.chunk
            who, rows = self._shard[lo:lo + self.chunk], self._row[lo:lo + self.chunk]
            seen, at = np.unique(who, return_index=True)
            for si in seen[np.argsort(at)]:
                out.append((self.shards[int(si)], rows[who == si]))
        return out

    def batch_of(self, shard: str) -> np.ndarray:
        """The global batch each row of shard ``shard`` is trained in, ``-1`` where it sits the epoch out:
        int64 ``[repeats * n]`` over the rows written as in a plan (``r * n + row``); all ``-1`` for a
        shard the epoch does not read. What ``mix_mode: batch`` draws a pair's lambda and box by."""
        ref = next((s for s in self.shards if s.name == shard), None)
        if ref is None:
            return np.full(0, -1, dtype=np.int64)
        out = np.full(self.repeats * ref.rows, -1, dtype=np.int64)
        pos = np.flatnonzero(self._shard == self.shards.index(ref))
        lane, within = pos // max(self.lane_rows, 1), pos % max(self.lane_rows, 1)
        b = within // self.chunk
        used = (lane < self.lanes) & (b < self.steps)
        out[self._row[pos[used]]] = b[used]
        return out

    def batches(self, start: int = 0) -> Iterator[list[PlanSegment]]:
        """Global batches ``start, start + 1, ...`` of the epoch."""
        for b in range(start, self.steps):
            yield self.batch(b)

    __iter__ = batches


def epoch_order(shards: Sequence[ShardRef], *, seed: int, epoch: int, batch_size: int, lanes: int, interleave: int,
                spec: ViewSpec, view_seed: int, view_epoch: int) -> EpochOrder:
    """The trainer's order of epoch ``epoch`` for views of ``spec`` at view epoch ``view_epoch`` (seeded
    by ``view_seed``): their mixing pairs kept together and their repeats (what the trainer and, for
    ``mix_mode: batch``, precompute build)."""
    pairs = None
    if spec.pairs:
        def pairs(ref: ShardRef) -> np.ndarray:
            return mix_pairs(view_seed, view_epoch, ref.name, ref.rows)
    return EpochOrder(shards, seed=seed, epoch=epoch, batch_size=batch_size, lanes=lanes, interleave=interleave,
                      pairs=pairs, repeats=spec.repeats)


def rank_slice(segments: Sequence[tuple[object, np.ndarray]], rank: int, world: int) -> list:
    """Rank ``rank``'s contiguous ``1/world`` of a global batch (whole lanes when ``world`` divides them)."""
    total = sum(len(rows) for _, rows in segments)
    if total % world:
        raise ValueError(f"global batch of {total} rows does not split over {world} ranks")
    per = total // world
    lo, hi = rank * per, (rank + 1) * per
    out, pos = [], 0
    for shard, rows in segments:
        a, b = max(lo, pos), min(hi, pos + len(rows))
        if a < b:
            out.append((shard, rows[a - pos:b - pos]))
        pos += len(rows)
    return out
