"""detectron2 interop: model-zoo / MSRA `.pkl` files in and out (convert), detectron2 yaml
configs (d2_config), detectron2 and Caffe2 tensor names (d2_names, c2_names), the safe
unpickler for untrusted files (safe_pickle).

Importing this package does not import TensorFlow (the converter runs without it).
"""
