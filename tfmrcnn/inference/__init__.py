"""The test-time path, written once: pre-processing (resize + pad), the predictor, and
post-processing (rescale, paste, threshold), used by eval, predict and export alike."""
