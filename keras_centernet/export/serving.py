"""The functions an exported CenterNet serves, traced with `tf.function`.

TensorFlow-only code (DESIGN.md, principle 1): the encoded-image signature
decodes JPEG/PNG bytes and letterboxes them with TensorFlow ops.
"""

import tensorflow as tf

from keras_centernet.data.augment import warp_affine
from keras_centernet.data.decode import decode_image

DETECTION_KEYS = ("boxes", "scores", "labels", "num_detections")


def takes_calibration(model):
    """Whether `model.detect` takes a camera `calibration` (a `CenterNet3D`)."""
    from keras_centernet.models.centernet_3d import CenterNet3D

    return isinstance(model, CenterNet3D)


def detection_function(model, with_calibration=False):
    """`images (B, H, W, 3) float32 0..255 -> DESIGN.md's detection dict`, as `model.predict`.

    With it, as float32, every per-detection value a model's `detect` returns
    beyond those: `embeddings` `(B, K, D)` of a re-identification head,
    `keypoints` `(B, K, J, 2)` of a `CenterNetPose` (input pixels), a
    `CenterNet3D`'s `alpha`, `depth`, `dimensions` `(B, K, 3)`, `locations`
    `(B, K, 3)`, `rotation_y` and `centers` `(B, K, 2)`. With
    `with_calibration` (3D models), the function
    takes `(images, calibration)`, `calibration` `(B, 3, 4)` the camera
    projection in input pixels; without, a 3D model uses its stored
    `model.calibration`.
    """

    def detect(images, calibration=None):
        if with_calibration:
            detections = model.detect(images, calibration)
        else:
            detections = model.detect(images)
        outputs = {
            "boxes": tf.cast(detections["boxes"], tf.float32),
            "scores": tf.cast(detections["scores"], tf.float32),
            "labels": tf.cast(detections["labels"], tf.int32),
            "num_detections": tf.cast(detections["num_detections"], tf.int32),
        }
        for key, value in detections.items():  # `reid` heads, pose and 3D models
            if key not in outputs:
                outputs[key] = tf.cast(value, tf.float32)
        return outputs

    return detect


def calibrated_function(model, input_size):
    """`(images, calibration) -> detections`: a 3D model's detection with a camera per image.

    `calibration` `(B, 3, 4)` float32 is the projection in the input
    images' pixels; its shape is checked in the graph, and the images' as
    `with_input_check` does.
    """
    detect = detection_function(model, with_calibration=True)

    def detect_calibrated(images, calibration):
        shape = tf.shape(calibration)
        ok = tf.logical_and(
            tf.equal(tf.size(shape), 3),
            tf.reduce_all(tf.equal(tf.pad(shape, [[0, 3]])[:3], [tf.shape(images)[0], 3, 4])),
        )
        message = ["Signature 'serving_calibrated' takes `calibration` float32 (batch, 3, 4), "
                   "one projection per image; received shape", shape]
        with tf.control_dependencies([tf.debugging.Assert(ok, message)]):
            calibration = tf.identity(calibration)
        return detect(images, calibration)

    return with_input_check(detect_calibrated, input_size, model.size_divisor, "serving_calibrated")


def with_input_check(function, input_size, divisor, name):
    """`function` preceded by an in-graph check of the images' shape.

    A SavedModel signature does not check the shape it is fed against the
    one it declares (only the dtype): a wrong shape would fail deep inside
    the network, or not at all. The check fails with the signature's own
    message instead. With `input_size=None` it checks the rank, the 3
    channels, and height and width against the network's stride.
    """

    def checked(images, *other_inputs):
        shape = tf.shape(images)
        # Padding first makes the comparison valid for any rank.
        dims = tf.pad(shape, [[0, 4]])[1:4]
        ok = tf.equal(tf.size(shape), 4)
        if input_size is None:
            expected = f"(batch, height, width, 3) with height and width multiples of {divisor}"
            ok = tf.logical_and(ok, tf.equal(dims[2], 3))
            ok = tf.logical_and(ok, tf.reduce_all(tf.equal(dims[:2] % divisor, 0)))
        else:
            expected = f"(batch, {input_size[0]}, {input_size[1]}, 3)"
            ok = tf.logical_and(
                ok, tf.reduce_all(tf.equal(dims, tf.constant(tuple(input_size) + (3,))))
            )
        check = tf.debugging.Assert(
            ok,
            [f"Signature {name!r} takes `images` float32 {expected}, RGB 0..255; received shape",
             shape],
        )
        with tf.control_dependencies([check]):
            images = tf.identity(images)
        return function(images, *other_inputs)

    return checked


def raw_maps_function(model):
    """`images -> the network's maps` of the last stack, at stride 4, before decoding.

    Every head of the model's inference output: for a `CenterNet`,
    `heatmap` (logits), `size` and `offset`; for a `CenterNetTriplets`, its
    corner and centre heatmaps, embeddings and offsets.
    """

    def raw_maps(images):
        outputs = model(images, training=False)
        return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}

    return raw_maps


def letterbox_matrix(height, width, output_size):
    """The affine map (2, 3) that scales an image to fit `output_size` and centres it.

    For a square output it is the official evaluation transform (`fix_res`:
    the longer side fills the output, centred).
    """
    output_height, output_width = output_size
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    factor = tf.minimum(output_height / height, output_width / width)
    return tf.stack(
        [
            tf.stack([factor, 0.0, (output_width - factor * width) / 2.0]),
            tf.stack([0.0, factor, (output_height - factor * height) / 2.0]),
        ]
    )


def encoded_image_function(model, input_size):
    """`encoded (B,) string JPEG/PNG -> detections in each original image's pixels`.

    Each image is decoded to RGB, letterboxed into `input_size` (bilinear,
    zero padding) and detected; the boxes are mapped back through the
    inverse of the letterbox (a pose model's joints and a 3D model's
    projected centres too). A 3D model's stored `calibration` is taken as
    the camera of the original images: it is carried through each
    letterbox, so `locations` are the original camera's. Blanked
    detections stay 0.
    """
    with_calibration = takes_calibration(model)
    detect = detection_function(model, with_calibration=with_calibration)
    input_size = tuple(int(s) for s in input_size)

    def prepare(contents):
        image = decode_image(contents)
        shape = tf.shape(image)
        matrix = letterbox_matrix(shape[0], shape[1], input_size)
        return warp_affine(image, matrix, input_size), matrix

    def detect_encoded(encoded):
        images, matrices = tf.map_fn(
            prepare,
            encoded,
            fn_output_signature=(
                tf.TensorSpec(input_size + (3,), tf.float32),
                tf.TensorSpec((2, 3), tf.float32),
            ),
        )
        if with_calibration:
            # P_input = A @ P_original, A the letterbox as a 3x3 matrix.
            rows = tf.concat([matrices, tf.tile([[[0.0, 0.0, 1.0]]], [tf.shape(matrices)[0], 1, 1])], 1)
            calibration = tf.matmul(rows, tf.constant(model.calibration, tf.float32)[None])
            detections = detect(images, calibration)
        else:
            detections = detect(images)
        scale = tf.stack([matrices[:, 0, 0], matrices[:, 1, 1]] * 2, axis=-1)[:, None, :]
        shift = tf.stack([matrices[:, 0, 2], matrices[:, 1, 2]] * 2, axis=-1)[:, None, :]
        boxes = (detections["boxes"] - shift) / scale
        count = tf.shape(boxes)[1]
        keep = tf.range(count)[None, :] < detections["num_detections"][:, None]
        detections["boxes"] = tf.where(keep[..., None], boxes, 0.0)
        if "keypoints" in detections:  # (B, K, J, 2) joints, mapped as the boxes' corners
            joints = (detections["keypoints"] - shift[:, :, None, :2]) / scale[:, :, None, :2]
            detections["keypoints"] = tf.where(keep[..., None, None], joints, 0.0)
        if "centers" in detections:  # (B, K, 2), a 3D model's projected centres
            centers = (detections["centers"] - shift[..., :2]) / scale[..., :2]
            detections["centers"] = tf.where(keep[..., None], centers, 0.0)
        return detections

    return detect_encoded
