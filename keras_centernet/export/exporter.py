"""`export_model`: a CenterNet to a SavedModel, a TFLite (LiteRT) flat buffer or an ONNX file.

TensorFlow-only code (DESIGN.md, principle 1): the model is traced with
`tf.function` under the TensorFlow backend and converted with TensorFlow's
TFLite converter or `tf2onnx`.
"""

import glob
import logging
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_centernet.export.serving import calibrated_function
from keras_centernet.export.serving import detection_function
from keras_centernet.export.serving import encoded_image_function
from keras_centernet.export.serving import raw_maps_function
from keras_centernet.export.serving import takes_calibration
from keras_centernet.export.serving import with_input_check

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = (None, "float16", "int8")
FILE_NAMES = {
    ("tflite", None): "model.tflite",
    ("tflite", "float16"): "model_float16.tflite",
    ("tflite", "int8"): "model_int8.tflite",
    ("onnx", None): "model.onnx",
}
DEFAULT_ONNX_OPSET = 17

logger = logging.getLogger(__name__)


def default_export_dir(model):
    """`saved_models/<preset>/`: the preset's name (`model.preset`) or else the model's.

    Args:
        model: a `CenterNet` (or any Keras model).

    Returns:
        str, the folder `export_model` writes into when given no path.

    Example:

    >>> default_export_dir(kc.CenterNet.from_preset("resnet18_dcn", num_classes=3))
    'saved_models/resnet18_dcn'
    """
    return os.path.join("saved_models", getattr(model, "preset", None) or model.name)


def export_model(
    model,
    path=None,
    format="saved_model",
    input_size=(512, 512),
    quantization=None,
    representative_dataset=None,
    num_calibration_images=32,
    batch_size=None,
    opset=DEFAULT_ONNX_OPSET,
):
    """Exports a CenterNet with its decoding inside, for serving and mobile.

    Every artifact takes float32 RGB images with values 0..255 (normalised
    inside, as the Keras model) and returns DESIGN.md's detection dict
    `{"boxes" (B, K, 4) xyxy input pixels, "scores" (B, K), "labels" (B, K)
    int32, "num_detections" (B,) int32}`, decoded as `model.predict` does
    (with the model's `score_threshold`, `max_detections` and test-time
    augmentation).

    - `"saved_model"`: a folder with three signatures. `serving_default`
      takes `images` `(B, H, W, 3)` float32; `serving_encoded_images` takes
      `encoded` `(B,)` strings (JPEG or PNG bytes of any size), letterboxes
      each into `input_size` inside the graph and returns boxes in the
      original image's pixels; `serving_raw_maps` returns the last stack's
      `heatmap` logits, `size` and `offset` maps. With `input_size=None`
      the float signatures take any height and width that are multiples
      of `model.size_divisor` (checked in the graph) and there is no
      encoded-image signature.
    - `"tflite"`: one flat buffer of the fixed shape `(batch_size, H, W,
      3)` with the detection signature, built-in TFLite ops only (no Flex
      ops; the deformable convolution lowers to GATHER, FLOOR, MUL).
      `quantization="float16"` stores float16 weights;
      `quantization="int8"` is full-integer post-training quantisation
      calibrated on `representative_dataset` (float input and outputs
      kept; decoding ops without int8 kernels stay float).
    - `"onnx"`: one ONNX file (through `tf2onnx`, opset `opset`) with
      input `images` and the detection outputs (with `embeddings` of a
      re-identification head, `keypoints` of a pose model), for ONNX Runtime.

    A `CenterNet3D`'s artifacts return its 3D objects too (`alpha`,
    `depth`, `dimensions`, `locations`, `rotation_y`, `centers`, as its
    `predict`). Its SavedModel and TFLite file have a second detection
    signature, `serving_calibrated`, taking `images` and `calibration`
    `(B, 3, 4)` float32 (each image's camera projection in input pixels;
    `serving_default` uses the stored `model.calibration`); its ONNX file
    takes both inputs. The encoded-image signature takes the stored
    calibration as the original images' camera.

    Args:
        model: a built `keras_centernet.CenterNet`.
        path: str. A folder (the artifact gets a standard name inside:
            `model.tflite`, `model_float16.tflite`, `model_int8.tflite`,
            `model.onnx`; a SavedModel is written into the folder itself)
            or a file name ending in `.tflite` / `.onnx`. Defaults to
            `saved_models/<preset>/`.
        format: `"saved_model"`, `"tflite"` or `"onnx"`. Defaults to
            `"saved_model"`.
        input_size: `(height, width)`, multiples of `model.size_divisor`,
            or `None` (dynamic; SavedModel and ONNX only). Defaults to
            `(512, 512)`.
        quantization: `None`, `"float16"` or `"int8"` (TFLite only).
            Defaults to `None`.
        representative_dataset: the int8 calibration images: a
            `tf.data.Dataset`, an iterable, or a callable returning one,
            of images `(H, W, 3)` / `(N, H, W, 3)` or `(images, targets)`
            batches. Defaults to `num_calibration_images` images of
            `kc.data.synthetic`.
        num_calibration_images: int. Calibration images taken. Defaults
            to 32.
        batch_size: int or `None`. The batch dimension of the artifact:
            `None` is dynamic for SavedModel and ONNX and 1 for TFLite.
            Defaults to `None`.
        opset: int. ONNX opset. Defaults to 17.

    Returns:
        str: the path of the artifact (a folder for a SavedModel, a file
        otherwise).

    Example:

    >>> model = kc.CenterNet.from_preset("resnet18_dcn", num_classes=80)
    >>> path = export_model(model, "saved_models/resnet18_dcn", format="tflite",
    ...                     input_size=(512, 512), quantization="int8")
    >>> interpreter = tf.lite.Interpreter(model_path=path)
    >>> detect = interpreter.get_signature_runner()
    >>> detections = detect(images=np.zeros((1, 512, 512, 3), "float32"))
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {FORMATS}.")
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Unknown quantization {quantization!r}; choose one of {QUANTIZATIONS}."
        )
    if quantization is not None and format != "tflite":
        raise ValueError(
            f"Quantization {quantization!r} is for TFLite only; the {format!r} export "
            "keeps float32 (use quantization=None)."
        )
    _check_model(model)
    input_size = _check_input_size(model, input_size, format)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive int or None; received {batch_size!r}.")
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "Export traces the model with TensorFlow: set KERAS_BACKEND=tensorflow "
            f"(the backend is {keras.backend.backend()!r})."
        )
    path = _artifact_path(model, path, format, quantization)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    if format == "saved_model":
        _export_saved_model(model, path, input_size, batch_size)
    elif format == "tflite":
        _export_tflite(model, path, input_size, batch_size or 1, quantization,
                       representative_dataset, num_calibration_images)
    else:
        _export_onnx(model, path, input_size, batch_size, opset)
    return path


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a keras_centernet.CenterNet; received {type(model).__name__}."
        )
    if not model.built or not model.weights:
        raise ValueError(
            "The model must be a built CenterNet (its weights created, e.g. by "
            "`CenterNet.from_preset(...)`, `keras.saving.load_model` or calling it on a "
            f"batch of images); this {type(model).__name__} was never built."
        )
    if not hasattr(model, "detect") or not hasattr(model, "size_divisor"):
        raise ValueError(
            f"`model` must be a keras_centernet.CenterNet; received {type(model).__name__}."
        )


def _check_input_size(model, input_size, format):
    if input_size is None:
        if format == "tflite":
            raise ValueError(
                "A TFLite model has a fixed input size: pass `input_size=(height, width)`, "
                f"multiples of {model.size_divisor}."
            )
        return None
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    input_size = tuple(input_size)
    if len(input_size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in input_size):
        raise ValueError(
            f"`input_size` must be (height, width), two positive ints; received {input_size!r}."
        )
    divisor = model.size_divisor
    if any(s % divisor for s in input_size):
        raise ValueError(
            f"`input_size` {input_size} is not a multiple of {divisor}, the stride of this "
            f"model (`model.size_divisor`); use e.g. "
            f"{tuple(max(divisor, round(s / divisor) * divisor) for s in input_size)}."
        )
    return tuple(int(s) for s in input_size)


def _artifact_path(model, path, format, quantization):
    path = os.fspath(path) if path is not None else default_export_dir(model)
    if format == "saved_model":
        return path
    name = FILE_NAMES[(format, quantization)]
    if path.endswith("." + format):
        return path
    return os.path.join(path, name)


def _image_spec(input_size, batch_size):
    height, width = input_size if input_size is not None else (None, None)
    return tf.TensorSpec((batch_size, height, width, 3), tf.float32, name="images")


def _calibration_spec(batch_size):
    return tf.TensorSpec((batch_size, 3, 4), tf.float32, name="calibration")


def _detection_endpoints(model, input_size, batch_size, checked=True):
    """`serving_default` (and a 3D model's `serving_calibrated`): name -> (function, specs).

    With `checked`, the inputs' shapes are checked in the graph (a SavedModel
    signature does not check them); a fixed-shape TFLite or ONNX model
    checks them itself (and TFLite has no built-in Assert).
    """
    image_spec = _image_spec(input_size, batch_size)
    detect = detection_function(model)
    if checked:
        detect = with_input_check(detect, input_size, model.size_divisor, "serving_default")
    endpoints = {"serving_default": (detect, [image_spec])}
    if takes_calibration(model):
        calibrated = (calibrated_function(model, input_size) if checked
                      else detection_function(model, with_calibration=True))
        endpoints["serving_calibrated"] = (calibrated, [image_spec, _calibration_spec(batch_size)])
    return endpoints


def _export_saved_model(model, path, input_size, batch_size):
    image_spec = _image_spec(input_size, batch_size)
    divisor = model.size_divisor
    endpoints = _detection_endpoints(model, input_size, batch_size)
    if input_size is not None:
        endpoints["serving_encoded_images"] = (
            encoded_image_function(model, input_size),
            [tf.TensorSpec((batch_size,), tf.string, name="encoded")],
        )
    endpoints["serving_raw_maps"] = (
        with_input_check(raw_maps_function(model), input_size, divisor, "serving_raw_maps"),
        [image_spec],
    )
    _write_saved_model(model, path, endpoints)


def _write_saved_model(model, path, endpoints):
    """A SavedModel of `endpoints` (name -> (function, input specs)), each a signature.

    The module tracks the TensorFlow variables behind the Keras ones, so
    each weight is stored once (Keras' `ExportArchive` stores them twice).
    """
    module = tf.Module()
    module.model_variables = [variable.value for variable in model.variables]
    signatures = {}
    for name, (function, specs) in endpoints.items():
        traced = tf.function(function, input_signature=list(specs), autograph=False)
        setattr(module, name, traced)
        signatures[name] = traced
    tf.saved_model.save(module, path, signatures=signatures)


def _export_tflite(model, path, input_size, batch_size, quantization,
                   representative_dataset, num_calibration_images):
    # Through a SavedModel of the one fixed-shape signature, as Keras' own
    # LiteRT export: the converter freezes the variables and keeps the
    # signature's input and output names.
    with tempfile.TemporaryDirectory() as folder:
        endpoints = _detection_endpoints(model, input_size, batch_size, checked=False)
        _write_saved_model(model, folder, endpoints)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=list(endpoints))
        camera = (np.tile(np.asarray(model.calibration, np.float32)[None], (batch_size, 1, 1))
                  if "serving_calibrated" in endpoints else None)
        flat_buffer = _convert(converter, quantization, representative_dataset, input_size,
                               batch_size, num_calibration_images, camera)
    flex = [name for name in tflite_op_names(flat_buffer) if name.startswith("Flex")]
    if flex:
        raise RuntimeError(f"The TFLite model needs Flex ops {flex}: not built-in only.")
    with open(path, "wb") as file:
        file.write(flat_buffer)


def _convert(converter, quantization, representative_dataset, input_size, batch_size,
             num_calibration_images, camera=None):
    # Built-in ops only: a graph that needs a Flex (TensorFlow) op fails here.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # int8 kernels where they exist; the decoding's top-K, gathers and
        # comparisons fall back to float built-ins.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        images = list(_calibration_batches(
            representative_dataset, input_size, batch_size, num_calibration_images
        ))
        if camera is None:
            converter.representative_dataset = lambda: ([batch] for batch in images)
        else:  # two signatures: the calibrator needs samples of each, by name
            converter.representative_dataset = lambda: (
                sample for batch in images for sample in (
                    ("serving_default", {"images": batch}),
                    ("serving_calibrated", {"images": batch, "calibration": camera}),
                )
            )
    return converter.convert()


def _calibration_batches(representative_dataset, input_size, batch_size, num_images):
    """Float32 batches `(batch_size, H, W, 3)` of calibration images."""
    if representative_dataset is None:
        from keras_centernet.data import synthetic

        representative_dataset = synthetic(
            num_images=num_images, image_size=input_size, batch_size=1, training=False, seed=0
        )
    source = representative_dataset() if callable(representative_dataset) else representative_dataset
    expected = tuple(input_size) + (3,)
    pending, taken = [], 0
    for element in source:
        images = element[0] if isinstance(element, (tuple, list)) else element
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(
                f"Calibration images must have shape (N, {expected[0]}, {expected[1]}, 3) "
                f"(the export's input size); received shape {images.shape}."
            )
        for image in images:
            if taken >= num_images:
                break
            pending.append(image)
            taken += 1
            if len(pending) == batch_size:
                yield np.stack(pending)
                pending = []
        if taken >= num_images:
            break
    if taken == 0:
        raise ValueError("The representative dataset gave no images.")


def tflite_op_names(model):
    """Sorted names of the operators of a TFLite model (path or flat buffer bytes).

    What the export tests use to prove an artifact needs no Flex (TensorFlow)
    or custom ops.

    Args:
        model: str or path of a `.tflite` file, or its bytes.

    Returns:
        sorted list of str, e.g. `["CONV_2D", "GATHER", ...]`.

    Example:

    >>> path = export_model(model, "saved_models/dla34.tflite", format="tflite")
    >>> [op for op in tflite_op_names(path) if op.startswith("Flex")]
    []
    """
    if isinstance(model, (bytes, bytearray)):
        interpreter = tf.lite.Interpreter(model_content=bytes(model))
    else:
        interpreter = tf.lite.Interpreter(model_path=os.fspath(model))
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def _export_onnx(model, path, input_size, batch_size, opset):
    try:
        import tf2onnx
    except ImportError as error:
        raise ImportError(
            "ONNX export needs tf2onnx and onnx: pip install 'keras-centernet[export]'."
        ) from error
    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    # One graph: a 3D model's takes `images` and `calibration`. A dynamic
    # input size is checked in the graph; a fixed one by ONNX Runtime.
    endpoints = _detection_endpoints(model, input_size, batch_size, checked=input_size is None)
    detect, specs = endpoints.get("serving_calibrated", endpoints["serving_default"])
    function = tf.function(detect, autograph=False)
    # tf2onnx still uses NumPy 1 names; Keras' own ONNX export patches them the same way.
    patch_tf2onnx()
    # tf2onnx names the outputs after the keys of the returned dict.
    model_proto = _tf2onnx_convert(tf2onnx, function, specs, opset, catch_errors=False)
    with open(path, "wb") as file:
        file.write(model_proto.SerializeToString())


def _tf2onnx_convert(tf2onnx, function, specs, opset, catch_errors):
    """`tf2onnx.convert.from_function`; first without its per-optimiser graph copies.

    Guarding each ONNX graph optimiser against failure, tf2onnx deep-copies
    the graph, weights included, before every one: over half of the time
    of a conversion. Without the guard a failing optimiser raises; then the
    conversion runs again with it.

    tf2onnx (1.16) reads the switch as `"TF2ONNX_CATCH_ERRORS" in os.environ`
    and then compares the variable's *name*, not its value, with "TRUE": a
    set variable always means "do not catch". So errors are caught only with
    the variable unset.
    """
    variable = tf2onnx.constants.ENV_TF2ONNX_CATCH_ERRORS
    previous = os.environ.pop(variable, None)
    if not catch_errors:
        os.environ[variable] = "FALSE"
    try:
        return tf2onnx.convert.from_function(function, input_signature=list(specs), opset=opset)[0]
    except Exception:
        if catch_errors:
            raise
        logger.warning("An ONNX optimiser failed; converting again with optimiser errors caught.")
    finally:
        os.environ.pop(variable, None)
        if previous is not None:
            os.environ[variable] = previous
    return _tf2onnx_convert(tf2onnx, function, specs, opset, catch_errors=True)


def add_cli_arguments(parser):
    """Adds the arguments of `centernet export` to an `argparse` parser.

    Args:
        parser: `argparse.ArgumentParser` (the `export` sub-command's).

    Returns:
        the same parser.

    Example:

    >>> args = add_cli_arguments(argparse.ArgumentParser()).parse_args(["dla34", "--format", "onnx"])
    >>> run_cli(args)
    'saved_models/dla34/model.onnx'
    """
    parser.add_argument("model", help="a trained model (.keras file) or a preset name (random weights)")
    parser.add_argument("--format", choices=FORMATS, default="saved_model")
    parser.add_argument("--input-size", type=int, nargs="+", default=[512, 512],
                        metavar="SIZE", help="height [width], multiples of the model's stride")
    parser.add_argument("--quantization", choices=["none", "float16", "int8"], default="none",
                        help="TFLite only")
    parser.add_argument("--calibration-images", default=None,
                        help="folder of JPEG/PNG images for int8 calibration (default: synthetic)")
    parser.add_argument("--num-calibration-images", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=80, help="classes of a preset model")
    parser.add_argument("--output", default=None, help="folder or file (default: saved_models/<preset>/)")
    return parser


def run_cli(args):
    """Runs `centernet export` with the parsed `args`; returns the artifact's path.

    Args:
        args: `argparse.Namespace` from a parser set up by
            `add_cli_arguments`. `args.model` is a `.keras` file or a preset
            name (then random weights, for trying a format out).

    Returns:
        str, the path of the artifact.

    Example:

    >>> run_cli(add_cli_arguments(argparse.ArgumentParser()).parse_args(["runs/dla34/best.keras"]))
    'saved_models/best'
    """
    from keras_centernet.models import CenterNet
    from keras_centernet.models import CenterNetTriplets
    from keras_centernet.models.centernet_triplets import PRESETS as TRIPLET_PRESETS

    if os.path.exists(args.model):
        model = keras.saving.load_model(args.model)
        default_name = os.path.splitext(os.path.basename(args.model))[0]
    else:
        family = CenterNetTriplets if args.model in TRIPLET_PRESETS else CenterNet
        model = family.from_preset(args.model, num_classes=args.num_classes)
        default_name = args.model
    size = args.input_size
    input_size = (size[0], size[0]) if len(size) == 1 else tuple(size[:2])
    quantization = None if args.quantization == "none" else args.quantization
    representative = None
    if args.calibration_images:
        representative = _folder_images(args.calibration_images, input_size)
    output = args.output or os.path.join("saved_models", default_name)
    return export_model(
        model, output, format=args.format, input_size=input_size, quantization=quantization,
        representative_dataset=representative, num_calibration_images=args.num_calibration_images,
    )


def _folder_images(folder, input_size):
    """Calibration images from a folder: decoded and letterboxed to `input_size`."""
    from keras_centernet.data.augment import warp_affine
    from keras_centernet.data.decode import decode_image
    from keras_centernet.export.serving import letterbox_matrix

    files = sorted(
        f for pattern in ("*.jpg", "*.jpeg", "*.png", "*.JPG", "*.JPEG", "*.PNG")
        for f in glob.glob(os.path.join(folder, pattern))
    )
    if not files:
        raise ValueError(f"No JPEG or PNG images in {folder!r}.")

    def images():
        for name in files:
            image = decode_image(tf.io.read_file(name))
            shape = tf.shape(image)
            yield warp_affine(image, letterbox_matrix(shape[0], shape[1], input_size), input_size).numpy()

    return images
