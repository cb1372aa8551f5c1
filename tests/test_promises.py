"""README promises that only a command line shows: `repro data write` with ffcv-imagenet's
knobs, the `slurm:` keys in the sbatch script, `repro bench` and `repro demo` beyond --help."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from ffcv.reader import Reader

from imagenet_repro.cli import main
from imagenet_repro.data.synthetic import write_synthetic_imagefolder
from imagenet_repro.sweep.launcher import _slurm_executor
from imagenet_repro.sweep.spec import load_spec

N_IMAGES = 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_imagefolder(root, N_IMAGES, num_classes=2, width=(60, 90), height=(40, 70))
    return root


def write(folder: Path, out: Path, *knobs: str) -> Reader:
    assert main(["data", "write", "--source", "imagefolder", str(folder), "--out", str(out), *knobs]) == 0
    return Reader(str(out))


def image_meta(reader: Reader) -> np.ndarray:
    """Per image: mode (ffcv: 0 JPEG, 1 raw), width, height, data_ptr (metadata fields are unnamed: f<index>)."""
    return reader.metadata[f"f{reader.field_names.index('image')}"]


def image_bytes(reader: Reader) -> np.ndarray:
    """Stored bytes of each image (the allocation of its data pointer)."""
    meta, table = image_meta(reader), reader.alloc_table
    return np.array([int(table["size"][table["ptr"] == p][0]) for p in meta["data_ptr"]])


@pytest.mark.timeout(240)
def test_data_write_takes_the_ffcv_imagenet_knobs(folder, tmp_path, capsys):
    raw = write(folder, tmp_path / "raw.beton", "--max-res", "32", "--compress-probability", "0", "--num-workers", "1")
    meta = image_meta(raw)
    assert raw.num_samples == N_IMAGES and (meta["mode"] == 1).all()  # ffcv: 1 = raw
    assert (np.maximum(meta["width"], meta["height"]) == 32).all()  # the longest side, capped at --max-res
    assert (image_bytes(raw) == meta["width"].astype(int) * meta["height"] * 3).all()

    args = ("--max-res", "64", "--compress-probability", "1", "--num-workers", "2")
    low = write(folder, tmp_path / "q20.beton", *args, "--jpeg-quality", "20")
    high = write(folder, tmp_path / "q95.beton", *args, "--jpeg-quality", "95")
    for reader in (low, high):
        assert (image_meta(reader)["mode"] == 0).all()  # 0 = JPEG
        assert (np.maximum(image_meta(reader)["width"], image_meta(reader)["height"]) == 64).all()
    assert (image_bytes(low) < image_bytes(high)).all()  # same images, lower --jpeg-quality

    capsys.readouterr()
    out = tmp_path / "bad.beton"
    for flag, value, message in (("--num-workers", "0", "--num-workers must be >= 1"),
                                 ("--compress-probability", "1.5", "--compress-probability must be in [0, 1]"),
                                 ("--max-res", "0", "--max-res must be >= 1")):
        assert main(["data", "write", "--source", "imagefolder", str(folder), "--out", str(out), flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"repro: error: {message}") and "\n" not in err
    assert not out.exists()


def test_slurm_keys_reach_the_sbatch_script(tmp_path, monkeypatch):
    # submitit's SlurmExecutor looks for srun when built; the script it would submit needs no cluster
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\nruns_root: {tmp_path / 'runs'}\nslurm: {{partition: gpuq, account: acct7, qos: high, "
                    "constraint: a100, mem_gb: 4, gpus_per_node: 2, cpus_per_task: 6, timeout_min: 90, "
                    "setup: ['module load cuda'], additional_parameters: {mail-type: END}}\n")
    ex = _slurm_executor(load_spec(spec))
    script = ex._make_submission_file_text("python -m job", "uid")  # the file submitit hands to sbatch
    lines = set(script.splitlines())
    for option in ("--partition=gpuq", "--account=acct7", "--qos=high", "--constraint=a100", "--mem=4096MB",
                   "--gpus-per-node=2", "--cpus-per-task=6", "--time=90", "--ntasks-per-node=2", "--nodes=1",
                   "--mail-type=END", "--job-name=repro-s", "--signal=USR2@120"):
        assert f"#SBATCH {option}" in lines, option
    assert "module load cuda" in lines

    spec.write_text(f"name: s\nruns_root: {tmp_path / 'runs'}\n")  # none given: SLURM's defaults, no option
    script = _slurm_executor(load_spec(spec))._make_submission_file_text("python -m job", "uid")
    for key in ("--partition", "--account", "--qos", "--constraint", "--mem"):
        assert f"#SBATCH {key}=" not in script, key


def test_bench_runs_the_named_scripts_each_in_its_own_process(tmp_path, capsys):
    (tmp_path / "ok.py").write_text("import os, pathlib\npathlib.Path('ok.out').write_text(str(os.getpid()))\n")
    (tmp_path / "bad.py").write_text("raise SystemExit(3)\n")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert main(["bench", "ok", "--dir", str(tmp_path)]) == 0
        assert int((tmp_path / "ok.out").read_text()) != os.getpid()
        assert main(["bench", "--dir", str(tmp_path)]) == 1  # every script of the folder: bad.py fails
        captured = capsys.readouterr()
        assert f"== {tmp_path / 'bad.py'}" in captured.out and f"== {tmp_path / 'ok.py'}" in captured.out
        assert "repro bench: failed: bad.py" in captured.err
        assert main(["bench", "nosuch", "--dir", str(tmp_path)]) == 2
        assert capsys.readouterr().err.strip() == f"repro: error: no such benchmark: {tmp_path / 'nosuch.py'}"
    finally:
        os.chdir(cwd)


def test_demo_with_a_bad_spec_is_one_line_exit_2_and_writes_no_results(tmp_path, capsys):
    data = tmp_path / "data" / "fashion_mnist"
    data.mkdir(parents=True)
    for name in ("train.beton", "val.beton"):  # present: the demo does not write Fashion-MNIST again
        (data / name).write_bytes(b"")
    (tmp_path / "bad.yaml").write_text("name: demo\naxes: {optim.lr: [-1.0]}\n")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert main(["demo", "--spec", "bad.yaml", "--cluster", "local"]) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert err.startswith("repro: error:") and "optim.lr must be > 0" in err and "\n" not in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()

