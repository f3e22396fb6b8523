"""CenterNetPose: heads, the official multi_pose loss in `fit`, in-step flip, flip test, saving."""

import keras
import numpy as np
import pytest

import keras_centernet as kc
from keras_centernet.backbones.hourglass import HourglassBackbone
from keras_centernet.backbones.resnet import ResNetBackbone
from keras_centernet.data.synthetic_pose import synthetic_pose
from keras_centernet.layers.pose_decoder import decode_poses
from keras_centernet.layers.prediction_head import HEATMAP_PRIOR_BIAS
from keras_centernet.models.centernet_pose import CenterNetPose
from keras_centernet.necks.upconv import UpConvNeck
from keras_centernet.targets.keypoints import COCO_FLIP_PAIRS
from tests.test_case import TestCase
from tests.test_case import assert_allclose
from tests.test_case import to_numpy

SIZE = 64
LOSS_PARTS = ("heatmap_loss", "size_loss", "offset_loss", "keypoint_loss",
              "keypoint_heatmap_loss", "keypoint_offset_loss")


def tiny_pose_model(**kwargs):
    """ResNet-18 at width 8 and a plain 16/8/8 up-convolution neck: 64 px inputs, 16x16 maps."""
    return CenterNetPose(
        ResNetBackbone(depth=18, width=8),
        neck=UpConvNeck(filters=(16, 8, 8), kernel_sizes=(4, 4, 4), use_dcn=False),
        head_channels=8, size_divisor=32, max_objects=8, **kwargs,
    )


def pose_batch(num_images=4, seed=0):
    images, targets = next(iter(synthetic_pose(num_images=num_images, image_size=SIZE,
                                               batch_size=num_images, seed=seed, max_objects=8)))
    return images.numpy(), {name: value.numpy() for name, value in targets.items()}


def mirror_by_hand(images, targets):
    """Mirrored images, boxes and joints (left and right joints swapped), written out plainly."""
    width = images.shape[2]
    boxes = targets["boxes"].copy()
    boxes[..., 0], boxes[..., 2] = width - targets["boxes"][..., 2], width - targets["boxes"][..., 0]
    joints = targets["keypoints"].copy()
    for left, right in COCO_FLIP_PAIRS:
        joints[..., left, :], joints[..., right, :] = targets["keypoints"][..., right, :], \
            targets["keypoints"][..., left, :]
    labelled = joints[..., 2] > 0
    joints[..., 0] = np.where(labelled, width - joints[..., 0], joints[..., 0])
    padding = targets["labels"] < 0
    boxes[padding] = 0.0
    return images[:, :, ::-1].copy(), {"boxes": boxes, "labels": targets["labels"], "keypoints": joints}


class TestCenterNetPose(TestCase):
    @pytest.mark.multi_backend
    def test_heads_and_prediction_shapes(self):
        model = tiny_pose_model(max_detections=10)
        raw = to_numpy(model(np.zeros((2, SIZE, SIZE, 3), "float32")))
        shapes = {name: value.shape for name, value in raw.items()}
        assert shapes == {
            "heatmap": (2, 16, 16, 1), "size": (2, 16, 16, 2), "offset": (2, 16, 16, 2),
            "keypoints": (2, 16, 16, 34), "keypoint_heatmap": (2, 16, 16, 17), "keypoint_offset": (2, 16, 16, 2),
        }
        # Both heatmap heads start at the prior bias -2.19, as officially.
        for name in ("heatmap", "keypoint_heatmap"):
            bias = keras.ops.convert_to_numpy(model.stack_heads(0)[name].output_conv.bias)
            np.testing.assert_allclose(bias, HEATMAP_PRIOR_BIAS, rtol=1e-6)
        people = to_numpy(model.predict(np.zeros((2, SIZE, SIZE, 3), "float32"), verbose=0))
        assert people["boxes"].shape == (2, 10, 4) and people["scores"].shape == (2, 10)
        assert people["labels"].shape == (2, 10) and people["num_detections"].shape == (2,)
        assert people["keypoints"].shape == (2, 10, 17, 2)
        assert np.all(np.diff(people["scores"], axis=1) <= 0)

    @pytest.mark.multi_backend
    def test_compute_loss_reports_its_parts(self):
        weights = {"heatmap": 1.5, "size": 0.2, "offset": 0.5, "keypoint": 2.0,
                   "keypoint_heatmap": 3.0, "keypoint_offset": 0.25}
        model = tiny_pose_model(
            heatmap_loss_weight=weights["heatmap"], size_loss_weight=weights["size"],
            offset_loss_weight=weights["offset"], keypoint_loss_weight=weights["keypoint"],
            keypoint_heatmap_loss_weight=weights["keypoint_heatmap"],
            keypoint_offset_loss_weight=weights["keypoint_offset"],
        )
        images, targets = pose_batch()
        total = float(keras.ops.convert_to_numpy(model.compute_loss(images, targets, training=False)))
        reported = {m.name: float(keras.ops.convert_to_numpy(m.result())) for m in model.metrics}
        assert set(LOSS_PARTS) <= set(reported)
        assert all(reported[name] > 0 for name in LOSS_PARTS)
        expected = sum(weights[name[: -len("_loss")]] * reported[name] for name in LOSS_PARTS)
        np.testing.assert_allclose(total, expected, rtol=1e-5)

    @pytest.mark.multi_backend
    def test_in_step_flip_is_the_mirrored_batch(self):
        model = tiny_pose_model(flip_probability=1.0)
        images, targets = pose_batch()
        flipped_loss = to_numpy(model.compute_loss(images, targets, training=True))
        parts_flipped = {m.name: to_numpy(m.result()) for m in model.metrics if m.name in LOSS_PARTS}
        for metric in model.metrics:
            metric.reset_state()
        model.flip_probability = 0.0
        mirrored_images, mirrored_targets = mirror_by_hand(images, targets)
        mirrored_loss = to_numpy(model.compute_loss(mirrored_images, mirrored_targets, training=True))
        parts_mirrored = {m.name: to_numpy(m.result()) for m in model.metrics if m.name in LOSS_PARTS}
        np.testing.assert_allclose(flipped_loss, mirrored_loss, rtol=1e-4)
        assert_allclose(parts_flipped, parts_mirrored, rtol=1e-4, atol=1e-6)
        # And the unflipped batch gives another loss.
        plain_loss = to_numpy(model.compute_loss(images, targets, training=True))
        assert abs(float(plain_loss) - float(mirrored_loss)) > 1e-3

    def test_fit_lowers_the_loss_and_logs_the_parts(self):
        keras.utils.set_random_seed(0)
        model = tiny_pose_model(flip_probability=0.5)
        # Eager steps: tracing this train step alone takes 25-30 s on the shared CPU.
        model.compile(optimizer=keras.optimizers.Adam(2e-3), run_eagerly=True)
        dataset = synthetic_pose(num_images=4, image_size=SIZE, batch_size=4, seed=0, max_objects=8)
        history = model.fit(dataset, epochs=6, verbose=0).history
        assert set(LOSS_PARTS) <= set(history)
        losses = history["loss"]
        assert all(np.isfinite(losses))
        assert np.mean(losses[-2:]) < 0.95 * np.mean(losses[:2]), losses

    @pytest.mark.multi_backend
    def test_saving_round_trip(self, tmp_path):
        model = tiny_pose_model(num_joints=17, keypoint_loss_weight=2.0, joint_threshold=0.2,
                                flip_probability=0.5, max_detections=7)
        images = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype("float32")
        restored = self.run_model_saving_test(model, images, tmp_path, atol=1e-5)
        assert isinstance(restored, CenterNetPose)
        for name in ("num_joints", "flip_pairs", "keypoint_loss_weight", "joint_threshold",
                     "flip_probability", "max_detections", "max_objects", "num_classes"):
            assert getattr(restored, name) == getattr(model, name), name
        assert_allclose(restored.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)

    @pytest.mark.multi_backend
    def test_config_round_trip(self):
        model = tiny_pose_model(joint_threshold=0.3)
        config = model.get_config()
        assert "heads" not in config and "num_classes" not in config
        assert config["flip_pairs"] == [list(pair) for pair in COCO_FLIP_PAIRS]
        revived = CenterNetPose.from_config(config)
        assert revived.get_config() == config

    @pytest.mark.multi_backend
    def test_flip_test_averages_as_the_official_detector(self):
        """Flip test: the mirror's maps flipped back, joint maps swapped left/right and x offsets negated."""
        model = tiny_pose_model(max_detections=10)
        images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
        raw = to_numpy(model(np.concatenate([images, images[:, :, ::-1]]), training=False))

        def sigmoid(x):
            return 1 / (1 + np.exp(-x))

        straight = {name: value[:2] for name, value in raw.items()}
        mirror = {name: value[2:, :, ::-1] for name, value in raw.items()}  # flipped back
        swapped_heat = mirror["keypoint_heatmap"].copy()
        swapped_joints = mirror["keypoints"].reshape(2, 16, 16, 17, 2).copy()
        for left, right in COCO_FLIP_PAIRS:
            swapped_heat[..., [left, right]] = mirror["keypoint_heatmap"][..., [right, left]]
            swapped_joints[..., [left, right], :] = mirror["keypoints"].reshape(2, 16, 16, 17, 2)[
                ..., [right, left], :]
        swapped_joints[..., 0] *= -1
        expected = to_numpy(decode_poses(
            (sigmoid(straight["heatmap"]) + sigmoid(mirror["heatmap"])) / 2,
            (straight["size"] + mirror["size"]) / 2,
            straight["offset"],
            (straight["keypoints"] + swapped_joints.reshape(2, 16, 16, 34)) / 2,
            (sigmoid(straight["keypoint_heatmap"]) + sigmoid(swapped_heat)) / 2,
            straight["keypoint_offset"],
            max_detections=10, stride=4, heatmap_is_probability=True,
        ))
        model.configure_prediction(flip_test=True)
        people = to_numpy(model.predict(images, verbose=0))
        for name in ("boxes", "scores", "labels", "keypoints"):
            np.testing.assert_allclose(people[name], expected[name], rtol=1e-4, atol=1e-4, err_msg=name)

    @pytest.mark.multi_backend
    def test_flip_test_of_a_mirror_symmetric_input_gives_symmetric_heatmaps(self):
        """On a mirror-symmetric image both passes see the same pixels: averaged heatmaps are mirror-symmetric."""
        model = tiny_pose_model(max_detections=256, flip_test=True)
        half = np.random.default_rng(2).uniform(0, 255, (1, SIZE, SIZE // 2, 3)).astype("float32")
        images = np.concatenate([half, half[:, :, ::-1]], axis=2)
        people = to_numpy(model.predict(images, verbose=0))
        raw = to_numpy(model(images, training=False))
        heat = 1 / (1 + np.exp(-raw["heatmap"][0, ..., 0]))
        symmetric = (heat + heat[:, ::-1]) / 2
        # Every pixel of a 16x16 map is a candidate: all are peaks or zero-scored
        # non-peaks of the symmetric map.
        pooled = np.pad(symmetric, 1, constant_values=-np.inf)
        windows = np.stack([pooled[i:i + 16, j:j + 16] for i in range(3) for j in range(3)])
        peaks = np.sort(np.where(windows.max(axis=0) == symmetric, symmetric, 0.0).ravel())[::-1]
        np.testing.assert_allclose(people["scores"][0], peaks[:256], rtol=1e-5, atol=1e-6)

    @pytest.mark.multi_backend
    def test_rejects_what_it_cannot_do(self):
        with pytest.raises(ValueError, match="num_classes"):
            tiny_pose_model(num_classes=2)
        with pytest.raises(ValueError, match="heads"):
            tiny_pose_model(heads={"heatmap": 1, "size": 2, "offset": 2})
        with pytest.raises(ValueError, match="test_scales"):
            tiny_pose_model(test_scales=(0.5, 1.0))
        with pytest.raises(ValueError, match="flip_probability"):
            tiny_pose_model(flip_probability=1.5)
        with pytest.raises(ValueError, match="num_joints"):
            tiny_pose_model(num_joints=0)
        with pytest.raises(ValueError, match="flip_pairs"):
            tiny_pose_model(num_joints=4)  # the COCO pairs name joints up to 16
        model = tiny_pose_model()
        images, targets = pose_batch(num_images=2)
        with pytest.raises(ValueError, match="keypoints"):
            model.compute_loss(images, {"boxes": targets["boxes"], "labels": targets["labels"]})
        with pytest.raises(ValueError, match="test_scales"):
            model.configure_prediction(test_scales=(1.0, 2.0))

    def test_hourglass_heads_and_loss_average_over_stacks(self):
        model = CenterNetPose(
            HourglassBackbone(num_stacks=2, dims=(8, 8, 16), num_blocks=(1, 1, 1), stem_channels=8,
                              output_channels=16),
            head_channels=8, size_divisor=128, max_objects=8,
        )
        for stack in range(2):
            bias = keras.ops.convert_to_numpy(model.stack_heads(stack)["keypoint_heatmap"].output_conv.bias)
            np.testing.assert_allclose(bias, HEATMAP_PRIOR_BIAS, rtol=1e-6)
        images, targets = next(iter(synthetic_pose(num_images=2, image_size=128, batch_size=2, max_objects=8)))
        images, targets = images.numpy(), {name: value.numpy() for name, value in targets.items()}
        outputs = model(images, training=True)
        (first,) = outputs["intermediate"]
        last = {name: value for name, value in outputs.items() if name != "intermediate"}
        assert set(first) == set(last) == set(model.heads)
        total = to_numpy(model.compute_loss(images, targets, y_pred=outputs))
        per_stack = [to_numpy(model.compute_loss(images, targets, y_pred=stack)) for stack in (first, last)]
        np.testing.assert_allclose(total, np.mean(per_stack), rtol=1e-5)

    def test_paper_preset(self):
        model = CenterNetPose.from_preset("dla34")
        assert model.preset == "dla34" and model.head_channels == 256 and model.num_joints == 17
        assert model.heads == {"heatmap": 1, "size": 2, "offset": 2, "keypoints": 34,
                               "keypoint_heatmap": 17, "keypoint_offset": 2}

    def test_public_names(self):
        assert kc.CenterNetPose is CenterNetPose
        assert kc.models.CenterNetPose is CenterNetPose
        assert kc.layers.decode_poses is decode_poses
        assert kc.data.synthetic_pose is synthetic_pose
