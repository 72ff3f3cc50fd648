"""``oeem doctor``: read every array of a project and restore what a crash or a bad disk damaged.

Image data and the stages' outputs can be made again (the message says by which command); a pathologist's
correction cannot, so a damaged current correction is replaced by the newest intact earlier version."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.store.project_store import MAKES, ProjectStore


@dataclass
class Finding:
    image: str
    what: str
    fixed: bool
    hint: str = ""


@dataclass
class DoctorReport:
    arrays_checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def unfixed(self) -> list[Finding]:
        return [f for f in self.findings if not f.fixed]


def _readable(group, key: str) -> bool:
    try:
        np.asarray(group[key][...])
        return True
    except Exception:  # noqa: BLE001 - any failure to read is damage
        return False


def check_project(store: ProjectStore, repair: bool = True) -> DoctorReport:
    rep = DoctorReport()
    # temporary files a killed write left behind (zarr's *.partial, our *.tmp): never referenced, only clutter
    leftovers = [p for pattern in ("**/*.partial", "**/.*.tmp") for p in store.path.glob(pattern) if p.is_file()]
    if leftovers:
        if repair:
            for p in leftovers:
                p.unlink(missing_ok=True)
        rep.findings.append(Finding("(project)", f"{len(leftovers)} temporary file(s) left by interrupted writes",
                                    repair, "" if repair else "`oeem doctor` removes them"))
    for name in store.names():
        g = store.group(name)
        for key in sorted(g.array_keys()):
            rep.arrays_checked += 1
            if not _readable(g, key):
                hint = MAKES.get(key, "").replace("PROJECT", str(store.path)) or \
                    f"re-create the project with `oeem init` (the {key!r} data is its source)"
                rep.findings.append(Finding(name, f"array {key!r} is damaged", False, hint))
        _check_corrections(store, name, repair, rep)
    return rep


def _check_corrections(store: ProjectStore, name: str, repair: bool, rep: DoctorReport) -> None:
    check = store.check_corrections(name, repair)
    rep.arrays_checked += check["read"]
    for v in check["damaged"]:
        rep.findings.append(Finding(name, f"correction version {v} is damaged", repair,
                                    "" if repair else f"`oeem doctor {store.path}` restores the newest intact one"))
    if not check["index_ok"]:
        rep.findings.append(Finding(name, f"correction index {Path(check['index']).name} is damaged", repair,
                                    "" if check["intact"] else "no intact version left: the correction is lost"))


def format_report(rep: DoctorReport, store: ProjectStore) -> list[str]:
    lines = [f"{store.path}: {rep.arrays_checked} arrays read, {len(rep.findings)} problem(s)"]
    for f in rep.findings:
        state = "restored" if f.fixed else "NOT fixed"
        lines.append(f"  {f.image}: {f.what} - {state}" + (f"; {f.hint}" if f.hint else ""))
    return lines
