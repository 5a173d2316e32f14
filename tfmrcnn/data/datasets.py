"""The records of a data set, however it is named: the one lookup for evaluation and pictures."""
from __future__ import annotations

__all__ = ["get_dataset_dicts"]


def get_dataset_dicts(dataset):
    """Dataset dicts of a registered name, a (json_file, image_root) pair, or a list of dicts."""
    if isinstance(dataset, (list, tuple)) and dataset and isinstance(dataset[0], dict):
        return list(dataset)
    if isinstance(dataset, str):
        from tfmrcnn.data.catalog import DatasetCatalog

        return DatasetCatalog.get(dataset)
    from tfmrcnn.data.coco import load_coco_json

    json_file, image_root = dataset
    return load_coco_json(json_file, image_root)
