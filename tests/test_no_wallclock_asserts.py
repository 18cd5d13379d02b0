"""No notebook and no test asserts on wall-clock time (docs/method.md §8.4): a result must not depend on how
busy the machine was. Costs are checked in FLOPs or network evaluations; wall time is only reported.

The scan is an AST taint: names bound from a clock (``time.time()``, ``perf_counter()``, …) or from a
function whose name says it measures time (``seconds_per_step``, ``*_cost``, ``*elapsed*``, …), and names
computed from those, must not appear in an ``assert``; nor may a subscript key that names a time unit."""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLOCKS = {"time", "perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "process_time", "time_ns"}
TIMING_NAME = re.compile(r"seconds|elapsed|wall_?(time|s\b)|timing|timeit|speed|_cost$|^cost$")
TIME_KEY = re.compile(r"s/step|seconds|images/s|elapsed|wall|\bsec\b")


def _called_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _is_source(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            name = _called_name(n)
            owner = n.func.value.id if isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name) else ""
            if (owner == "time" and name in CLOCKS) or name in CLOCKS - {"time"} or TIMING_NAME.search(name):
                return True
    return False


def _names(node: ast.AST) -> set:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _positive_only(test: ast.AST) -> bool:
    """``0 < d``, ``d > 0`` (and ``and`` of those): a duration is positive on any machine, however busy."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return all(_positive_only(v) for v in test.values)
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        zero = lambda n: isinstance(n, ast.Constant) and n.value == 0  # noqa: E731
        return ((zero(test.left) and isinstance(test.ops[0], ast.Lt)) or
                (zero(test.comparators[0]) and isinstance(test.ops[0], ast.Gt)))
    return False


def _time_keys(test: ast.AST) -> bool:
    return any(isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and isinstance(n.slice.value, str)
               and TIME_KEY.search(n.slice.value) for n in ast.walk(test))


def wallclock_asserts(source: str) -> list[str]:
    """The ``assert`` statements of ``source`` that involve a wall-clock measurement: statements in order,
    a name tainted when bound from a clock or a tainted name (and cleared when rebound from anything else);
    each function body starts from the module's taint."""
    bad = []

    def visit(body, tainted):
        for st in body:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(st.body, set(tainted))
                continue
            if isinstance(st, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and st.value is not None:
                hot = _is_source(st.value) or bool(_names(st.value) & tainted)
                for t in (st.targets if isinstance(st, ast.Assign) else [st.target]):
                    tainted = (tainted | _names(t)) if hot else (tainted - _names(t) if isinstance(st, ast.Assign) else tainted)
            elif isinstance(st, ast.Assert):
                t = st.test
                if (_is_source(t) or _names(t) & tainted or _time_keys(t)) and not _positive_only(t):
                    bad.append(ast.unparse(st))
            if isinstance(st, (ast.For, ast.AsyncFor)):
                hot = _is_source(st.iter) or bool(_names(st.iter) & tainted)
                tainted = (tainted | _names(st.target)) if hot else (tainted - _names(st.target))
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(st, field, None)
                if inner and not isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    tainted = visit(inner, tainted)
        return tainted

    visit(ast.parse(source).body, set())
    return bad


def notebook_source(path: Path) -> str:
    """The code cells of a notebook, one program (IPython magics and shell lines dropped)."""
    cells = json.loads(path.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return "\n".join(ln for c in code for ln in c.splitlines() if not ln.lstrip().startswith(("%", "!")))


FILES = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "tests").glob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_no_assertion_on_wall_clock_time(path):
    src = notebook_source(path) if path.suffix == ".ipynb" else path.read_text()
    bad = wallclock_asserts(src)
    assert not bad, (f"{path.relative_to(ROOT)} asserts on wall-clock time (fails on a busy machine); check FLOPs "
                     f"or network evaluations instead and report the time: {bad}")


def test_the_scan_sees_a_timed_assertion():
    assert wallclock_asserts("import time\nt0 = time.time()\nx = 1\nd = time.time() - t0\nassert d < 5\n")
    assert wallclock_asserts("cost = mod.cdm_cost(plan)\nassert all(r['× baseline'] > 1 for r in cost[1:])\n")
    assert wallclock_asserts("assert row['s/step'] < 2 * base\n")
    assert not wallclock_asserts("import time\nd = time.perf_counter()\nassert 0 < d\nd = 3\nassert d == 3\n")
    assert not wallclock_asserts("flops = mod.cdm_flops(plan)\nassert all(r['× baseline'] > 1 for r in flops[1:])\n")
