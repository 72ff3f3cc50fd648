"""The `oeem` command: help for every stage, one-line errors (no tracebacks), and a full tiny run."""
import json
import subprocess
import sys

import pytest

from pipeline.cli import build_parser, main
from pipeline.config import preset
from pipeline.store import ProjectStore

STAGES = ["init", "patches", "train-cls", "cams", "train-seg", "selftrain", "predict", "instances", "evaluate", "run",
          "export",
          "info", "fetch-glas"]


def oeem(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_help_lists_every_stage():
    out = oeem("--help").stdout
    for stage in STAGES:
        assert stage in out
    for stage in STAGES:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([stage, "--help"])
        assert exc.value.code == 0


@pytest.mark.parametrize("args, fragment", [
    (["init", "/nonexistent/folder", "x.zarr"], "folder not found"),
    (["patches", "/nonexistent/p.zarr"], "no project here"),
    (["train-seg", "{project}", "--iterations", "2"], "run `oeem cams"),
    (["selftrain", "{project}"], "no patch labels yet; run `oeem patches"),
    (["train-seg", "{project}", "--set", "segmentation.working_scale"], "--set expects KEY=VALUE"),
    (["train-seg", "{project}", "--set", "segmentation.working_scale=5"], "working_scale must be between"),
    (["train-seg", "{project}", "--set", "segmentation.decoder=fcn"], "decoder must be one of psp, unet"),
    (["train-seg", "{project}", "--set", "segmentation.depth=3"], "unknown setting 'segmentation.depth'"),
])
def test_bad_input_is_one_clear_line(tmp_path, small_folder, args, fragment):
    project = tmp_path / "p.zarr"
    assert main(["init", str(small_folder), str(project)]) == 0
    result = oeem(*[a.format(project=project) for a in args], cwd=tmp_path)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unknown_loss_lists_the_valid_ones(tmp_path):
    result = oeem("train-seg", tmp_path / "p.zarr", "--loss", "focal")
    assert result.returncode == 2 and "l_norm" in result.stderr and "lc_mix" in result.stderr


def test_stages_one_by_one_then_export(tmp_path, small_folder, capsys):
    p = str(tmp_path / "p.zarr")
    assert main(["init", str(small_folder), p]) == 0
    assert main(["patches", p, "--preset", "tiny"]) == 0
    assert main(["train-cls", p, "--epochs", "1", "--device", "cpu"]) == 0
    assert main(["cams", p, "--scales", "1"]) == 0
    assert main(["train-seg", p, "--iterations", "3", "--loss", "ohem"]) == 0
    ran = json.loads((tmp_path / "p.zarr" / "runs" / "segmentation.json").read_text())["config"]
    assert ran["iterations"] == ran["full_iterations"] == 3 and ran["loss"] == "ohem"
    assert main(["predict", p, "--fast", "--split", "test"]) == 0
    assert main(["evaluate", p, "--split", "test", "--per-image"]) == 0
    assert main(["export", p, str(tmp_path / "out"), "--format", "tiff"]) == 0
    out = capsys.readouterr().out
    assert "CAM mIoU" in out and "mIoU" in out and "testA_1" in out
    assert len(list((tmp_path / "out").glob("train_*_anno.tif"))) == 4
    # a setting no run can use is refused before it is saved as the project's configuration
    assert main(["train-seg", p, "--iterations", "3", "--temperature", "0", "--name", "t0"]) == 2
    assert "temperature must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "p.zarr" / "checkpoints" / "segmentation-t0.pt").exists()
    assert main(["train-seg", p, "--labels", "corrected", "--verified-weight", "0", "--name", "t0"]) == 2
    assert "verified_weight must be > 0" in capsys.readouterr().err
    assert main(["train-seg", p, "--error-prob-weight", "1.5", "--name", "t0"]) == 2
    assert "error_prob_weight must be between 0 and 1 ([0, 1])" in capsys.readouterr().err
    # weighing by the label review before there is one names the command that makes it
    assert main(["train-seg", p, "--iterations", "3", "--error-prob-weight", "1", "--name", "t0"]) == 2
    assert "run `oeem regions" in capsys.readouterr().err
    assert main(["run", p, "--set", "segmentation.error_prob_weight=1"]) == 2  # new labels every round
    assert "`oeem run` makes new labels in every self-training round" in capsys.readouterr().err
    assert main(["train-seg", p, "--iterations", "3", "--error-prob-weight", "0", "--name", "t0"]) == 0
    saved = json.loads((tmp_path / "p.zarr" / "runs" / "config.json").read_text())
    # the project keeps the preset its first command chose; each command's flags were for that run only
    assert saved["preset"] == "tiny" and saved["segmentation"]["loss"] == "ce"
    assert saved["segmentation"]["weight_temperature"] == 1.0 and saved["cam"]["scales"] == [1.0, 1.5]
    capsys.readouterr()
    assert main(["info", p]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train"] == 4 and info["test"] == 2 and info["arrays"]["pseudo"] == 4
    assert 0 < info["metrics"]["prediction (test)"]["mIoU"] <= 100
    assert info["metrics"]["pseudo_mIoU (train)"] > 0


def test_validation_split_and_self_training_from_the_command_line(tmp_path, small_folder, capsys):
    p = str(tmp_path / "p.zarr")
    assert main(["init", str(small_folder), p, "--val-images", "1"]) == 0
    told = capsys.readouterr().out
    assert "  3 training images: 3 named train_*\n" in told and "  2 test images: 2 named testA_*\n" in told
    assert "  1 validation images: 1 held out by --val-images 1 (seed 0)\n" in told
    assert main(["patches", p, "--preset", "tiny"]) == 0
    assert main(["train-cls", p, "--epochs", "1", "--device", "cpu"]) == 0
    assert main(["cams", p, "--scales", "1"]) == 0
    assert main(["selftrain", p]) == 2
    assert "run `oeem train-seg" in capsys.readouterr().err
    assert main(["train-seg", p, "--iterations", "3", "--set", "segmentation.working_scale=0.5"]) == 0
    assert main(["predict", p, "--all-orientations", "--scales", "1", "--split", "val"]) == 0
    assert ProjectStore.open(p, mode="r").load_run("predict")["config"]["dihedral"] is True
    assert main(["predict", p, "--fast", "--split", "val"]) == 0
    assert ProjectStore.open(p, mode="r").load_run("predict")["config"]["dihedral"] is False
    assert main(["selftrain", p]) == 2  # the training images have no prediction yet
    assert main(["predict", p, "--fast", "--split", "train"]) == 0
    capsys.readouterr()
    assert main(["selftrain", p]) == 0
    out = capsys.readouterr().out
    assert "self-training round 1" in out and "val pseudo-mask mIoU" in out
    saved = json.loads((tmp_path / "p.zarr" / "runs" / "config.json").read_text())
    assert saved["preset"] == "tiny"  # the first command's preset is the project's
    assert saved["segmentation"]["working_scale"] == 1.0  # a flag or --set applies to its own run only
    assert saved["classifier"]["epochs"] == preset("tiny").classifier.epochs != 1
    assert main(["evaluate", p, "--split", "val"]) == 0
    assert main(["selftrain", p, "--reset"]) == 0
    assert "restored the stage-1 pseudo-masks of 4 images" in capsys.readouterr().out
    assert main(["cams", p, "--scales", "1", "--set", "cam.gland_bias=0.5", "--save-settings"]) == 0
    saved = json.loads((tmp_path / "p.zarr" / "runs" / "config.json").read_text())
    assert saved["cam"]["gland_bias"] == 0.5 and saved["cam"]["scales"] == [1.0]  # ... unless asked to keep it
