"""Using a trained model: model directories, the Python predictor, SavedModel export."""
from tfmrcnn.export.model_dir import (ModelDirError, label_to_category_id, load_model,
                                      model_dir_paths, resolve_class_names)

__all__ = ["ModelDirError", "label_to_category_id", "load_model", "model_dir_paths",
           "resolve_class_names"]
