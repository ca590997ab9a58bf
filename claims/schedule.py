"""What the claims of a run will cost, in which order they run, and the ``--budget`` that stops them
(a pytest plugin the root conftest loads).

* At collection, a line per claim estimates its cost from measurements (training and measuring
  seconds per minimum from ``claims/timings.json``, a case's own work from :mod:`claims.profiles`): a minimum
  already in the cache costs only its measurement, and a minimum shared by several claims is
  counted where it is first needed. What has no measurement is reported as "unmeasured".
* With ``--budget``, whole claims run cheapest first, and once the budget is spent the run stops
  (``session.shouldstop``); a case running at that moment is interrupted and reported as not run
  (its finished minima stay cached, and a training run resumes from its checkpoint). The report
  lists the cases that did not run. Serial runs only: ``--budget`` is refused under pytest-xdist.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

import pytest

from claims.options import suite_options
from claims.profiles import TOY_CASE_SECONDS
from claims.suite import Suite, case_id, minima_in, suite_of
from fixtures.minima import minima_cache_of
from stabcheck.experiments.setups import MinimumConfig


def claim_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("claim")
    return marker.args[0] if marker else None


def duration(seconds: float) -> str:
    """``1h 5m``, ``12m 30s`` or ``45 s``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds} s"


def plural(count: int, noun: str, nouns: str = "") -> str:
    """``1 case``, ``3 cases``; ``nouns`` for an irregular plural (``minima``)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


@dataclass
class Cost:
    """Estimated seconds of what has a measurement, and how many parts have none."""

    seconds: float = 0.0
    unmeasured: int = 0
    cases: int = 0
    minima: int = 0
    cached: int = 0

    def add(self, seconds: float | None) -> None:
        if seconds is None:
            self.unmeasured += 1
        else:
            self.seconds += seconds

    def __iadd__(self, other: "Cost") -> "Cost":
        for name in ("seconds", "unmeasured", "cases", "minima", "cached"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    @property
    def text(self) -> str:
        if self.unmeasured and not self.seconds:
            return "unmeasured"
        known = f"≈ {duration(self.seconds)}" if not self.unmeasured else f"≥ {duration(self.seconds)}"
        return known + (f" + {plural(self.unmeasured, 'part')} unmeasured" if self.unmeasured else "")


class Estimator:
    """Costs of cases given what is cached and what earlier cases of the run already trained and measured."""

    def __init__(self, suite: Suite, cached: set[MinimumConfig]):
        self.suite = suite
        self.cached = cached
        self.done: set[MinimumConfig] = set()
        self.unmeasured: dict[str, None] = {}   # what has no timing yet, in order, each once

    def case(self, item: pytest.Item) -> Cost:
        params = getattr(item, "callspec", None)
        minima = list(dict.fromkeys(minima_in(list(params.params.values())) if params else []))
        claim = claim_of(item)
        cost = Cost(cases=1)
        plans = self.suite.profile.plans
        if not minima and claim in TOY_CASE_SECONDS:
            own = TOY_CASE_SECONDS[claim]
        else:
            own = plans[claim].seconds_of(item.originalname) if claim in plans else None
        cost.add(own)
        if own is None:
            self.unmeasured[f"{claim} {item.originalname}"] = None
        for config in minima:
            if config in self.done:
                continue
            self.done.add(config)
            cost.minima += 1
            if config in self.cached:
                cost.cached += 1
            else:
                train = self.suite.profile.train_cost(config)
                cost.add(train)
                if train is None:
                    self.unmeasured[f"training {case_id(config).rpartition('-seed=')[0]}"] = None
            cost.add(self.suite.profile.measure_seconds)
        return cost

    def claim(self, items: list[pytest.Item]) -> Cost:
        total = Cost()
        for item in items:
            total += self.case(item)
        return total


@dataclass
class Schedule:
    """The run's plan: estimated costs, the order of claims, and the budget's state."""

    claims: dict[str, Cost] = field(default_factory=dict)
    estimates: dict[str, str] = field(default_factory=dict)    # nodeid → estimated cost text
    order: list[str] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)        # what the estimate has no timing for
    budget_s: float | None = None
    budget_text: str = ""
    started: float = 0.0
    stopped: str = ""
    interrupted: str = ""     # nodeid of the case the budget interrupted
    running: str = ""         # nodeid of the case in its call phase

    def spent(self) -> bool:
        return self.budget_s is not None and time.monotonic() - self.started >= self.budget_s

    def stop_reason(self) -> str:
        return f"the budget of {self.budget_text} was spent after {duration(time.monotonic() - self.started)}"


SCHEDULE = pytest.StashKey[Schedule]()


def schedule_of(config: pytest.Config) -> Schedule:
    if SCHEDULE not in config.stash:
        options = suite_options(config)
        config.stash[SCHEDULE] = Schedule(budget_s=options.budget_s, budget_text=options.budget_text)
    return config.stash[SCHEDULE]


def pytest_configure(config):
    schedule = schedule_of(config)
    if schedule.budget_s is not None and (getattr(config.option, "numprocesses", None) or
                                          hasattr(config, "workerinput")):
        raise pytest.UsageError("--budget stops a serial run: drop -n (pytest-xdist) or drop --budget")


def _cached(config: pytest.Config, minima: list[MinimumConfig]) -> set[MinimumConfig]:
    cache = minima_cache_of(config)
    return {c for c in minima if cache.path(c).exists()}


def _by_claim(items: list[pytest.Item]) -> dict[str, list[pytest.Item]]:
    groups: dict[str, list[pytest.Item]] = {}
    for item in items:
        claim = claim_of(item)
        if claim:
            groups.setdefault(claim, []).append(item)
    return groups


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(session, config, items):
    groups = _by_claim(items)
    if not groups:
        return
    schedule, suite = schedule_of(config), suite_of(config)
    minima = [c for item in items if hasattr(item, "callspec") for c in minima_in(list(item.callspec.params.values()))]
    cached = _cached(config, minima)
    if schedule.budget_s is not None:
        schedule.order = _cheapest_first(groups, suite, cached)
        others = [item for item in items if not claim_of(item)]
        items[:] = others + [item for claim in schedule.order for item in groups[claim]]
    else:
        schedule.order = list(groups)
    estimator = Estimator(suite, cached)
    for claim in schedule.order:
        schedule.claims[claim] = Cost()
        for item in groups[claim]:
            cost = estimator.case(item)
            schedule.estimates[item.nodeid] = cost.text
            schedule.claims[claim] += cost
    schedule.unmeasured = list(estimator.unmeasured)


def _cheapest_first(groups: dict[str, list[pytest.Item]], suite: Suite, cached: set[MinimumConfig]) -> list[str]:
    """Claims in the order that finishes whole claims soonest: at each step the one that costs least
    given the minima earlier claims trained; fewer unmeasured parts first, since their cost is unknown."""
    order: list[str] = []
    done: set[MinimumConfig] = set()
    while len(order) < len(groups):
        costs = {}
        for claim in groups:
            if claim not in order:
                trial = Estimator(suite, cached)
                trial.done = set(done)
                costs[claim] = trial.claim(groups[claim])
        best = min(costs, key=lambda c: (costs[c].unmeasured, costs[c].seconds))
        order.append(best)
        done |= {m for item in groups[best] if hasattr(item, "callspec")
                 for m in minima_in(list(item.callspec.params.values()))}
    return order


def pytest_report_collectionfinish(config, start_path, items):
    schedule = schedule_of(config)
    if not schedule.claims:
        return []
    suite = suite_of(config)
    lines = [f"claims cost estimate (scale {suite.scale}, one core of the CI CPU; cached minima cost only their "
             f"measurement; shared minima count where first needed):"]
    total = Cost()
    for claim in schedule.order:
        cost = schedule.claims[claim]
        total += cost
        minima = f", {plural(cost.minima, 'minimum', 'minima')} ({cost.cached} cached)" if cost.minima else ""
        lines.append(f"  {claim:<4} {plural(cost.cases, 'case'):>9}{minima}: {cost.text}")
    lines.append(f"  total {plural(total.cases, 'case')}, {plural(total.minima, 'minimum', 'minima')} "
                 f"({total.cached} cached): {total.text}")
    if schedule.unmeasured:
        lines.append("  unmeasured (no timing recorded in claims/timings.json or claims/profiles.py): "
                     + ", ".join(schedule.unmeasured))
    if schedule.budget_s is not None:
        lines.append(f"--budget {schedule.budget_text}: whole claims run cheapest first ({', '.join(schedule.order)}); "
                     "the run stops when the budget is spent")
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    """The budget counts from the first case to the last; the timer is off before the report is written."""
    schedule = schedule_of(session.config)
    schedule.started = time.monotonic()
    if schedule.budget_s is None:
        return (yield)

    def on_alarm(signum, frame):
        schedule.stopped = schedule.stop_reason()
        session.shouldstop = schedule.stopped
        if schedule.running:
            schedule.interrupted = schedule.running
            pytest.skip(f"interrupted: {schedule.stopped}")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, schedule.budget_s)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    schedule = schedule_of(item.config)
    schedule.running = item.nodeid
    try:
        if schedule.spent():  # the budget ran out during this case's setup
            schedule.interrupted = item.nodeid
            schedule.stopped = schedule.stop_reason()
            item.session.shouldstop = schedule.stopped
            pytest.skip(f"not started: {schedule.stopped}")
        return (yield)
    finally:
        schedule.running = ""
