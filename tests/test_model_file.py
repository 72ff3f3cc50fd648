"""A trained model out of its project: the model file (export, load, every bad file refused in one line) and
``oeem predict-images`` (same masks as the project's own prediction, resumable, resolution honoured)."""
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.errors import OEEMError
from pipeline.io.data import image_mpp, read_image
from pipeline.io.export import read_exported_mask
from pipeline.progress import run
from pipeline.stages.model_file import FORMAT_VERSION, load_model_file, open_model, weights_digest
from pipeline.stages.predict_files import predict_files
from pipeline.store.project import sample_data_folder


def test_exported_model_predicts_the_projects_masks_to_the_last_pixel(trained_project, model_file, tmp_path):
    store, cfg, _ = trained_project
    trained = load_model_file(model_file)
    assert trained.mpp == cfg.slide.project_mpp and trained.inference == cfg.inference
    assert trained.record["versions"]["oeem"] and trained.record["iterations"] == cfg.segmentation.iterations
    folder = sample_data_folder()
    files = [folder / f"{n}.png" for n in store.names("test")]
    rec = run(predict_files(trained, files, tmp_path / "out", "png", device="cpu"))
    assert rec["predicted"] == len(files) and rec["skipped"] == 0
    for n in store.names("test"):
        assert np.array_equal(read_exported_mask(tmp_path / "out" / f"{n}_anno.png"), store.read(n, "prediction")), n
    # a project folder works as the model too
    from_project = open_model(store.path)
    assert from_project.seg == trained.seg


def _payload(model_file: Path) -> dict:
    return torch.load(model_file, map_location="cpu", weights_only=True)


def _save(payload: dict, path: Path) -> Path:
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("damage, fragment", [
    ("missing", "no such model file"),
    ("truncated", "damaged, truncated"),
    ("text", "damaged, truncated"),
    ("checkpoint", "not an oeem model file"),
    ("newer", "made by a newer oeem"),
    ("preset", "preset 'huge'"),
    ("weights", "checksum"),
    ("unknown-setting", "settings are not ones this version knows"),
    ("misfit", "does not match the model"),
])
def test_every_bad_model_file_is_one_line_naming_it(model_file, trained_project, tmp_path, damage, fragment, capsys):
    bad = tmp_path / "bad.oeem-model"
    data = model_file.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        bad.write_text("not a model")
    elif damage == "checkpoint":
        store, _, _ = trained_project
        bad.write_bytes(store.checkpoint_path("segmentation").read_bytes())
    elif damage != "missing":
        p = _payload(model_file)
        if damage == "newer":
            p["format_version"] = FORMAT_VERSION + 1
        elif damage == "preset":
            p["preset"] = "huge"
        elif damage == "weights":
            k = next(iter(p["model"]))
            p["model"][k] = p["model"][k] + 1
        elif damage == "unknown-setting":
            p["segmentation"]["no_such_setting"] = 1
        elif damage == "misfit":  # a network the weights do not fit, with a valid checksum
            p["segmentation"]["head_channels"] = p["segmentation"]["head_channels"] * 2
            p["sha256"] = weights_digest(p["model"])
        _save(p, bad)
    with pytest.raises(OEEMError, match=fragment) as err:
        load_model_file(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / "a.png")
    capsys.readouterr()
    assert main(["predict-images", str(bad), str(images), "--out", str(tmp_path / "o")]) == 2
    err_line = capsys.readouterr().err.strip()
    assert err_line.startswith("error: ") and err_line.count("\n") == 0


def test_export_model_cli_and_predict_images_cli(trained_project, tmp_path, capsys):
    store, _, _ = trained_project
    assert main(["export-model", str(store.path), str(tmp_path / "m.oeem-model")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["predict-images", str(tmp_path / "m.oeem-model"), str(sample_data_folder() / "testA_1.png"),
                 "--out", str(tmp_path / "o"), "--format", "tiff", "--fast"]) == 0
    out = capsys.readouterr().out
    assert "predicted 1 image(s)" in out and (tmp_path / "o" / "testA_1_anno.tif").is_file()
    assert main(["export-model", str(tmp_path / "nowhere"), str(tmp_path / "x.oeem-model")]) == 2


def _tiff_with_mpp(path: Path, image: np.ndarray, mpp: float) -> None:
    per_cm = 10_000.0 / mpp
    tifffile.imwrite(path, image, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", photometric="rgb")


def test_resolution_from_the_file_or_mpp_and_masks_at_the_images_size(trained_project, model_file, tmp_path):
    store, _, _ = trained_project
    trained = load_model_file(model_file)
    image = read_image(sample_data_folder() / "testA_1.png")
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)  # the same tissue scanned at twice the resolution
    folder = tmp_path / "in"
    folder.mkdir()
    _tiff_with_mpp(folder / "tagged.tif", big, trained.mpp / 2)
    Image.fromarray(big).save(folder / "untagged.png")
    assert image_mpp(folder / "tagged.tif") == pytest.approx(trained.mpp / 2, rel=1e-3)
    assert image_mpp(folder / "untagged.png") is None
    rec = run(predict_files(trained, [folder], tmp_path / "out", "png", device="cpu"))
    tagged = read_exported_mask(tmp_path / "out" / "tagged_anno.png")
    untagged = read_exported_mask(tmp_path / "out" / "untagged_anno.png")
    assert tagged.shape == untagged.shape == big.shape[:2]
    assert rec["images"]["tagged_anno.png"]["mpp_from"] == "file"
    assert rec["images"]["untagged_anno.png"]["mpp_from"].startswith("assumed")
    # resampled to the model's resolution, the tagged image gives the original's prediction, upsampled
    own = np.repeat(np.repeat(store.read("testA_1", "prediction"), 2, axis=0), 2, axis=1)
    iou = (own & tagged).sum() / max(1, (own | tagged).sum())
    assert iou > 0.9, iou
    # --mpp for an image that states nothing gives the same as the tag
    run(predict_files(trained, [folder / "untagged.png"], tmp_path / "out2", "png", mpp=trained.mpp / 2,
                      device="cpu"))
    assert np.array_equal(read_exported_mask(tmp_path / "out2" / "untagged_anno.png"), tagged)
    with pytest.raises(OEEMError, match="--mpp 500"):
        run(predict_files(trained, [folder], tmp_path / "o3", mpp=500))


def test_predict_images_resumes_after_a_kill(model_file, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    src = read_image(sample_data_folder() / "testA_1.png")
    for k in range(8):
        Image.fromarray(np.roll(src, 17 * k, axis=1)).save(folder / f"tile_{k}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "predict-images", str(model_file), str(folder), "--out", str(out),
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("*_anno.png"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = sorted(p.name for p in out.glob("*_anno.png"))
    assert 2 <= len(first) < 8, first
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(first)} already done" in done.stdout
    files = sorted(p.name for p in out.glob("*_anno.png"))
    assert files == [f"tile_{k}_anno.png" for k in range(8)]
    clean = tmp_path / "clean"
    run(predict_files(load_model_file(model_file), [folder], clean, "png", device="cpu"))
    for name in files:
        assert np.array_equal(read_exported_mask(out / name), read_exported_mask(clean / name)), name


def test_bad_inputs_to_predict_images(model_file, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    for args, fragment in ((["nowhere"], "no such file or folder"), ([str(tmp_path / "empty")], "no images in"),
                           ([str(tmp_path / "notes.txt")], "not an image file")):
        capsys.readouterr()
        assert main(["predict-images", str(model_file), *args, "--out", str(tmp_path / "o")]) == 2
        assert fragment in capsys.readouterr().err
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(buf, format="PNG")
    (tmp_path / "gray").mkdir()
    (tmp_path / "gray" / "g.png").write_bytes(buf.getvalue())
    assert main(["predict-images", str(model_file), str(tmp_path / "gray"), "--out", str(tmp_path / "o")]) == 2
    assert "grayscale" in capsys.readouterr().err


def test_a_slide_predicted_with_the_model_file_alone_equals_the_projects(trained_project, model_file, tmp_path):
    from pipeline.io.synth import write_synthetic_slide

    store, _, _ = trained_project
    slide = tmp_path / "slide.tif"
    write_synthetic_slide(slide, (512, 768), tissue_fraction=0.6, mpp=0.62, tile=256, seed=5)
    common = ["--device", "cpu", "--fast", "--block", "256"]
    assert main(["predict-slide", str(store.path), str(slide), "--out", str(tmp_path / "p.ome.zarr"), *common]) == 0
    assert main(["predict-slide", str(model_file), str(slide), *common]) == 0  # no project at all
    out = tmp_path / "slide.prediction.ome.zarr"  # beside the slide
    import zarr

    a = np.asarray(zarr.open_group(str(tmp_path / "p.ome.zarr"), mode="r")["labels/prediction/0"])
    b = np.asarray(zarr.open_group(str(out), mode="r")["labels/prediction/0"])
    assert np.array_equal(a, b)
    assert main(["predict-slide", str(store.path), str(slide), "--model", str(tmp_path / "nope.oeem-model"),
                 *common]) == 2


def test_train_seg_starts_from_a_model_file(project_copy, model_file, capsys):
    from pipeline.stages.segment import load_segmenter

    store, _ = project_copy
    file_weights = torch.load(model_file, weights_only=True)["model"]  # as saved, batch norms not folded
    assert main(["train-seg", str(store.path), "--init-from", str(model_file), "--iterations", "1", "--redo",
                 "--set", "segmentation.lr=1e-12", "--device", "cpu"]) == 0
    model, _ = load_segmenter(store)
    conv = next(k for k, v in file_weights.items() if v.ndim == 4)
    assert torch.allclose(model.state_dict()[conv], file_weights[conv], atol=1e-6)  # started from the file
    assert store.load_run("segmentation")["initialised_from"] == f"model file {model_file.name}"
    capsys.readouterr()
    # a network the file does not fit: one line naming the file and what differs
    assert main(["train-seg", str(store.path), "--init-from", str(model_file), "--iterations", "1", "--redo",
                 "--preset", "cpu", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(model_file) in err and "network differs" in err and err.count("\n") == 1


def test_predict_images_on_a_local_cluster_gives_the_same_masks(model_file, tmp_path):
    distributed = pytest.importorskip("distributed")
    folder = tmp_path / "in"
    folder.mkdir()
    src = read_image(sample_data_folder() / "testA_2.png")
    for k in range(4):
        Image.fromarray(np.roll(src, 23 * k, axis=0)).save(folder / f"t{k}.png")
    trained = load_model_file(model_file)
    here = run(predict_files(trained, [folder], tmp_path / "here", "png", device="cpu"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        there = run(predict_files(trained, [folder], tmp_path / "there", "png", device="cpu",
                                  scheduler=cluster.scheduler_address))
    assert there["predicted"] == here["predicted"] == 4 and there["scheduler"] == cluster.scheduler_address
    for k in range(4):
        name = f"t{k}_anno.png"
        there_mask = read_exported_mask(tmp_path / "there" / name)
        assert np.array_equal(there_mask, read_exported_mask(tmp_path / "here" / name))
