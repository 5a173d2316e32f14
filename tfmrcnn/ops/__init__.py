"""Python wrappers of tfmrcnn's custom ops (compiled from custom_ops/, loaded lazily)."""
from tfmrcnn.ops.roi_align import load_library, roi_align, roi_align_grad

__all__ = ["load_library", "roi_align", "roi_align_grad"]
