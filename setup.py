"""setuptools hooks (metadata is in setup.cfg): ``pip install .`` builds the custom-op library.

Install with the target environment's TensorFlow already in it, and without build isolation,
so that the op is compiled against that TensorFlow::

    pip install -r requirements-cpu.txt -r requirements-dev.txt   # or requirements-cuda.txt
    pip install --no-build-isolation .

* build_py compiles tfmrcnn/ops/_tfmrcnn_ops.so and its _build_info.json (custom_ops/build.py)
  into the package being built: the wheel's build folder, or the source tree for an editable
  install (``pip install -e .``, skipped when up to date).
* The wheel is platform-tagged (cp311-cp311-linux_x86_64), not py3-none-any: it holds a binary
  tied to the platform and to TensorFlow's C++ ABI.
* install_requires are requirements.txt's pins plus the installed TensorFlow distribution at the
  version the op was compiled for (e.g. ``tensorflow-cpu==2.21.0``), so pip keeps that TF and
  never adds the other TF package. Without TF (e.g. with build isolation) the build stops with
  a message saying so.
"""
import importlib.util
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.abspath(__file__))


def _op_build():
    """custom_ops/build.py as a module (not importable as `build`: that is PyPA's package)."""
    spec = importlib.util.spec_from_file_location(
        "tfmrcnn_custom_ops_build", os.path.join(ROOT, "custom_ops", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithOps(build_py):
    """build_py, then the custom-op library into the built package."""

    def run(self):
        ops = _op_build()
        if getattr(self, "editable_mode", False):
            super().run()
            ops.build()                      # the source tree is the package
            return
        # a clean package folder: setuptools never deletes modules that left the source tree
        shutil.rmtree(os.path.join(self.build_lib, "tfmrcnn"), ignore_errors=True)
        super().run()
        ops.build(out=os.path.join(self.build_lib, "tfmrcnn", "ops", ops.LIBRARY_NAME))


class BinaryDistribution(Distribution):
    """A distribution with a compiled part: bdist_wheel then tags the wheel with the platform."""

    def has_ext_modules(self):
        return True


def install_requires():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pins = [line.strip() for line in f if line.strip() and not line.startswith(("#", "-"))]
    ops = _op_build()
    distribution = ops.installed_tf_distribution()
    if distribution:
        import importlib.metadata

        pins.append(f"{distribution}=={importlib.metadata.version(distribution)}")
    return pins


setup(distclass=BinaryDistribution, cmdclass={"build_py": BuildPyWithOps},
      install_requires=install_requires())
