"""The functions an exported CenterNet serves, traced with `tf.function`.

TensorFlow-only code (DESIGN.md, principle 1): the encoded-image signature
decodes JPEG/PNG bytes and letterboxes them with TensorFlow ops.
"""

import tensorflow as tf

from keras_centernet.data.augment import warp_affine
from keras_centernet.data.decode import decode_image

DETECTION_KEYS = ("boxes", "scores", "labels", "num_detections")
EXTRA_KEYS = ("embeddings", "keypoints")


def detection_function(model):
    """`images (B, H, W, 3) float32 0..255 -> DESIGN.md's detection dict`, as `model.predict`.

    With it, the per-detection extras a model's `detect` returns: `embeddings`
    `(B, K, D)` of a re-identification head, `keypoints` `(B, K, J, 2)` of a
    `CenterNetPose` (input pixels).
    """

    def detect(images):
        detections = model.detect(images)
        outputs = {
            "boxes": tf.cast(detections["boxes"], tf.float32),
            "scores": tf.cast(detections["scores"], tf.float32),
            "labels": tf.cast(detections["labels"], tf.int32),
            "num_detections": tf.cast(detections["num_detections"], tf.int32),
        }
        for key in EXTRA_KEYS:  # `reid` heads (tracking), pose models
            if key in detections:
                outputs[key] = tf.cast(detections[key], tf.float32)
        return outputs

    return detect


def with_input_check(function, input_size, divisor, name):
    """`function` preceded by an in-graph check of the images' shape.

    A SavedModel signature does not check the shape it is fed against the
    one it declares (only the dtype): a wrong shape would fail deep inside
    the network, or not at all. The check fails with the signature's own
    message instead. With `input_size=None` it checks the rank, the 3
    channels, and height and width against the network's stride.
    """

    def checked(images):
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
        return function(images)

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
    inverse of the letterbox (a pose model's joints too). Blanked detections
    stay 0.
    """
    detect = detection_function(model)
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
        return detections

    return detect_encoded
