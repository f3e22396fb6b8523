"""Keypoint-Triplets CenterNet: decoding of constructed maps, presets, serialisation and a short fit."""

import math

import keras
import numpy as np
import pytest

from keras_centernet.backbones.hourglass import HourglassBackbone
from keras_centernet.layers.triplet_decoder import decode_triplets
from keras_centernet.models.centernet_triplets import CenterNetTriplets
from tests.models.test_training import scene_batch
from tests.test_case import TestCase
from tests.test_case import to_numpy

BACKGROUND_LOGIT = -10.0


def logit(p):
    return math.log(p / (1 - p))


def constructed_maps(size=32, classes=2):
    """Raw outputs with background logits -10, zero embeddings and offsets; keypoints are planted by `plant`."""
    outputs = {
        f"{key}_heatmap": np.full((1, size, size, classes), BACKGROUND_LOGIT, "float32")
        for key in ("top_left", "bottom_right", "center")
    }
    for key in ("top_left", "bottom_right", "center"):
        outputs[f"{key}_offset"] = np.zeros((1, size, size, 2), "float32")
    outputs["top_left_embedding"] = np.zeros((1, size, size, 1), "float32")
    outputs["bottom_right_embedding"] = np.zeros((1, size, size, 1), "float32")
    return outputs


def plant(outputs, key, x, y, label, score, offset=(0.25, 0.25), embedding=None):
    outputs[f"{key}_heatmap"][0, y, x, label] = logit(score)
    outputs[f"{key}_offset"][0, y, x] = offset
    if embedding is not None:
        outputs[f"{key}_embedding"][0, y, x, 0] = embedding


def box_a(outputs, center=(7, 7), center_offset=(0.25, 0.25)):
    """Class 0, map corners (3, 4) and (12, 10) with offsets 0.25: input box (13, 17, 49, 41)."""
    plant(outputs, "top_left", 3, 4, 0, 0.9, embedding=2.0)
    plant(outputs, "bottom_right", 12, 10, 0, 0.8, embedding=2.2)
    if center is not None:
        plant(outputs, "center", *center, 0, 0.7, offset=center_offset)


def decode(outputs, **kwargs):
    kwargs.setdefault("top_k", 20)
    kwargs.setdefault("num_candidates", 100)
    return to_numpy(decode_triplets(outputs, max_detections=10, **kwargs))


@pytest.mark.multi_backend
@pytest.mark.parametrize("use_soft_nms", [False, True])
def test_planted_box_recovered_with_the_mean_of_three_scores(use_soft_nms):
    outputs = constructed_maps()
    box_a(outputs)
    detections = decode(outputs, use_soft_nms=use_soft_nms)
    np.testing.assert_allclose(detections["boxes"][0, 0], [13, 17, 49, 41], atol=1e-4)
    np.testing.assert_allclose(detections["scores"][0, 0], (0.9 + 0.8 + 0.7) / 3, rtol=1e-5)
    assert detections["labels"][0, 0] == 0
    # Everything else pairs background pixels (probability ~5e-5).
    assert detections["scores"][0, 1] < 1e-3


@pytest.mark.multi_backend
def test_false_pairs_are_rejected():
    outputs = constructed_maps()
    box_a(outputs)
    # A class-1 pair with matching embeddings and no class-1 centre; a class-0
    # centre sits in its central region (the class must match).
    plant(outputs, "top_left", 18, 2, 1, 0.95, embedding=5.0)
    plant(outputs, "bottom_right", 30, 14, 1, 0.95, embedding=5.1)
    plant(outputs, "center", 24, 8, 0, 0.9)
    # Class-0 corners whose embeddings are 1.0 apart (> 0.5) around a class-0 centre.
    plant(outputs, "top_left", 2, 18, 0, 0.85, embedding=-3.0)
    plant(outputs, "bottom_right", 14, 30, 0, 0.85, embedding=-2.0)
    plant(outputs, "center", 8, 24, 0, 0.85)
    detections = decode(outputs)
    assert detections["scores"][0, 0] == pytest.approx(0.8, rel=1e-5)
    np.testing.assert_allclose(detections["boxes"][0, 0], [13, 17, 49, 41], atol=1e-4)
    assert detections["scores"][0, 1] < 1e-3


@pytest.mark.multi_backend
def test_central_region_is_scale_aware():
    # Box A (13, 17)-(49, 41): central third x in (25, 37), central fifth in
    # (27.4, 34.6); y third (25, 33). A centre at x = 26, y = 29 lies in the
    # third only: kept for a small box (n = 3), rejected for a large one (n = 5).
    outputs = constructed_maps()
    box_a(outputs, center=(6, 7), center_offset=(0.5, 0.25))
    small = decode(outputs)
    assert small["scores"][0, 0] == pytest.approx(0.8, rel=1e-5)
    large = decode(outputs, small_area=100.0)
    assert large["scores"][0, 0] < 1e-3
    # A centre outside the third is rejected whatever the size.
    outputs = constructed_maps()
    box_a(outputs, center=(5, 7), center_offset=(0.5, 0.25))  # x = 22
    assert decode(outputs)["scores"][0, 0] < 1e-3
    # And a box without a centre at all.
    outputs = constructed_maps()
    box_a(outputs, center=None)
    assert decode(outputs)["scores"][0, 0] < 1e-3


@pytest.mark.multi_backend
def test_flip_test_joins_mirrored_pairs_and_centres():
    # The mirror of box A (13, 17, 49, 41) in a 128-pixel image is (79, 17, 115, 41):
    # map corners (19, 4) and (28, 10) with x offsets 0.75; its centre x = 97.
    def mirrored_a(outputs, with_center=True):
        plant(outputs, "top_left", 19, 4, 0, 0.9, offset=(0.75, 0.25), embedding=2.0)
        plant(outputs, "bottom_right", 28, 10, 0, 0.8, offset=(0.75, 0.25), embedding=2.2)
        if with_center:
            plant(outputs, "center", 24, 7, 0, 0.7, offset=(0.25, 0.25))

    # Only the mirror sees the object: its box comes back in original pixels.
    flipped = constructed_maps()
    mirrored_a(flipped)
    detections = decode(constructed_maps(), flipped_outputs=flipped)
    np.testing.assert_allclose(detections["boxes"][0, 0], [13, 17, 49, 41], atol=1e-4)
    assert detections["scores"][0, 0] == pytest.approx(0.8, rel=1e-5)
    # Corners in the image, the centre in the mirror only (x = 128 - 97 = 31): kept.
    original = constructed_maps()
    box_a(original, center=None)
    flipped = constructed_maps()
    plant(flipped, "center", 24, 7, 0, 0.7, offset=(0.25, 0.25))
    detections = decode(original, flipped_outputs=flipped, use_soft_nms=False)
    assert detections["scores"][0, 0] == pytest.approx(0.8, rel=1e-5)
    # Seen in both: the duplicate is decayed by Soft-NMS (IoU 1: exp(-1 / 0.5)).
    original = constructed_maps()
    box_a(original)
    flipped = constructed_maps()
    mirrored_a(flipped)
    detections = decode(original, flipped_outputs=flipped)
    np.testing.assert_allclose(detections["scores"][0, :2], [0.8, 0.8 * math.exp(-2.0)], rtol=1e-4)


def tiny_model(num_stacks=1, **kwargs):
    backbone = HourglassBackbone(
        num_stacks=num_stacks, dims=(16, 16, 24), num_blocks=(1, 1, 1), stem_channels=16, output_channels=16
    )
    config = dict(num_classes=2, head_channels=16, pool_channels=8, max_objects=4, max_detections=10,
                  size_divisor=16, top_k=10, num_candidates=50)
    config.update(kwargs)
    return CenterNetTriplets(backbone, **config)


class TestCenterNetTriplets(TestCase):
    @pytest.mark.multi_backend
    def test_outputs_and_saving(self, tmp_path):
        model = tiny_model(num_stacks=2)
        images = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
        raw = model(images)
        shapes = {name: tuple(value.shape) for name, value in raw.items()}
        assert shapes == {
            "top_left_heatmap": (1, 16, 16, 2), "bottom_right_heatmap": (1, 16, 16, 2),
            "center_heatmap": (1, 16, 16, 2), "top_left_embedding": (1, 16, 16, 1),
            "bottom_right_embedding": (1, 16, 16, 1), "top_left_offset": (1, 16, 16, 2),
            "bottom_right_offset": (1, 16, 16, 2), "center_offset": (1, 16, 16, 2),
        }
        # The heatmap heads start at the focal-loss prior, the others at zero bias.
        biases = {head.name: to_numpy(head.output_conv.bias) for head in model.head_layers}
        assert len(biases) == 16
        for name, bias in biases.items():
            np.testing.assert_allclose(bias, -2.19 if "heatmap" in name else 0.0, err_msg=name)
        revived = self.run_serialization_test(model)
        assert revived.num_stacks == 2 and revived.count_params() == model.count_params()
        self.run_model_saving_test(model, images, tmp_path, atol=1e-5)

    def test_fit_lowers_the_loss_and_predicts_the_contract(self):
        keras.utils.set_random_seed(1)
        images, targets = scene_batch(num_images=2, size=64, max_objects=4)
        model = tiny_model()
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        history = model.fit(images, targets, batch_size=2, epochs=6, verbose=0)
        losses = history.history["loss"]
        assert max(losses[-2:]) < 0.7 * losses[0], losses
        assert set(history.history) >= {"loss", "heatmap_loss", "pull_loss", "push_loss", "offset_loss"}
        detections = model.predict(images, verbose=0)
        assert {k: v.shape for k, v in detections.items()} == {
            "boxes": (2, 10, 4), "scores": (2, 10), "labels": (2, 10), "num_detections": (2,)
        }
        assert np.all(np.diff(detections["scores"], axis=1) <= 0)
        model.flip_test = True
        model.predict_function = None
        flipped = model.predict(images, verbose=0)
        assert flipped["boxes"].shape == (2, 10, 4)
        assert model.get_config()["flip_test"] is True


def pooling_module_parameters(dim, pool, cascade):
    """Weights of the official `pool` (cascade) or `pool_cross` module, BN counted with its 4 vectors."""
    convolution = lambda cin, cout: 9 * cin * cout + 4 * cout  # noqa: E731  conv (no bias) + BN
    branches = (4 if cascade else 2) * convolution(dim, pool)
    look = 2 * 9 * pool * pool if cascade else 0
    merge = 9 * pool * dim + 4 * dim + dim * dim + 4 * dim + convolution(dim, dim)
    return branches + look + merge


@pytest.mark.parametrize("preset, stacks", [("triplets_hourglass52", 1), ("triplets_hourglass104", 2)])
def test_preset_parameter_counts(preset, stacks):
    model = CenterNetTriplets.from_preset(preset, num_classes=80)
    assert model.num_stacks == stacks and model.preset == preset
    head = lambda out: 9 * 256 * 256 + 256 + 256 * out + out  # noqa: E731
    per_stack = (
        2 * pooling_module_parameters(256, 128, cascade=True)
        + pooling_module_parameters(256, 128, cascade=False)
        + 3 * head(80) + 2 * head(1) + 3 * head(2)
    )
    assert model.count_params() == model.backbone.count_params() + stacks * per_stack


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown preset 'hourglass52'"):
        CenterNetTriplets.from_preset("hourglass52")
    with pytest.raises(ValueError, match="`top_k` must be a positive int"):
        tiny_model(top_k=0)
    with pytest.raises(ValueError, match="int `output_channels`"):
        CenterNetTriplets(keras.Sequential([keras.layers.Conv2D(4, 3)]))
    model = tiny_model()
    with pytest.raises(ValueError, match="trains on"):
        model.compute_loss(np.zeros((1, 64, 64, 3), "float32"), np.zeros((1, 4)))


@pytest.mark.multi_backend
def test_in_step_augmentation_maps_the_targets_as_the_images():
    """With `augmentation`, the loss is the plain loss of the augmented batch and its mapped boxes."""
    from keras_centernet.layers import BatchAugmentation
    from keras_centernet.layers.batch_augmentation import transform_box_batch

    images, targets = scene_batch(num_images=2, size=64, max_objects=4)
    model = tiny_model(augmentation=BatchAugmentation(64, seed=2))
    outputs = model(images, training=True)
    augmented = outputs["augmentation"]
    # A crop that moves the boxes: the test below is not the identity.
    assert not np.allclose(to_numpy(augmented["matrix"]), [[1, 0, 0], [0, 1, 0]])
    loss = model.compute_loss(images, targets, outputs)
    boxes, labels = transform_box_batch(targets["boxes"], targets["labels"], augmented["matrix"], (64, 64))
    plain = {k: v for k, v in outputs.items() if k != "augmentation"}
    expected = model.compute_loss(augmented["images"], {"boxes": boxes, "labels": labels}, plain)
    np.testing.assert_allclose(to_numpy(loss), to_numpy(expected), rtol=1e-6)
    assert "augmentation" not in model(images, training=False)
    revived = CenterNetTriplets.from_config(model.get_config())
    assert revived.augmentation.get_config() == model.augmentation.get_config()
    assert tiny_model().get_config()["augmentation"] is None
