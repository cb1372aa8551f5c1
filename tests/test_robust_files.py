"""Files read defensively: data files, checkpoints, run tables and job claims that are
missing, truncated or of the wrong kind; runs that die without a word are reconciled.

The bad-input cases go through the in-process CLI: exit 2, one line naming the file and
what to do, and nothing written.  A run that cannot resume is marked ``failed`` with its
reason, and ``repro status`` shows it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_same_tables, train_killed_after_checkpoints

from imagenet_repro import rundir
from imagenet_repro.cli import main
from imagenet_repro.config import load_config
from imagenet_repro.sweep import claims
from imagenet_repro.sweep.status import RunRef, classify
from imagenet_repro.train.checkpoint import CheckpointError, gather_rng_states, load_latest, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments/demo.yaml")
E = "repro: error: "


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, fmnist_betons) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    good = (fmnist_betons / "val.beton").read_bytes()
    files = {"text": folder / "notes.beton", "truncated": folder / "truncated.beton", "empty": folder / "empty.beton",
             "unfinalised": folder / "unfinalised.beton", "dir": folder / "adir.beton"}
    files["text"].write_text("these are my notes, not a dataset\n" * 100)
    files["truncated"].write_bytes(good[: len(good) // 2])
    files["empty"].write_bytes(b"")
    header = bytearray(good[:4096])
    files["unfinalised"].write_bytes(bytes(header) + b"\0" * (len(good) - 4096))
    files["dir"].mkdir()
    # an interrupted write: the header's allocation-table pointer still 0
    from ffcv.types import HeaderType

    h = np.frombuffer(bytes(header[:HeaderType.itemsize]), dtype=HeaderType).copy()
    h["alloc_table_ptr"] = 0
    raw = bytearray(files["unfinalised"].read_bytes())
    raw[:HeaderType.itemsize] = h.tobytes()
    files["unfinalised"].write_bytes(bytes(raw))
    return files


# (group, which file goes where, extra overrides, message with {path}/{train}/{val})
FILE_CASES = [
    ("beton", ("val_path", "text"), [],
     "{path}: not a complete FFCV .beton file (format version {version}, expected 2)"),
    ("beton", ("train_path", "truncated"), [],
     "{path}: not a complete FFCV .beton file (allocation table at byte {alloc}, file has {size} bytes: truncated)"),
    ("beton", ("val_path", "empty"), [], "{path}: not a complete FFCV .beton file (0 bytes, shorter than the header)"),
    ("beton", ("val_path", "unfinalised"), [],
     "{path}: not a complete FFCV .beton file (header never finalised: the write was interrupted)"),
    ("beton", ("train_path", "dir"), [], "data.train_path is a folder, not a file: {path}"),
    # data.dataset=imagefolder: any class count (fashion_mnist's entry fixes 10), so the labels' check speaks
    ("beton", (None, None), ["data.dataset=imagefolder", "data.num_classes=5"],
     "data.train_path: {train} has labels 0..9, outside [0, data.num_classes=5): "
     "set data.num_classes to 10 or use the matching file"),
    ("beton", ("train_path", "val"), ["data.dataset=imagefolder", "data.num_classes=8"],
     "data.train_path: {val} has labels 0..9, outside [0, data.num_classes=8): "
     "set data.num_classes to 10 or use the matching file"),
]


def _expected(message: str, path: Path | None, fmnist: Path) -> str:
    values = {"train": fmnist / "train.beton", "val": fmnist / "val.beton", "path": path}
    if path is not None and path.is_file():
        from ffcv.types import HeaderType

        raw = path.read_bytes()
        if len(raw) >= HeaderType.itemsize:
            h = np.frombuffer(raw[:HeaderType.itemsize], dtype=HeaderType)[0]
            values.update(version=int(h["version"]), alloc=int(h["alloc_table_ptr"]), size=len(raw))
    return message.format(**values)


def base_overrides(fmnist: Path) -> list[str]:
    return [f"data.train_path={fmnist / 'train.beton'}", f"data.val_path={fmnist / 'val.beton'}",
            "data.train_subset=256", "data.val_subset=100", "data.batch_size=64", "train.epochs=1",
            "train.threads=1", "train.progress=false", "data.num_workers=1"]


@pytest.mark.parametrize("group,where,extra,message", FILE_CASES,
                         ids=[f"{c[1][0]}={c[1][1]}:{' '.join(c[2])}" for c in FILE_CASES])
def test_bad_data_file_is_one_line_exit_2_nothing_written(tmp_path, capsys, fmnist_betons, bad_files, group, where,
                                                         extra, message):
    key, which = where
    path = None
    overrides = base_overrides(fmnist_betons) + extra
    if key is not None:
        path = fmnist_betons / "val.beton" if which == "val" else bad_files[which]
        overrides.append(f"data.{key}={path}")
    out = tmp_path / "run"
    code = main(["train", DEMO, *overrides, "--out", str(out)])
    err = capsys.readouterr().err
    assert (code, err) == (2, E + _expected(message, path, fmnist_betons) + "\n")
    assert not out.exists()


def test_unavailable_backend_is_an_error_not_a_switch(tmp_path, capsys, fmnist_betons, monkeypatch):
    import imagenet_repro.data.loaders as loaders

    monkeypatch.setattr(loaders, "ffcv_import_error", lambda: "ImportError: libturbojpeg.so.0: cannot open shared object")
    out = tmp_path / "run"
    code = main(["train", DEMO, *base_overrides(fmnist_betons), "--out", str(out)])
    err = capsys.readouterr().err
    assert (code, err) == (2, E + "data.backend=ffcv but ffcv cannot be imported (ImportError: libturbojpeg.so.0: "
                                  "cannot open shared object): install it (make install) or set data.backend=torchvision\n")
    assert not out.exists()


def test_ffcv_import_failure_is_reported_from_the_real_import(monkeypatch):
    import builtins

    import imagenet_repro.data.loaders as loaders

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name.startswith("ffcv"):
            raise ImportError("No module named 'ffcv'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    assert loaders.ffcv_import_error() == "ImportError: No module named 'ffcv'"
    assert not loaders.ffcv_available()


# ------------------------------------------------------------------------ checkpoints
def _tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    return model, opt


def _save(folder: Path, step: int) -> None:
    model, opt = _tiny()
    save_checkpoint(folder / "last.pt", model=model, optimizer=opt, step=step, epoch=0, batch_in_epoch=step,
                    rng_states=gather_rng_states(torch.device("cpu"), 1))


def test_rotation_keeps_prev_with_sidecars(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256", "prev.pt", "prev.pt.sha256"]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 3
    assert torch.load(tmp_path / "prev.pt", weights_only=True)["step"] == 2
    model, opt = _tiny()
    assert load_latest(tmp_path, model=model, optimizer=opt)["step"] == 3
    assert load_latest(tmp_path / "none", model=model, optimizer=opt) is None  # no checkpoint: a fresh run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _not_a_checkpoint(path: Path) -> None:
    torch.save({"hello": torch.zeros(1)}, path)
    path.with_name(path.name + ".sha256").unlink()


def _text(path: Path) -> None:
    path.write_text("not a checkpoint\n")
    path.with_name(path.name + ".sha256").unlink()


CKPT_CASES = [  # damage to last.pt -> the reason recorded when falling back to prev.pt
    ("truncated", _truncate, "last.pt: checksum mismatch with last.pt.sha256 (truncated or corrupted on disk)"),
    ("flipped byte", _flip, "last.pt: checksum mismatch with last.pt.sha256 (truncated or corrupted on disk)"),
    ("other payload", _not_a_checkpoint, "last.pt: not a checkpoint of this suite (keys ['hello'])"),
    ("text file", _text, "last.pt: not a PyTorch checkpoint (starts with b'not ')"),
    ("pickle", lambda p: (torch.save({"x": 1}, p, _use_new_zipfile_serialization=False),
                          p.with_name(p.name + ".sha256").unlink()), "last.pt: not a PyTorch checkpoint (starts with b'\\x80\\x02\\x8a\\n')"),
    ("deleted", lambda p: (p.unlink(), p.with_name(p.name + ".sha256").unlink()), "last.pt: missing"),
]


@pytest.mark.parametrize("name,damage,reason", CKPT_CASES, ids=[c[0] for c in CKPT_CASES])
def test_damaged_last_checkpoint_falls_back_to_prev(tmp_path, name, damage, reason):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    damage(tmp_path / "last.pt")
    model, opt = _tiny()
    with pytest.warns(RuntimeWarning, match="resuming from prev.pt"):
        pos = load_latest(tmp_path, model=model, optimizer=opt)
    assert pos["step"] == 1 and pos["path"].name == "prev.pt" and pos["skipped"] == [reason]


def test_truncated_checkpoint_without_sidecar_is_caught_by_the_container(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / "last.pt.sha256").unlink()
    _truncate(tmp_path / "last.pt")
    model, opt = _tiny()
    with pytest.warns(RuntimeWarning):
        pos = load_latest(tmp_path, model=model, optimizer=opt)
    assert pos["step"] == 1 and pos["skipped"][0].startswith("last.pt: unreadable: truncated or corrupted (")


def test_checkpoint_of_another_model_is_refused(tmp_path):
    _save(tmp_path, 1)
    model = torch.nn.Linear(4, 5)
    with pytest.raises(CheckpointError, match=r"last.pt: does not fit this run's model/optimizer \(RuntimeError: "
                                              r"Error\(s\) in loading state_dict for Linear"):
        load_latest(tmp_path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_no_usable_checkpoint_names_every_file(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    _truncate(tmp_path / "last.pt")
    _text(tmp_path / "prev.pt")
    model, opt = _tiny()
    with pytest.raises(CheckpointError) as exc:
        load_latest(tmp_path, model=model, optimizer=opt)
    assert str(exc.value) == (
        f"no usable checkpoint in {tmp_path} (last.pt: checksum mismatch with last.pt.sha256 (truncated or corrupted "
        f"on disk); prev.pt: not a PyTorch checkpoint (starts with b'not ')): the run cannot resume; "
        f"delete {tmp_path.parent} to start it over")


def test_interrupted_rotation_leaves_a_usable_checkpoint(tmp_path, monkeypatch):
    """A crash at any rename of the rotation (simulated: os.replace fails at its k-th call)
    leaves one checkpoint that verifies."""
    import imagenet_repro.train.checkpoint as ck

    real = os.replace
    for k in range(1, 5):  # the 4 renames of a rotation (os.replace is patched module-wide: files.atomic_write renames too)
        folder = tmp_path / f"k{k}"
        _save(folder, 1)
        _save(folder, 2)
        calls = {"n": 0}

        def crashing(src, dst, k=k, calls=calls):
            calls["n"] += 1
            if calls["n"] == k:
                raise OSError("simulated crash")
            return real(src, dst)

        monkeypatch.setattr(ck.os, "replace", crashing)
        with pytest.raises(OSError):
            _save(folder, 3)
        monkeypatch.setattr(ck.os, "replace", real)
        model, opt = _tiny()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert load_latest(folder, model=model, optimizer=opt)["step"] in (1, 2, 3)
        _save(folder, 4)  # and the next save rotates cleanly
        assert load_latest(folder, model=model, optimizer=opt)["step"] == 4
        assert not list(folder.glob("*.tmp"))


# ------------------------------------------------------------------------ runs that cannot resume
def _started_run(tmp_path: Path, fmnist: Path) -> tuple[Path, list[str]]:
    """A run directory with its step-0 checkpoint and tables, as a run killed early leaves it."""
    from imagenet_repro.train.loop import Trainer

    out = tmp_path / "run"
    overrides = base_overrides(fmnist)
    trainer = Trainer(load_config(DEMO, overrides), out)
    trainer.start()
    trainer.save_checkpoint()
    return out, overrides


def _ref(out: Path) -> RunRef:
    return RunRef(out.name, out, {}, {"optimizer": "sgd", "lr": 0.1, "wd": 0.0, "seed": 0, "epochs": 1})


RESUME_CASES = [  # damage to a started run -> exit 2 and status.json failed with this reason
    ("checkpoints", "no usable checkpoint in {out}/checkpoints (last.pt: checksum mismatch with last.pt.sha256 "
                    "(truncated or corrupted on disk); prev.pt: missing): the run cannot resume; delete {out} to "
                    "start it over"),
    ("steps.parquet", "{out}/steps.parquet: unreadable run table (ArrowInvalid) next to a checkpoint: the run cannot "
                      "resume exactly; delete {out} to start it over"),
    ("eval.parquet", "{out}/eval.parquet: unreadable run table (FileNotFoundError) next to a checkpoint: the run "
                     "cannot resume exactly; delete {out} to start it over"),
]


@pytest.mark.parametrize("damage,message", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_run_that_cannot_resume_is_failed_with_its_reason(tmp_path, capsys, fmnist_betons, damage, message):
    out, overrides = _started_run(tmp_path, fmnist_betons)
    if damage == "checkpoints":
        _truncate(out / "checkpoints/last.pt")
    elif damage == "steps.parquet":
        (out / damage).write_text("garbage")
    else:
        (out / damage).unlink()
    message = message.format(out=out)
    for attempt in range(2):  # a resubmitted run fails again, fast, with the same reason
        code = main(["train", DEMO, *overrides, "--out", str(out)])
        assert (code, capsys.readouterr().err) == (2, E + message + "\n")
        status = json.loads((out / "status.json").read_text())
        assert status["state"] == "failed" and status["reason"] == "CheckpointError: " + message
    state = classify(_ref(out), {})
    assert state.state == "failed" and state.reason == "CheckpointError: " + message


# ------------------------------------------------------------------------ claims and reconciliation
CLAIM_CASES = [b"", b'{"state": "subm', b"\x00\xff\x10", b"[1, 2]"]


@pytest.mark.parametrize("content", CLAIM_CASES, ids=["empty", "truncated", "binary", "not-an-object"])
def test_unreadable_claim_is_dead_under_the_lock_and_never_blocks(tmp_path, content):
    run = tmp_path / "r"
    run.mkdir()
    (run / claims.CLAIM).write_bytes(content)
    claim = claims.read_claim(run)
    assert claim["state"] == "submitting" and claim["unreadable"].startswith(str(run / claims.CLAIM))
    assert classify(_ref(run), {}).state == "unknown"  # without the lock a launcher may be writing it
    state = classify(_ref(run), {}, stale_submitting=True)
    assert state.state == "failed" and state.reason.startswith("unreadable job claim")
    claims.release(run)  # what the launcher does with a failed run's claim
    assert claims.try_claim(run, "local")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_running_status_with_a_dead_process_is_failed(tmp_path):
    run = tmp_path / "r"
    rundir.write_status(run, "running", pid=_dead_pid(), pid_start="1", host=socket.gethostname())
    st = classify(_ref(run), {})
    assert st.state == "failed" and "is gone while status.json says running" in st.reason
    rundir.write_status(run, "running", pid=os.getpid(), pid_start=rundir.process_start(os.getpid()),
                        host=socket.gethostname())
    assert classify(_ref(run), {}).state == "running"
    # a local job claim whose process died, and a SLURM job no longer in the queue
    claims.record_job(run, "local", "123", tmp_path, pid=_dead_pid())
    st = classify(_ref(run), {})
    assert st.state == "failed" and st.reason.startswith("job 123 is gone while status.json says running")
    claims.record_job(run, "slurm", "77_3", tmp_path)
    assert classify(_ref(run), {"77_3": "RUNNING"}).state == "running"
    assert classify(_ref(run), {"78_0": "RUNNING"}).state == "failed"


@pytest.mark.slow
def test_native_abort_is_reconciled_as_failed(tmp_path, fmnist_betons):
    """SIGABRT (what OpenCV's assertion did with data.val_res=0) kills the trainer without a
    word: status.json still says running, and status reconciles it to failed."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "imagenet_repro", "train", DEMO, *base_overrides(fmnist_betons),
                             "train.epochs=50", "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and rundir.read_status(out).get("state") != "running":
        time.sleep(0.1)
    assert classify(_ref(out), {}).state == "running"
    proc.send_signal(signal.SIGABRT)
    assert proc.wait() == -signal.SIGABRT
    assert rundir.read_status(out)["state"] == "running"
    st = classify(_ref(out), {})
    assert st.state == "failed"
    assert st.reason == (f"process {proc.pid} on {socket.gethostname()} is gone while status.json says running "
                         f"(killed by a signal, a native crash or a disk it could not write)")


# ------------------------------------------------------------------------ exact resume from prev.pt
@pytest.mark.slow
def test_truncated_last_checkpoint_resumes_from_prev_exactly(tmp_path, fmnist_tiny, reference_run):
    """SIGKILL mid-run after two checkpoints, truncate last.pt as a partial copy would: the run
    resumes from prev.pt and its tables equal an uninterrupted run's."""
    from imagenet_repro.train.loop import run_training

    full = reference_run

    killed = tmp_path / "killed"
    # no timed checkpoint, none at the epoch end: only the two asked for, at steps 8 and 20, so
    # prev.pt sits before epoch 1's evaluation (step 16) while last.pt and the tables are past it
    overrides = fmnist_tiny + ["checkpoint.every_minutes=600", "checkpoint.every_epoch=false"]
    train_killed_after_checkpoints(DEMO, overrides, killed, steps=(8, 20))
    # the resume must drop the eval row of step 16 and the step/layer rows after step 8 from
    # the tables, which were written with last.pt
    last, prev = killed / "checkpoints/last.pt", killed / "checkpoints/prev.pt"
    prev_step = torch.load(prev, weights_only=True)["step"]
    last_step = torch.load(last, weights_only=True)["step"]
    assert (prev_step, last_step) == (8, 20)
    assert 16 in set(pd.read_parquet(killed / "eval.parquet").step)  # the tables are ahead of prev.pt
    _truncate(last)

    with pytest.warns(RuntimeWarning, match="resuming from prev.pt"):
        assert run_training(load_config(DEMO, overrides), killed) == "done"
    status = json.loads((killed / "status.json").read_text())
    assert status["resumed_from_step"] == prev_step and status["resumed_from"] == "prev.pt"
    assert_same_tables(full, killed)
    b = {n: pd.read_parquet(killed / f"{n}.parquet") for n in ("steps", "layers", "eval")}
    (tmp_path / "result.json").write_text(json.dumps({"prev_step": prev_step, "last_step": last_step}))
    print(f"RESUME-RESULT killed with last.pt at step {last_step}, prev.pt at step {prev_step}; "
          f"{len(b['steps'])} step rows, {len(b['layers'])} layer rows, {len(b['eval'])} eval rows exactly equal")
