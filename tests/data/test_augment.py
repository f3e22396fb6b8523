import numpy as np
import pytest
import tensorflow as tf

from keras_centernet.data.augment import OFFICIAL_CROP_SCALES
from keras_centernet.data.augment import Augmentation
from keras_centernet.data.augment import apply_color_transform
from keras_centernet.data.augment import center_scale_matrix
from keras_centernet.data.augment import color_augment
from keras_centernet.data.augment import eval_preprocess
from keras_centernet.data.augment import eval_transform
from keras_centernet.data.augment import official_border
from keras_centernet.data.augment import warp_affine
from keras_centernet.data.boxes import transform_boxes

# The official COCO PCA (src/lib/datasets/dataset/coco.py), BGR rows.
OFFICIAL_EIGVAL = np.array([0.2141788, 0.01817699, 0.00341571], np.float32)
OFFICIAL_EIGVEC_BGR = np.array(
    [
        [-0.58752847, -0.69563484, 0.41340352],
        [-0.5832747, 0.00994535, -0.81221408],
        [-0.56089297, 0.71832671, 0.41158938],
    ],
    np.float32,
)


def test_official_crop_scales():
    np.testing.assert_allclose(OFFICIAL_CROP_SCALES, np.arange(0.6, 1.4, 0.1), atol=1e-9)


@pytest.mark.parametrize(
    "size, expected", [(640, 128), (257, 128), (256, 64), (200, 64), (100, 32), (3, 1), (1, 0)]
)
def test_official_border(size, expected):
    # By hand from `_get_border`: halve 128 while size - b <= b.
    assert int(official_border(128, size)) == expected


def test_center_scale_matrix_is_official_affine():
    # get_affine_transform(c=(320, 240), s=640, 0, (512, 512)) by hand: scale
    # 512 / 640 = 0.8, the centre goes to (256, 256).
    matrix = center_scale_matrix(320.0, 240.0, 640.0, (512, 512)).numpy()
    np.testing.assert_allclose(matrix, [[0.8, 0.0, 0.0], [0.0, 0.8, 64.0]], atol=1e-6)
    # Non-square output: the official code scales by the width in both axes.
    matrix = center_scale_matrix(100.0, 50.0, 200.0, (64, 128)).numpy()
    np.testing.assert_allclose(matrix, [[0.64, 0.0, 0.0], [0.0, 0.64, 0.0]], atol=1e-6)


def test_warp_affine_maps_a_square_where_the_matrix_says():
    image = np.zeros((40, 40, 3), np.float32)
    image[10:20, 4:12] = 200.0  # covers x in [4, 12], y in [10, 20]
    # x -> 2x + 3, y -> 2y - 5: the square covers x [11, 27], y [15, 35].
    matrix = tf.constant([[2.0, 0.0, 3.0], [0.0, 2.0, -5.0]])
    out = warp_affine(image, matrix, (48, 40)).numpy()
    assert out.shape == (48, 40, 3)
    inside = out[16:34, 12:26]
    np.testing.assert_allclose(inside, 200.0, atol=1e-3)
    np.testing.assert_allclose(out[:14], 0.0, atol=1e-3)
    np.testing.assert_allclose(out[36:], 0.0, atol=1e-3)
    np.testing.assert_allclose(out[:, :10], 0.0, atol=1e-3)
    np.testing.assert_allclose(out[:, 28:], 0.0, atol=1e-3)
    # Edge pixels are half covered: pixel column 11 spans [11, 12], its centre
    # 11.5 samples input x (11.5 - 3) / 2 = 4.25, between pixels 3 and 4
    # (centres 3.5 and 4.5): 0.75 of the way to the square.
    np.testing.assert_allclose(out[20, 11], 150.0, atol=1e-3)


def test_warp_affine_identity_keeps_pixels():
    image = np.random.default_rng(0).uniform(0, 255, (17, 23, 3)).astype(np.float32)
    identity = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # Up to float32 rounding of the sample positions (~1e-6 pixel).
    np.testing.assert_allclose(warp_affine(image, identity, (17, 23)).numpy(), image, atol=1e-3)


def test_warp_affine_matches_bilinear_sampling_by_hand():
    # x -> -1.5 x + 30 (a mirror), y -> 0.5 y + 2: output pixel (i, j) samples
    # the input at pixel-index u = (j + 0.5 - 30) / -1.5 - 0.5 and
    # v = (i + 0.5 - 2) / 0.5 - 0.5, bilinear with zeros outside the image.
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, (9, 13, 3))
    matrix = tf.constant([[-1.5, 0.0, 30.0], [0.0, 0.5, 2.0]])
    out = warp_affine(image, matrix, (8, 24)).numpy()
    padded = np.pad(image, [[1, 1], [1, 1], [0, 0]])
    expected = np.zeros((8, 24, 3))
    for i in range(8):
        for j in range(24):
            u = (j + 0.5 - 30.0) / -1.5 - 0.5 + 1.0
            v = (i + 0.5 - 2.0) / 0.5 - 0.5 + 1.0
            if not (0 <= u <= 14 and 0 <= v <= 10):
                continue
            u0, v0 = min(int(np.floor(u)), 13), min(int(np.floor(v)), 9)
            du, dv = u - u0, v - v0
            expected[i, j] = (
                (1 - dv) * ((1 - du) * padded[v0, u0] + du * padded[v0, u0 + 1])
                + dv * ((1 - du) * padded[v0 + 1, u0] + du * padded[v0 + 1, u0 + 1])
            )
    np.testing.assert_allclose(out, expected, atol=1e-2)
    with pytest.raises(ValueError, match="output_size"):
        warp_affine(image, matrix, (1, 24))


def _square_image(height=96, width=128, box=(30, 20, 70, 50)):
    image = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = (255, 0, 0)
    return image, np.array([box], np.float32)


def _red_extent(image):
    red = image[..., 0] > 127
    rows, cols = np.nonzero(red.any(axis=1))[0], np.nonzero(red.any(axis=0))[0]
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


@pytest.mark.parametrize("random_crop", [True, False])
def test_augmentation_keeps_a_square_in_its_box(random_crop):
    image, boxes = _square_image()
    augmentation = Augmentation(random_crop=random_crop, color=False)
    checked = 0
    for index in range(12):
        out, out_boxes, _ = augmentation(image, boxes, (64, 64), seed=[7, index])
        box = out_boxes.numpy()[0]
        inside = (box[0] >= 1) and (box[1] >= 1) and (box[2] <= 63) and (box[3] <= 63)
        if not inside or min(box[2] - box[0], box[3] - box[1]) < 4:
            continue
        np.testing.assert_allclose(_red_extent(out.numpy()), box, atol=1.0)
        checked += 1
    assert checked >= 4


def test_flip_mirrors_image_and_maps_x_to_width_minus_x():
    image, boxes = _square_image()
    image[5:15, 100:120] = (0, 255, 0)
    plain = Augmentation(flip_probability=0.0, color=False)
    flipped = Augmentation(flip_probability=1.0, color=False)
    for index in range(4):
        seed = [3, index]
        out, out_boxes, _ = plain(image, boxes, (64, 80), seed)
        out_f, out_boxes_f, _ = flipped(image, boxes, (64, 80), seed)
        np.testing.assert_allclose(out_f.numpy(), out.numpy()[:, ::-1], atol=1e-2)
        x1, y1, x2, y2 = out_boxes.numpy()[0]
        np.testing.assert_allclose(out_boxes_f.numpy()[0], [80 - x2, y1, 80 - x1, y2], atol=1e-4)


def test_random_crop_draws_official_scales_and_centres():
    augmentation = Augmentation(flip_probability=0.0)
    height, width = 300, 400
    border_x, border_y = 128, 64  # _get_border(128, 400), _get_border(128, 300)
    scales, centres = set(), []
    for index in range(60):
        matrix, _ = augmentation.sample_matrix(height, width, (512, 512), tf.constant([1, index]))
        matrix = matrix.numpy()
        size = 512.0 / matrix[0, 0]
        centre = (256.0 - matrix[:, 2]) / matrix[0, 0]
        scales.add(round(float(size / width), 4))
        centres.append(centre)
    centres = np.array(centres)
    assert scales <= {round(s, 4) for s in OFFICIAL_CROP_SCALES}
    assert len(scales) >= 6
    np.testing.assert_allclose(centres, np.round(centres), atol=1e-3)
    assert centres[:, 0].min() >= border_x and centres[:, 0].max() <= width - border_x - 1
    assert centres[:, 1].min() >= border_y and centres[:, 1].max() <= height - border_y - 1


def test_not_rand_crop_draws_clipped_shift_and_scale():
    augmentation = Augmentation(random_crop=False, flip_probability=0.0)
    height, width = 300, 400
    sizes, shifts = [], []
    for index in range(200):
        matrix, _ = augmentation.sample_matrix(height, width, (512, 512), tf.constant([2, index]))
        matrix = matrix.numpy()
        sizes.append(512.0 / matrix[0, 0] / width)
        centre = (256.0 - matrix[:, 2]) / matrix[0, 0]
        shifts.append((centre - [width / 2, height / 2]) / width)
    sizes, shifts = np.array(sizes), np.array(shifts)
    assert sizes.min() >= 0.6 - 1e-5 and sizes.max() <= 1.4 + 1e-5
    assert np.abs(shifts).max() <= 0.2 + 1e-5
    # N(1, 0.4) and N(0, 0.1): both clips are reached in 200 draws.
    assert np.isclose(sizes, 0.6, atol=1e-5).any() and np.isclose(sizes, 1.4, atol=1e-5).any()
    assert 0.05 < np.std(shifts) < 0.15


def _official_color_aug_bgr(image_bgr01, factors, order, alpha):
    """`color_aug` of src/lib/utils/image.py, with its random numbers given."""
    image = image_bgr01.copy()
    gray = image[..., 0] * 0.114 + image[..., 1] * 0.587 + image[..., 2] * 0.299
    gray_mean = gray.mean()
    for operation in order:
        a = factors[operation]
        if operation == 0:  # brightness_
            image *= a
        elif operation == 1:  # contrast_: blend_(alpha, image, gs_mean)
            image = image * a + gray_mean * (1 - a)
        else:  # saturation_: blend_(alpha, image, gs[:, :, None])
            image = image * a + gray[..., None] * (1 - a)
    image += np.dot(OFFICIAL_EIGVEC_BGR, OFFICIAL_EIGVAL * alpha)
    return image


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_color_transform_matches_official_on_bgr(order):
    rng = np.random.default_rng(0)
    image_rgb = rng.uniform(0, 255, (6, 7, 3)).astype(np.float32)
    factors = np.array([1.3, 0.7, 1.1], np.float32)
    alpha = np.array([0.1, -0.2, 0.05], np.float32)
    expected_bgr = _official_color_aug_bgr(image_rgb[..., ::-1] / 255.0, factors, order, alpha)
    ours = apply_color_transform(image_rgb, factors, tf.constant(order), alpha).numpy()
    np.testing.assert_allclose(ours, expected_bgr[..., ::-1] * 255.0, rtol=1e-5, atol=1e-3)


def test_color_augment_is_seeded_and_identity_at_zero_strength():
    image = np.random.default_rng(1).uniform(0, 255, (5, 5, 3)).astype(np.float32)
    a = color_augment(image, [0, 1]).numpy()
    np.testing.assert_array_equal(a, color_augment(image, [0, 1]).numpy())
    assert not np.allclose(a, color_augment(image, [0, 2]).numpy())
    np.testing.assert_allclose(
        color_augment(image, [0, 1], strength=0.0, lighting_std=0.0).numpy(), image, atol=1e-4
    )


def test_eval_transform_resize_and_pad_are_official():
    # fix_res: c = (320, 240), s = 640 into 512: scale 0.8, (0, 64) shift.
    matrix, size = eval_transform(480, 640, (512, 512))
    np.testing.assert_allclose(matrix.numpy(), [[0.8, 0, 0], [0, 0.8, 64]], atol=1e-6)
    assert tuple(size.numpy()) == (512, 512)
    # keep_res: (480 | 31) + 1 = 512, (640 | 31) + 1 = 672; centre (320, 240)
    # goes to (336, 256).
    matrix, size = eval_transform(480, 640, None, 32)
    np.testing.assert_allclose(matrix.numpy(), [[1, 0, 16], [0, 1, 16]])
    assert tuple(size.numpy()) == (512, 672)
    matrix, size = eval_transform(333, 500, None, 32)
    assert tuple(size.numpy()) == ((333 | 31) + 1, (500 | 31) + 1)


def test_eval_preprocess_pad_copies_pixels_exactly():
    image = np.random.default_rng(2).integers(0, 255, (40, 50, 3)).astype(np.uint8)
    out, matrix = eval_preprocess(image, None, 32)
    assert out.shape == (64, 64, 3)
    tx, ty = int(matrix[0, 2]), int(matrix[1, 2])
    assert (tx, ty) == (32 - 25, 32 - 20)
    np.testing.assert_array_equal(out.numpy()[ty:ty + 40, tx:tx + 50], image)
    assert out.numpy().sum() == image.astype(np.float64).sum()


def test_eval_preprocess_resize_keeps_a_square_in_its_box():
    image, boxes = _square_image(height=90, width=150)
    out, matrix = eval_preprocess(image, (64, 64))
    box = transform_boxes(boxes, matrix).numpy()[0]
    np.testing.assert_allclose(_red_extent(out.numpy()), box, atol=1.0)


def test_augmentation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="flip_probability"):
        Augmentation(flip_probability=1.5)
    with pytest.raises(ValueError, match="crop_scales"):
        Augmentation(crop_scales=())
    with pytest.raises(ValueError, match="negative"):
        Augmentation(scale=-1)
