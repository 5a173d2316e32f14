"""A user's own COCO-format set for the tests: the shapes set relabelled with the category ids
1, 5, 90 in an order that differs from the generator's, so that label order (categories sorted
by id), names and ids can only all be right if they travel together.

Generator id -> own id: circle 1 -> 90, square 2 -> 1, triangle 3 -> 5. Sorted by the own ids
the labels are 0 square (1), 1 triangle (5), 2 circle (90).
"""
import json
import os

OWN_IDS = {1: 90, 2: 1, 3: 5}
LABEL_NAMES = ["square", "triangle", "circle"]
LABEL_IDS = [1, 5, 90]


def relabel(src_json: str, dst_json: str, id_map=OWN_IDS) -> None:
    """Copy a COCO json with every category id (categories and annotations) mapped."""
    with open(src_json) as f:
        data = json.load(f)
    for cat in data["categories"]:
        cat["id"] = id_map[cat["id"]]
    for ann in data["annotations"]:
        ann["category_id"] = id_map[ann["category_id"]]
    with open(dst_json, "w") as f:
        json.dump(data, f)


def make_own_set(root: str, num_train: int, num_val: int, seed: int = 0, image_size=None):
    """Generate shapes under root/images-src and write root/{train,val}.json with the own ids.

    Returns {split: (json path, image folder)}.
    """
    from tfmrcnn.data.shapes import generate_shapes_dataset, shapes_paths

    source = os.path.join(root, "generated")
    generate_shapes_dataset(source, num_train, num_val, seed=seed, image_size=image_size)
    paths = {}
    for split in ("train", "val"):
        src_json, images = shapes_paths(source, split)
        dst_json = os.path.join(root, f"{split}.json")
        relabel(src_json, dst_json)
        paths[split] = (dst_json, images)
    return paths


def write_tiny_json(path: str, categories, image_root: str) -> str:
    """A one-image COCO json with one annotation of the first category; image_root created."""
    os.makedirs(image_root, exist_ok=True)
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": categories[0]["id"],
                             "iscrowd": 0, "bbox": [1.0, 2.0, 10.0, 10.0], "area": 50.0,
                             "segmentation": [[1.0, 2.0, 11.0, 2.0, 11.0, 12.0]]}],
            "categories": categories}
    with open(path, "w") as f:
        json.dump(data, f)
    return path
