"""Every measured figure the README and docs quote: the command that makes it, how long it takes, the tracked
result file it lands in, and the figures of that file the docs quote.

    python benchmarks/figures.py list              # what exists, what is tracked, minutes on 2 cores
    python benchmarks/figures.py check             # do the docs quote what the tracked files hold?
    python benchmarks/figures.py tables            # write the docs' generated tables from the files
    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/figures.py run [--quick] [--only NAME ...]
    python benchmarks/figures.py compare           # the figures remade here against the committed files

``make bench`` runs every command one after the other (2 cores: one torch job at a time, or every timing is
off); ``make bench-quick`` only those the docs quote that are expected under 15 minutes. ``run`` ends with
``compare``: each quoted figure and table row as committed and as remade, side by side. A quoted figure must
stand in the same paragraph (or table row) as the name of its file, so a reader of the docs can tell where it
comes from; ``check`` (and ``tests/test_figures.py``) fails when the docs and the files disagree.

The figures themselves are declared in ``figures_catalog.py`` (their tables in ``figures_tables.py``, the types
and file access in ``figures_core.py``); this file checks, writes and runs them.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import figures_core as core
from figures_catalog import FIGURES, NEEDS
from figures_core import Figure, Quote, Table, markdown  # noqa: F401 - what a figure is made of, for callers

QUICK_MINUTES = 15.0


def load(fig: Figure) -> dict | None:
    path = core.RESULTS / fig.result
    return json.loads(path.read_text()) if path.is_file() else None


def tracked(path: Path) -> bool:
    done = subprocess.run(["git", "-C", str(core.REPO), "ls-files", "--error-unmatch", str(path)], capture_output=True)
    return done.returncode == 0


def blocks(text: str) -> list[tuple[str, str]]:
    """(block, where it stands) pairs: each paragraph, list item and table row, with the text that introduces it -
    a table row its table's intro paragraph, an indented paragraph the list item it continues. A quoted figure must
    stand in a block; its file's name in the block or its introduction."""
    text = "\n".join(line for line in text.splitlines() if not line.startswith("<!-- "))  # a table's markers
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    out: list[tuple[str, str]] = []
    intro = ""
    for para in paragraphs:
        lines = para.splitlines()
        is_table = all(line.lstrip().startswith("|") for line in lines)
        # an indented paragraph continues the list item above; a list belongs to the paragraph that introduces it
        continues = para.startswith((" ", "\t", "- ", "* "))
        if is_table:
            out += [(row, row + "\n" + intro) for row in lines]
            continue
        items, current = [], []
        for line in lines:
            if line.lstrip().startswith(("- ", "* ")) and current:
                items.append("\n".join(current))
                current = []
            current.append(line)
        items.append("\n".join(current))
        for item in items:
            out.append((item, item + "\n" + (intro if continues else "")))
        if not continues:
            intro = items[-1]
        else:
            intro = intro + "\n" + para
    return [(" ".join(b.split()), " ".join(c.split())) for b, c in out]


def table_span(text: str, table: Table) -> tuple[int, int] | None:
    """Where ``table``'s lines stand in a doc's text (between its markers), or None."""
    start, end = table.markers()
    i = text.find(start + "\n")
    j = text.find(end, i) if i >= 0 else -1
    return None if i < 0 or j < 0 else (i + len(start) + 1, j)


def check_tables(fig: Figure, data: dict) -> list[str]:
    problems = []
    for table in fig.tables:
        text = (core.REPO / table.doc).read_text()
        span = table_span(text, table)
        if span is None:
            problems.append(f"{fig.name}: {table.doc} has no {table.markers()[0]} ... {table.markers()[1]}")
            continue
        try:
            lines = table.render(data)
        except (KeyError, IndexError, TypeError, StopIteration) as exc:
            problems.append(f"{fig.name}: {fig.result} holds no table {table.name} ({exc!r}); rerun: {fig.command}")
            continue
        if text[span[0]:span[1]] != "\n".join(lines) + "\n":
            problems.append(f"{fig.name}: the table {table.name} in {table.doc} is not what {fig.result} holds; "
                            "`python benchmarks/figures.py tables` writes it")
    return problems


def write_tables(figures: tuple[Figure, ...] = FIGURES) -> list[str]:
    """Write every table from its result file into its doc; the docs changed."""
    sys.path.insert(0, str(core.REPO))
    from pipeline.store.project_store import atomic_write_bytes

    changed = []
    for fig in figures:
        data = load(fig) if fig.tables else None
        for table in fig.tables if data is not None else ():
            path = core.REPO / table.doc
            text = path.read_text()
            span = table_span(text, table)
            if span is None:
                raise SystemExit(f"{table.doc}: put {table.markers()[0]} and {table.markers()[1]} (each on its own "
                                 "line) where the table goes")
            try:
                lines = table.render(data)
            except (KeyError, IndexError, TypeError, StopIteration):
                continue  # not measured yet: `check` says so
            new = text[:span[0]] + "\n".join(lines) + "\n" + text[span[1]:]
            if new != text:
                atomic_write_bytes(path, new.encode())
                changed.append(table.doc)
    return sorted(set(changed))


def check(figures: tuple[Figure, ...] = FIGURES) -> list[str]:
    """Every quote stands in a block of its doc that names its result file, every table is what its file holds;
    the problems, one line each."""
    problems = []
    for fig in figures:
        if not fig.quotes and not fig.tables:
            continue
        data = load(fig)
        if data is None:
            problems.append(f"{fig.name}: the docs quote benchmarks/results/{fig.result}, which is missing")
            continue
        problems += check_tables(fig, data)
        for q in fig.quotes:
            try:
                want = q.text(data)
            except (KeyError, IndexError, TypeError, StopIteration) as exc:
                problems.append(f"{fig.name}: {fig.result} holds no {q.what} ({exc!r}); rerun: {fig.command}")
                continue
            near = [b for b, where in blocks((core.REPO / q.doc).read_text()) if fig.result in where]
            if not near:
                problems.append(f"{fig.name}: {q.doc} never names {fig.result} (it quotes {q.what} {want})")
            elif not any(want in b for b in near):
                problems.append(f"{fig.name}: {q.doc} does not say {want!r} ({q.what}) beside {fig.result}")
    return problems


def quick(fig: Figure) -> bool:
    """In ``bench-quick``: short, and the docs quote it (a figure nobody quotes reproduces nothing)."""
    return fig.minutes <= QUICK_MINUTES and bool(fig.quotes or fig.tables)


def committed(fig: Figure, rev: str = "HEAD") -> dict | None:
    """The figure's result file as ``rev`` holds it, or None where it has none."""
    return core.at_revision(fig.result, rev)


def compare(figures: tuple[Figure, ...] = FIGURES, rev: str = "HEAD") -> dict:
    """Each figure whose result file was remade here (it differs from ``rev``'s): every quoted figure and generated
    table row it changed, committed beside remade, as the docs print them - what a reviewer reads to judge whether
    a rerun reproduced the docs within their noise - and how many quoted figures came out the same."""
    remade, rows, same = [], [], 0
    for fig in figures:
        old, new = committed(fig, rev), load(fig)
        if old is None or new is None or old == new:
            continue
        remade.append(fig.name)
        seen = set()
        for q in fig.quotes:
            try:
                before, after = q.value(old), q.value(new)
            except (KeyError, IndexError, TypeError, StopIteration):
                continue
            if q.what and q.what in seen:  # the same figure quoted in the README and the docs: once
                continue
            seen.add(q.what)
            if q.fmt.format(before) == q.fmt.format(after):
                same += 1
                continue
            row = {"figure": fig.name, "what": q.what or q.fmt, "committed": q.fmt.format(before),
                   "remade": q.fmt.format(after)}
            if isinstance(before, (int, float)) and before:
                row["change_%"] = round(100 * (after - before) / abs(before), 1)
            rows.append(row)
        for table in fig.tables:
            try:
                with core.reading_revision(rev):  # a table that sets other files beside its own: as committed
                    before_rows = table.render(old)[2:]
                after_rows = table.render(new)[2:]
            except (KeyError, IndexError, TypeError, StopIteration, json.JSONDecodeError):
                continue
            rows += [{"figure": fig.name, "what": f"table {table.name}", "committed": b, "remade": a}
                     for b, a in zip(before_rows, after_rows) if a != b]
    return {"against": rev, "remade": remade, "quotes_unchanged": same, "rows": rows}


def cmd_compare(args) -> int:
    from _common import print_table

    result = compare(rev=args.rev)
    rows = result["rows"]
    quoted = [r for r in rows if not r["what"].startswith("table ")]
    print(f"remade: {', '.join(result['remade']) or 'none'}; quoted figures as committed: "
          f"{result['quotes_unchanged']}, changed: {len(quoted)}")
    if quoted:
        print_table([(r["figure"], r["what"], r["committed"], r["remade"], r.get("change_%", ""))
                     for r in quoted], ("figure", "quoted figure", f"at {args.rev}", "remade", "change %"))
    for r in rows:
        if r["what"].startswith("table "):
            print(f"\n{r['figure']}, {r['what']}:\n  {args.rev}: {r['committed']}\n  remade: {r['remade']}")
    if args.json:
        from _common import write_json

        write_json(args.json, result)
    return 0


def cmd_list(_args) -> int:
    from _common import print_table

    rows = []
    for fig in FIGURES:
        path = core.RESULTS / fig.result
        state = ("tracked" if tracked(path) else "not committed") if path.is_file() else "not measured"
        rows.append((fig.name, f"{fig.minutes:g}", fig.result, state, len(fig.quotes), fig.about))
    print_table(rows, ("figure", "min", "result", "state", "quotes", "what"))
    total = sum(f.minutes for f in FIGURES)
    quick_min = sum(f.minutes for f in FIGURES if quick(f))
    print(f"\nall: {total / 60:.1f} h on 2 cores; --quick: {quick_min:.0f} min")
    return 0


def cmd_check(_args) -> int:
    problems = check()
    print("\n".join(problems) if problems else
          f"{sum(len(f.quotes) for f in FIGURES)} quoted figures and {sum(len(f.tables) for f in FIGURES)} "
          "tables match their result files")
    return 1 if problems else 0


def cmd_tables(_args) -> int:
    changed = write_tables()
    print(f"rewrote the tables of {', '.join(changed)}" if changed else
          f"{sum(len(f.tables) for f in FIGURES)} tables already match their result files")
    return 0


def cmd_run(args) -> int:
    import os
    import shlex

    chosen = [f for f in FIGURES if (not args.only or f.name in args.only)
              and (not args.quick or quick(f))]
    unknown = set(args.only or ()) - {f.name for f in FIGURES}
    if unknown:
        print(f"unknown figures: {', '.join(sorted(unknown))}; `list` names them", file=sys.stderr)
        return 2
    if any(f.needs_glas for f in chosen) and not os.environ.get("OEEM_GLAS_ROOT") and not args.dry_run:
        print("set OEEM_GLAS_ROOT to the GlaS folder (train/ and testA/), e.g. ../shared/data/glas",
              file=sys.stderr)
        return 2
    py = shlex.quote(os.environ.get("PYTHON") or sys.executable)
    failed, skipped = [], []
    for fig in chosen:
        command = fig.command.replace("PY ", py + " ").replace("PY=PY", f"PY={py}")
        print(f"\n== {fig.name} (about {fig.minutes:g} min): {command}", flush=True)
        paths, maker = NEEDS.get(fig.name, ((), ""))
        missing = [p for p in paths if not (core.REPO / p).exists()]
        if missing and not args.dry_run:
            print(f"== {fig.name}: skipped - it reads {', '.join(missing)}, which `run --only {maker}` makes "
                  "(not here yet)", flush=True)
            skipped.append(fig.name)
            continue
        if args.dry_run:
            continue
        t = time.perf_counter()
        if subprocess.run(command, shell=True, cwd=core.REPO).returncode != 0:
            failed.append(fig.name)
        print(f"== {fig.name}: {(time.perf_counter() - t) / 60:.1f} min", flush=True)
    if args.dry_run:
        print(f"\n{len(chosen)} commands, about {sum(f.minutes for f in chosen):g} min on 2 cores (nothing run)")
        return 0
    if skipped:
        print(f"skipped (their inputs are missing): {', '.join(skipped)}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    if "reproduced" not in {f.name for f in chosen}:  # that figure compares (and writes its file)
        cmd_compare(argparse.Namespace(rev="HEAD", json=None))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every figure: command time, result file, tracked or not").set_defaults(func=cmd_list)
    sub.add_parser("check", help="the docs quote what the result files hold").set_defaults(func=cmd_check)
    sub.add_parser("tables", help="write the docs' tables from the result files").set_defaults(func=cmd_tables)
    r = sub.add_parser("run", help="run the figures' commands, one at a time")
    r.add_argument("--quick", action="store_true",
                   help=f"only those the docs quote that are expected under {QUICK_MINUTES:g} min")
    r.add_argument("--only", nargs="+", help="these figures only (names from `list`)")
    r.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("compare", help="the figures remade here against the committed result files")
    c.add_argument("--rev", default="HEAD", help="the git revision to compare with (default HEAD)")
    c.add_argument("--json", help="also write the comparison to this file")
    c.set_defaults(func=cmd_compare)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
