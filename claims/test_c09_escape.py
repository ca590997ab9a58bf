"""C9 – escape: a minimum outside the new stability box is left fast (PAPER.md §4).

Restarting from a converged minimum x* with new (η′, B′): if x* violates the new bounds
(a > 2/η′ or s > √(B′(n−1)/(n−B′))/η′) the iterate leaves it within tens to a few hundred
iterations, by exponential growth of the deviation, not slow diffusion, with a transient rise of the
training loss, then re-converges to a flatter minimum inside the new box; if x* satisfies them,
nothing happens.

The prediction uses a and s measured at the restart point (the start minimum), with Theorem 1 at
(η′, B′) beside them, in the form the profile measures its minima in (the full form, or the sample
form where ``Measurement.full_theorem1`` is off, as at paper scale, where the full form cannot converge):
outside the box λmax(T) must exceed 1 (both of its terms are PSD; in the sample form μ > 2), so its
verdict, from a converged solve, is "not certified"; inside, Theorem 1 may still exceed 1, being
sufficient only. Each restart runs the C9 plan of the scale (``claims/profiles.py``): the stability
monitor measures the sharpness every ``every`` iterations (every solve must converge), the test the
full training loss and ‖x_t − x*‖ every iteration of its window. The re-converged minimum is measured
by ``claims.measured.measure``, as every trained minimum is.

* Predicted unstable, within the plan's ``escape_iters`` iterations: the sharpness falls below half
  its start, or, when a > 2/η′, below 1.05·2/η′; before that the full training loss rises at least
  10× above its restart value. Exponential, not diffusive: from iteration 1 to the loss peak (T
  iterations) ‖x_t − x*‖ grows at least 4× more than both √T (what diffusion from the first step gives)
  and the matched stable restart (the plan pairs each unstable setting with a stable one of the same
  kind) over the same iterations; the fitted per-step factor is reported beside √(Theorem 1) and
  GD's |1 − η′a|. Then training goes on until the EMA of the batch loss falls below
  the setup's tol again (re-convergence), and at that new minimum (a and s measured, converged)
  a ≤ 1.05·2/η′ and s ≤ 1.1 × the s bound at (η′, B′): a flatter minimum inside the new box.
* Predicted stable: the sharpness stays within ±10% of its start for ``stable_iters`` iterations.

The thresholds and the reason for each are in the C9 plan (``claims/profiles.py``); small scale
restarts SGD with B′ = 1, whose s side the start minimum breaks by about the factor of the paper plan's
B′ = 2 at n = 1000.
"""
import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import stabcheck
from claims.measured import MeasuredMinimum, measure, require_minimum, theorem1_entries
from claims.suite import case_id
from stabcheck.curvature.criteria import NOT_CERTIFIED
from stabcheck.curvature.results import FULL
from stabcheck.curvature.threads import measurement_threads
from stabcheck.experiments.monitor import StabilityMonitor
from stabcheck.experiments.train import full_loss, train
from stabcheck.reporting.rows import Tag
from claims import kinds

pytestmark = pytest.mark.slow  # trains nets on a cold cache (minutes on the CI CPU)


def restart_cases(suite) -> dict[str, tuple]:
    """One case per (start minimum, new setting): (start, η′, B′ or None, prediction, matched stable setting)."""
    plan = suite.plan("C9").restart
    cases = {}
    for start in suite.configs("C9"):
        for prediction, settings in (("unstable", plan.unstable), ("stable", plan.stable)):
            for i, (lr, batch) in enumerate(settings):
                b = "n" if batch is None else batch
                matched = plan.stable[i] if prediction == "unstable" else None
                cases[f"{case_id(start)}-to-lr={lr:g}-B={b}-{prediction}"] = (start, lr, batch, prediction, matched)
    return cases


@dataclass
class Trajectory:
    sharp_iters: list[int]     # 0, every, 2·every, … within the window
    sharpness: list[float]
    sharp_converged: list[bool]
    loss: list[float]          # full training loss (eval mode) at iterations 0 … window
    deviation: list[float]     # ‖x_t − x*‖ at iterations 0 … window
    window: int
    later_loss: list[tuple[int, float]] = field(default_factory=list)   # (t, loss) every ``every`` after the window
    status: str = ""
    iterations: int = 0
    ema_loss: float = math.nan
    seconds: float = 0.0
    model: torch.nn.Module | None = None

    def as_dict(self) -> dict:
        return {"iter": self.sharp_iters, "sharpness": self.sharpness, "sharpness converged": self.sharp_converged,
                "loss": [self.loss[t] for t in self.sharp_iters],
                "loss every iteration": self.loss, "deviation every iteration": self.deviation,
                "loss after the window (iteration, loss)": self.later_loss}

    def growth(self, last: int) -> float:
        """max_{1 ≤ t ≤ last} ‖x_t − x*‖ / ‖x_1 − x*‖."""
        return max(self.deviation[1: last + 1]) / self.deviation[1]


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def run_restart(m, lr: float, batch_size: int, window: int, every: int, how, seed: int, device: str,
                reconverge_iters: int = 0) -> Trajectory:
    """SGD(lr, batch_size) from the minimum ``m`` for ``window`` iterations, its sharpness followed by the
    stability monitor and its loss and deviation every iteration; with ``reconverge_iters`` > 0 it goes on
    (at most that many more iterations) until the EMA of the batch loss falls below the setup's tol, and
    the trajectory keeps the final model."""
    minimum = m.minimum
    loss_name = minimum.config.setup.loss
    net = minimum.model(device)
    x = minimum.dataset.inputs.to(device)
    y = minimum.dataset.targets(loss_name).to(device)
    start = flat_parameters(net)
    traj = Trajectory([0], [m.a.value], [m.a.converged], [full_loss(net, x, y, loss_name)], [0.0], window)
    monitor = StabilityMonitor(x, y, lr=lr, batch_size=batch_size, loss=loss_name, every=every, tol=how.tol,
                               maxiter=how.maxiter, seed=seed, device=device)

    def callback(t, model, batch_loss):
        if t <= window:
            traj.deviation.append(float((flat_parameters(model) - start).norm()))
            traj.loss.append(full_loss(model, x, y, loss_name))
            monitor(t, model, batch_loss)
        elif t % every == 0:
            traj.later_loss.append((t, full_loss(model, x, y, loss_name)))

    begin = time.perf_counter()
    with measurement_threads(device):
        record = train(net, x, y, lr=lr, batch_size=batch_size, loss=loss_name, tol=minimum.config.setup.tol,
                       max_iters=window + reconverge_iters, min_iters=window, seed=seed,
                       sampler=minimum.config.sampler, device=device, progress=False, callback=callback)
    for check in monitor.records:
        traj.sharp_iters.append(check["iteration"])
        traj.sharpness.append(check["a"])
        traj.sharp_converged.append(check["a_converged"])
    traj.status, traj.iterations, traj.ema_loss = record.status, record.iterations, record.ema_loss
    traj.seconds = round(time.perf_counter() - begin, 3)
    traj.model = net.eval() if reconverge_iters else None
    return traj


def log_slope(deviation: list[float], last: int) -> float:
    """Least-squares slope of log‖x_t − x*‖ over iterations 1 … max(last, 3)."""
    t = np.arange(1, max(last, 3) + 1)
    return float(np.polyfit(t, np.log(np.asarray(deviation)[t]), 1)[0])


@pytest.fixture(scope="module")
def restart_run(device):
    """``restart_run(m, lr, B, window, reconverge_iters)``: each restart run once per module (the unstable
    cases reuse their matched stable run)."""
    held: dict = {}

    def get(m, lr, batch_size, window, every, how, seed, reconverge_iters=0):
        key = (m.config, lr, batch_size, window, every, how, seed, reconverge_iters)
        if key not in held:
            held[key] = run_restart(m, lr, batch_size, window, every, how, seed, device, reconverge_iters)
        return held[key]

    return get


def new_minimum(traj: Trajectory, m, lr: float, batch_size: int, how, seed: int,
                device: str) -> tuple[MeasuredMinimum, float]:
    """(a, s and Theorem 1 at (η′, B′) of the minimum the restarted run re-converged to, its training loss),
    measured by ``claims.measured.measure`` as every trained minimum is (float64 retry included)."""
    state = {k: v.detach().cpu().clone() for k, v in traj.model.state_dict().items()}
    record = {"status": traj.status, "iterations": traj.iterations, "ema_loss": traj.ema_loss,
              "tol": m.config.setup.tol}
    # Not cached: key and path name the start minimum it was restarted from.
    found = dataclasses.replace(m.minimum, config=m.config.with_(lr=lr, batch_size=batch_size), record=record,
                                loss_curve=[], state=state, from_cache=False)
    measured = measure(found, how, seed, device)
    with measurement_threads(device):
        return measured, found.problem(device=device).loss_value()


def restart_point(suite, m, lr: float, batch_size: int, device: str) -> dict:
    """What predicts the restart, measured at the start minimum: a, s, the new box and Theorem 1 at (η′, B′), in
    the full form, or where the profile skips it (``Measurement.full_theorem1``) the form ``"auto"`` picks."""
    how = suite.profile.measurement
    with measurement_threads(device):
        t1 = stabcheck.theorem1(m.minimum.problem(device=device), lr=lr, batch_size=batch_size,
                                form="full" if how.full_theorem1 else "auto", tol=how.tol, maxiter=how.maxiter,
                                seed=suite.base_seed, sharpness=m.a)
    a0, s0 = m.a.value, m.s.value
    a_side, s_side = stabcheck.sharpness_bound(lr), stabcheck.nonuniformity_bound(lr, batch_size, m.config.setup.n)
    return {"t1": t1, "a0": a0, "s0": s0, "a_side": a_side, "s_side": s_side,
            "outside": a0 > a_side or s0 > s_side}


@pytest.mark.claim("C9")
@pytest.mark.cases(restart_case=restart_cases)
def test_restart_leaves_unstable_and_keeps_stable_minima(claim, suite, measured_minimum, device, restart_run,
                                                          restart_case):
    """Predicted-unstable restarts leave and re-converge inside the new box (:func:`check_unstable_restart`);
    predicted-stable ones keep a within ±10% (:func:`check_stable_restart`). Every sharpness along the way
    converged."""
    start, lr, batch, prediction, matched = restart_case
    m = measured_minimum(start)
    batch_size = start.setup.n if batch is None else batch
    point = restart_point(suite, m, lr, batch_size, device)
    if prediction == "unstable":
        check_unstable_restart(claim, suite, m, lr, batch_size, point, matched, restart_run, device)
    else:
        check_stable_restart(claim, suite, m, lr, batch_size, point, restart_run)


def leave_threshold(suite, a0: float, a_side: float) -> float:
    """Leaving: a below half its start or, when a > 2/η′, below 1.05·2/η′."""
    fraction, margin = suite.threshold("C9", "leave fraction"), suite.threshold("C9", "edge margin")
    return max(fraction * a0, margin * a_side) if a0 > a_side else fraction * a0


def _window(traj: Trajectory, threshold: float, iters: int) -> tuple[int | None, list[float], int, float]:
    """(the first check below ``threshold``, the loss up to it, the loss peak's iteration, the rise to it)."""
    t_leave = next((t for t, a in zip(traj.sharp_iters, traj.sharpness) if a < threshold), None)
    window = traj.loss[: (t_leave if t_leave is not None else iters) + 1]
    t_peak = int(np.argmax(window))
    return t_leave, window, t_peak, window[t_peak] / traj.loss[0]


def _row(m, point, prediction: str, iters: int, traj: Trajectory) -> tuple[dict, dict]:
    """The measured and expected entries both kinds of restart record."""
    measured = {"a at restart": point["a0"], "s at restart": point["s0"],
                **{f"{k} at (lr', B')": v for k, v in restart_theorem1_entries(point["t1"]).items()},
                "outside new box": point["outside"], "trajectory sharpness converged": all(traj.sharp_converged),
                "final a in window": traj.sharpness[-1]}
    expected = {"2/eta'": point["a_side"], "s bound'": point["s_side"], "prediction": prediction, "iterations": iters}
    return measured, expected


def restart_theorem1_entries(t1) -> dict:
    """Theorem 1's row entries at (η′, B′): the full form's, or μ's (and λmax(T_GN) as "theorem1")."""
    if t1.form == FULL:
        return theorem1_entries(t1)
    return {"theorem1": t1.value, **theorem1_entries(None, t1)}


def _check_trajectory(label: str, traj: Trajectory, iters: int, t1) -> None:
    assert len(traj.loss) == iters + 1, f"{label} ended after {len(traj.loss) - 1} of {iters} iterations: {traj.status}"
    unconverged = [t for t, ok in zip(traj.sharp_iters, traj.sharp_converged) if not ok]
    assert not unconverged, f"{label}: the sharpness solve did not converge at iterations {unconverged}"
    assert t1.converged, f"{label}: the Theorem-1 solve at (η′, B′) did not converge; its verdict is not asserted"


def check_unstable_restart(claim, suite, m, lr: float, batch_size: int, point: dict, matched, restart_run,
                           device: str) -> None:
    """Leaves (sharpness drop, loss rise first, deviation growth from iteration 1 to the loss peak ≥ 4× both
    √T diffusion and the matched stable restart over the same iterations) and re-converges inside the new box
    (a ≤ 1.05·2/η′, s ≤ 1.1 × s bound′)."""
    plan, how, start, n = suite.plan("C9").restart, suite.profile.measurement, m.config, m.config.setup.n
    edge_margin, s_over = suite.threshold("C9", "edge margin"), suite.threshold("C9", "s over")
    loss_rise, growth_min = suite.threshold("C9", "loss rise"), suite.threshold("C9", "growth")
    a0, a_side, s_side, t1 = point["a0"], point["a_side"], point["s_side"], point["t1"]
    iters = plan.escape_iters
    traj = claim.measure(restart_run, m, lr, batch_size, iters, plan.every, how, start.seed, plan.reconverge_iters)
    threshold = leave_threshold(suite, a0, a_side)
    t_leave, window, t_peak, rise = _window(traj, threshold, iters)
    peak = max(t_peak, 1)
    stable_lr, stable_batch = matched
    stable_b = n if stable_batch is None else stable_batch
    reference = restart_run(m, stable_lr, stable_b, plan.stable_iters, plan.every, how, start.seed)
    growth, reference_growth = traj.growth(peak), reference.growth(peak)
    slower = max(math.sqrt(peak), reference_growth)   # diffusion from the first step, or the stable restart
    slope = log_slope(traj.deviation, peak)
    measured, expected = _row(m, point, "unstable", iters, traj)
    measured |= {"left at iteration": t_leave, "loss peak iteration": t_peak, "loss rise": rise,
                 "deviation growth to the loss peak": growth,
                 f"matched stable restart (lr={stable_lr:g}, B={stable_b}) growth": reference_growth,
                 "sqrt(T) diffusion growth": math.sqrt(peak), "growth over the larger of both": growth / slower,
                 "log-deviation slope": slope, "deviation factor per step": math.exp(slope),
                 "re-converged": traj.status == "converged", "iterations to re-converge": traj.iterations,
                 "EMA loss at the end": traj.ema_loss}
    expected |= {"leave below": threshold, "loss rise at least": loss_rise,
                 "growth over the larger of both at least": growth_min,
                 "sqrt(theorem1)": math.sqrt(t1.value), "abs(1 - eta' a)": abs(1 - lr * a0),
                 "tol": start.setup.tol, "new a at most": edge_margin * a_side, "new s at most": s_over * s_side}
    found = None
    if traj.status == "converged":
        found, new_loss = new_minimum(traj, m, lr, batch_size, how, suite.base_seed, device)
        measured |= {"new a": found.a.value, "new s": found.s.value, "new a converged": found.a.converged,
                     "new s converged": found.s.converged, "new loss": new_loss,
                     **{f"new {k}": v for k, v in theorem1_entries(found.theorem1, found.theorem1_sample).items()}}
    claim.record(measured=measured, kinds=kinds.escape(measured), tag=Tag.ESCAPE, expected=expected, seed=start.seed,
                 dtype=m.a.dtype, trajectory=traj.as_dict(),
                 restart={"lr": lr, "B": batch_size, "n": n, "status": traj.status, "seconds": traj.seconds},
                 minimum=m.point(), grids=suite.describe())
    require_minimum(m)
    label = f"restart η′={lr:g}, B′={batch_size}"
    _check_trajectory(label, traj, iters, t1)
    assert point["outside"], (f"the plan expects η′={lr:g}, B′={batch_size} to be unstable, but at the restart "
                              f"point a = {a0:.4g} ≤ 2/η′ = {a_side:.4g} and s = {point['s0']:.4g} ≤ s bound "
                              f"{s_side:.4g}")
    assert t1.verdict == NOT_CERTIFIED, (f"outside the box but Theorem 1 = {t1.value:.4g} gives the verdict "
                                         f"{t1.verdict!r} ({t1.form} form): it must exceed 1 there")
    assert t_leave is not None, (f"{label} did not leave within {iters} iterations: a went {a0:.4g} → "
                                 f"min {min(traj.sharpness):.4g}, never below {threshold:.4g}")
    assert rise >= loss_rise, (f"{label}: the loss rose only {rise:.3g}× (to {window[t_peak]:.3g} from "
                               f"{traj.loss[0]:.3g}) before leaving at iteration {t_leave}; expected ≥ {loss_rise}×")
    assert growth >= growth_min * slower, (
        f"{label}: not exponential escape: ‖x_t − x*‖ grew {growth:.3g}× from iteration 1 to the loss peak "
        f"at {peak}, the matched stable restart (η′={stable_lr:g}, B′={stable_b}) {reference_growth:.3g}× "
        f"over the same iterations, √t diffusion {math.sqrt(peak):.3g}×; expected ≥ {growth_min}× the "
        f"larger ({growth_min * slower:.3g}×)")
    assert found is not None, (
        f"{label}: did not re-converge: EMA of the batch loss {traj.ema_loss:.3g} ≥ tol {start.setup.tol:g} "
        f"after {traj.iterations} iterations (cap {iters + plan.reconverge_iters})")
    assert found.a.converged and found.s.converged, (
        f"{label}: at the new minimum the measurement did not converge (a: {found.a.residual:.2e}, "
        f"s: {found.s.residual:.2e} > tol {how.tol:g})")
    assert found.a.value <= edge_margin * a_side and found.s.value <= s_over * s_side, (
        f"{label}: the new minimum is not inside the new box: a = {found.a.value:.4g} (at most {edge_margin}·2/η′ "
        f"= {edge_margin * a_side:.4g}), s = {found.s.value:.4g} (at most {s_over} × {s_side:.4g})")


def check_stable_restart(claim, suite, m, lr: float, batch_size: int, point: dict, restart_run) -> None:
    """Keeps a within ±10% of its start for the plan's ``stable_iters`` iterations."""
    plan, how, start = suite.plan("C9").restart, suite.profile.measurement, m.config
    keep, iters = suite.threshold("C9", "keep"), plan.stable_iters
    traj = claim.measure(restart_run, m, lr, batch_size, iters, plan.every, how, start.seed, 0)
    a0 = point["a0"]
    _, _, _, rise = _window(traj, leave_threshold(suite, a0, point["a_side"]), iters)
    drift = max(abs(a / a0 - 1) for a in traj.sharpness)
    measured, expected = _row(m, point, "stable", iters, traj)
    measured |= {"max relative change of a": drift, "loss rise": rise}
    expected |= {"max relative change of a": keep}
    claim.record(measured=measured, kinds=kinds.escape(measured), tag=Tag.ESCAPE, expected=expected, seed=start.seed,
                 dtype=m.a.dtype, trajectory=traj.as_dict(),
                 restart={"lr": lr, "B": batch_size, "n": start.setup.n, "status": traj.status,
                          "seconds": traj.seconds},
                 minimum=m.point(), grids=suite.describe())
    require_minimum(m)
    label = f"restart η′={lr:g}, B′={batch_size}"
    _check_trajectory(label, traj, iters, point["t1"])
    assert not point["outside"], (f"the plan expects η′={lr:g}, B′={batch_size} to be stable, but at the restart "
                                  f"point a = {a0:.4g} vs 2/η′ = {point['a_side']:.4g}, s = {point['s0']:.4g} vs "
                                  f"s bound {point['s_side']:.4g}")
    assert drift <= keep, (f"{label}: a moved {drift:.1%} from its start {a0:.4g} within {iters} iterations "
                           f"(range {min(traj.sharpness):.4g}…{max(traj.sharpness):.4g}); expected ≤ {keep:.0%}")
