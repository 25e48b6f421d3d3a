"""Safe parsing of user formulas into UFL expressions.

Formulas are strings such as ``"0.5*(x0**2 + x1**2)"`` or ``"kappa*rho**2/2"``.  They are parsed
with :mod:`ast` and translated node by node into UFL; only arithmetic, numbers, the coordinates
``x0, x1, x2`` (aliases ``x, y, z``), named parameters, ``pi``, ``e`` and a fixed list of
functions are accepted — there is no ``eval`` of user code.  A bad formula raises
:class:`~fem_mfc.errors.ConfigError` naming the config key.
"""
from __future__ import annotations

import ast
import math
import warnings

import numpy as np
import ufl

from .errors import ConfigError

FUNCTIONS = {
    "exp": ufl.exp, "log": ufl.ln, "ln": ufl.ln, "sqrt": ufl.sqrt, "sin": ufl.sin,
    "cos": ufl.cos, "tan": ufl.tan, "tanh": ufl.tanh, "sinh": ufl.sinh, "cosh": ufl.cosh,
    "atan": ufl.atan, "abs": abs, "erf": ufl.erf,
    "min": ufl.min_value, "max": ufl.max_value,
}
CONSTANTS = {"pi": math.pi, "e": math.e}
_AXES = {"x0": 0, "x1": 1, "x2": 2, "x": 0, "y": 1, "z": 2}


def parse(text: str, key: str, *, x=None, gdim: int = 0, variables: dict | None = None,
          params: dict | None = None, powers: dict | None = None, literals=None):
    """Translate formula ``text`` (config key ``key``) into a UFL expression.

    ``x`` is ``ufl.SpatialCoordinate(mesh)`` (or None when coordinates are not allowed), ``gdim``
    its length; ``variables`` maps further names (e.g. ``{"rho": rho}``) to UFL expressions;
    ``params`` maps names to numbers (or to Constants: :func:`parameter_constants`);
    ``powers`` maps some of the variables to a callable b ↦ UFL expression used for
    ``name**b`` with a constant b (e.g. |p|**q as (p·p)^{q/2}, smooth where |p| itself is
    not).  ``literals``: a mesh on which every number of the formula becomes a Constant of
    its own, so that the compiled forms serve any numbers (an edited "0.5*x0**2" does not
    compile again).  Exponents stay numbers (UFL's degree estimates), and so does everything
    in a formula free of x and of the variables (it folds to a number).
    """
    variables = dict(variables or {})
    powers = dict(powers or {})
    params = dict(params or {})
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(key, "a non-empty formula", text)
    tree = _parse_limited(text, key)
    if not _mentions(tree, set(variables) | set(_AXES)):
        params = {k: _number(v) for k, v in params.items()}   # a constant formula: a number
        literals = None
    plain = [0]                        # > 0 inside an exponent: numbers stay numbers

    def number(v: float):
        if literals is None or plain[0]:
            return v
        import dolfinx
        return dolfinx.fem.Constant(literals, float(v))

    def fail(what):
        raise ConfigError(key, f"a formula using only arithmetic, x0..x{max(gdim - 1, 0)}, "
                          f"{', '.join(sorted(set(variables) | set(params))) or 'no variables'}"
                          f" and known functions ({what})", text)

    def visit(node):
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return number(float(node.value))
        if isinstance(node, ast.Name):
            n = node.id
            if n in variables:
                used.add(n)
                return variables[n]
            if n in params:                  # a number, or a Constant (one compiled form
                v = params[n]                  # for every value of the parameter)
                return _number(v) if plain[0] else v if _is_constant(v) else float(v)
            if n in CONSTANTS:
                return CONSTANTS[n]
            if n in _AXES:
                if x is None:
                    fail(f"'{n}' is not allowed here")
                if _AXES[n] >= gdim:
                    fail(f"'{n}' does not exist in {gdim}D")
                return x[_AXES[n]]
            fail(f"unknown name '{n}'")
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow) and isinstance(node.left, ast.Name) \
                    and node.left.id in powers:
                b = exponent(node.right)
                if isinstance(b, float):
                    used.add(node.left.id)
                    return powers[node.left.id](b)
            a = visit(node.left)
            b = exponent(node.right) if isinstance(node.op, ast.Pow) else visit(node.right)
            if isinstance(node.op, ast.Pow) and isinstance(b, float) \
                    and abs(b) > MAX_EXPONENT:
                raise ConfigError(key, f"a formula whose constant exponents are at most "
                                  f"{MAX_EXPONENT:g} in magnitude (this one has {b:g})",
                                  _short(text))
            if isinstance(node.op, ast.Pow) and isinstance(b, float) and b.is_integer():
                # an integer exponent as an integer: UFL estimates rho**3 as degree 3p (exact)
                # but rho**3.0 as p + 2 (too low from P2 on: 6.9e-8 in the value identity of
                # a converged P3 solve with G = rho**3/3, and a quadrature error in J)
                b = int(b)
            ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                   ast.Div: lambda: a / b, ast.Pow: lambda: a ** b}
            for t, f in ops.items():
                if isinstance(node.op, t):
                    return f()
            fail(f"operator {type(node.op).__name__} is not supported")
        if isinstance(node, ast.UnaryOp):
            v = visit(node.operand)
            if isinstance(node.op, ast.USub):
                return -v
            if isinstance(node.op, ast.UAdd):
                return v
            fail("unary operator not supported")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS \
                    or node.keywords:
                name = getattr(node.func, "id", "?")
                fail(f"unknown function '{name}'")
            args = [visit(a) for a in node.args]
            try:
                return FUNCTIONS[node.func.id](*args)
            except TypeError:
                fail(f"wrong number of arguments to '{node.func.id}'")
        fail(f"'{ast.unparse(node)}' is not allowed")

    def exponent(node):
        """An exponent, numbers as numbers (UFL estimates ρ**3 as degree 3p, ρ**c as p + 2)."""
        plain[0] += 1
        try:
            return visit(node)
        finally:
            plain[0] -= 1

    used = set()
    try:
        expr = visit(tree)
        if not used and isinstance(expr, ufl.core.expr.Expr) \
                and ufl.domain.extract_unique_domain(expr) is None:
            try:                   # constant-valued, e.g. min(1, 2): a number, as 1 + 2 is
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")      # UFL warns before it gives up
                    expr = float(expr)
            except TypeError:      # UFL cannot fold it to a real number (sqrt of a negative)
                raise ConfigError(key, "a real-valued formula", _short(text)) from None
    except ZeroDivisionError:
        raise ConfigError(key, "a formula without division by zero", _short(text)) from None
    except OverflowError:
        raise ConfigError(key, "a formula whose numbers stay finite (overflow)",
                          _short(text)) from None
    except (ValueError, ArithmeticError) as e:
        # UFL folds constant subexpressions: log(0), sqrt of a negative, x/0 ...
        what = str(e).splitlines()[0][:60] if str(e) else type(e).__name__
        raise ConfigError(key, f"a formula that can be evaluated ({what})", _short(text)) \
            from None
    except RecursionError:
        raise ConfigError(key, f"a formula nested at most {MAX_DEPTH} deep", _short(text)) \
            from None
    if isinstance(expr, complex) or _is_complex_constant(expr):
        raise ConfigError(key, "a real-valued formula (this one is complex, e.g. the root of a "
                          "negative number)", _short(text))
    if isinstance(expr, float) and not math.isfinite(expr):
        raise ConfigError(key, "a finite value", _short(text))
    return expr


def _is_constant(v) -> bool:
    """A UFL Constant holding one number (a scalar ``dolfinx.fem.Constant``)."""
    return isinstance(v, ufl.Constant) and hasattr(v, "value") and v.ufl_shape == ()


def _number(v):
    """v, a parameter held as a Constant replaced by its value (a float)."""
    return float(v.value) if _is_constant(v) else v


def _mentions(tree, names: set) -> bool:
    """Does the formula use any of ``names``?"""
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(tree))


def parameter_constants(params: dict, mesh) -> dict:
    """``params`` as Constants on ``mesh``: the formulas of a problem built with them compile
    once for every value of the parameters (a study over κ in G = "kappa*rho**2/2" took
    2–2.5 s of form compilation per new value, a whole 2D 16² × 20 run 1.3 s without).
    A formula free of x and of the variables keeps the numbers (it folds to one)."""
    from petsc4py import PETSc

    import dolfinx
    return {k: dolfinx.fem.Constant(mesh, PETSc.ScalarType(float(v))) for k, v in params.items()}


def vanishes(text: str, key: str, variable: str, *, x=None, gdim: int = 0,
             params: dict | None = None) -> bool:
    """Is formula ``text`` identically zero: a literal 0, or 0 times something (e.g.
    c*rho**2 with c = 0)?  Probed with ``variable`` a UFL variable of value 1."""
    probe = parse(text, key, x=x, gdim=gdim, params=params,
                  variables={variable: ufl.variable(ufl.as_ufl(1.0))})
    return (isinstance(probe, float) and probe == 0.0) or isinstance(
        probe, ufl.constantvalue.Zero)


def torch_function(text: str, key: str, gdim: int, params: dict | None = None):
    """Formula ``text`` of the coordinates (no other variables) as a function of a torch tensor
    X of points (rows, ``gdim`` columns) returning one value per row, differentiable: the
    running potential V of the torch baselines, which must minimise the same objective as the
    PDE network.  The same language as :func:`parse` (a formula :func:`parse` accepts for
    ``key`` is read the same way here); torch is imported by the caller's process only."""
    import torch
    funcs = {"exp": torch.exp, "log": torch.log, "ln": torch.log, "sqrt": torch.sqrt,
             "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "tanh": torch.tanh,
             "sinh": torch.sinh, "cosh": torch.cosh, "atan": torch.atan, "abs": torch.abs,
             "erf": torch.special.erf}
    pair = {"min": torch.minimum, "max": torch.maximum}
    params = {k: float(_number(v)) for k, v in (params or {}).items()}
    tree = _parse_limited(text, key)
    binary = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
              ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
              ast.Pow: lambda a, b: a ** b}

    def visit(node, X):
        if isinstance(node, ast.Expression):
            return visit(node.body, X)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            n = node.id
            if n in params:
                return params[n]
            if n in CONSTANTS:
                return CONSTANTS[n]
            if n in _AXES and _AXES[n] < gdim:
                return X[:, _AXES[n]]
        elif isinstance(node, ast.BinOp) and type(node.op) in binary:
            return binary[type(node.op)](visit(node.left, X), visit(node.right, X))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = visit(node.operand, X)
            return -v if isinstance(node.op, ast.USub) else v
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = [visit(a, X) for a in node.args]
            if node.func.id in pair and len(args) == 2:
                a, b = (torch.as_tensor(v, dtype=X.dtype) for v in args)
                return pair[node.func.id](a, b)
            if node.func.id in funcs and len(args) == 1:
                return funcs[node.func.id](torch.as_tensor(args[0], dtype=X.dtype))
        raise ConfigError(key, "a formula of the coordinates that the UFL reader accepts",
                          _short(text))

    def f(X):
        v = visit(tree, X)
        return v if torch.is_tensor(v) and v.shape == X.shape[:1] else \
            torch.as_tensor(v, dtype=X.dtype).expand(X.shape[0]).clone()
    return f


# -- size and complexity limits, checked before anything is translated ------------------------
MAX_LENGTH = 2000          # characters
MAX_NODES = 400            # AST nodes
MAX_DEPTH = 40             # AST nesting depth
MAX_EXPONENT = 64.0        # |b| of a constant exponent in a**b


def _short(text, n=80):
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= n else text[:n] + f"... ({len(text)} characters)"


def _parse_limited(text: str, key: str):
    """ast.parse ``text`` after and with the size limits (ConfigError naming ``key``)."""
    t = text.strip()
    if len(t) > MAX_LENGTH:
        raise ConfigError(key, f"a formula of at most {MAX_LENGTH} characters",
                          f"{len(t)} characters")
    # Python's own parser nests ~200 brackets deep at most; count them first (cheap)
    depth = best = 0
    for c in t:
        depth += c in "([{"
        depth -= c in ")]}"
        best = max(best, depth)
    if best > MAX_DEPTH:
        raise ConfigError(key, f"a formula nested at most {MAX_DEPTH} deep", _short(t))
    try:
        tree = ast.parse(t, mode="eval")
    except SyntaxError as e:
        # Python gives no column (0) when the text ends before the expression does ("x0**")
        where = (f"syntax error at column {e.offset}" if e.offset and 0 < e.offset <= len(t)
                 else "it ends before the expression is complete")
        if e.msg and e.msg != "invalid syntax":
            where += f": {e.msg}"
        raise ConfigError(key, f"a valid formula ({where})", _short(t)) from None
    except (MemoryError, RecursionError, ValueError):
        raise ConfigError(key, "a valid formula", _short(t)) from None
    count = 0
    stack = [(tree, 0)]
    while stack:
        node, d = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ConfigError(key, f"a formula of at most {MAX_NODES} terms and operators",
                              _short(t))
        if d > MAX_DEPTH:
            raise ConfigError(key, f"a formula nested at most {MAX_DEPTH} deep", _short(t))
        stack.extend((c, d + 1) for c in ast.iter_child_nodes(node))
    return tree


def _is_complex_constant(expr) -> bool:
    return isinstance(expr, ufl.constantvalue.ComplexValue)


# -- evaluation on the mesh before the solve ---------------------------------------------------
def _points(mesh, degree: int):
    """Reference points: the Lagrange(degree) DOF points and a quadrature rule of 2*degree."""
    import basix
    import numpy as np
    from dolfinx.mesh import to_string
    cell = getattr(basix.CellType, to_string(mesh.topology.cell_type))
    lag = basix.create_element(basix.ElementFamily.P, cell, max(degree, 1),
                               basix.LagrangeVariant.equispaced).points
    q, _ = basix.make_quadrature(cell, max(2 * degree, 2))
    return np.vstack([lag, q])


def evaluate_on_mesh(expr, mesh, degree: int = 2):
    """Values of a scalar UFL expression (or number) at the DOF and quadrature points of every
    local cell of ``mesh`` (an array; empty on a rank without cells)."""
    import dolfinx
    import numpy as np
    if isinstance(expr, (int, float)):
        return np.array([float(expr)])
    from ufl.algorithms import expand_derivatives
    expr = expand_derivatives(expr)          # dG/drho of a G without rho is Zero
    if ufl.domain.extract_unique_domain(expr) is None:      # no mesh in it: a number
        return np.array([float(expr)])
    tdim = mesh.topology.dim
    n = mesh.topology.index_map(tdim).size_local
    e = dolfinx.fem.Expression(expr, _points(mesh, degree))
    cells = np.arange(n, dtype=np.int32)
    with np.errstate(all="ignore"):
        vals = e.eval(mesh, cells) if n else np.zeros((0, 1))
    return np.asarray(vals).ravel()


def check_finite_on_mesh(expr, key: str, mesh, degree: int = 2, text: str | None = None,
                         what: str = "") -> np.ndarray:
    """Raise ConfigError naming ``key`` if ``expr`` is NaN or infinite at a DOF or quadrature
    point of ``mesh`` (collective over the mesh's communicator); return the local values."""
    from mpi4py import MPI
    try:
        vals = evaluate_on_mesh(expr, mesh, degree)
    except (ZeroDivisionError, OverflowError, ValueError, ArithmeticError) as e:
        vals = None
        err = str(e).splitlines()[0][:60] if str(e) else type(e).__name__
    else:
        err = None
    bad = 0
    where = None
    if vals is not None and vals.size:
        finite = np.isfinite(vals)
        bad = int((~finite).sum())
    bad = mesh.comm.allreduce(bad + (1 if err else 0), op=MPI.SUM)
    if bad:
        if err is None and vals is not None:
            where = f"{bad} non-finite values"
        raise ConfigError(key, "a formula with finite values at the mesh points"
                          + (f" {what}" if what else "")
                          + f": {err or where}", _short(text) if text else None)
    return vals


def as_ufl(expr, mesh):
    """Wrap a float as a UFL constant on ``mesh`` so every result is a UFL expression."""
    if isinstance(expr, (int, float)):
        import dolfinx
        return dolfinx.fem.Constant(mesh, float(expr))
    return expr
