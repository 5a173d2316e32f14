"""Bit-exact resume of the real model: 10 + 10 iterations with a kill equal 20 straight."""
import os
import shutil

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _trainer(hvd, records, out):
    import tensorflow as tf

    from tfmrcnn.config import load_config
    from tfmrcnn.data.pipeline import build_train_dataset
    from tfmrcnn.engine.trainer import Trainer
    from tfmrcnn.modeling.meta_arch import GeneralizedRCNN

    cfg = load_config(os.path.join(ROOT, "configs", "shapes_demo_cpu.yaml"), [
        f"OUTPUT_DIR={out}", "SOLVER.MAX_ITER=20", "SOLVER.CHECKPOINT_PERIOD=10",
        "SOLVER.IMS_PER_BATCH=2", "SOLVER.WARMUP_ITERS=5", "SOLVER.STEPS=(15,)",
        "INPUT.MIN_SIZE_TRAIN=(64, 80)", "INPUT.MAX_SIZE_TRAIN=112", "DATASETS.TEST=()",
        "TRAINER.LOG_PERIOD=100", "DATALOADER.NUM_WORKERS=1"])
    tf.random.set_seed(cfg.SEED)
    model = GeneralizedRCNN(cfg)

    def data_fn(position, seed):
        return build_train_dataset(cfg, records, 0, 1, seed, start_position=position)

    trainer = Trainer(cfg, model, hvd, data_fn)
    trainer.resume_or_load(resume=True)
    return trainer, model


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    """Issue 20: resuming restarted the random sampling of anchors and proposals, so a resumed
    run was not bit-identical to an uninterrupted one (100 of 102 variables differed)."""
    from tfmrcnn.data import shapes
    from tfmrcnn.data.coco import load_coco_json
    from tfmrcnn.distributed import init_horovod

    hvd = init_horovod()
    root = shapes.ensure_shapes_dataset(str(tmp_path / "shapes"), 12, 1, seed=5,
                                        size_range=(64, 96))
    records = load_coco_json(*shapes.shapes_paths(root, "train"))
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"

    def kill_after_11(trainer, done):
        # the folder as a kill after iteration 11 leaves it: the checkpoint of iteration 10
        # (written once iteration 11 showed it healthy) and nothing later
        if done == 11:
            shutil.copytree(straight_dir, killed_dir)

    trainer, straight = _trainer(hvd, records, straight_dir)
    trainer.after_step_hooks.append(kill_after_11)
    trainer.train()
    assert sorted(p.name for p in killed_dir.glob("model_*")) == [
        "model_0000009.npz", "model_0000009.train_state.npz"]

    trainer, resumed = _trainer(hvd, records, killed_dir)
    assert trainer.start_iter == 10
    trainer.train()
    a, b = straight.named_variables(), resumed.named_variables()
    assert set(a) == set(b)
    differ = [k for k in a if not np.array_equal(a[k].numpy(), b[k].numpy())]
    assert not differ, f"{len(differ)} of {len(a)} variables differ, e.g. {differ[:3]}"
