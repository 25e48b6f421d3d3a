"""Training the label-blind feedback network by damped forward–backward sweeps (MODEL §2).

One sweep, for the current controls a = (a⁰, …, a^{N−1}):

1. forward: ρ_k^{n+1} from the FP step of :mod:`fem_mfc.forms.classifier` (one matrix per layer,
   factorised once and shared by the K classes), giving J(a);
2. backward: u_k^m from the adjoint step (u_k^{N+1} = Φ_k), again one matrix per layer;
3. â^{m−1} = −Σ_k ρ_k^m ∇u_k^m / (ρ^m + δ), the (ρ+δ)-weighted projection from ∂L/∂a = 0.

Since ∂J/∂aⁿ = τ(ρ^{n+1} + δ)(aⁿ − âⁿ), the update a ← a + θ(â − a) is a preconditioned gradient
step (successive approximations / fictitious play with relaxation θ).  θ is halved until J
decreases and the densities stay non-negative (up to 5% of max ρ_0: Galerkin undershoots at
large mesh Péclet numbers would otherwise fake a decrease of J), and enlarged again after a
successful step, so J decreases monotonically.  The stopping
criterion is the relative optimality residual
  r = (Σ_n τ∫(ρ^{n+1}+δ)|aⁿ − âⁿ|²)^{1/2} / (Σ_n τ∫(ρ^{n+1}+δ)|âⁿ|²)^{1/2} < tol.
Every solve is linear (PETSc KSP: GMRES/block-Jacobi-ILU for the FP and adjoint steps, CG–Jacobi
for a; options prefixes ``classifier_fp_``, ``classifier_adj_``, ``classifier_ctl_``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl

from ..errors import ConfigError, SolverError
from ..expressions import parse
from ..forms.classifier import ClassifierForms


def default_anchors(K: int, dim: int, radius: float) -> np.ndarray:
    """K anchors on the circle of radius ``radius`` in the (x0, x1) plane (K=2: ±radius e_1)."""
    ang = 2 * math.pi * np.arange(K) / K + math.pi
    c = np.zeros((K, dim))
    c[:, 0] = radius * np.cos(ang)
    if dim > 1:
        c[:, 1] = radius * np.sin(ang)
    c[np.abs(c) < 1e-12] = 0.0
    return c


def anchors_from_config(ncfg: dict, K: int, dim: int) -> np.ndarray:
    """The configured anchors (padded with zeros to ``dim``) or the default ones."""
    if not ncfg["anchors"]:
        return default_anchors(K, dim, ncfg["anchor_radius"])
    A = ncfg["anchors"]
    if len(A) != K or any(not isinstance(c, list) or not 1 <= len(c) <= dim for c in A):
        raise ConfigError("network.anchors", f"{K} points (one per class) of at most {dim} "
                          f"coordinates", A)
    out = np.zeros((K, dim))
    for k, c in enumerate(A):
        out[k, :len(c)] = c
    gap = min((float(np.linalg.norm(out[i] - out[j])) for i in range(K)
               for j in range(i + 1, K)), default=np.inf)
    if not gap > 0:          # two classes sent to one point cannot be told apart (acc. 1/K)
        raise ConfigError("network.anchors", "distinct points, one per class (two classes "
                          "sent to one anchor cannot be told apart)", A)
    return out


# the default anchors are reassigned to the classes of a CSV file only where that shortens the
# classes' way to their anchors (Σ_k |mean_k − c_k|²) by at least this fraction: near-ties (two
# classes centred alike, as concentric circles) keep the order of the labels
MATCH_GAIN = 0.1


def matched_anchors(anchors: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The default ``anchors`` (K × dim) reordered so that class k gets the anchor nearest the
    mean of its (standardised, padded) training points ``X``, ``y`` — the assignment that
    minimises Σ_k |mean_k − c_{π(k)}|².  The classes of a CSV file are numbered in the sorted
    order of its labels: words (``cat`` < ``dog``) or codes that say nothing about where the
    classes lie, and the fixed order sent two separable classes across each other (test
    accuracy 0.48 against 0.97 for the same points labelled the other way round)."""
    from scipy.optimize import linear_sum_assignment
    K = anchors.shape[0]
    means = np.array([X[y == k].mean(axis=0) for k in range(K)])
    cost = ((means[:, None, :] - anchors[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    best, kept = float(cost[rows, cols].sum()), float(np.trace(cost))
    if best < (1.0 - MATCH_GAIN) * kept:
        return anchors[cols].copy()
    return anchors


@dataclass
class History:
    J: list = field(default_factory=list)
    residual: list = field(default_factory=list)
    theta: list = field(default_factory=list)
    energy: list = field(default_factory=list)
    terminal: list = field(default_factory=list)     # the terminal cost of the accepted iterate


class FeedbackClassifier:
    """The discrete optimality system of the K-class feedback network on one mesh.

    ``rho0``: list of K P1 Functions (∫ρ_{k,0} = π_k); ``anchors``: K × gdim array;
    ``problem``: the ``[problem]`` config section (T, sigma, steps, V, G, params);
    ``network``: the ``[network]`` section.  After :meth:`train`, ``rho[k][n]`` (n = 0..N),
    ``u[k][m]`` (m = 1..N+1) and ``a[n]`` (n = 0..N−1) hold the local arrays of the solution.

    The sweeps and the line search are generic in the control: subclasses (the dictionary
    network, :mod:`.dictionary`; the generative flow, :mod:`.generative`) override
    :meth:`_make_forms`, :meth:`_zero_control`, :meth:`_load_control`, :meth:`_update_control`,
    :meth:`_control_cost`, :meth:`_setup_control_solver` and the terminal cost.
    """

    def __init__(self, rho0, anchors, problem: dict, network: dict):
        V = rho0[0].function_space
        self.V, self.mesh = V, V.mesh
        self.comm = self.mesh.comm
        self.K = len(rho0)
        self.N = problem["steps"]
        self.T = problem["T"]
        self.tau = self.T / self.N
        self.eps = problem["sigma"] ** 2 / 2
        self.delta = network["delta"]
        self.beta = network["loss_weight"]
        self.anchors = np.asarray(anchors, float)
        if problem["coupling"] != "mftc":
            raise ConfigError("problem.coupling", "'mftc' for the classifier (its optimality "
                              "system is the derivative of one Lagrangian)", problem["coupling"])
        gdim = self.mesh.geometry.dim
        x = ufl.SpatialCoordinate(self.mesh)
        params = problem["params"]
        self.Vpot = parse(problem["V"], "problem.V", x=x, gdim=gdim, params=params)

        def G(rho):
            return parse(problem["G"], "problem.G", x=x, gdim=gdim, variables={"rho": rho},
                         params=params)
        self.alpha = network["smoothing"]
        self.G = G
        self.f = self._make_forms(G, network)
        # terminal losses Φ_k = β/2 |x − c_k|², interpolated in P1
        self.Phi = []
        for k in range(self.K):
            phi = dolfinx.fem.Function(V, name=f"Phi_{k}")
            c = self.anchors[k]
            phi.interpolate(lambda X, c=c: 0.5 * self.beta * sum(
                (X[i] - c[i]) ** 2 for i in range(gdim)))
            self.Phi.append(phi)
        self.rho = [[r.x.array.copy()] + [None] * self.N for r in rho0]
        self.u = [[None] * (self.N + 1) + [self.Phi[k].x.array.copy()] for k in range(self.K)]
        self.a = [self._zero_control() for _ in range(self.N)]
        self.a_hat = [self._zero_control() for _ in range(self.N)]
        self._terminal_form = dolfinx.fem.form(
            sum(self.Phi[k] * self.f.rho_cur[k] for k in range(self.K)) * ufl.dx)
        self.terminal = 0.0
        self.history = History()
        # admissible controls keep the Galerkin densities non-negative up to 5% of max ρ_0
        nloc = V.dofmap.index_map.size_local
        self.neg_tol = 5e-2 * self.comm.allreduce(
            max(float(r.x.array[:nloc].max()) if nloc else 0.0 for r in rho0), op=MPI.MAX)
        self._setup_solvers()

    # -- the control (hooks overridden by other network classes) -------------------------------
    def _make_forms(self, G, network):
        """The velocity space ``Va`` and the forms of the feedback network's step Lagrangian."""
        gdim = self.mesh.geometry.dim
        el = ("DG", 0, (gdim,)) if network["velocity"] == "DG0" else ("Lagrange", 1, (gdim,))
        self.Va = dolfinx.fem.functionspace(self.mesh, el)
        return ClassifierForms(self.V, self.Va, self.K, self.tau, self.eps, self.Vpot, G,
                               self.delta, self.alpha)

    def _zero_control(self) -> np.ndarray:
        return np.zeros_like(self.f.a.x.array)

    def _load_control(self, n: int) -> None:
        """Put the control of layer n into the form slots."""
        self.f.a.x.array[:] = self.a[n]

    def _control_cost(self) -> float:
        """Global cost of the controls not contained in the forms (0 here)."""
        return 0.0

    def _setup_control_solver(self):
        P = dolfinx.fem.petsc
        self.C = P.create_matrix(self.f.ctl_lhs)
        self.bc = P.create_vector(self.f.ctl_rhs)
        self.ksp_ctl = self._ksp(self.C, "classifier_ctl_", "cg", "jacobi", 1e-12)

    def _update_control(self, m: int) -> np.ndarray:
        """â^{m−1} from ∂L/∂a^{m−1} = 0 (slots hold layer m); returns the local (gap, gap_ref)."""
        f = self.f
        self._assemble_matrix(self.C, f.ctl_lhs)
        self.ksp_ctl.setOperators(self.C)
        self.a_hat[m - 1] = self._solve(self.ksp_ctl, self.C, f.ctl_rhs, self.bc, f.a_ref,
                                        f"control update, layer {m - 1}")
        return np.array([dolfinx.fem.assemble_scalar(f.gap),
                         dolfinx.fem.assemble_scalar(f.gap_ref)])

    def _destroy_control_solver(self):
        for o in (self.ksp_ctl, self.C, self.bc):
            o.destroy()

    # -- checkpoints (fem_mfc.checkpoint.TrainingWriter) ---------------------------------------
    replicated_control = False      # the dictionary network: θ is on every rank

    def control_nodes(self) -> np.ndarray:
        """Coordinates of the owned velocity nodes (a checkpoint's key to its values)."""
        return self.Va.tabulate_dof_coordinates()[: self.Va.dofmap.index_map.size_local]

    def control_values(self, a) -> np.ndarray:
        """The controls ``a`` (local arrays of Va) at the owned nodes: (nodes, N·d)."""
        n, d = self.Va.dofmap.index_map.size_local, self.Va.dofmap.index_map_bs
        return np.stack([x[: n * d].reshape(n, d) for x in a], axis=1).reshape(n, -1)

    def control_from_values(self, values) -> list:
        """The inverse of :meth:`control_values` (ghost values from their owners)."""
        n, d = self.Va.dofmap.index_map.size_local, self.Va.dofmap.index_map_bs
        v = np.asarray(values).reshape(n, self.N, d)
        out = []
        for k in range(self.N):
            f = dolfinx.fem.Function(self.Va)
            f.x.array[: n * d] = v[:, k].ravel()
            f.x.scatter_forward()
            out.append(f.x.array.copy())
        return out

    # -- linear algebra ------------------------------------------------------------------------
    def _setup_solvers(self):
        P = dolfinx.fem.petsc
        self.A = P.create_matrix(self.f.fp_lhs)
        self.B = P.create_matrix(self.f.adj_lhs)
        self.b = P.create_vector(self.f.fp_rhs[0])
        # The FP/adjoint matrices M + τ(εK ∓ convection) are mass-dominated: GMRES with block
        # Jacobi/ILU(0) converges in a few iterations and is much cheaper than LU (in 3D by
        # ~25x); the tight tolerance keeps mass and the value identity exact to ~1e-14.
        self.ksp_fp = self._ksp(self.A, "classifier_fp_", "gmres", "bjacobi", 1e-13)
        self.ksp_adj = self._ksp(self.B, "classifier_adj_", "gmres", "bjacobi", 1e-13)
        self._setup_control_solver()

    def _ksp(self, A, prefix, ktype, pctype, rtol):
        ksp = PETSc.KSP().create(self.comm)
        ksp.setOptionsPrefix(prefix)
        ksp.setOperators(A)
        ksp.setType(ktype)
        ksp.getPC().setType(pctype)
        ksp.setTolerances(rtol=rtol, atol=1e-50, max_it=2000)
        ksp.setFromOptions()        # -classifier_fp_ksp_type preonly -..._pc_type lu etc.
        return ksp

    def _assemble_matrix(self, M, form):
        M.zeroEntries()
        dolfinx.fem.petsc.assemble_matrix(M, form)
        M.assemble()

    def _solve(self, ksp, M, form_rhs, vec, target, what):
        with vec.localForm() as loc:
            loc.set(0.0)
        dolfinx.fem.petsc.assemble_vector(vec, form_rhs)
        vec.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        ksp.solve(vec, target.x.petsc_vec)
        if ksp.getConvergedReason() < 0:
            raise SolverError(f"{what}: linear solve failed (KSP reason "
                              f"{ksp.getConvergedReason()})")
        target.x.scatter_forward()
        if not np.isfinite(target.x.array).all():
            raise SolverError(f"{what}: NaN/inf in the solution (reduce the time step or "
                              f"increase sigma)")
        return target.x.array.copy()

    def _sum(self, form) -> float:
        return self.comm.allreduce(dolfinx.fem.assemble_scalar(form), op=MPI.SUM)

    # -- the three passes ----------------------------------------------------------------------
    def forward(self, a=None) -> float:
        """FP steps for controls ``a`` (default: the current ones); returns J (with δ-term)."""
        f = self.f
        if a is not None:
            self.a = [x.copy() for x in a]
        local = np.zeros(3)     # (J, energy, terminal) on this rank: one allreduce per pass
        for n in range(self.N):
            self._load_control(n)
            self._assemble_matrix(self.A, f.fp_lhs)
            self.ksp_fp.setOperators(self.A)
            for k in range(self.K):
                f.rho_prev[k].x.array[:] = self.rho[k][n]
                self.rho[k][n + 1] = self._solve(self.ksp_fp, self.A, f.fp_rhs[k], self.b,
                                                 f.rho_cur[k], f"FP step {n + 1}, class {k}")
            local[:2] += [dolfinx.fem.assemble_scalar(f.cost),
                          dolfinx.fem.assemble_scalar(f.energy)]
        local[2] = dolfinx.fem.assemble_scalar(self._terminal_form)   # slots hold rho^N
        J, energy, terminal = self.comm.allreduce(local, op=MPI.SUM)
        J += terminal + self._control_cost()
        self.J, self.energy, self.terminal = float(J), float(energy), float(terminal)
        return self.J

    def backward(self) -> float:
        """Adjoint steps m = N..1 and â^{m−1}; returns the relative optimality residual."""
        f = self.f
        local = np.zeros(2)
        for m in range(self.N, 0, -1):
            self._load_control(m - 1)
            for k in range(self.K):
                f.rho_cur[k].x.array[:] = self.rho[k][m]
                f.u_next[k].x.array[:] = self.u[k][m + 1]
            self._assemble_matrix(self.B, f.adj_lhs)
            self.ksp_adj.setOperators(self.B)
            for k in range(self.K):
                self.u[k][m] = self._solve(self.ksp_adj, self.B, f.adj_rhs[k], self.b, f.u_cur[k],
                                           f"adjoint step {m}, class {k}")
            local += self._update_control(m)
        gap, ref = self.comm.allreduce(local, op=MPI.SUM)
        self.residual = math.sqrt(max(gap, 0.0) / ref) if ref > 0 else math.sqrt(max(gap, 0.0))
        return self.residual

    def value_identity(self) -> float:
        """Σ_k ∫u_k^1 ρ_{k,0} + Σ_n [τ∫(G − ρG')(ρ^{n+1}) + R(aⁿ)] (+ the control cost outside
        the forms, e.g. a weight decay): equals J for ANY controls.

        (Discrete duality: telescoping ⟨u^m, Mρ^{m−1}⟩ = ⟨Aᵀu^m, ρ^m⟩ through the layers.)"""
        f = self.f
        val = 0.0
        for k in range(self.K):
            f.rho_prev[k].x.array[:] = self.rho[k][0]
            f.u_cur[k].x.array[:] = self.u[k][1]
        val = self._sum(dolfinx.fem.form(sum(f.rho_prev[k] * f.u_cur[k]
                                             for k in range(self.K)) * ufl.dx))
        for n in range(1, self.N + 1):
            self._load_control(n - 1)
            for k in range(self.K):
                f.rho_cur[k].x.array[:] = self.rho[k][n]
            val += self._sum(f.identity)
        return val + self._control_cost()

    # -- training ------------------------------------------------------------------------------
    def train(self, max_sweeps=60, theta=0.5, tol=1e-3, progress=None, log=None,
              checkpoint=None, resume=None) -> History:
        """Damped forward–backward sweeps with a monotone line search on θ (see module doc).
        ``checkpoint``: a :class:`fem_mfc.checkpoint.TrainingWriter` (the controls, θ and the
        history every k sweeps); ``resume``: a :class:`fem_mfc.checkpoint.TrainingState`."""
        from .trainer import history_lists, restore_history
        h = self.history
        start = 0
        if resume is not None:
            start = resume.iteration
            self.a = [np.array(t, dtype=float) for t in resume.controls["a"]]
            restore_history(h, resume.meta["history"])
            theta = resume.meta["state"]["theta"]
        J = self.forward()
        sweeps = range(start, max(max_sweeps, start) + 1)
        if progress is not None:
            sweeps = progress(sweeps, desc="training sweeps", total=len(sweeps))
        self.converged = False
        self.sweeps = start
        self.stop_reason = "maximum iterations"
        for s in sweeps:
            r = self.backward()
            h.J.append(J)
            h.residual.append(r)
            h.theta.append(theta)
            h.energy.append(self.energy)
            h.terminal.append(self.terminal)
            if log is not None:
                log.info("sweep %3d  J = %.6g  residual = %.3e  theta = %.3g", s, J, r, theta)
            if r < tol:
                self.converged = True
                self.stop_reason = "converged"
                break
            if s >= max_sweeps:
                break
            a_old = [x.copy() for x in self.a]
            while True:
                trial = [x + theta * (y - x) for x, y in zip(a_old, self.a_hat)]
                try:
                    J_new = self.forward(trial)
                except SolverError:          # a step too large for the linear solvers
                    J_new = math.inf
                ok = J_new <= J + 1e-12 * abs(J) and self.min_rho() >= -self.neg_tol
                if ok or theta < 1e-6:
                    break
                theta *= 0.5
            if not ok:
                self.forward(a_old)     # stalled: keep the last accepted controls
                self.backward()
                self.stop_reason = "no descent"
                break
            J = J_new
            theta = min(1.0, 1.5 * theta)
            self.sweeps = s + 1
            if checkpoint is not None and checkpoint.due(s + 1):
                checkpoint.write(s + 1, {"a": self.a}, method="sweeps", state={"theta": theta},
                                 history=history_lists(h))
        return h

    # -- diagnostics ---------------------------------------------------------------------------
    def function(self, arr, space=None, name="f"):
        f = dolfinx.fem.Function(space or self.V, name=name)
        f.x.array[:] = arr
        return f

    def velocity_function(self, n: int):
        """The velocity of layer n as a Function (of ``Va``)."""
        return self.function(self.a[n], self.Va, name="velocity")

    def masses(self) -> np.ndarray:
        """(K, N+1) array of ∫ρ_kⁿ."""
        form = dolfinx.fem.form(self.f.rho_cur[0] * ufl.dx)
        out = np.zeros((self.K, self.N + 1))
        for k in range(self.K):
            for n in range(self.N + 1):
                self.f.rho_cur[0].x.array[:] = self.rho[k][n]
                out[k, n] = self._sum(form)
        return out

    def min_rho(self) -> float:
        nloc = self.V.dofmap.index_map.size_local
        m = min(float(r[:nloc].min()) if nloc else math.inf for rk in self.rho for r in rk)
        return self.comm.allreduce(m, op=MPI.MIN)

    def peclet(self, h: float) -> float:
        """Mesh Péclet number max|a| h / (2ε) (Galerkin FP is accurate for Pe ≲ 1)."""
        gdim = self.mesh.geometry.dim
        amax = max(float(np.sqrt((x.reshape(-1, gdim) ** 2).sum(axis=1)).max()) if x.size
                   else 0.0 for x in self.a)
        amax = self.comm.allreduce(amax, op=MPI.MAX)
        return amax * h / (2 * self.eps) if self.eps > 0 else math.inf

    def moments(self, n: int):
        """(K, d) means ∫x ρ_kⁿ and (K, d) second moments ∫x_i² ρ_kⁿ of layer n."""
        x = ufl.SpatialCoordinate(self.mesh)
        d = self.mesh.geometry.dim
        r = self.f.rho_cur[0]
        first = [dolfinx.fem.form(x[i] * r * ufl.dx) for i in range(d)]
        second = [dolfinx.fem.form(x[i] ** 2 * r * ufl.dx) for i in range(d)]
        m1, m2 = np.zeros((self.K, d)), np.zeros((self.K, d))
        for k in range(self.K):
            r.x.array[:] = self.rho[k][n]
            m1[k] = [self._sum(f) for f in first]
            m2[k] = [self._sum(f) for f in second]
        return m1, m2

    def destroy(self):
        for o in (self.ksp_fp, self.ksp_adj, self.A, self.B, self.b):
            o.destroy()
        self._destroy_control_solver()
