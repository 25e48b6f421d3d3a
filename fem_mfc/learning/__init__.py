"""Deep learning as mean-field optimal control, solved as PDEs (MODEL §1, §2, §8).

* :mod:`.data`      — 2D data sets, CSV input, standardisation, class densities by KDE.
* :mod:`.feedback`  — the label-blind K-class feedback network: damped forward–backward sweeps
  on the discrete optimality system derived from one per-step Lagrangian
  (:mod:`fem_mfc.forms.classifier`).
* :mod:`.eafe`, :mod:`.reduced`, :mod:`.trainer` — the EAFE transport, the reduced
  functional J(a) with adjoint gradients and Hessian-vector products, and its trainers.
* :mod:`.dictionary`, :mod:`.numpy_resnet` — dictionary networks a = B(x)θ(t).
* :mod:`.generative` — the flow to N(0, s²I) (MODEL §8) and its invertible map.
* :mod:`.infer`     — the trained ResNet on held-out points, accuracy, objectives, particles.
* :mod:`.saved`     — a run's trained classifier saved (``model/``) and applied to new points
  (``fem-mfc predict``).
* :mod:`.baseline`  — a discrete torch ResNet trained on the same objective.
* :mod:`.report`    — figures and ``report.md``.

The runners that wire these into a run (config → data → training → outputs) are
:mod:`fem_mfc.runs.classifier` and :mod:`fem_mfc.runs.generative`; nothing here imports
them.
"""
