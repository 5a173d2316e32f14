"""Train the toy model in its own process(es): ``toy_train_job.py OUT MAX_ITER [KILL_AT]``.

With KILL_AT the process sends itself SIGKILL right after iteration KILL_AT finished (no
clean-up, like a machine failure). With TOY_DIE_AT=k (under a launcher) only the last rank
exits abruptly after iteration k, the others carry on into the next allreduce.
Prints "DONE start=<iteration it started at>" at the end.
"""
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))
from engine_toy import ToyModel, toy_cfg, toy_data_fn  # noqa: E402
from tfmrcnn.distributed import init_horovod  # noqa: E402
from tfmrcnn.engine.logger import setup_logger  # noqa: E402
from tfmrcnn.engine.trainer import Trainer  # noqa: E402

out, max_iter = sys.argv[1], int(sys.argv[2])
kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
hvd = init_horovod()
cfg = toy_cfg(out, max_iter=max_iter, STEPS=(12,))
setup_logger(out, hvd.rank())
trainer = Trainer(cfg, ToyModel(seed=int(os.environ.get("TOY_SEED", "0"))), hvd,
                  toy_data_fn(cfg.SOLVER.IMS_PER_BATCH // hvd.size(), hvd.rank(), hvd.size()))
trainer.resume_or_load(resume=True)
if kill_at is not None:
    trainer.after_step_hooks.append(
        lambda tr, done: os.kill(os.getpid(), signal.SIGKILL) if done == kill_at else None)
die_at = int(os.environ.get("TOY_DIE_AT", "-1"))
if die_at >= 0 and hvd.rank() == hvd.size() - 1:
    trainer.after_step_hooks.append(
        lambda tr, done: os._exit(1) if done == die_at else None)
trainer.train()
print(f"DONE start={trainer.start_iter}", flush=True)
