"""`pip install .`: the op is compiled against the target environment's TensorFlow into a
platform-tagged wheel that records that TF; missing pieces and another TF give clear errors."""
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


op_build = _module("custom_ops/build.py", "tfmrcnn_custom_ops_build")


def test_missing_compiler_says_what_to_install():
    with pytest.raises(SystemExit, match=r"'/nonexistent/g\+\+' not found.*apt-get install g\+\+"):
        op_build.find_compiler({"CXX": "/nonexistent/g++"})


def test_missing_tf_headers_are_named():
    with pytest.raises(SystemExit, match="op_kernel.h not found in /nonexistent/include"):
        op_build.check_tf_headers(["-I/nonexistent/include", "-D_GLIBCXX_USE_CXX11_ABI=1"])


def test_library_built_for_another_tf_is_refused_with_both_versions_and_the_command():
    from tfmrcnn.ops import library

    with pytest.raises(ImportError) as err:
        library.check_build_info({"tf_version": "2.20.0"}, "2.21.0", "/x/_tfmrcnn_ops.so")
    message = str(err.value)
    assert "built for TensorFlow 2.20.0" in message and "TensorFlow 2.21.0 is installed" in message
    assert "custom_ops/build.py --force" in message      # this is a source tree
    library.check_build_info({"tf_version": "2.21.0"}, "2.21.0", "/x/_tfmrcnn_ops.so")


def _bare_venv(path):
    """A virtualenv without pip or any package (seconds)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def test_build_without_tensorflow_in_the_target_environment_says_so(tmp_path):
    """What a build-isolated `pip install .` meets: no TensorFlow where the op is compiled."""
    python = _bare_venv(tmp_path / "venv")
    proc = subprocess.run([str(python), str(ROOT / "custom_ops" / "build.py"), "--out",
                           str(tmp_path / "x.so")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "cannot import tensorflow" in proc.stderr and "--no-build-isolation" in proc.stderr


def _source_copy(dest):
    """The working tree's tracked and new files (what a clone would hold, plus work in
    progress), without build outputs."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in files:
        src = ROOT / name
        if name and src.is_file() and not name.startswith(("tests/", "benchmarks/", "parity/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


_RUN_ROI_ALIGN = """
import json, sys
import numpy as np
import tfmrcnn
from tfmrcnn.ops import roi_align
features = np.arange(2 * 6 * 7 * 3, dtype=np.float32).reshape(2, 6, 7, 3) / 10
boxes = np.array([[0.5, 1.0, 5.0, 4.5], [1.2, 0.3, 6.6, 5.9]], np.float32)
out = roi_align(features, boxes, [0, 1], (2, 3), 0.5).numpy()
print(json.dumps({"file": tfmrcnn.__file__, "out": out.tolist()}))
"""


@pytest.mark.slow  # compiles the op (about a minute on 2 cores)
def test_wheel_in_a_fresh_venv_runs_roi_align_and_refuses_another_tf(tmp_path):
    import tensorflow as tf

    from custom_ops.reference.roi_align_numpy import roi_align_np

    # a fresh venv that sees this environment's packages (TF, numpy, pip, setuptools) through a
    # .pth line instead of downloading them; tfmrcnn itself is not visible (no site dir there)
    python = _bare_venv(tmp_path / "venv")
    site = pathlib.Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    (site / "_base_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONSTRAINT")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    src = _source_copy(tmp_path / "src")

    build = subprocess.run([str(python), "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
                            "-w", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, env=env, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = list((tmp_path / "dist").glob("tfmrcnn-*.whl"))
    assert len(wheels) == 1
    py = "cp%d%d" % sys.version_info[:2]
    assert wheels[0].name.endswith(f"-{py}-{py}-linux_x86_64.whl"), wheels[0].name
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        info = json.loads(wheel.read("tfmrcnn/ops/_build_info.json"))
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "tfmrcnn/ops/_tfmrcnn_ops.so" in names
    assert info["tf_version"] == tf.__version__
    requires = [line.split(": ", 1)[1] for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ")]
    assert f"{info['tf_distribution']}=={tf.__version__}" in requires
    assert not any(r.startswith(("tensorflow==", "tensorflow-cpu==")) and
                   not r.startswith(info["tf_distribution"] + "==") for r in requires)

    install = subprocess.run([str(python), "-m", "pip", "install", "--no-index", str(wheels[0])],
                             capture_output=True, text=True, env=env, timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    run = subprocess.run([str(python), "-c", _RUN_ROI_ALIGN], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(site))           # the installed copy, not the tree
    features = np.arange(2 * 6 * 7 * 3, dtype=np.float32).reshape(2, 6, 7, 3) / 10
    boxes = np.array([[0.5, 1.0, 5.0, 4.5], [1.2, 0.3, 6.6, 5.9]], np.float32)
    np.testing.assert_allclose(result["out"], roi_align_np(features, boxes, [0, 1], (2, 3), 0.5),
                               atol=1e-5)

    # the same wheel under another TensorFlow: a clear error, not an undefined symbol
    installed_info = site / "tfmrcnn" / "ops" / "_build_info.json"
    installed_info.write_text(json.dumps(dict(info, tf_version="2.20.0")))
    wrong = subprocess.run([str(python), "-c", _RUN_ROI_ALIGN], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=300)
    assert wrong.returncode != 0
    assert "built for TensorFlow 2.20.0" in wrong.stderr
    assert f"TensorFlow {tf.__version__} is installed" in wrong.stderr
    assert "pip install --no-build-isolation" in wrong.stderr
