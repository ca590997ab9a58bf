"""The paper's claims C1..C14 as tests (one module per claim) and the harness they share.

Harness: :mod:`claims.options` (options, read once), :mod:`claims.profiles` (the grids, thresholds
and paper numbers of each claim per scale), :mod:`claims.suite` (the run's view of a profile and the
``cases`` parametrisation), :mod:`claims.measured` (a, s and Theorem 1 of a trained minimum),
:mod:`claims.trends` (statistics over minima), :mod:`claims.crosscheck` (a, s and Theorem 1 recomputed
independently of the library, C12), :mod:`claims.schedule` (cost estimate, ``--budget``),
:mod:`claims.report_plugin` (the ``claim`` fixture and the run's report); fixtures in ``conftest.py``.
"""
