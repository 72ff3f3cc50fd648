"""The house rules of the code base, checked: no import cycles, no module reaching into another's private names,
one declaration per setting, and a CLI that behaves like its neighbours (``--version``, repeatable ``--set``,
help for every flag)."""
import argparse
import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from pipeline.cli import build_parser
from pipeline.config import PipelineConfig, check, preset, settings_of

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.with_suffix("").relative_to(ROOT).parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(imported module, imported name) of every import in the file, at any depth (lazy imports count too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub, None) if sub in modules else (base, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


@pytest.mark.parametrize("package", ["pipeline", "oeem_napari"])
def test_no_import_cycles(package):
    modules = _modules(package)
    graph = defaultdict(set)
    for name, path in modules.items():
        for target, _ in _imports(name, path, modules):
            if target in modules and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    seen, on_path, cycles = set(), [], []

    def visit(node):
        if node in on_path:
            cycles.append(on_path[on_path.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        on_path.pop()

    for node in sorted(modules):
        visit(node)
    assert not cycles, f"import cycles: {cycles}"
    assert sum(len(v) for v in graph.values()) > {"pipeline": 50, "oeem_napari": 3}[package]  # really read


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for package in ("pipeline", "oeem_napari"):
        modules = _modules(package)
        for name, path in modules.items():
            for target, imported in _imports(name, path, modules):
                if imported and imported.startswith("_") and not imported.startswith("__") \
                        and target.startswith(("pipeline", "oeem_napari")):
                    offenders.append(f"{name} imports {target}.{imported}")
    assert not offenders, offenders


# The documented direction of imports (docs/architecture.md, "Which room may use which"): each room of pipeline/
# and the rooms (or single modules) it may import. A module's own room is always allowed.
BASE = {"pipeline", "pipeline.config", "pipeline.errors", "pipeline.progress"}
ALLOWED = {
    "pipeline.config": {"pipeline.errors"},
    "pipeline.device": BASE,
    "pipeline.metrics": BASE,
    "pipeline.io": BASE | {"pipeline.metrics", "pipeline.store", "pipeline.stages.patches"},
    "pipeline.store": BASE | {"pipeline.io.data", "pipeline.stages.patches"},
    "pipeline.stages": BASE | {"pipeline.device", "pipeline.metrics", "pipeline.io", "pipeline.store"},
    "pipeline.budget": BASE | {"pipeline.device", "pipeline.metrics", "pipeline.io", "pipeline.store",
                               "pipeline.stages"},
    "pipeline.review": BASE | {"pipeline.device", "pipeline.metrics", "pipeline.io", "pipeline.store",
                               "pipeline.stages"},
    "pipeline.slides": BASE | {"pipeline.device", "pipeline.metrics", "pipeline.io", "pipeline.store",
                               "pipeline.stages"},
}
# the few edges against the grain, each one a documented decision
EXCEPTIONS = {
    ("pipeline.stages.run", "pipeline.budget"),  # the whole run sizes itself with the planner
    ("pipeline.stages.segment", "pipeline.review.regions"),  # segmentation.error_prob_weight: the review's trust
    ("pipeline.stages.predict_files", "pipeline.slides.cluster"),  # images on a dask cluster
}


def _room(module: str) -> str | None:
    for room in sorted(ALLOWED, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return None


def test_imports_go_the_documented_way():
    modules = _modules("pipeline")
    against = []
    for name, path in modules.items():
        room = _room(name)
        if room is None:  # cli, __main__, the package itself: they use everything
            continue
        for target, _ in _imports(name, path, modules):
            if not target.startswith("pipeline") or target == name:
                continue
            allowed = ALLOWED[room] | {room}
            ok = any(target == a or target.startswith(a + ".") for a in allowed) or target == "pipeline"
            if not ok and (name, target) not in EXCEPTIONS:
                against.append(f"{name} -> {target}")
    assert not against, f"imports against the documented direction: {sorted(set(against))}"
    for forbidden in ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui"):
        users = [n for n, p in modules.items() if any(t.split(".")[0] == forbidden for t, _ in _imports(n, p, modules))]
        assert not users, f"{forbidden} imported in pipeline/: {users}"


def test_pipeline_is_grouped_in_rooms():
    rooms = {p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").is_file()}
    assert {"stages", "store", "slides", "review", "io", "cli"} <= rooms
    flat = [p.name for p in (ROOT / "pipeline").glob("*.py")]
    assert len(flat) <= 10, f"too many modules at the top of pipeline/: {flat}"


def test_every_setting_is_declared_with_help_and_passes_its_own_checks():
    for name in ("paper", "cpu", "tiny"):
        settings = settings_of(preset(name))
        missing = [s.key for s in settings if not s.help]
        assert not missing, f"settings without help: {missing}"
        assert check(preset(name))
        for s in settings:
            assert s.accepts(s.value), f"{name}: {s.key}={s.value!r} is outside its own declaration"
    keys = [s.key for s in settings_of(PipelineConfig())]
    assert len(keys) == len(set(keys)) > 80


def _parsers():
    ap = build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return ap, sub.choices


def test_every_flag_has_help_and_says_its_default():
    ap, commands = _parsers()
    undocumented = []
    for name, p in commands.items():
        flags = set()
        for action in p._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0]
            assert flag not in flags, f"oeem {name}: {flag} twice"
            flags.add(flag)
            if not action.help or ("default" not in action.help and not isinstance(action, argparse._VersionAction)):
                undocumented.append(f"oeem {name} {flag}")
    assert not undocumented, undocumented


def test_flags_come_from_the_setting_declarations():
    _, commands = _parsers()
    dests = {a.option_strings[0]: a.dest for a in commands["train-seg"]._actions if a.option_strings}
    assert dests["--loss"] == "setting:segmentation.loss"
    assert dests["--labels"] == "setting:segmentation.label_source"
    assert dests["--lr"] == "setting:segmentation.lr"
    cls = {a.option_strings[0]: a.dest for a in commands["train-cls"]._actions if a.option_strings}
    assert cls["--lr"] == "setting:classifier.lr" and cls["--epochs"] == "setting:classifier.epochs"


def test_set_is_repeatable_and_does_not_swallow_the_project():
    args = build_parser().parse_args(["patches", "--set", "patches.size=96", "--set", "patches.stride=48", "P"])
    assert args.project == "P" and args.set == ["patches.size=96", "patches.stride=48"]


def test_one_name_for_redo_and_for_which_labels_old_names_still_work():
    ap = build_parser()
    assert ap.parse_args(["init", "sample", "P", "--redo"]).redo
    assert ap.parse_args(["init", "sample", "P", "--overwrite"]).redo
    assert ap.parse_args(["regions", "P", "--refresh"]).redo
    assert ap.parse_args(["train-seg", "P", "--restart"]).redo
    assert ap.parse_args(["evaluate", "P", "--key", "pseudo"]).labels == "pseudo"
    assert ap.parse_args(["export", "P", "out", "--labels", "prediction"]).labels == "prediction"


def test_version():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True, timeout=120)
    from pipeline import __version__

    assert out.returncode == 0 and out.stdout.strip() == f"oeem {__version__}"
