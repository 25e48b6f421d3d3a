"""The learning problems as reduced functionals J(control) on the EAFE transport (:mod:`.eafe`),
with the derivatives a quasi-Newton or Newton trainer needs (:mod:`.trainer`).

Discrete Lagrangian (lumped masses m_i, nodal data; ρ = Σ_k ρ_k; aⁿ the nodal velocity of
layer n; owned sums, MPI-reduced):

  L = Σ_n [ τ Σ_i m_i (κ ½|aⁿ_i|² ρ_i^{n+1} + V_i ρ_i^{n+1} + G(ρ_i^{n+1})) + R(aⁿ)
            − Σ_k u_k^{n+1}·(M(ρ_k^{n+1} − ρ_kⁿ) + τ X(aⁿ) ρ_k^{n+1}) ] + T(ρ^N) + W(control)

with κ = 1 for the feedback network and the generative flow (the kinetic energy is the
network's cost), κ = 0 for the dictionary network (weight decay W = τλ/2 Σ|θⁿ|² instead);
R(a) = τ(½δ Σ m_i|a_i|² + ½α Σ_c a_cᵀ K a_c) (feedback, generative); the terminal cost
T = Σ_k Σ_i m_i Φ_{k,i} ρ_{k,i}^N (anchor losses) or β KL_η (generative).  Then

* forward (∂L/∂u = 0): (M + τXₙ) ρ_k^{n+1} = M ρ_kⁿ — exact mass, ρ ≥ 0 for any velocity;
* adjoint (∂L/∂ρ = 0): (M + τXₙᵀ) u_k^{n+1} = M u_k^{n+2} + τ m (κ½|aⁿ|² + V + G'(ρ^{n+1})),
  u_k^{N+1} = ∂T/∂ρ_k^N / m;
* gradient ∂J/∂aⁿ = τ m (κρ^{n+1} + δ) aⁿ + ταKaⁿ − τ Σ_k ∂_a(u_k^{n+1}·X(aⁿ) ρ_k^{n+1}),
  and for the dictionary (a = Bθ) ∂J/∂θⁿ = τλθⁿ + Bᵀ(the same without the R terms);
* Hessian–vector product H δa (second-order adjoint): the tangent forward sweep
  (M + τXₙ) δρ_k^{n+1} = M δρ_kⁿ − τ (∂_a Xₙ[δaⁿ]) ρ_k^{n+1}, the linearised adjoint sweep
  (M + τXₙᵀ) δu_k^{n+1} = M δu_k^{n+2} − τ(∂_a Xₙᵀ[δaⁿ]) u_k^{n+1} + τ m (κ aⁿ·δaⁿ + G''δρ^{n+1}),
  δu^{N+1} = T''δρ^N / m, and H δa = L_aa δa + L_aρ δρ + L_au δu.

Every matrix M + τXₙ is factorised once per forward sweep (KSP per layer, options prefix
``classifier_transport_``; LU by default in 2D — on several ranks layer n on rank n mod size
(:mod:`fem_mfc.solvers.layers`) —, GMRES/block-Jacobi-ILU(0) in 3D) and reused
for the adjoint (transposed solves) and for every Hessian-vector product at that control.  The
metric (preconditioner) of the control is the one of the sweeps:
Cₙ = τ(diag(m(κρ^{n+1} + δ)) + αK) per velocity component (prefix
``classifier_metric_``; SPD: Cholesky by default in 2D, half the flops of LU; CG/block
Jacobi in 3D), τλI for the dictionary; the relative optimality residual is
  r = ‖C⁻¹∇J‖_C / ‖â‖_C,  â = a − C⁻¹∇J  (the sweep's target â),
the definition of :mod:`.feedback` (there â is computed from ∂L/∂a = 0 directly).
"""
from __future__ import annotations

import math

from mpi4py import MPI

import dolfinx
import numpy as np
import ufl

from .. import options
from ..errors import ConfigError, SolverError
from ..expressions import parse
from ..solvers.layers import LayerFactors
from .eafe import EdgeGraph, bernoulli
from .feedback import History


class EdgeClassifier:
    """The label-blind K-class feedback network on the EAFE transport (see the module doc).

    The interface of :class:`~fem_mfc.learning.feedback.FeedbackClassifier` for the runner,
    inference and output (``rho[k][n]``, ``u[k][m]``, ``a[n]`` as local arrays of V / Va,
    ``J``, ``energy``, ``history``, ``masses()``, ``min_rho()``, ...) and the reduced-functional
    protocol of :mod:`.trainer`: ``control()``, ``forward(x)``, ``backward()`` (gradient
    ``grad`` and residual), ``precondition(g)``, ``hessp(v)``, ``dot(x, y)``.
    """

    transport = "eafe"
    kinetic = True

    def __init__(self, rho0, anchors, problem: dict, network: dict):
        V = rho0[0].function_space
        self.V, self.mesh = V, V.mesh
        self.comm = self.mesh.comm
        self.K = len(rho0)
        self.N = problem["steps"]
        self.T = problem["T"]
        self.tau = self.T / self.N
        self.eps = problem["sigma"] ** 2 / 2
        if not self.eps > 0:
            raise ConfigError("problem.sigma", "a positive number for network.transport = "
                              "'eafe' (the Scharfetter-Gummel flux needs diffusion)",
                              problem["sigma"])
        if problem["coupling"] != "mftc":
            raise ConfigError("problem.coupling", "'mftc' for the classifier (its optimality "
                              "system is the derivative of one Lagrangian)", problem["coupling"])
        self.delta = network["delta"]
        self.alpha = network["smoothing"]
        self.beta = network["loss_weight"]
        self.anchors = np.asarray(anchors, float)
        self.gdim = gdim = self.mesh.geometry.dim
        self.g = EdgeGraph(V)
        self.nl = self.g.nl
        self.Va = dolfinx.fem.functionspace(self.mesh, ("Lagrange", 1, (gdim,)))
        xa = self.Va.tabulate_dof_coordinates()
        if not np.allclose(xa, V.tabulate_dof_coordinates()):
            raise SolverError("internal: the vector P1 space does not share the node order of P1")
        x = ufl.SpatialCoordinate(self.mesh)
        params = problem["params"]
        self.Vpot = parse(problem["V"], "problem.V", x=x, gdim=gdim, params=params)
        self.Vn = self._nodal(self.Vpot)
        self._setup_G(problem, x, params)
        X = self.g.x
        self.Phi = [0.5 * self.beta * ((X - self.anchors[k][:gdim]) ** 2).sum(axis=1)
                    for k in range(self.K)]
        self._rho = [[r.x.array[: self.nl].copy()] + [None] * self.N for r in rho0]
        self._u = [[None] * (self.N + 1) + [None] for _ in range(self.K)]
        self._bern = [None] * self.N
        self._coef = [None] * self.N
        self._Gd = [None] * self.N
        self._setup_control()
        self.x = np.zeros(self.n_local)
        self.A = [self.g.create_matrix() for _ in range(self.N)]
        self.transport = self._layer_factors("classifier_transport_", self.A, symmetric=False)
        self.history = History()
        self.counts = {"forward": 0, "backward": 0, "hessp": 0}
        self.J = self.energy = self.terminal = math.nan
        self.residual = math.inf
        self.converged = False
        self.sweeps = 0
        nmax = max(float(r.x.array[: self.nl].max()) if self.nl else 0.0 for r in rho0)
        self.neg_tol = 1e-10 * self.comm.allreduce(nmax, op=MPI.MAX)
        self._views = {}

    def _make_ksp(self, prefix, A, symmetric: bool, comm=None):
        """The default solver of a transport (M + τXₙ) or metric (Cₙ, SPD) matrix: in 2D a
        factorisation (LU / Cholesky; MUMPS on a distributed matrix), reused for all solves at
        one control; in 3D, where the factors fill in, GMRES / CG with block Jacobi–ILU(0) to
        a relative residual of 1e-13 / 1e-12 (the matrices are mass-dominated M-matrices: a
        few iterations, cheaper than the factorisation on demos/circles3d.toml, the same
        iterates to 1e-13).
        The PETSc options of ``prefix`` override both."""
        comm = comm or self.comm
        if self.gdim == 3:
            return options.make_ksp(comm, prefix, A, ksp_type="cg" if symmetric else "gmres",
                                    pc_type="bjacobi", rtol=1e-13 if not symmetric else 1e-12,
                                    atol=1e-50, max_it=1000)
        factor = None if comm.size == 1 else "mumps"
        return options.make_ksp(comm, prefix, A, pc_type="cholesky" if symmetric else "lu",
                                factor=factor)

    def _layer_factors(self, prefix, mats, symmetric: bool) -> LayerFactors:
        """The per-layer solvers of ``mats``: in 2D each layer factorised on one rank
        (:mod:`fem_mfc.solvers.layers`; ``-{prefix}layers spatial`` distributes every
        factorisation instead), in 3D the iterative solvers on the distributed matrices."""
        return LayerFactors(mats, prefix,
                            lambda comm, A: self._make_ksp(prefix, A, symmetric, comm),
                            direct=self.gdim != 3)

    # -- nodal data ------------------------------------------------------------------------------
    def _nodal(self, expr) -> np.ndarray:
        """Owned nodal values of a number or a UFL expression in x."""
        if isinstance(expr, (int, float)):
            return np.full(self.nl, float(expr))
        f = dolfinx.fem.Function(self.V)
        f.interpolate(dolfinx.fem.Expression(expr, self.V.element.interpolation_points()))
        return f.x.array[: self.nl].copy()

    def _setup_G(self, problem, x, params):
        """Nodal G, G', G'' of the congestion (a UFL formula in ρ and x)."""
        self._r = dolfinx.fem.Function(self.V)
        rv = ufl.variable(self._r)
        Gr = parse(problem["G"], "problem.G", x=x, gdim=self.gdim, variables={"rho": rv},
                   params=params)
        if isinstance(Gr, (int, float)):
            self._Gconst, self._Gexpr = float(Gr), None
            return
        self._Gconst = None
        d1 = ufl.algorithms.expand_derivatives(ufl.diff(Gr, rv))
        d2 = ufl.algorithms.expand_derivatives(ufl.diff(d1, rv))
        pts = self.V.element.interpolation_points()
        self._Gexpr = [dolfinx.fem.Expression(e, pts, comm=self.comm)
                       if ufl.domain.extract_unique_domain(e) is not None else float(e)
                       for e in (Gr, d1, d2)]
        self._Gout = dolfinx.fem.Function(self.V)

    def _G(self, rho: np.ndarray):
        """(G, G', G'') at the owned nodal densities ``rho``."""
        if self._Gexpr is None:
            z = np.zeros_like(rho)
            return np.full_like(rho, self._Gconst), z, z
        self._r.x.array[: self.nl] = rho
        out = []
        for e in self._Gexpr:
            if isinstance(e, float):
                out.append(np.full_like(rho, e))
                continue
            self._Gout.interpolate(e)
            out.append(self._Gout.x.array[: self.nl].copy())
        return tuple(out)

    # -- the control (hooks overridden by the dictionary network) --------------------------------
    def _setup_control(self):
        self.n_local = self.N * self.nl * self.gdim
        self.C = [self.g.create_matrix() for _ in range(self.N)]
        self.metric = self._layer_factors("classifier_metric_", self.C, symmetric=True)

    def _layer(self, x, n) -> np.ndarray:
        s = self.nl * self.gdim
        return x[n * s:(n + 1) * s].reshape(self.nl, self.gdim)

    def velocity(self, n: int, x=None) -> np.ndarray:
        """Owned nodal velocity (nl × gdim) of layer n for the control ``x`` (default: current)."""
        return self._layer(self.x if x is None else x, n)

    def _prepare(self, x):
        """Per-control set-up before the layers are visited (dictionary: broadcast θ)."""
        return x

    def _field_cost(self, n, a, a_ext) -> float:
        """R(aⁿ) (local part)."""
        g = self.g
        return self.tau * (0.5 * self.delta * float(g.m @ (a * a).sum(axis=1))
                           + 0.5 * self.alpha * float((a * g.apply_K(a_ext)).sum()))

    def _control_grad(self, n, q, a, a_ext, xprep) -> np.ndarray:
        """The layer-n block of ∇J from the field derivative q = ∂/∂a of the rest."""
        g = self.g
        return (q + self.tau * (self.delta * g.m[:, None] * a
                                + self.alpha * g.apply_K(a_ext))).ravel()

    def _control_cost(self) -> float:
        return 0.0

    def _metric_setup(self):
        """Factorise Cₙ = τ(diag(m(ρ^{n+1} + δ)) + αK) at the current densities."""
        g = self.g
        for n in range(self.N):
            rho = sum(self._rho[k][n + 1] for k in range(self.K))
            g.fill(self.C[n], g.smoothing_values(self.tau * g.m * (rho + self.delta),
                                                 self.tau * self.alpha))
        self.metric.update()

    def precondition(self, q: np.ndarray) -> np.ndarray:
        """C⁻¹q (per layer and velocity component) at the control of the last backward()."""
        out = np.empty_like(q)
        keys = [(n, c) for n in range(self.N) for c in range(self.gdim)]
        sols = self.metric.solve_many([(n, self._layer(q, n)[:, c]) for n, c in keys],
                                      False, "metric solve")
        for (n, c), x in zip(keys, sols):
            self._layer(out, n)[:, c] = x
        return out

    def apply_metric(self, x: np.ndarray) -> np.ndarray:
        """C x at the control of the last backward()."""
        out = np.empty_like(x)
        g = self.g
        for n in range(self.N):
            rho = sum(self._rho[k][n + 1] for k in range(self.K))
            a = self._layer(x, n)
            self._layer(out, n)[:] = self.tau * ((g.m * (rho + self.delta))[:, None] * a
                                                 + self.alpha * g.apply_K(g.ext_vec(a)))
        return out

    def dot(self, x: np.ndarray, y: np.ndarray) -> float:
        return self.comm.allreduce(float(x @ y), op=MPI.SUM)

    def control(self) -> np.ndarray:
        return self.x.copy()

    # -- checkpoints (fem_mfc.checkpoint.TrainingWriter) -----------------------------------------
    replicated_control = False     # the dictionary network: θ is on every rank

    def control_nodes(self) -> np.ndarray:
        """Coordinates of the owned velocity nodes (a checkpoint's key to its values)."""
        return self.Va.tabulate_dof_coordinates()[: self.nl]

    def control_values(self, x) -> np.ndarray:
        """The control ``x`` at the owned nodes: (nodes, N·d), the layers side by side."""
        return np.stack([self._layer(x, n) for n in range(self.N)], axis=1).reshape(self.nl, -1)

    def control_from_values(self, values) -> np.ndarray:
        """The inverse of :meth:`control_values`."""
        a = np.asarray(values).reshape(self.nl, self.N, self.gdim)
        return np.concatenate([a[:, n].ravel() for n in range(self.N)])

    # -- terminal cost (overridden by the generative flow) ---------------------------------------
    def _terminal_value(self) -> float:
        return float(sum(self.g.m @ (self.Phi[k] * self._rho[k][self.N]) for k in range(self.K)))

    def _terminal_adjoint(self) -> list:
        return [p.copy() for p in self.Phi]

    def _terminal_hessian(self, drho: list) -> list:
        return [np.zeros(self.nl) for _ in range(self.K)]

    # -- the passes ----------------------------------------------------------------------------
    def forward(self, x=None) -> float:
        """FP sweep for the control ``x`` (default: the current one); returns J."""
        if x is not None:
            self.x = np.array(x, dtype=float)
        self._views = {}
        self._coef = [None] * self.N            # edge coefficients: set by backward()
        self.counts["forward"] += 1
        g, tau, eps, m = self.g, self.tau, self.eps, self.g.m
        xp = self._xprep = self._prepare(self.x)
        local = np.zeros(3)
        for n in range(self.N):               # the layers' matrices: the control only
            a = self.velocity(n, xp)
            a_ext = g.ext_vec(a)
            beta = g.beta(a_ext, eps)
            B, B1, B2 = bernoulli(beta)
            self._bern[n] = (B, B1, B2, a, a_ext)
            g.fill(self.A[n], g.step_values(B, beta, eps, tau))
        self.transport.update()
        for n in range(self.N):
            a, a_ext = self._bern[n][3:]
            for k in range(self.K):
                self._rho[k][n + 1] = self.transport.solve(n, m * self._rho[k][n], False,
                                                           f"FP step {n + 1}, class {k}")
            rho = sum(self._rho[k][n + 1] for k in range(self.K))
            G, G1, G2 = self._G(rho)
            self._Gd[n] = (G1, G2)
            kin = tau * float(m @ (0.5 * (a * a).sum(axis=1) * rho))
            local[0] += (tau * float(m @ (self.Vn * rho + G)) + self.kinetic * kin
                         + self._field_cost(n, a, a_ext))
            local[1] += kin
        local[2] = self._terminal_value()
        J, energy, terminal = self.comm.allreduce(local, op=MPI.SUM)
        self.J = float(J + terminal + self._control_cost())
        self.energy, self.terminal = float(energy), float(terminal)
        return self.J

    def backward(self) -> float:
        """Adjoint sweep and ∇J (``grad``) at the control of the last forward(); returns the
        relative optimality residual (and factorises the metric for :meth:`precondition`)."""
        self.counts["backward"] += 1
        g, tau, m = self.g, self.tau, self.g.m
        xp = self._xprep
        uT = self._terminal_adjoint()
        for k in range(self.K):
            self._u[k][self.N + 1] = uT[k]
        grad = np.zeros(self.n_local)
        for mm in range(self.N, 0, -1):
            n = mm - 1
            B, B1, B2, a, a_ext = self._bern[n]
            rho = sum(self._rho[k][mm] for k in range(self.K))
            src = tau * m * (self.Vn + self._Gd[n][0]
                             + (0.5 * (a * a).sum(axis=1) if self.kinetic else 0.0))
            s = 0.0
            coef = []
            for k in range(self.K):
                self._u[k][mm] = self.transport.solve(n, m * self._u[k][mm + 1] + src, True,
                                                      f"adjoint step {mm}, class {k}")
                c = self._edge_coefficients(B1, B2, g.ext(self._u[k][mm]),
                                            g.ext(self._rho[k][mm]))
                coef.append(c)
                s = s + c[4] * c[0]                      # = g.dS(B1, u, ρ)
            self._coef[n] = coef
            q = -tau * g.to_nodes(s)
            if self.kinetic:
                q += tau * (m * rho)[:, None] * a
            self._set_block(grad, n, self._control_grad(n, q, a, a_ext, xp))
        self._views = {}
        self.grad = grad
        self._metric_setup()
        p = self.p = self.precondition(grad)
        gp = self.dot(grad, p)
        ahat = self.x - p
        ref = self.dot(ahat, self.apply_metric(self.x) - grad)
        self.residual = math.sqrt(max(gp, 0.0) / ref) if ref > 0 else math.sqrt(max(gp, 0.0))
        return self.residual

    def _edge_coefficients(self, B1, B2, u_ext, r_ext):
        """Per-entry coefficients of the derivatives of X at one layer and class, for
        :meth:`hessp` (gathered once per control instead of once per product):
        cR = w[(1 + B')ρ_i − B'ρ_j], cXT = w(1 + B')(u_i − u_j), cD2 = w u_i B''(ρ_i − ρ_j),
        cU = w u_i, u_i; so that (EdgeGraph) dX = εR(δβ cR), dXᵀ = εR(δβ cXT),
        d2S = δβ cD2, dS(δu, ρ) = δu_i cR, dS(u, δρ) = cU[(1 + B')δρ_i − B'δρ_j]."""
        g = self.g
        io, jo, w = g.io, g.jo, g.w
        r_io = r_ext[io]
        dr = r_io - r_ext[jo]
        u_io = u_ext[io]
        return (w * (r_io + B1 * dr), w * (1.0 + B1) * (u_io - u_ext[jo]),
                w * u_io * B2 * dr, w * u_io, u_io)

    def _set_block(self, vec, n, block):
        s = block.size
        vec[n * s:(n + 1) * s] = block

    def hessp(self, v: np.ndarray) -> np.ndarray:
        """H v: the Hessian of J at the control of the last forward() and backward() times v."""
        if self._coef[0] is None:
            raise RuntimeError("hessp needs backward() at the control of the last forward()")
        self.counts["hessp"] += 1
        g, tau, eps, m, K, N = self.g, self.tau, self.eps, self.g.m, self.K, self.N
        io, jo = g.io, g.jo
        vp = self._prepare(v)
        drho = [[np.zeros(self.nl)] + [None] * N for _ in range(K)]
        dirs = []
        for n in range(N):
            B, B1, B2, a, a_ext = self._bern[n]
            da = self.velocity(n, vp)
            da_ext = g.ext_vec(da)
            db = g.beta(da_ext, eps)
            dirs.append((da, da_ext, db))
            for k in range(K):
                rhs = m * drho[k][n] - (tau * eps) * g.row_sum(db * self._coef[n][k][0])
                drho[k][n + 1] = self.transport.solve(n, rhs, False, "tangent FP step")
        du = self._terminal_hessian([drho[k][N] for k in range(K)])
        out = np.zeros(self.n_local)
        for mm in range(N, 0, -1):
            n = mm - 1
            B, B1, B2, a, a_ext = self._bern[n]
            da, da_ext, db = dirs[n]
            rho = sum(self._rho[k][mm] for k in range(K))
            dr = sum(drho[k][mm] for k in range(K))
            base = tau * m * (self._Gd[n][1] * dr
                              + ((a * da).sum(axis=1) if self.kinetic else 0.0))
            s = 0.0
            new = []
            for k in range(K):
                cR, cXT, cD2, cU, _ = self._coef[n][k]
                rhs = m * du[k] - (tau * eps) * g.row_sum(db * cXT) + base
                duk = self.transport.solve(n, rhs, True, "second-order adjoint step")
                new.append(duk)
                dr_ext = g.ext(drho[k][mm])
                dr_io = dr_ext[io]
                s = s + (db * cD2 + g.ext(duk)[io] * cR
                         + cU * (dr_io + B1 * (dr_io - dr_ext[jo])))
            du = new
            hq = -tau * g.to_nodes(s)
            if self.kinetic:
                hq += tau * m[:, None] * (rho[:, None] * da + dr[:, None] * a)
            self._set_block(out, n, self._control_hess(n, hq, da, da_ext, vp))
        return out

    def _control_hess(self, n, hq, da, da_ext, vprep) -> np.ndarray:
        g = self.g
        return (hq + self.tau * (self.delta * g.m[:, None] * da
                                 + self.alpha * g.apply_K(da_ext))).ravel()

    def value_identity(self) -> float:
        """Σ_k m·u_k^1ρ_k^0 + Σ_n[τΣm(G − ρG')(ρ^{n+1}) + R(aⁿ)] + T − Σ_k m·ρ_k^N u_k^{N+1}
        + W: equals J for ANY control (discrete duality; module doc)."""
        m, N = self.g.m, self.N
        val = sum(float(m @ (self._u[k][1] * self._rho[k][0])) for k in range(self.K))
        for n in range(N):
            B, B1, B2, a, a_ext = self._bern[n]
            rho = sum(self._rho[k][n + 1] for k in range(self.K))
            G, G1, _ = self._G(rho)
            val += self.tau * float(m @ (G - rho * G1)) + self._field_cost(n, a, a_ext)
        val += self._terminal_value() - sum(float(m @ (self._rho[k][N] * self._u[k][N + 1]))
                                            for k in range(self.K))
        return self.comm.allreduce(val, op=MPI.SUM) + self._control_cost()

    # -- training --------------------------------------------------------------------------------
    def train(self, max_sweeps=60, theta=0.5, tol=1e-3, progress=None, log=None,
              method="newton", checkpoint=None, resume=None):
        """Train by ``method`` (:func:`fem_mfc.learning.trainer.train`); returns the history."""
        from .trainer import train
        return train(self, method, max_sweeps, tol, theta, progress=progress, log=log,
                     checkpoint=checkpoint, resume=resume)

    # -- the interface of FeedbackClassifier -----------------------------------------------------
    def _full(self, owned: np.ndarray, space=None) -> np.ndarray:
        """Owned values → the local array of a Function of ``space`` (ghosts updated)."""
        space = space or self.V
        f = dolfinx.fem.Function(space)
        n = owned.size
        f.x.array[:n] = owned.ravel()
        f.x.scatter_forward()
        return f.x.array.copy()

    def _serial_view(self) -> bool:
        return self.g._serial and self.V.dofmap.index_map.num_ghosts == 0

    @property
    def rho(self):
        if "rho" not in self._views:
            self._views["rho"] = [[r if self._serial_view() else self._full(r) for r in rk]
                                  for rk in self._rho]
        return self._views["rho"]

    @property
    def u(self):
        if "u" not in self._views:
            self._views["u"] = [[None if r is None else (r if self._serial_view()
                                                         else self._full(r)) for r in uk]
                                for uk in self._u]
        return self._views["u"]

    @property
    def a(self):
        if "a" not in self._views:
            xp = self._prepare(self.x)
            self._views["a"] = [self._full(self.velocity(n, xp), self.Va) for n in range(self.N)]
        return self._views["a"]

    def function(self, arr, space=None, name="f"):
        f = dolfinx.fem.Function(space or self.V, name=name)
        f.x.array[:] = arr
        return f

    def velocity_function(self, n: int):
        return self.function(self.a[n], self.Va, name="velocity")

    def masses(self) -> np.ndarray:
        """(K, N+1) array of Σ_i m_i ρ_{k,i}ⁿ = ∫ρ_kⁿ."""
        out = np.array([[float(self.g.m @ r) for r in rk] for rk in self._rho])
        return self.comm.allreduce(out, op=MPI.SUM)

    def min_rho(self) -> float:
        m = min(float(r.min()) if r.size else math.inf for rk in self._rho for r in rk)
        return self.comm.allreduce(m, op=MPI.MIN)

    def peclet(self, h: float) -> float:
        """Mesh Péclet number max|a| h / (2ε) (EAFE is monotone at any value; module doc of
        :mod:`.eafe`)."""
        xp = self._prepare(self.x)
        amax = max((float(np.sqrt((self.velocity(n, xp) ** 2).sum(axis=1)).max())
                    if self.nl else 0.0) for n in range(self.N))
        return self.comm.allreduce(amax, op=MPI.MAX) * h / (2 * self.eps)

    def moments(self, n: int):
        """(K, d) means Σ m x ρ_kⁿ and second moments Σ m x² ρ_kⁿ of layer n (lumped)."""
        X, m = self.g.x, self.g.m
        m1 = np.array([(m * self._rho[k][n]) @ X for k in range(self.K)])
        m2 = np.array([(m * self._rho[k][n]) @ (X * X) for k in range(self.K)])
        return self.comm.allreduce(m1, op=MPI.SUM), self.comm.allreduce(m2, op=MPI.SUM)

    def destroy(self):
        self.transport.destroy()
        if getattr(self, "metric", None) is not None:
            self.metric.destroy()
        for o in self.A + getattr(self, "C", []):
            o.destroy()
        self.g.destroy()


__all__ = ["EdgeClassifier"]
