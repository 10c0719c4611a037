"""The scheduler's rules hold for any queue: order, dependencies, cycles, and a whole run of it."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from runner.watch.queue import DepState, Item, decide, dependency_cycles

JOBS = list("abcdefgh")


@st.composite
def queues(draw: st.DrawFn) -> tuple[list[Item], dict[str, DepState]]:
    """Queued runs (several may share a job) and a *consistent* dependency map: a job with a
    queued run is pending, as the daemon computes it."""
    n = draw(st.integers(min_value=0, max_value=10))
    items = [
        Item(
            key=f"{job}/{i:03d}",
            job=job,
            priority=draw(st.integers(min_value=-2, max_value=2)),
            seq=draw(st.integers(min_value=0, max_value=5)),  # ties on purpose
            depends_on=tuple(draw(st.lists(st.sampled_from(JOBS), max_size=3, unique=True))),
        )
        for i, job in enumerate(draw(st.lists(st.sampled_from(JOBS), min_size=n, max_size=n)))
    ]
    deps = {
        job: draw(st.sampled_from([DepState.SUCCEEDED, DepState.FAILED, DepState.MISSING, DepState.PENDING]))
        for job in JOBS
    }
    for item in items:
        deps[item.job] = DepState.PENDING
    return items, deps


def _reaches_itself(graph: dict[str, set[str]], start: str) -> bool:
    seen, todo = set(), list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node == start:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


@settings(max_examples=150, deadline=None)
@given(queues())
def test_cycles_are_exactly_the_jobs_that_reach_themselves(queue: tuple[list[Item], dict[str, DepState]]) -> None:
    items, _ = queue
    jobs = {item.job for item in items}
    graph: dict[str, set[str]] = {job: set() for job in jobs}
    for item in items:
        graph[item.job].update(d for d in item.depends_on if d in jobs)
    cycles = dependency_cycles(items)
    assert set(cycles) == {job for job in jobs if _reaches_itself(graph, job)}
    for job, members in cycles.items():
        assert job in members and all(cycles[m] == members for m in members)


@settings(max_examples=250, deadline=None)
@given(queues(), st.randoms(use_true_random=False))
def test_decide_starts_the_best_ready_run_fails_the_hopeless_and_waits_the_rest(
    queue: tuple[list[Item], dict[str, DepState]], rnd: random.Random
) -> None:
    items, deps = queue
    decision = decide(items, deps)
    cycles = dependency_cycles(items)
    failed = {b.item.key for b in decision.fail}
    waiting = {b.item.key for b in decision.wait}
    started = {decision.start.key} if decision.start else set()
    assert not (failed & waiting) and not (started & (failed | waiting))

    def in_cycle(item: Item) -> bool:
        return item.job in cycles and any(d in cycles[item.job] for d in item.depends_on)

    def hopeless(item: Item) -> bool:
        return in_cycle(item) or any(deps.get(d, DepState.MISSING) is DepState.FAILED for d in item.depends_on)

    ready = [i for i in items if not hopeless(i) and all(deps.get(d) is DepState.SUCCEEDED for d in i.depends_on)]
    for item in items:
        assert (item.key in failed) == hopeless(item), item
        assert (item.key in waiting) == (not hopeless(item) and item not in ready), item
    if ready:
        best = min(ready, key=lambda i: (-i.priority, i.seq, i.key))
        assert decision.start == best, "the highest priority, earliest seen ready run starts"
    else:
        assert decision.start is None
    for blocked in decision.fail:
        assert "dependency cycle" in blocked.why or "did not succeed" in blocked.why

    shuffled = list(items)
    rnd.shuffle(shuffled)
    again = decide(shuffled, deps)
    assert again.start == decision.start, "the decision does not depend on the listing order"
    assert {b.item.key for b in again.fail} == failed and {b.item.key for b in again.wait} == waiting


@st.composite
def workloads(draw: st.DrawFn) -> tuple[dict[str, Item], dict[str, bool], set[str]]:
    """Jobs with priorities and dependencies (on each other, or on jobs that never appear),
    whether each would succeed if run, and the jobs that already succeeded before."""
    names = draw(st.lists(st.sampled_from(JOBS), min_size=1, max_size=len(JOBS), unique=True))
    items = {
        name: Item(
            f"{name}/1",
            name,
            draw(st.integers(-2, 2)),
            seq,
            tuple(draw(st.lists(st.sampled_from(JOBS), max_size=2, unique=True))),
        )
        for seq, name in enumerate(names)
    }
    outcome = {name: draw(st.booleans()) for name in names}
    done_before = set(draw(st.lists(st.sampled_from([j for j in JOBS if j not in items] or ["zz"]), max_size=2)))
    return items, outcome, done_before


@settings(max_examples=200, deadline=None)
@given(workloads())
def test_a_whole_queue_drains_in_dependency_and_priority_order(
    workload: tuple[dict[str, Item], dict[str, bool], set[str]],
) -> None:
    """Simulate the daemon: decide, apply dependency failures, run the chosen job to its outcome,
    repeat. Nothing runs before its dependencies succeeded, nothing hopeless is left queued,
    and every start is the best ready choice at that moment."""
    items, succeeds, done_before = workload
    state: dict[str, str] = {name: "queued" for name in items}
    started: list[str] = []

    def dep_state(job: str) -> DepState:
        if job in state:
            return {"queued": DepState.PENDING, "succeeded": DepState.SUCCEEDED}.get(state[job], DepState.FAILED)
        return DepState.SUCCEEDED if job in done_before else DepState.MISSING

    for _ in range(4 * len(items) + 2):
        queued = [items[j] for j, s in state.items() if s == "queued"]
        deps = {d: dep_state(d) for item in queued for d in item.depends_on}
        decision = decide(queued, deps)
        for blocked in decision.fail:
            state[blocked.item.job] = "dependency"
        if decision.fail:
            continue
        if decision.start is None:
            break
        job = decision.start.job
        assert all(dep_state(d) is DepState.SUCCEEDED for d in items[job].depends_on), "ran before its dependency"
        started.append(job)
        state[job] = "succeeded" if succeeds[job] else "failed"
    else:
        raise AssertionError("the queue did not drain")

    for job, final in state.items():
        deps_of = items[job].depends_on
        if final == "dependency":
            assert (
                any(dep_state(d) is DepState.FAILED for d in deps_of)
                or job in deps_of
                or any(state.get(d) == "dependency" for d in deps_of)
            ), f"{job} failed without a failed dependency"
        if final == "queued":  # only what waits, transitively, on a job that never appeared
            assert any(dep_state(d) in (DepState.MISSING, DepState.PENDING) for d in deps_of)
    leftover = [items[j] for j, s in state.items() if s == "queued"]
    assert not dependency_cycles(leftover), "a cycle is failed, never left waiting"
    assert decide(leftover, {d: dep_state(d) for i in leftover for d in i.depends_on}).start is None
