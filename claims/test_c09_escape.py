"""C9 – escape: a minimum outside the new stability box is left fast (PAPER.md §4).

Restarting from a converged minimum x* with new (η′, B′): if x* violates the new bounds
(a > 2/η′ or s > √(B′(n−1)/(n−B′))/η′) the iterate leaves it within tens to a few hundred
iterations, by exponential growth of the deviation, with a transient rise of the training loss,
and settles at a flatter minimum; if x* satisfies them, nothing happens.

The prediction uses a and s measured at the restart point (the start minimum), with Theorem 1 at
(η′, B′) beside them: outside the box its value must exceed 1 (both of its terms are PSD), so its
verdict is "not certified"; inside, Theorem 1 may still exceed 1, being sufficient only. Each
restart runs the C9 plan of the scale (``claims/profiles.py``), measuring the sharpness every
``every`` iterations and the full training loss and ‖x_t − x*‖ every iteration.

* Predicted unstable, within the plan's ``escape_iters`` iterations: the sharpness falls below
  half its start, or, when a > 2/η′, below 1.05·2/η′ (inside the new a side); before that point the
  full training loss rises at least 10× above its restart value; and over the iterations up to the
  loss peak log‖x_t − x*‖ has a positive least-squares slope (exponential growth; its per-step
  factor is reported beside √(Theorem 1) and GD's |1 − η′a|).
* Predicted stable: the sharpness stays within ±10% of its start for ``stable_iters`` iterations.

The thresholds and the reason for each are in the C9 plan (``claims/profiles.py``); small scale
restarts SGD with B′ = 1, whose s side the start minimum breaks by the factor of the paper plan's
B′ = 4 at n = 1000.
"""
import math
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import stabcheck
from claims.measured import cpu_threads, require_minimum, theorem1_entries
from claims.suite import case_id
from stabcheck.curvature.criteria import NOT_CERTIFIED
from stabcheck.experiments.train import full_loss, train

pytestmark = pytest.mark.slow  # trains nets on a cold cache (minutes on the CI CPU)


def restart_cases(suite) -> dict[str, tuple]:
    plan = suite.plan("C9").restart
    cases = {}
    for start in suite.configs("C9"):
        for prediction, settings in (("unstable", plan.unstable), ("stable", plan.stable)):
            for lr, batch in settings:
                b = "n" if batch is None else batch
                cases[f"{case_id(start)}-to-lr={lr:g}-B={b}-{prediction}"] = (start, lr, batch, prediction)
    return cases


@dataclass
class Trajectory:
    sharp_iters: list[int]     # 0, every, 2·every, …
    sharpness: list[float]
    loss: list[float]          # full training loss (eval mode) at iterations 0 … T
    deviation: list[float]     # ‖x_t − x*‖ at iterations 0 … T
    status: str
    seconds: float

    def as_dict(self) -> dict:
        return {"iter": self.sharp_iters, "sharpness": self.sharpness,
                "loss": [self.loss[t] for t in self.sharp_iters],
                "loss every iteration": self.loss, "deviation every iteration": self.deviation}


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def run_restart(m, lr: float, batch_size: int, iters: int, every: int, tol: float, maxiter: int, seed: int,
                device: str) -> Trajectory:
    """SGD(lr, batch_size) for ``iters`` iterations from the minimum ``m``, measuring along the way."""
    minimum = m.minimum
    loss_name = minimum.config.setup.loss
    net = minimum.model(device)
    x = minimum.dataset.inputs.to(device)
    y = minimum.dataset.targets(loss_name).to(device)
    start = flat_parameters(net)
    traj = Trajectory([0], [m.a.value], [full_loss(net, x, y, loss_name)], [0.0], "", 0.0)

    def callback(t, model, batch_loss):
        traj.deviation.append(float((flat_parameters(model) - start).norm()))
        traj.loss.append(full_loss(model, x, y, loss_name))
        if t % every == 0:
            model.eval()
            problem = stabcheck.Problem(model, x, y, loss=loss_name)
            traj.sharp_iters.append(t)
            traj.sharpness.append(stabcheck.sharpness(problem, tol=tol, maxiter=maxiter, seed=seed).value)
            model.train()

    begin = time.perf_counter()
    with cpu_threads(device):
        record = train(net, x, y, lr=lr, batch_size=batch_size, loss=loss_name, tol=minimum.config.setup.tol,
                       max_iters=iters, min_iters=iters, seed=seed, sampler=minimum.config.sampler, device=device,
                       progress=False, callback=callback)
    traj.status, traj.seconds = record.status, round(time.perf_counter() - begin, 3)
    return traj


def log_slope(deviation: list[float], last: int) -> float:
    """Least-squares slope of log‖x_t − x*‖ over iterations 1 … max(last, 3)."""
    t = np.arange(1, max(last, 3) + 1)
    return float(np.polyfit(t, np.log(np.asarray(deviation)[t]), 1)[0])


@pytest.mark.claim("C9")
@pytest.mark.cases(restart_case=restart_cases)
def test_restart_leaves_unstable_and_keeps_stable_minima(claim, suite, measured_minimum, device, restart_case):
    """Predicted-unstable restarts leave (sharpness drop, loss rise first, exponential deviation);
    predicted-stable ones keep a within ±10%."""
    start, lr, batch, prediction = restart_case
    plan, how = suite.plan("C9").restart, suite.profile.measurement
    leave_fraction, edge_margin = suite.threshold("C9", "leave fraction"), suite.threshold("C9", "edge margin")
    loss_rise, keep = suite.threshold("C9", "loss rise"), suite.threshold("C9", "keep")
    m = measured_minimum(start)
    n = start.setup.n
    batch_size = n if batch is None else batch
    with cpu_threads(device):
        problem = m.minimum.problem(device=device)
        t1 = stabcheck.theorem1(problem, lr=lr, batch_size=batch_size, tol=how.tol, maxiter=how.maxiter,
                                seed=suite.base_seed, sharpness=m.a)
    a0, s0 = m.a.value, m.s.value
    a_side, s_side = stabcheck.sharpness_bound(lr), stabcheck.nonuniformity_bound(lr, batch_size, n)
    outside = a0 > a_side or s0 > s_side
    iters = plan.escape_iters if prediction == "unstable" else plan.stable_iters
    traj = claim.measure(run_restart, m, lr, batch_size, iters, plan.every, how.tol, how.maxiter, start.seed, device)

    threshold = max(leave_fraction * a0, edge_margin * a_side) if a0 > a_side else leave_fraction * a0
    t_leave = next((t for t, a in zip(traj.sharp_iters, traj.sharpness) if a < threshold), None)
    window = traj.loss[: (t_leave if t_leave is not None else iters) + 1]
    t_peak = int(np.argmax(window))
    rise = window[t_peak] / traj.loss[0]
    drift = max(abs(a / a0 - 1) for a in traj.sharpness)
    measured = {"a at restart": a0, "s at restart": s0,
                **{f"{k} at (lr', B')": v for k, v in theorem1_entries(t1).items()}, "outside new box": outside,
                "final a": traj.sharpness[-1]}
    expected = {"2/eta'": a_side, "s bound'": s_side, "prediction": prediction, "iterations": iters}
    slope = math.nan
    if prediction == "unstable":
        slope = log_slope(traj.deviation, t_peak)
        measured |= {"left at iteration": t_leave, "loss peak iteration": t_peak, "loss rise": rise,
                     "log-deviation slope": slope, "deviation factor per step": math.exp(slope)}
        expected |= {"leave below": threshold, "loss rise at least": loss_rise, "sqrt(theorem1)": math.sqrt(t1.value),
                     "abs(1 - eta' a)": abs(1 - lr * a0)}
    else:
        measured |= {"max relative change of a": drift, "loss rise": rise}
        expected |= {"max relative change of a": keep}
    claim.record(measured=measured, expected=expected, seed=start.seed, dtype=m.a.dtype, trajectory=traj.as_dict(),
                 restart={"lr": lr, "B": batch_size, "n": n, "status": traj.status, "seconds": traj.seconds},
                 minimum=m.point(), grids=suite.describe())
    require_minimum(m)
    assert len(traj.loss) == iters + 1, f"restart ended after {len(traj.loss) - 1} of {iters} iterations: {traj.status}"
    if prediction == "unstable":
        assert outside, (f"the plan expects η′={lr:g}, B′={batch_size} to be unstable, but at the restart point "
                         f"a = {a0:.4g} ≤ 2/η′ = {a_side:.4g} and s = {s0:.4g} ≤ s bound {s_side:.4g}")
        assert t1.verdict == NOT_CERTIFIED, (f"outside the box but Theorem 1 = {t1.value:.4g} gives the verdict "
                                             f"{t1.verdict!r}: its value must exceed 1 there")
        assert t_leave is not None, (f"did not leave within {iters} iterations: a went {a0:.4g} → "
                                     f"min {min(traj.sharpness):.4g}, never below {threshold:.4g}")
        assert rise >= loss_rise, (f"the loss rose only {rise:.3g}× (to {window[t_peak]:.3g} from "
                                   f"{traj.loss[0]:.3g}) before leaving at iteration {t_leave}; "
                                   f"expected ≥ {loss_rise}×")
        assert slope > 0, f"log‖x_t − x*‖ over iterations 1…{t_peak} has slope {slope:.3g} ≤ 0: no exponential growth"
    else:
        assert not outside, (f"the plan expects η′={lr:g}, B′={batch_size} to be stable, but at the restart point "
                             f"a = {a0:.4g} vs 2/η′ = {a_side:.4g}, s = {s0:.4g} vs s bound {s_side:.4g}")
        assert drift <= keep, (f"a moved {drift:.1%} from its start {a0:.4g} within {iters} iterations "
                               f"(range {min(traj.sharpness):.4g}…{max(traj.sharpness):.4g}); expected ≤ {keep:.0%}")
