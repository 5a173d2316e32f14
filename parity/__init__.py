"""Developer tool: end-to-end parity of tfmrcnn with detectron2 itself (see parity/README.md).

Not part of the tfmrcnn package and not run in CI (it needs PyTorch and detectron2 in
.venv-reference); only its NumPy parts are unit-tested (parity/tests).
"""
