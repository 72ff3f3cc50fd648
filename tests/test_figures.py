"""The docs' measured figures against the tracked result files (benchmarks/figures.py): a figure the README
quotes must be what its file holds, and stand beside the file's name."""
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import figures  # noqa: E402
import figures_core  # noqa: E402
import figures_tables  # noqa: E402


def test_every_quoted_figure_is_what_its_tracked_file_holds():
    problems = figures.check()
    assert problems == [], "\n".join(problems)
    for fig in figures.FIGURES:
        if fig.quotes:
            assert figures.tracked(figures_core.RESULTS / fig.result), f"{fig.result} is quoted but not committed"


def _sandbox(tmp_path, monkeypatch, doc_text: str, result_json: str):
    """A doc and a result file in a folder that stands in for the repository and its results."""
    doc = tmp_path / "doc.md"
    doc.write_text(doc_text)
    (tmp_path / "x.json").write_text(result_json)
    monkeypatch.setattr(figures_core, "REPO", tmp_path)
    monkeypatch.setattr(figures_core, "RESULTS", tmp_path)
    return doc


def test_the_check_catches_a_figure_that_drifts(tmp_path, monkeypatch):
    _sandbox(tmp_path, monkeypatch, "| the run ([`x.json`](x.json)) | **84.49** | 36.3 min |\n\nelsewhere 12.34\n",
             '{"a": 84.49, "b": 12.34, "m": 36.3}')
    fig = figures.Figure("x", "PY x.py", "x.json", 1, "", (
        figures.Quote("doc.md", lambda d: d["a"]), figures.Quote("doc.md", lambda d: d["m"], "{:.1f} min")))
    assert figures.check((fig,)) == []
    # the file says something else: the doc is stale
    (tmp_path / "x.json").write_text('{"a": 84.5, "m": 36.3}')
    assert figures.check((fig,)) == ["x: doc.md does not say '84.50' () beside x.json"]
    # a figure that is in the doc, but not beside its file's name, does not count
    far = figures.Figure("x", "PY x.py", "x.json", 1, "", (figures.Quote("doc.md", lambda d: 12.34),))
    assert figures.check((far,)) == ["x: doc.md does not say '12.34' () beside x.json"]
    (tmp_path / "x.json").unlink()
    assert "missing" in figures.check((fig,))[0]


def test_a_generated_table_is_written_from_its_file_and_a_stale_one_is_caught(tmp_path, monkeypatch):
    doc = _sandbox(tmp_path, monkeypatch, "intro\n\n<!-- table: t -->\n| old | table |\n<!-- /table -->\n\nafter\n",
                   '{"rows": [["a", 1.5], ["b", 2.25]]}')
    table = figures.Table("doc.md", "t", lambda d: figures.markdown(("arm", "score"), d["rows"]))
    fig = figures.Figure("x", "PY x.py", "x.json", 1, "", tables=(table,))
    assert figures.check((fig,)) == ["x: the table t in doc.md is not what x.json holds; "
                                     "`python benchmarks/figures.py tables` writes it"]
    assert figures.write_tables((fig,)) == ["doc.md"]
    assert doc.read_text() == ("intro\n\n<!-- table: t -->\n| arm | score |\n| --- | --- |\n| a | 1.5 |\n"
                               "| b | 2.25 |\n<!-- /table -->\n\nafter\n")
    assert figures.check((fig,)) == [] and figures.write_tables((fig,)) == []
    (tmp_path / "x.json").write_text('{"rows": [["a", 1.5]]}')  # a rerun changed the file: the doc is stale
    assert "not what x.json holds" in figures.check((fig,))[0]
    doc.write_text("no markers\n")
    assert "has no <!-- table: t -->" in figures.check((fig,))[0]


def test_bench_quick_lists_the_short_commands_in_order(capsys, monkeypatch):
    monkeypatch.delenv("OEEM_GLAS_ROOT", raising=False)
    assert figures.main(["run", "--quick", "--dry-run"]) == 0
    out = capsys.readouterr().out
    quick = [f for f in figures.FIGURES if figures.quick(f)]
    assert quick and all(f.minutes <= figures.QUICK_MINUTES and (f.quotes or f.tables) for f in quick)
    assert [line.split(" (")[0][3:] for line in out.splitlines() if line.startswith("== ")] == [f.name for f in quick]
    assert "benchmarks/end_to_end.py" not in out.split("== demo")[0]  # the 37-min run is not quick
    assert figures.main(["run", "--only", "nope"]) == 2


def test_compare_shows_each_quoted_figure_and_table_row_a_rerun_changed(tmp_path, monkeypatch):
    """What a reviewer reads after ``make bench-quick`` on a fresh clone: committed against remade."""
    _sandbox(tmp_path, monkeypatch, "doc\n", '{"wall": 46.0, "score": 96.09, "rows": [["a", 1], ["b", 2]]}')
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    monkeypatch.setattr(figures_core, "RESULTS", tmp_path / "benchmarks" / "results")
    result = figures_core.RESULTS / "x.json"
    result.write_text((tmp_path / "x.json").read_text())
    (figures_core.RESULTS / "y.json").write_text('{"n": 7}')  # another file a table sets beside its own
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "results"], check=True)
    fig = figures.Figure("x", "PY x.py", "x.json", 1, "", (
        figures.Quote("doc.md", lambda d: d["wall"], "{:.0f} s", "wall time"),
        figures.Quote("doc.md", lambda d: d["score"], what="testA")),
        tables=(figures.Table("doc.md", "t", lambda d: figures.markdown(("arm", "n"), d["rows"])),
                figures.Table("doc.md", "u",
                              lambda d: figures.markdown(("y",), [(figures_core.result_file("y.json")["n"],)]))))
    assert figures.compare((fig,)) == {"against": "HEAD", "remade": [], "quotes_unchanged": 0, "rows": []}
    result.write_text('{"wall": 41.0, "score": 96.09, "rows": [["a", 1], ["b", 3]]}')  # a rerun
    (figures_core.RESULTS / "y.json").write_text('{"n": 8}')
    assert figures.compare((fig,)) == {"against": "HEAD", "remade": ["x"], "quotes_unchanged": 1, "rows": [
        {"figure": "x", "what": "wall time", "committed": "46 s", "remade": "41 s", "change_%": -10.9},
        {"figure": "x", "what": "table t", "committed": "| b | 2 |", "remade": "| b | 3 |"},
        {"figure": "x", "what": "table u", "committed": "| 7 |", "remade": "| 8 |"}]}


def test_the_budget_schedule_counts_the_last_rounds_longer_training_and_each_resize():
    """The planner's schedule as the budget table states it: one round is the last round (trained 1.5 x longer),
    and a training the planner sized again shows both numbers."""
    cfg = {"classifier": {"epochs": 8}, "cam": {"scales": [1.0, 1.5, 2.0]}, "segmentation": {"iterations": 2000},
           "selftrain": {"rounds": 2, "last_round_scale": 1.5}}
    one_round = {"config": cfg, "schedule": {
        "classifier_epochs": 8, "cam_scales": [1.0, 1.5], "segmentation_iterations": 2000, "rounds": 1,
        "resized": {"0": {"iterations": 2000, "planned_iterations": 1540},
                    "1": {"iterations": 2000, "planned_iterations": 2000}}}}
    assert figures_tables.schedule_text(one_round) == ("8 epochs, CAM scales 1 + 1.5, 2000 + 3000 iterations "
                                                       "(sized again: 1540 -> 2000), one round")
    whole = {"config": cfg, "schedule": {"classifier_epochs": 8, "cam_scales": [1.0, 1.5, 2.0],
                                         "segmentation_iterations": 2000, "rounds": 2}}
    assert figures_tables.schedule_text(whole) == ("the whole preset: 8 epochs, CAM scales 1 + 1.5 + 2, "
                                                   "2000 + 2000 + 3000 iterations, two rounds")


@cache
def _help(script: Path, sub: str | None = None) -> str:
    """A script's ``--help`` (of a sub-command when given), asked once per run: each asks a fresh Python."""
    return subprocess.run([sys.executable, str(script), *([sub] if sub else []), "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120).stdout


@pytest.mark.parametrize("fig", figures.FIGURES, ids=lambda f: f.name)
def test_every_figure_command_names_a_script_and_flags_it_has(fig):
    for part in fig.command.split("&&"):
        words = shlex.split(part.replace("PY=PY", "").replace("xvfb-run -a", ""))
        script = ROOT / next(w for w in words if w.startswith("benchmarks/"))
        assert script.is_file(), script
        if script.suffix != ".py":
            continue
        # every --flag of the command is one the script (or its sub-command) accepts
        helps = _help(script)
        subs = [w for w in words[words.index(str(script.relative_to(ROOT))) + 1:] if not w.startswith("-")]
        if subs and re.search(rf"\b{re.escape(subs[0])}\b", helps.split("\n\n")[0] + helps):
            helps += _help(script, subs[0])
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert flag in helps, f"{script.name} has no {flag}"


def test_run_skips_a_figure_whose_inputs_another_figure_makes_are_missing(monkeypatch, capsys):
    """On a fresh clone the projects other figures read are not there: `run` says which figure makes them and goes
    on, instead of failing; once they exist the command runs (and its failure counts)."""
    fig = figures.Figure("x", "PY -c 'raise SystemExit(3)'", "x.json", 1, "a figure", needs_glas=False)
    monkeypatch.setattr(figures, "FIGURES", (fig,))
    monkeypatch.setattr(figures, "NEEDS", {"x": (("benchmarks/results/no-such.oeem.zarr",), "maker")})
    assert figures.main(["run", "--only", "x"]) == 0
    captured = capsys.readouterr()
    assert "x: skipped" in captured.out and "--only maker" in captured.out and "skipped" in captured.err
    monkeypatch.setattr(figures, "NEEDS", {"x": (("README.md",), "maker")})
    assert figures.main(["run", "--only", "x"]) == 1
    assert "failed: x" in capsys.readouterr().err
