"""benchmarks/gpu.py and its device command (scripts/gpu-run.sh) end to end on CPU at tiny scale,
the benchmark's method (telemetry overhead over whole windows, compute-only replaying the
loader-fed steps, GPU-hours per epoch, phase caps and deadline), and the CUDA-path pieces a CPU
can pin: the device choice per rank, NCCL's device binding, cuDNN flags, cuBLAS's workspace before
CUDA starts, the ffcv GPU pipeline order and the torch normalisation that replaces ffcv's cupy one."""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from imagenet_repro.errors import ConfigError
from imagenet_repro.sweep.placement import cpus_needed

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("data", "faithful_train", "faithful_speed", "budget_train", "budget_speed", "variants", "optim", "loader",
          "compile")


def _gpu_bench():
    if "gpu_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu.py")
        sys.modules["gpu_bench"] = importlib.util.module_from_spec(spec)  # (its dataclasses look it up)
        spec.loader.exec_module(sys.modules["gpu_bench"])
    return sys.modules["gpu_bench"]


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _dummy_wheel(folder: Path) -> None:
    """A valid one-module wheel: what gpu-run.sh installs in place of the GPU machine's ffcv & co."""
    folder.mkdir()
    dist = "gpu_run_probe-0.1.dist-info"
    with zipfile.ZipFile(folder / "gpu_run_probe-0.1-py3-none-any.whl", "w") as z:
        z.writestr("gpu_run_probe.py", "")
        z.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: gpu-run-probe\nVersion: 0.1\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", f"gpu_run_probe.py,,\n{dist}/METADATA,,\n{dist}/WHEEL,,\n{dist}/RECORD,,\n")


# ---- the device command, whole, tiny, on CPU ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.long  # make test's 10 minutes: in make test-rehearsals (CI runs both)
def test_device_command_runs_every_phase_tiny_and_returns_its_files_in_out(tmp_path):
    """`bash scripts/gpu-run.sh` (DEVICE_RUN) as the device tool runs it, with $OUT, on CPU."""
    out, wheels = tmp_path / "out", tmp_path / "whl"
    out.mkdir()
    _dummy_wheel(wheels)
    gpu = _gpu_bench()
    cmd = gpu.DEVICE_RUN["command"].split() + ["--out", str(tmp_path / "res" / "gpu.json")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=2400,
                          env=_env(OUT=str(out), PYTHON=sys.executable, GPU_BENCH_TINY="1",
                                   GPU_BENCH_WHEELS=str(wheels), GPU_BENCH_WORKDIR=str(tmp_path / "work")))
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    r = json.loads((out / "gpu.json").read_text())
    assert r == json.loads((tmp_path / "res" / "gpu.json").read_text())
    assert r["scale"] == "tiny" and r["launcher"] == "scripts/gpu-run.sh" and r["environment"]["ffcv_importable"]
    assert r["environment"]["torch"] == torch.__version__ and r["environment"]["torch_pinned"]
    for phase in PHASES:
        assert r[phase]["exit"] == 0 and "error" not in r[phase], (phase, r[phase].get("traceback"))
    for phase in ("faithful_train", "budget_train"):
        t = r[phase]
        assert t["ok"] and t["resume_exact"] and t["resumed_from_step"] == 4, t
        assert t["cublas_workspace_before"] is None and t["cublas_workspace_after"] == ":4096:8"
    assert r["budget_train"]["resolutions_fed"] == [32, 64]  # its ramp, squeezed into the 2 epochs
    for phase in ("faithful_speed", "budget_speed"):
        first = next(iter(r[phase]["configs"].values()))
        assert "error" not in first and first["loader"] == "FFCVTrainLoader", first
        assert first["images_per_s"] > 0 and first["compute_only_images_per_s"] > 0 and first["eval_images_per_s"] > 0
        tel = first["telemetry"]
        assert tel["window_steps"] == 2 and tel["overhead"] == pytest.approx(tel["step_ms_with"] / tel["step_ms_without"] - 1, abs=1e-3)
        gh = r[phase]["gpu_hours"]
        assert gh["gpu_hours_per_epoch"] > 0 and gh["spec_estimate"] in (0.25, 0.125) and gh["spec_line"] is None
    assert set(r["variants"]["over_baseline"]) == {"bf16+foreach", "fp16+scaler+foreach", "bf16+fused",
                                                   "fp16+scaler+fused", "bf16+foreach+ddp1",
                                                   "bf16+foreach+ddp1+bucket_view"}
    assert r["compile"]["backend"] == "aot_eager" and r["compile"]["compiled_over_eager"] > 0
    assert r["loader"]["ffcv"]["loader"] == "FFCVTrainLoader" and r["loader"]["torchvision"]["loader"] == "TorchvisionTrainLoader"
    assert r["target_checks"]["train_checks (loss falls, finite, eval, exact resume, inputs, resolutions)"]["pass"] is True
    # what comes back from the device: at most 8 files, plainly named, no folders
    names = sorted(p.name for p in out.iterdir())
    assert names == ["budget_train_eval.parquet", "budget_train_steps.parquet", "faithful_train_eval.parquet",
                     "faithful_train_steps.parquet", "gpu.json", "gpu.log"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    log = (out / "gpu.log").read_text()
    assert "gpu-run: " in log and "target train_checks" in log  # the launcher's line and the summary


def test_device_command_refuses_without_out_or_wheels(tmp_path):
    run = lambda **env: subprocess.run(["bash", "scripts/gpu-run.sh"], cwd=ROOT, capture_output=True, text=True,  # noqa: E731
                                       timeout=60, env=_env(PYTHON=sys.executable, **env))
    no_out = run(OUT=str(tmp_path / "missing"), GPU_BENCH_WHEELS=str(tmp_path))
    no_wheels = run(OUT=str(tmp_path), GPU_BENCH_WHEELS=str(tmp_path / "empty"))
    for proc, what in ((no_out, "OUT"), (no_wheels, "no wheels")):
        assert proc.returncode == 2 and what in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--phases", "data,warp"], "unknown phase"),
    (["--caps", "optim=abc"], "must be a number"),
    (["--caps", "optim=-1"], "must be > 0"),
    (["--caps", "warp=5"], "expected PHASE=SECONDS"),
    (["--deadline-s", "0"], "must be > 0"),
])
def test_gpu_bench_rejects_bad_input_in_one_line_writing_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert _gpu_bench().main([*args, "--out", str(tmp_path / "gpu.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def _main(*args) -> dict:
    """gpu.py's driver in this process (its phases still run as child processes); the JSON it wrote."""
    out = Path(args[args.index("--out") + 1])
    assert _gpu_bench().main(["--tiny", *args]) == 0
    return json.loads(out.read_text())


def test_a_phase_past_its_cap_is_killed_and_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    # (the child imports torch and times 11 optimizers: far past 1 s)
    r = _main("--phases", "optim", "--caps", "optim=1", "--out", str(tmp_path / "gpu.json"))
    assert r["optim"]["exit"] is None and "killed at its cap of 1 s" in r["optim"]["timed_out"]
    assert "data" not in r  # optim needs no data


def test_the_deadline_skips_what_does_not_fit(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    r = _main("--phases", "optim,compile", "--deadline-s", "0.001", "--out", str(tmp_path / "gpu.json"))
    assert all(r[p]["skipped"].startswith("skipped: deadline") for p in ("optim", "compile"))
    assert r["target_checks"]["optimizer_over_fastest_torch <= 1.10"]["pass"] is None


@pytest.mark.parametrize("where", ["same --out", "a warm GPU machine's workdir"])
def test_a_rerun_of_some_phases_keeps_the_earlier_runs_finished_ones(tmp_path, monkeypatch, where):
    """Locally the earlier run's JSON is at --out; on a warm device machine the repo's copy is
    re-sent each call (results/bench/gpu.json gone), the workdir's copy stays."""
    monkeypatch.delenv("OUT", raising=False)
    first_out, work = tmp_path / "a" / "gpu.json", tmp_path / "work"
    rerun_out = first_out if where == "same --out" else tmp_path / "b" / "gpu.json"
    first = _main("--workdir", str(work), "--out", str(first_out), "--phases", "compile", "--deadline-s", "0.001")
    # stands for a first call's finished phases, on this machine
    first["optim"] = {"exit": 0, "ratio_vs_fastest_torch": {"sgd[foreach]": 1.01}}
    first["compile"] = {"exit": 0, "compiled_over_eager": 0.8}
    assert json.loads((work / "gpu.json").read_text())["started"] == first["started"]
    for path in (first_out, work / "gpu.json"):
        path.write_text(json.dumps(first))
    # the rerun, killed at its cap
    r = _main("--workdir", str(work), "--out", str(rerun_out), "--phases", "optim", "--caps", "optim=1")
    assert r["compile"]["compiled_over_eager"] == 0.8 and r["compile"]["kept_from_run"] == first["started"]
    assert r["optim"]["timed_out"] and r["optim"]["earlier_run"]["ratio_vs_fastest_torch"] == {"sgd[foreach]": 1.01}
    assert r["target_checks"]["optimizer_over_fastest_torch <= 1.10"]["values"] == []  # the rerun's own numbers


# ---- the method ----------------------------------------------------------------------------------
class _Clock:
    """Device time as a cost model: the benchmark's clock, advanced by what the fake step does."""

    def __init__(self):
        self.t = 0.0

    def __call__(self, device=None) -> float:
        return self.t


def _fake_trainer(clock: _Clock, flush_every: int, layer_every: int, step_cost=1.0, record_cost=0.5,
                  layer_cost=2.0, flush_cost=10.0):
    """A trainer whose step costs ``step_cost``; its telemetry costs ``record_cost`` a step,
    ``layer_cost`` on per-layer steps and ``flush_cost`` per host sync (flush), flushing itself when full."""
    class Telemetry:
        def __init__(self):
            self.flush_every, self.layer_every, self.pending = flush_every, layer_every, []

        def record(self, step, *a):
            clock.t += layer_cost if step % self.layer_every == 0 else record_cost
            self.pending.append(step)

        def after_step(self):
            if len(self.pending) == self.flush_every:
                self.flush()

        def flush(self):
            if self.pending:
                clock.t += flush_cost
                self.pending.clear()
            return True

    class Trainer:
        channels_last = False
        cfg = SimpleNamespace(data=SimpleNamespace(num_classes=10))

        def __init__(self):
            self.telemetry, self.step, self.seen = Telemetry(), 0, []

        def train_step(self, images, labels):
            clock.t += step_cost
            self.telemetry.record(self.step)
            self.telemetry.after_step()
            self.seen.append(self.step)
            self.step += 1

    return Trainer()


def test_telemetry_overhead_is_the_mean_over_whole_windows_so_rare_costs_count(monkeypatch):
    """flush every 4 steps (10 units), per-layer every 8 (2 units, else 0.5), step 1 unit: per
    window of lcm(4, 8) = 8 steps, 8 + 2 + 7 * 0.5 + 2 * 10 = 33.5 units with, 8 without."""
    gpu = _gpu_bench()
    clock = _Clock()
    monkeypatch.setattr(gpu, "_now", clock)
    t = _fake_trainer(clock, flush_every=4, layer_every=8)
    t.step = 13  # mid-window (the rounds start at the next window: every round the same steps)
    sc = gpu.Scale(tiny=True)
    r = gpu.telemetry_overhead(t, sc, batch=2, res=8, device=torch.device("cpu"))
    assert r["window_steps"] == 8 and r["overhead"] == pytest.approx(33.5 / 8 - 1)
    assert r["per_window_ms"] == pytest.approx(1e3 * 25.5)
    assert r["overhead_ci95"] == [pytest.approx(33.5 / 8 - 1)] * 2  # a cost model has no noise


def test_compute_only_replays_the_loader_fed_steps(monkeypatch):
    """Same step numbers in both arms: the same flushes and per-layer steps (so their ratio is the loader's)."""
    gpu = _gpu_bench()
    clock = _Clock()
    monkeypatch.setattr(gpu, "_now", clock)
    t = _fake_trainer(clock, flush_every=4, layer_every=8)

    class Loader:
        def __len__(self):
            return 10

        def epoch(self, epoch):
            return ((torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)) for _ in range(10))

    t.train_loader = Loader()
    sc = gpu.Scale(tiny=True)
    sc.warm_steps, sc.skip_steps, sc.timed_epochs, sc.min_timed_steps = 3, 2, 2, 1
    fed = gpu.loader_fed(t, sc, torch.device("cpu"))  # epoch 0: steps 0-2; epoch 1: 3-12; epoch 2: 13-22
    assert fed["step_ranges"] == [[5, 8], [15, 8]] and fed["timed_steps"] == 16
    timed = [s for a, n in fed["step_ranges"] for s in range(a, a + n)]
    t.seen.clear()
    per_s = gpu.compute_only(t, fed["step_ranges"], batch=2, res=8, device=torch.device("cpu"))
    assert t.seen[3:] == timed  # after the 3 warm steps
    assert fed["timed_s"] == 2 * (8 + 2 + 7 * 0.5 + 2 * 10)  # each range: 8 steps, 1 per-layer step, 2 flushes
    assert per_s == pytest.approx(fed["timed_images"] / fed["timed_s"])  # the fake loader costs nothing


def test_gpu_hours_per_epoch_is_one_gpus_share_of_train_and_eval(monkeypatch):
    gpu = _gpu_bench()
    ctx = SimpleNamespace(card=lambda: "NVIDIA H100 80GB HBM3", sc=gpu.Scale(tiny=False),
                          result={"cpus": {"used": 10}})
    entry = {"images_per_s": 1000.0, "eval_images_per_s": 5000.0, "batch": 32, "workers": 10, "eval_res": 224}
    r = gpu.gpu_hours(ctx, "faithful", entry, 224)
    assert r["gpu_hours_per_epoch"] == round((1_281_167 / 1000 + 50_000 / 5000) / 3600, 4) == 0.3587
    assert r["spec_estimate"] == 0.25 and r["measured_over_estimate"] == pytest.approx(0.3587 / 0.25, abs=1e-3)
    assert r["spec_line"].startswith("gpu_hours_per_epoch: 0.25  # estimate; measured 0.3587 on one NVIDIA H100")
    assert "224 px, 32/GPU, 10 loader workers on 10 CPUs" in r["spec_line"]


def test_at_gpu_scale_each_config_runs_at_its_sweeps_own_settings(monkeypatch):
    """224 px (faithful) and 160 -> 192 px (budget), 256 / the spec's 8 GPUs = 32 per GPU with the
    lr scaled to it, the config's 10 loader workers + the task's own 3 threads = the spec's cpus_per_task,
    telemetry 50/50."""
    from imagenet_repro import config

    gpu = _gpu_bench()
    monkeypatch.setattr(gpu, "load_config", lambda path, overrides: config.build_config(  # no data files here
        config.read_yaml(path), config._parse_overrides(list(overrides)), check_paths=False))
    sc = gpu.Scale(tiny=False)
    ctx = SimpleNamespace(sc=sc, device=torch.device("cuda", 0))
    data = {"train_beton": "/x/train.beton", "val_beton": "/x/val.beton", "val_images": 512}
    f, b = gpu.flagship_cfg(ctx, "faithful", data, []), gpu.flagship_cfg(ctx, "budget", data, [])
    for cfg, res, lr in ((f, (224, 224, 224), 0.1 * 32 / 256), (b, (160, 192, 256), 0.125 * 32 / 256)):
        assert (cfg.data.batch_size, cfg.data.num_workers, cfg.optim.lr) == (32, 10, lr)
        assert sc.resolutions("faithful" if cfg is f else "budget", cfg) == res
        assert cfg.model.name == "resnet50" and cfg.model.channels_last and cfg.train.amp and cfg.data.backend == "ffcv"
        assert cfg.telemetry.flush_every == cfg.telemetry.layer_every == 50 and not cfg.train.deterministic
    assert sc.speed_configs("faithful", 32, f) == [(32, 224)] and sc.speed_configs("budget", 32, b) == [(32, 160), (512, 160)]
    for name in ("faithful", "budget"):
        s = gpu.flagship_settings(name)
        assert s["per_gpu_batch"] == 32 and s["num_workers"] == 10 and s["cpus_per_task"] == cpus_needed(f) == 13


def test_a_rerun_reuses_the_data_only_when_it_is_whole_and_of_the_same_sizes(tmp_path):
    gpu = _gpu_bench()
    sc = gpu.Scale(tiny=True)
    for name in ("train", "val"):
        (tmp_path / f"{name}.beton").write_bytes(b"x" * 10)
    data = {"key": gpu.data_key(sc), "train_beton": str(tmp_path / "train.beton"), "train_beton_bytes": 10,
            "val_beton": str(tmp_path / "val.beton"), "val_beton_bytes": 10}
    assert gpu.reusable(json.loads(json.dumps(data)), gpu.data_key(gpu.Scale(tiny=True)))
    assert not gpu.reusable(data, gpu.data_key(gpu.Scale(tiny=False)))  # other sizes
    assert not gpu.reusable(None, data["key"])  # no data.json: the data phase never finished
    (tmp_path / "val.beton").write_bytes(b"x" * 7)  # cut short
    assert not gpu.reusable(data, data["key"])
    (tmp_path / "val.beton").unlink()
    assert not gpu.reusable(data, data["key"])


def test_the_device_call_is_the_one_the_docs_and_the_carry_script_give():
    gpu = _gpu_bench()
    run = gpu.DEVICE_RUN
    assert run["carry"] == [".whl"] and gpu.GPU_DEADLINE_S + 20 < run["timeout_s"] <= 600
    line = f'command: {run["command"]}      carry: [".whl"]      timeout_s: {run["timeout_s"]}'
    for path in ("scripts/gpu-carry.sh", "scripts/gpu-run.sh", "docs/benchmarks.md"):
        assert line in (ROOT / path).read_text(), path
    # the phases in value order with their caps: within one call (and a rerun) of 15 device minutes
    assert [p.name for p in gpu.PHASES] == list(PHASES)


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
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "new_group", lambda **kw: calls.append(("new_group", kw)) or "control")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    d, device = distributed.init_from_env("cuda", timeout_min=3)
    assert (d.rank, d.world_size, d.local_rank) == (6, 8, 2) and device == torch.device("cuda", 2)
    timeout = datetime.timedelta(minutes=3)  # the config's, not torch's 10-minute NCCL default
    assert calls == [("nccl", {"rank": 6, "world_size": 8, "device_id": torch.device("cuda", 2), "timeout": timeout}),
                     ("new_group", {"backend": "gloo", "timeout": timeout})]  # the host-side control group
    assert d.control == "control"


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

    def init_from_env(*args, **kwargs):
        seen.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
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
