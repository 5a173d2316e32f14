"""Legible pictures: label size, placement and drawing order (geometry, not pixels)."""
import itertools

import numpy as np

from tfmrcnn.utils.visualize import (draw_instances, font_scale_for, label_size, layout_labels,
                                     same_object_duplicates)


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_font_scale_grows_with_the_picture():
    scales = [font_scale_for(s, s) for s in (200, 400, 800, 1333)]
    assert all(a < b for a, b in zip(scales[1:], scales[2:]))  # grows above the minimum
    assert scales[0] <= scales[1]
    # label text height in px: readable (>= 9 px) at 200 px, ~2 % of the side at 1333 px
    _, h200 = label_size("square 99%", scales[0])
    _, h1333 = label_size("square 99%", scales[-1])
    assert h200 >= 9 + 4 and 0.01 * 1333 < h1333 - 4 < 0.03 * 1333


def test_labels_inside_the_picture_and_apart():
    rng = np.random.default_rng(0)
    for size in (200, 640, 1333):
        scale = font_scale_for(size, size)
        # small boxes crowded at the edges and corners, some on the same object
        xy = rng.uniform(-0.05 * size, 0.95 * size, (12, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(4, 0.1 * size, (12, 2))], 1)
        boxes[3] = boxes[2] + 1  # near-duplicates compete for the same place
        boxes[0] = [0, 0, 8, 8]
        boxes[1] = [size - 8, size - 8, size, size]
        sizes = [label_size(f"triangle {i}%", scale) for i in range(12)]
        places = layout_labels(boxes, sizes, (size, size))
        for (x0, y0, x1, y1), (w, h) in zip(places, sizes):
            assert 0 <= x0 and 0 <= y0 and x1 <= size and y1 <= size
            assert (x1 - x0, y1 - y0) == (w, h)
        for a, b in itertools.combinations(places, 2):
            assert not _overlap(a, b), (size, a, b)


def test_label_sits_above_its_box_when_free():
    places = layout_labels(np.array([[50, 60, 70, 80]]), [(30, 12)], (200, 200))
    assert places == [(50, 48, 80, 60)]
    # at the top edge it goes inside the top of the box instead of out of the picture
    places = layout_labels(np.array([[50, 0, 70, 20]]), [(30, 12)], (200, 200))
    assert places == [(50, 0, 80, 12)]


def test_duplicates_of_another_class_and_draw_order():
    boxes = np.array([[10, 10, 50, 50], [11, 10, 50, 51], [12, 11, 50, 50], [100, 100, 140, 140]],
                     np.float32)
    classes = np.array([0, 1, 0, 2])
    scores = np.array([0.6, 0.9, 0.55, 0.8])
    dup = same_object_duplicates(boxes, classes, scores)
    # 0 and 2 lie under the higher-scored class 1 on the same object; 1 and 3 stand alone
    assert dup.tolist() == [True, False, True, False]
    # detection 2 of class 0 is not a duplicate of detection 0 (same class): only of 1
    assert not same_object_duplicates(boxes[[0, 2]], classes[[0, 2]], scores[[0, 2]]).any()


def test_higher_score_is_the_label_seen():
    """Two classes on one object: the higher-scored label takes the preferred place (above the
    box) and its box is drawn last (on top); the lower one's label is elsewhere."""
    image = np.full((200, 200, 3), 255, np.uint8)
    boxes = np.array([[60, 60, 100, 100], [60, 60, 100, 100]], np.float32)
    scale = font_scale_for(200, 200)
    names = ["circle", "square"]
    sizes = {c: label_size(f"{names[c]} {s:.0%}", scale) for c, s in ((0, 0.55), (1, 0.9))}
    picture = draw_instances(image, boxes, np.array([0, 1]), np.array([0.55, 0.9]),
                             class_names=names)
    # the higher (class 1) label is laid out first: directly above the box
    places = layout_labels(boxes[[1, 0]], [sizes[1], sizes[0]], (200, 200))
    w1, h1 = sizes[1]
    assert places[0] == (60, 60 - h1, 60 + w1, 60)
    assert not _overlap(places[0], places[1])
    # the pixel just inside the top-left label corner has the label colour of class 1's
    # detection (index 1), not of index 0
    from tfmrcnn.utils.visualize import color_for

    assert tuple(picture[60 - h1 + 1, 61]) == color_for(1)
