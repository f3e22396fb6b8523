"""An int8 TFLite model still finds the objects of a synthetic image.

Random weights detect nothing, so the detector here is set by hand: a red
and a green class, found by their colour. Its backbone is a stride-4 average
pool and a deformable convolution (so the int8 graph quantises the DCN's
sampling too); heatmap logit of class k = 4 * relu(blur(colour k) + 0.6) - 3,
size 5 map pixels (the 20-pixel squares of the scene) and offset 0.5
everywhere. Its expected detections are the drawn squares themselves, not
outputs of our code.
"""

import keras
import numpy as np

import keras_centernet as kc
from tests.export.detections import run_tflite

SIZE = 128
SQUARE = 20
# (x, y, label) of the squares' top-left corners, multiples of the stride.
OBJECTS = [(8, 12, 0), (72, 20, 1), (36, 76, 1), (92, 92, 0)]


def scene(seed, objects=OBJECTS):
    """A dark noisy image with 20x20 squares: red for label 0, green for label 1."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 30, (SIZE, SIZE, 3)).astype(np.float32)
    for x, y, label in objects:
        image[y:y + SQUARE, x:x + SQUARE] = 0.0
        image[y:y + SQUARE, x:x + SQUARE, label] = 255.0
    return image


def colour_detector():
    keras.utils.set_random_seed(0)
    deformable = kc.layers.DeformableConv2D(2, 3, name="colour_blur")
    backbone = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.AveragePooling2D(4), deformable]
    )
    model = kc.CenterNet(backbone, num_classes=2, head_channels=2, max_detections=10)
    blur = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32) / 16
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    kernel[:, :, 0, 0] = blur  # red -> channel 0 (times the mask, sigmoid(0) = 0.5)
    kernel[:, :, 1, 1] = blur  # green -> channel 1
    deformable.kernel.assign(kernel)
    # Offsets of 0.25 pixel: the sampling interpolates instead of copying.
    deformable.offset_bias.assign(np.concatenate([np.full(18, 0.25), np.zeros(9)]).astype(np.float32))
    heads = model.stack_heads(0)
    hidden = np.zeros((3, 3, 2, 2), np.float32)
    hidden[:, :, 0, 0] = blur
    hidden[:, :, 1, 1] = blur
    heads["heatmap"].hidden.kernel.assign(hidden)
    heads["heatmap"].hidden.bias.assign(np.full(2, 0.6, np.float32))
    heads["heatmap"].output_conv.kernel.assign(4 * np.eye(2, dtype=np.float32)[None, None])
    heads["heatmap"].output_conv.bias.assign(np.full(2, -3.0, np.float32))
    for name, value in (("size", SQUARE / 4), ("offset", 0.5)):
        for layer in (heads[name].hidden, heads[name].output_conv):
            layer.kernel.assign(np.zeros(layer.kernel.shape, np.float32))
            layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
        heads[name].output_conv.bias.assign(np.full(2, value, np.float32))
    return model


def iou(a, b):
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    return inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter)


def assert_finds_objects(detections, min_iou, min_score):
    boxes, scores, labels = detections["boxes"][0], detections["scores"][0], detections["labels"][0]
    found = []
    for x, y, label in OBJECTS:
        truth = np.array([x, y, x + SQUARE, y + SQUARE], np.float32)
        overlaps = np.array([iou(truth, box) if lab == label else 0.0 for box, lab in zip(boxes, labels)])
        best = int(np.argmax(overlaps))
        assert overlaps[best] >= min_iou and scores[best] >= min_score, (
            f"object {(x, y, label)}: best IoU {overlaps[best]:.2f} with score {scores[best]:.3f}"
        )
        found.append(best)
    # The objects are the top detections; the background scores far lower.
    assert sorted(found) == list(range(len(OBJECTS))), found
    assert scores[len(OBJECTS)] < 0.5 * scores[len(OBJECTS) - 1]


def test_int8_tflite_finds_the_objects(tmp_path):
    model = colour_detector()
    image = scene(seed=0)
    assert_finds_objects(model.predict(image[None], verbose=0), min_iou=0.99, min_score=0.9)

    # Calibrated on other scenes of the same kind (a user's representative set).
    calibration = [scene(seed, [(4 * s % 100, 4 * (3 * s % 25), s % 2) for s in range(seed, seed + 3)])
                   for seed in range(1, 9)]
    path = kc.export.export_model(model, str(tmp_path), format="tflite", input_size=(SIZE, SIZE),
                                  quantization="int8", representative_dataset=calibration)
    ops = kc.export.tflite_op_names(path)
    assert "QUANTIZE" in ops and not [op for op in ops if op.startswith("Flex")]
    detections = run_tflite(path, image[None])
    assert_finds_objects(detections, min_iou=0.8, min_score=0.7)
