"""Trainers for the learning problems as reduced functionals J(x) (``[training] method``).

A model (:class:`~fem_mfc.learning.reduced.EdgeClassifier` and its subclasses) provides

* ``forward(x)`` → J(x) (one FP sweep; every layer's matrix factorised for what follows),
* ``backward()`` → the relative optimality residual r, with the gradient ``grad`` (one adjoint
  sweep) and ``p = C⁻¹ grad`` in the sweeps' metric C (``precondition``),
* ``hessp(v)`` → H v (one tangent FP sweep + one second-order adjoint sweep, reusing the
  factorisations of the last forward sweep), ``dot(x, y)`` (the MPI-global Euclidean pairing
  of a control and a gradient), ``control()`` and ``history``.

Methods (all monotone in J: every accepted step decreases it; the problem is non-convex):

* ``sweeps``: x ← x − θp, the damped forward–backward sweeps of :mod:`.feedback` (a
  preconditioned gradient method; θ halved until J decreases, ×1.5 after a success) — linear
  convergence;
* ``lbfgs``: limited-memory BFGS (10 pairs) in the metric C (two-loop recursion with
  H₀ = γC⁻¹, γ = sᵀy / yᵀC⁻¹y), pairs with sᵀy ≤ 0 skipped, Armijo backtracking on J with
  quadratic interpolation; a non-descent direction restarts from −p;
* ``newton``: truncated (inexact) Newton–CG: preconditioned CG (preconditioner C) on
  H d = −∇J stopped at ‖res‖_{C⁻¹} ≤ η‖∇J‖_{C⁻¹}, η = min(¼, max(√r, 0.3 tol/r)) (superlinear
  convergence without oversolving), or at the first direction of non-positive curvature
  (Steihaug; at the first CG iteration the step is −p); Armijo backtracking on J from the full
  Newton step.  If no step of a direction decreases J, the trainer retries with −p and then
  stops with ``converged = False``.

Round-off: near the optimum the decrease of J predicted by a step, −t∇J·d ≈ r²J, falls below
the round-off of J (~1e-14 |J|); a step whose predicted decrease is below 1e-13 |J| is accepted
if J does not grow by more than 1e-13 |J| (otherwise Newton could not pass r ≈ 1e-7).

Stopping: r < tol (converged), ``max_it`` outer iterations, or no descent.  r is the relative
residual of :mod:`.reduced` (= that of the sweeps of :mod:`.feedback`), evaluated at every
accepted iterate; ``iterations`` counts outer iterations (one gradient each).

Checkpoints (``[output] checkpoint_every``, :class:`fem_mfc.checkpoint.TrainingWriter`): after
every k-th outer iteration the iterate, the method's state (the L-BFGS pairs, the relaxation θ
of the sweeps), the history and the counts; ``resume`` continues from such a state, so the
restarted run takes the same steps as an uninterrupted one.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import SolverError

METHODS = ("newton", "lbfgs", "sweeps")
C1 = 1e-4                 # Armijo constant
NOISE = 1e-13             # relative round-off level of J (see _Run.line_search)


class _Run:
    """Book-keeping shared by the methods: the accepted iterate, history, log."""

    def __init__(self, model, tol, log):
        self.model, self.tol, self.log = model, tol, log
        self.x = model.control()
        self.J = model.forward(self.x)
        self.r = model.backward()
        self.at_x = True          # the model's state (ρ, u, factorisations) is at self.x

    def record(self, it, step, extra=""):
        m, h = self.model, self.model.history
        h.J.append(self.J)
        h.residual.append(self.r)
        h.theta.append(step)
        h.energy.append(m.energy)
        h.terminal.append(m.terminal)
        if self.log is not None:
            self.log.info("iteration %3d  J = %.10g  residual = %.3e  step = %.3g%s", it,
                          self.J, self.r, step, extra)

    def trial(self, x) -> float:
        """J at x (inf if a solve fails or the densities leave the admissible set)."""
        m = self.model
        self.at_x = False
        try:
            J = m.forward(x)
        except SolverError:
            return math.inf
        if not math.isfinite(J) or m.min_rho() < -m.neg_tol:
            return math.inf
        return J

    def line_search(self, d, gd, t0=1.0, tmin=1e-8):
        """Armijo backtracking along d from t0; (t, J) or (0, J) without descent."""
        t = t0
        # J is a sum of many terms: its round-off is ~1e-14 |J|; a predicted decrease below
        # NOISE |J| cannot be verified, so such a step is accepted when J does not increase by
        # more than NOISE |J| (near the optimum, where Newton's full step is right)
        noise = NOISE * abs(self.J)
        while t >= tmin:
            Jt = self.trial(self.x + t * d)
            if Jt <= self.J + C1 * t * gd and Jt <= self.J:
                return t, Jt
            if -t * gd <= noise and Jt <= self.J + noise:
                return t, Jt
            # minimiser of the quadratic through J(0), J'(0) = gd, J(t), kept in [0.1t, 0.5t]
            if math.isfinite(Jt):
                den = 2.0 * (Jt - self.J - gd * t)
                tq = -gd * t * t / den if den > 0 else 0.5 * t
                t = min(max(tq, 0.1 * t), 0.5 * t)
            else:
                t *= 0.25
        return 0.0, self.J

    def accept(self, x, J):
        self.x, self.J = x, J
        self.r = self.model.backward()
        self.at_x = True

    def restore(self):
        if not self.at_x:
            self.model.forward(self.x)
            self.r = self.model.backward()
            self.at_x = True


def train(model, method: str, max_it: int, tol: float, relaxation: float = 0.5,
          progress=None, log=None, checkpoint=None, resume=None):
    """Minimise J from the model's current control by ``method``; sets ``model.converged``,
    ``model.sweeps`` (outer iterations), ``model.residual``, ``model.train_info``.
    ``checkpoint``: a :class:`fem_mfc.checkpoint.TrainingWriter`; ``resume``: a
    :class:`fem_mfc.checkpoint.TrainingState` to continue from."""
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r} (one of {', '.join(METHODS)})")
    start, step = 0, 0.0
    if resume is not None:
        start, meta = resume.iteration, resume.meta
        model.x = np.array(resume.controls["x"], dtype=float)
        restore_history(model.history, meta["history"])
        step = meta["step"]
    run = _Run(model, tol, log)
    its = range(start, max(max_it, start) + 1)   # a restart past max_it: its iterate only
    if progress is not None:
        its = progress(its, desc=f"training ({method})", total=len(its))
    step_fn = {"sweeps": _Sweeps, "lbfgs": _LBFGS, "newton": _Newton}[method](run, relaxation)
    if resume is not None:
        step_fn.restore(resume.meta["state"], resume.controls)
        for k, v in resume.meta["counts"].items():
            model.counts[k] += v
    model.converged = False
    model.sweeps = start
    reason = "maximum iterations"
    extra = ""
    for it in its:
        run.record(it, step, extra)
        if run.r < tol:
            model.converged = True
            reason = "converged"
            break
        if it >= max_it:
            break
        step, extra = step_fn.step()
        if step == 0.0:
            run.restore()
            reason = "no descent"
            if log is not None:
                log.info("training stopped: no step decreases J (residual %.3e)", run.r)
            break
        model.sweeps = it + 1
        if checkpoint is not None and checkpoint.due(it + 1):
            scalars, vectors = step_fn.state()
            checkpoint.write(it + 1, {"x": run.x, **vectors}, method=method, step=step,
                             state=scalars, counts=dict(model.counts),
                             history=history_lists(model.history))
    run.restore()
    model.residual = run.r
    model.train_info = {"method": method, "iterations": model.sweeps, "reason": reason,
                        "forward_sweeps": model.counts["forward"],
                        "gradients": model.counts["backward"],
                        "hessian_products": model.counts["hessp"]}
    return model.history


def history_lists(h) -> dict:
    """The history's lists (JSON, for a checkpoint)."""
    return {k: [float(v) for v in getattr(h, k)] for k in h.__dataclass_fields__}


def restore_history(h, lists: dict):
    for k, v in lists.items():
        getattr(h, k)[:] = v


class _Sweeps:
    def __init__(self, run, relaxation):
        self.run, self.theta = run, relaxation

    def state(self):
        return {"theta": self.theta}, {}

    def restore(self, scalars, vectors):
        self.theta = scalars["theta"]

    def step(self):
        run = self.run
        p = run.model.p
        x0, J0 = run.x, run.J
        while True:
            J = run.trial(x0 - self.theta * p)
            ok = J <= J0 + 1e-12 * abs(J0)
            if ok or self.theta < 1e-6:
                break
            self.theta *= 0.5
        if not ok:
            return 0.0, ""
        theta = self.theta
        run.accept(x0 - theta * p, J)
        self.theta = min(1.0, 1.5 * theta)
        return theta, ""


class _LBFGS:
    def __init__(self, run, relaxation, memory=10):
        self.run, self.memory = run, memory
        self.S, self.Y, self.rho = [], [], []

    def state(self):
        """(scalars, controls): the pairs (s_i, y_i) as controls."""
        vectors = {f"s{i}": s for i, s in enumerate(self.S)}
        vectors.update({f"y{i}": y for i, y in enumerate(self.Y)})
        return {"rho": list(self.rho)}, vectors

    def restore(self, scalars, vectors):
        self.rho = list(scalars["rho"])
        self.S = [np.array(vectors[f"s{i}"], dtype=float) for i in range(len(self.rho))]
        self.Y = [np.array(vectors[f"y{i}"], dtype=float) for i in range(len(self.rho))]

    def direction(self):
        m = self.run.model
        q = m.grad.copy()
        alphas = []
        for s, y, rho in zip(reversed(self.S), reversed(self.Y), reversed(self.rho)):
            a = rho * m.dot(s, q)
            alphas.append(a)
            q -= a * y
        z = m.precondition(q)
        if self.S:
            y = self.Y[-1]
            z *= 1.0 / (self.rho[-1] * m.dot(y, m.precondition(y)))
        for (s, y, rho), a in zip(zip(self.S, self.Y, self.rho), reversed(alphas)):
            b = rho * m.dot(y, z)
            z += (a - b) * s
        return -z

    def step(self):
        run = self.run
        m = run.model
        d = self.direction()
        gd = m.dot(m.grad, d)
        if not gd < 0:
            self.S, self.Y, self.rho = [], [], []
            d = -m.p
            gd = m.dot(m.grad, d)
        t, J = run.line_search(d, gd)
        if t == 0.0 and self.S:              # restart from the preconditioned gradient
            self.S, self.Y, self.rho = [], [], []
            d = -m.p
            gd = m.dot(m.grad, d)
            t, J = run.line_search(d, gd)
        if t == 0.0:
            return 0.0, ""
        g0, x0 = m.grad, run.x
        run.accept(x0 + t * d, J)
        s, y = run.x - x0, m.grad - g0
        sy = m.dot(s, y)
        if sy > 1e-12 * math.sqrt(m.dot(s, s) * m.dot(y, y)):
            self.S.append(s)
            self.Y.append(y)
            self.rho.append(1.0 / sy)
            if len(self.S) > self.memory:
                del self.S[0], self.Y[0], self.rho[0]
        return t, ""


class _Newton:
    def __init__(self, run, relaxation, max_cg=60):
        self.run, self.max_cg = run, max_cg
        self.cg_total = 0

    def state(self):
        return {"cg_total": self.cg_total}, {}

    def restore(self, scalars, vectors):
        self.cg_total = scalars["cg_total"]

    def direction(self):
        """Inexact Newton direction by PCG (Steihaug truncation); (d, CG iterations, note)."""
        run = self.run
        m = run.model
        g, p = m.grad, m.p
        gnorm2 = m.dot(g, p)
        eta = min(0.25, max(math.sqrt(run.r), 0.3 * run.tol / max(run.r, 1e-300)))
        d = np.zeros_like(g)
        res = -g
        z = -p
        q = z.copy()
        rz = gnorm2
        for j in range(self.max_cg):
            Hq = m.hessp(q)
            curv = m.dot(q, Hq)
            if not curv > 0:
                return (-p if j == 0 else d), j + 1, " (negative curvature)"
            alpha = rz / curv
            d += alpha * q
            res -= alpha * Hq
            z = m.precondition(res)
            rz_new = m.dot(res, z)
            if rz_new <= eta * eta * gnorm2:
                return d, j + 1, ""
            q = z + (rz_new / rz) * q
            rz = rz_new
        return d, self.max_cg, " (CG iteration limit)"

    def step(self):
        run = self.run
        m = run.model
        d, ncg, note = self.direction()
        self.cg_total += ncg
        gd = m.dot(m.grad, d)
        if not gd < 0:
            d = -m.p
            gd = m.dot(m.grad, d)
            note += " (not a descent direction: gradient step)"
        t, J = run.line_search(d, gd)
        if t == 0.0:
            d = -m.p
            t, J = run.line_search(d, m.dot(m.grad, d))
            note += " (line search failed: gradient step)"
        if t == 0.0:
            return 0.0, note
        run.accept(run.x + t * d, J)
        return t, f"  CG {ncg}{note}"


__all__ = ["METHODS", "history_lists", "restore_history", "train"]
