"""Checkpoint files without a trainer: the last/prev rotation and its sidecars, what each
check refuses and why, the fallback to prev.pt, the RNG round trip, a full disk mid-save."""
from __future__ import annotations

import errno
import hashlib
import os
import random
import warnings

import numpy as np
import pytest
import torch

from imagenet_repro.errors import StorageError
from imagenet_repro.train import checkpoint as ckpt
from imagenet_repro.train.checkpoint import (
    CheckpointError,
    gather_rng_states,
    kept_checkpoint,
    load_checkpoint,
    load_latest,
    read_checkpoint,
    save_checkpoint,
)


def model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def save(folder, step: int, seed: int = 0):
    model, opt = model_and_optimizer(seed)
    save_checkpoint(folder / "last.pt", model=model, optimizer=opt, step=step, epoch=step // 10,
                    batch_in_epoch=step % 10, rng_states=gather_rng_states(torch.device("cpu"), 1))
    return model


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_each_save_rotates_last_into_prev_with_its_sidecar(tmp_path):
    save(tmp_path, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]
    assert (tmp_path / "last.pt.sha256").read_text() == sha(tmp_path / "last.pt") + "\n"
    first = sha(tmp_path / "last.pt")
    save(tmp_path, 20, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256", "prev.pt", "prev.pt.sha256"]
    assert sha(tmp_path / "prev.pt") == first and (tmp_path / "prev.pt.sha256").read_text().strip() == first
    assert (tmp_path / "last.pt.sha256").read_text().strip() == sha(tmp_path / "last.pt")
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 20 and read_checkpoint(tmp_path / "prev.pt")["step"] == 10
    assert kept_checkpoint(tmp_path) == (tmp_path / "last.pt", 20)
    save(tmp_path, 30)  # the oldest goes
    assert [read_checkpoint(tmp_path / n)["step"] for n in ("last.pt", "prev.pt")] == [30, 20]


def test_a_last_without_sidecar_becomes_a_prev_without_a_stale_sidecar(tmp_path):
    save(tmp_path, 10)
    save(tmp_path, 20)
    (tmp_path / "last.pt.sha256").unlink()  # e.g. a crash between the rename and the sidecar
    save(tmp_path, 30)
    assert not (tmp_path / "prev.pt.sha256").exists()  # step 10's sidecar must not vouch for step 20
    assert read_checkpoint(tmp_path / "prev.pt")["step"] == 20


def test_what_each_check_refuses(tmp_path):
    with pytest.raises(CheckpointError, match="^missing$"):
        read_checkpoint(tmp_path / "last.pt")
    save(tmp_path, 10)
    last, side = tmp_path / "last.pt", tmp_path / "last.pt.sha256"
    good = last.read_bytes()

    flip_a_byte(last)
    with pytest.raises(CheckpointError, match=r"^checksum mismatch with last\.pt\.sha256 \(truncated or corrupted"):
        read_checkpoint(last)

    side.unlink()  # no sidecar: the structure is checked only
    last.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"^unreadable: truncated or corrupted \(\w+Error: .{1,90}\)$"):
        read_checkpoint(last)  # torch's own reason, cut at 100 characters
    last.write_bytes(b"GARBAGE!" + good)
    with pytest.raises(CheckpointError, match=r"^not a PyTorch checkpoint \(starts with b'GARB'\)$"):
        read_checkpoint(last)
    torch.save({"model": {}, "step": 3}, last)
    with pytest.raises(CheckpointError, match=r"^not a checkpoint of this suite \(keys \['model', 'step'\]\)$"):
        read_checkpoint(last)
    torch.save([1, 2], last)
    with pytest.raises(CheckpointError, match=r"^not a checkpoint of this suite \(keys list\)$"):
        read_checkpoint(last)
    last.write_bytes(good)
    side.write_text("\n")  # an empty sidecar checks nothing
    assert read_checkpoint(last)["step"] == 10
    side.write_text(hashlib.sha256(good).hexdigest() + "\n")
    assert read_checkpoint(last)["step"] == 10


def test_a_checkpoint_of_another_model_does_not_fit(tmp_path):
    save(tmp_path, 10)
    model = torch.nn.Linear(5, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match=r"^does not fit this run's model/optimizer \(RuntimeError: "):
        load_checkpoint(tmp_path / "last.pt", model=model, optimizer=opt)


def test_load_latest_falls_back_to_prev_and_says_why(tmp_path):
    model, opt = model_and_optimizer()
    assert load_latest(tmp_path, model=model, optimizer=opt) is None  # no checkpoint at all: a fresh run
    assert kept_checkpoint(tmp_path) is None
    save(tmp_path, 10, seed=1)
    expected = {k: v.clone() for k, v in model_and_optimizer(seed=1)[0].state_dict().items()}
    save(tmp_path, 20, seed=2)
    flip_a_byte(tmp_path / "last.pt")
    with pytest.warns(RuntimeWarning) as caught:
        pos = load_latest(tmp_path, model=model, optimizer=opt)
    assert pos == {"step": 10, "epoch": 1, "batch_in_epoch": 0, "path": tmp_path / "prev.pt",
                   "skipped": [pos["skipped"][0]]}
    assert pos["skipped"][0].startswith("last.pt: checksum mismatch with last.pt.sha256")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"{tmp_path}: last.pt: checksum mismatch") and message.endswith(
        "; resuming from prev.pt (step 10)")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert kept_checkpoint(tmp_path) == (tmp_path / "prev.pt", 10)

    flip_a_byte(tmp_path / "prev.pt")
    with pytest.raises(CheckpointError) as err:
        load_latest(tmp_path, model=model, optimizer=opt)
    text = str(err.value)
    assert text.startswith(f"no usable checkpoint in {tmp_path} (last.pt: checksum mismatch")
    assert "; prev.pt: checksum mismatch with prev.pt.sha256" in text
    assert text.endswith(f"): the run cannot resume; delete {tmp_path.parent} to start it over")
    assert kept_checkpoint(tmp_path) is None


def test_a_good_last_loads_without_a_warning(tmp_path):
    save(tmp_path, 10)
    save(tmp_path, 20)
    model, opt = model_and_optimizer(seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pos = load_latest(tmp_path, model=model, optimizer=opt)
    assert pos == {"step": 20, "epoch": 2, "batch_in_epoch": 0, "path": tmp_path / "last.pt", "skipped": []}


def test_rng_states_with_a_cached_gaussian_come_back(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn(1), random.gauss(0, 1)  # both keep a second gaussian for the next call
    save(tmp_path, 10)
    expected = (torch.rand(3), np.random.randn(3), random.gauss(0, 1), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    np.random.randn(2), random.gauss(0, 1), random.gauss(0, 1)
    model, opt = model_and_optimizer()
    load_checkpoint(tmp_path / "last.pt", model=model, optimizer=opt)
    got = (torch.rand(3), np.random.randn(3), random.gauss(0, 1), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


class _FullDisk:
    """A file that takes ``room`` bytes, then fails like a full disk (``flush_errno``: its flush fails)."""

    def __init__(self, fh, room: int, flush_errno: int | None = None) -> None:
        self.fh, self.room, self.flush_errno = fh, room, flush_errno

    def write(self, data) -> int:
        if self.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        if self.flush_errno is not None:
            raise OSError(self.flush_errno, os.strerror(self.flush_errno))
        self.fh.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


@pytest.mark.parametrize("room,flush_errno,expected", [
    (0, None, errno.ENOSPC), (2000, None, errno.ENOSPC),  # the write fails at once / mid-file
    (10**9, errno.EIO, errno.EIO),                         # every write lands, the flush fails
    (2000, errno.EIO, errno.ENOSPC),                       # both: the first error is the one reported
])
def test_a_full_disk_mid_save_is_the_disks_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, room,
                                                                               flush_errno, expected):
    save(tmp_path, 10)
    before = (tmp_path / "last.pt").read_bytes()
    monkeypatch.setattr(ckpt, "open", lambda path, mode="r": _FullDisk(open(path, mode), room, flush_errno),
                        raising=False)
    with pytest.raises(StorageError) as err:
        save(tmp_path, 20)
    assert err.value.errno == expected and str(tmp_path / "last.pt") in str(err.value)
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == before and read_checkpoint(tmp_path / "last.pt")["step"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]  # no temporary file left


# ---------------------------------------------------------------------------- RNG states per rank
def draws() -> tuple:
    return float(torch.rand(1)), float(np.random.rand()), random.random()


def seeded_state(seed: int) -> tuple[dict, tuple]:
    """The RNG states after seeding with ``seed`` (as one rank's), and the draws that follow them."""
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
    state = ckpt.rank_rng_state(torch.device("cpu"))
    return state, draws()


def test_each_rank_restores_its_own_states_and_a_rank_the_checkpoint_lacks_keeps_its_own(tmp_path):
    (state0, after0), (state1, after1) = seeded_state(10), seeded_state(11)
    model, opt = model_and_optimizer()
    save_checkpoint(tmp_path / "last.pt", model=model, optimizer=opt, step=3, epoch=0, batch_in_epoch=3,
                    rng_states=[state0, state1])
    assert len(read_checkpoint(tmp_path / "last.pt")["rng"]) == 2
    for rank, expected in ((1, after1), (0, after0)):
        seeded_state(99)
        load_latest(tmp_path, model=model, optimizer=opt, rank=rank)
        assert draws() == expected, rank
    _, fresh = seeded_state(7)  # a third rank (a resume on more ranks, accepted): its states as they were
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    load_latest(tmp_path, model=model, optimizer=opt, rank=2)
    assert draws() == fresh


def test_a_checkpoint_of_the_format_before_one_state_loads_on_every_rank(tmp_path):
    state, after = seeded_state(12)
    model, opt = model_and_optimizer()
    old = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 4, "epoch": 0, "batch_in_epoch": 4,
           "rng": {**state, "cuda": []}}  # as written before: rank 0's states, every visible device's CUDA state
    torch.save(old, tmp_path / "last.pt")
    for rank in (0, 1):
        seeded_state(99)
        assert load_latest(tmp_path, model=model, optimizer=opt, rank=rank)["step"] == 4
        assert draws() == after, rank


def test_a_rank_keeps_and_gets_back_its_own_cuda_device_s_state_whatever_the_device_count(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": calls.append(("get", str(device))) or
                        torch.tensor([int(torch.device(device).index)], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(
        ("set", int(state[0]), str(device))))
    for name in ("get_rng_state_all", "set_rng_state_all"):  # every visible device's: never
        monkeypatch.setattr(torch.cuda, name, lambda *a, name=name: pytest.fail(f"torch.cuda.{name} called"))
    state = ckpt.rank_rng_state(torch.device("cuda", 1))
    assert calls == [("get", "cuda:1")] and int(state["cuda"][0]) == 1
    calls.clear()
    ckpt.restore_rng_state([ckpt.rank_rng_state(torch.device("cpu")), state], 1, torch.device("cuda", 0))
    assert calls == [("set", 1, "cuda:0")]  # rank 1's state, on the device rank 1 has now
    old = {**state, "cuda": [torch.tensor([i], dtype=torch.uint8) for i in range(4)]}  # the format before: 4 devices
    for device, expected in (("cuda:2", [("set", 2, "cuda:2")]), ("cuda:5", []), ("cpu", [])):
        calls.clear()
        ckpt.restore_rng_state(old, 0, torch.device(device))  # cuda:5: more devices than the writer saw
        assert calls == expected, device
    calls.clear()
    ckpt.restore_rng_state([state], 0, torch.device("cpu"))  # a GPU run's states resumed on CPU
    assert calls == []
