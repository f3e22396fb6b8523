"""The batched augmentation equals the per-image TensorFlow one, draws by the official rules, and trains."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_centernet as kc
from keras_centernet.data.augment import apply_color_transform
from keras_centernet.data.augment import official_border as tf_official_border
from keras_centernet.data.augment import place_on_canvas
from keras_centernet.data.augment import warp_affine
from keras_centernet.data.boxes import clip_boxes
from keras_centernet.data.boxes import transform_boxes
from keras_centernet.layers.batch_augmentation import OFFICIAL_CROP_SCALES
from keras_centernet.layers.batch_augmentation import BatchAugmentation
from keras_centernet.layers.batch_augmentation import color_transform_images
from keras_centernet.layers.batch_augmentation import content_boxes
from keras_centernet.layers.batch_augmentation import transform_box_batch
from keras_centernet.layers.batch_augmentation import warp_images
from tests.models.test_training import scene_batch
from tests.test_case import TestCase
from tests.test_case import to_numpy

# Scale and shift, a mirror, a shrink with a fractional shift.
MATRICES = np.array(
    [
        [[1.3, 0.0, -5.0], [0.0, 1.3, 3.0]],
        [[-0.7, 0.0, 50.0], [0.0, 0.7, -2.0]],
        [[0.5, 0.0, 10.2], [0.0, 0.5, 7.7]],
    ],
    "float32",
)


@pytest.mark.multi_backend
def test_warp_equals_the_per_image_tf_warp():
    images = np.random.default_rng(0).uniform(0, 255, (3, 40, 56, 3)).astype("float32")
    out = to_numpy(warp_images(images, MATRICES, (32, 48)))
    assert out.shape == (3, 32, 48, 3)
    for b in range(3):
        expected = warp_affine(images[b], MATRICES[b], (32, 48)).numpy()
        # Both sample the same positions; float32 rounding of 0-255 values.
        np.testing.assert_allclose(out[b], expected, atol=2e-3)


@pytest.mark.multi_backend
def test_boxes_equal_the_per_image_tf_transform():
    rng = np.random.default_rng(1)
    corners = rng.uniform(-20, 80, (3, 6, 2, 2))
    boxes = np.concatenate([corners.min(axis=2), corners.max(axis=2)], axis=-1).astype("float32")
    labels = np.tile(np.arange(6, dtype="int32"), (3, 1))
    labels[:, -1] = -1
    out_boxes, out_labels = to_numpy(transform_box_batch(boxes, labels, MATRICES, (32, 48)))
    for b in range(3):
        expected = clip_boxes(transform_boxes(boxes[b], MATRICES[b]), 32, 48).numpy()
        empty = (expected[:, 2] <= expected[:, 0]) | (expected[:, 3] <= expected[:, 1])
        empty |= labels[b] < 0
        np.testing.assert_allclose(out_boxes[b][~empty], expected[~empty], atol=1e-4)
        np.testing.assert_array_equal(out_labels[b], np.where(empty, -1, labels[b]))
        np.testing.assert_array_equal(out_boxes[b][empty], 0.0)
    assert (out_labels == -1).sum() > 3  # some boxes were pushed off the output


@pytest.mark.multi_backend
def test_color_transform_equals_the_tf_reference():
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (3, 6, 7, 3)).astype("float32")
    factors = np.array([[1.3, 0.7, 1.1], [0.6, 1.4, 0.9], [1.0, 1.2, 0.65]], "float32")
    order = np.array([[0, 1, 2], [2, 0, 1], [1, 2, 0]], "int32")
    lighting = rng.normal(0, 0.1, (3, 3)).astype("float32")
    out = to_numpy(color_transform_images(images, factors, order, lighting))
    for b in range(3):
        expected = apply_color_transform(images[b], factors[b], order[b], lighting[b]).numpy()
        np.testing.assert_allclose(out[b], expected, rtol=1e-5, atol=1e-3)


@pytest.mark.multi_backend
def test_flip_mirrors_image_and_boxes():
    images = np.random.default_rng(3).uniform(0, 255, (4, 48, 64, 3)).astype("float32")
    boxes = np.tile(np.array([[[10.0, 8.0, 30.0, 40.0]]], "float32"), (4, 1, 1))
    y = {"boxes": boxes, "labels": np.zeros((4, 1), "int32")}
    plain = BatchAugmentation((32, 40), flip_probability=0.0, color=False, seed=5)
    flipped = BatchAugmentation((32, 40), flip_probability=1.0, color=False, seed=5)
    # The same seed draws the same crops: only the flip differs.
    out, out_y = to_numpy(plain(images, y))
    out_f, out_y_f = to_numpy(flipped(images, y))
    np.testing.assert_allclose(out_f, out[:, :, ::-1], atol=2e-3)
    kept = out_y["labels"][:, 0] >= 0
    assert kept.any()
    x1, y1, x2, y2 = np.moveaxis(out_y["boxes"][kept, 0], -1, 0)
    np.testing.assert_allclose(
        out_y_f["boxes"][kept, 0], np.stack([40 - x2, y1, 40 - x1, y2], -1), atol=1e-4
    )


@pytest.mark.multi_backend
def test_rgba_canvas_gives_the_content_box_and_warps_only_rgb():
    image = np.random.default_rng(4).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    canvas, matrix = place_on_canvas(image, (64, 64))
    canvas = canvas.numpy()
    np.testing.assert_array_equal(canvas[:30, :50, :3], image)
    np.testing.assert_array_equal(canvas[30:], 0)
    np.testing.assert_allclose(matrix.numpy(), [[1, 0, 0], [0, 1, 0]])
    batch = np.stack([canvas, np.zeros_like(canvas)])
    np.testing.assert_allclose(to_numpy(content_boxes(batch)), [[0, 0, 50, 30], [0, 0, 64, 64]])
    layer = BatchAugmentation((32, 48), color=False)
    warped = to_numpy(layer.augment_images(batch, {"matrix": MATRICES[:2]}))
    assert warped.shape == (2, 32, 48, 3)
    expected = warp_affine(canvas[..., :3], MATRICES[0], (32, 48)).numpy()
    np.testing.assert_allclose(warped[0], expected, atol=2e-3)


def test_place_on_canvas_resizes_larger_images_to_fit():
    image = np.full((100, 200, 3), 77, np.uint8)
    canvas, matrix = place_on_canvas(image, (64, 64))
    alpha = canvas.numpy()[..., 3]
    assert alpha[:32, :64].min() == 255 and alpha[32:].max() == 0
    np.testing.assert_allclose(matrix.numpy(), [[0.32, 0, 0], [0, 0.32, 0]], atol=1e-6)
    np.testing.assert_array_equal(canvas.numpy()[:32, :64, :3], 77)


def _crop_windows(layer, content, draws):
    """(sizes, centre x, centre y, flipped) of `draws` draws, in the image's own pixels."""
    content = np.tile(np.asarray(content, "float32"), (draws, 1))
    parameters = to_numpy(layer.sample_for_content(content))
    matrix = parameters["matrix"]
    factor = np.abs(matrix[:, 0, 0])
    size = layer.output_size[1] / factor
    # x_out = s_x (x_canvas) + t_x maps the crop centre to the output centre.
    center_x = (layer.output_size[1] / 2 - matrix[:, 0, 2]) / matrix[:, 0, 0] - content[:, 0]
    center_y = (layer.output_size[0] / 2 - matrix[:, 1, 2]) / matrix[:, 1, 1] - content[:, 1]
    return size, center_x, center_y, parameters


@pytest.mark.multi_backend
def test_random_crop_draws_official_scales_and_centres():
    layer = BatchAugmentation(512, seed=0)
    # A 400 x 240 image at (20, 10) on its canvas; borders by `_get_border`
    # (240 - 128 <= 128: halved once).
    width, height = 400, 240
    border_x, border_y = int(tf_official_border(128, width)), int(tf_official_border(128, height))
    assert (border_x, border_y) == (128, 64)
    draws = 4000
    size, center_x, center_y, parameters = _crop_windows(
        layer, [20, 10, 20 + width, 10 + height], draws
    )
    official = np.array(OFFICIAL_CROP_SCALES)
    nearest = np.argmin(np.abs(size[:, None] / width - official[None]), axis=1)
    np.testing.assert_allclose(size / width, official[nearest], atol=1e-5)
    counts = np.bincount(nearest, minlength=len(official))
    assert counts.min() > 0.8 * draws / 8 and counts.max() < 1.2 * draws / 8
    # Integer centres, uniform on [b, size - b - 1] as `np.random.randint(b, size - b)`.
    for centre, length, border in ((center_x, width, border_x), (center_y, height, border_y)):
        np.testing.assert_allclose(centre, np.round(centre), atol=2e-3)
        centre = np.round(centre)
        assert centre.min() == border and centre.max() == length - border - 1
        np.testing.assert_allclose(centre.mean(), (length - 1) / 2, atol=0.03 * (length - 2 * border))
        np.testing.assert_allclose(
            centre.std(), (length - 2 * border) / np.sqrt(12), rtol=0.05
        )
    flipped = parameters["flipped"]
    assert abs(flipped.mean() - 0.5) < 0.04
    np.testing.assert_array_equal(parameters["matrix"][:, 0, 0] < 0, flipped)
    factors = parameters["color_factors"]
    assert factors.min() >= 0.6 and factors.max() <= 1.4
    np.testing.assert_allclose(factors.mean(), 1.0, atol=0.01)
    np.testing.assert_allclose(factors.std(), 0.8 / np.sqrt(12), rtol=0.05)
    np.testing.assert_array_equal(np.sort(parameters["color_order"], axis=1), [[0, 1, 2]] * draws)
    # Every one of the six orders comes up.
    assert len({tuple(o) for o in parameters["color_order"]}) == 6
    np.testing.assert_allclose(parameters["lighting"].std(), 0.1, rtol=0.05)


@pytest.mark.multi_backend
def test_not_rand_crop_draws_clipped_shift_and_scale():
    layer = BatchAugmentation(512, random_crop=False, flip_probability=0.0, seed=1)
    width, height = 400, 300
    size, center_x, center_y, _ = _crop_windows(layer, [0, 0, width, height], 2000)
    sizes = size / width
    shifts = np.stack([center_x - width / 2, center_y - height / 2], -1) / width
    assert sizes.min() >= 0.6 - 1e-5 and sizes.max() <= 1.4 + 1e-5
    # N(1, 0.4) clipped to 1 +- 0.4: about 32% of draws on the clips.
    on_clips = np.isclose(sizes, 0.6, atol=1e-4) | np.isclose(sizes, 1.4, atol=1e-4)
    assert 0.27 < on_clips.mean() < 0.37
    # N(0, 0.1) clipped to +-0.2: about 4.6% on the clips.
    assert np.abs(shifts).max() <= 0.2 + 1e-5
    assert 0.02 < np.isclose(np.abs(shifts), 0.2, atol=1e-4).mean() < 0.08
    assert 0.085 < np.std(shifts) < 0.1


class TestBatchAugmentation(TestCase):
    def test_config_round_trip(self):
        layer = BatchAugmentation(
            (64, 96), random_crop=False, crop_scales=(0.8, 1.0), flip_probability=0.3,
            color=False, bounding_box_format="xywh", seed=3,
        )
        revived = self.run_serialization_test(layer)
        assert revived.output_size == (64, 96) and revived.crop_scales == (0.8, 1.0)

    def test_rejects_bad_arguments(self):
        with pytest.raises(ValueError, match="output_size"):
            BatchAugmentation((64,))
        with pytest.raises(ValueError, match="flip_probability"):
            BatchAugmentation(64, flip_probability=2.0)
        with pytest.raises(ValueError, match="crop_scales"):
            BatchAugmentation(64, crop_scales=())
        with pytest.raises(ValueError, match="negative"):
            BatchAugmentation(64, lighting_std=-1.0)

    def test_model_config_round_trip_and_saving(self, tmp_path):
        model = kc.CenterNet.from_preset(
            "resnet18", num_classes=2, augmentation=BatchAugmentation(64, seed=0)
        )
        config = model.get_config()
        revived = kc.CenterNet.from_config(config)
        assert isinstance(revived.augmentation, BatchAugmentation)
        assert revived.augmentation.get_config() == model.augmentation.get_config()
        assert kc.CenterNet.from_preset("resnet18", num_classes=2).get_config()["augmentation"] is None
        images = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
        restored = self.run_model_saving_test(model, images, tmp_path)
        assert isinstance(restored.augmentation, BatchAugmentation)


@pytest.mark.multi_backend
def test_loss_maps_targets_as_the_images_were_mapped():
    """`compute_loss` on the outputs of `call(training=True)` is the plain loss of the augmented batch."""
    images, targets = scene_batch(num_images=2, size=64, max_objects=4)
    model = kc.CenterNet.from_preset(
        "resnet18", num_classes=2, max_objects=4, augmentation=BatchAugmentation(64, seed=2)
    )
    outputs = model(images, training=True)
    augmented = outputs["augmentation"]
    loss = model.compute_loss(images, targets, outputs)
    boxes, labels = transform_box_batch(
        targets["boxes"], targets["labels"], augmented["matrix"], (64, 64)
    )
    plain = {k: v for k, v in outputs.items() if k != "augmentation"}
    expected = model.compute_loss(augmented["images"], {"boxes": boxes, "labels": labels}, plain)
    np.testing.assert_allclose(to_numpy(loss), to_numpy(expected), rtol=1e-6)
    # Inference ignores the augmentation.
    assert "augmentation" not in model(images, training=False)


@pytest.mark.multi_backend
def test_fit_with_augmentation_on_an_accelerator_mode_dataset():
    """A short `model.fit` on the current backend: the RGBA canvases of `augment_on="accelerator"`."""
    keras.utils.set_random_seed(0)
    dataset = kc.data.synthetic(
        num_images=4, image_size=64, batch_size=2, seed=0, max_objects=8,
        augment_on="accelerator",
    )
    canvases, targets = next(iter(dataset))
    assert canvases.shape == (2, 64, 64, 4) and canvases.dtype == tf.uint8
    model = kc.CenterNet.from_preset(
        "resnet18", num_classes=5, max_objects=8, augmentation=BatchAugmentation(64, seed=0)
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-4))
    history = model.fit(dataset, epochs=2, verbose=0)
    for name in ("loss", "heatmap_loss", "size_loss", "offset_loss"):
        assert np.all(np.isfinite(history.history[name])), history.history
