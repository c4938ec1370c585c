"""The training batch stream (``ppihd.engine.trainer.SeriesBatches``): the default stream is today's
``DistributedBatchSampler`` order, optional length-bucketed sampling (``DataLoader.Train.length_buckets``) and
page-locked batches for GPU runs (``DataLoader.Train.pin_memory``, simulated here on CPU)."""
import numpy as np
import paddle
import pandas as pd
import pytest

from ppihd import LABELS
from ppihd.engine.trainer import SeriesBatches, length_bucket_batches
from test_trainer import ToyDataset, build, collate, make_cfg


def epoch_seed(seed, epoch):
    """The documented per-epoch sampler seed: SeedSequence([Global.seed, epoch]) -> 31 bits (docs/training.md)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]) % (2 ** 31)


def uniform_reference(n, batch_series, seed, rank, world, epochs):
    """Micro-batches of ``epochs`` epochs straight from Paddle's DistributedBatchSampler (the unchanged order)."""
    class Sized:
        def __len__(self):
            return n

    s = paddle.io.DistributedBatchSampler(Sized(), batch_size=batch_series, num_replicas=world, rank=rank,
                                          shuffle=True, drop_last=False)
    out = []
    for e in range(epochs):
        s.set_epoch(epoch_seed(seed, e))
        out += [list(b) for b in s]
    return out


class Lengths:
    """A dataset of ``len(lengths)`` series that knows its slice counts; items are their own index."""

    def __init__(self, lengths):
        self.lengths = np.asarray(lengths)

    def __len__(self):
        return len(self.lengths)

    def series_lengths(self):
        return self.lengths

    def get(self, i, rng):
        return i


# ---------------------------------------------------------------------------------------- the default stream
@pytest.mark.parametrize("workers", [0, 2])
def test_default_stream_is_the_uniform_sampler_order(tmp_path, workers):
    """Trainer defaults (length_buckets off, pin_memory on but CPU): micro-batch m is the collate of
    ``dataset.get(i, default_rng([seed, m, rank, slot]))`` over DistributedBatchSampler's batch -- numpy arrays,
    bit-identical, over two epochs, with or without prefetch threads."""
    cfg = make_cfg(str(tmp_path), **{"DataLoader.Train.num_workers": workers})
    assert cfg["DataLoader"]["Train"]["length_buckets"] is False and cfg["DataLoader"]["Train"]["pin_memory"] is True
    train = ToyDataset(7, 0)
    tr = build(cfg, train, None)
    assert tr.batches.pin_place is None and tr.batches.lengths is None
    seed, bs = int(cfg["Global"]["seed"]), int(cfg["DataLoader"]["Train"]["batch_series"])
    want = uniform_reference(7, bs, seed, 0, 1, 2)
    stream = tr.batches.iterate(0)
    for m, idx in enumerate(want):
        got = next(stream)
        ref = collate([train.get(i, np.random.default_rng([seed, m, 0, slot])) for slot, i in enumerate(idx)])
        assert got["series_id"] == ref["series_id"]
        for k in ("images", "labels", "label_mask", "mask"):
            assert isinstance(got[k], np.ndarray)
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"micro-batch {m} {k}")


def test_buckets_off_keeps_the_sampler_order_on_every_rank():
    for rank in (0, 1):
        sb = SeriesBatches(Lengths(np.arange(11) + 24), batch_series=2, seed=3, rank=rank, world_size=2,
                           length_buckets=False)
        want = uniform_reference(11, 2, 3, rank, 2, 3)
        assert [sb.indices(m) for m in range(len(want))] == want


# ---------------------------------------------------------------------------------------- length buckets
def _epoch(lengths, bs, world, accum, seed=7, epoch=0):
    """Every rank's SeriesBatches micro-batches of one epoch: list over ranks of lists of micro-batches."""
    sbs = [SeriesBatches(Lengths(lengths), bs, seed, r, world, grad_accum=accum, length_buckets=True)
           for r in range(world)]
    n = len(sbs[0])
    assert all(len(s) == n for s in sbs) and n % accum == 0   # same step count on every rank, epochs end on a step
    return [[s.indices(epoch * n + m) for m in range(n)] for s in sbs]


@pytest.mark.parametrize("n,bs,world,accum,pad", [
    (37, 1, 2, 2, 3),    # groups of 4: 9 full + 1 series left -> repeated to the step's 4 micro-batches
    (37, 2, 2, 2, 0),    # groups of 8: 4 full + 5 series -> micro-batches of 2, 1, 1, 1
    (12, 1, 4, 1, 0),
    (5, 1, 2, 4, 3),     # one step of 8 micro-batches from 5 series
])
def test_buckets_cover_every_series_once_per_epoch(n, bs, world, accum, pad):
    lengths = np.random.default_rng(n).integers(24, 61, n)
    ranks = _epoch(lengths, bs, world, accum)
    flat = [i for r in ranks for mb in r for i in mb]
    counts = np.bincount(flat, minlength=n)
    assert (counts >= 1).all() and len(flat) - n == pad   # each once; repeats only to fill the last step
    assert all(1 <= len(mb) <= bs for r in ranks for mb in r)


def test_buckets_deterministic_and_thread_count_free():
    lengths = np.random.default_rng(0).integers(24, 61, 30)
    a, b = _epoch(lengths, 1, 2, 2, seed=5), _epoch(lengths, 1, 2, 2, seed=5)
    assert a == b
    assert _epoch(lengths, 1, 2, 2, seed=5, epoch=1) != a          # a new order each epoch
    assert _epoch(lengths, 1, 2, 2, seed=6) != a                   # and each seed
    seq = {}
    for workers in (0, 1, 3):
        sb = SeriesBatches(Lengths(lengths), 1, 5, 1, 2, num_workers=workers, collate_fn=list, grad_accum=2,
                           length_buckets=True)
        it = sb.iterate(0)
        seq[workers] = [next(it) for _ in range(3 * len(sb))]
    assert seq[0] == seq[1] == seq[3]


def _idle_fraction(lengths, ranks, accum):
    """Share of the ranks' slice-slots spent waiting in an optimizer step: a rank's work is the sum over its micro-
    batches of (series in it) x (its longest series, the padded length); the step lasts the slowest rank's work."""
    steps = len(ranks[0]) // accum
    busy = wait = 0
    for s in range(steps):
        work = [sum(len(mb) * max(lengths[i] for i in mb) for mb in r[s * accum:(s + 1) * accum]) for r in ranks]
        busy += sum(work)
        wait += len(work) * max(work) - sum(work)
    return wait / (busy + wait)


@pytest.mark.parametrize("world,accum,bs", [(4, 1, 1), (2, 2, 1), (8, 1, 2)])
def test_buckets_wait_less_than_uniform_sampling(world, accum, bs):
    """Series of 24-60 slices: the ranks of a step wait for the longest. Measured over 3 epochs of 200 series,
    the waiting share with buckets is under a quarter of the uniform sampler's."""
    lengths = np.random.default_rng(1).integers(24, 61, 200)
    uni, buck = [], []
    per_epoch = -(-(-(-200 // world)) // bs)     # DistributedBatchSampler: ceil(ceil(200 / world) / bs) per rank
    for e in range(3):
        uni.append(_idle_fraction(lengths, [uniform_reference(200, bs, 7, r, world, e + 1)[-per_epoch:]
                                            for r in range(world)], accum))
        buck.append(_idle_fraction(lengths, _epoch(lengths, bs, world, accum, epoch=e), accum))
    assert np.mean(uni) > 0.05                    # uniform sampling does idle (24-60 slices)
    print(f"world {world} accum {accum} batch_series {bs}: waiting share uniform {np.mean(uni):.3f}, "
          f"buckets {np.mean(buck):.3f}")
    assert np.mean(buck) < 0.25 * np.mean(uni), (uni, buck)


def test_bucket_groups_are_length_neighbours():
    """Hand-worked: 8 series, lengths 31..24 reversed, 2 ranks x 2 micro-batches x 1: the steps hold the lengths
    {24..27} and {28..31}; unshuffled, the first step is the short one, micro-batch j to rank j % 2."""
    lengths = np.array([31, 30, 29, 28, 27, 26, 25, 24])
    out = length_bucket_batches(lengths, 1, 2, 2, seed=0, shuffle=False)
    assert out == [[[7], [5], [3], [1]], [[6], [4], [2], [0]]]
    steps = [sorted(lengths[[mb[0] for r in out for mb in r[s * 2:(s + 1) * 2]]]) for s in (0, 1)]
    assert steps == [[24, 25, 26, 27], [28, 29, 30, 31]]
    shuffled = length_bucket_batches(lengths, 1, 2, 2, seed=0)
    got = sorted(sorted(lengths[[mb[0] for r in shuffled for mb in r[s * 2:(s + 1) * 2]]].tolist()) for s in (0, 1))
    assert got == steps


def test_buckets_need_series_lengths():
    with pytest.raises(ValueError) as e:
        SeriesBatches(ToyDataset(3, 0), 1, 0, length_buckets=True)
    assert str(e.value) == ("DataLoader.Train.length_buckets needs the slice count of every series, and the training "
                            "set (ToyDataset) has no series_lengths(); use a SeriesDataset / MixedDataset or set "
                            "DataLoader.Train.length_buckets=false")


def test_trainer_passes_the_bucket_option(tmp_path):
    class ToyLengths(ToyDataset):
        def series_lengths(self):
            return np.array([len(img) for img, _ in self.items])

    train = ToyLengths(9, 0)
    cfg = make_cfg(str(tmp_path), **{"DataLoader.Train.length_buckets": True, "Global.grad_accum": 2})
    tr = build(cfg, train, None)
    np.testing.assert_array_equal(tr.batches.lengths, [len(img) for img, _ in train.items])
    assert len(tr.batches) % 2 == 0


def test_series_lengths_from_the_index(tmp_path):
    """SeriesDataset.series_lengths: the index's slice count per series (sorted by series id), capped at
    Data.max_slices; no cache file is read."""
    from ppihd.utils.config import load_config

    rows = [{"series_id": sid, "slice_idx": k, "status": "ok", "split": "train", "sop_uid": f"{sid}.{k}",
             "path": "", **{c: 0.0 for c in LABELS}} for sid, n in (("b", 5), ("a", 3), ("c", 7)) for k in range(n)]
    rows.append({**rows[0], "slice_idx": 9, "status": "error"})      # not an ok slice: not counted
    idx = pd.DataFrame(rows)
    cfg = load_config(None, [f"Data.cache_dir={tmp_path}"])
    from ppihd.data.dataset import SeriesDataset

    np.testing.assert_array_equal(SeriesDataset(cfg, "train", index=idx).series_lengths(), [3, 5, 7])
    cfg["Data"]["max_slices"] = 4
    np.testing.assert_array_equal(SeriesDataset(cfg, "train", index=idx).series_lengths(), [3, 4, 4])


# ---------------------------------------------------------------------------------------- pinned memory
def _fake_gpu(monkeypatch):
    """A GPU run as far as the pinning decision sees it: a CUDA build, get_device says gpu:0, CUDAPinnedPlace
    builds a CPU place (a CPU-only paddle cannot allocate page-locked memory) and set_device (the prefetch
    threads') does nothing."""
    made = []
    monkeypatch.setattr(paddle.device, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device, "set_device", lambda d: None)
    monkeypatch.setattr(paddle.device, "get_device", lambda: "gpu:0")
    monkeypatch.setattr(paddle, "CUDAPinnedPlace", lambda: (made.append(1), paddle.CPUPlace())[1])
    return made


@pytest.mark.parametrize("workers", [0, 2])
def test_pinned_branch_on_a_gpu_place_gives_the_same_batches_and_losses(tmp_path, monkeypatch, workers):
    cfg = make_cfg(str(tmp_path), **{"DataLoader.Train.num_workers": workers})
    train = ToyDataset(6, 0)
    plain = build(cfg, train, None)
    made = _fake_gpu(monkeypatch)
    pinned = build(cfg, train, None)
    assert made and isinstance(pinned.batches.pin_place, type(paddle.CPUPlace()))
    a, b = plain.batches.iterate(0), pinned.batches.iterate(0)
    for m in range(4):
        x, y = next(a), next(b)
        for k in ("images", "labels", "label_mask"):   # the device-bound arrays: tensors made in the prefetch thread
            assert isinstance(y[k], paddle.Tensor), k
            np.testing.assert_array_equal(y[k].numpy(), x[k])
        np.testing.assert_array_equal(y["mask"], x["mask"])      # read on the host: stays numpy
        paddle.seed(m)                                       # the toy net has dropout: same masks
        lx = plain._forward_loss(x)
        paddle.seed(m)
        ly = pinned._forward_loss(y)
        assert set(lx) == set(ly)
        for k in lx:
            np.testing.assert_array_equal(ly[k].numpy(), lx[k].numpy(), err_msg=k)


def test_prefetch_threads_run_on_the_ranks_gpu(tmp_path, monkeypatch):
    """A rank computing on gpu:1 (simulated): every prefetch thread first makes gpu:1 its device (a new thread's
    CUDA device is 0), before it pins a batch; on CPU the threads set no device."""
    import threading

    cfg = make_cfg(str(tmp_path), **{"DataLoader.Train.num_workers": 2})
    cpu = build(cfg, ToyDataset(6, 0), None)
    _fake_gpu(monkeypatch)
    monkeypatch.setattr(paddle.device, "get_device", lambda: "gpu:1")
    calls, main = [], threading.get_ident()
    monkeypatch.setattr(paddle.device, "set_device", lambda d: calls.append((d, threading.get_ident())))
    tr = build(cfg, ToyDataset(6, 0), None)
    it = tr.batches.iterate(0)
    for _ in range(4):
        assert isinstance(next(it)["images"], paddle.Tensor)
    it.close()
    assert calls and {d for d, _ in calls} == {"gpu:1"}
    assert main not in {t for _, t in calls} and len({t for _, t in calls}) == len(calls) <= 2   # once per thread
    monkeypatch.undo()
    calls.clear()
    it = cpu.batches.iterate(0)
    next(it)
    it.close()
    assert cpu.batches.thread_device is None and not calls


def test_pin_memory_off_or_cpu_leaves_numpy(tmp_path, monkeypatch):
    cfg = make_cfg(str(tmp_path))
    assert build(cfg, ToyDataset(3, 0), None).batches.pin_place is None          # real CPU
    _fake_gpu(monkeypatch)
    cfg = make_cfg(str(tmp_path), **{"DataLoader.Train.pin_memory": False})
    tr = build(cfg, ToyDataset(3, 0), None)
    assert tr.batches.pin_place is None
    assert isinstance(next(tr.batches.iterate(0))["images"], np.ndarray)


def test_pin_batch_uint8_stays_uint8():
    from ppihd.data.dataset import images_to_tensor, pin_batch

    u8 = np.arange(2 * 3 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 3, 2, 2)
    b = pin_batch({"images": u8, "labels": np.ones((2, 3, 6), np.float64), "mask": np.ones((2, 3), bool)},
                  paddle.CPUPlace())
    assert str(b["images"].dtype).endswith("uint8") and str(b["labels"].dtype).endswith("float32")
    assert isinstance(b["mask"], np.ndarray)
    np.testing.assert_array_equal(images_to_tensor(b["images"]).numpy(), images_to_tensor(u8).numpy())
