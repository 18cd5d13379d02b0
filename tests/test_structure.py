"""The shape of lib/: imports run one way, the neighbouring methods sit apart, references resolve.

The import graph is read from the source (every `import`/`from ... import`, at module level or
inside functions), so a cycle hidden in a function body counts as a cycle."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
# The folder rule: lib/infra (config, run directory, checkpoints, paths, processes, progress) is the
# bottom and imports nothing else of lib; the paper (the modules at the top of lib/) imports only
# lib.infra; the neighbours (lib/related) and the measurement (lib/measure) import the paper and
# lib.infra but not each other; the experiment (lib/experiment) may import everything.
LAYERS = {"infra": 0, "paper": 1, "related": 2, "measure": 2, "experiment": 3}
# Where the paper's code dispatches to a neighbour by name: the sampler registry lists the neighbouring
# samplers beside its own, and the training loop's loss dispatch trains the CDM arm. Nothing else.
REGISTRIES = {("lib.samplers", "lib.related.restart"), ("lib.samplers", "lib.related.timeshift"),
              ("lib.recipe", "lib.related.cdm")}
# The method's own foundations: they must never depend on a neighbouring method (lib.related).
FOUNDATIONS = ("lib.unet", "lib.mlp", "lib.schedule", "lib.losses", "lib.data", "lib.transfer", "lib.analytic",
               "lib.factory", "lib.measure.metrics", "lib.measure.classifier", "lib.measure.toymetrics",
               "lib.measure.stats", "lib.infra.checkpoint", "lib.infra.rundir", "lib.infra.config", "lib.infra.paths",
               "lib.infra.progress", "lib.experiment.report")


def layer(module: str) -> str:
    """The layer of a lib module: its subpackage, or 'paper' for the modules at the top of lib/ and the
    checkpoint formats (lib/pretrained: they build the paper's UNet, and training starts from them)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "paper"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def _imports(path: Path):
    """(imported lib module, imported names) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name == "lib" or a.name.startswith("lib.")]
        elif isinstance(node, ast.ImportFrom) and node.module and (node.module == "lib" or node.module.startswith("lib.")):
            names = [a.name for a in node.names]
            if node.module in MODULES and all(f"{node.module}.{n}" not in MODULES for n in names):
                out.append((node.module, names))  # from lib.x import names
            else:  # from lib import x, y (submodules)
                out += [(f"{node.module}.{n}", []) for n in names if f"{node.module}.{n}" in MODULES]
    return out


def _graph():
    return {m: sorted({dep for dep, _ in _imports(p) if dep in MODULES and dep != m and dep != "lib"})
            for m, p in MODULES.items()}


def _reachable(graph, start):
    seen, stack = set(), list(graph[start])
    while stack:
        m = stack.pop()
        if m not in seen:
            seen.add(m)
            stack += graph[m]
    return seen


def test_no_import_cycle_inside_lib():
    graph = _graph()
    cycles = [m for m in graph if m in _reachable(graph, m)]
    assert not cycles, f"modules on an import cycle: {cycles}; graph: {json.dumps(graph, indent=1)}"


def test_imports_follow_the_folder_rule():
    graph = _graph()
    bad = [(m, d) for m, deps in graph.items() for d in deps
           if (m, d) not in REGISTRIES and (LAYERS[layer(d)] > LAYERS[layer(m)]
                                             or (layer(d) != layer(m) and LAYERS[layer(d)] == LAYERS[layer(m)]))]
    assert not bad, (f"imports against the folder rule (infra <- paper <- related, measure <- experiment): {bad}; "
                     "move the code to the layer that may import it")


def test_the_folder_rule_catches_an_upward_import():
    assert layer("lib.infra.config") == "infra" and layer("lib.samplers") == "paper"
    assert layer("lib.related.cdm") == "related" and layer("lib.experiment.runs") == "experiment"
    assert LAYERS[layer("lib.experiment.runs")] > LAYERS[layer("lib.train")]  # train -> experiment would be flagged


def test_the_top_of_lib_is_the_paper():
    top = sorted(p.stem for p in LIB.glob("*.py") if p.stem != "__init__")
    subpackages = sorted(p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert subpackages == ["experiment", "infra", "measure", "pretrained", "related"], subpackages
    assert len(top) <= 14, f"lib/ holds {len(top)} modules at the top: {top}; the paper's modules only"


MAX_MODULE_LINES = 400  # one concern per module (docs/code.md)
MAX_NOTEBOOK_CODE_LINES = 110  # non-blank code lines after the bootstrap cell: notebooks stay thin


def test_no_lib_module_is_over_its_line_budget():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concern): {long}"


def notebook_code_lines(nb: dict) -> int:
    """Non-blank lines of the code cells after the first (the bootstrap cell, kept short on its own)."""
    code = [c for c in nb["cells"] if c["cell_type"] == "code"][1:]
    return sum(1 for c in code for line in "".join(c["source"]).splitlines() if line.strip())


def test_no_notebook_is_over_its_code_budget():
    assert notebook_code_lines({"cells": [{"cell_type": "code", "source": ["boot\n"]},
                                          {"cell_type": "code", "source": ["a = 1\n", "\n", "b = 2\n"]}]}) == 2
    long = {p.name: n for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
            if (n := notebook_code_lines(json.loads(p.read_text()))) > MAX_NOTEBOOK_CODE_LINES}
    assert not long, f"notebooks over {MAX_NOTEBOOK_CODE_LINES} code lines (move code to lib/): {long}"


def _defined_names(tree: ast.Module):
    """Public constants and classes a module defines: assigned, or imported under another name."""
    for n in tree.body:
        if isinstance(n, ast.Assign):
            yield from (t.id for t in n.targets if isinstance(t, ast.Name))
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            yield n.target.id
        elif isinstance(n, ast.ClassDef):
            yield n.name
        elif isinstance(n, ast.ImportFrom):
            yield from (a.asname for a in n.names if a.asname and a.asname != a.name)


def test_one_meaning_per_name():
    """A public constant or class (UPPER_CASE or CapWords) is defined in one lib module only."""
    where = {}
    for m, p in MODULES.items():
        for name in set(_defined_names(ast.parse(p.read_text()))):
            if name[0].isupper():
                where.setdefault(name, []).append(m)
    assert sorted(_defined_names(ast.parse("A = 1\nfrom x import B as C\nclass D: pass"))) == ["A", "C", "D"]
    twice = {n: ms for n, ms in where.items() if len(ms) > 1}
    assert not twice, f"names that mean different things in different modules (rename one): {twice}"


def test_the_tree_is_ruff_clean():
    """ruff (configured in pyproject.toml, pinned in requirements-dev.txt) over lib, tests, scripts, bench."""
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_no_importlib_tricks_in_lib():
    offenders = [m for m, p in MODULES.items() if re.search(r"\bimportlib\b|__import__\(", p.read_text())]
    assert not offenders, f"dynamic imports hide dependencies from the import graph: {offenders}"


def test_foundations_never_reach_the_neighbouring_methods():
    graph = _graph()
    for m in FOUNDATIONS:
        if m in graph:
            bad = sorted(d for d in _reachable(graph, m) | set(graph[m]) if d.startswith("lib.related"))
            assert not bad, f"{m} depends on the neighbouring methods {bad}; they must sit apart (lib/related/)"


def test_no_private_names_imported_across_modules():
    bad = [(m, dep, n) for m, p in MODULES.items() for dep, names in _imports(p) for n in names
           if n.startswith("_") and dep != m]
    assert not bad, f"private names imported across modules (make them public or move them): {bad}"


def test_the_registry_lists_every_sampler_right_after_import():
    code = "import lib.samplers as s; print(','.join(sorted(s.METHODS)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    listed = set(r.stdout.strip().split(","))
    assert {"ddim", "ddpm", "spndm", "pndm", "deis", "ts-ddim", "ts-pndm", "heun", "restart"} <= listed, listed


# ---------------------------------------------------------------------------- references resolve
REF = re.compile(r"(?<![\w./-])((?:docs|lib|tests|bench|scripts|notebooks|binder)/[\w./-]*\w\.(?:md|py|ipynb|txt|json|csv))")


def _texts():
    for p in list(LIB.rglob("*.py")) + list((ROOT / "tests").glob("*.py")) + list((ROOT / "bench").glob("*.py")) \
            + list((ROOT / "scripts").glob("*.py")) + list((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        yield p, p.read_text()
    for p in (ROOT / "notebooks").glob("*.ipynb"):
        nb = json.loads(p.read_text())
        yield p, "\n".join("".join(c["source"]) for c in nb["cells"])


def test_every_file_reference_resolves():
    missing = sorted({(str(p.relative_to(ROOT)), ref) for p, text in _texts() for ref in REF.findall(text)
                      if not (ROOT / ref).exists() and "*" not in ref and "<" not in ref})
    assert not missing, f"references to files that are not in the repository: {missing}"


NOTE = re.compile(r"(?<![\w/.<-])([A-Z][A-Za-z0-9_-]*\.md)\b")  # a note cited by its bare name (README.md)
UP = re.compile(r"(?<![\w.])((?:\.\./)+[\w./-]*\w)")  # a path that climbs out of its folder


def test_every_note_named_is_in_the_repository():
    """A Markdown note cited by name (e.g. README.md) is one of the repository's own."""
    present = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    present.add("REHEARSAL.md")  # written by scripts/rehearse.py beside a rehearsal's tables, never committed
    missing = sorted({(str(p.relative_to(ROOT)), n) for p, text in _texts() for n in NOTE.findall(text)
                      if n not in present})
    assert not missing, f"notes cited that the repository does not hold (write them in docs/): {missing}"


def _inside(p: Path, ref: str) -> bool:
    target = (p.parent / ref).resolve()
    return target.is_relative_to(ROOT) and target.exists()


def test_no_reference_leaves_the_repository():
    """A path that climbs out of its folder lands on a file of the repository, seen from the file naming it."""
    out = sorted({(str(p.relative_to(ROOT)), ref) for p, text in _texts() for ref in UP.findall(text)
                  if not _inside(p, ref)})
    assert not out, f"references to files outside the repository (or to none): {out}"


def test_method_notes_have_the_cited_sections():
    text = (ROOT / "docs" / "method.md").read_text()
    cited = {m for _, t in _texts() for m in re.findall(r"docs/method\.md §(\d+(?:\.\d+)?)", t)}
    for sec in cited:
        assert re.search(rf"^#+ §{re.escape(sec)}\b", text, re.M), f"docs/method.md has no section §{sec}"


def test_one_fan_out_mechanism():
    """Work reaches worker processes one way: lib.infra.processes starts them, and only
    lib.experiment.workers hands it calls (one config encoding, lib.infra.processes.job_context)."""
    starts = [m for m, p in MODULES.items() if re.search(r"subprocess\.(Popen|run|call|check_call|check_output)\(", p.read_text())]
    assert starts == ["lib.infra.processes"], starts
    fans = [m for m, p in MODULES.items() if "run_parallel(" in p.read_text() and m != "lib.infra.processes"]
    assert fans == ["lib.experiment.workers"], fans
    mains = [m for m, p in MODULES.items() if "JOB.json" in p.read_text() or "def _worker(" in p.read_text()]
    assert not mains, f"a worker entry point of its own (use lib.experiment.workers): {mains}"
