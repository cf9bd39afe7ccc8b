"""How big each scenario is: the issue's full size, a quick version, and a smoke test."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class Plan:
    """Sizes of every scenario. ``full`` marks the sizes that the issue's targets are for."""

    name: str
    full: bool
    # 1: upload of a second run
    code_bytes: int
    code_files: int
    # 2: checkpoint mirroring
    ckpt_bytes: int
    ckpt_cycles: int
    # 3: throughput ceiling
    big_file: int
    repeats: int
    # 4: reaction
    requests: int
    # 4b: start on an ssh host (bin/ of code_bytes in code_files, as scenario 1)
    ssh_requests: int
    # 5: scale of the share: projects at each step, archived runs per project, idle window
    project_steps: tuple[int, ...]
    runs_per_project: int
    idle_window: float
    # 6: burst
    burst_requests: int
    burst_projects: int
    # 8: freshness: checkpoints by rename, how many, how big, seconds apart
    fresh_ckpts: int
    fresh_bytes: int
    fresh_every: float
    # 9: a slurm host: measured submissions, runs in flight, how long they are watched (s)
    slurm_requests: int
    slurm_in_flight: int
    slurm_window: float


FULL = Plan(
    name="full",
    full=True,
    code_bytes=100 * MIB,
    code_files=2000,
    ckpt_bytes=10 * MIB,
    ckpt_cycles=30,
    big_file=500 * MIB,
    repeats=3,
    requests=20,
    ssh_requests=5,
    project_steps=(10, 100, 1000),
    runs_per_project=10,
    idle_window=31.0,  # covers one full rescan of the share (rescan = 30 s)
    burst_requests=200,
    burst_projects=20,
    fresh_ckpts=10,
    fresh_bytes=10 * MIB,
    fresh_every=3.0,
    slurm_requests=10,
    slurm_in_flight=20,
    slurm_window=30.0,
)

QUICK = Plan(
    name="quick",
    full=False,
    code_bytes=20 * MIB,
    code_files=400,
    ckpt_bytes=2 * MIB,
    ckpt_cycles=10,
    big_file=100 * MIB,
    repeats=1,
    requests=6,
    ssh_requests=3,
    project_steps=(10, 100, 1000),
    runs_per_project=2,
    idle_window=3.0,
    burst_requests=20,
    burst_projects=4,
    fresh_ckpts=5,
    fresh_bytes=2 * MIB,
    fresh_every=3.0,
    slurm_requests=5,
    slurm_in_flight=20,
    slurm_window=10.0,
)

SMOKE = Plan(
    name="smoke",
    full=False,
    code_bytes=2 * MIB,
    code_files=40,
    ckpt_bytes=256 << 10,
    ckpt_cycles=3,
    big_file=8 * MIB,
    repeats=1,
    requests=2,
    ssh_requests=1,
    project_steps=(2, 5),
    runs_per_project=1,
    idle_window=1.0,
    burst_requests=4,
    burst_projects=2,
    fresh_ckpts=2,
    fresh_bytes=256 << 10,
    fresh_every=2.0,
    slurm_requests=1,
    slurm_in_flight=4,
    slurm_window=4.0,
)

PLANS = {p.name: p for p in (FULL, QUICK, SMOKE)}
