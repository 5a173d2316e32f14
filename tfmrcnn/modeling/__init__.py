"""The Mask R-CNN network: `meta_arch.GeneralizedRCNN` ties backbone, FPN, RPN and ROI heads.

Submodules are imported explicitly (``from tfmrcnn.modeling.meta_arch import GeneralizedRCNN``);
this package imports nothing itself, so importing one building block never pulls in the rest.
"""
