"""The config tree type: CfgNode, its errors, YAML files with ``_BASE_`` and overrides.

The keys and their defaults live in `tfmrcnn.config.defaults`; this module knows none of them.

Rules of the tree (yacs-like):
- Only keys that exist in the tree (the defaults once sealed, see `set_new_allowed`) may be read,
  set or merged; an unknown key raises ``ConfigKeyError`` naming the full dotted key and the
  closest existing key of the whole tree.
- A new value must have the type of the default: int is accepted for float (stored as float),
  list and tuple are interchangeable (stored as the default's type), anything else raises
  ``ConfigTypeError`` naming the key.
- String values from YAML files and overrides that look like Python literals
  (``(640, 672)``) are evaluated, as detectron2's yaml files rely on it.
"""

import ast
import copy
import difflib
import os

import yaml

__all__ = [
    "CfgNode", "ConfigError", "ConfigKeyError", "ConfigTypeError", "ConfigFrozenError",
    "load_yaml_with_base", "decode_value",
]

_BASE_KEY = "_BASE_"


class ConfigError(Exception):
    """Base class of every configuration error."""

    def __str__(self):
        # KeyError would otherwise print the repr of the message (extra quotes).
        return str(self.args[0]) if self.args else ""


class ConfigKeyError(ConfigError, KeyError, AttributeError):
    """An unknown key was read, set or merged (also an AttributeError so hasattr() works)."""


class ConfigTypeError(ConfigError, TypeError):
    """A value does not have the type of the key's default."""


class ConfigFrozenError(ConfigError, AttributeError):
    """A frozen tree was modified."""


class CfgNode(dict):
    """A nested dict with attribute access; keys are upper-case config names.

    Each node knows its dotted prefix (``"MODEL.RPN"``) so errors name full keys, and the root
    of its tree, whose keys are the candidates of a "Did you mean" hint. Internal state lives in
    ``__dict__`` (names starting with ``_``); everything else is a config key.
    """

    def __init__(self, init=None, prefix="", new_allowed=False, _root=None):
        super().__init__()
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_frozen", False)
        object.__setattr__(self, "_new_allowed", new_allowed)
        object.__setattr__(self, "_root", self if _root is None else _root)
        for key, value in (init or {}).items():
            self._add(key, value)

    # ------------------------------------------------------------------ access
    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise self._unknown_key(name) from None

    def __setattr__(self, name, value):
        if name.startswith("_"):
            raise AttributeError(f"config keys cannot start with '_': {name}")
        self[name] = value

    def __setitem__(self, name, value):
        full = self._full_key(name)
        if self._frozen:
            if name not in self:
                raise self._unknown_key(name)
            raise ConfigFrozenError(
                f"Attempted to set '{full}' = {value!r} on a frozen config; "
                "use cfg.defrost() or cfg.clone() first.")
        if name in self:
            old = dict.__getitem__(self, name)
            if isinstance(old, CfgNode):
                if not isinstance(value, dict):
                    raise ConfigTypeError(f"'{full}' is a config group, cannot set it to {value!r}")
                old.merge_from_dict(value)
                return
            dict.__setitem__(self, name, _coerce(value, old, full))
        elif self._new_allowed:
            self._add(name, value)
        else:
            raise self._unknown_key(name)

    def __delattr__(self, name):
        raise ConfigError(f"config keys cannot be deleted: {self._full_key(name)}")

    __delitem__ = __delattr__

    def update(self, *args, **kwargs):
        """dict.update through the same checks as attribute setting."""
        self.merge_from_dict(dict(*args, **kwargs))

    def _no_removal(self, *args, **kwargs):
        raise ConfigError(f"config keys cannot be removed (node '{self._prefix or '<root>'}')")

    pop = popitem = clear = _no_removal

    def setdefault(self, name, default=None):
        if name not in self:
            raise self._unknown_key(name)
        return self[name]

    def _add(self, name, value):
        """Add a key without checks (building the defaults)."""
        full = self._full_key(name)
        if isinstance(value, dict):
            value = CfgNode(value, prefix=full, new_allowed=self._new_allowed, _root=self._root)
        dict.__setitem__(self, name, value)

    def _full_key(self, name):
        return f"{self._prefix}.{name}" if self._prefix else name

    def _unknown_key(self, name, full=None):
        full = full or self._full_key(name)
        candidates = list(_all_keys(self._root, self._root._prefix))
        match = difflib.get_close_matches(full, candidates, n=1, cutoff=0.6)
        hint = f" Did you mean '{match[0]}'?" if match else ""
        return ConfigKeyError(f"Unknown config key '{full}'.{hint}")

    # ------------------------------------------------------------------ state
    def freeze(self):
        """Make this node and every node below it immutable; returns self."""
        self._set_frozen(True)
        return self

    def defrost(self):
        """Make this node and every node below it mutable again; returns self."""
        self._set_frozen(False)
        return self

    def is_frozen(self):
        return self._frozen

    def set_new_allowed(self, is_new_allowed):
        """Allow (or not) new keys in this node and every node below it; returns self. A tree
        is built with new keys allowed, then sealed: afterwards every key is checked."""
        object.__setattr__(self, "_new_allowed", bool(is_new_allowed))
        for value in self.values():
            if isinstance(value, CfgNode):
                value.set_new_allowed(is_new_allowed)
        return self

    def _set_frozen(self, frozen):
        object.__setattr__(self, "_frozen", frozen)
        for value in self.values():
            if isinstance(value, CfgNode):
                value._set_frozen(frozen)

    def clone(self):
        """A deep copy with the same frozen state."""
        out = CfgNode(self.to_dict(), prefix=self._prefix, new_allowed=self._new_allowed)
        out._copy_flags_from(self)
        return out

    def _copy_flags_from(self, other):
        object.__setattr__(self, "_frozen", other._frozen)
        object.__setattr__(self, "_new_allowed", other._new_allowed)
        for key, value in self.items():
            if isinstance(value, CfgNode):
                value._copy_flags_from(dict.__getitem__(other, key))

    def __deepcopy__(self, memo):
        return self.clone()

    def __copy__(self):
        return self.clone()

    def __reduce__(self):
        # Rebuilt from plain data: pickle would otherwise set items before restoring flags.
        return (_rebuild_node, (self.to_dict(), self._prefix, self._frozen))

    def to_dict(self):
        """Plain nested dict (values deep-copied)."""
        return {k: v.to_dict() if isinstance(v, CfgNode) else copy.deepcopy(v)
                for k, v in self.items()}

    # ------------------------------------------------------------------ merging
    def merge_from_dict(self, values):
        """Merge a nested dict of values; every key must already exist."""
        for key, value in values.items():
            if key == _BASE_KEY:
                raise ConfigError(f"'{_BASE_KEY}' is only valid at the top of a yaml file")
            if key not in self and not self._new_allowed:
                raise self._unknown_key(key)
            old = self.get(key)
            if not isinstance(value, dict) and not isinstance(old, str):
                value = decode_value(value)  # "(640, 800)" in detectron2 yaml files is a tuple
            self[key] = value

    def merge_from_file(self, path):
        """Merge a YAML file; ``_BASE_`` (a path relative to the file) is merged first."""
        self.merge_from_dict(load_yaml_with_base(path))

    def merge_from_list(self, overrides):
        """Merge command-line overrides.

        Accepts ``["A.B=1", "C=x"]`` (tensorpack style), ``["A.B", "1", "C", "x"]`` (detectron2
        style) or a mix; values are YAML literals (``[1, 2]``, ``true``, ``0.5``, ``(1, 2)``).
        """
        for key, text in _split_overrides(overrides):
            node, leaf = self._resolve(key)
            if leaf not in node:
                raise self._unknown_key(None, full=self._full_key(key))
            old = dict.__getitem__(node, leaf)
            node[leaf] = _parse_override(text, old)

    def _resolve(self, dotted):
        """(node, leaf name) for a dotted key relative to this node."""
        parts = dotted.split(".")
        node = self
        for part in parts[:-1]:
            child = node.get(part) if isinstance(node, CfgNode) else None
            if not isinstance(child, CfgNode):
                raise self._unknown_key(None, full=self._full_key(dotted))
            node = child
        return node, parts[-1]

    def dump(self, **kwargs):
        """YAML text of the tree (tuples written as lists); loadable by merge_from_file."""
        kwargs.setdefault("sort_keys", False)
        return yaml.dump(_plain(self), Dumper=_Dumper, **kwargs)

    def __str__(self):
        return self.dump()

    def __repr__(self):
        return f"CfgNode({dict.__repr__(self)})"


class _Dumper(yaml.SafeDumper):
    """Groups as blocks, value lists on one line (as detectron2's yaml files are written)."""


def _represent_flow_list(dumper, data):
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _represent_flow_list)


def _rebuild_node(values, prefix, frozen):
    node = CfgNode(values, prefix=prefix)
    return node.freeze() if frozen else node


def _all_keys(node, prefix=""):
    """Every dotted key (groups and leaves) under node."""
    for key, value in node.items():
        full = f"{prefix}.{key}" if prefix else key
        yield full
        if isinstance(value, CfgNode):
            yield from _all_keys(value, full)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def decode_value(value):
    """Evaluate strings that are Python literals ("(1, 2)", "0.5"); other strings stay strings.

    (ast.literal_eval: literals only, never code.) detectron2's yaml files write tuples as
    strings, e.g. ``MIN_SIZE_TRAIN: (640, 672)``."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
    return value


def _coerce(value, default, key):
    """Check value against the default's type; return it converted to that type."""
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is type(default):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return _sequence_like(value, default)
    elif type(value) is type(default):
        return value
    hint = " Write a list, e.g. [a, b]." if isinstance(default, (list, tuple)) else ""
    raise ConfigTypeError(
        f"Config key '{key}' expects {type(default).__name__} (now {default!r}), "
        f"got {type(value).__name__} {value!r}.{hint}")


def _sequence_like(value, default):
    """value (a list or tuple) as the default's sequence type, at every level where the default
    has one (its first element): yaml writes ((1, 2), (3, 4)) back as [[1, 2], [3, 4]]."""
    inner = default[0] if default and isinstance(default[0], (list, tuple)) else None
    return type(default)(_sequence_like(v, inner) if inner is not None
                         and isinstance(v, (list, tuple)) else v for v in value)


def _parse_override(text, default):
    """Parse one override value (a string from the command line) for a key with this default."""
    if not isinstance(text, str):
        return text
    if isinstance(default, str):
        # Paths and names stay verbatim unless quoted ("'a b'" -> a b).
        try:
            parsed = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            parsed = text
        return parsed if isinstance(parsed, str) else text
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = text
    return decode_value(parsed)


def _split_overrides(overrides):
    """[(key, value text)] from either override style."""
    items = list(overrides)
    pairs, i = [], 0
    while i < len(items):
        token = str(items[i])
        if "=" in token:
            key, text = token.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(items):
                raise ConfigError(f"Override '{token}' has no value (use KEY=VALUE or KEY VALUE).")
            key, text = token, items[i + 1]
            i += 2
        pairs.append((key.strip(), text))
    return pairs


def load_yaml_with_base(path, _seen=()):
    """Nested dict of a yaml file with its ``_BASE_`` chain merged in (base first).

    ``_BASE_`` is a path relative to the file that names it; files are read with
    yaml.safe_load. Unreadable or invalid files, non-mapping content and circular chains raise
    ConfigError naming the file."""
    path = os.path.abspath(os.path.expanduser(path))
    if path in _seen:
        raise ConfigError(f"Circular _BASE_ chain: {' -> '.join(_seen + (path,))}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"Cannot read config file {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"Invalid YAML in config file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping, got {type(data).__name__}")
    base = data.pop(_BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):  # detectron2 too takes one base file, not a list
        raise ConfigError(f"{_BASE_KEY} in config file {path} must be one file path, got "
                          f"{type(base).__name__} {base!r}")
    base_path = os.path.join(os.path.dirname(path), os.path.expanduser(base))
    return _merge_dicts(load_yaml_with_base(base_path, _seen + (path,)), data)


def _merge_dicts(base, override):
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_dicts(out[key], value)
        else:
            out[key] = value
    return out
