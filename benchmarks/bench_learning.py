"""Benchmark of the deep-learning solvers: sweeps/s and DOF·steps/s of the Galerkin training
sweeps for the feedback classifier, the dictionary network and the generative flow; the
Newton-CG trainer on the EAFE transport for the same three problems trained to a relative
optimality residual of --tol (outer iterations, forward/adjoint sweeps, Hessian-vector
products, wall and CPU time); and the PDE vs torch wall/CPU time on the same split (moons).

  bin/fem-env python3 benchmarks/bench_learning.py [--h 0.12] [--steps 20] [--sweeps 10]
  bin/fem-env mpirun -n 2 python3 benchmarks/bench_learning.py ...

A "pass" is one forward (FP, K solves per layer) or backward (adjoint, K solves per layer)
sweep, line-search trials included; DOF·steps/s = ndofs · N · K · passes / time.

The torch baseline here runs a fixed number of epochs (--epochs) for timing.  The fair
comparison table (accuracy on the split and on a fresh 20k sample, kinetic energy, empirical
objective, J, CPU time; ResNet and neural ODE trained to a plateau of their own objective over
several seeds; the Bayes ceiling) across moons, circles (2D, 3D), spirals (1 and 1.5 turns) and
3 and 5 noisy Gaussian classes is benchmarks/bench_comparison.py (``make bench-comparison``).
"""
import argparse
import dataclasses
import time

from mpi4py import MPI

import dolfinx

from fem_mfc import config
from fem_mfc import mesh as meshmod
from fem_mfc.learning import baseline, data
from fem_mfc.learning.dictionary import DictionaryNetwork, EdgeDictionaryNetwork
from fem_mfc.learning.feedback import FeedbackClassifier, anchors_from_config
from fem_mfc.learning.generative import EdgeGenerativeFlow, GenerativeFlow
from fem_mfc.learning.reduced import EdgeClassifier


def counted(model):
    """Count the forward/backward passes of ``model``."""
    model.passes = 0
    for name in ("forward", "backward"):
        meth = getattr(model, name)

        def wrapper(*a, _m=meth, **k):
            model.passes += 1
            return _m(*a, **k)
        setattr(model, name, wrapper)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--h", type=float, default=0.12)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sweeps", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=600)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--max-it", type=int, default=20)
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    cfg = config.from_dict({
        "run": {"formulation": "classifier"}, "mesh": {"kind": "disk", "radius": 3.5, "h": a.h},
        "problem": {"T": 1.0, "sigma": 0.35, "steps": a.steps},
        "data": {"dataset": "moons", "n_samples": 1000, "bandwidth": 0.15},
        "network": {"kind": "dictionary", "dictionary": "random-tanh", "ridges": 16,
                    "weight_decay": 0.05}})     # the feedback models ignore the kind
    md = meshmod.build(cfg["mesh"], comm)
    V = dolfinx.fem.functionspace(md.mesh, ("Lagrange", 1))
    ndofs = V.dofmap.index_map.size_global
    ds = data.load(cfg["data"], 2)
    rho0, _ = data.class_densities(ds, V, 0.15)
    anchors = anchors_from_config(cfg["network"], ds.K, 2)
    one = dataclasses.replace(ds, y_train=0 * ds.y_train, y_test=0 * ds.y_test)
    (r1,), _ = data.class_densities(one, V, 0.2)
    p, n = cfg["problem"], cfg["network"]
    models = {
        "feedback classifier": lambda: FeedbackClassifier(rho0, anchors, p, n),
        "dictionary (tanh, 32 w/layer)": lambda: DictionaryNetwork(rho0, anchors, p, n),
        "generative flow": lambda: GenerativeFlow(r1, p, n, cfg["generative"]),
    }
    rows = []
    for name, make in models.items():
        model = counted(make())
        comm.Barrier()
        t0 = time.perf_counter()
        model.train(a.sweeps, 0.5, 1e-8)
        dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        rows.append((name, model.K, model.sweeps, model.passes, dt, model.sweeps / dt,
                     ndofs * model.N * model.K * model.passes / dt))
        model.destroy()
    newton = []
    edge = {
        "feedback classifier": lambda: EdgeClassifier(rho0, anchors, p, n),
        "dictionary (tanh, 32 w/layer)": lambda: EdgeDictionaryNetwork(rho0, anchors, p, n),
        "generative flow": lambda: EdgeGenerativeFlow(r1, p, n, cfg["generative"]),
    }
    for name, make in edge.items():
        model = make()
        comm.Barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        model.train(a.max_it, 0.5, a.tol, method="newton")
        dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        cpu = comm.allreduce(time.process_time() - c0, op=MPI.SUM)
        i = model.train_info
        newton.append((name, i["iterations"], model.residual, model.converged, i["forward_sweeps"],
                       i["gradients"], i["hessian_products"], dt, cpu))
        model.destroy()
    t0 = time.perf_counter()
    base = baseline.train_resnet(ds.X_train, ds.y_train, ds.X_test, ds.y_test, anchors, 1.0,
                                 1.0, a.steps, 16, a.epochs, 0.01, 0, comm)
    if comm.rank == 0:
        print(f"two moons, {ndofs} P1 dofs, {a.steps} layers, {comm.size} rank(s), "
              f"at most {a.sweeps} sweeps\n")
        print(f"| {'solver':30s} | K | sweeps | passes | time [s] | sweeps/s | DOF·steps/s |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]:30s} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.2f} | "
                  f"{r[6]:.3g} |")
        print(f"| {'torch ResNet baseline':30s} | - | {a.epochs} epochs | - | "
              f"{base['wall_time_s']:.2f} | - | - |")
        print(f"\nPDE classifier {rows[0][4]:.2f} s vs torch {base['wall_time_s']:.2f} s "
              f"(torch test accuracy {base['test_accuracy']:.3f})")
        print(f"\nNewton-CG on the EAFE transport to a relative residual of {a.tol:g}:\n")
        print("| problem | outer its | residual | converged | forward | adjoint | H·v | "
              "wall [s] | CPU [s] |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in newton:
            print(f"| {r[0]} | {r[1]} | {r[2]:.2e} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | "
                  f"{r[7]:.2f} | {r[8]:.2f} |")
        print(f"| torch ResNet baseline ({a.epochs} epochs) | | | | | | | "
              f"{base['wall_time_s']:.2f} | {base['cpu_time_s']:.2f} |")


if __name__ == "__main__":
    main()
