"""Drawing detections: boxes land where they say, bad boxes are skipped, the module is public."""

import numpy as np

import keras_centernet as kc


def test_draws_a_box_outline_in_place():
    image = np.zeros((40, 60, 3), np.uint8)
    picture = kc.visualization.draw_detections(
        image, np.array([[10, 5, 30, 25]], np.float32), np.array([0.9]), np.array([0]),
        class_names=["thing"], score_threshold=0.5,
    )
    assert picture.shape == (40, 60, 3)
    # The outline's left edge is painted; far from the box nothing is.
    assert picture[15, 10].any()
    assert not picture[35, 55].any()


def test_skips_inverted_nan_padded_and_low_boxes():
    image = np.full((32, 32, 3), 7, np.uint8)
    boxes = np.array([[20, 20, 10, 10], [np.nan, 1, 5, 5], [2, 2, 8, 8], [3, 3, 9, 9]], np.float32)
    picture = kc.visualization.draw_detections(
        image, boxes, np.array([0.9, 0.9, 0.9, 0.1]), np.array([0, 0, -1, 0]), score_threshold=0.5)
    # Inverted, NaN, padding (label -1) and low-scoring boxes: nothing drawn.
    np.testing.assert_array_equal(picture, image)


def test_default_export_folder_is_named_after_the_preset():
    model = kc.CenterNet.from_preset("resnet18", num_classes=2, head_channels=8)
    assert kc.export.default_export_dir(model).replace("\\", "/") == "saved_models/resnet18"
