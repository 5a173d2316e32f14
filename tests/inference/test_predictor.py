"""Predictor: one compiled inference function per model, shared by every Predictor of it."""
import gc

import tensorflow as tf

from tfmrcnn.config import get_cfg
from tfmrcnn.inference import predictor as predictor_module
from tfmrcnn.inference.predictor import Predictor, inference_callable


class _CountingModel(tf.Module):
    """Stands in for GeneralizedRCNN: counts the compiled functions made of it."""

    def __init__(self):
        super().__init__()
        self.made = 0

    def make_inference_fn(self):
        self.made += 1
        return tf.function(lambda images, image_sizes: {"n": tf.shape(images)[0]})


def test_predictors_of_one_model_share_its_compiled_function():
    """Each evaluation during training, the last one and the pictures after it build a
    Predictor: they must not each trace the model again (~20 s for the demo's)."""
    cfg = get_cfg()
    model, other = _CountingModel(), _CountingModel()
    first, second = Predictor(cfg, model), Predictor(cfg, model)
    assert first._fn is second._fn is inference_callable(model)
    assert model.made == 1
    assert inference_callable(other) is not first._fn and other.made == 1
    assert Predictor(cfg, model, compile=False)._fn is not first._fn  # eager: no compiled fn
    entries = len(predictor_module._COMPILED)
    del model, first, second
    gc.collect()
    # the dropped model's entry went with it, the other model's stays
    assert len(predictor_module._COMPILED) == entries - 1 and other in predictor_module._COMPILED
