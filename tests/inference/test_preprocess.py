"""Test-time preprocessing: batching with zero padding, channel order, and the graph form of one
image equal to the Python form."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.inference.preprocess import (InputSpec, pad_batch, preprocess_image_tf,
                                          preprocess_images)


def test_pad_batch_and_preprocess():
    a = np.full((30, 50, 3), 7, np.uint8)
    b = np.full((40, 20, 3), 9, np.uint8)
    batch, sizes = pad_batch([a, b], 32)
    assert batch.shape == (2, 64, 64, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(sizes, [[30, 50], [40, 20]])
    assert (batch[0, :30, :50] == 7).all()
    assert (batch[0, 30:] == 0).all() and (batch[0, :, 50:] == 0).all()
    images, sizes = preprocess_images([a, b], InputSpec(60, 100, 32, rgb=False))
    np.testing.assert_array_equal(sizes, [[60, 100], [100, 50]])   # long side capped at 100
    assert images.shape == (2, 128, 128, 3)
    assert (images[0, :60, :100] == 7).all() and (images[1, :100, :50] == 9).all()


def test_rgb_models_get_their_channels_swapped():
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0] = 200                                                # blue, in BGR
    images, _ = preprocess_images([image], InputSpec(0, 1333, 1, rgb=True))   # no resize
    assert (images[0, ..., 2] == 200).all() and (images[0, ..., 0] == 0).all()


@pytest.mark.parametrize("shape,rgb", [((70, 100), False), ((90, 60), True), ((64, 80), False)])
def test_graph_form_equals_python_form(shape, rgb):
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    spec = InputSpec(64, 96, 32, rgb)
    images, sizes = tf.function(lambda im: preprocess_image_tf(im, spec))(tf.constant(image))
    ref_images, ref_sizes = preprocess_images([image], spec)
    np.testing.assert_array_equal(sizes.numpy(), ref_sizes)
    np.testing.assert_array_equal(images.numpy(), ref_images)
