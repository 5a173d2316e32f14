"""parity.images.annotations_from_detections: which detections become objects, and how."""
import numpy as np

from parity.images import BOX_JITTER, annotations_from_detections


def test_every_other_detection_by_score_with_a_jittered_box():
    images = [{"id": 7, "file_name": "a.png", "height": 100, "width": 200}]
    dets = {"a.png": [
        {"box": [10, 10, 60, 40], "score": 0.2, "category_id": 3, "area": 900},
        {"box": [100, 20, 150, 90], "score": 0.9, "category_id": 5, "area": 1200,
         "segmentation": {"size": [100, 200], "counts": "abc"}},
        {"box": [0, 0, 200, 100], "score": 0.5, "category_id": 1, "area": 5000},
    ]}
    cats = [{"id": k, "name": str(k)} for k in (1, 3, 5)]
    gt = annotations_from_detections(images, dets, cats, seed=0)
    anns = gt["annotations"]
    # score ranks 0 (0.9) and 2 (0.2) are kept; rank 1 (0.5) is not
    assert [a["category_id"] for a in anns] == [5, 3]
    assert all(a["image_id"] == 7 and a["iscrowd"] == 0 for a in anns)
    assert anns[0]["segmentation"] == {"size": [100, 200], "counts": "abc"}
    assert "segmentation" not in anns[1] and anns[1]["area"] == 900
    for ann, src in zip(anns, ([100, 20, 150, 90], [10, 10, 60, 40])):
        x, y, w, h = ann["bbox"]
        sw, sh = src[2] - src[0], src[3] - src[1]
        shift = np.abs(np.array([x, y, x + w, y + h]) - src) / [sw, sh, sw, sh]
        assert shift.max() <= BOX_JITTER and shift.max() > 0
    assert gt["images"] == images and gt["categories"] == cats
    again = annotations_from_detections(images, dets, cats, seed=0)
    assert again == gt
