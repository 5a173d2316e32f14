"""Our weights on disk: the .npz weights file (weights_io), training checkpoints
(checkpointer) and model folders (model_dir).

The detectron2/Caffe2 converter lives in `tfmrcnn.converter`.
"""
