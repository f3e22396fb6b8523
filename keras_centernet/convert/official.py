"""Loads checkpoints of the official PyTorch CenterNet (xingyizhou/CenterNet).

Every layer of our networks that holds weights is named by the official
module path with `-` for `.` (`layer1-0-conv1`, `base-level2-tree1-conv1`,
`dla_up-ida_0-proj_1-conv`, `kps-0-up1-0-conv1`, ...: PyTorch's
`ParameterDict`, which the torch backend uses, rejects dots), so an official
state_dict entry `<module path>.<leaf>` finds its layer by name and the leaf
says which weight it is. Only the heads are renamed (the official `hm`, `wh`,
`reg` are our `heatmap`, `size`, `offset`).
"""

import os

import keras
import numpy as np

# Official head names -> ours.
HEAD_NAMES = {"hm": "heatmap", "wh": "size", "reg": "offset"}

# The convolution that reads the image: its input channels are flipped, since
# the official networks take BGR and ours RGB.
FIRST_CONVOLUTIONS = ("conv1.weight", "base.base_layer.0.weight", "pre.0.conv.weight")

# Entries of official checkpoints that no network uses (DLA's ImageNet classifier).
UNUSED_ENTRIES = ("base.fc.weight", "base.fc.bias")


def official_name(path):
    """Our layer name for an official module path: `layer1.0.conv1` -> `layer1-0-conv1`."""
    return path.replace(".", "-")


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor; torch itself is optional
        value = value.detach().cpu()
        # NumPy has no bfloat16: widen half-precision checkpoints first.
        value = value.float() if value.is_floating_point() else value
        value = value.numpy()
    return np.asarray(value)


def _conv_kernel(value):
    """PyTorch OIHW -> Keras HWIO."""
    return value.transpose(2, 3, 1, 0)


def _transposed_conv_kernel(value):
    """PyTorch ConvTranspose2d (Cin, Cout, kh, kw) -> Keras Conv2DTranspose (kh, kw, Cout, Cin)."""
    return value.transpose(2, 3, 1, 0)


def official_weight_targets(layer, leaf):
    """The Keras variable and layout transform for official entry `leaf` of `layer`.

    Returns `(variable, transform)` or `None` when the leaf has no variable
    (BatchNorm's `num_batches_tracked`). A custom layer may define
    `official_weight_targets(leaf)` to say it itself.
    """
    if hasattr(layer, "official_weight_targets"):
        return layer.official_weight_targets(leaf)
    from keras_centernet.layers.deformable_conv2d import DeformableConv2D

    if isinstance(layer, DeformableConv2D):
        table = {
            "weight": (layer.kernel, _conv_kernel),
            "bias": (layer.bias, None),
            "conv_offset_mask.weight": (layer.offset_kernel, _conv_kernel),
            "conv_offset_mask.bias": (layer.offset_bias, None),
        }
    elif isinstance(layer, keras.layers.BatchNormalization):
        if leaf == "num_batches_tracked":
            return None
        table = {
            "weight": (layer.gamma, None),
            "bias": (layer.beta, None),
            "running_mean": (layer.moving_mean, None),
            "running_var": (layer.moving_variance, None),
        }
    elif isinstance(layer, keras.layers.Conv2DTranspose):
        table = {"weight": (layer.kernel, _transposed_conv_kernel)}
        if layer.use_bias:
            table["bias"] = (layer.bias, None)
    elif isinstance(layer, keras.layers.Conv2D):
        table = {"weight": (layer.kernel, _conv_kernel)}
        if layer.use_bias:
            table["bias"] = (layer.bias, None)
    else:
        raise KeyError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has no official "
            "weight mapping."
        )
    if leaf not in table:
        raise KeyError(f"Layer {layer.name!r} has no official entry {leaf!r}.")
    return table[leaf]


def _layers_by_name(model):
    layers = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        layers.setdefault(layer.name, layer)
    return layers


def _head_layer_name(parts, num_stacks):
    """Official head path -> (our layer name, sub-layer, leaf), or None."""
    head = HEAD_NAMES.get(parts[0], parts[0])
    if len(parts) == 3 and parts[1] in ("0", "2"):
        # ResNet/DLA: `hm.0` is the 3x3 conv, `hm.2` the 1x1 output conv.
        return head, "hidden" if parts[1] == "0" else "output", parts[2]
    if len(parts) >= 4:
        # Hourglass: `hm.<stack>.0.conv` is the 3x3 conv, `hm.<stack>.1` the output conv.
        stack, index = parts[1], parts[2]
        name = head if num_stacks == 1 else f"{head}_{stack}"
        if index == "0" and parts[3] == "conv" and len(parts) == 5:
            return name, "hidden", parts[4]
        if index == "1" and len(parts) == 4:
            return name, "output", parts[3]
    return None


def _resolve(key, layers, heads, num_stacks):
    parts = key.split(".")
    if parts[0] in HEAD_NAMES or parts[0] in heads:
        resolved = _head_layer_name(parts, num_stacks)
        if resolved is None:
            raise KeyError(f"Unrecognised head entry {key!r}.")
        name, sub, leaf = resolved
        if name not in layers:
            raise KeyError(f"The model has no head {name!r} for entry {key!r}.")
        head = layers[name]
        return getattr(head, "hidden" if sub == "hidden" else "output_conv"), leaf
    for cut in range(len(parts) - 1, 0, -1):
        prefix = official_name(".".join(parts[:cut]))
        if prefix in layers:
            return layers[prefix], ".".join(parts[cut:])
    raise KeyError(f"No layer of the model is named after entry {key!r}.")


def load_official_weights(model, state_dict, skip_mismatch=False):
    """Loads an official CenterNet state_dict into a `CenterNet` model.

    Maps every entry (parameters and BatchNorm buffers) to its Keras weight:
    convolutions OIHW -> HWIO, transposed convolutions, DCN
    (`conv_offset_mask` -> the layer's offset/mask kernel, keeping the
    interleaved offset layout), BatchNorm. The first convolution's input
    channels are flipped, so the model takes RGB where the official one took
    BGR. A `module.` prefix (DataParallel checkpoints) is removed.

    Args:
        model: `keras_centernet.CenterNet` of the matching architecture.
        state_dict: mapping official name -> array (numpy or torch tensor).
        skip_mismatch: bool. If `False` (default), any missing, unexpected
            or mis-shaped entry raises a `ValueError` listing them all. If
            `True` (fine-tuning a COCO checkpoint to other classes), entries
            whose shape does not fit are skipped and those model weights keep
            their initialisation; missing entries are still an error.

    Returns:
        A list of the skipped official entry names (empty when
        `skip_mismatch=False`).

    Example:

    >>> model = kc.CenterNet.from_preset("resnet18_dcn", num_classes=20)
    >>> skipped = load_official_weights(model, coco_state_dict, skip_mismatch=True)
    >>> skipped  # the heatmap head's output conv: 80 classes -> 20
    ['hm.2.weight', 'hm.2.bias']
    """
    layers = _layers_by_name(model)
    heads = getattr(model, "heads", {})
    num_stacks = getattr(model, "num_stacks", 1)
    entries = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        entries[key] = value

    assigned = {}
    unexpected, mismatched, skipped = [], [], []
    for key, value in entries.items():
        if key in UNUSED_ENTRIES:
            continue
        try:
            layer, leaf = _resolve(key, layers, heads, num_stacks)
            target = official_weight_targets(layer, leaf)
        except KeyError as error:
            unexpected.append(f"{key} ({error.args[0]})")
            continue
        if target is None:
            continue
        variable, transform = target
        array = _to_numpy(value).astype("float32")
        if transform is not None:
            if array.ndim != 4:
                assigned[id(variable)] = None
                if skip_mismatch:
                    skipped.append(key)
                else:
                    mismatched.append(f"{key}: shape {array.shape}, expected a 4-D kernel")
                continue
            array = transform(array)
        if key in FIRST_CONVOLUTIONS:
            array = array[:, :, ::-1, :]
        if tuple(array.shape) != tuple(variable.shape):
            message = (
                f"{key}: official shape {tuple(_to_numpy(value).shape)} gives "
                f"{tuple(array.shape)}, but {variable.path} has {tuple(variable.shape)}"
            )
            # Either way the variable has its entry: it is not also missing.
            assigned[id(variable)] = None
            if skip_mismatch:
                skipped.append(key)
            else:
                mismatched.append(message)
            continue
        assigned[id(variable)] = (variable, array)

    missing = [v.path for v in model.weights if id(v) not in assigned]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model weights have no entry: {missing}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected entries: {unexpected}")
    if mismatched:
        problems.append(f"{len(mismatched)} mis-shaped entries: {mismatched}")
    if problems:
        raise ValueError(
            "The state_dict does not fit the model "
            f"({type(getattr(model, 'backbone', model)).__name__}):\n- " + "\n- ".join(problems)
        )
    for item in assigned.values():
        if item is not None:
            variable, array = item
            variable.assign(array)
    return skipped


def read_checkpoint(path):
    """Reads an official checkpoint into a dict name -> numpy array.

    `.pth` files are read with torch if it is installed (`weights_only=True`:
    tensors only, no unpickled code); `.npz` files of the same names need no
    torch.

    Args:
        path: str. A `.pth` checkpoint of the official code (its
            `state_dict`, or a dict holding one under `"state_dict"`) or an
            `.npz` of the same names.

    Returns:
        dict: parameter name (the official module path) -> `np.ndarray`.

    Example:

    >>> state = read_checkpoint("ctdet_coco_dla_2x.pth")
    >>> state["hm.2.bias"].shape
    (80,)
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}.")
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"Reading {path!r} needs PyTorch (`pip install keras-centernet[torch]`); "
            "or convert it to an .npz of the same names first."
        ) from error
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("state_dict", checkpoint)
    return {key: _to_numpy(value) for key, value in state_dict.items()}


def from_official_checkpoint(path, preset, num_classes=None, skip_mismatch=False, **kwargs):
    """Builds preset `preset` and loads an official checkpoint (`.pth` or `.npz`) into it.

    Args:
        path: str. The checkpoint, e.g. `ctdet_coco_dla_2x.pth`.
        preset: str. The matching architecture, e.g. `"dla34"`.
        num_classes: int. Defaults to the checkpoint's (the heatmap head's
            output channels).
        skip_mismatch: bool. See `load_official_weights`.
        **kwargs: other `CenterNet.from_preset` arguments.

    Example:

    >>> model = from_official_checkpoint("ctdet_coco_dla_2x.pth", preset="dla34")
    """
    from keras_centernet.models.centernet import CenterNet

    state_dict = read_checkpoint(path)
    if num_classes is None:
        names = [k[len("module."):] if k.startswith("module.") else k for k in state_dict]
        hm_biases = sorted(
            (name, key) for name, key in zip(names, state_dict)
            if name.startswith("hm.") and name.endswith(".bias")
        )
        if not hm_biases:
            raise ValueError(f"{path!r} has no `hm` head; pass `num_classes`.")
        # The last `hm.*.bias` is the output convolution's (one per class).
        num_classes = int(_to_numpy(state_dict[hm_biases[-1][1]]).shape[0])
    model = CenterNet.from_preset(preset, num_classes=num_classes, **kwargs)
    load_official_weights(model, state_dict, skip_mismatch=skip_mismatch)
    return model
