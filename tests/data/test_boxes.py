import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_centernet.data.boxes import clip_boxes
from keras_centernet.data.boxes import convert_boxes_format
from keras_centernet.data.boxes import select_objects
from keras_centernet.data.boxes import to_original_boxes
from keras_centernet.data.boxes import transform_boxes


def test_transform_boxes_scale_shift_and_mirror():
    boxes = tf.constant([[10.0, 20.0, 30.0, 60.0]])
    scale_shift = tf.constant([[0.5, 0.0, 4.0], [0.0, 2.0, -10.0]])
    np.testing.assert_allclose(
        transform_boxes(boxes, scale_shift).numpy(), [[9.0, 30.0, 19.0, 110.0]]
    )
    # x -> 100 - x: the box's left edge comes from its right edge.
    mirror = tf.constant([[-1.0, 0.0, 100.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(transform_boxes(boxes, mirror).numpy(), [[70.0, 20.0, 90.0, 60.0]])


def test_clip_boxes():
    boxes = tf.constant([[-5.0, -1.0, 50.0, 20.0], [70.0, 10.0, 90.0, 30.0]])
    np.testing.assert_allclose(
        clip_boxes(boxes, height=25, width=64).numpy(),
        [[0.0, 0.0, 50.0, 20.0], [64.0, 10.0, 64.0, 25.0]],
    )


def test_select_objects_keeps_largest_valid_and_pads():
    boxes = tf.constant(
        [
            [0.0, 0.0, 2.0, 2.0],  # area 4
            [0.0, 0.0, 10.0, 10.0],  # area 100
            [5.0, 5.0, 5.0, 9.0],  # zero width: invalid
            [0.0, 0.0, np.nan, 3.0],  # NaN: invalid
            [0.0, 0.0, 4.0, 5.0],  # area 20
            [1.0, 1.0, 3.0, 3.0],  # area 4
        ]
    )
    labels = tf.constant([0, 1, 2, 3, 4, 5])
    kept_boxes, kept_labels = select_objects(boxes, labels, max_objects=3)
    np.testing.assert_array_equal(kept_labels.numpy(), [1, 4, 0])
    np.testing.assert_allclose(kept_boxes.numpy()[0], [0.0, 0.0, 10.0, 10.0])
    kept_boxes, kept_labels = select_objects(boxes, labels, max_objects=6)
    np.testing.assert_array_equal(kept_labels.numpy(), [1, 4, 0, 5, -1, -1])
    np.testing.assert_array_equal(kept_boxes.numpy()[4:], np.zeros((2, 4)))


def test_select_objects_of_no_objects():
    kept_boxes, kept_labels = select_objects(tf.zeros([0, 4]), tf.zeros([0], tf.int32), 4)
    np.testing.assert_array_equal(kept_labels.numpy(), [-1, -1, -1, -1])
    assert kept_boxes.shape == (4, 4)


@pytest.mark.parametrize("target", ["xywh", "center_xywh", "yxyx", "rel_xyxy", "rel_center_xywh"])
def test_convert_boxes_format_matches_hand_computed(target):
    boxes = tf.constant([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 0.0, 0.0]])
    labels = tf.constant([3, -1])
    expected = {
        "xywh": [10.0, 20.0, 20.0, 40.0],
        "center_xywh": [20.0, 40.0, 20.0, 40.0],
        "yxyx": [20.0, 10.0, 60.0, 30.0],
        "rel_xyxy": [10.0 / 100, 20.0 / 80, 30.0 / 100, 60.0 / 80],
        "rel_center_xywh": [0.2, 0.5, 0.2, 0.5],
    }[target]
    converted = convert_boxes_format(boxes, labels, target, height=80, width=100).numpy()
    np.testing.assert_allclose(converted[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(converted[1], np.zeros(4))


def test_convert_boxes_format_inside_tf_data_on_any_backend():
    dataset = tf.data.Dataset.from_tensors(
        (tf.constant([[10.0, 20.0, 30.0, 60.0]]), tf.constant([1]))
    ).map(lambda b, l: convert_boxes_format(b, l, "xywh", 80, 100))
    np.testing.assert_allclose(next(iter(dataset)).numpy(), [[10.0, 20.0, 20.0, 40.0]])
    assert keras.backend.backend() in ("tensorflow", "jax", "torch")


def test_to_original_boxes_inverts_transform():
    transform = np.array([[0.8, 0.0, 0.0], [0.0, 0.8, 64.0]])
    original = np.array([[100.0, 50.0, 300.0, 250.0]])
    # Forward by hand: x * 0.8, y * 0.8 + 64.
    inputs = np.array([[80.0, 104.0, 240.0, 264.0]])
    np.testing.assert_allclose(to_original_boxes(inputs, transform), original, rtol=1e-6)
    batched = to_original_boxes(
        np.stack([inputs, inputs * 2]), np.stack([transform, transform * 2])
    )
    np.testing.assert_allclose(batched[0], original, rtol=1e-6)
    np.testing.assert_allclose(batched[1], original, rtol=1e-6)
    with pytest.raises(ValueError, match="transform"):
        to_original_boxes(inputs, np.eye(3))
