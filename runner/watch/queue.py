"""Which queued run starts next, which ones must wait, and which can never run.

Pure functions over plain values so the rules can be property-tested without processes:

* Order: `priority` (higher first), then the order the daemon first saw the spec version
  (`seq`, a counter persisted with the daemon's state, so the order survives restarts and is
  immune to clock jumps), then the run key (a total order: decisions never depend on the
  order the caller lists items in).
* A run whose model source is `job:NAME` starts only once job NAME has succeeded, waits while
  NAME is pending or has never been seen (its file may land later), and fails with reason
  `dependency` once NAME's latest run failed, was cancelled or is invalid, or when the queued
  runs depend on each other in a cycle (nothing in a cycle could ever start).
* Dependency failures are decided one level at a time; the daemon applies them, recomputes the
  states of the jobs and asks again, so failure runs down a chain `C -> B -> A` in a few rounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Blocked", "Decision", "DepState", "Item", "decide", "dependency_cycles", "queue_order"]


class DepState(StrEnum):
    """What a job means to the runs that take their model from it."""

    SUCCEEDED = "succeeded"  # its latest run succeeded and nothing newer is pending
    PENDING = "pending"  # it has a queued, running or interrupted run
    FAILED = "failed"  # its latest run failed, was cancelled or is invalid
    MISSING = "missing"  # no run of it exists (yet)


@dataclass(frozen=True)
class Item:
    """A queued run as the scheduler sees it."""

    key: str  # "<job>/<run-id>": unique
    job: str
    priority: int = 0
    seq: int = 0
    depends_on: tuple[str, ...] = ()

    @property
    def order(self) -> tuple[int, int, str]:
        return (-self.priority, self.seq, self.key)


@dataclass(frozen=True)
class Blocked:
    item: Item
    why: str


@dataclass(frozen=True)
class Decision:
    start: Item | None  # the run to start now (when no run is active)
    fail: tuple[Blocked, ...]  # fail now with reason `dependency`
    wait: tuple[Blocked, ...]  # stay queued; `why` is shown by `runner status`
    ready: tuple[Item, ...] = ()  # every run that could start now, in order (`start` is the first): a
    # cluster executor (Slurm) submits them all; the local one runs `start` only


def queue_order(items: Iterable[Item]) -> list[Item]:
    """The order runs are considered in: priority, then first seen, then key."""
    return sorted(items, key=lambda item: item.order)


def dependency_cycles(items: Iterable[Item]) -> dict[str, tuple[str, ...]]:
    """Jobs that wait on themselves through queued runs: job -> the jobs of its cycle (sorted).

    Edges go from a queued run's job to each dependency that also has a queued run; a job is
    cyclic when it is in a strongly connected component with more than one job, or depends on
    itself.
    """
    items = list(items)
    jobs = {item.job for item in items}
    graph: dict[str, set[str]] = {job: set() for job in jobs}
    for item in items:
        graph[item.job].update(dep for dep in item.depends_on if dep in jobs)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cyclic: dict[str, tuple[str, ...]] = {}
    counter = 0
    for root in sorted(graph):  # iterative Tarjan: no recursion limit on long chains
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    members = tuple(sorted(component))
                    for member in members:
                        cyclic[member] = members
    return cyclic


def decide(queued: Iterable[Item], deps: Mapping[str, DepState], notes: Mapping[str, str] | None = None) -> Decision:
    """Sort the queued runs into start / fail / wait.

    `deps` gives the state of every job a queued run depends on (absent means MISSING);
    `notes` optionally says more about a job for the messages (e.g. "its latest run is invalid",
    or why a pending one does not move).
    """
    items = queue_order(queued)
    notes = notes or {}
    cycles = dependency_cycles(items)
    ready: list[Item] = []
    fail: list[Blocked] = []
    wait: list[Blocked] = []
    for item in items:
        cycle = cycles.get(item.job)
        if cycle is not None and any(dep in cycle for dep in item.depends_on):
            fail.append(Blocked(item, "dependency cycle between the jobs " + ", ".join(cycle)))
            continue
        states = {dep: deps.get(dep, DepState.MISSING) for dep in item.depends_on}
        failed = [dep for dep, state in states.items() if state is DepState.FAILED]
        if failed:
            fail.append(
                Blocked(
                    item,
                    "; ".join(
                        f"job:{dep} did not succeed" + (f" ({notes[dep]})" if dep in notes else "") for dep in failed
                    ),
                )
            )
            continue
        waiting = [dep for dep, state in states.items() if state is not DepState.SUCCEEDED]
        if waiting:
            wait.append(
                Blocked(
                    item,
                    ", ".join(
                        f"job:{dep}"
                        + (
                            " (no run of it yet)"
                            if states[dep] is DepState.MISSING
                            else f" ({notes[dep]})"
                            if dep in notes
                            else ""
                        )
                        for dep in waiting
                    ),
                )
            )
        else:
            ready.append(item)
    return Decision(ready[0] if ready else None, tuple(fail), tuple(wait), tuple(ready))
