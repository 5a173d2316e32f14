"""NMS on boxes whose IoUs sit on the threshold: torchvision's batched_nms (detectron2's) keep
lists, from tests/fixtures/make_nms_ties_golden.py, must come out identical."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling import box_ops

GOLDEN = "nms_ties_golden.npz"


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / GOLDEN))


def _case(golden, name):
    return (golden[f"{name}/boxes"], golden[f"{name}/scores"], golden[f"{name}/idxs"],
            float(golden[f"{name}/iou_threshold"]), golden[f"{name}/keep"])


@pytest.mark.parametrize("name", ["trick_80cls_t05", "trick_boundary_t07", "trick_30cls_t06",
                                  "loop_80cls_t05", "loop_boundary_t07", "loop_40cls_t06"])
def test_batched_nms_keeps_exactly_torchvisions(golden, name):
    boxes, scores, idxs, thresh, want = _case(golden, name)
    np.testing.assert_array_equal(box_ops.batched_nms(boxes, scores, idxs, thresh).numpy(), want)
    # detectron2's fast_rcnn_inference cuts the top D after the NMS
    capped = box_ops.batched_nms(boxes, scores, idxs, thresh, 100).numpy()
    np.testing.assert_array_equal(capped, want[:100])


def test_batched_nms_in_tf_function_both_branches_and_empty(golden):
    fn = tf.function(lambda b, s, i: box_ops.batched_nms(b, s, i, 0.5, 100),
                     input_signature=[tf.TensorSpec([None, 4], tf.float32),
                                      tf.TensorSpec([None], tf.float32),
                                      tf.TensorSpec([None], tf.int32)])
    for name in ("trick_80cls_t05", "loop_80cls_t05"):
        boxes, scores, idxs, _, want = _case(golden, name)
        np.testing.assert_array_equal(fn(boxes, scores, idxs.astype(np.int32)).numpy(), want[:100])
    empty = fn(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32))
    assert empty.shape == (0,)
    assert fn.experimental_get_tracing_count() == 1


def test_rpn_nms_per_image_choice_matches_torchvision(golden):
    """find_top_proposals' NMS: per image, torchvision's batched_nms over the valid boxes of all
    levels with idxs = level; image 0 has 1000 valid boxes (coordinate trick), image 1 1500."""
    boxes, scores, valid = golden["rpn/boxes"], golden["rpn/scores"], golden["rpn/valid"]
    b, num_levels, k, _ = boxes.shape
    levels = np.repeat(np.arange(num_levels), k)[None]  # (1, L*K)
    nms_boxes = box_ops.nms_coordinates(boxes.reshape(b, -1, 4), levels, valid.reshape(b, -1))
    keep, keep_valid = box_ops.nms_rows(tf.reshape(nms_boxes, [-1, k, 4]), scores.reshape(-1, k),
                                        valid.reshape(-1, k), float(golden["rpn/iou_threshold"]),
                                        k)
    keep = keep.numpy().reshape(b, num_levels, k)
    keep_valid = keep_valid.numpy().reshape(b, num_levels, k)
    assert not keep[~keep_valid].any()  # padding is index 0
    for i in range(b):
        want = golden[f"rpn/keep_{i}"]  # flat (level * K + index), by decreasing score
        for lvl in range(num_levels):
            want_lvl = want[want // k == lvl] % k
            np.testing.assert_array_equal(keep[i, lvl][keep_valid[i, lvl]], want_lvl)
