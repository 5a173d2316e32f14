"""tfmrcnn: Mask R-CNN in TensorFlow 2 with detectron2's conventions.

Layout: config.py (the config tree), modeling/ (the network, one file per concept), ops/ (custom
ROIAlign op), data/ (datasets and input pipeline), engine/ (Horovod training), evaluation/ (COCO
evaluation), checkpoint/ (detectron2 converter and weight files), cli/ (entry points).
"""
import os as _os

# TensorFlow's C++ INFO lines (oneDNN notices) drown the training log; users can override.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
