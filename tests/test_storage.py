"""A write that fails (no space, read-only, no permission) ends the run with one line: what
could not be written where, what is kept (the last good checkpoint and its step), and the
status left behind; exit 1; never a dead process that ``repro status`` shows as running.
Resuming once the disk can be written again is exact.

Each write site of the trainer is failed in a real ``repro train`` process (``os.fsync`` of
that file's temporary copy raises, as a full disk, a quota or NFS reports it at sync time; for
TensorBoard its record writer raises in its thread), then a real small filesystem (a tmpfs
mounted by the test, as root) is filled during a checkpoint."""
from __future__ import annotations

import errno
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT_SKIP

from imagenet_repro import files, rundir
from imagenet_repro.cli import main
from imagenet_repro.config import load_config
from imagenet_repro.errors import StorageError
from imagenet_repro.sweep.status import RunRef, classify
from imagenet_repro.train.callbacks import Callback
from imagenet_repro.train.checkpoint import kept_checkpoint
from imagenet_repro.train.compare import compare_runs
from imagenet_repro.train.loop import run_training

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments/demo.yaml")
E = "repro: error: "
pytestmark = pytest.mark.slow

def fail_fsync(monkeypatch, name: str, after: int, code: int) -> None:
    """Every ``os.fsync`` of the temporary copy of ``name`` after the first ``after`` raises
    OSError(code): the disk's error as a full disk, a quota or NFS reports it at sync time."""
    temporary = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")  # files.atomic_write's temporary copy
    seen, real = [], os.fsync

    def fsync(fd: int) -> None:
        if temporary.fullmatch(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))):
            seen.append(fd)
            if len(seen) > after:
                raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


# The same in a `repro train` process of its own (FAIL=name:after:errno): for the case where
# the process must be gone for `repro status` to judge it.
RUNNER = r"""
import os, sys
import pytest
from test_storage import fail_fsync
name, after, code = os.environ["FAIL"].split(":")
fail_fsync(pytest.MonkeyPatch(), name, int(after), int(code))
from imagenet_repro.cli import main
sys.exit(main(sys.argv[1:]))
"""


def repro_train_process(out: Path, overrides: list[str], env: dict) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", RUNNER, "train", DEMO, *overrides, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env={**os.environ, **env, "PYTHONPATH": path})


def ref(out: Path) -> RunRef:
    return RunRef(out.name, out, {}, {"optimizer": "sgd", "lr": 0.1, "wd": 0.005, "seed": 0, "epochs": 2})


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def reference(reference_run) -> Path:
    return reference_run


# fmnist_tiny: 2 epochs of 16 steps, a checkpoint at each epoch end (steps 16 and 32).
# (file, fsyncs that succeed first, errno, the checkpoint kept: (name, step) or None)
SITES = [
    ("config.yaml", 0, errno.ENOSPC, None),
    ("manifest.json", 0, errno.EROFS, None),
    ("manifest.json", 1, errno.ENOSPC, ("last.pt", 32)),  # the end time, after the last checkpoint
    ("steps.parquet", 0, errno.ENOSPC, None),              # the tables at the first checkpoint
    ("layers.parquet", 1, errno.EDQUOT, ("last.pt", 16)),
    ("eval.parquet", 1, errno.ENOSPC, ("last.pt", 16)),
    ("last.pt", 0, errno.ENOSPC, None),
    ("last.pt", 1, errno.EACCES, ("last.pt", 16)),
    ("last.pt.sha256", 1, errno.ENOSPC, ("prev.pt", 16)),  # mid-rotation: last.pt moved to prev.pt
    ("status.json", 1, errno.ENOSPC, ("last.pt", 16)),     # epoch 1's end, after its checkpoint; so is the failed one
]
IDS = [f"{name}-after{after}-{errno.errorcode[code]}" for name, after, code, _ in SITES]
# make test runs one site (a checkpoint); make test-rehearsals runs them all (marker long)
QUICK = {"last.pt-after1-EACCES"}
SITE_PARAMS = [pytest.param(*site, id=i, marks=() if i in QUICK else pytest.mark.long) for site, i in zip(SITES, IDS)]


def _path(out: Path, name: str) -> Path:
    return out / ("checkpoints/" + name if name.startswith("last.pt") else name)


@pytest.mark.parametrize("name,after,code,kept", SITE_PARAMS)
def test_failed_write_is_one_line_keeps_the_checkpoint_and_resumes_exactly(tmp_path, monkeypatch, capsys, reference,
                                                                          fmnist_tiny, name, after, code, kept):
    out = tmp_path / "run"
    if name == "status.json":  # its own process: `repro status` must see it gone
        proc = repro_train_process(out, fmnist_tiny, {"FAIL": f"{name}:{after}:{code}"})
        returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        with monkeypatch.context() as m:
            fail_fsync(m, name, after, code)
            returncode = main(["train", DEMO, *fmnist_tiny, "--out", str(out)])
        stdout, stderr = capsys.readouterr()
    assert returncode == 1 and stdout == "", stderr[-3000:]
    assert stderr.count("\n") == 1, stderr[-3000:]
    line = stderr.removeprefix(E).rstrip("\n")
    what = f"could not write {_path(out, name)}: {os.strerror(code)}; "
    if kept:
        what += (f"kept: {out / 'checkpoints' / kept[0]} at step {kept[1]}, the last good checkpoint (the same "
                 f"command resumes from it once the disk can be written)")
    else:
        what += "kept: no checkpoint yet (the same command starts over)"
    assert line.startswith(what + "; "), line
    assert kept_checkpoint(out / "checkpoints") == ((out / "checkpoints" / kept[0], kept[1]) if kept else None)
    assert not temporaries(out)
    status = rundir.read_status(out)
    if name == "status.json":  # it cannot say failed: it says running, and `repro status` sees the dead process
        assert line == what + (f"; status.json could not be updated (it says running; `repro status` sees that "
                               f"process {status['pid']} is gone)")
        assert status["state"] == "running"
        st = classify(ref(out), {})
        assert st.state == "failed" and "is gone while status.json says running" in st.reason
    else:
        assert line == what + "; status.json: failed"
        assert status["state"] == "failed" and status["reason"] == what
        st = classify(ref(out), {})
        assert st.state == "failed" and st.reason == what
    # the disk is fine again: the same command resumes, and the tables are the uninterrupted run's
    assert run_training(load_config(DEMO, fmnist_tiny), out) == "done"
    assert rundir.read_status(out).get("resumed_from_step") == (kept[1] if kept else None)
    assert compare_runs(reference, out) == []


@pytest.mark.long  # make test's 10 minutes: in make test-rehearsals (CI runs both)
def test_failed_tensorboard_write_is_one_line_and_resumes_exactly(tmp_path, monkeypatch, capsys, reference,
                                                                  fmnist_tiny):
    from tensorboard.summary.writer import record_writer

    out = tmp_path / "run"
    real, calls = record_writer.RecordWriter.write, []

    def write(self, data):  # in TensorBoard's writer thread
        calls.append(1)
        if len(calls) > 100:  # ~42 records per telemetry flush (8 steps): the third (step 24) fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    with monkeypatch.context() as m:
        m.setattr(record_writer.RecordWriter, "write", write)
        assert main(["train", DEMO, *fmnist_tiny, "--out", str(out)]) == 1
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1, stderr[-3000:]  # no traceback from the thread
    line = stderr.removeprefix(E).rstrip("\n")
    assert line == (f"could not write {out / 'tensorboard'}: No space left on device; kept: {out}/checkpoints/last.pt "
                    f"at step 16, the last good checkpoint (the same command resumes from it once the disk can be "
                    f"written); status.json: failed")
    assert rundir.read_status(out)["state"] == "failed"
    assert run_training(load_config(DEMO, fmnist_tiny), out) == "done"
    assert compare_runs(reference, out) == []


@pytest.mark.parametrize("stage", ["tempfile.mkstemp", "os.fsync", "os.replace"])
def test_the_writer_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, stage):
    """The one writer: the disk's error at each of its stages (temporary file, sync, rename)."""
    target = tmp_path / "t.json"

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(stage, fail)
        with pytest.raises(StorageError) as info:
            files.atomic_write_json(target, {"a": 1})
    assert str(info.value) == f"could not write {target}: No space left on device"
    assert info.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


def test_the_writer_passes_on_errors_that_are_not_the_disks(tmp_path):
    target = tmp_path / "t.bin"

    def half_then_full(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match=f"could not write {target}: No space left on device"):
        files.atomic_write(target, half_then_full)

    def bad_source(tmp: str) -> None:  # e.g. an image the writer reads is missing: not a write error
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "source.jpg")

    with pytest.raises(FileNotFoundError):
        files.atomic_write(target, bad_source)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ real filesystems (tmpfs, as root)
def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True, capture_output=True)


@functools.lru_cache(maxsize=1)
def _cannot_mount(probe_parent: str) -> str | None:
    """Why root cannot mount a tmpfs here (a container without CAP_SYS_ADMIN), or None."""
    probe = Path(tempfile.mkdtemp(dir=probe_parent)) / "probe"
    try:
        _mount_tmpfs(probe, "size=1m")
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip() or str(exc)
        return detail.splitlines()[0].rsplit(": ", 1)[-1].strip() if detail else "mount failed"  # "permission denied."
    subprocess.run(["umount", "-l", str(probe)], check=False)
    return None


@pytest.fixture
def mounts(tmp_path, tmp_path_factory):
    """mount(name, options) -> a tmpfs folder under tmp_path; all unmounted afterwards (as root:
    the tests taking it are marked `root`; where root may not mount, they skip in one line)."""
    why = _cannot_mount(str(tmp_path_factory.getbasetemp()))
    if why is not None:
        pytest.skip(f"{ROOT_SKIP}mounting a tmpfs is not allowed here ({why}): the real-filesystem storage tests")
    made = []

    def mount(name: str, options: str = "size=8m") -> Path:
        where = tmp_path / name
        _mount_tmpfs(where, options)
        made.append(where)
        return where

    yield mount
    for where in made:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A file taking all of ``disk`` but about ``leave`` bytes."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


@pytest.mark.root
def test_disk_filled_during_a_checkpoint_then_freed_resumes_exactly(mounts, reference, fmnist_tiny, capsys):
    """The disk fills after step 20: the tables of the step-32 checkpoint fit (a few KB), the
    checkpoint (~200 KB) does not; last.pt of step 16 is kept, status.json says failed; once
    the filler is deleted the same command resumes from step 16 and the tables are exact."""
    disk = mounts("disk")
    out = disk / "run"
    overrides = fmnist_tiny + ["train.tensorboard=false"]
    filled = []

    class FillAt20(Callback):
        def on_step_end(self, trainer, images, labels) -> None:
            if trainer.step == 20 and not filled:
                filled.append(_fill(disk, 96 * 1024))

    with pytest.raises(StorageError) as info:
        run_training(load_config(DEMO, overrides), out, callbacks=[FillAt20()])
    assert str(info.value) == (f"could not write {out}/checkpoints/last.pt: No space left on device; kept: "
                               f"{out}/checkpoints/last.pt at step 16, the last good checkpoint (the same command "
                               f"resumes from it once the disk can be written); status.json: failed")
    assert rundir.read_status(out)["state"] == "failed" and not temporaries(out)
    assert len(pd.read_parquet(out / rundir.STEPS)) == 32  # the tables were written, ahead of the checkpoint
    filled[0].unlink()
    assert main(["train", DEMO, *overrides, "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}: done\n"
    assert json.loads((out / rundir.STATUS).read_text())["resumed_from_step"] == 16
    assert compare_runs(reference, out) == []


@pytest.mark.root
def test_full_and_read_only_disks_end_repro_train_with_one_line(mounts, fmnist_tiny):
    """Nothing fits (a full disk) or nothing may be written (read-only): one line, exit 1, and
    no status.json that says running."""
    full = mounts("full")
    _fill(full, 0)
    read_only = mounts("ro", "ro,size=1m")
    out = full / "run"
    proc = subprocess.run([sys.executable, "-m", "imagenet_repro", "train", DEMO, *fmnist_tiny, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert proc.stderr == (f"{E}could not write {out / 'config.yaml'}: No space left on device; kept: no checkpoint "
                           f"yet (the same command starts over); status.json could not be written either\n")
    assert rundir.read_status(out)["state"] == "pending"  # never started: nothing says running
    # read-only: --out is checked before any work (imagenet_repro.paths), so it is bad input: exit 2, nothing made
    out = read_only / "run"
    proc = subprocess.run([sys.executable, "-m", "imagenet_repro", "train", DEMO, *fmnist_tiny, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert (proc.returncode, proc.stderr) == (2, f"{E}--out '{out}' cannot be created: this user cannot write into "
                                                 f"{read_only}\n"), proc.stderr[-3000:]
    assert not out.exists()


@pytest.mark.root
def test_results_figures_and_report_on_a_read_only_disk_are_one_line(mounts, capsys):
    from synthetic_runs import write_grid, write_spec

    root = mounts("results")
    runs = root.parent / "runs"
    write_grid(runs, "rep", optimizers=("sgd", "sgdc"), lrs=(0.1,), wds=(5e-5,), seeds=(0, 1))
    spec = write_spec(root.parent / "rep.yaml", "rep", runs)
    assert main(["aggregate", str(spec), "--results", str(root)]) == 0
    capsys.readouterr()
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    before = sorted(p.name for p in (root / "rep").iterdir())
    for verb in ("aggregate", "figures", "report"):  # --results is checked before any work: bad input, exit 2
        assert main([verb, str(spec), "--results", str(root)]) == 2, verb
        err = capsys.readouterr().err
        assert err.startswith(f"{E}") and str(root) in err and "cannot write" in err, err
        assert err.count("\n") == 1
    assert sorted(p.name for p in (root / "rep").iterdir()) == before


@pytest.mark.root
def test_repro_status_tells_a_dead_run_on_a_full_disk(mounts, capsys):
    """The trainer died with the disk full and status.json still says running: `repro status`
    (which caches its plan in the sweep folder) still tells the run is failed, and why."""
    from imagenet_repro.sweep.spec import load_spec, resolve_runs

    disk = mounts("disk", "size=1m")
    spec = disk.parent / "s.yaml"
    spec.write_text(f"name: s\nruns_root: {disk / 'runs'}\nbase: {DEMO}\n")
    run = resolve_runs(load_spec(spec))[0].run_dir
    dead = subprocess.Popen(["true"])
    dead.wait()
    rundir.write_status(run, "running", pid=dead.pid, pid_start="1", host=os.uname().nodename, step=16)
    _fill(disk, 0)
    assert main(["status", str(spec)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sweep s: 1 runs in {disk / 'runs' / 's'}: failed 1\n")
    reason = (f"process {dead.pid} on {os.uname().nodename} is gone while status.json says running "
              f"(killed by a signal, a native crash or a disk it could not write)")
    assert f"  {run.name} (): {reason}\n" in out  # the failed runs' triage: run id (grid point), reason
