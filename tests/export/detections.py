"""Helpers of the export tests: running each artifact and comparing detection dicts."""

import numpy as np

DETECTION_KEYS = ("boxes", "scores", "labels", "num_detections")


def tiny_resnet_parts():
    """`backbone` and `neck` of the small network the pose and 3D export tests build.

    A width-4 ResNet-18 and a plain (DCN-free) up-convolution neck: pass as
    `CenterNetX(**tiny_resnet_parts(), ...)` after seeding.
    """
    import keras_centernet as kc

    return {
        "backbone": kc.backbones.ResNetBackbone(depth=18, width=4),
        "neck": kc.necks.UpConvNeck(filters=(8, 8, 8), use_dcn=False),
    }


def letterboxed_strip(image):
    """Rows 16-47 of a 64x64 `image` as PNG bytes, and the 64x64 canvas the letterbox makes of them.

    The encoded-image signature letterboxes the 32x64 PNG into 64x64 at
    scale 1, pasted at y = 16: detections on the returned canvas `(1, 64,
    64, 3)`, moved up 16 px, are those of the PNG in its own pixels.
    """
    import io

    from PIL import Image

    strip = np.asarray(image[16:48]).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, "PNG")
    canvas = np.zeros((1,) + image.shape, np.float32)
    canvas[0, 16:48] = strip
    return buffer.getvalue(), canvas


def run_tflite(path, images):
    """Detections of a TFLite model (batch 1) over `images`, one image at a time."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=2)
    detect = interpreter.get_signature_runner("serving_default")
    outputs = [detect(images=image[None]) for image in images]
    return {key: np.concatenate([o[key] for o in outputs]) for key in DETECTION_KEYS}


def run_onnx(path, images, **other_inputs):
    """Outputs of an ONNX model by name, fed `images` (and e.g. a 3D model's `calibration`)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images, **other_inputs})))


def match_detections(actual, expected, score_atol, box_atol, min_matched=0.6):
    """Pairs every detection of `expected` with an equal one of `actual`; returns the worst errors.

    Detections are equal when their labels agree, their scores within
    `score_atol` and their boxes within `box_atol` pixels. Scores closer
    than `score_atol` may come in either order, so detections are matched
    as sets, not by rank; a detection scoring within `score_atol` of the
    last kept one may have changed places with one just outside the top K,
    so it need not be found.

    At least `min_matched` of the detections must be compared: a
    comparison of ties only would prove nothing.

    Returns:
        dict: `score` and `box`, the largest differences of the matched pairs.
    """
    worst = {"score": 0.0, "box": 0.0}
    matched = total = 0
    for b in range(len(expected["scores"])):
        scores, labels, boxes = (np.asarray(expected[k][b]) for k in ("scores", "labels", "boxes"))
        other = {k: np.asarray(actual[k][b]) for k in ("scores", "labels", "boxes")}
        free = np.ones(len(other["scores"]), bool)
        last = scores[-1]
        total += len(scores)
        for i in np.argsort(-scores, kind="stable"):
            if scores[i] <= last + score_atol:
                continue
            score_error = np.abs(other["scores"] - scores[i])
            box_error = np.abs(other["boxes"] - boxes[i]).max(axis=-1)
            ok = free & (other["labels"] == labels[i]) & (score_error <= score_atol) & (box_error <= box_atol)
            assert ok.any(), (
                f"image {b}: no detection like label {labels[i]}, score {scores[i]:.6f}, box {boxes[i]} "
                f"(nearest score error {score_error.min():.2e}, box error {box_error.min():.3f})"
            )
            j = np.flatnonzero(ok)[np.argmin(box_error[ok])]
            free[j] = False
            matched += 1
            worst["score"] = max(worst["score"], float(score_error[j]))
            worst["box"] = max(worst["box"], float(box_error[j]))
    assert matched >= min_matched * total, f"only {matched} of {total} detections were compared"
    return worst


def assert_detection_dict(detections, num_images, max_detections):
    """Keys, shapes and dtypes of DESIGN.md's detection dict."""
    assert set(detections) == set(DETECTION_KEYS)
    assert detections["boxes"].shape == (num_images, max_detections, 4)
    assert detections["scores"].shape == (num_images, max_detections)
    assert detections["labels"].shape == (num_images, max_detections)
    assert detections["num_detections"].shape == (num_images,)
    assert detections["labels"].dtype == np.int32 and detections["num_detections"].dtype == np.int32
    assert detections["boxes"].dtype == np.float32 and detections["scores"].dtype == np.float32


def scale_head_outputs(model, images, spreads):
    """Scales each named head's output conv so its maps vary by `std` around `mean`, as a trained model's.

    Random heads give nearly constant maps (ties everywhere): comparisons of
    artifacts would then prove nothing. `spreads` maps a head name to
    `(std, mean)` of its pre-activation output on `images`; other heads are
    left. The spread is measured with the bias at zero: DLA's random
    features are ~1e-4, below float32's step at a bias of -2.19.
    """
    from tests.test_case import to_numpy

    features = model.neck(model.backbone(model.preprocessor(images)))
    for name, head in model.stack_heads(0).items():
        if name not in spreads:
            continue
        std, mean = spreads[name]
        conv = head.output_conv
        conv.bias.assign(np.zeros(conv.bias.shape, np.float32))
        spread = to_numpy(conv(head.hidden(features))).std()
        conv.kernel.assign(to_numpy(conv.kernel) * (std / spread))
        conv.bias.assign(np.full(conv.bias.shape, mean, np.float32))


def assert_values_follow_detections(actual, expected, key, atol, per_image=None, rtol=0.0):
    """Each expected detection's `key` values (embeddings, joints) equal those of its match in `actual`.

    Detections are paired by box and score (the artifact may order ties
    differently); `per_image` limits the check to the top detections of
    each image, all valid ones by default.
    """
    for b in range(len(expected["scores"])):
        count = int(expected["num_detections"][b]) if per_image is None else per_image
        for k in np.argsort(-expected["scores"][b], kind="stable")[:count]:
            j = np.argmin(np.abs(actual["boxes"][b] - expected["boxes"][b, k]).max(-1)
                          + np.abs(actual["scores"][b] - expected["scores"][b, k]))
            np.testing.assert_allclose(actual[key][b, j], expected[key][b, k], atol=atol, rtol=rtol)
