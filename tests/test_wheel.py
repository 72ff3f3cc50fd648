"""The package as a user gets it: a wheel (not an editable install) in a fresh virtual environment outside the
repository, then `oeem init sample` + `oeem run --preset tiny`, `oeem --version` and napari's Open Sample
command. The dependencies come from the test environment (a .pth file), so this checks what the wheel ships -
every sub-package, the sample images, the entry points - without downloading anything."""
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def clean_source(to: Path) -> Path:
    """The sources as a fresh clone has them: setuptools packs whatever an earlier build left in build/lib, so a
    wheel built in a working tree can ship a module the package list no longer names and hide the missing one."""
    junk = shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "logs", "*.egg-info", "__pycache__",
                                  "*.oeem.zarr", ".pytest_cache")
    shutil.copytree(ROOT, to, ignore=junk)
    return to


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    source = clean_source(work / "source")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(work / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((work / "dist").glob("oeem_napari-*.whl"))
    env = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # the test environment's packages after the venv's own, so the wheel's pipeline is the one imported
    deps = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (Path(purelib) / "zz_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return env, purelib, work


def python(env, work, *args, timeout=900):
    return subprocess.run([str(env / "bin" / "python"), *args], capture_output=True, text=True, cwd=work,
                          timeout=timeout)


def test_the_wheel_ships_every_package_and_the_sample_data(fresh_env):
    env, purelib, work = fresh_env
    out = python(env, work, "-c", "import pipeline, oeem_napari, pipeline.store.project as p; "
              "print(pipeline.__file__); print(p.sample_data_folder())")
    assert out.returncode == 0, out.stderr[-3000:]
    module, sample = out.stdout.split()
    assert module.startswith(purelib) and sample.startswith(purelib)  # not the repository's copy
    assert len(list(Path(sample).glob("train_*_anno.png"))) == 12
    # every package of the repository is in the wheel (a new sub-package must be listed in pyproject.toml)
    packages = sorted(".".join(p.parent.relative_to(ROOT).parts) for top in ("pipeline", "oeem_napari")
                      for p in (ROOT / top).rglob("__init__.py"))
    out = python(env, work, "-c", f"import importlib; [importlib.import_module(m) for m in {packages!r}]")
    assert out.returncode == 0, out.stderr[-3000:]


def test_oeem_init_sample_and_run_tiny_from_the_wheel(fresh_env):
    env, _, work = fresh_env
    oeem = str(env / "bin" / "oeem")  # the console script the wheel installs
    version = subprocess.run([oeem, "--version"], capture_output=True, text=True, cwd=work, timeout=300)
    assert version.returncode == 0 and version.stdout.startswith("oeem ")
    made = subprocess.run([oeem, "init", "sample", "p.oeem.zarr"], capture_output=True, text=True, cwd=work,
                          timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    res = subprocess.run([oeem, "run", "p.oeem.zarr", "--preset", "tiny", "--device", "cpu"], capture_output=True,
                         text=True, cwd=work, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "== OEEM report ==" in res.stdout and "prediction (test" in res.stdout


def test_napari_open_sample_from_the_wheel(fresh_env):
    env, _, work = fresh_env
    out = python(env, work, "-c", "from oeem_napari._sample_data import make_sample_data; "
              "layers = make_sample_data(); print(len(layers), [l[0].shape for l in layers])")
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[0]) >= 2
