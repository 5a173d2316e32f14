"""Python wrappers of tfmrcnn's custom ops (compiled from custom_ops/, loaded lazily)."""
from tfmrcnn.ops.library import load_library
from tfmrcnn.ops.roi_align import roi_align, roi_align_grad
from tfmrcnn.ops.winograd import conv3x3 as winograd_conv3x3

__all__ = ["load_library", "roi_align", "roi_align_grad", "winograd_conv3x3"]
