"""``repro status SPEC``: counts by state and one line per run (see :mod:`.state`)."""
from __future__ import annotations

from imagenet_repro.sweep.spec import SHORT_NAMES, load_spec
from imagenet_repro.sweep.state import RunState, classify_all, format_counts, run_refs

FIXED = ("optimizer", "lr", "wd", "seed")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None or value == "" else str(value)


def run_table(states: list[RunState]) -> str:
    """A plain-text table: id, optimizer, lr, wd, seed, other axes, state, epoch, top-1, job."""
    extra = []
    for st in states:
        for key in st.ref.point:
            short = SHORT_NAMES.get(key, key)
            if short not in FIXED and short not in extra:
                extra.append(short)
    header = ["run_id", *FIXED, *extra, "state", "epoch", "top1", "job"]
    rows = []
    for st in states:
        point = {SHORT_NAMES.get(k, k): v for k, v in st.ref.point.items()}
        epoch = st.status.get("epoch")
        epochs = st.ref.summary.get("epochs")
        top1 = st.status.get("top1")
        rows.append([st.ref.run_id, *(_fmt(st.ref.summary.get(k)) for k in FIXED), *(_fmt(point.get(k)) for k in extra),
                     st.state, f"{epoch}/{epochs}" if epoch is not None else f"-/{epochs}",
                     f"{top1:.4f}" if isinstance(top1, (int, float)) else "-",
                     st.job_id + (f" ({st.job_state})" if st.job_state and st.state not in ("done", "diverged") else "")])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows])


def print_status(spec_path: str, show_runs: bool = True) -> int:
    from imagenet_repro.sweep.stages import status_refs

    spec = load_spec(spec_path)
    refs = run_refs(spec)
    states = classify_all(status_refs(spec, refs))
    staged = f" (staged: stage 1 and the runs launched of a {len(refs)}-run grid)" if spec.stages else ""
    print(f"sweep {spec.name}: {len(states)} runs{staged} in {spec.sweep_dir}: {format_counts(states)}")
    if show_runs and states:
        print(run_table(states))
        failed = [st for st in states if st.state == "failed"]
        if failed:
            print("failed runs:")
            for st in failed:
                print(f"  {st.ref.run_id}: {st.reason}")
    return 0
