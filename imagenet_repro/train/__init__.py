"""Training: the loop, norm telemetry, checkpoints, schedules, DDP set-up."""


def run_training(cfg, out_dir, on_step=None):  # noqa: D103  (imported lazily: keeps `import imagenet_repro.train` light)
    from imagenet_repro.train.loop import run_training as _run

    return _run(cfg, out_dir, on_step=on_step)


run_training.__doc__ = "Train (or resume) one run into ``out_dir``; see imagenet_repro.train.loop.run_training."
