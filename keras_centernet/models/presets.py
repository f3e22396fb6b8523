"""Named architectures of the paper (and a few more), built by `CenterNet.from_preset`.

Each backbone module defines a `PRESETS` dict: name -> spec with
`backbone` (a function returning the backbone), `neck` (a function or `None`),
`head_channels` (the official `head_conv`), `size_divisor` (the total stride)
and `description`.
"""

import importlib

# Modules that contribute presets, in the order they are listed.
_PRESET_MODULES = (
    "keras_centernet.backbones.resnet",
    "keras_centernet.backbones.dla",
    "keras_centernet.backbones.hourglass",
)


def _collect():
    presets = {}
    for module_name in _PRESET_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        presets.update(getattr(module, "PRESETS", {}))
    return presets


def list_presets():
    """Names of every preset."""
    return sorted(_collect())


def get_preset(name):
    """The spec of preset `name`; a `ValueError` lists the known ones otherwise."""
    presets = _collect()
    if name not in presets:
        raise ValueError(
            f"Unknown preset {name!r}; available presets: {sorted(presets)}."
        )
    return presets[name]
