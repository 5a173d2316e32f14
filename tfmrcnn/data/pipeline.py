"""The training input pipeline: a sharded, aspect-ratio-grouped, restorable tf.data stream.

Order of the data (all of it decided in Python from the seed, so it is reproducible and can be
resumed by position):

* ``TrainSampler``: epoch ``e`` is the permutation ``default_rng([seed, e]).permutation(N)``,
  identical on every rank; the epochs are concatenated into one infinite stream and rank ``r``
  takes the elements ``r, r + W, r + 2W, ...`` (detectron2's TrainingSampler), so the shards of
  one epoch are disjoint. Each rank groups its stream into batches of landscape (w > h) or
  portrait images (detectron2's AspectRatioGroupedDataset) and emits a batch as soon as a group
  is full. Batch ``k`` of a rank is its *position* ``k``; resuming at position ``p`` replays the
  index stream and skips ``p`` batches without decoding anything.
* Augmentation (short side, flip) of an image is drawn from ``default_rng([seed, e, i])`` where
  ``(e, i)`` is the image's place in the global stream: independent of parallelism and resume.

Batch format: see NOTES.md ("A training batch"). Every element also carries ``data_position``
(int64 scalar): the number of this rank's batches consumed once this one is used; the trainer
pops it and saves it in checkpoints.

Robustness: the data set is checked before training (`tfmrcnn.data.validate`), so what follows
only happens when files change during a run. An image that cannot be read
(`tfmrcnn.data.image_io.read_image`), whose decoded size differs from its record, or whose
instances all vanish after the transform is dropped from its batch, with one warning per image;
a batch left empty is skipped. Once every image of the set has failed since the last one that
loaded, the stream raises ``NoUsableImageError`` instead of skipping empty batches forever.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfmrcnn.data import transforms as T
from tfmrcnn.data.coco import filter_images_with_only_crowd_annotations
from tfmrcnn.data.image_io import ImageReadError, read_image
from tfmrcnn.data.resize import resize_shortest_edge_shape

__all__ = ["TrainSampler", "ImageLoader", "build_train_dataset", "per_process_batch_size",
           "NoUsableImageError"]

logger = logging.getLogger(__name__)


def per_process_batch_size(total: int, world_size: int) -> int:
    """SOLVER.IMS_PER_BATCH (all processes) -> images per process; must divide evenly."""
    if total % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total} is not divisible by the number of "
                         f"processes ({world_size})")
    return total // world_size


class TrainSampler:
    """Per-rank stream of batches of (global position, dataset index, short side, flip).

    See the module docstring for the order. ``sizes`` is (N, 2) of (h, w) from the dataset dicts.
    """

    def __init__(self, sizes: np.ndarray, batch_size: int, rank: int, world_size: int, seed: int,
                 min_sizes: Sequence[int], sampling: str = "choice", flip: bool = True,
                 group_by_aspect: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.sizes = np.asarray(sizes).reshape(-1, 2)
        if len(self.sizes) == 0:
            raise ValueError("empty training set")
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed = int(seed)
        self.min_sizes, self.sampling, self.flip = tuple(min_sizes), sampling, flip
        self.group_by_aspect = group_by_aspect

    def _index_stream(self) -> Iterator[Tuple[int, int, int]]:
        """(epoch, place in epoch, dataset index) of this rank's images, forever."""
        n, epoch, offset = len(self.sizes), 0, self.rank
        while True:
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            while offset < n:
                yield epoch, offset, int(perm[offset])
                offset += self.world_size
            offset -= n
            epoch += 1

    def _grouped(self) -> Iterator[List[Tuple[int, int, int]]]:
        buckets: Dict[int, list] = {0: [], 1: []}
        for item in self._index_stream():
            h, w = self.sizes[item[2]]
            key = int(w > h) if self.group_by_aspect else 0
            bucket = buckets[key]
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()

    def _augment(self, epoch: int, place: int) -> Tuple[int, bool]:
        rng = np.random.default_rng([self.seed, epoch, place])
        short = T.sample_short_edge(rng, self.min_sizes, self.sampling)
        flip = bool(rng.random() < 0.5) if self.flip else False
        return short, flip

    def batches(self, start: int = 0) -> Iterator[Tuple[int, List[Tuple[int, int, bool]]]]:
        """(position, [(index, short, flip)] * batch_size) from batch ``start`` on."""
        for position, batch in enumerate(self._grouped()):
            if position < start:
                continue
            yield position, [(idx, *self._augment(e, p)) for e, p, idx in batch]


class ImageLoader:
    """Reads, decodes and transforms one image and its annotations (NumPy side, thread-safe).

    ``__call__`` returns (image uint8 (new_h, new_w, 3) in the model's channel order, resized with
    Pillow and flipped (`transforms.TransformParams.apply_image`), new_h, new_w, boxes (G, 4),
    classes (G,), masks (G, new_h, new_w), crowd_boxes (C, 4), ok). On failure ok is False and the
    arrays are 1-pixel placeholders.
    """

    def __init__(self, dataset_dicts: Sequence[dict], max_size: int, with_masks: bool,
                 max_instances: int, rgb: bool = False):
        self.dicts, self.max_size, self.rgb = dataset_dicts, max_size, rgb
        self.with_masks, self.max_instances = with_masks, max_instances
        self._lock = threading.Lock()
        self.num_failed = 0
        self._failing = {}      # index -> reason, of the images failed since the last success
        self._warned = set()    # indices already reported in the log

    def _placeholder(self):
        return (np.zeros((1, 1, 3), np.uint8), np.int32(1), np.int32(1), np.zeros((0, 4), np.float32),
                np.zeros((0,), np.int32), np.zeros((0, 1, 1), np.uint8), np.zeros((0, 4), np.float32),
                False)

    def _fail(self, index: int, reason: str):
        """Placeholder for a failed image; raises once every image failed since a success.

        reason: a message naming the file.
        """
        with self._lock:
            self.num_failed += 1
            self._failing[index] = reason
            first = index not in self._warned
            self._warned.add(index)
            hopeless = len(self._failing) == len(self.dicts)
        if first:
            logger.warning("Skipping an image: %s (%d skips so far)", reason, self.num_failed)
        if hopeless:
            examples = "; ".join(list(self._failing.values())[:3])
            raise NoUsableImageError(
                f"None of the {len(self.dicts)} training images can be used (each failed since "
                f"the last one that loaded), e.g. {examples}. Training stops.")
        return self._placeholder()

    def __call__(self, index, short, flip):
        index = int(index)
        record = self.dicts[index]
        try:
            image = read_image(record["file_name"])
        except ImageReadError as e:
            return self._fail(index, str(e))
        if self.rgb:  # INPUT.FORMAT "RGB"; detectron2's default and ours is BGR
            image = image[:, :, ::-1]
        h, w = image.shape[:2]
        if (h, w) != (record.get("height", h), record.get("width", w)):
            return self._fail(index, f"{record['file_name']} decodes to {h}x{w}, its record "
                                     f"says {record['height']}x{record['width']} (changed since "
                                     f"the data set check?)")
        new_h, new_w = resize_shortest_edge_shape(h, w, int(short), self.max_size)
        params = T.TransformParams(h, w, new_h, new_w, bool(flip))
        targets = T.transform_annotations(record.get("annotations", []), params, self.with_masks)
        g = len(targets["classes"])
        if g == 0:
            return self._fail(index, f"{record['file_name']}: no instance left after the "
                                     f"transform")
        with self._lock:
            self._failing.clear()
        if g > self.max_instances:
            # detectron2 has no cap; ours bounds the padded batch. Keep the first ones.
            logger.debug("Image %s: keeping %d of %d instances", record["file_name"],
                         self.max_instances, g)
            for key in ("boxes", "classes", "masks"):
                if len(targets[key]):
                    targets[key] = targets[key][:self.max_instances]
        masks = targets["masks"] if self.with_masks else np.zeros((0, 1, 1), np.uint8)
        return (params.apply_image(image), np.int32(new_h), np.int32(new_w), targets["boxes"],
                targets["classes"], masks, targets["crowd_boxes"], True)


class NoUsableImageError(RuntimeError):
    """Every image of the training set failed to load since the last one that did."""


def _round_up(x, k):
    return (x + k - 1) // k * k


def build_train_dataset(cfg, dataset_dicts: Sequence[dict], rank: int, world_size: int,
                        seed: int, start_position: int = 0) -> tf.data.Dataset:
    """Infinite dataset of this rank's training batches (NOTES.md format + ``data_position``).

    ``dataset_dicts`` are detectron2-style records; images without non-crowd annotations are
    removed first when DATALOADER.FILTER_EMPTY_ANNOTATIONS. ``start_position`` is the number of
    this rank's batches already consumed (from a checkpoint).
    """
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
    batch_size = per_process_batch_size(cfg.SOLVER.IMS_PER_BATCH, world_size)
    with_masks = bool(cfg.MODEL.MASK_ON)
    sizes = np.array([(d["height"], d["width"]) for d in dataset_dicts], np.int64).reshape(-1, 2)
    sampler = TrainSampler(
        sizes, batch_size, rank, world_size, seed, cfg.INPUT.MIN_SIZE_TRAIN,
        cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING, flip=_flip_enabled(cfg),
        group_by_aspect=cfg.DATALOADER.ASPECT_RATIO_GROUPING)
    if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
        raise ValueError(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}: only 'BGR' or 'RGB'")
    loader = ImageLoader(dataset_dicts, cfg.INPUT.MAX_SIZE_TRAIN, with_masks,
                         cfg.TRAINER.MAX_GT_INSTANCES, rgb=cfg.INPUT.FORMAT == "RGB")

    def records():
        for position, batch in sampler.batches(start_position):
            for index, short, flip in batch:
                yield np.int64(position), np.int64(index), np.int32(short), flip

    ds = tf.data.Dataset.from_generator(records, output_signature=(
        tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.bool)))

    def load(position, index, short, flip):
        out = tf.numpy_function(loader, [index, short, flip], [
            tf.uint8, tf.int32, tf.int32, tf.float32, tf.int32, tf.uint8, tf.float32, tf.bool],
            stateful=False)
        image, new_h, new_w, boxes, classes, masks, crowd, ok = out
        new_h, new_w = tf.ensure_shape(new_h, []), tf.ensure_shape(new_w, [])
        example = {
            "images": tf.ensure_shape(image, [None, None, 3]),    # (h, w, 3) uint8 BGR
            "image_sizes": tf.stack([new_h, new_w]),              # (2,)
            "gt_boxes": tf.ensure_shape(boxes, [None, 4]),        # (G, 4) xyxy
            "gt_classes": tf.ensure_shape(classes, [None]),       # (G,)
            "crowd_boxes": tf.ensure_shape(crowd, [None, 4]),     # (C, 4) xyxy
            "ok": tf.ensure_shape(ok, []),
            "data_position": position + 1,
        }
        if with_masks:
            example["gt_masks"] = tf.ensure_shape(masks, [None, None, None])  # (G, h, w)
        return example

    num_workers = max(int(cfg.DATALOADER.NUM_WORKERS), 1)
    ds = ds.map(load, num_parallel_calls=num_workers, deterministic=True)
    padding = {"images": tf.constant(0, tf.uint8), "image_sizes": 0,
               "gt_boxes": 0.0, "gt_classes": -1, "crowd_boxes": 0.0, "ok": False,
               "data_position": tf.constant(0, tf.int64)}
    if with_masks:
        padding["gt_masks"] = tf.constant(0, tf.uint8)
    # The sampler emits batch_size consecutive records per batch and nothing is dropped before
    # this point, so these batches are exactly the sampler's batches.
    ds = ds.padded_batch(batch_size, padding_values=padding, drop_remainder=True)
    divisibility = int(cfg.INPUT.SIZE_DIVISIBILITY)
    ds = ds.map(lambda b: _finish_batch(b, divisibility), num_parallel_calls=2, deterministic=True)
    ds = ds.filter(lambda b: tf.shape(b["images"])[0] > 0)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


def _flip_enabled(cfg) -> bool:
    if cfg.INPUT.RANDOM_FLIP == "horizontal":
        return True
    if cfg.INPUT.RANDOM_FLIP == "none":
        return False
    raise ValueError(f"INPUT.RANDOM_FLIP={cfg.INPUT.RANDOM_FLIP!r}: only 'horizontal' or 'none'")


def _finish_batch(batch, divisibility: int):
    """Drop failed images, pad H, W to a multiple of ``divisibility``, images to float32."""
    ok = batch.pop("ok")
    position = tf.reduce_max(batch.pop("data_position"))
    batch = {k: tf.boolean_mask(v, ok) for k, v in batch.items()}
    # after dropping, crop the (G, C, H, W) padding to what the kept images need
    sizes = batch["image_sizes"]                                        # (B, 2)
    hp = _round_up(tf.maximum(tf.reduce_max(sizes[:, 0]), 1), divisibility)
    wp = _round_up(tf.maximum(tf.reduce_max(sizes[:, 1]), 1), divisibility)
    images = _pad_or_crop_hw(batch["images"], hp, wp, axis=1)
    batch["images"] = tf.cast(images, tf.float32)                     # (B, Hp, Wp, 3)
    g = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(batch["gt_classes"] >= 0, tf.int32), 1)), 1)
    batch["gt_classes"] = batch["gt_classes"][:, :g]                   # (B, G)
    batch["gt_boxes"] = batch["gt_boxes"][:, :g]                       # (B, G, 4)
    if "gt_masks" in batch:
        batch["gt_masks"] = _pad_or_crop_hw(batch["gt_masks"][:, :g], hp, wp, axis=2)  # (B,G,Hp,Wp)
    batch["data_position"] = position
    return batch


def _pad_or_crop_hw(x, hp, wp, axis: int):
    """Crop then zero-pad dims (axis, axis + 1) of x to (hp, wp)."""
    x = x[(slice(None),) * axis + (slice(0, hp), slice(0, wp))]
    shape = tf.shape(x)
    pads = [[0, 0]] * axis + [[0, hp - shape[axis]], [0, wp - shape[axis + 1]]]
    pads += [[0, 0]] * (len(x.shape) - axis - 2)
    return tf.pad(x, pads)
