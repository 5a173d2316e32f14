"""Multi-level ROI pooling over FPN maps (detectron2's ROIPooler with ROIAlignV2 or ROIAlign)."""
import math

import tensorflow as tf

from tfmrcnn.ops import roi_align


def assign_boxes_to_levels(boxes, min_level, max_level, canonical_box_size=224,
                           canonical_level=4):
    """FPN level of every box, as an index from 0 (= min_level).

    detectron2's rule (FPN paper eq. 1): a box of side sqrt(area) = canonical_box_size maps to
    canonical_level, and each factor of 2 in size moves one level:
        level = floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))
    clamped to [min_level, max_level]. Computed in float32 like detectron2. Boxes with negative
    area (x1 < x0 or y1 < y0) count as empty and go to min_level, as do non-finite boxes (so that
    a diverging model still gets valid level indices).

    Args:
      boxes: (R, 4) xyxy in image pixels.
    Returns:
      (R,) int32 level index in [0, max_level - min_level].
    """
    boxes = tf.cast(boxes, tf.float32)  # (R, 4) xyxy
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    size = tf.sqrt(tf.maximum(area, 0.0))  # (R,)
    level = tf.floor(canonical_level + tf.math.log(size / canonical_box_size + 1e-8) /
                     tf.math.log(2.0))
    level = tf.where(tf.math.is_finite(level), level, float(min_level))
    level = tf.clip_by_value(level, float(min_level), float(max_level))
    return tf.cast(level, tf.int32) - min_level


# detectron2's ROIPooler pooler_type -> ROIAlign's `aligned`: ROIAlignV2 shifts box corners by
# -0.5 pixel (sample centres on the pixel grid); ROIAlign is Detectron1's, without the shift and
# with ROI sides clamped to >= 1 (the Detectron1-Comparisons configs use it).
_ALIGNED_BY_POOLER_TYPE = {"ROIAlignV2": True, "ROIAlign": False}


def aligned_for_pooler_type(pooler_type: str, key: str = "POOLER_TYPE") -> bool:
    """ROIAlign's `aligned` for a config's POOLER_TYPE; ValueError naming `key` for others."""
    if pooler_type not in _ALIGNED_BY_POOLER_TYPE:
        raise ValueError(f"{key} = {pooler_type!r} is not supported; supported: "
                         + ", ".join(_ALIGNED_BY_POOLER_TYPE))
    return _ALIGNED_BY_POOLER_TYPE[pooler_type]


class ROIPooler(tf.Module):
    """ROIAlign of boxes on the FPN level that fits their size.

    Convention: `features` is a list of NHWC maps ordered finest first, the i-th having stride
    1 / scales[i] (P2..P5 = scales 1/4..1/32); boxes are (R, 4) xyxy in image pixels and
    box_indices (R,) pick the image. Each box is pooled on exactly one level
    (assign_boxes_to_levels); the output keeps the input order of the boxes.
    """

    def __init__(self, output_size, scales, sampling_ratio=0, canonical_box_size=224,
                 canonical_level=4, aligned=True, name=None):
        super().__init__(name=name)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(int(s) for s in output_size)
        self.scales = [float(s) for s in scales]
        levels = [-math.log2(s) for s in self.scales]
        if any(abs(lv - round(lv)) > 1e-6 for lv in levels):
            raise ValueError("pooler scales must be powers of 2, got %s" % (scales,))
        levels = [int(round(lv)) for lv in levels]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError("pooler scales must be consecutive levels, finest first: %s"
                             % (scales,))
        self.min_level, self.max_level = levels[0], levels[-1]
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self.aligned = bool(aligned)

    def _pool(self, feature, scale, boxes, box_indices):
        return roi_align(feature, boxes, box_indices, self.output_size, scale,
                         sampling_ratio=self.sampling_ratio, aligned=self.aligned)

    def __call__(self, features, boxes, box_indices):
        """features: list of (N, Hl, Wl, C); boxes (R, 4); box_indices (R,) -> (R, oh, ow, C)."""
        if len(features) != len(self.scales):
            raise ValueError("got %d feature maps for %d scales" % (len(features),
                                                                   len(self.scales)))
        boxes = tf.cast(boxes, tf.float32)
        box_indices = tf.cast(box_indices, tf.int32)
        if len(features) == 1:
            return self._pool(features[0], self.scales[0], boxes, box_indices)
        num_levels = len(features)
        level = assign_boxes_to_levels(boxes, self.min_level, self.max_level,
                                       self.canonical_box_size, self.canonical_level)
        # Split the ROI ids by level, pool each level once, and stitch back to input order.
        ids = tf.dynamic_partition(tf.range(tf.shape(boxes)[0]), level, num_levels)
        pooled = [self._pool(f, s, tf.gather(boxes, i), tf.gather(box_indices, i))
                  for f, s, i in zip(features, self.scales, ids)]
        return tf.dynamic_stitch(ids, pooled)  # (R, oh, ow, C)
