"""Image decoding for the input pipeline, with EXIF orientation (TensorFlow ops).

TensorFlow-only code, confined to `keras_centernet.data`: it runs inside
`tf.data` maps whatever the Keras backend.

`decode_image` turns file bytes (JPEG, PNG, GIF, BMP, WebP) into RGB `uint8`:
grayscale is replicated to three channels, alpha is dropped, 16-bit PNG is
scaled to 8 bits, CMYK JPEG is converted by the decoder, and a JPEG's EXIF
orientation tag is applied, as `cv2.imread` (the official code's reader) and
the annotation tools that show images upright do. Undecodable bytes raise an
`InvalidArgumentError`, which the readers turn into a skipped image.
"""

import tensorflow as tf

# The TIFF tag that holds the orientation, and how far into the file we look:
# the APP1 segment with EXIF comes right after SOI and is at most 64 KiB.
_ORIENTATION_TAG = 0x0112
_EXIF_SEARCH_BYTES = 65536
_TIFF_BYTES = 4096
_MAX_IFD_ENTRIES = 64


def exif_orientation(contents):
    """The EXIF orientation (1 to 8) of JPEG bytes; 1 when absent or unreadable.

    Parsed with string ops: the TIFF header that follows `Exif\\0\\0` gives the
    byte order and the first IFD, whose entries are searched for tag 0x0112.

    Args:
        contents: scalar string tensor, the file's bytes.

    Returns:
        int32 scalar tensor.
    """
    is_jpeg = tf.equal(tf.strings.substr(contents, 0, 2), b"\xff\xd8")
    header = tf.strings.substr(contents, 0, _EXIF_SEARCH_BYTES)
    parts = tf.strings.split(header, b"Exif\x00\x00", maxsplit=1)
    found = tf.logical_and(is_jpeg, tf.equal(tf.size(parts), 2))
    tiff = tf.strings.substr(parts[-1], 0, _TIFF_BYTES)
    data = tf.cast(tf.io.decode_raw(tiff, tf.uint8), tf.int32)
    data = tf.pad(data, [[0, _TIFF_BYTES + 8 - tf.size(data)]])

    big_endian = tf.logical_and(tf.equal(data[0], 77), tf.equal(data[1], 77))
    little_endian = tf.logical_and(tf.equal(data[0], 73), tf.equal(data[1], 73))

    def read(offsets, num_bytes):
        offsets = tf.clip_by_value(offsets, 0, _TIFF_BYTES)
        value = tf.zeros_like(offsets)
        for i in range(num_bytes):
            byte = tf.gather(data, offsets + i)
            shift = tf.where(big_endian, 8 * (num_bytes - 1 - i), 8 * i)
            value += tf.bitwise.left_shift(byte, shift)
        return value

    first_ifd = read(tf.constant(4), 4)
    num_entries = read(first_ifd, 2)
    entry_offsets = first_ifd + 2 + 12 * tf.range(_MAX_IFD_ENTRIES)
    tags = read(entry_offsets, 2)
    is_orientation = (tf.range(_MAX_IFD_ENTRIES) < num_entries) & tf.equal(tags, _ORIENTATION_TAG)
    values = read(entry_offsets + 8, 2)
    value = tf.reduce_max(tf.where(is_orientation, values, 0))
    valid = found & (big_endian | little_endian) & (value >= 1) & (value <= 8)
    return tf.where(valid, value, 1)


def apply_exif_orientation(image, orientation):
    """Turns a stored image upright given its EXIF `orientation` (1 to 8).

    The standard's eight cases are a transpose (5 to 8) followed by horizontal
    and vertical flips: 2 mirror, 3 rotate 180, 4 flip vertically, 5 transpose,
    6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    """
    transpose = orientation >= 5
    flip_left_right = tf.reduce_any(tf.equal(orientation, [2, 3, 6, 7]))
    flip_up_down = tf.reduce_any(tf.equal(orientation, [3, 4, 7, 8]))
    image = tf.cond(transpose, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    image = tf.cond(flip_left_right, lambda: tf.reverse(image, [1]), lambda: image)
    image = tf.cond(flip_up_down, lambda: tf.reverse(image, [0]), lambda: image)
    return image


def decode_image(contents, apply_orientation=True):
    """Decodes image bytes to RGB `uint8` `(height, width, 3)`.

    Args:
        contents: scalar string tensor, the file's bytes.
        apply_orientation: bool. Whether to apply a JPEG's EXIF orientation.
            Defaults to True.

    Returns:
        uint8 tensor `(height, width, 3)`.

    Example:

    >>> png = tf.io.encode_png(tf.zeros((5, 7, 3), tf.uint8))
    >>> tuple(decode_image(png).shape)
    (5, 7, 3)
    """
    is_jpeg = tf.equal(tf.strings.substr(contents, 0, 2), b"\xff\xd8")
    # The accurate integer IDCT is libjpeg's default, so OpenCV's and Pillow's
    # (the official code reads with OpenCV); TensorFlow's default fast IDCT
    # rings by up to 18 levels on sharp edges and breaks on CMYK JPEGs.
    image = tf.cond(
        is_jpeg,
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(
            contents, channels=3, dtype=tf.uint8, expand_animations=False
        ),
    )
    image = tf.ensure_shape(image, [None, None, 3])
    if apply_orientation:
        image = apply_exif_orientation(image, exif_orientation(contents))
    return image
