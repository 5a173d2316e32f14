"""parity.match: box/mask IoU from their definitions, greedy matching rules."""
import numpy as np

from parity.match import box_iou, greedy_match, mask_iou


def det(box, score, cat=1):
    return {"box": box, "score": score, "category_id": cat}


def test_box_iou_from_the_definition():
    a = [[0, 0, 10, 10], [0, 0, 0, 5]]
    b = [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]]
    # overlap 5x10 = 50, union 100 + 100 - 50 = 150; an empty box has IoU 0 with everything
    expected = np.array([[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(box_iou(a, b), expected)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True   # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert mask_iou(a, b) == 4 / 12
    assert mask_iou(a, a) == 1.0
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_greedy_match_requires_class_iou_and_score():
    ref = [det([0, 0, 100, 100], 0.9, cat=1)]
    assert greedy_match(ref, [det([0, 0, 100, 100], 0.9, cat=2)]) == []
    assert greedy_match(ref, [det([0, 0, 100, 100], 0.9 + 2e-3)]) == []
    assert greedy_match(ref, [det([0, 0, 100, 100], 0.9 + 5e-4)]) == [(0, 0)]
    # IoU 0.98 fails the strict rule, passes a looser one
    assert greedy_match(ref, [det([0, 0, 100, 98], 0.9)]) == []
    assert greedy_match(ref, [det([0, 0, 100, 98], 0.9)], min_iou=0.9) == [(0, 0)]


def test_greedy_match_one_to_one_by_score_then_iou():
    ref = [det([0, 0, 100, 100], 0.5), det([0, 0, 100, 100.5], 0.5005)]
    cand = [det([0, 0, 100, 100.5], 0.5002), det([0, 0, 100, 100.2], 0.5003)]
    # the higher-scored reference goes first and takes its best box (candidate 0, IoU 1);
    # the other reference gets the remaining candidate
    assert greedy_match(ref, cand) == [(1, 0), (0, 1)]
    # a single candidate is matched once
    assert greedy_match(ref, cand[:1]) == [(1, 0)]
    assert greedy_match([], cand) == [] and greedy_match(ref, []) == []
