"""Checkpoints: tfmrcnn's .npz weights file, the detectron2/Caffe2 converter, the safe unpickler.

Importing this package does not import TensorFlow (the converter runs without it).
"""
