"""Modulated deformable convolution (DCNv2), channels-last, in `keras.ops`."""

import math
import os

import keras
from keras import ops

# "auto", "reference" (`keras.ops`, automatic gradient: every backend), "xla"
# (JAX: the same gathers with a hand-written gradient, `deform_conv_xla.py`;
# what "auto" runs under JAX) or "fused" (JAX: Pallas kernels, in the Pallas
# interpreter off GPU; slower than both on an H100/H200, see
# benchmarks/results/deform_conv.md).
DCN_IMPLEMENTATION_ENV = "KERAS_CENTERNET_DCN"


def _pair(value, name):
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(
            f"`{name}` must be an int or a pair of ints; received {value!r}."
        )
    return value


def conv_geometry(strides, padding, dilation):
    """`(strides, padding, dilation)` as pairs of ints (ints are repeated)."""
    return _pair(strides, "strides"), _pair(padding, "padding"), _pair(dilation, "dilation")


def _static_shape(tensor):
    return tuple(tensor.shape)


def deform_output_size(size, kernel_size, stride, padding, dilation):
    """Output length along one axis (the formula of `torch.nn.Conv2d`)."""
    if size is None:
        return None
    return (size + 2 * padding - (dilation * (kernel_size - 1) + 1)) // stride + 1


def validate_deform_conv_args(
    x_shape, offsets_shape, mask_shape, kernel_shape, bias_shape,
    strides, padding, dilation,
):
    """Checks shapes and hyper-parameters; returns `(Ho, Wo)` (may be None).

    Raises a `ValueError` naming the argument and the expected shape.
    """
    if len(x_shape) != 4:
        raise ValueError(
            "`x` must have rank 4 (batch, height, width, channels); "
            f"received shape {x_shape}."
        )
    if len(kernel_shape) != 4:
        raise ValueError(
            "`kernel` must have rank 4 (kernel_h, kernel_w, in_channels, "
            f"out_channels); received shape {kernel_shape}."
        )
    kh, kw, cin, cout = kernel_shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(
            f"`kernel` must have odd spatial sizes; received {kh}x{kw}."
        )
    if x_shape[-1] is not None and x_shape[-1] != cin:
        raise ValueError(
            f"`x` has {x_shape[-1]} channels but `kernel` expects {cin} "
            f"(kernel shape {kernel_shape})."
        )
    if min(strides) < 1:
        raise ValueError(f"`strides` must be >= 1; received {strides}.")
    if min(dilation) < 1:
        raise ValueError(f"`dilation` must be >= 1; received {dilation}.")
    if min(padding) < 0:
        raise ValueError(f"`padding` must be >= 0; received {padding}.")
    out_h = deform_output_size(x_shape[1], kh, strides[0], padding[0], dilation[0])
    out_w = deform_output_size(x_shape[2], kw, strides[1], padding[1], dilation[1])
    if (out_h is not None and out_h < 1) or (out_w is not None and out_w < 1):
        raise ValueError(
            f"`x` of spatial size {x_shape[1:3]} is too small for a {kh}x{kw} "
            f"kernel with padding {padding} and dilation {dilation}."
        )
    num_points = kh * kw
    expected_offsets = (x_shape[0], out_h, out_w, 2 * num_points)
    expected_mask = (x_shape[0], out_h, out_w, num_points)
    for name, shape, expected in (
        ("offsets", offsets_shape, expected_offsets),
        ("mask", mask_shape, expected_mask),
    ):
        if shape is None:
            continue
        ok = len(shape) == 4 and all(
            s is None or e is None or s == e for s, e in zip(shape, expected)
        )
        if not ok:
            raise ValueError(
                f"`{name}` must have shape (batch, out_h, out_w, "
                f"{expected[-1]}) = {expected} for a {kh}x{kw} kernel; "
                f"received {shape}."
            )
    if bias_shape is not None and tuple(bias_shape) != (cout,):
        raise ValueError(
            f"`bias` must have shape ({cout},); received {tuple(bias_shape)}."
        )
    return out_h, out_w


IMPLEMENTATIONS = ("auto", "reference", "xla", "fused")


def resolve_implementation(shapes, implementation=None):
    """The implementation `deform_conv2d` runs: "reference", "xla" or "fused".

    The JAX ones ("xla", "fused") need the JAX backend and static shapes;
    elsewhere every request runs the `keras.ops` reference. "auto" is "xla"
    under JAX.
    """
    implementation = implementation or os.environ.get(DCN_IMPLEMENTATION_ENV, "auto")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            "`implementation` (or the environment variable "
            f"{DCN_IMPLEMENTATION_ENV}) must be one of "
            f"{', '.join(repr(i) for i in IMPLEMENTATIONS)}; received {implementation!r}."
        )
    if implementation == "reference" or keras.backend.backend() != "jax":
        return "reference"
    if any(s is None for shape in shapes for s in shape):
        return "reference"
    return "xla" if implementation == "auto" else implementation


def _sample_columns(x_padded, offsets, mask, row_start, rows, out_w, height,
                    width, kernel_hw, strides, padding, dilation):
    """Bilinear, mask-weighted samples for `rows` output rows.

    Returns float32 columns of shape (B, rows, out_w, kh * kw, C).
    """
    kh, kw = kernel_hw
    num_points = kh * kw
    batch = ops.shape(x_padded)[0]
    channels = x_padded.shape[-1]
    padded_w = width + 2
    flat = ops.reshape(x_padded, (-1, channels))

    offsets = ops.reshape(
        offsets[:, row_start:row_start + rows], (batch, rows, out_w, num_points, 2)
    )
    mask = mask[:, row_start:row_start + rows]
    dy, dx = offsets[..., 0], offsets[..., 1]

    # Integer base positions of every kernel point, (rows, 1, K) and (1, Wo, K).
    ki = ops.repeat(ops.arange(kh, dtype="int32"), kw)
    kj = ops.tile(ops.arange(kw, dtype="int32"), [kh])
    ho = ops.arange(row_start, row_start + rows, dtype="int32")
    wo = ops.arange(out_w, dtype="int32")
    base_h = ho[:, None, None] * strides[0] - padding[0] + ki[None, None, :] * dilation[0]
    base_w = wo[None, :, None] * strides[1] - padding[1] + kj[None, None, :] * dilation[1]

    # Split each offset into integer and fractional parts first: that keeps the
    # interpolation weights exact in float32 (no rounding of `base + offset`).
    fy = ops.floor(dy)
    fx = ops.floor(dx)
    ly = dy - fy
    lx = dx - fx
    h0 = ops.cast(fy, "int32") + base_h
    w0 = ops.cast(fx, "int32") + base_w
    h = ops.cast(base_h, "float32") + dy
    w = ops.cast(base_w, "float32") + dx
    # DCNv2 zeroes a sample whose position lies outside (-1, H) x (-1, W).
    inside = (
        (h > -1.0)
        & (h < ops.cast(height, "float32"))
        & (w > -1.0)
        & (w < ops.cast(width, "float32"))
    )
    weight = ops.where(inside, mask, ops.zeros_like(mask))
    # In the zero-padded image, every corner of an inside sample lies in
    # [0, H + 1] x [0, W + 1]; clip the others (their weight is already 0).
    h0 = ops.clip(h0 + 1, 0, height)
    w0 = ops.clip(w0 + 1, 0, width)

    batch_base = ops.arange(batch, dtype="int32")[:, None, None, None] * (
        (height + 2) * padded_w
    )
    top_left = batch_base + h0 * padded_w + w0

    columns = None
    corners = (
        (0, 0, (1.0 - ly) * (1.0 - lx)),
        (0, 1, (1.0 - ly) * lx),
        (1, 0, ly * (1.0 - lx)),
        (1, 1, ly * lx),
    )
    for di, dj, corner_weight in corners:
        index = ops.reshape(top_left + (di * padded_w + dj), (-1,))
        values = ops.reshape(
            ops.take(flat, index, axis=0),
            (batch, rows, out_w, num_points, channels),
        )
        term = values * (corner_weight * weight)[..., None]
        columns = term if columns is None else columns + term
    return columns


def deform_conv2d(x, offsets, mask, kernel, bias=None, strides=1, padding=1,
                  dilation=1, chunk_rows=None, implementation=None):
    """Modulated deformable 2D convolution (DCNv2), channels-last.

    Computes the function of the official CenterNet `DCN` op (and of
    `torchvision.ops.deform_conv2d` with a mask): for output pixel (ho, wo) and
    kernel point k = i * kw + j, the input is sampled bilinearly at
    `(ho * s - p + i * d + dy_k, wo * s - p + j * d + dx_k)`, multiplied by
    `mask_k`, and contracted with the kernel. Samples outside
    `(-1, H) x (-1, W)` are 0, and neighbours outside the image count as 0.

    The reference version uses only `keras.ops`, so the op runs (and
    differentiates) under the TensorFlow, JAX and PyTorch backends and inside
    XLA. Under JAX the default (`"auto"`) is `implementation="xla"`
    (`deform_conv_xla.py`): the same function with a hand-written gradient that
    keeps no columns between the passes and gathers in the input's dtype
    (35-40% less memory per layer, and a DLA-34 bf16 training step 13%
    shorter on an H100; `benchmarks/results/deform_conv_xla.md`).
    `implementation="fused"` (or the environment variable
    `KERAS_CENTERNET_DCN=fused`) runs the fused Pallas kernels of
    `deform_conv_jax.py`: no column tensor at all, but slower. The offsets,
    mask and bilinear sampling stay in float32 whatever the inputs' dtype;
    only the final matmul runs in the dtype of `kernel` (the compute dtype
    under mixed precision).

    Memory: the sampled columns hold `B * Ho * Wo * kh * kw * Cin` float32
    values (plus one corner's gather of the same size while they are summed).
    `chunk_rows` computes that many output rows at a time, which bounds the
    forward pass's peak to the chunk's share; in training, the columns of
    every chunk are kept for the backward pass unless the caller wraps the op
    in rematerialisation.

    Args:
        x: tensor (B, H, W, Cin). The input.
        offsets: tensor (B, Ho, Wo, 2 * kh * kw). For kernel point k, the pair
            (dy, dx) at channels 2k, 2k + 1 (the official layout).
        mask: tensor (B, Ho, Wo, kh * kw). Modulation, already in (0, 1).
        kernel: tensor (kh, kw, Cin, Cout).
        bias: optional tensor (Cout,).
        strides: int or pair. Defaults to 1.
        padding: int or pair, zero padding. Defaults to 1.
        dilation: int or pair. Defaults to 1.
        chunk_rows: optional int, output rows computed at a time. Defaults to
            `None` (all rows at once). Only the reference uses it: the XLA
            version keeps no columns for the backward pass, and the fused
            kernels hold none.
        implementation: optional str, `"auto"`, `"reference"`, `"xla"` or
            `"fused"`. Defaults to the environment variable
            `KERAS_CENTERNET_DCN`, else `"auto"`: `"xla"` under JAX (with
            static shapes), the reference elsewhere. `"xla"` and `"fused"`
            fall back to the reference on other backends.

    Returns:
        Tensor (B, Ho, Wo, Cout) in the dtype of `kernel`.

    Example:

    >>> import numpy as np
    >>> x = np.random.rand(1, 8, 8, 4).astype("float32")
    >>> kernel = np.random.rand(3, 3, 4, 6).astype("float32")
    >>> offsets = np.zeros((1, 8, 8, 18), "float32")
    >>> mask = np.ones((1, 8, 8, 9), "float32")
    >>> y = deform_conv2d(x, offsets, mask, kernel)  # == a plain 3x3 conv
    >>> tuple(y.shape)
    (1, 8, 8, 6)
    """
    strides, padding, dilation = conv_geometry(strides, padding, dilation)
    x_shape = _static_shape(x)
    out_h, out_w = validate_deform_conv_args(
        x_shape, _static_shape(offsets), _static_shape(mask),
        _static_shape(kernel), None if bias is None else _static_shape(bias),
        strides, padding, dilation,
    )
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"`chunk_rows` must be >= 1; received {chunk_rows}.")
    implementation = resolve_implementation(
        (x_shape, _static_shape(offsets), _static_shape(mask)), implementation
    )
    if implementation == "xla":
        from keras_centernet.ops import deform_conv_xla

        return deform_conv_xla.deform_conv2d(
            x, offsets, mask, kernel, bias, strides=strides, padding=padding,
            dilation=dilation,
        )
    if implementation == "fused":
        from keras_centernet.ops import deform_conv_jax

        return deform_conv_jax.deform_conv2d(
            x, offsets, mask, kernel, bias, strides=strides, padding=padding,
            dilation=dilation,
        )
    kh, kw, cin, cout = _static_shape(kernel)
    dynamic_shape = ops.shape(x)
    # Unknown (graph-mode) sizes are read at run time; chunking needs them static.
    height = x_shape[1] if x_shape[1] is not None else dynamic_shape[1]
    width = x_shape[2] if x_shape[2] is not None else dynamic_shape[2]
    if out_h is None or out_w is None:
        chunk_rows = None
        out_h = (height + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // strides[0] + 1
        out_w = (width + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // strides[1] + 1
    compute_dtype = keras.backend.standardize_dtype(kernel.dtype)

    x32 = ops.pad(ops.cast(x, "float32"), [[0, 0], [1, 1], [1, 1], [0, 0]])
    offsets = ops.cast(offsets, "float32")
    mask = ops.cast(mask, "float32")
    kernel_matrix = ops.reshape(kernel, (kh * kw * cin, cout))

    if chunk_rows is None or chunk_rows >= out_h:
        row_chunks = [(0, out_h)]
    else:
        row_chunks = [
            (start, min(chunk_rows, out_h - start))
            for start in range(0, out_h, chunk_rows)
        ]
    outputs = []
    for row_start, chunk in row_chunks:
        columns = _sample_columns(
            x32, offsets, mask, row_start, chunk, out_w, height, width,
            (kh, kw), strides, padding, dilation,
        )
        columns = ops.cast(
            ops.reshape(columns, (-1, chunk, out_w, kh * kw * cin)),
            compute_dtype,
        )
        outputs.append(ops.matmul(columns, kernel_matrix))
    y = outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=1)
    if bias is not None:
        y = y + ops.cast(bias, compute_dtype)
    return y


def deform_conv2d_column_bytes(batch, out_h, out_w, kernel_size, in_channels,
                               chunk_rows=None):
    """Peak bytes of the float32 sampled columns of one `deform_conv2d` call."""
    kh, kw = _pair(kernel_size, "kernel_size")
    rows = out_h if chunk_rows is None else min(chunk_rows, out_h)
    return 4 * batch * rows * out_w * kh * kw * in_channels


def auto_chunk_rows(batch, out_h, out_w, kernel_size, in_channels,
                    max_bytes=256 * 2**20):
    """Largest row chunk whose sampled columns stay under `max_bytes`."""
    per_row = deform_conv2d_column_bytes(batch, 1, out_w, kernel_size, in_channels)
    rows = max(1, int(math.floor(max_bytes / max(per_row, 1))))
    return None if rows >= out_h else rows
