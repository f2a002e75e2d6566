"""Readiness of a process's own background work.

Long-running parts of a role (the settlement consumer, the scheduler's loops, the publishers)
report here when they cannot do their job: a loop that died, a consumer that makes no progress
while its lag grows. `/readyz` of the process answers 503 while any problem is reported, so an
orchestrator stops routing to it or restarts it. Problems are keyed by component; `ok` clears one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    reason: str
    since: float
    """`time.time()` when first reported."""


class Health:
    """Problems of this process's components, by component name."""

    def __init__(self) -> None:
        self._problems: dict[str, Problem] = {}

    def fail(self, component: str, reason: str) -> None:
        """Report that `component` cannot do its job, and why (kept until `ok`)."""
        known = self._problems.get(component)
        since = known.since if known is not None else time.time()
        self._problems[component] = Problem(reason, since)

    def ok(self, component: str) -> None:
        """`component` works again."""
        self._problems.pop(component, None)

    def problems(self) -> dict[str, str]:
        """Component -> reason, for every component reporting a problem."""
        return {name: problem.reason for name, problem in self._problems.items()}

    def clear(self) -> None:
        self._problems.clear()


HEALTH = Health()
"""The process's registry: components report into it, `/readyz` reads it."""
