"""Named architectures of the paper (and a few more), built by `CenterNet.from_preset`.

Each backbone module defines a `PRESETS` dict: name -> spec with
`backbone` (a function returning the backbone), `neck` (a function or `None`),
`head_channels` (the official `head_conv`), `size_divisor` (the total stride),
`description` and optionally `options` (other `CenterNet` arguments, such as
the box head). The modular presets below, not in the paper, pair a
`keras.applications` backbone with an FPN or BiFPN neck.
"""

import importlib

from keras_centernet.backbones.applications import ApplicationBackbone
from keras_centernet.necks.bifpn import BiFPNNeck
from keras_centernet.necks.fpn import FPNNeck

# Modules that contribute presets, in the order they are listed.
_PRESET_MODULES = (
    "keras_centernet.backbones.resnet",
    "keras_centernet.backbones.dla",
    "keras_centernet.backbones.hourglass",
)


MODULAR_PRESETS = {
    "mobilenetv3_fpn": {
        "backbone": lambda: ApplicationBackbone("mobilenet_v3_large"),
        "neck": lambda: FPNNeck(filters=128),
        "head_channels": 64,
        "size_divisor": 32,
        "options": {"box_head": "ltrb", "iou_loss": "giou"},
        "description": (
            "MobileNetV3-Large (keras.applications, random weights) with a 128-channel FPN to "
            "stride 4 and the LTRB box head trained with GIoU (TTFNet-style); not in the paper."
        ),
    },
    "resnet50_bifpn": {
        "backbone": lambda: ApplicationBackbone("resnet50"),
        "neck": lambda: BiFPNNeck(filters=64, num_repeats=3),
        "head_channels": 64,
        "size_divisor": 32,
        "description": (
            "ResNet-50 (keras.applications, random weights) with three 64-channel BiFPN layers "
            "(EfficientDet-D0's) to stride 4 and the paper's size and offset heads; not in the paper."
        ),
    },
}


def _collect():
    presets = dict(MODULAR_PRESETS)
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
    """Names of every preset, sorted: what `CenterNet.from_preset` (and the CLI) accepts.

    Returns:
        list of str.

    Example:

    >>> "dla34" in list_presets()
    True
    """
    return sorted(_collect())


def get_preset(name):
    """The spec of preset `name`; a `ValueError` lists the known ones otherwise."""
    presets = _collect()
    if name not in presets:
        raise ValueError(
            f"Unknown preset {name!r}; available presets: {sorted(presets)}."
        )
    return presets[name]
