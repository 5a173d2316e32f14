"""Dataset registry, as detectron2's: a name maps to a function returning dataset dicts, and to
a Metadata object (class names, id maps, json path, evaluator type).

Any COCO-format set by path: the name ``coco:JSON:IMAGES`` (e.g.
``coco:/data/train.json:/data/images``) is registered on first use, wherever a dataset name is
accepted (DATASETS.TRAIN / TEST, ``tfmrcnn-eval --dataset``); see `parse_path_name`. Relative
paths are taken from the current folder, made absolute and logged.

Built-in names (paths resolved when used, so environment variables may be set late):

- ``coco_2017_train`` / ``coco_2017_val``: ``$TFMRCNN_DATASETS`` (default ``datasets``, as
  detectron2's ``$DETECTRON2_DATASETS``; a relative value is taken from the current folder and
  logged as an absolute path) with detectron2's layout ``coco/{train2017,val2017}/`` and
  ``coco/annotations/instances_{train,val}2017.json``. Their class metadata is COCO's 80-class
  table until the json is loaded, then the json's own categories (a custom set there keeps
  its ids; evaluation always reads the json's categories).
- ``shapes_train`` / ``shapes_val``: the synthetic set of ``tfmrcnn.data.shapes``, generated on
  first use (about 150 MB, announced with a warning naming the folder) under
  ``$TFMRCNN_SHAPES_DIR``, else ``$TFMRCNN_DATASETS/shapes`` when that variable is set, else
  ``$TFMRCNN_CACHE/datasets/shapes`` (default ``~/.cache/tfmrcnn/datasets/shapes``: generated
  data goes to the per-user cache, never into whatever folder the command runs in), with
  ``SHAPES_DEFAULTS``. That folder must be new, empty or the generator's own; any other folder
  raises ``ForeignDirectoryError`` naming it, and nothing in it is touched.
"""

import difflib
import logging
import os

from tfmrcnn.data.coco import category_maps, load_coco_json
from tfmrcnn.data import shapes

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata", "register_coco_instances",
           "datasets_root", "shapes_root", "SHAPES_DEFAULTS", "COCO_CATEGORIES",
           "PATH_NAME_PREFIX", "parse_path_name", "absolute_dataset_names", "dataset_tag"]

logger = logging.getLogger(__name__)

SHAPES_DEFAULTS = {"num_train": 1000, "num_val": 100, "seed": 0}
PATH_NAME_PREFIX = "coco:"
_PATH_NAME_HINT = (f"A COCO-format set is used by path with the name {PATH_NAME_PREFIX}"
                   f"JSON:IMAGES, e.g. {PATH_NAME_PREFIX}/data/train.json:/data/images")
_logged = set()


def _log_once(message, *args):
    """Log a path resolution once per process (lazy metadata resolves paths on every read)."""
    text = message % args
    if text not in _logged:
        _logged.add(text)
        logger.info("%s", text)


def _did_you_mean(name, names):
    match = difflib.get_close_matches(name, list(names), n=1)
    return f" Did you mean '{match[0]}'?" if match else ""


class _DatasetCatalog:
    """name -> function returning ``list[dict]`` (the format of tfmrcnn.data.coco)."""

    def __init__(self):
        self._fns = {}

    def register(self, name, fn):
        if not callable(fn):
            raise TypeError(f"DatasetCatalog.register('{name}', fn): fn must be callable")
        if name in self._fns:
            raise KeyError(f"Dataset '{name}' is already registered")
        self._fns[name] = fn

    def get(self, name):
        """Call the registered function; returns its list of dataset dicts.

        A ``coco:JSON:IMAGES`` name is registered here on first use (`parse_path_name`).
        """
        _register_path_name(name)
        if name not in self._fns:
            raise KeyError(f"Dataset '{name}' is not registered.{_did_you_mean(name, self._fns)} "
                           f"Registered: {', '.join(sorted(self._fns))}. {_PATH_NAME_HINT}")
        dicts = self._fns[name]()
        if not isinstance(dicts, list):
            raise TypeError(f"Dataset '{name}' must return a list of dicts, got {type(dicts)}")
        return dicts

    def list(self):
        return list(self._fns)

    def remove(self, name):
        self._fns.pop(name)

    def __contains__(self, name):
        return name in self._fns or _is_well_formed_path_name(name)


class Metadata:
    """Attributes of one dataset; some may be lazy (a function called on every read)."""

    def __init__(self, name):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_lazy", {})

    def __getattr__(self, key):
        if key.startswith("_"):
            raise AttributeError(key)
        if key in self._values:
            return self._values[key]
        if key in self._lazy:
            return self._lazy[key]()
        known = sorted(set(self._values) | set(self._lazy))
        raise AttributeError(f"Metadata of dataset '{self.name}' has no '{key}'."
                             f"{_did_you_mean(key, known)} Available: {', '.join(known)}")

    def __setattr__(self, key, value):
        self.set(**{key: value})

    def set(self, **kwargs):
        """Set (or overwrite) attributes; returns self."""
        for key, value in kwargs.items():
            self._lazy.pop(key, None)
            self._values[key] = value
        return self

    def set_lazy(self, **fns):
        """Attributes computed by calling fn() on each read (e.g. paths from the environment)."""
        for key, fn in fns.items():
            self._values.pop(key, None)
            self._lazy[key] = fn
        return self

    def get(self, key, default=None):
        try:
            return getattr(self, key)
        except AttributeError:
            return default

    def as_dict(self):
        return {**{k: fn() for k, fn in self._lazy.items()}, **self._values}

    def __repr__(self):
        return f"Metadata(name={self.name!r}, keys={sorted(set(self._values) | set(self._lazy))})"


class _MetadataCatalog:
    """name -> Metadata, created empty on first ``get``."""

    def __init__(self):
        self._meta = {}

    def get(self, name):
        """The entry of ``name``; a ``coco:JSON:IMAGES`` name is registered first (its paths)."""
        _register_path_name(name)
        if name not in self._meta:
            self._meta[name] = Metadata(name)
        return self._meta[name]

    def list(self):
        return list(self._meta)

    def remove(self, name):
        self._meta.pop(name, None)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()


def register_coco_instances(name, metadata, json_file, image_root):
    """Register a COCO-format instances json; dicts are loaded on DatasetCatalog.get(name)."""
    DatasetCatalog.register(
        name, lambda: load_coco_json(json_file, image_root, MetadataCatalog.get(name)))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                  evaluator_type="coco", **(metadata or {}))


# ============================================================================ sets by path
def _is_path_name(name):
    return isinstance(name, str) and name.startswith(PATH_NAME_PREFIX)


def _is_well_formed_path_name(name):
    try:
        return bool(parse_path_name(name))
    except ValueError:
        return False


def parse_path_name(name):
    """``coco:JSON:IMAGES`` -> (absolute json path, absolute image folder).

    The last ``:`` separates the two paths (a json path may hold colons, the image folder may
    not). ``~`` is expanded; relative paths are taken from the current folder. The files are not
    opened here: a missing one is reported, naming it, when the set is loaded.
    """
    if not _is_path_name(name):
        raise ValueError(f"'{name}' is not a dataset path name ({PATH_NAME_PREFIX}JSON:IMAGES)")
    json_file, sep, image_root = name[len(PATH_NAME_PREFIX):].rpartition(":")
    if not sep or not json_file or not image_root:
        raise ValueError(f"Dataset name '{name}': expected {PATH_NAME_PREFIX}JSON:IMAGES, the "
                         f"COCO instances json and its image folder, e.g. "
                         f"{PATH_NAME_PREFIX}/data/train.json:/data/images")
    return tuple(os.path.abspath(os.path.expanduser(p)) for p in (json_file, image_root))


def _register_path_name(name):
    """Register a ``coco:JSON:IMAGES`` name with register_coco_instances if it is new."""
    if not _is_path_name(name) or name in DatasetCatalog.list():
        return
    json_file, image_root = parse_path_name(name)
    logger.info("Dataset '%s': json %s, images %s (relative paths from %s)",
                name, json_file, image_root, os.getcwd())
    register_coco_instances(name, {}, json_file, image_root)


def dataset_tag(name):
    """A file-name-safe tag of a dataset name for output folders (``inference/<tag>``): a
    ``coco:`` name gives its json's file name without extension, any other name itself."""
    if _is_path_name(name):  # not checked here: loading the set reports a malformed name
        json_file = name[len(PATH_NAME_PREFIX):].rpartition(":")[0]
        return os.path.splitext(os.path.basename(json_file))[0] or "coco"
    return name


def absolute_dataset_names(cfg):
    """cfg with every ``coco:`` name of DATASETS.TRAIN / TEST written with absolute paths.

    Training writes its config into OUTPUT_DIR for tfmrcnn-eval / predict, which may run from
    another folder; a relative path there would point elsewhere. Returns cfg itself when no
    name changes, else a frozen copy.
    """
    def absolute(name):
        return PATH_NAME_PREFIX + ":".join(parse_path_name(name)) if _is_path_name(name) else name

    train = tuple(absolute(n) for n in cfg.DATASETS.TRAIN)
    test = tuple(absolute(n) for n in cfg.DATASETS.TEST)
    if train == tuple(cfg.DATASETS.TRAIN) and test == tuple(cfg.DATASETS.TEST):
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = train, test
    cfg.freeze()
    return cfg


# ============================================================================ built-in datasets
def datasets_root():
    """$TFMRCNN_DATASETS (default ``datasets``, as detectron2), absolute; logged once."""
    value = os.environ.get("TFMRCNN_DATASETS")
    root = os.path.abspath(value or "datasets")
    _log_once("Datasets root %s ($TFMRCNN_DATASETS %s)", root,
              f"= {value}" if value else "unset: ./datasets of the current folder")
    return root


def shapes_root():
    """$TFMRCNN_SHAPES_DIR, else $TFMRCNN_DATASETS/shapes if set, else the cache's; absolute."""
    from tfmrcnn.utils.download import cache_root

    if os.environ.get("TFMRCNN_SHAPES_DIR"):
        return os.path.abspath(os.environ["TFMRCNN_SHAPES_DIR"])
    if os.environ.get("TFMRCNN_DATASETS"):
        return os.path.join(datasets_root(), "shapes")
    return os.path.join(cache_root(), "datasets", "shapes")


_COCO_LAYOUT = ("coco/train2017/*.jpg, coco/val2017/*.jpg, "
                "coco/annotations/instances_{train,val}2017.json")


def _coco_paths(split):
    """(json_file, image_root) of a COCO 2017 split; raises if either is missing."""
    coco = os.path.join(datasets_root(), "coco")
    json_file = os.path.join(coco, "annotations", f"instances_{split}2017.json")
    image_root = os.path.join(coco, f"{split}2017")
    for path in (json_file, image_root):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"COCO {split}2017 not found: {path} does not exist. Expected the layout "
                f"$TFMRCNN_DATASETS/{_COCO_LAYOUT} with $TFMRCNN_DATASETS = {datasets_root()}")
    return json_file, image_root


def _shapes_paths(split):
    """(json_file, image_root) of a shapes split, generating the set if needed."""
    root = shapes_root()
    if not os.path.isfile(os.path.join(root, shapes.STAMP_FILE)):
        # not silent: ~150 MB written on disk ($TFMRCNN_SHAPES_DIR chooses where)
        logger.warning("Generating the synthetic shapes data set (%d + %d images, ~150 MB at "
                       "the defaults) in %s", SHAPES_DEFAULTS["num_train"],
                       SHAPES_DEFAULTS["num_val"], root)
    root = shapes.ensure_shapes_dataset(root, **SHAPES_DEFAULTS)
    _log_once("Dataset shapes: %s", root)
    return shapes.shapes_paths(root, split)


def _register_builtin(name, paths_fn, categories):
    """A dataset whose paths are resolved (and checked or generated) when it is used.

    json_file and image_root stay lazy and follow the environment variables. The thing_*
    metadata is the set's usual table (``categories``) until its json is loaded, then that
    json's own categories: a custom set placed under a built-in name keeps its classes.
    """
    def load():
        # sets thing_* from the json
        dicts = load_coco_json(*paths_fn(), metadata=MetadataCatalog.get(name))
        _lazy_paths(name, paths_fn)
        return dicts

    DatasetCatalog.register(name, load)
    classes, to_contiguous, to_dataset = category_maps(categories)
    MetadataCatalog.get(name).set(
        thing_classes=classes, thing_dataset_id_to_contiguous_id=to_contiguous,
        thing_contiguous_id_to_dataset_id=to_dataset, evaluator_type="coco")
    _lazy_paths(name, paths_fn)


def _lazy_paths(name, paths_fn):
    MetadataCatalog.get(name).set_lazy(json_file=lambda: paths_fn()[0],
                                       image_root=lambda: paths_fn()[1])


# The 80 COCO thing categories with their json ids (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83
# are unused in the 2017 instances files).
COCO_CATEGORIES = [{"id": i, "name": n} for i, n in [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"),
    (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
    (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush")]]

for _split in ("train", "val"):
    _register_builtin(f"coco_2017_{_split}", lambda s=_split: _coco_paths(s), COCO_CATEGORIES)
    _register_builtin(f"shapes_{_split}", lambda s=_split: _shapes_paths(s),
                      [{"id": c["id"], "name": c["name"]} for c in shapes.CATEGORIES])
