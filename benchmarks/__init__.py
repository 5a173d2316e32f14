"""tfmrcnn's speed benchmarks: a developer package of this repository, not installed with tfmrcnn.

    python -m benchmarks [SECTION ...] [--repeats N] [--clock cpu] [--quick]   (benchmarks/cli.py;
                                              python scripts/benchmark.py ... is the same)
    python -m benchmarks.profile ops|trace ...   where the time of one model step goes, per op

Sections (cli.SECTIONS, each a module with ``run(args) -> rows``): roi_align, conv3x3, model,
paste, input_pipeline, scaling, reference, allocator (glibc vs tcmalloc on the demo step), and
architectures (run only when named: end-to-end inference per architecture, ours next to
detectron2's).
Beside them: common.py (the problems, timing and worker processes shared with the PyTorch worker
torch_reference.py), compare.py (ours next to detectron2 measured in the same run), machine.py
(the machine line of every run). Tests in benchmarks/tests (fast, nothing timed).

This file imports nothing: benchmarks.torch_reference runs in the PyTorch environment
(.venv-reference, no TensorFlow, no tfmrcnn) and imports the package through it.
"""
