"""benchmarks/gpu.py end to end on CPU (--cpu-smoke), and the CUDA-path pieces a CPU can pin:
the device choice per rank, NCCL's device binding, cuDNN flags, the ffcv GPU pipeline order
and the torch normalisation that replaces ffcv's cupy one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imagenet_repro.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# ---- the CPU smoke run -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.long  # make test's 10 minutes: in make test-rehearsals (CI runs both)
def test_gpu_bench_cpu_smoke_runs_every_part(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--cpu-smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env={**_env(), "OUT": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "cpu-smoke" and r["environment"]["ffcv_importable"]
    for part in ("data", "train", "throughput", "optim", "loader"):
        assert "error" not in r[part], (part, r[part].get("traceback"))
    t = r["train"]
    assert t["state"] == t["resumed_state"] == "done" and t["ok"]
    assert t["loss_falls"] and t["norms_finite"] and t["eval_ran"] and t["resume_exact"] and t["inputs_ok"]
    assert t["interrupt"].startswith("SystemExit") and t["resumed_from_step"] == 4
    (cfg,) = r["throughput"]["configs"].values()
    assert "error" not in cfg and cfg["loader"] == "FFCVTrainLoader"
    assert cfg["images_per_s"] > 0 and cfg["compute_only_images_per_s"] > 0
    assert cfg["telemetry"]["step_ms_with"] > 0 and cfg["telemetry"]["step_ms_without"] > 0
    assert set(r["optim"]["ratio_vs_fastest_torch"]) == {"sgd[foreach]", "sgdc[foreach]", "adamw[foreach]",
                                                        "adamc[foreach]"}
    assert r["loader"]["ffcv"]["loader"] == "FFCVTrainLoader"
    assert r["loader"]["torchvision"]["loader"] == "TorchvisionTrainLoader"
    checks = r["target_checks"]
    assert len(checks) == 5 and all(c["pass"] in (True, False, None) for c in checks.values())
    assert checks["train_checks (loss falls, finite, eval, exact resume, inputs)"]["pass"] is True
    # $OUT gets the JSON and the train run's tables
    assert {"gpu.json", "train_steps.parquet", "train_eval.parquet"} <= {p.name for p in tmp_path.iterdir()}


def test_gpu_bench_rejects_unknown_part(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--parts", "data,warp", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2 and "unknown part" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def _env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


# ---- device per rank, NCCL, cuDNN --------------------------------------------------------------
@pytest.fixture
def fake_cuda(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: chosen.append(i))

    def visible(n):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        return chosen
    return visible


def test_cuda_device_is_local_rank_when_all_gpus_are_visible(fake_cuda):
    from imagenet_repro.train.distributed import pick_device

    chosen = fake_cuda(8)
    assert pick_device("cuda", 3) == torch.device("cuda", 3) and chosen == [3]


def test_cuda_device_is_0_when_the_task_sees_one_gpu(fake_cuda):
    """SLURM --gpus-per-task / --gpu-bind: CUDA_VISIBLE_DEVICES holds this rank's GPU only."""
    from imagenet_repro.train.distributed import pick_device

    chosen = fake_cuda(1)
    assert pick_device("auto", 5) == torch.device("cuda", 0) and chosen == [0]


def test_local_rank_beyond_the_visible_gpus_is_a_config_error(fake_cuda):
    from imagenet_repro.train.distributed import pick_device

    fake_cuda(2)
    with pytest.raises(ConfigError, match="LOCAL_RANK=3"):
        pick_device("cuda", 3)


def test_nccl_is_bound_to_the_rank_gpu(fake_cuda, monkeypatch):
    import torch.distributed as dist

    from imagenet_repro.train import distributed

    fake_cuda(4)
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    d, device = distributed.init_from_env("cuda")
    assert (d.rank, d.world_size, d.local_rank) == (6, 8, 2) and device == torch.device("cuda", 2)
    assert calls == [("nccl", {"rank": 6, "world_size": 8, "device_id": torch.device("cuda", 2)})]


def test_cudnn_autotunes_unless_deterministic():
    from imagenet_repro.train.loop import cuda_backend_flags

    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        cuda_backend_flags(False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        cuda_backend_flags(True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


# ---- the ffcv GPU pipeline ---------------------------------------------------------------------
def test_ffcv_gpu_pipeline_is_ffcv_imagenets_order():
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

    from imagenet_repro.data.common import IMAGENET_MEAN, IMAGENET_STD
    from imagenet_repro.data.ffcv_backend import image_tail, label_pipeline

    gpu = torch.device("cuda", 1)
    pre, post = image_tail(gpu, IMAGENET_MEAN, IMAGENET_STD)
    assert pre == []
    assert [type(op) for op in post[:3]] == [ToTensor, ToDevice, ToTorchImage]
    assert post[1].device == gpu and post[1].non_blocking and post[2].channels_last
    assert type(post[3]).__name__ in ("NormalizeImage", "TorchNormalizeImage")
    labels = label_pipeline(gpu)
    assert [type(op) for op in labels] == [IntDecoder, ToTensor, Squeeze, ToDevice]
    assert labels[-1].device == gpu and labels[-1].non_blocking


def test_torch_normalize_writes_channels_last_float_into_ffcvs_buffer():
    """The GPU normalisation's code on CPU tensors: ToTorchImage(channels_last) hands it a
    uint8 NCHW view of NHWC memory; ffcv allocated dst as contiguous (B, C, H, W) float32."""
    from imagenet_repro.data.ffcv_ops import TorchNormalizeImage

    mean, std = np.array([10.0, 20.0, 30.0]), np.array([2.0, 4.0, 5.0])
    op = TorchNormalizeImage(mean, std)
    op.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    op.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    nhwc = torch.randint(0, 256, (3, 5, 7, 3), dtype=torch.uint8)
    images = nhwc.permute(0, 3, 1, 2)  # what ToTorchImage(channels_last=True) returns
    dst = torch.full((4, 3, 5, 7), float("nan"))  # one slot more than the batch, as ffcv's buffers
    out = op.generate_code()(images, dst)
    assert out.shape == (3, 3, 5, 7) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = (images.float() - op.mean) / op.std
    torch.testing.assert_close(out, expected)
    assert out.data_ptr() == dst.data_ptr()  # written in place, no allocation per batch


# ---- train.deterministic: cuBLAS's workspace before CUDA starts ---------------------------------
class _DeviceChosen(Exception):
    pass


def _cublas_at_device_choice(monkeypatch, deterministic: bool) -> list:
    """CUBLAS_WORKSPACE_CONFIG as the Trainer finds it when it picks its device (where CUDA starts)."""
    from imagenet_repro.config import build_config, read_yaml
    from imagenet_repro.train import loop

    seen = []

    def init_from_env(device):
        seen.append(__import__("os").environ.get("CUBLAS_WORKSPACE_CONFIG"))
        raise _DeviceChosen

    monkeypatch.setattr(loop, "init_from_env", init_from_env)
    cfg = build_config(read_yaml(ROOT / "experiments" / "imagenet_resnet50_faithful.yaml"),
                       {"train": {"deterministic": deterministic}}, check_paths=False)
    with pytest.raises(_DeviceChosen):
        loop.Trainer(cfg, Path("unused"))
    return seen


def test_deterministic_run_sets_cublas_workspace_before_cuda_starts(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert _cublas_at_device_choice(monkeypatch, True) == [":4096:8"]


def test_deterministic_run_keeps_a_deterministic_value_and_replaces_another(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert _cublas_at_device_choice(monkeypatch, True) == [":16:8"]
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    assert _cublas_at_device_choice(monkeypatch, True) == [":4096:8"]


def test_a_run_that_need_not_be_deterministic_leaves_cublas_alone(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert _cublas_at_device_choice(monkeypatch, False) == [None]
