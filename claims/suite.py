"""The claims' view of one run, and the one way their cases are parametrised.

* :class:`Suite`: the profile of ``--scale`` (:mod:`claims.profiles`) with every grid's seeds shifted
  by ``--seed`` and trimmed to ``--seeds-per-setting``; built once per run from
  :func:`claims.options.suite_options` and handed to tests by the ``suite`` fixture.
* The ``cases`` marker: ``@pytest.mark.cases(gd_config=gd_configs)`` parametrises the argument
  ``gd_config`` with what ``gd_configs(suite)`` returns: a mapping id → value, or a list of
  :class:`MinimumConfig` (ids from :func:`case_id`, e.g. ``fnn-lr=0.1-B=5-seed=0``). At ``--scale
  paper`` every case that needs a trained minimum carries the ``paper`` mark (deselect those with
  ``-m "not paper"``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping, Sequence

import pytest

from claims.options import suite_options
from claims.profiles import Plan, Profile, profile
from stabcheck.experiments.setups import MinimumConfig

NO_NUMBER = "paper gives no number"


def case_id(config: MinimumConfig) -> str:
    """The test id of a config: its :attr:`~stabcheck.experiments.setups.MinimumConfig.label`, e.g.
    ``fnn-lr=0.1-B=5-mu=0.5-seed=0`` (``B=n``: GD)."""
    return config.label


def setting_of(config: MinimumConfig) -> tuple:
    """(setup, η, B or None for GD): the key of a plan's declaration about one setting."""
    return config.setup.name, config.lr, None if config.is_gd else config.batch_size


def minima_in(value: Any) -> Iterator[MinimumConfig]:
    """The :class:`MinimumConfig` objects inside a case's value (nested in tuples, lists or dicts)."""
    if isinstance(value, MinimumConfig):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from minima_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from minima_in(v)


@dataclass(frozen=True)
class Suite:
    """The profile of ``--scale`` with seeds shifted by ``--seed`` and trimmed to ``seeds_per_setting``."""

    profile: Profile
    base_seed: int
    seeds_per_setting: int | None

    @property
    def scale(self) -> str:
        return self.profile.name

    def plan(self, claim: str) -> Plan:
        return self.profile.plan(claim)

    def threshold(self, claim: str, name: str) -> float:
        """The value of one of a claim's thresholds (:mod:`claims.profiles` gives the reason for it)."""
        return self.plan(claim).thresholds[name].value

    def configs(self, *claims: str) -> list[MinimumConfig]:
        """Every minimum of these claims' grids with this run's seeds, in grid order, each once."""
        out = []
        for claim in claims:
            for grid in self.plan(claim).grids:
                seeds = tuple(self.base_seed + s for s in grid.seeds[: self.seeds_per_setting])
                out += self.profile.grid_configs(replace(grid, seeds=seeds))
        return list(dict.fromkeys(out))

    def paper(self, claim: str, key: str, *path) -> float | tuple | str:
        """The paper's number ``plan.paper[key][path...]`` for this claim, or why there is none: the
        profile's note where its setting differs from the paper's, else "paper gives no number"."""
        if self.profile.paper_note:
            return self.profile.paper_note
        value = self.plan(claim).paper.get(key, {})
        for step in path:
            value = value.get(step, {}) if isinstance(value, Mapping) else {}
        return NO_NUMBER if isinstance(value, Mapping) else value

    def describe(self) -> dict:
        left_out = {case_id(c): reason for c, reason in zip(self.profile.diverged_configs(),
                                                            self.profile.diverged.values())}
        return {"scale": self.scale, "base_seed": self.base_seed, "seeds_per_setting": self.seeds_per_setting,
                **({"left out (diverged)": left_out} if left_out else {})}

    def params(self, cases: Mapping[str, Any] | Sequence[MinimumConfig]) -> list:
        """``pytest.param`` per case, ids as given (or :func:`case_id`), the ``paper`` mark where due."""
        if not isinstance(cases, Mapping):
            cases = {case_id(c): c for c in cases}
        return [pytest.param(value, id=name, marks=self._marks(value)) for name, value in cases.items()]

    def _marks(self, value) -> list:
        return [pytest.mark.paper] if self.scale == "paper" and any(True for _ in minima_in(value)) else []


SUITE = pytest.StashKey[Suite]()


def suite_of(config: pytest.Config) -> Suite:
    """This run's :class:`Suite` (built on first use from the options, then kept in ``config.stash``)."""
    if SUITE not in config.stash:
        options = suite_options(config)
        config.stash[SUITE] = Suite(profile(options.scale), options.seed, options.seeds_per_setting)
    return config.stash[SUITE]


def parametrize_cases(metafunc: pytest.Metafunc) -> None:
    """Parametrise each argument named in the test's ``cases`` markers with its cases at this run's suite."""
    suite = suite_of(metafunc.config)
    for marker in metafunc.definition.iter_markers("cases"):
        for argument, cases_of in marker.kwargs.items():
            if argument not in metafunc.fixturenames:
                raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.cases names {argument!r}, "
                                        "which is not an argument of the test")
            metafunc.parametrize(argument, suite.params(cases_of(suite)))
