"""Transforms: flip/resize keep image, boxes and masks aligned (the resize itself: test_resize)."""
import numpy as np
import pycocotools.mask as mask_util
import pytest

from tfmrcnn.data import transforms as T
from tfmrcnn.data.resize import resize_shortest_edge_shape


def test_sample_short_edge_choice_and_range():
    rng = np.random.default_rng(0)
    got = {T.sample_short_edge(rng, (640, 672, 800), "choice") for _ in range(200)}
    assert got == {640, 672, 800}
    got = [T.sample_short_edge(rng, (10, 13), "range") for _ in range(300)]
    assert set(got) == {10, 11, 12, 13}
    with pytest.raises(ValueError):
        T.sample_short_edge(rng, (1, 2), "bogus")


def _rect_image(h, w, box):
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255
    return img


@pytest.mark.parametrize("flip", [False, True])
def test_resize_flip_keep_image_boxes_masks_aligned(flip):
    h, w, box = 60, 90, (10, 20, 50, 44)               # integer box: exact pixel region
    x0, y0, x1, y1 = box
    ann = {"bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": 2, "iscrowd": 0,
           "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}
    new_h, new_w = resize_shortest_edge_shape(h, w, 100, 1000)
    params = T.TransformParams(h, w, new_h, new_w, flip)
    out = T.transform_annotations([ann], params)
    sx, sy = new_w / w, new_h / h
    # independent reference from the definition: scale, then x -> W - x
    ref = np.array([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
    if flip:
        ref = np.array([new_w - ref[2], ref[1], new_w - ref[0], ref[3]])
    np.testing.assert_allclose(out["boxes"][0], ref, atol=1e-4)
    assert out["classes"].tolist() == [2]
    mask = out["masks"][0]
    assert mask.shape == (new_h, new_w)
    ys, xs = np.nonzero(mask)
    # the rasterised mask spans the box (pixel centres inside it)
    assert abs(xs.min() - ref[0]) <= 1 and abs(xs.max() + 1 - ref[2]) <= 1
    assert abs(ys.min() - ref[1]) <= 1 and abs(ys.max() + 1 - ref[3]) <= 1
    # and coincides with the bright region of the transformed image
    image = params.apply_image(_rect_image(h, w, box))
    assert image.shape == (new_h, new_w, 3) and image.dtype == np.uint8
    bright = image[..., 0] > 127
    inter = np.logical_and(bright, mask).sum()
    union = np.logical_or(bright, mask).sum()
    assert inter / union > 0.95


def test_rle_mask_follows_the_same_transform_as_polygons():
    h, w = 40, 50
    poly = [5.0, 6.0, 30.0, 6.0, 30.0, 25.0, 5.0, 25.0]
    rle = mask_util.merge(mask_util.frPyObjects([poly], h, w))
    base = {"bbox": [5, 6, 25, 19], "category_id": 0, "iscrowd": 0}
    params = T.TransformParams(h, w, 80, 100, True)
    m_poly = T.transform_annotations([dict(base, segmentation=[poly])], params)["masks"][0]
    m_rle = T.transform_annotations([dict(base, segmentation=rle)], params)["masks"][0]
    assert m_rle.shape == (80, 100)
    assert np.logical_xor(m_poly, m_rle).sum() <= 0.05 * m_poly.sum()


def test_crowd_goes_apart_and_degenerate_boxes_are_dropped():
    anns = [
        {"bbox": [1, 1, 10, 10], "category_id": 0, "iscrowd": 1, "segmentation": {"size": [20, 20], "counts": [0, 400]}},
        {"bbox": [25, 3, 5, 5], "category_id": 1, "iscrowd": 0, "segmentation": [[25, 3, 30, 3, 30, 8]]},  # x > W
        {"bbox": [2, 2, 0, 5], "category_id": 1, "iscrowd": 0, "segmentation": [[2, 2, 2, 7, 2, 5]]},  # zero width
        {"bbox": [4, 4, 6, 6], "category_id": 3, "iscrowd": 0, "segmentation": [[4, 4, 10, 4, 10, 10, 4, 10]]},
    ]
    params = T.TransformParams(20, 20, 40, 40, False)
    out = T.transform_annotations(anns, params)
    np.testing.assert_allclose(out["crowd_boxes"], [[2, 2, 22, 22]])
    assert out["classes"].tolist() == [3]
    np.testing.assert_allclose(out["boxes"], [[8, 8, 20, 20]])
    assert out["masks"].shape == (1, 40, 40)


def test_box_is_clipped_to_the_image():
    params = T.TransformParams(10, 10, 20, 20, True)
    out = T.transform_annotations(
        [{"bbox": [-2, 5, 6, 10], "category_id": 0, "segmentation": [[0, 5, 4, 5, 4, 10]]}], params)
    # x in [-2, 4] -> [-4, 8] -> flip [12, 24] -> clip [12, 20]; y [5, 15] -> [10, 30] -> [10, 20]
    np.testing.assert_allclose(out["boxes"], [[12, 10, 20, 20]])
