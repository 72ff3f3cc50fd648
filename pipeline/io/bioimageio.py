"""bioimage.io model packages (spec 0.5): ``oeem export-model PROJECT OUT.zip --format bioimageio`` and reading one
back (``oeem predict-images``, ``predict-slide``, the dock's *Load model…*).

The package holds the segmentation network inside :class:`GlandProbability`, a module that computes the gland
probability exactly as ``oeem predict`` does - every prediction scale relative to the working resolution, the
mirrored image, the sliding window with its blend - so any bioimage.io consumer (``bioimageio.core``, deepImageJ,
ilastik, QuPath) gets the project's own probabilities, not a single-pass approximation. It ships as TorchScript
(no Python needed) and as a state dict with this module as its architecture. The input is RGB as it is (0-255):
the normalisation is inside the module, not a spec pre-processing step, because QuPath skips the spec's
``fixed_zero_mean_unit_variance`` and would feed the network unnormalised pixels. The input axes' scale is the
µm/px of the images the model learned from; tiles cut by a consumer get a 32 px halo. The output is (background,
gland) probabilities - their argmax is the mask before ``inference.drop_glands_below`` / ``fill_holes_below`` clean
it (oeem applies them when it reads the package back).
``config.oeem`` keeps everything ``.oeem-model`` files keep, so reading it back gives the same model.

Writing a package needs the optional ``bioimageio`` extra (``pip install 'oeem-napari[bioimageio]'``); reading one
back (:func:`pipeline.stages.model_file.load_package`) does not.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, List  # List, not list[...]: TorchScript reads these annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import NORMS, InferConfig, SegConfig, from_dict
from pipeline.errors import OEEMError
from pipeline.stages.infer import orient

WEIGHTS, TORCHSCRIPT = "weights.pt", "weights-torchscript.pt"
MIN_SIDE, HALO = 128, 32  # px: tiles a consumer cuts (QuPath grows them towards 512), and the margin it crops
TEST_SIDE = 256  # px of the test tile cut from a real image (the package stays under 1.5 MB with its outputs)
ARXIV_DOI = "10.48550/arXiv.2206.06665"  # the OEEM paper (Li et al., MICCAI 2022) on arXiv
GLAS_DOI = "10.1016/j.media.2016.08.008"  # the GlaS challenge (Sirinukunwattana et al., Medical Image Analysis 2017)


def _starts(length: int, size: int, stride: int) -> List[int]:
    """Window starts along one axis, the last flush with the edge (``pipeline.stages.patches.grid_starts``)."""
    starts: List[int] = []
    for start in range(0, length - size + 1, stride):
        starts.append(start)
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def _round_half_even(v: float) -> int:
    """Python's ``round`` (half to even), which TorchScript does not have for ints."""
    f = math.floor(v)
    d = v - f
    if d > 0.5 or (d == 0.5 and int(f) % 2 == 1):
        return int(f) + 1
    return int(f)


class GlandProbability(torch.nn.Module):
    """(B, 3, H, W) RGB, 0-255 -> (B, 2, H, W) background / gland probabilities, as ``predict_probs`` gives
    them (normalised inside). ``segmentation`` and ``inference``: the model's settings as ``config.to_dict`` writes them."""

    def __init__(self, segmentation: dict, inference: dict):
        super().__init__()
        from pipeline.stages.models import build_segmenter

        seg, inf = from_dict(SegConfig, segmentation), from_dict(InferConfig, inference)
        self.net = build_segmenter(seg)
        self.scales: List[float] = [float(s) * seg.working_scale for s in inf.scales]
        self.orientations: List[List[bool]] = [list(o) for o in inf.orientations()]
        self.crop: int = int(inf.crop_size)
        self.stride: int = int(inf.stride)
        from pipeline.stages.infer import window_weight

        self.register_buffer("window", window_weight(self.crop, inf.blend, "cpu"), persistent=False)
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) * 255.0 for v in NORMS[seg.input_norm])
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std  # inside: QuPath skips the spec's fixed_zero_mean_unit_variance
        h, w = x.shape[-2], x.shape[-1]
        acc = torch.zeros(0)
        n = 0
        for s in self.scales:
            size = [max(8, _round_half_even(h * s)), max(8, _round_half_even(w * s))]
            xs = x
            if size[0] != h or size[1] != w:
                xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=s < 1.0)
            for o in self.orientations:  # (transposed, rows flipped, columns flipped), as predict_probs
                logits = orient(self._sliding(orient(xs, o[0], o[1], o[2])), o[0], o[1], o[2], back=True)
                prob = F.interpolate(logits, size=[h, w], mode="bilinear", align_corners=False).softmax(1)
                acc = prob if n == 0 else acc + prob
                n += 1
        return acc / n

    def _sliding(self, x: torch.Tensor) -> torch.Tensor:
        """``pipeline.stages.infer.sliding_logits``, one window at a time."""
        c = self.crop
        h, w = x.shape[-2], x.shape[-1]
        ph, pw = max(0, c - h), max(0, c - w)
        if ph > 0 or pw > 0:
            x = F.pad(x, [0, pw, 0, ph])
        H, W = x.shape[-2], x.shape[-1]
        out = torch.zeros(0)
        count = torch.zeros(1, 1, H, W, dtype=torch.float32, device=x.device)
        first = True
        for y in _starts(H, c, self.stride):
            for xx in _starts(W, c, self.stride):
                logits = self.net(x[:, :, y:y + c, xx:xx + c]).float()
                if first:
                    out = torch.zeros(x.shape[0], logits.shape[1], H, W, dtype=torch.float32, device=x.device)
                    first = False
                out[:, :, y:y + c, xx:xx + c] += logits * self.window
                count[:, :, y:y + c, xx:xx + c] += self.window
        return (out / count)[:, :, :h, :w]


# ---------------------------------------------------------------------------------------------- writing
def export_project(store, out: str | Path, authors: list[str] | None = None, run_name: str | None = None) -> Path:
    """A project's segmentation model as a bioimage.io package (``oeem export-model --format bioimageio``, the
    dock's *Export model…*): its settings as the project trained and scored it, the test tile from its first test
    image (else its first image), ``authors`` by default the user's name."""
    import getpass

    from pipeline.stages.model_file import model_payload
    from pipeline.store.project import project_config

    cfg = project_config(store, save=False)
    names = store.names("test") or store.names()
    if not names:
        raise OEEMError(f"{store.path}: no image to cut the package's test tile from")
    payload = model_payload(store, cfg.inference, cfg.slide.project_mpp, run_name)
    return export_bioimageio(payload, out, store.image(names[0]), authors or [getpass.getuser() or "oeem user"])


def export_bioimageio(payload: dict, out: str | Path, image: np.ndarray, authors: list[str], name: str | None = None,
                      description: str | None = None) -> Path:
    """Write a model file's ``payload`` (:func:`pipeline.stages.model_file.model_payload`) as a bioimage.io package
    (a .zip) at ``out``, atomically; ``image``: an RGB image at the model's resolution, its test tile cut from its
    centre. The package is validated with ``bioimageio.spec`` before it is moved into place."""
    try:
        from bioimageio.spec import InvalidDescr, load_description, save_bioimageio_package
        from bioimageio.spec.model import v0_5 as spec
    except ImportError:
        raise OEEMError("writing a bioimage.io package needs the bioimageio extra: pip install "
                        "'oeem-napari[bioimageio]' (bioimageio.spec and bioimageio.core)") from None
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise OEEMError(f"{out}: a bioimage.io package is a .zip file; name it e.g. {out.with_suffix('.zip').name}")
    if not out.parent.is_dir():
        raise OEEMError(f"{out.parent}: folder does not exist")
    kwargs = {"segmentation": _jsonable(payload["segmentation"]), "inference": _jsonable(payload["inference"])}
    inference = from_dict(InferConfig, kwargs["inference"])
    mpp = float(payload.get("mpp") or 0.62)
    module = GlandProbability(**kwargs)
    module.net.load_state_dict(payload["model"])
    module.eval()
    tile = _test_tile(image)
    x = torch.from_numpy(tile.astype(np.float32)[None])
    with torch.inference_mode():
        expected = module(x).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "test_input.npy", tile[None].astype(np.float32))
        np.save(tmp / "test_output.npy", expected.astype(np.float32))
        torch.save(module.state_dict(), tmp / WEIGHTS)
        scripted = _torchscript(module)
        scripted.save(str(tmp / TORCHSCRIPT))
        _cover(tile, expected[0], tmp / "cover.png")
        (tmp / "README.md").write_text(_readme(inference, payload.get("record") or {}, mpp), encoding="utf-8")
        (tmp / "environment.yaml").write_text(_environment(), encoding="utf-8")
        record = {"format": "oeem-bioimageio", "mpp": mpp, "classes": ["background", "gland"], **kwargs,
                  "record": _jsonable(payload.get("record") or {}), "preset": payload.get("preset"),
                  "instances": _jsonable(payload.get("instances") or {})}
        space = dict(unit="micrometer", scale=mpp)
        size = spec.ParameterizedSize(min=MIN_SIDE, step=16)
        inputs = [spec.InputTensorDescr(
            id=spec.TensorId("image"), description="RGB H&E image at the µm/px of the axes' scale, values 0-255 "
                                                   "(the model normalises them itself)",
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in "RGB"]),
                  spec.SpaceInputAxis(id=spec.AxisId("y"), size=size, **space),
                  spec.SpaceInputAxis(id=spec.AxisId("x"), size=size, **space)],
            test_tensor=spec.FileDescr(source=tmp / "test_input.npy"),
            data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 255.0)))]
        same = {a: spec.SizeReference(tensor_id=spec.TensorId("image"), axis_id=spec.AxisId(a)) for a in "yx"}
        outputs = [spec.OutputTensorDescr(
            id=spec.TensorId("probability"),
            description="probability of background (channel 0) and gland (channel 1); argmax: the mask",
            axes=[spec.BatchAxis(),
                  spec.ChannelAxis(channel_names=[spec.Identifier("background"), spec.Identifier("gland")]),
                  spec.SpaceOutputAxisWithHalo(id=spec.AxisId("y"), size=same["y"], halo=HALO, **space),
                  spec.SpaceOutputAxisWithHalo(id=spec.AxisId("x"), size=same["x"], halo=HALO, **space)],
            test_tensor=spec.FileDescr(source=tmp / "test_output.npy"),
            data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))]
        torch_version = spec.Version(torch.__version__.split("+")[0])
        state_dict = spec.PytorchStateDictWeightsDescr(
            source=tmp / WEIGHTS, pytorch_version=torch_version,
            architecture=spec.ArchitectureFromLibraryDescr(callable=spec.Identifier("GlandProbability"),
                                                           import_from="pipeline.io.bioimageio", kwargs=kwargs),
            dependencies=spec.FileDescr(source=tmp / "environment.yaml"))
        weights = spec.WeightsDescr(
            pytorch_state_dict=state_dict,
            torchscript=spec.TorchscriptWeightsDescr(source=tmp / TORCHSCRIPT, pytorch_version=torch_version,
                                                     parent="pytorch_state_dict"))
        from pipeline import __version__

        try:  # pydantic validates on construction: e.g. an author's name the spec does not take
            descr = spec.ModelDescr(
                name=name or "OEEM gland segmentation in HE histology",
                description=description or ("Gland segmentation in H&E histology trained from weak patch labels "
                                            "with Online Easy Example Mining (OEEM), exported by oeem-napari."),
                authors=[spec.Author(name=a) for a in authors],
                cite=[spec.CiteEntry(text="Li, Yu, Zou, Xiang, Li. Online Easy Example Mining for Weakly-supervised "
                                          "Gland Segmentation from Histology Images. MICCAI 2022.",
                                     doi=spec.Doi(ARXIV_DOI)),
                      spec.CiteEntry(text="Sirinukunwattana et al. Gland segmentation in colon histology images: "
                                          "the GlaS challenge contest. Medical Image Analysis 2017.",
                                     doi=spec.Doi(GLAS_DOI))],
                license=spec.LicenseId("BSD-3-Clause"),
                documentation=spec.FileDescr(source=tmp / "README.md"),
                covers=[spec.FileDescr(source=tmp / "cover.png")],
                tags=["segmentation", "semantic-segmentation", "histology", "h-and-e", "gland", "2d", "pytorch",
                      "weakly-supervised", "oeem"],
                inputs=inputs, outputs=outputs, weights=weights,
                config=spec.Config(oeem=record, oeem_version=__version__),
                format_version="0.5.12", type="model")
        except ValueError as exc:
            raise OEEMError(f"the bioimage.io description is not valid: {' '.join(str(exc).split())[:600]}") from None
        part = out.with_name(out.name + ".part.zip")
        try:
            save_bioimageio_package(descr, output_path=part)
            checked = load_description(part, perform_io_checks=True)
            if isinstance(checked, InvalidDescr):
                raise OEEMError(f"the bioimage.io package did not validate: "
                                f"{checked.validation_summary.format()[:2000]}")
            part.replace(out)
        finally:
            part.unlink(missing_ok=True)
    return out


def _torchscript(module: GlandProbability) -> torch.jit.ScriptModule:
    """The module as TorchScript: the network traced on one window (every window has that size), the scales,
    orientations and sliding window scripted around it, so any image size works."""
    import copy

    from pipeline.stages.models import fold_batchnorm

    wrapper = copy.deepcopy(module)
    net = fold_batchnorm(wrapper.net).eval()
    with torch.inference_mode(False), torch.no_grad():
        wrapper.net = torch.jit.trace(net, torch.zeros(1, 3, module.crop, module.crop), check_trace=False)
        return torch.jit.script(wrapper)


def _test_tile(image: np.ndarray) -> np.ndarray:
    """A (3, T, T) tile from the centre of ``image`` (smaller images: the whole image)."""
    if image.ndim != 3 or image.shape[2] < 3:
        raise OEEMError("the test image must be RGB")
    h, w = image.shape[:2]
    t = min(TEST_SIDE, h, w)
    y, x = (h - t) // 2, (w - t) // 2
    return np.ascontiguousarray(image[y:y + t, x:x + t, :3].transpose(2, 0, 1))


def _cover(tile: np.ndarray, prob: np.ndarray, path: Path) -> None:
    """Image | image with the predicted glands outlined: 2:1, as the model zoo shows covers."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    rgb = tile.transpose(1, 2, 0).astype(np.uint8)
    overlay = rgb.copy()
    overlay[find_boundaries(prob.argmax(0) > 0, mode="thick")] = (0, 255, 0)
    imsave(path, np.concatenate([rgb, overlay], axis=1), check_contrast=False)


def _readme(inference: InferConfig, record: dict, mpp: float) -> str:
    scores = record.get("scores") or {}
    views = ("in all 8 orientations" if inference.dihedral
             else f"{'with' if inference.flip else 'without'} the mirrored image")
    lines = ["# OEEM gland segmentation", "",
             "Exported by oeem-napari: a gland segmentation network trained from weak patch labels (gland / no "
             "gland per 112 px patch) with Online Easy Example Mining.", "",
             "- **Input** `image`: RGB, 0-255 (float32), at the µm/px of the axes' scale "
             f"({mpp:.3f} µm/px); any size of at least 64 px. Pre-processing: per-channel mean / std.",
             "- **Output** `probability`: background (0) and gland (1) probabilities at the input's size; the mask "
             "is their argmax.",
             f"- Inside: {len(inference.scales)} scale(s) relative to the working resolution, "
             f"{views}, sliding window "
             f"{inference.crop_size} px - as `oeem predict` computes it.", ""]
    if scores:
        lines += ["## Scores of the project it came from", ""]
        lines += [f"- {split}: " + ", ".join(f"{k} {v:.2f}" for k, v in s.items() if k in ("mIoU", "dice", "f1"))
                  for split, s in scores.items()]
        lines.append("")
    lines += ["## Use", "", "- oeem: `oeem predict-images MODEL.zip IMAGES...`, or *Load model…* in the napari dock.",
              "- Python: `bioimageio.core` (`predict`), or any bioimage.io consumer.", ""]
    return "\n".join(lines)


def _environment() -> str:
    return ("name: oeem\nchannels:\n  - conda-forge\n  - pytorch\ndependencies:\n  - python>=3.10\n  - pip\n"
            "  - pip:\n      - oeem-napari\n")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
