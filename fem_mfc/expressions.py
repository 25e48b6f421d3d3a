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
          params: dict | None = None):
    """Translate formula ``text`` (config key ``key``) into a UFL expression.

    ``x`` is ``ufl.SpatialCoordinate(mesh)`` (or None when coordinates are not allowed), ``gdim``
    its length; ``variables`` maps further names (e.g. ``{"rho": rho}``) to UFL expressions;
    ``params`` maps names to numbers.
    """
    variables = dict(variables or {})
    params = dict(params or {})
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(key, "a non-empty formula", text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ConfigError(key, f"a valid formula (syntax error at column {e.offset})", text) \
            from None

    def fail(what):
        raise ConfigError(key, f"a formula using only arithmetic, x0..x{max(gdim - 1, 0)}, "
                          f"{', '.join(sorted(set(variables) | set(params))) or 'no variables'}"
                          f" and known functions ({what})", text)

    def visit(node):
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.Name):
            n = node.id
            if n in variables:
                return variables[n]
            if n in params:
                return float(params[n])
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
            a, b = visit(node.left), visit(node.right)
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

    expr = visit(tree)
    if isinstance(expr, float) and not math.isfinite(expr):
        raise ConfigError(key, "a finite value", text)
    return expr


def as_ufl(expr, mesh):
    """Wrap a float as a UFL constant on ``mesh`` so every result is a UFL expression."""
    if isinstance(expr, (int, float)):
        import dolfinx
        return dolfinx.fem.Constant(mesh, float(expr))
    return expr
