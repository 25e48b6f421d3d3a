"""Deep learning as mean-field optimal control, solved as PDEs (MODEL §1, §2, §8).

* :mod:`.data`      — 2D data sets, CSV input, standardisation, class densities by KDE.
* :mod:`.feedback`  — the label-blind K-class feedback network: damped forward–backward sweeps
  on the discrete optimality system derived from one per-step Lagrangian
  (:mod:`fem_mfc.forms.classifier`).
* :mod:`.pointeval` — MPI-safe point evaluation of finite element fields.
* :mod:`.infer`     — the trained ResNet on held-out points, accuracy, objectives, particles.
* :mod:`.baseline`  — a discrete torch ResNet trained on the same objective.
* :mod:`.report`    — figures and ``report.md``; :mod:`.run` — the ``classifier`` runner.
"""
