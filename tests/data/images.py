"""Writers of small test images in the formats the readers must handle."""

import io
import struct

import numpy as np
from PIL import Image


def block_image(height=24, width=40):
    """An RGB uint8 image of four flat coloured quadrants (easy to tell rotated)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 2] = (250, 20, 20)
    image[: height // 2, width // 2:] = (20, 250, 20)
    image[height // 2:, : width // 2] = (20, 20, 250)
    image[height // 2:, width // 2:] = (240, 240, 30)
    return image


def jpeg_bytes(image, mode="RGB", exif_orientation=None, quality=95):
    pil = Image.fromarray(image)
    if mode != pil.mode:
        pil = pil.convert(mode)
    buffer = io.BytesIO()
    kwargs = {"quality": quality, "subsampling": 0}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    pil.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def png_bytes(array, mode=None):
    buffer = io.BytesIO()
    if array.dtype == np.uint16 and array.ndim == 3:
        # PIL cannot write 16-bit RGB; TensorFlow's encoder can.
        import tensorflow as tf

        return tf.io.encode_png(array).numpy()
    Image.fromarray(array, mode=mode).save(buffer, "PNG")
    return buffer.getvalue()


def big_endian_exif_jpeg(image, orientation):
    """A JPEG with a hand-built big-endian ("MM") EXIF APP1 segment."""
    plain = jpeg_bytes(image)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)
    tiff += struct.pack(">H", 2)  # two IFD entries, orientation second
    tiff += struct.pack(">HHI", 0x010F, 2, 4) + b"Cam\x00"  # Make, ASCII
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return plain[:2] + segment + plain[2:]
