"""The KITTI reader and results writer on a small hand-written folder of KITTI's layout.

Every expectation is computed by hand from the lines written here: the
reader scales an image by `input width / image width` and centres it on the
`(height, width)` canvas, so the three images below (384 x 128, 96 x 40 and
192 x 48 on a 64 x 192 input) are an exact fit, a cut and a letterbox.
"""

import os

import keras
import numpy as np
import pytest
from PIL import Image

import keras_centernet as kc
from keras_centernet.data.kitti import KITTI_CLASSES
from keras_centernet.data.kitti import read_kitti_calibration
from keras_centernet.data.kitti import read_kitti_labels
from keras_centernet.data.kitti import write_kitti_results

INPUT = (64, 192)  # (height, width) of the reader's canvas in these tests

# KITTI's 000000-style calibration (the P2 of the object benchmark's first image) ...
P2_A = [721.5377, 0.0, 609.5593, 44.85728, 0.0, 721.5377, 172.854, 0.2163791, 0.0, 0.0, 1.0, 0.002745884]
# ... and a second, made-up camera, for the other images.
P2_B = [100.0, 0.0, 48.0, 5.0, 0.0, 110.0, 20.0, -2.0, 0.0, 0.0, 1.0, 0.01]

# (type, truncated, occluded, alpha, x1, y1, x2, y2, h, w, l, x, y, z, rotation_y), per image.
OBJECTS_0 = [
    ("Car", 0.0, 0, -1.58, 100.0, 40.0, 180.0, 100.0, 1.52, 1.63, 3.88, -2.61, 1.68, 18.41, -1.72),
    ("Pedestrian", 0.37, 1, 1.85, 300.5, 20.25, 320.0, 90.75, 1.89, 0.48, 1.2, 5.1, 1.62, 12.02, 2.25),
    ("DontCare", -1.0, -1, -10.0, 10.0, 10.0, 60.0, 30.0, -1.0, -1.0, -1.0, -1000.0, -1000.0, -1000.0, -10.0),
    ("Van", 0.0, 2, -1.2, 200.0, 30.0, 260.0, 80.0, 2.1, 1.8, 5.0, 1.0, 1.7, 25.0, -1.16),
    ("Cyclist", 0.12, 0, 0.5, 20.0, 50.0, 60.0, 120.0, 1.75, 0.6, 1.8, -8.0, 1.6, 15.0, 0.02),
]
OBJECTS_1 = [
    ("Cyclist", 0.0, 0, -0.3, 10.0, 2.0, 30.0, 30.0, 1.7, 0.5, 1.7, -3.0, 1.5, 9.5, -0.6),
    ("Car", 0.5, 3, 2.0, 60.0, 10.0, 96.0, 39.0, 1.4, 1.6, 4.0, 6.0, 1.6, 8.0, 2.63),
]
OBJECTS_2 = [
    ("DontCare", -1.0, -1, -10.0, 5.0, 5.0, 40.0, 20.0, -1.0, -1.0, -1.0, -1000.0, -1000.0, -1000.0, -10.0),
]
COLOUR_0 = (90, 120, 150)
COLOUR_1 = (200, 40, 10)


def _label_line(obj, score=None):
    kind, truncated, occluded, *rest = obj
    text = f"{kind} {truncated:.2f} {occluded:d} " + " ".join(f"{v:.2f}" for v in rest)
    return text + (f" {score:.2f}" if score is not None else "")


def _calib_text(p2):
    def row(values):
        return " ".join(f"{v:.12e}" for v in values)

    p0 = [700.0, 0.0, 600.0, 0.0, 0.0, 700.0, 170.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    lines = [
        f"P0: {row(p0)}",
        f"P1: {row([v + 1 for v in p0])}",
        f"P2: {row(p2)}",
        f"P3: {row([v + 2 for v in p2])}",
        f"R0_rect: {row([1, 0, 0, 0, 1, 0, 0, 0, 1])}",
        f"Tr_velo_to_cam: {row([0, -1, 0, 0, 0, 0, -1, -0.08, 1, 0, 0, -0.27])}",
        f"Tr_imu_to_velo: {row([1, 0, 0, -0.81, 0, 1, 0, 0.32, 0, 0, 1, -0.8])}",
        "",
    ]
    return "\n".join(lines)


def _pattern(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


def _write_split(folder, images, labels=None):
    """`images`: {stem: (array, P2)}; `labels`: {stem: text} or None (a testing split)."""
    for name in ("image_2", "calib") + (("label_2",) if labels is not None else ()):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    for stem, (array, p2) in images.items():
        Image.fromarray(array).save(os.path.join(folder, "image_2", stem + ".png"))
        with open(os.path.join(folder, "calib", stem + ".txt"), "w") as handle:
            handle.write(_calib_text(p2))
    for stem, text in (labels or {}).items():
        with open(os.path.join(folder, "label_2", stem + ".txt"), "w") as handle:
            handle.write(text)


def write_kitti_folder(root):
    """training/: 000000 (384 x 128, flat), 000001 (96 x 40, flat), 000002 (192 x 48, a pattern)."""
    images = {
        "000000": (np.full((128, 384, 3), COLOUR_0, np.uint8), P2_A),
        "000001": (np.full((40, 96, 3), COLOUR_1, np.uint8), P2_B),
        "000002": (_pattern(48, 192), P2_B),
    }
    labels = {
        "000000": "\n".join(_label_line(o) for o in OBJECTS_0) + "\n",
        # A blank line in the middle and no final newline: both are fine.
        "000001": _label_line(OBJECTS_1[0]) + "\n\n" + _label_line(OBJECTS_1[1]),
        "000002": _label_line(OBJECTS_2[0]) + "\n",
    }
    _write_split(os.path.join(root, "training"), images, labels)
    return root


def _all(dataset):
    return list(dataset.as_numpy_iterator())


def _hand_rescaled(p2, scale, shift_x, shift_y):
    """P2 seen through `u' = scale u + shift_x`, `v' = scale v + shift_y`, row by row."""
    p = np.asarray(p2, np.float64).reshape(3, 4)
    return np.stack([scale * p[0] + shift_x * p[2], scale * p[1] + shift_y * p[2], p[2]])


def _write(path, text):
    with open(path, "w") as handle:
        handle.write(text)
    return str(path)


# === read_kitti_labels ===


def test_read_labels_parses_every_field(tmp_path):
    root = write_kitti_folder(tmp_path)
    objects = read_kitti_labels(os.path.join(root, "training", "label_2", "000000.txt"))
    assert [o["type"] for o in objects] == ["Car", "Pedestrian", "DontCare", "Van", "Cyclist"]
    ped = objects[1]
    assert ped["truncated"] == pytest.approx(0.37)
    assert ped["occluded"] == 1 and isinstance(ped["occluded"], int)
    assert ped["alpha"] == pytest.approx(1.85)
    assert ped["bbox"] == pytest.approx([300.5, 20.25, 320.0, 90.75])
    assert ped["dimensions"] == pytest.approx([1.89, 0.48, 1.2])
    assert ped["location"] == pytest.approx([5.1, 1.62, 12.02])
    assert ped["rotation_y"] == pytest.approx(2.25)
    assert "score" not in ped
    dont_care = objects[2]
    assert dont_care["occluded"] == -1 and dont_care["location"] == pytest.approx([-1000.0] * 3)
    for obj, line in zip(objects, OBJECTS_0):
        flat = [obj["truncated"], obj["occluded"], obj["alpha"], *obj["bbox"], *obj["dimensions"],
                *obj["location"], obj["rotation_y"]]
        assert flat == pytest.approx(list(line[1:])), line[0]
    # The blank line is skipped, and a file without a final newline reads its last line.
    objects = read_kitti_labels(os.path.join(root, "training", "label_2", "000001.txt"))
    assert [o["type"] for o in objects] == ["Cyclist", "Car"]
    assert objects[1]["occluded"] == 3 and objects[1]["rotation_y"] == pytest.approx(2.63)


def test_read_labels_with_score(tmp_path):
    path = _write(tmp_path / "000003.txt", "\n".join([
        "Car 0.00 0 -1.58 100.00 40.00 180.00 100.00 1.52 1.63 3.88 -2.61 1.68 18.41 -1.72 0.93",
        "Cyclist 0.00 0 0.50 20.00 50.00 60.00 120.00 1.75 0.60 1.80 -8.00 1.60 15.00 0.02 0.25",
    ]))
    objects = read_kitti_labels(path, with_score=True)
    assert [o["score"] for o in objects] == pytest.approx([0.93, 0.25])
    assert objects[0]["bbox"] == pytest.approx([100, 40, 180, 100])
    assert objects[0]["location"] == pytest.approx([-2.61, 1.68, 18.41])
    assert objects[1]["rotation_y"] == pytest.approx(0.02)
    # A results file read as labels: the same objects, without the score.
    plain = read_kitti_labels(path)
    assert "score" not in plain[0] and plain[0]["dimensions"] == pytest.approx([1.52, 1.63, 3.88])
    # A label file (15 fields) read with scores is an error naming the file and line.
    labels = _write(tmp_path / "000004.txt", _label_line(OBJECTS_0[0]) + "\n")
    with pytest.raises(ValueError, match=r"000004\.txt, line 1: expected 16 fields.*found 15"):
        read_kitti_labels(labels, with_score=True)


def test_read_labels_malformed_lines_name_the_file_and_line(tmp_path):
    good = _label_line(OBJECTS_0[0])
    short = _write(tmp_path / "short.txt", good + "\n" + "Car 0.00 0 -1.58 1 2 3 4 1.5 1.6 3.9 1 2 3\n")
    with pytest.raises(ValueError, match=r"short\.txt, line 2: expected 15 fields.*found 14"):
        read_kitti_labels(short)
    long = _write(tmp_path / "long.txt", good + " 0.5 0.7\n")
    with pytest.raises(ValueError, match=r"long\.txt, line 1: expected 15 fields.*found 17"):
        read_kitti_labels(long)
    word = _write(tmp_path / "word.txt", "\n" + good + "\n" + good.replace("-1.58", "abc") + "\n")
    with pytest.raises(ValueError, match=r"word\.txt, line 3: fields after the type must be numbers"):
        read_kitti_labels(word)
    nan = _write(tmp_path / "nan.txt", good.replace("18.41", "nan") + "\n")
    with pytest.raises(ValueError, match=r"nan\.txt, line 1: non-finite"):
        read_kitti_labels(nan)


# === read_kitti_calibration ===


def test_read_calibration(tmp_path):
    root = write_kitti_folder(tmp_path)
    p2 = read_kitti_calibration(os.path.join(root, "training", "calib", "000000.txt"))
    assert p2.shape == (3, 4) and p2.dtype == np.float32
    np.testing.assert_allclose(p2, np.reshape(P2_A, (3, 4)), rtol=1e-6)
    assert p2[0, 0] == pytest.approx(721.5377) and p2[2, 3] == pytest.approx(0.002745884)
    p3 = read_kitti_calibration(os.path.join(root, "training", "calib", "000001.txt"), camera="P3")
    np.testing.assert_allclose(p3, np.reshape(P2_B, (3, 4)) + 2, rtol=1e-6)


def test_read_calibration_errors(tmp_path):
    text = _calib_text(P2_A)
    no_p2 = _write(tmp_path / "no_p2.txt", "\n".join(l for l in text.split("\n") if not l.startswith("P2:")))
    with pytest.raises(ValueError, match=r"no_p2\.txt: no `P2:` line"):
        read_kitti_calibration(no_p2)
    short = _write(tmp_path / "short.txt", text.replace("P2: 7.215377000000e+02 ", "P2: "))
    with pytest.raises(ValueError, match=r"short\.txt, line 3: `P2` must hold 12 numbers; found 11"):
        read_kitti_calibration(short)
    word = _write(tmp_path / "word.txt", text.replace("P2: 7.215377000000e+02", "P2: x"))
    with pytest.raises(ValueError, match=r"word\.txt, line 3: `P2` must hold 12 numbers"):
        read_kitti_calibration(word)


# === kitti(...) ===


def test_kitti_batches_are_the_written_objects_in_input_pixels(tmp_path):
    root = write_kitti_folder(tmp_path)
    ds = kc.data.kitti(root, image_size=INPUT, batch_size=3, training=False, max_objects=4)
    assert ds.class_names == ["Pedestrian", "Car", "Cyclist"] and ds.num_classes == 3
    # The official converter's ids (Pedestrian 1, Car 2, Cyclist 3, then Van 4 ...).
    assert ds.category_ids == [1, 2, 3]
    assert ds.info.num_examples == 3
    ((images, y),) = _all(ds)
    assert images.shape == (3, 64, 192, 3) and images.dtype == np.float32
    assert y["boxes"].shape == (3, 4, 4) and y["labels"].dtype == np.int32
    assert y["depth"].shape == (3, 4) and y["dimensions"].shape == (3, 4, 3) and y["alpha"].shape == (3, 4)
    np.testing.assert_array_equal(y["image_id"], [0, 1, 2])
    np.testing.assert_array_equal(y["original_size"], [[128, 384], [40, 96], [48, 192]])

    # 000000: 384 x 128 at 192 / 384 = 0.5 is 192 x 64: no shift. DontCare and Van dropped.
    # 000001: 96 x 40 at 2 is 192 x 80, centred on 64 rows: shift -8 (cut top and bottom).
    # 000002: 192 x 48 at 1, centred: shift +8 (letterboxed); only a DontCare: all padding.
    transforms = [(0.5, 0.0, 0.0), (2.0, 0.0, -8.0), (1.0, 0.0, 8.0)]
    for i, (s, tx, ty) in enumerate(transforms):
        np.testing.assert_allclose(y["transform"][i], [[s, 0, tx], [0, s, ty]], atol=1e-6)
    # Pedestrian 0, Car 1, Cyclist 2, in the file's order; -1 pads.
    np.testing.assert_array_equal(y["labels"], [[1, 0, 2, -1], [2, 1, -1, -1], [-1, -1, -1, -1]])
    expected_boxes = [
        [[50, 20, 90, 50], [150.25, 10.125, 160, 45.375], [10, 25, 30, 60], [0, 0, 0, 0]],
        # Cyclist y1 2 * 2 - 8 = -4 is clipped to 0; Car y2 39 * 2 - 8 = 70 to 64.
        [[20, 0, 60, 52], [120, 12, 192, 64], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, 0, 0, 0]] * 4,
    ]
    np.testing.assert_allclose(y["boxes"], expected_boxes, atol=1e-5)
    np.testing.assert_allclose(y["depth"], [[18.41, 12.02, 15.0, 0], [9.5, 8.0, 0, 0], [0] * 4], rtol=1e-6)
    np.testing.assert_allclose(y["alpha"], [[-1.58, 1.85, 0.5, 0], [-0.3, 2.0, 0, 0], [0] * 4], rtol=1e-6)
    np.testing.assert_allclose(y["rotation_y"], [[-1.72, 2.25, 0.02, 0], [-0.6, 2.63, 0, 0], [0] * 4],
                               rtol=1e-6)
    np.testing.assert_allclose(
        y["dimensions"],
        [[[1.52, 1.63, 3.88], [1.89, 0.48, 1.2], [1.75, 0.6, 1.8], [0, 0, 0]],
         [[1.7, 0.5, 1.7], [1.4, 1.6, 4.0], [0, 0, 0], [0, 0, 0]],
         [[0, 0, 0]] * 4],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        y["locations"],
        [[[-2.61, 1.68, 18.41], [5.1, 1.62, 12.02], [-8.0, 1.6, 15.0], [0, 0, 0]],
         [[-3.0, 1.5, 9.5], [6.0, 1.6, 8.0], [0, 0, 0], [0, 0, 0]],
         [[0, 0, 0]] * 4],
        rtol=1e-6,
    )

    # The calibration is P2 for input pixels.
    for i, (p2, (s, tx, ty)) in enumerate(zip([P2_A, P2_B, P2_B], transforms)):
        np.testing.assert_allclose(y["calibration"][i], _hand_rescaled(p2, s, tx, ty), rtol=1e-5, atol=1e-4)
    # So a 3D point projects to where its original-pixel projection was moved: the Car of 000000.
    point = np.array([-2.61, 1.68 - 1.52 / 2, 18.41, 1.0])
    original = np.reshape(P2_A, (3, 4)) @ point
    resized = y["calibration"][0].astype(np.float64) @ point
    np.testing.assert_allclose(resized[:2] / resized[2], 0.5 * original[:2] / original[2], rtol=1e-5)

    # Pixels: 000000 fills the canvas exactly; 000001 is flat inside; 000002 sits on rows 8..55.
    np.testing.assert_allclose(images[0], np.broadcast_to(COLOUR_0, (64, 192, 3)), atol=1e-3)
    np.testing.assert_allclose(images[1, 1:-1, 1:-1], np.broadcast_to(COLOUR_1, (62, 190, 3)), atol=1e-3)
    np.testing.assert_allclose(images[2, 8:56], _pattern(48, 192), atol=1e-2)
    np.testing.assert_allclose(images[2, :8], 0, atol=1e-2)  # the letterbox's zero fill
    np.testing.assert_allclose(images[2, 56:], 0, atol=1e-2)


def test_kitti_options(tmp_path):
    root = write_kitti_folder(tmp_path)
    # Van kept when asked for: labels follow `class_names`; DontCare is still dropped.
    ds = kc.data.kitti(root, image_size=INPUT, batch_size=1, training=False, max_objects=3,
                       image_ids=["000000"], class_names=("Van", "Car"))
    assert ds.class_names == ["Van", "Car"] and ds.info.num_examples == 1
    assert ds.category_ids == [4, 2]
    ((_, y),) = _all(ds)
    np.testing.assert_array_equal(y["labels"], [[1, 0, -1]])
    np.testing.assert_allclose(y["boxes"][0, :2], [[50, 20, 90, 50], [100, 15, 130, 40]])
    np.testing.assert_allclose(y["depth"][0], [18.41, 25.0, 0.0], rtol=1e-6)
    # `max_objects` keeps the first objects of the file.
    ((_, y),) = _all(kc.data.kitti(root, image_size=INPUT, batch_size=1, training=False, max_objects=1,
                                   image_ids=["000000"]))
    np.testing.assert_array_equal(y["labels"], [[1]])
    # Training: shuffled, the last incomplete batch dropped (3 images, batches of 2).
    train = kc.data.kitti(root, image_size=INPUT, batch_size=2, training=True, max_objects=4)
    batches = _all(train)
    assert len(batches) == 1 and batches[0][0].shape == (2, 64, 192, 3)
    ids = set(batches[0][1]["image_id"].tolist())
    assert len(ids) == 2 and ids <= {0, 1, 2}


def test_kitti_testing_split_has_no_objects(tmp_path):
    _write_split(os.path.join(tmp_path, "testing"), {"000005": (_pattern(48, 192, seed=1), P2_B)})
    ((images, y),) = _all(kc.data.kitti(tmp_path, split="testing", image_size=INPUT, batch_size=1,
                                        training=False, max_objects=2))
    np.testing.assert_array_equal(y["labels"], [[-1, -1]])
    np.testing.assert_array_equal(y["boxes"], np.zeros((1, 2, 4)))
    np.testing.assert_array_equal(y["image_id"], [5])
    np.testing.assert_allclose(y["calibration"][0], _hand_rescaled(P2_B, 1.0, 0.0, 8.0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(images[0, 8:56], _pattern(48, 192, seed=1), atol=1e-2)


def test_kitti_errors_are_clear(tmp_path):
    root = write_kitti_folder(tmp_path)
    with pytest.raises(ValueError, match="`class_names` must be KITTI types"):
        kc.data.kitti(root, class_names=("Car", "Bus"))
    with pytest.raises(ValueError, match="images folder .* does not exist"):
        kc.data.kitti(root, split="testing")
    with pytest.raises(ValueError, match=r"000009\.png does not exist"):
        kc.data.kitti(root, image_ids=["000009"])
    # A malformed label file fails when the dataset is made, with its path and line.
    _write(os.path.join(root, "training", "label_2", "000001.txt"), _label_line(OBJECTS_1[0]) + " 1 2\n")
    with pytest.raises(ValueError, match=r"label_2.000001\.txt, line 1: expected 15 fields"):
        kc.data.kitti(root, image_size=INPUT)
    os.remove(os.path.join(root, "training", "calib", "000002.txt"))
    with pytest.raises(ValueError, match=r"calibration .*000002\.txt does not exist"):
        kc.data.kitti(root, image_size=INPUT, image_ids=["000002"])


# === write_kitti_results ===


def _detections():
    """Three images of two slots, in input pixels of the transforms of 000000 and 000001."""
    boxes = np.array([[[50, 20, 90, 50], [10, 25, 30, 60]],
                      [[20, 12, 60, 52], [0, 0, 0, 0]],
                      [[0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    return {
        "boxes": boxes,
        "scores": np.array([[0.876, 0.3], [0.51, 0.0], [0.0, 0.0]], np.float32),
        "labels": np.array([[1, 2], [0, -1], [-1, -1]], np.int32),
        "alpha": np.array([[-1.58, 0.5], [-0.3, 0], [0, 0]], np.float32),
        "dimensions": np.array([[[1.52, 1.63, 3.88], [1.75, 0.6, 1.8]], [[1.7, 0.5, 1.7], [0, 0, 0]],
                                [[0, 0, 0], [0, 0, 0]]], np.float32),
        "locations": np.array([[[-2.61, 1.68, 18.41], [-8.0, 1.6, 15.0]], [[-3.0, 1.5, 9.5], [0, 0, 0]],
                               [[0, 0, 0], [0, 0, 0]]], np.float32),
        "rotation_y": np.array([[-1.72, 0.02], [-0.6, 0], [0, 0]], np.float32),
        "num_detections": np.array([2, 1, 0], np.int32),
    }


def test_write_results_round_trip(tmp_path):
    directory = os.path.join(tmp_path, "results", "data")
    transform = np.array([[[0.5, 0, 0], [0, 0.5, 0]], [[2, 0, 0], [0, 2, -8]], [[1, 0, 0], [0, 1, 8]]])
    written = write_kitti_results(directory, _detections(), [0, 7, 12], transform=transform)
    names = ("000000.txt", "000007.txt", "000012.txt")
    assert written == [os.path.join(directory, name) for name in names]
    with open(written[0]) as handle:
        lines = handle.read().splitlines()
    # `type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y score`, boxes in original pixels.
    assert lines[0] == "Car 0.00 0 -1.58 100.00 40.00 180.00 100.00 1.52 1.63 3.88 -2.61 1.68 18.41 -1.72 0.88"
    assert len(lines[0].split()) == 16 and len(lines) == 2
    first, second = read_kitti_labels(written[0], with_score=True)
    assert first["type"] == "Car" and first["truncated"] == 0 and first["occluded"] == 0
    assert first["score"] == pytest.approx(0.88)
    assert second["type"] == "Cyclist" and second["bbox"] == pytest.approx([20, 50, 60, 120])
    assert second["dimensions"] == pytest.approx([1.75, 0.6, 1.8])
    assert second["location"] == pytest.approx([-8.0, 1.6, 15.0])
    assert (second["alpha"], second["rotation_y"], second["score"]) == pytest.approx((0.5, 0.02, 0.3))
    # 000007: (x - 0) / 2, (y + 8) / 2; the blanked slot (-1) is not written.
    (ped,) = read_kitti_labels(written[1], with_score=True)
    assert ped["type"] == "Pedestrian" and ped["bbox"] == pytest.approx([10, 10, 30, 30])
    assert ped["location"] == pytest.approx([-3.0, 1.5, 9.5]) and ped["score"] == pytest.approx(0.51)
    # An image without detections still gets its (empty) file.
    assert os.path.getsize(written[2]) == 0 and read_kitti_labels(written[2], with_score=True) == []
    # Without a transform, boxes are already original pixels.
    plain = write_kitti_results(os.path.join(tmp_path, "plain"), _detections(), [0, 7, 12])
    assert read_kitti_labels(plain[1], with_score=True)[0]["bbox"] == pytest.approx([20, 12, 60, 52])


def test_write_results_errors(tmp_path):
    detections = _detections()
    with pytest.raises(ValueError, match="2 image ids for 3 images"):
        write_kitti_results(tmp_path, detections, [0, 1])
    with pytest.raises(ValueError, match=r"`transform` must have shape \(3, 2, 3\)"):
        write_kitti_results(tmp_path, detections, [0, 1, 2], transform=np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match=r"lacks \['alpha'\]"):
        write_kitti_results(tmp_path, {k: v for k, v in detections.items() if k != "alpha"}, [0, 1, 2])
    detections["labels"][0, 0] = 3
    with pytest.raises(ValueError, match="Label 3 has no name"):
        write_kitti_results(tmp_path, detections, [0, 1, 2])


# === The model's contract ===


def test_centernet_3d_fits_and_predicts_on_the_reader(tmp_path):
    root = write_kitti_folder(tmp_path)
    model = kc.CenterNet3D(
        kc.backbones.ResNetBackbone(depth=18, width=8),
        neck=kc.necks.UpConvNeck(filters=(16, 16, 16), use_dcn=False),
        head_channels=8, max_objects=8, score_threshold=0.0, max_detections=4,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    train = kc.data.kitti(root, image_size=INPUT, batch_size=2, training=True, max_objects=8)
    history = model.fit(train, epochs=2, verbose=0)
    for name in ("loss", "heatmap_loss", "size_loss", "offset_loss", "depth_loss", "dimensions_loss",
                 "rotation_loss"):
        assert len(history.history[name]) == 2 and np.all(np.isfinite(history.history[name])), name
    assert history.history["loss"][0] > 0

    # Predict takes the batches' input-pixel calibration; the writer maps boxes back with `transform`.
    evaluation = kc.data.kitti(root, image_size=INPUT, batch_size=3, training=False, max_objects=8)
    ((_, y),) = _all(evaluation)
    out = model.predict(evaluation, verbose=0)
    assert out["boxes"].shape == (3, 4, 4) and out["locations"].shape == (3, 4, 3)
    written = write_kitti_results(os.path.join(tmp_path, "results"), out, y["image_id"], y["transform"])
    for i, path in enumerate(written):
        assert os.path.basename(path) == f"{i:06d}.txt"
        objects = read_kitti_labels(path, with_score=True)
        kept = np.nonzero(out["labels"][i] >= 0)[0]
        assert len(objects) == len(kept) == 4
        (s, _, tx), (_, _, ty) = y["transform"][i]
        for obj, k in zip(objects, kept):
            assert obj["type"] == KITTI_CLASSES[out["labels"][i, k]]
            assert obj["score"] == pytest.approx(out["scores"][i, k], abs=0.006)
            x1, y1, x2, y2 = out["boxes"][i, k]
            expected = [(x1 - tx) / s, (y1 - ty) / s, (x2 - tx) / s, (y2 - ty) / s]
            assert obj["bbox"] == pytest.approx(expected, abs=0.006)
            assert obj["location"] == pytest.approx(out["locations"][i, k], abs=0.006)
