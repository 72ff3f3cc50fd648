"""What every ``oeem`` command shares: the project, its settings from the command line, and the progress bar."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.config import (
    DEFAULT_PRESET,
    FAST_INFERENCE,
    PRECISION_SECTIONS,
    PRECISIONS,
    PRESETS,
    Setting,
    parse_settings,
    preset,
    settings_of,
)
from pipeline.errors import OEEMError

# the configuration sections whose flags each command takes (the flags themselves are declared in config.py)
COMMAND_SECTIONS = {
    "train-cls": ("classifier",), "cams": ("cam",), "train-seg": ("segmentation",),
    "predict": ("inference", "instances"), "instances": ("instances",),
    "predict-slide": ("slide", "inference", "instances"), "update": ("update", "inference"),
    "run": ("patches", "classifier", "cam", "segmentation", "inference", "instances", "selftrain"),
}
SETTING_DEST = "setting:"  # argparse dest prefix of a flag that sets a setting (the dotted key follows)


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def is_main() -> bool:
    """Rank 0 of a torchrun launch, or a plain run: the process that writes the project and prints."""
    from pipeline.stages.distributed import env_is_main

    try:
        return env_is_main()
    except OEEMError:  # a malformed RANK is reported by the stage itself
        return True


def drive(job, desc: str):
    """Run a stage generator with a tqdm progress bar showing its metrics (loss, throughput); under torchrun
    only rank 0 shows one."""
    from tqdm import tqdm

    from pipeline.progress import run

    if not is_main():
        return run(job)
    bars: dict[str, Any] = {}

    def show(p):
        if p.notice:
            tqdm.write(f"note: {p.notice}", file=sys.stderr)
        bar = bars.get(p.stage)
        if bar is None:
            for b in bars.values():
                b.close()
            bar = bars[p.stage] = tqdm(total=p.total, desc=p.stage, unit="step", dynamic_ncols=True,
                                       file=sys.stderr)
        if bar.total != p.total:
            bar.total = p.total
        bar.n = p.step
        bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in p.metrics.items()},
                        refresh=False)
        if p.message:
            bar.set_description(f"{p.stage} {p.message}", refresh=False)
        bar.refresh()

    try:
        return run(job, show)
    finally:
        for b in bars.values():
            b.close()


def open_project(path: str):
    from pipeline.store import ProjectStore

    # the other ranks of a torchrun launch only read the project: rank 0 writes it, under the writer lock
    return ProjectStore.open(path, mode="r+" if is_main() else "r")


def command_settings(command: str) -> list[Setting]:
    """The settings ``command`` takes a flag for, from their declarations in ``pipeline.config``."""
    sections = COMMAND_SECTIONS.get(command, ())
    return [s for s in settings_of(preset(DEFAULT_PRESET)) if s.flag and command in s.commands
            and s.key.split(".")[0] in sections]


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def add_setting_flags(p: argparse.ArgumentParser, command: str) -> None:
    for s in command_settings(command):
        if isinstance(s.value, bool):  # a switch: given means on, absent means the project's value
            p.add_argument(s.flag, dest=SETTING_DEST + s.key, action="store_const", const=True, default=None,
                           help=f"{s.help} ({s.key}; default: the project's, cpu preset {'on' if s.value else 'off'})")
            continue
        kind: Any = floats if isinstance(s.value, tuple) else type(s.value) if s.value is not None else str
        p.add_argument(s.flag, dest=SETTING_DEST + s.key, type=kind, choices=s.choices, default=None,
                       metavar=None if s.choices else s.key.rsplit(".", 1)[1].upper(),
                       help=f"{s.help} ({s.key}; default: the project's, cpu preset {_shown(s.value)})")


# ---------------------------------------------------------------------------------------------- shared flags
def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (default: an NVIDIA GPU when there is one, else an Apple "
                   "GPU, else the CPU), cpu, cuda or mps (Apple silicon)")


def add_fast(p: argparse.ArgumentParser, default: str = "off") -> None:
    p.add_argument("--fast", action="store_true", help=f"predict at one scale, one orientation (default: {default})")


def add_mpp(p: argparse.ArgumentParser, default: str = "what the file says") -> None:
    p.add_argument("--mpp", type=float, default=None, help=f"microns per pixel of the images (default: {default})")


def add_model_name(p: argparse.ArgumentParser, trains: bool = False) -> None:
    """``--name``: a segmentation model kept apart from the project's (``checkpoints/segmentation-NAME.pt``)."""
    p.add_argument("--name", default=None, help=(
        "keep this model apart (checkpoints/segmentation-NAME.pt; default: the project's model)" if trains else
        "use the model trained with --name (default: the project's)"))


def add_common(p: argparse.ArgumentParser, command: str, train: bool = False) -> None:
    """The options every command that runs a stage takes."""
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="start from a preset (default: the project's saved settings, else cpu)")
    add_device(p)
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="arithmetic of every stage: auto (default: bf16 where the CPU or GPU computes it "
                        "natively, about twice as fast; else fp32), fp32 or bf16")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=None,
                   help="any setting by its dotted name, one per --set (repeatable), e.g. "
                        "--set segmentation.working_scale=0.5 --set selftrain.rounds=0 (default: none)")
    p.add_argument("--save-settings", action="store_true",
                   help="keep this command's settings as the project's (default: they apply to this run only; a "
                        "new project keeps the preset it was made with)")
    if train:
        add_redo(p, "ignore an existing checkpoint and start afresh", "--restart")
    add_setting_flags(p, command)


def add_redo(p: argparse.ArgumentParser, what: str, old: str) -> None:
    """``--redo``: the one name for "do it again from scratch"; the command's older name still works, unlisted."""
    p.add_argument("--redo", action="store_true", help=f"{what} (default: resume / keep what exists)")
    p.add_argument(old, dest="redo", action="store_true", help=argparse.SUPPRESS)


def command_overrides(args) -> dict[str, Any]:
    """The settings this command's flags and ``--set`` pairs ask for, by dotted name."""
    over: dict[str, Any] = {k[len(SETTING_DEST):]: v for k, v in vars(args).items()
                            if k.startswith(SETTING_DEST) and v is not None}
    if "segmentation.iterations" in over:
        # asked for on the command line, it is what this training runs, on pseudo-masks or gland masks alike (the
        # last self-training round runs selftrain.last_round_scale times as many)
        over["segmentation.full_iterations"] = over["segmentation.iterations"]
    if getattr(args, "pretrained", None) is not None:
        over.update({f"{s}.backbone.pretrained": args.pretrained for s in ("classifier", "segmentation")})
    if getattr(args, "precision", None) is not None:
        over.update({f"{section}.precision": args.precision for section in PRECISION_SECTIONS})
    if getattr(args, "fast", False):
        over.update(FAST_INFERENCE)
    over.update(parse_settings(getattr(args, "set", None) or []))
    return over


def config_for(args, store):
    """The settings this command runs with: the project's saved ones (or ``--preset``'s) with this command's
    flags and ``--set`` pairs on top. Saved as the project's only with ``--save-settings``; a project with no
    saved settings keeps its preset."""
    from pipeline.store.project import has_saved_config, project_config

    over = command_overrides(args)
    main, keep = is_main(), getattr(args, "save_settings", False)
    name = getattr(args, "preset", None)
    if main and not keep and not has_saved_config(store):
        project_config(store, name, None, save=True)
    return project_config(store, name, over, save=main and keep)


def config_for_model(args, trained):
    """The settings a command runs with on a model file (:func:`pipeline.stages.model_file.model_config`)."""
    from pipeline.stages.model_file import model_config

    return model_config(trained, getattr(args, "preset", None), command_overrides(args))


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))
