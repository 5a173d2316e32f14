"""The single configuration tree of tfmrcnn (detectron2's keys and defaults).

`node` holds the tree type (CfgNode), its errors, YAML loading with ``_BASE_`` and override
parsing; `defaults` every key with its default value. Import from here::

    from tfmrcnn.config import get_cfg, load_config, ConfigError
"""
from tfmrcnn.config.defaults import get_cfg, load_config
from tfmrcnn.config.node import (CfgNode, ConfigError, ConfigFrozenError, ConfigKeyError,
                                 ConfigTypeError, decode_value, load_yaml_with_base)

__all__ = [
    "CfgNode", "ConfigError", "ConfigKeyError", "ConfigTypeError", "ConfigFrozenError",
    "get_cfg", "load_config", "load_yaml_with_base", "decode_value",
]
