"""bioimage.io model packages (``oeem export-model --format bioimageio``): the reference tools validate the package
and pass its own test offline, its TorchScript gives the project's own probabilities, and oeem reads it back as
the model file it was made from (``predict-images``, ``predict-slide``, the dock)."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.io.export import read_exported_mask
from pipeline.progress import run
from pipeline.stages.infer import mask_from_probs, predict_probs
from pipeline.stages.model_file import load_model_file, open_model
from pipeline.stages.predict_files import predict_files
from pipeline.store.project import sample_data_folder

pytest.importorskip("bioimageio.core", reason="the bioimageio extra: pip install 'oeem-napari[bioimageio]'")


@pytest.fixture(scope="module")
def package(trained_project, tmp_path_factory):
    store, _, _ = trained_project
    out = tmp_path_factory.mktemp("bioimageio") / "sample.zip"
    assert main(["export-model", str(store.path), str(out), "--format", "bioimageio", "--author", "A. Pathologist"]) == 0
    return out


def rdf(package) -> dict:
    with zipfile.ZipFile(package) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def test_the_reference_tools_validate_the_package_and_pass_its_test_offline(package, monkeypatch):
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(package.parent / "cache"))
    from bioimageio.core import test_model
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    descr = load_description(package, perform_io_checks=True)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    summary = test_model(package)  # every weight format: TorchScript and the state dict with its architecture
    assert summary.status == "passed", summary.format()
    tested = {d.name for d in summary.details}
    assert any("torchscript" in n for n in tested) and any("pytorch_state_dict" in n for n in tested), tested
    meta = rdf(package)
    assert meta["format_version"].startswith("0.5") and meta["type"] == "model"
    assert {c.get("doi") for c in meta["cite"]} >= {"10.48550/arXiv.2206.06665"}
    assert meta["license"] == "BSD-3-Clause" and meta["authors"][0]["name"] == "A. Pathologist"
    axes = {a["id"]: a for a in meta["inputs"][0]["axes"] if a.get("type") == "space"}
    assert axes["x"]["unit"] == "micrometer" and axes["x"]["scale"] == pytest.approx(0.62)
    assert not meta["inputs"][0].get("preprocessing")  # 0-255 RGB as it is: QuPath skips 0.5's normalisation ops
    assert {a["id"]: a.get("halo") for a in meta["outputs"][0]["axes"] if a.get("type") == "space"} == {"y": 32,
                                                                                                     "x": 32}
    assert meta["config"]["oeem"]["record"]["iterations"] > 0  # the training record travels with it


def test_torchscript_gives_the_projects_own_probabilities_and_masks(trained_project, package, tmp_path):
    store, cfg, _ = trained_project
    name = store.names("test")[0]
    image = store.image(name)
    inference = {**vars(cfg.inference)}
    inference["precision"] = "fp32"
    from pipeline.config import InferConfig

    own = predict_probs(open_model(store.path).model, image, InferConfig(**inference), torch.device("cpu"),
                        cfg.segmentation)
    with zipfile.ZipFile(package) as z:
        z.extractall(tmp_path / "pkg")
    scripted = torch.jit.load(str(tmp_path / "pkg" / rdf(package)["weights"]["torchscript"]["source"]))
    x = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None]  # 0-255: normalised inside
    with torch.inference_mode():
        probs = scripted(x)[0].numpy()
    assert probs.shape == own.shape  # a whole GlaS-sized image, not only the test tile's size
    assert np.abs(probs - own).max() < 1e-3
    mask = mask_from_probs(probs, cfg.inference)
    assert (mask != mask_from_probs(own, cfg.inference)).mean() < 1e-4
    # the package's own test output is the project's prediction of its test tile
    test_in = np.load(tmp_path / "pkg" / "test_input.npy")
    test_out = np.load(tmp_path / "pkg" / "test_output.npy")
    tile = test_in[0].transpose(1, 2, 0).astype(np.uint8)
    assert np.abs(predict_probs(open_model(store.path).model, tile, InferConfig(**inference), torch.device("cpu"),
                                cfg.segmentation) - test_out[0]).max() < 1e-3
    # and `oeem predict-images` with the package on that tile writes the package's test output's mask
    from PIL import Image

    Image.fromarray(tile).save(tmp_path / "tile.png")
    assert main(["predict-images", str(package), str(tmp_path / "tile.png"), "--out", str(tmp_path / "masks")]) == 0
    written = read_exported_mask(tmp_path / "masks" / "tile_anno.png")
    # the package's test output is fp32; predict-images computes in the model's precision (bf16 on this CPU)
    assert (written != mask_from_probs(test_out[0], cfg.inference)).mean() < 5e-3


def test_torchscript_predicts_in_all_eight_orientations_as_oeem_does(trained_project):
    """A model set to predict in all 8 orientations (``inference.dihedral``) is packaged with them."""
    from dataclasses import asdict, replace

    from pipeline.io.bioimageio import GlandProbability, _torchscript
    from pipeline.stages.segment import load_segmenter

    store, cfg, _ = trained_project
    model, _ = load_segmenter(store)
    inference = replace(cfg.inference, dihedral=True, scales=(1.0,), precision="fp32")
    module = GlandProbability(asdict(cfg.segmentation), asdict(inference))
    module.net.load_state_dict(model.state_dict())
    scripted = _torchscript(module.eval())
    image = store.image(store.names("test")[0])[:150, :230]
    with torch.inference_mode():
        probs = scripted(torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None])[0].numpy()
    own = predict_probs(model, image, inference, torch.device("cpu"), cfg.segmentation)
    assert np.abs(probs - own).max() < 1e-3


def test_oeem_reads_the_package_back_as_the_model_file_it_came_from(trained_project, package, model_file, tmp_path):
    store, _, _ = trained_project
    back, original = load_model_file(package), load_model_file(model_file)
    assert back.seg == original.seg and back.inference == original.inference and back.mpp == original.mpp
    files = [sample_data_folder() / f"{n}.png" for n in store.names("test")]
    run(predict_files(back, files, tmp_path / "out", "png", device="cpu"))
    for n in store.names("test"):
        assert np.array_equal(read_exported_mask(tmp_path / "out" / f"{n}_anno.png"), store.read(n, "prediction")), n
    assert main(["predict-images", str(package), str(files[0]), "--out", str(tmp_path / "cli")]) == 0


def test_a_damaged_or_foreign_package_is_one_line(package, tmp_path, capsys):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "rdf.yaml":
                meta = yaml.safe_load(data)
                meta["config"] = {}
                data = yaml.safe_dump(meta).encode()
            dst.writestr(item, data)
    assert main(["predict-images", str(foreign), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not made by oeem" in capsys.readouterr().err
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            dst.writestr(item, data[:-10] + b"0123456789" if item == "weights.pt" else data)
    assert main(["predict-images", str(damaged), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "checksum" in capsys.readouterr().err


def test_without_the_extra_the_export_says_what_to_install(trained_project, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_bioimageio(name, *args, **kwargs):
        if name.startswith("bioimageio"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bioimageio)
    store, _, _ = trained_project
    assert main(["export-model", str(store.path), str(tmp_path / "m.zip"), "--format", "bioimageio"]) == 2
    assert "pip install 'oeem-napari[bioimageio]'" in capsys.readouterr().err


def test_predict_slide_with_the_package_equals_the_model_file(package, model_file, tmp_path):
    import zarr

    from pipeline.io.synth import write_synthetic_slide

    slide = tmp_path / "slide.tif"
    write_synthetic_slide(slide, (384, 512), tissue_fraction=0.6, mpp=0.62, tile=256, seed=3)
    common = ["--device", "cpu", "--fast", "--block", "256"]
    for model, out in ((model_file, "a.ome.zarr"), (package, "b.ome.zarr")):
        assert main(["predict-slide", str(model), str(slide), "--out", str(tmp_path / out), *common]) == 0
    a, b = (np.asarray(zarr.open_group(str(tmp_path / o), mode="r")["labels/prediction/0"])
            for o in ("a.ome.zarr", "b.ome.zarr"))
    assert a.any() and np.array_equal(a, b)
