"""The LTRB box head (TTFNet-style distances to the box sides, IoU losses) and the FairMOT re-identification head."""

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.backbones import ResNetBackbone
from keras_centernet.layers.decoder import CenterNetDecoder
from keras_centernet.layers.decoder import decode_ltrb_detections
from keras_centernet.losses.focal import focal_loss
from keras_centernet.losses.iou import ltrb_center_loss
from keras_centernet.losses.iou import ltrb_gaussian_loss
from keras_centernet.losses.regression import reg_l1_loss
from keras_centernet.losses.reid import reid_embedding_scale
from keras_centernet.losses.reid import reid_loss
from keras_centernet.necks import FPNNeck
from keras_centernet.targets.render import render_targets
from tests.models.test_training import scene_batch
from tests.test_case import to_numpy

NUM_CLASSES = 2

# Two images of 64 px, boxes in input pixels; the last slots are padding.
BOXES = np.array(
    [[[4, 6, 40, 30], [20, 20, 60, 62], [0, 0, 0, 0]],
     [[10, 12, 26, 50], [0, 0, 0, 0], [0, 0, 0, 0]]], "float32"
)
LABELS = np.array([[0, 1, -1], [1, -1, -1]], "int32")
# The same boxes on the stride-4 map, clipped to [0, 15] as the official loader: by hand.
MAP_BOXES = np.array(
    [[[1, 1.5, 10, 7.5], [5, 5, 15, 15], [0, 0, 0, 0], [0, 0, 0, 0]],
     [[2.5, 3, 6.5, 12.5], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], "float32"
)


def tiny_model(**options):
    return kc.CenterNet(
        ResNetBackbone(depth=18, width=4), neck=FPNNeck(filters=8), num_classes=NUM_CLASSES,
        head_channels=8, max_objects=4, max_detections=6, **options,
    )


@pytest.mark.multi_backend
def test_ltrb_decode_of_a_planted_peak():
    logits = np.full((1, 16, 16, NUM_CLASSES), -10.0, "float32")
    logits[0, 3, 5, 1] = 2.0  # the peak: row y = 3, column x = 5, class 1
    logits[0, 12, 9, 0] = 0.5  # a weaker one at x = 9, y = 12, class 0
    ltrb = np.zeros((1, 16, 16, 4), "float32")
    ltrb[0, 3, 5] = [1.0, 2.0, 3.0, 4.0]
    ltrb[0, 12, 9] = [0.5, 0.25, 1.5, 2.0]
    detections = to_numpy(decode_ltrb_detections(logits, ltrb, max_detections=2, stride=4))
    # (x - left, y - top, x + right, y + bottom) * stride.
    np.testing.assert_allclose(detections["boxes"][0], [[16, 4, 32, 28], [34, 47, 42, 56]], atol=1e-5)
    np.testing.assert_allclose(detections["scores"][0], [1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-0.5))],
                               rtol=1e-5)
    np.testing.assert_array_equal(detections["labels"][0], [1, 0])
    # The decoding layer (of exported models) reads an `ltrb` map the same way.
    layered = to_numpy(CenterNetDecoder(max_detections=2, score_threshold=0.5)({"heatmap": logits, "ltrb": ltrb}))
    np.testing.assert_allclose(layered["boxes"][0, 0], [16, 4, 32, 28], atol=1e-5)
    np.testing.assert_array_equal(layered["num_detections"], [2])


@pytest.mark.multi_backend
def test_ltrb_outputs_are_scaled_non_negative_distances(rng):
    model = tiny_model(box_head="ltrb")
    assert model.heads == {"heatmap": NUM_CLASSES, "ltrb": 4}
    head = model.stack_heads(0)["ltrb"]
    assert head.distance_scale == 4.0
    head.output_conv.kernel.assign(np.zeros(head.output_conv.kernel.shape, "float32"))
    head.output_conv.bias.assign(np.array([0.5, -1.0, 2.0, 0.25], "float32"))
    ltrb = to_numpy(model(rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32"))["ltrb"])
    # relu(bias) * 4 at every pixel.
    np.testing.assert_allclose(ltrb[0, 7, 2], [2.0, 0.0, 8.0, 1.0], atol=1e-6)
    assert ltrb.min() >= 0


@pytest.mark.multi_backend
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_ltrb_distance_starts_positive(seed, rng):
    # Under the relu, a distance channel that starts <= 0 at every pixel gets no gradient
    # and stays 0 (left and top did with a zero bias: boxes began at the peak pixel).
    keras.utils.set_random_seed(seed)
    model = tiny_model(box_head="ltrb")
    head = model.stack_heads(0)["ltrb"]
    np.testing.assert_array_equal(to_numpy(head.output_conv.bias), [1.0, 1.0, 1.0, 1.0])
    ltrb = to_numpy(model(rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32"))["ltrb"])
    # relu(1 + tiny) * 4: four map pixels (16 input pixels) to each side, everywhere.
    np.testing.assert_allclose(ltrb, 4.0, atol=0.05)


@pytest.mark.parametrize("flip_test", [False, True])
def test_detect_reads_the_ltrb_map(flip_test, rng):
    # Constant distances (l, t, r, b) = 4 * (0.5, 0.75, 1.5, 1): every box is (x - 2, y - 3, x + 6, y + 4) map pixels.
    model = tiny_model(box_head="ltrb", flip_test=flip_test)
    head = model.stack_heads(0)["ltrb"]
    head.output_conv.kernel.assign(np.zeros(head.output_conv.kernel.shape, "float32"))
    head.output_conv.bias.assign(np.array([0.5, 0.75, 1.5, 1.0], "float32"))
    boxes = to_numpy(model.predict(rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32"), verbose=0)["boxes"])
    width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    np.testing.assert_allclose(width, 8 * 4, atol=1e-4)
    np.testing.assert_allclose(height, 7 * 4, atol=1e-4)
    # The box's left side is `left` from the peak pixel x; with the flip test, the
    # mirror's left distance is this image's right one: both average to 4.
    left = 4.0 if flip_test else 2.0
    peak_x = boxes[..., 0] / 4 + left
    np.testing.assert_allclose(peak_x, np.round(peak_x), atol=1e-4)
    top = 3.0
    peak_y = boxes[..., 1] / 4 + top
    np.testing.assert_allclose(peak_y, np.round(peak_y), atol=1e-4)


@pytest.mark.parametrize("iou_loss", ["giou", "ciou"])
@pytest.mark.parametrize("ltrb_gaussian", [False, True])
def test_ltrb_loss_is_the_iou_loss_of_the_rendered_boxes(iou_loss, ltrb_gaussian, rng):
    model = tiny_model(box_head="ltrb", iou_loss=iou_loss, ltrb_gaussian=ltrb_gaussian)
    assert {m.name for m in model.metrics} >= {"heatmap_loss", "ltrb_loss"}
    assert not {"size_loss", "offset_loss"} & {m.name for m in model.metrics}
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    outputs = model(images)
    loss = model.compute_loss(images, {"boxes": BOXES, "labels": LABELS}, outputs, training=False)
    targets = render_targets(MAP_BOXES, np.pad(LABELS, ((0, 0), (0, 1)), constant_values=-1), (16, 16),
                             NUM_CLASSES, max_objects=4)
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], "float32")
    np.testing.assert_array_equal(to_numpy(targets["mask"]), mask)
    if ltrb_gaussian:
        box_loss = ltrb_gaussian_loss(outputs["ltrb"], MAP_BOXES, mask, mode=iou_loss, pixel_area=16.0)
    else:
        # The centre pixels by hand: (5, 4) and (10, 10), then (4, 7).
        indices = np.array([[4 * 16 + 5, 10 * 16 + 10, 0, 0], [7 * 16 + 4, 0, 0, 0]], "int32")
        box_loss = ltrb_center_loss(outputs["ltrb"], indices, mask, MAP_BOXES, mode=iou_loss)
    expected = focal_loss(targets["heatmap"], outputs["heatmap"]) + 5.0 * box_loss
    np.testing.assert_allclose(float(to_numpy(loss)), float(to_numpy(expected)), rtol=1e-5)
    np.testing.assert_allclose(float(to_numpy(model.ltrb_loss_tracker.result())), float(to_numpy(box_loss)),
                               rtol=1e-5)


@pytest.mark.multi_backend
@pytest.mark.parametrize("ltrb_gaussian", [False, True])
def test_ltrb_fit_reports_its_loss_parts(ltrb_gaussian):
    keras.utils.set_random_seed(1)
    images, targets = scene_batch(num_images=2, size=64, max_objects=4)
    model = tiny_model(box_head="ltrb", ltrb_gaussian=ltrb_gaussian, radius="ttfnet")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(images, targets, batch_size=2, epochs=8, verbose=0)
    assert set(history.history) == {"loss", "heatmap_loss", "ltrb_loss"}
    for values in history.history.values():
        assert np.all(np.isfinite(values))
    losses = history.history["loss"]
    assert max(losses[-3:]) < losses[0], losses
    # GIoU of boxes is in [0, 2].
    assert 0 <= min(history.history["ltrb_loss"]) and max(history.history["ltrb_loss"]) <= 2


def test_ltrb_head_learns_all_four_sides():
    # Four images overfitted for 60 steps: the centre-pixel GIoU loss falls from about 0.6
    # (the initial 8x8 map-pixel boxes) to about 0.19, and every side's distance at the
    # centres grows towards its target (a dead channel would stay at 0).
    keras.utils.set_random_seed(0)
    images, targets = scene_batch(num_images=4, size=64, max_objects=4)
    model = tiny_model(box_head="ltrb")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(images, targets, batch_size=4, epochs=60, verbose=0)
    assert history.history["ltrb_loss"][-1] < 0.3, history.history["ltrb_loss"]
    outputs = model(images)
    rendered = model.render_targets(images, targets, outputs["heatmap"])
    ltrb = to_numpy(outputs["ltrb"])
    batch, height, width, _ = ltrb.shape
    mask = to_numpy(rendered["mask"]) > 0
    indices = to_numpy(rendered["indices"])[mask]
    predicted = ltrb.reshape(batch, height * width, 4)[np.nonzero(mask)[0], indices]
    boxes = to_numpy(rendered["boxes"])[mask]
    xs, ys = indices % width, indices // width
    expected = np.stack([xs - boxes[:, 0], ys - boxes[:, 1], boxes[:, 2] - xs, boxes[:, 3] - ys], -1)
    assert (expected > 0).all()
    # Measured after 60 steps: means (0.75, 1.50, 2.39, 3.44) for targets (1.69, 2.12, 2.89, 3.22);
    # the left side, the shortest, converges last (1.85 against 1.69 after 180 steps).
    assert (predicted.mean(axis=0) > 0.3 * expected.mean(axis=0)).all(), (predicted, expected)
    assert np.abs(predicted - expected).mean() < 1.0


class TestReidentification:
    @pytest.mark.multi_backend
    def test_reid_loss_is_fairmots_of_the_slot_identities(self, rng):
        model = tiny_model(num_identities=7, reid_dim=8)
        assert model.heads == {"heatmap": NUM_CLASSES, "size": 2, "offset": 2, "reid": 8}
        images = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
        outputs = model(images)
        # Three slots given, padded to the model's four with -1; one object has no identity.
        ids = np.array([[3, -1, -1], [6, -1, -1]], "int32")
        y = {"boxes": BOXES, "labels": LABELS, "ids": ids}
        loss = model.compute_loss(images, y, outputs, training=False)
        targets = render_targets(MAP_BOXES, np.pad(LABELS, ((0, 0), (0, 1)), constant_values=-1), (16, 16),
                                 NUM_CLASSES, max_objects=4)
        slot_ids = np.array([[3, -1, -1, -1], [6, -1, -1, -1]], "int32")
        identity = reid_loss(outputs["reid"], targets["indices"], targets["mask"], slot_ids,
                             model.reid_classifier, reid_embedding_scale(7))
        expected = (
            focal_loss(targets["heatmap"], outputs["heatmap"])
            + 0.1 * reg_l1_loss(outputs["size"], targets["indices"], targets["mask"], targets["size"])
            + reg_l1_loss(outputs["offset"], targets["indices"], targets["mask"], targets["offset"])
            + identity
        )
        np.testing.assert_allclose(float(to_numpy(loss)), float(to_numpy(expected)), rtol=1e-5)
        np.testing.assert_allclose(float(to_numpy(model.reid_loss_tracker.result())), float(to_numpy(identity)),
                                   rtol=1e-5)
        with pytest.raises(ValueError, match="'ids'"):
            model.compute_loss(images, {"boxes": BOXES, "labels": LABELS}, outputs, training=False)

    @pytest.mark.multi_backend
    def test_reid_fit_reports_its_loss_parts(self):
        keras.utils.set_random_seed(2)
        images, targets = scene_batch(num_images=2, size=64, max_objects=4)
        # Identities of the objects: their slot in the image (padding -1).
        targets["ids"] = np.where(targets["labels"] >= 0, np.arange(4)[None, :], -1).astype("int32")
        model = tiny_model(box_head="ltrb", num_identities=4, reid_dim=8)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        history = model.fit(images, targets, batch_size=2, epochs=12, verbose=0)
        assert set(history.history) == {"loss", "heatmap_loss", "ltrb_loss", "reid_loss"}
        for values in history.history.values():
            assert np.all(np.isfinite(values))
        losses = history.history["loss"]
        assert max(losses[-3:]) < losses[0], losses
        # The identity loss learns the few identities: its first two values vary with the
        # backend (fresh BatchNorm statistics), the last is below both.
        assert history.history["reid_loss"][-1] < min(history.history["reid_loss"][:2])
