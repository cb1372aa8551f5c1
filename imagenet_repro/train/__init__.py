"""Training: the loop (:mod:`.loop`, ``run_training``), norm telemetry, checkpoints, LR schedules, DDP set-up."""
