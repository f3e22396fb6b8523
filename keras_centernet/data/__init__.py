"""The `tf.data` input pipeline: readers, the official augmentation, evaluation preprocessing.

TensorFlow-only code, confined to this package (DESIGN.md, principle 1): the
readers build `tf.data.Dataset`s with TF ops, and those datasets feed
`model.fit`, `model.evaluate` and `model.predict` on every Keras backend
(TensorFlow, JAX, PyTorch). No `py_function` runs on the hot path; targets
(heatmaps, sizes, offsets) are not made here but in the model's training step
(principle 3).

Readers:

```python
ds = kc.data.coco_json(images_dir, annotations_json, batch_size=8, training=True)
ds = kc.data.tfds_dataset("coco/2017", split="train", batch_size=8, training=True)
ds = kc.data.synthetic(num_images=1000, image_size=512, batch_size=8, seed=0)
```

Each returns a `tf.data.Dataset` (pass it straight to `model.fit`) carrying
its metadata as attributes: `ds.info` (a `DatasetInfo`: `class_names`,
`category_ids`, `num_classes`, `num_examples`, `ground_truth`, the
pycocotools-style dict), and `ds.class_names`, `ds.category_ids`,
`ds.num_classes`. Transformations (`ds.take`, `ds.map`) return new datasets
without these attributes: keep `info = ds.info` first.

Training batches (`training=True`): `(images, targets)` with
- `images`: float32 `(B, H, W, 3)`, RGB, 0-255 (the colour augmentation can
  step slightly outside, as officially), `(H, W) = image_size`;
- `targets["boxes"]`: float32 `(B, M, 4)` in the input image's pixels,
  format `bounding_box_format` (default `"xyxy"`), `M = max_objects`
  (default 128), the padding zeros;
- `targets["labels"]`: int32 `(B, M)`, contiguous class labels, -1 for padding;
- for people with joints (`coco_json(..., keypoints=True)`, `synthetic_pose`):
  `targets["keypoints"]`: float32 `(B, M, J, 3)`, `(x, y, visibility)` in input
  pixels, in the order of the boxes, moved with them by the augmentation (a flip
  swaps left and right joints), zeros for padding, unlabelled joints and joints
  off the image.
Valid objects come first, largest first. The last incomplete batch is
dropped (as the official loader does).

Training batches with `augment_on="accelerator"` (DESIGN.md, principle 3:
when two CPU cores cannot warp and colour-jitter as fast as the GPU trains):
the CPU only decodes and puts each image, unscaled when it fits, at the top
left of a fixed canvas (`canvas_size`; by default at least 640 a side for the
file readers, the input size for `synthetic`); the random crop, flip and
colour augmentation run batched in the model's training step
(`kc.CenterNet(..., augmentation=kc.layers.BatchAugmentation(image_size))`),
with the same rules and constants. Batches are `(canvases, targets)` with
- `canvases`: uint8 `(B, h, w, 4)`: RGB, and an alpha channel that is 255 on
  the image and 0 on the (black) padding, which tells the model each image's
  size (the official crop scale and centre range depend on it); a quarter of
  the bytes of float32 RGB;
- `targets`: boxes and labels as above, on the canvas.
They are for `model.fit` of such a model only. Where this differs from the
official augmentation: nothing for images that fit the canvas (COCO's and
VOC's do by default); an image larger than the canvas is resized to fit
first, so it is resampled twice, and its crop border and integer crop
centres count canvas pixels instead of its own. When more than
`max_objects` objects are on an image, the largest are kept before the crop
(after it on the CPU path); boxes that the crop empties get label -1 where
they are, so valid objects no longer all come first.

Evaluation batches (`training=False`): `(images, targets)`, in file order,
every image once, with three more keys in `targets`:
- `targets["image_id"]`: int64 `(B,)`, the ground truth's image id;
- `targets["original_size"]`: int32 `(B, 2)`, `(height, width)` of the
  decoded image (after EXIF orientation);
- `targets["transform"]`: float32 `(B, 2, 3)`, the affine map from original
  image pixels to input pixels: `input_xy = A @ original_xy + t` with
  `transform = [A | t]`. `kc.data.to_original_boxes(boxes, transform)`
  inverts it, mapping predicted boxes back to original pixels.
Boxes and labels are the ground truth in input pixels (for `model.evaluate`'s
loss). Images are resized to `image_size` (longer side, centred: the official
`fix_res`) or, with `eval_resize=False`, kept at scale 1 and centred in a
canvas padded to a multiple of `size_divisor` (the official `keep_res`).
Because the extra keys ride in `targets`, `model.evaluate(ds)` and
`model.predict(ds)` accept these datasets as they are.

Pixel coordinates are continuous: pixel `(i, j)` covers `[j, j + 1] x
[i, i + 1]`, an image of width `W` spans `[0, W]`, as COCO boxes.
"""

from keras_centernet.data.augment import Augmentation
from keras_centernet.data.augment import color_augment
from keras_centernet.data.augment import eval_preprocess
from keras_centernet.data.augment import warp_affine
from keras_centernet.data.boxes import to_original_boxes
from keras_centernet.data.coco_json_reader import coco_json
from keras_centernet.data.coco_json_reader import read_coco_annotations
from keras_centernet.data.decode import decode_image
from keras_centernet.data.kitti import kitti
from keras_centernet.data.kitti import write_kitti_results
from keras_centernet.data.pipeline import DatasetInfo
from keras_centernet.data.synthetic_pose import synthetic_pose
from keras_centernet.data.synthetic_shapes import SHAPE_NAMES
from keras_centernet.data.synthetic_shapes import synthetic
from keras_centernet.data.tfds_reader import tfds_dataset

__all__ = [
    "Augmentation",
    "DatasetInfo",
    "SHAPE_NAMES",
    "coco_json",
    "color_augment",
    "decode_image",
    "eval_preprocess",
    "kitti",
    "read_coco_annotations",
    "synthetic",
    "synthetic_pose",
    "tfds_dataset",
    "to_original_boxes",
    "warp_affine",
    "write_kitti_results",
]
