"""The PyTorch side of benchmark section `reference`: detectron2 and torchvision timed on the
same problems as our sections, in a PyTorch environment.

    PYTHONPATH=. .venv-reference/bin/python -m benchmarks.torch_reference \
        --group infer|train|roi_align

(`bash scripts/setup_reference.sh` makes that environment: PyTorch, torchvision and detectron2,
without TensorFlow or tfmrcnn.) So this module imports, of this repository, only NumPy-only
modules: benchmarks/__init__.py (a docstring) and benchmarks/common.py; keep it so
(benchmarks/tests/test_sections.py checks it). Each group prints rows ``BENCH_ROW {json}``, like
benchmarks/model.py's workers:

  infer      detectron2 mask_rcnn_R_50_FPN_1x (80 classes; --arch: another model-zoo config
             of ARCHS, e.g. x101: mask_rcnn_X_101_32x8d_FPN_3x), one 800x1333 image: stages
             backbone+fpn (normalise + pad + ResNet + FPN) / rpn / roi_heads / paste
             (detector_postprocess: rescale + paste 100 masks) and end to end (model(inputs));
             and (R50) torchvision's maskrcnn_resnet50_fpn end to end on the same image.
  train      detectron2's training step (forward, backward, SGD) at batch 1, 800x1333,
             FREEZE_AT 2, 512 ROIs per image, 10 GT instances with masks.
  roi_align  torchvision.ops.roi_align (what detectron2's ROIAlign calls), aligned=True,
             sampling_ratio 0, 7x7 and 14x14: forward and forward+backward.

Same conditions as ours (benchmarks/model.py): 2 intra-op threads and 1 inter-op thread,
random weights with every FrozenBN's statistics set to those of its input (so that an untrained
model gives realistic proposals), ROI_HEADS.SCORE_THRESH_TEST 0 (100 detections), the images of
benchmarks/common.py, median of `--repeats` after `--warmup` calls.
"""
from __future__ import annotations

import argparse

from benchmarks.common import (FULL_HW, QUICK_HW, ROI_ALIGN_PROBLEM, ROI_ALIGN_QUICK,
                               add_worker_arguments, peak_rss_mb, print_row, roi_align_problem,
                               roi_align_upstream, synthetic_batch, time_calls)


def _versions():
    import torch
    import torchvision
    out = "torch %s, torchvision %s" % (torch.__version__, torchvision.__version__)
    try:
        import detectron2
        out += ", detectron2 %s" % detectron2.__version__
    except ImportError:
        pass
    return out


# ---------------------------------------------------------------------- detectron2
# --arch: (model-zoo config, case label); the keys and labels are those of benchmarks/model.py's
# ARCHS, whose config files have the zoo yaml's file name (benchmarks/tests/test_architectures.py)
ARCHS = {"r50": ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "R50-FPN"),
         "r101": ("COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml", "R101-FPN"),
         "x101": ("COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml", "X101-FPN"),
         "cascade": ("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml", "Cascade-R50-FPN"),
         "c4": ("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml", "R50-C4"),
         "dc5": ("COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x.yaml", "R50-DC5"),
         "faster": ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", "Faster-R50-FPN")}


def d2_model(arch: str = "r50"):
    import torch
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(ARCHS[arch][0]))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: 100 detections, as ours
    torch.manual_seed(0)
    return build_model(cfg), cfg


def calibrate_frozen_bn(model, frozen_bn_class, run_once):
    """Every `frozen_bn_class` module (detectron2's or torchvision's FrozenBatchNorm2d) gets the
    channel mean and variance of its input in one forward pass `run_once()` (our benchmark's
    calibrate_frozen_bn, the same rule)."""
    import torch

    def set_statistics(module, inputs):
        x = inputs[0].detach()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    hooks = [m.register_forward_pre_hook(set_statistics) for m in model.modules()
             if isinstance(m, frozen_bn_class)]
    try:
        with torch.no_grad():
            run_once()
    finally:
        for h in hooks:
            h.remove()


def _bgr_image(hw):
    """The benchmark image (H, W, 3) BGR 0..255 float32, without the padding."""
    h, w = hw
    return synthetic_batch(1, hw, 0, 80, masks=False)["images"][0, :h, :w]


def group_infer(opts):
    import torch
    from detectron2.layers import FrozenBatchNorm2d
    hw = QUICK_HW if opts.quick else FULL_HW
    model, _ = d2_model(opts.arch)
    model.eval()
    bgr = _bgr_image(hw)
    inputs = [{"image": torch.from_numpy(bgr.copy()).permute(2, 0, 1),  # (3, H, W)
               "height": hw[0], "width": hw[1]}]
    calibrate_frozen_bn(model, FrozenBatchNorm2d,
                        lambda: model.backbone(model.preprocess_image(inputs).tensor))
    case = "detectron2 %s %dx%d fp32" % (ARCHS[opts.arch][1], *hw)
    state = {}

    def backbone():
        state["images"] = model.preprocess_image(inputs)
        state["features"] = model.backbone(state["images"].tensor)

    def rpn():
        state["proposals"], _ = model.proposal_generator(state["images"], state["features"])

    def heads():
        state["results"], _ = model.roi_heads(state["images"], state["features"],
                                              state["proposals"])

    def paste():
        state["out"] = model._postprocess(state["results"], inputs, state["images"].image_sizes)

    with torch.no_grad():
        for name, fn in (("backbone+fpn", backbone), ("rpn", rpn), ("roi_heads", heads),
                         ("paste", paste)):
            wall, cpu = time_calls(fn, opts.repeats, opts.warmup)
            print_row(group="infer", case=case, stage=name, seconds=wall, cpu_s=cpu,
                 note="%d dets" % len(state["out"][0]["instances"]) if name == "paste" else "")
        wall, cpu = time_calls(lambda: model(inputs), opts.repeats, opts.warmup)
        print_row(group="infer", case=case, stage="end-to-end", seconds=wall, cpu_s=cpu,
             note=_versions())
    print_row(group="infer", case=case, stage="peak RSS MB", seconds=None, value=peak_rss_mb())
    del model, state
    if opts.arch == "r50":
        _torchvision_infer(opts, hw, bgr)


def _torchvision_infer(opts, hw, bgr):
    """torchvision's Mask R-CNN on the same image: another PyTorch port, end to end."""
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from torchvision.ops.misc import FrozenBatchNorm2d
    torch.manual_seed(0)
    # FrozenBN as in detectron2 (torchvision builds plain BN when no weights are given); its
    # transform resizes to 800 / 1333 like detectron2's test resize, a no-op for this image
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81,
                                  norm_layer=FrozenBatchNorm2d, box_score_thresh=0.0,
                                  box_detections_per_img=100).eval()
    image = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1) / 255.0  # RGB 0..1

    calibrate_frozen_bn(model, FrozenBatchNorm2d, lambda: model([image]))
    with torch.no_grad():
        out = {}

        def run():
            out["d"] = model([image])

        wall, cpu = time_calls(run, opts.repeats, opts.warmup)
    print_row(group="infer", case="torchvision maskrcnn_resnet50_fpn %dx%d fp32" % hw,
         stage="end-to-end", seconds=wall, cpu_s=cpu,
         note="%d dets" % len(out["d"][0]["boxes"]))


def group_train(opts):
    import torch
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage
    hw = QUICK_HW if opts.quick else FULL_HW
    model, cfg = d2_model()
    h, w = hw
    batch = synthetic_batch(1, hw, 10, 80, seed=1)
    image = torch.from_numpy(batch["images"][0, :h, :w].copy()).permute(2, 0, 1)
    instances = Instances((h, w))
    instances.gt_boxes = Boxes(torch.from_numpy(batch["gt_boxes"][0]))
    instances.gt_classes = torch.from_numpy(batch["gt_classes"][0]).long()
    instances.gt_masks = BitMasks(torch.from_numpy(batch["gt_masks"][0, :, :h, :w]).bool())
    inputs = [{"image": image, "instances": instances, "height": h, "width": w}]
    model.eval()
    calibrate_frozen_bn(model, FrozenBatchNorm2d,
                        lambda: model.backbone(model.preprocess_image(inputs).tensor))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def step():
        losses = model(inputs)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()

    with EventStorage():  # detectron2's training code logs into it
        wall, cpu = time_calls(step, opts.repeats, opts.warmup)
    print_row(group="train", case="detectron2 R50-FPN %dx%d fp32 batch 1" % hw, stage="train step",
         seconds=wall, cpu_s=cpu, note="ROI_HEADS.BATCH_SIZE_PER_IMAGE %d, FREEZE_AT %d"
         % (cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE, cfg.MODEL.BACKBONE.FREEZE_AT))
    print_row(group="train", case="detectron2 R50-FPN %dx%d fp32" % hw, stage="peak RSS MB",
         seconds=None, value=peak_rss_mb())


def group_roi_align(opts):
    import torch
    from torchvision.ops import roi_align
    problem = ROI_ALIGN_QUICK if opts.quick else ROI_ALIGN_PROBLEM
    features, boxes, scale = roi_align_problem(**problem)
    x = torch.from_numpy(features).permute(0, 3, 1, 2).contiguous()  # NCHW, as torch expects
    rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], dim=1)  # (R, 5)
    for output_size in [(7, 7), (14, 14)]:
        upstream = torch.from_numpy(roi_align_upstream(len(boxes), output_size,
                                                       features.shape[-1])).permute(0, 3, 1, 2)

        def fwd():
            with torch.no_grad():
                roi_align(x, rois, output_size, scale, 0, True)

        def fwd_bwd():
            xg = x.detach().requires_grad_(True)
            (roi_align(xg, rois, output_size, scale, 0, True) * upstream).sum().backward()

        fwd_s, _ = time_calls(fwd, opts.repeats, opts.warmup)
        fwd_bwd_s, _ = time_calls(fwd_bwd, opts.repeats, opts.warmup)
        print_row(group="roi_align", case="%dx%d" % output_size, impl="torchvision roi_align",
             **{"fwd s": fwd_s, "fwd+bwd s": fwd_bwd_s})


GROUPS = {"infer": group_infer, "train": group_train, "roi_align": group_roi_align}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", choices=sorted(GROUPS), required=True)
    p.add_argument("--arch", default="r50", choices=sorted(ARCHS), help="infer group's model")
    opts = add_worker_arguments(p).parse_args(argv)
    import torch
    torch.set_num_threads(opts.threads)
    torch.set_num_interop_threads(opts.inter_threads)
    GROUPS[opts.group](opts)


if __name__ == "__main__":
    main()
