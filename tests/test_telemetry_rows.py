"""Telemetry's rows by column name: epoch, lr, loss, images/s, a missing gradient, a zero
weight, the sink's new rows per flush, restore on resume, and the TensorBoard scalars read back."""
from __future__ import annotations

import math
import threading
import weakref
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from imagenet_repro.errors import StorageError
from imagenet_repro.train import telemetry as tel_module
from imagenet_repro.train.telemetry import EvalRow, Telemetry, TensorBoardLog


def make(flush_every=4, layer_every=2, predicted=None):
    torch.manual_seed(0)
    a, b, z = (torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5)),
               torch.nn.Parameter(torch.zeros(2)))
    tel = Telemetry([("a", a), ("b", b), ("z", z)], normalized={"a", "z"},
                    predicted=predicted or {"a": 0.25, "z": 0.75}.__getitem__, layer_every=layer_every,
                    flush_every=flush_every, device=torch.device("cpu"))
    return tel, a, b, z


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rows_carry_epoch_lr_loss_and_the_images_per_second_of_their_flush(monkeypatch):
    clock = Clock(100.0)
    monkeypatch.setattr(tel_module.time, "perf_counter", clock)
    tel, a, b, z = make(flush_every=10)
    for step in range(3):
        a.grad = torch.ones_like(a)  # b and z have no gradient: they count as zero
        tel.record(step, epoch=step // 2, lr=0.1 * (step + 1), loss=torch.tensor(2.0 + step), batch_images=8)
    clock.now = 102.0
    assert tel.flush()
    for step in range(3, 5):
        a.grad = torch.ones_like(a)
        tel.record(step, epoch=2, lr=0.5, loss=torch.tensor(1.0), batch_images=10)
    clock.now = 106.0
    assert tel.flush()
    steps, layers = tel.frames()
    assert steps.epoch.tolist() == [0, 0, 1, 2, 2] and steps.lr.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.5, 0.5])
    assert steps.loss.tolist() == [2.0, 3.0, 4.0, 1.0, 1.0]
    assert steps.images_per_s.tolist() == pytest.approx([12.0] * 3 + [5.0] * 2)  # 24 images / 2 s, 20 / 4 s
    assert steps.grad_norm.tolist() == pytest.approx([math.sqrt(12)] * 5)  # only a's 12 ones
    assert steps.grad_norm_normalized.tolist() == pytest.approx([math.sqrt(12)] * 5)
    assert steps.step.dtype == "int64" and steps.epoch.dtype == "int64" and layers.step.dtype == "int64"
    assert tel.last["step"] == 4 and tel.last["lr"] == 0.5 and tel.last["images_per_s"] == pytest.approx(5.0)
    a.grad = torch.ones_like(a)
    tel.record(5, epoch=2, lr=0.5, loss=torch.tensor(1.0), batch_images=4)
    clock.now = 106.5
    assert tel.flush() and tel.last["images_per_s"] == pytest.approx(8.0)  # a flush under a second: 4 images / 0.5 s


def test_a_weight_with_a_norm_below_one_has_its_ratio():
    tel, a, b, z = make(flush_every=1, layer_every=1)
    with torch.no_grad():
        a.mul_(0.1 / a.norm())
    a.grad, z.grad = torch.ones_like(a), torch.ones_like(z)
    tel.record(0, 0, 0.1, torch.tensor(1.0), batch_images=1)
    assert tel.flush()
    la = tel.frames()[1].set_index("layer").loc["a"]
    assert la.weight_norm == pytest.approx(0.1) and la.ratio == pytest.approx(math.sqrt(12) / 0.1)


def test_eval_rows_come_back_from_their_table_with_their_types():
    rows = [EvalRow(epoch=1, step=10, top1=0.5, top5=0.75, loss=1.25, images=100),
            EvalRow(epoch=2, step=20, top1=0.625, top5=0.875, loss=1.0, images=100)]
    frame = pd.DataFrame(rows, columns=EvalRow._fields)
    back = EvalRow.from_frame(frame)
    assert back == rows
    assert [tuple(type(v) for v in r) for r in back] == [(int, int, float, float, float, int)] * 2


def test_layer_rows_every_layer_every_steps_with_the_predicted_ratio_and_nan_for_a_zero_weight():
    tel, a, b, z = make(flush_every=3, layer_every=3)
    for step in range(7):
        a.grad, b.grad, z.grad = torch.full_like(a, 2.0), torch.ones_like(b), torch.full_like(z, 3.0)
        tel.record(step, 0, 0.1, torch.tensor(1.0), batch_images=1)
    assert tel.flush()
    _, layers = tel.frames()
    assert layers.step.tolist() == [0, 0, 3, 3, 6, 6] and layers.layer.tolist() == ["a", "z"] * 3
    la, lz = layers[layers.layer == "a"].iloc[0], layers[layers.layer == "z"].iloc[0]
    assert la.grad_norm == pytest.approx(2 * math.sqrt(12)) and la.weight_norm == pytest.approx(a.norm().item())
    assert la.ratio == pytest.approx(la.grad_norm / la.weight_norm) and la.predicted_ratio == 0.25
    assert lz.grad_norm == pytest.approx(3 * math.sqrt(2)) and lz.weight_norm == 0.0
    assert math.isnan(lz.ratio) and lz.predicted_ratio == 0.75


def test_the_first_non_finite_loss_ends_the_rows_and_each_flush_tells_the_sink_only_its_new_rows():
    seen = []

    class Sink:
        def steps(self, step_rows, layer_rows):
            seen.append(([r[0] for r in step_rows], [r[0] for r in layer_rows]))

    tel, a, b, z = make(flush_every=3, layer_every=2)
    tel.sink = Sink()
    assert tel.flush() and seen == []  # nothing pending: nothing to tell
    assert tel.last == {}
    for step, loss in enumerate([1.0, 1.0, 1.0, 1.0, float("inf"), 1.0]):
        a.grad = torch.ones_like(a)
        tel.record(step, 0, 0.1, torch.tensor(loss), batch_images=1)
    assert not tel.flush() and tel.diverged and tel.diverged_at == 4
    assert seen == [([0, 1, 2], [0, 0, 2, 2]), ([3, 4], [4, 4])]  # step 5 (after the inf) dropped
    assert tel.frames()[0].step.tolist() == [0, 1, 2, 3, 4]


def test_restore_keeps_the_rows_before_the_resumed_step_as_ints():
    tel, a, b, z = make(flush_every=2, layer_every=2)
    for step in range(6):
        a.grad = torch.ones_like(a)
        tel.record(step, step // 3, 0.1, torch.tensor(1.0), batch_images=1)
    tel.flush()
    steps, layers = tel.frames()
    assert steps.step.tolist() == [0, 1, 2, 3, 4, 5] and layers.step.tolist() == [0, 0, 2, 2, 4, 4]  # past the cut
    fresh, *_ = make()
    fresh.restore(steps, layers, before_step=4)
    assert [r[0] for r in fresh.step_rows] == [0, 1, 2, 3] and [r[0] for r in fresh.layer_rows] == [0, 0, 2, 2]
    assert all(type(r[0]) is int and type(r[1]) is int for r in fresh.step_rows)
    assert all(type(r[0]) is int for r in fresh.layer_rows)
    back_steps, back_layers = fresh.frames()
    pd.testing.assert_frame_equal(back_steps, steps[steps.step < 4])
    pd.testing.assert_frame_equal(back_layers, layers[layers.step < 4].reset_index(drop=True))


def test_tensorboard_scalars_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tel, a, b, z = make(flush_every=2, layer_every=2, predicted={"a": 0.2, "z": 0.6}.__getitem__)
    log = TensorBoardLog(tmp_path / "tb")
    tel.sink = log
    for step in range(4):
        a.grad, b.grad = torch.full_like(a, step + 1.0), torch.ones_like(b)
        tel.record(step, 0, 0.1 * (4 - step), torch.tensor(3.0 - step), batch_images=1)
        tel.after_step()  # the trainer's order: record after backward, after_step after the step (it flushes)
    log.eval(EvalRow(epoch=1, step=4, top1=0.5, top5=0.75, loss=1.25, images=100))
    log.close()
    log.close()  # a second close is harmless
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()

    def scalars(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    steps, _ = tel.frames()
    assert scalars("train/loss") == [(s, pytest.approx(3.0 - s)) for s in range(4)]
    assert scalars("train/lr") == [(s, pytest.approx(0.1 * (4 - s))) for s in range(4)]
    assert [v for _, v in scalars("norms/grad")] == pytest.approx(steps.grad_norm.tolist())
    assert [v for _, v in scalars("norms/weight")] == pytest.approx(steps.weight_norm.tolist())
    assert [v for _, v in scalars("ratio/normalized")] == pytest.approx(
        (steps.grad_norm_normalized / steps.weight_norm_normalized).tolist())
    assert scalars("ratio/predicted") == [(0, pytest.approx(0.4)), (2, pytest.approx(0.4))]  # mean over a, z
    assert scalars("eval/top1") == [(4, 0.5)] and scalars("eval/top5") == [(4, 0.75)]
    assert scalars("eval/loss") == [(4, 1.25)]


def test_a_resumed_tensorboard_log_replaces_the_steps_it_recomputes(tmp_path):
    """The writer opens with purge_step = its first step: a resumed run's events from that step
    on replace the first attempt's instead of doubling them; its writer thread is registered."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def rows(steps, loss):
        return [[s, 0, 0.1, loss, 1.0, 1.0, 1.0, 1.0, 1.0] + [math.nan] * 4 for s in steps]

    assert len(rows([0], 1.0)[0]) == len(tel_module.STEP_COLUMNS)
    first = TensorBoardLog(tmp_path / "tb")
    first.steps(rows(range(4), 1.0), [])
    assert any(t.is_alive() for t in tel_module._TB_WORKERS)  # its thread: no traceback of its own on a full disk
    first.close()
    resumed = TensorBoardLog(tmp_path / "tb")
    resumed.steps(rows(range(2, 4), 2.0), [])
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(0, 1.0), (1, 1.0), (2, 2.0), (3, 2.0)]


def test_only_a_tensorboard_thread_s_os_error_is_kept_quiet(monkeypatch):
    seen = []
    monkeypatch.setattr(tel_module, "_previous_excepthook", seen.append)
    worker, other = threading.Thread(target=lambda: None), threading.Thread(target=lambda: None)
    monkeypatch.setattr(tel_module, "_TB_WORKERS", weakref.WeakSet([worker]))

    def args(thread, exc):
        return SimpleNamespace(thread=thread, exc_type=type(exc), exc_value=exc, exc_traceback=None)

    quiet, loud, other_error = args(worker, OSError(28, "full")), args(other, OSError(28, "full")), args(worker, KeyError(1))
    for a in (quiet, loud, other_error):
        tel_module._quiet_tb_workers(a)
    assert seen == [loud, other_error]  # the other thread and the other error reach the previous hook
    monkeypatch.setattr(threading, "excepthook", seen.append)
    tel_module._install_excepthook()
    tel_module._install_excepthook()  # a second install keeps the first one's previous hook: no loop
    assert threading.excepthook is tel_module._quiet_tb_workers and tel_module._previous_excepthook == seen.append


def test_a_tensorboard_folder_that_cannot_be_made_is_a_storage_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    log = TensorBoardLog(tmp_path / "file" / "tb")
    with pytest.raises(StorageError) as err:
        log.eval(EvalRow(epoch=1, step=4, top1=0.5, top5=0.75, loss=1.25, images=100))
    assert err.value.path == str(tmp_path / "file" / "tb")


def _per_step_rows(params, grads, normalized_idx):
    """What each step's row was before the buffer was reduced at flush: its own vectors' sums."""
    g = torch.stack(torch._foreach_norm(grads))
    x = torch.stack(torch._foreach_norm([p.detach() for p in params]))
    g_n, x_n = g.index_select(0, normalized_idx), x.index_select(0, normalized_idx)
    return torch.stack([g.square().sum().sqrt(), x.square().sum().sqrt(),
                        g_n.square().sum().sqrt(), x_n.square().sum().sqrt()]).tolist()


@pytest.mark.parametrize("n_tensors, threads", [(3, 1), (161, 1), (161, 2),
                                                (pytest.param(40_000, 2, marks=pytest.mark.long))])  # > ONE_CHUNK
def test_rows_reduced_at_flush_are_the_per_step_sums_bit_for_bit(n_tensors, threads):
    assert 161 < tel_module.ONE_CHUNK < 40_000
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(n_tensors)
        sizes = torch.randint(1, 5, (n_tensors,), generator=gen).tolist()
        params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 10.0 ** float(i % 7 - 3))
                  for i, s in enumerate(sizes)]
        names = [f"p{i}" for i in range(n_tensors)]
        normalized = {n for i, n in enumerate(names) if i % 3 != 1}
        layer_every = 2 if n_tensors < 1000 else 10  # fewer layer rows to build for 40,000 tensors
        tel = Telemetry(list(zip(names, params)), normalized, predicted=lambda n: 0.0, layer_every=layer_every,
                        flush_every=25, device=torch.device("cpu"))
        idx = torch.tensor([i for i, n in enumerate(names) if n in normalized])
        want = []
        for step in range(20):  # norms over six decades: a sum split differently shows in the last bit
            flat = torch.rand(sum(sizes), generator=gen) * 10.0 ** torch.randint(-4, 3, (sum(sizes),), generator=gen)
            for p, grad in zip(params, flat.split(sizes)):
                p.grad = grad
            want.append(_per_step_rows(params, [p.grad for p in params], idx))
            tel.record(step, 0, 0.1, torch.tensor(float(step)), 8)
            tel.after_step()
        tel.flush()
        steps, layers = tel.frames()
        got = steps[["grad_norm", "weight_norm", "grad_norm_normalized", "weight_norm_normalized"]].values.tolist()
        assert got == want  # exact: the committed results were made with the per-step sums
        assert steps.loss.tolist() == [float(step) for step in range(20)]
        logged = list(range(0, 20, layer_every))
        assert sorted(layers.step.unique()) == logged and len(layers) == len(logged) * len(normalized)
    finally:
        torch.set_num_threads(before)
