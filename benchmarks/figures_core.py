"""What ``benchmarks/figures.py`` is made of: where the result files and docs live, the types that declare a figure
(a quote, a generated table, the command that makes its file), and reading a result file - as it is here, or as a
git revision holds it (``compare``)."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
README = "README.md"
BENCH_DOC = "docs/benchmarks.md"


@dataclass(frozen=True)
class Quote:
    """One figure a doc quotes: the text it must read, computed from the result file."""

    doc: str  # path from the repository root
    value: Callable[[dict], float]
    fmt: str = "{:.2f}"
    what: str = ""

    def text(self, data: dict) -> str:
        return self.fmt.format(self.value(data))


@dataclass(frozen=True)
class Table:
    """A docs table made from a result file, never typed: ``figures.py tables`` writes it between
    ``<!-- table: NAME -->`` and ``<!-- /table -->`` in ``doc``, and ``check`` fails when the two differ."""

    doc: str  # path from the repository root
    name: str
    render: Callable[[dict], list[str]]  # the table's markdown lines

    def markers(self) -> tuple[str, str]:
        return f"<!-- table: {self.name} -->", "<!-- /table -->"


@dataclass(frozen=True)
class Figure:
    name: str
    command: str  # from the repository root; PY is the project's Python
    result: str  # under benchmarks/results/
    minutes: float  # expected on 2 cores (AMD EPYC Zen 5, bf16 where native), alone
    about: str
    quotes: tuple[Quote, ...] = field(default=())
    needs_glas: bool = True
    tables: tuple[Table, ...] = field(default=())


def markdown(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows]


_FILES_AT: str | None = None  # a git revision: `result_file` reads the files as committed there (for `compare`)


def at_revision(name: str, rev: str) -> dict | None:
    """A result file as the git revision ``rev`` holds it, or None where it has none."""
    rel = (RESULTS / name).relative_to(REPO).as_posix()
    done = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{rel}"], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None


def result_file(name: str) -> dict:
    """Another tracked result file, for a table that sets several side by side."""
    if _FILES_AT is not None:
        data = at_revision(name, _FILES_AT)
        if data is None:
            raise KeyError(f"{name} at {_FILES_AT}")
        return data
    return json.loads((RESULTS / name).read_text())


def link(name: str, doc: str = BENCH_DOC) -> str:
    """A markdown link from ``doc`` to the result file ``name``."""
    up = "../" * doc.count("/")
    return f"[`{name}`]({up}benchmarks/results/{name})"


@contextmanager
def reading_revision(rev: str) -> Iterator[None]:
    """Within it, :func:`result_file` reads the files as the git revision ``rev`` holds them: a table that sets other
    files beside its own, rendered as committed."""
    global _FILES_AT
    _FILES_AT = rev
    try:
        yield
    finally:
        _FILES_AT = None
