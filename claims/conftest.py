"""Fixtures of the claims (tests ask for them by name; no module imports a fixture) and their parametrisation.

* ``suite``: this run's :class:`claims.suite.Suite` (profile of ``--scale``, seeds from ``--seed``
  and ``--seeds-per-setting``); ``base_seed``: ``--seed``.
* ``run_minima``: every minimum the run's selected cases need.
* ``measured_minimum(config)``: the trained minimum (``trained_minimum``, cached on disk) with a, s
  and Theorem 1 measured once per run however many claims ask. The first time a setting is asked for,
  every seed of it that the run's selected cases need is trained together where the ensemble
  trainer reproduces ``train`` (``MinimaCache.get_many``).
* ``claim``: the report recorder (:mod:`claims.report_plugin`).
* ``@pytest.mark.cases(argument=cases_of)`` parametrises a test from the suite (:func:`claims.suite.parametrize_cases`).
"""
from __future__ import annotations

import pytest

from claims.measured import MeasuredMinimum, measure
from claims.suite import Suite, minima_in, parametrize_cases, suite_of
from stabcheck.experiments.setups import MinimumConfig

#: Every minimum the run's selected cases need, grouped by setting (the config with seed 0).
RUN_MINIMA = pytest.StashKey[dict[MinimumConfig, list[MinimumConfig]]]()


def pytest_configure(config):
    config.addinivalue_line("markers", "cases(**arguments): parametrise each argument with cases_of(suite) "
                                       "(claims/suite.py)")


def pytest_generate_tests(metafunc):
    parametrize_cases(metafunc)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(config, items):
    settings: dict[MinimumConfig, list[MinimumConfig]] = {}
    for item in items:
        params = getattr(item, "callspec", None)
        for minimum in minima_in(list(params.params.values())) if params else ():
            members = settings.setdefault(minimum.with_(seed=0), [])
            if minimum not in members:
                members.append(minimum)
    config.stash[RUN_MINIMA] = settings


@pytest.fixture(scope="session")
def suite(pytestconfig) -> Suite:
    return suite_of(pytestconfig)


@pytest.fixture(scope="session")
def base_seed(suite) -> int:
    """``--seed``: every random draw of a claim derives from it."""
    return suite.base_seed


@pytest.fixture(scope="session")
def run_minima(pytestconfig) -> frozenset[MinimumConfig]:
    """Every minimum the run's selected cases train: what a case may compare its own minima with (a
    claim that reaches for a deselected one would train it unasked, e.g. GD at η = 0.01 on a CPU)."""
    return frozenset(c for members in pytestconfig.stash.get(RUN_MINIMA, {}).values() for c in members)


@pytest.fixture(scope="session")
def measured_minimum(trained_minimum, minima_cache, suite, device, pytestconfig):
    """Factory ``measured_minimum(config) -> MeasuredMinimum``: trained and measured at most once per run."""
    held: dict[MinimumConfig, MeasuredMinimum] = {}
    settings = pytestconfig.stash.get(RUN_MINIMA, {})
    trained: set[MinimumConfig] = set()

    def get(config: MinimumConfig) -> MeasuredMinimum:
        if config not in held:
            setting = config.with_(seed=0)
            if setting not in trained:
                trained.add(setting)
                minima_cache.get_many(settings.get(setting, [config]))
            held[config] = measure(trained_minimum(config), suite.profile.measurement, suite.base_seed, device)
        return held[config]

    return get
