"""Train on a few shapes images registered as `shapes_overfit` (argv[1] = subset json,
argv[2] = image root); the rest of argv goes to tfmrcnn-train."""
import sys

from tfmrcnn.cli import train
from tfmrcnn.data import catalog

catalog.register_coco_instances("shapes_overfit", {}, sys.argv[1], sys.argv[2])
sys.exit(train.main(sys.argv[3:]))
