"""CPU time and peak memory per process type, read from /proc.

A process type is either a process tree (a Procfile process with its pool children or web
workers) or every process of one command name (PostgreSQL's backends, RabbitMQ's beam.smp).
CPU time of a type = user + system time of its living processes + the time of children they
reaped (cutime, cstime), so a pool child or backend that exited mid-step still counts.
"""

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    ppid: int
    name: str
    cpu_seconds: float  # own user + system
    reaped_cpu_seconds: float  # waited-for children's user + system
    peak_rss_mb: float  # VmHWM


def read_process(pid: int) -> ProcessSample | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        status = (PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may contain spaces: split after the last ')'.
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is state (stat field 3); utime, stime, cutime, cstime are stat fields 14-17.
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    peak_kb = 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            peak_kb = int(line.split()[1])
            break
    return ProcessSample(
        pid=pid,
        ppid=ppid,
        name=name,
        cpu_seconds=(utime + stime) / CLOCK_TICKS,
        reaped_cpu_seconds=(cutime + cstime) / CLOCK_TICKS,
        peak_rss_mb=peak_kb / 1024,
    )


def all_processes() -> list[ProcessSample]:
    samples = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (sample := read_process(int(entry.name))) is not None:
            samples.append(sample)
    return samples


def host_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host since boot, from /proc/stat."""
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # up to steal; guest time is already in user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass(frozen=True)
class TypeUsage:
    cpu_seconds: float
    peak_rss_mb: float
    processes: int


class UsageMeter:
    """Samples CPU seconds and peak RSS of each process type.

    `trees` maps a type to the root pid of its process tree; `names` maps a type to a command
    name (every process with that name belongs to it).
    """

    def __init__(self, *, trees: dict[str, int], names: dict[str, str]) -> None:
        self.trees = trees
        self.names = names

    def sample(self) -> dict[str, TypeUsage]:
        processes = all_processes()
        children: dict[int, list[ProcessSample]] = {}
        for process in processes:
            children.setdefault(process.ppid, []).append(process)
        by_pid = {p.pid: p for p in processes}
        usage = {}
        for kind, root in self.trees.items():
            members = _tree(by_pid.get(root), children)
            usage[kind] = _usage(members)
        for kind, name in self.names.items():
            usage[kind] = _usage([p for p in processes if p.name == name])
        return usage


def _tree(root: ProcessSample | None, children: dict[int, list[ProcessSample]]) -> list[ProcessSample]:
    if root is None:
        return []
    members, stack = [], [root]
    while stack:
        process = stack.pop()
        members.append(process)
        stack.extend(children.get(process.pid, []))
    return members


def _usage(members: list[ProcessSample]) -> TypeUsage:
    return TypeUsage(
        cpu_seconds=sum(p.cpu_seconds + p.reaped_cpu_seconds for p in members),
        peak_rss_mb=max((p.peak_rss_mb for p in members), default=0.0),
        processes=len(members),
    )
