"""`tfds_dataset` against the real TFDS builders, offline, with mocked examples."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_centernet.data import tfds_dataset
from keras_centernet.data.tfds_reader import COCO_CATEGORY_IDS
from tests.data.coco_folders import square_image
from tests.data.images import jpeg_bytes

# Image i: 40 x 60, a red square at x 30..60, y 10..30, i.e. relative
# [ymin, xmin, ymax, xmax] = [0.25, 0.5, 0.75, 1.0]; label i; the object of
# image 3 is difficult (VOC) or a crowd (COCO).
NUM_EXAMPLES = 5
RELATIVE_BOX = [0.25, 0.5, 0.75, 1.0]


def _fake_examples(is_coco, corrupt_index=None):
    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
        assert isinstance(decoders["image"], tfds.decode.SkipDecoding)

        def generate():
            for i in range(NUM_EXAMPLES):
                image = square_image(40, 60, (30, 10, 60, 30))
                objects = {"bbox": np.array([RELATIVE_BOX], np.float32),
                           "label": np.array([i], np.int64)}
                if is_coco:
                    objects.update(is_crowd=np.array([i == 3]), area=np.array([600], np.int64),
                                   id=np.array([100 + i], np.int64))
                else:
                    objects.update(is_difficult=np.array([i == 3]),
                                   is_truncated=np.array([False]), pose=np.array([0], np.int64))
                contents = b"not an image" if i == corrupt_index else jpeg_bytes(image, quality=100)
                example = {"image": contents,
                           "image/filename": f"{i}.jpg", "objects": objects}
                if is_coco:
                    example["image/id"] = np.int64(1000 + i)
                yield example

        objects_spec = {"bbox": tf.TensorSpec([None, 4], tf.float32),
                        "label": tf.TensorSpec([None], tf.int64)}
        if is_coco:
            objects_spec.update(is_crowd=tf.TensorSpec([None], tf.bool),
                                area=tf.TensorSpec([None], tf.int64),
                                id=tf.TensorSpec([None], tf.int64))
        else:
            objects_spec.update(is_difficult=tf.TensorSpec([None], tf.bool),
                                is_truncated=tf.TensorSpec([None], tf.bool),
                                pose=tf.TensorSpec([None], tf.int64))
        signature = {"image": tf.TensorSpec([], tf.string),
                     "image/filename": tf.TensorSpec([], tf.string), "objects": objects_spec}
        if is_coco:
            signature["image/id"] = tf.TensorSpec([], tf.int64)
        return tf.data.Dataset.from_generator(generate, output_signature=signature)

    return as_dataset


def _all(dataset):
    return list(dataset.as_numpy_iterator())


@pytest.mark.parametrize("name", ["voc/2007", "voc/2012"])
def test_voc_eval_batches_boxes_and_difficult(name):
    with tfds.testing.mock_data(as_dataset_fn=_fake_examples(is_coco=False)):
        ds = tfds_dataset(name, split="test", batch_size=5, training=False, image_size=64)
        assert ds.class_names[:3] == ["aeroplane", "bicycle", "bird"] and ds.num_classes == 20
        ((images, y),) = _all(ds)
        gt = ds.info.ground_truth
    assert images.shape == (5, 64, 64, 3)
    np.testing.assert_array_equal(y["image_id"], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(y["labels"][:, 0], [0, 1, 2, -1, 4])
    # x 30..60, y 10..30 in a 40 x 60 image, resized by 64 / 60 around the
    # centre (30, 20) -> (32, 32).
    scale = 64 / 60
    expected = [32, 32 + (10 - 20) * scale, 32 + 30 * scale, 32 + (30 - 20) * scale]
    np.testing.assert_allclose(y["boxes"][0, 0], expected, rtol=1e-5)
    np.testing.assert_array_equal(y["original_size"][0], [40, 60])
    assert gt["images"][0] == {"id": 1, "file_name": "0.jpg", "height": 40, "width": 60}
    assert gt["annotations"][0]["bbox"] == pytest.approx([30, 10, 30, 20])
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 0, 1, 0]
    assert [a["category_id"] for a in gt["annotations"]] == [1, 2, 3, 4, 5]


def test_voc_difficult_objects_on_request():
    with tfds.testing.mock_data(as_dataset_fn=_fake_examples(is_coco=False)):
        ds = tfds_dataset("voc/2007", split="test", batch_size=5, training=False,
                          image_size=64, include_difficult=True)
        ((_, y),) = _all(ds)
    np.testing.assert_array_equal(y["labels"][:, 0], [0, 1, 2, 3, 4])


def test_coco_ids_crowds_and_training_batches():
    with tfds.testing.mock_data(as_dataset_fn=_fake_examples(is_coco=True)):
        ds = tfds_dataset("coco/2017", split="validation", batch_size=5, training=False,
                          image_size=64)
        assert ds.class_names[0] == "person" and ds.num_classes == 80
        assert ds.category_ids == list(COCO_CATEGORY_IDS) and ds.category_ids[11] == 13
        ((_, y),) = _all(ds)
        gt = ds.info.ground_truth
        np.testing.assert_array_equal(y["image_id"], [1000, 1001, 1002, 1003, 1004])
        # Crowds are objects as in the official code.
        np.testing.assert_array_equal(y["labels"][:, 0], [0, 1, 2, 3, 4])
        assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 0, 1, 0]
        assert gt["annotations"][4]["category_id"] == 5

        train = tfds_dataset("coco/2017", split="train", batch_size=2, image_size=32, seed=0,
                             include_crowd=False)
        batches = _all(train)
        assert len(batches) == 2
        images, y = batches[0]
        assert images.shape == (2, 32, 32, 3) and set(y) == {"boxes", "labels"}
        labels = np.concatenate([b[1]["labels"][:, 0] for b in batches])
        assert 3 not in labels


def test_undecodable_record_is_skipped_with_a_warning(capfd):
    with tfds.testing.mock_data(as_dataset_fn=_fake_examples(is_coco=False, corrupt_index=2)):
        ds = tfds_dataset("voc/2007", split="test", batch_size=5, training=False, image_size=32)
        ((_, y),) = _all(ds)
        gt = ds.info.ground_truth
    np.testing.assert_array_equal(y["image_id"], [1, 2, 4, 5])
    assert [image["id"] for image in gt["images"]] == [1, 2, 4, 5]
    warnings = [line for line in capfd.readouterr().err.splitlines()
                if line.startswith("WARNING keras_centernet.data")]
    assert len(warnings) == 2 and "2.jpg" in warnings[0] and "skipped 1" in warnings[1]


def test_unknown_name():
    with pytest.raises(ValueError, match="coco/2017"):
        tfds_dataset("mnist")
