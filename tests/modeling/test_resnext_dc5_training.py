"""ResNeXt and DC5 train with 2 Horovod processes on CPU (issue 21 item 7): tfmrcnn-train
under `horovodrun -np 2 --gloo` on the shapes set (tests/helpers/shapes_horovod_train.py: the
demo config with small images, no evaluation) for one tiny model that has both: grouped 3x3s in
every stage (ResNeXt) and a dilated res5 with RPN and heads on it (DC5). Losses finite and
falling, a checkpoint, a resume that continues the iteration count. One model for both keeps
the slow suite short: each launch pays ~25 s of tracing per process."""
import numpy as np
import pytest

# the demo's GN from scratch on bottleneck ResNets, widths divisible by GN's 32 groups
BOTTLENECK = ("MODEL.RESNETS.DEPTH=50", "MODEL.RESNETS.STEM_OUT_CHANNELS=32",
              "MODEL.RESNETS.RES2_OUT_CHANNELS=64")
# mask_rcnn_X_101_32x8d_FPN_3x's kind: 4 groups of 8 in the 3x3s, stride in the (grouped) 3x3
RESNEXT = ("MODEL.RESNETS.NUM_GROUPS=4", "MODEL.RESNETS.WIDTH_PER_GROUP=8",
           "MODEL.RESNETS.STRIDE_IN_1X1=False")
# configs/Base-RCNN-DilatedC5.yaml's wiring: RPN (15 anchors) and both heads on the dilated,
# stride-16 res5 (512 channels), images not rounded to 32
DC5 = ("MODEL.BACKBONE.NAME=build_resnet_backbone", "MODEL.RESNETS.OUT_FEATURES=['res5']",
       "MODEL.RESNETS.RES5_DILATION=2", "MODEL.FPN.IN_FEATURES=[]",
       "MODEL.RPN.IN_FEATURES=['res5']", "MODEL.ROI_HEADS.IN_FEATURES=['res5']",
       "MODEL.ANCHOR_GENERATOR.SIZES=[[16, 32, 64, 128, 256]]", "INPUT.SIZE_DIVISIBILITY=1")
TINY_X_DC5 = (*BOTTLENECK, *RESNEXT, *DC5, "SOLVER.BASE_LR=0.005")
GROUPS = 4


@pytest.mark.slow
def test_two_processes_train_and_resume_a_resnext_dc5(tmp_path):
    from shapes_horovod_train import (STANDARD_LOSSES, assert_resumed, assert_trained,
                                      horovod_train, logged)

    log = logged(horovod_train(tmp_path, 6, *TINY_X_DC5))
    assert_trained(tmp_path, log, 6, STANDARD_LOSSES)
    # the logged values are medians since iteration 0: a falling loss shows at the end
    assert log[5]["total_loss"] < log[0]["total_loss"]
    with np.load(tmp_path / "model_final.npz") as weights:
        # checkpoints keep tfmrcnn's HWIO layout: (3, 3, in / groups, out) with in == out,
        # in res3 (strided grouped 3x3) and in the dilated res5
        for key in ("backbone.res3.0.conv2.weight", "backbone.res5.0.conv2.weight",
                    "backbone.res5.2.conv2.weight"):
            assert weights[key].shape[2] * GROUPS == weights[key].shape[3], key
    assert_resumed(horovod_train(tmp_path, 8, *TINY_X_DC5), 6, 8)
