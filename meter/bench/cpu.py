"""CPU time of another process, as precise as the platform gives it."""

from __future__ import annotations

import contextlib
import sys
import time

import psutil  # type: ignore[import-untyped]

_CPUCLOCK_SCHED = 2


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) process `pid` has used so far.

    On Linux this reads the process's own CPU clock (`clock_gettime` of the clock id
    `MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)`), counted in nanoseconds. Elsewhere it is
    psutil's times, counted in clock ticks (10 ms on most systems), so a short window of a
    quick process can read 0.
    """
    if sys.platform == "linux":
        try:
            return time.clock_gettime((~pid << 3) | _CPUCLOCK_SCHED)
        except OSError:
            pass  # (a kernel without per-process clocks: the ticks below)
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def server_cpu_s(pid: int) -> float:
    """CPU seconds used so far by server process `pid`, its live children and the children it
    has waited for. A server that forks a process per connection (PostgreSQL's postmaster) reaps
    its backends as they exit, and their time then counts in its children's, so a window
    between two readings holds the work of backends that came and went within it."""
    server = psutil.Process(pid)
    times = server.cpu_times()
    total: float = process_cpu_s(pid) + times.children_user + times.children_system
    for child in server.children():
        with contextlib.suppress(psutil.Error, OSError):
            total += process_cpu_s(child.pid)
    return total
