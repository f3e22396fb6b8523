import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from PIL import ImageOps

from keras_centernet.data.decode import decode_image
from keras_centernet.data.decode import exif_orientation
from tests.data.images import big_endian_exif_jpeg
from tests.data.images import block_image
from tests.data.images import jpeg_bytes
from tests.data.images import png_bytes


# The EXIF standard's orientations as Pillow transpositions (as `ImageOps.exif_transpose`).
PILLOW_METHODS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _check_upright(contents, orientation):
    assert int(exif_orientation(contents)) == orientation
    ours = decode_image(contents).numpy()
    raw = decode_image(contents, apply_orientation=False).numpy()
    assert raw.shape == (24, 40, 3)
    expected = np.asarray(Image.fromarray(raw).transpose(PILLOW_METHODS[orientation])) \
        if orientation != 1 else raw
    np.testing.assert_array_equal(ours, expected)
    # Pillow's own reading of the tag agrees (away from the JPEG-blurred block edges).
    pillow = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(contents))).convert("RGB"))
    assert pillow.shape == ours.shape
    height, width = ours.shape[:2]
    for y in (height // 4, 3 * height // 4):
        for x in (width // 4, 3 * width // 4):
            np.testing.assert_allclose(ours[y, x].astype(int), pillow[y, x], atol=8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    _check_upright(jpeg_bytes(block_image(), exif_orientation=orientation), orientation)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_big_endian_exif(orientation):
    _check_upright(big_endian_exif_jpeg(block_image(), orientation), orientation)


def test_no_exif_and_non_jpeg_mean_orientation_one():
    assert int(exif_orientation(jpeg_bytes(block_image()))) == 1
    assert int(exif_orientation(png_bytes(block_image()))) == 1
    assert int(exif_orientation(b"")) == 1
    unrotated = decode_image(jpeg_bytes(block_image(), exif_orientation=6), apply_orientation=False)
    assert tuple(unrotated.shape) == (24, 40, 3)


def test_grayscale_rgba_16bit_and_cmyk_become_rgb_uint8():
    image = block_image()
    gray = np.full((6, 5), 77, np.uint8)
    decoded = decode_image(png_bytes(gray)).numpy()
    assert decoded.shape == (6, 5, 3) and (decoded == 77).all()

    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 9, np.uint8)], axis=-1)
    np.testing.assert_array_equal(decode_image(png_bytes(rgba, mode="RGBA")).numpy(), image)

    deep = image.astype(np.uint16) * 257  # 8-bit values scaled to 16 bits exactly
    decoded = decode_image(png_bytes(deep)).numpy()
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, image)

    cmyk = decode_image(jpeg_bytes(image, mode="CMYK", quality=100)).numpy()
    np.testing.assert_allclose(cmyk.astype(int), image.astype(int), atol=2)


def test_corrupt_bytes_raise():
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image(b"this is not an image")
    truncated = jpeg_bytes(block_image(64, 64))[:300]
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image(truncated)
