"""COCO mAP of a detector on a dataset, and the Keras callback that logs it during training."""

import logging

import keras
import numpy as np

from keras_centernet.evaluation.coco_evaluator import COCOEvaluator
from keras_centernet.evaluation.coco_evaluator import to_original_boxes

logger = logging.getLogger("keras_centernet")


def _dataset_info(dataset, info):
    info = info if info is not None else getattr(dataset, "info", None)
    if info is None:
        raise ValueError(
            "The dataset carries no `info` (class names, category ids, ground truth): "
            "pass `info=` (e.g. `info = ds.info` kept before `ds.take(...)`), or use a "
            "reader of `keras_centernet.data` with `training=False`."
        )
    return info


def coco_evaluate(model, dataset, info=None, max_detections=100, steps=None, verbose=1):
    """COCO box metrics (pycocotools) of `model` on an evaluation dataset.

    The dataset is one of `keras_centernet.data`'s readers with
    `training=False`: batches `(images, targets)` whose `targets` carry
    `image_id` and `transform` (the map from original to input pixels).
    Predictions are mapped back to original image pixels and to the ground
    truth's category ids, as the official evaluation does. Test-time
    augmentation is the model's (`model.configure_prediction`).

    Args:
        model: a `CenterNet` (any model whose `predict_on_batch` returns
            the detection dict `boxes` xyxy in input pixels, `scores`,
            `labels`, `num_detections`).
        dataset: `tf.data.Dataset` of evaluation batches.
        info: `keras_centernet.data.DatasetInfo`. Defaults to
            `dataset.info`.
        max_detections: int. Detections per image scored. Defaults to 100
            (the paper).
        steps: int or None. Batches to evaluate; all by default.
        verbose: int. 1 shows a progress bar.

    Returns:
        dict: `AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`, `AR1`, `AR10`,
        `AR100`, `ARs`, `ARm`, `ARl` (pycocotools reports -1 where the
        ground truth has no object of an area range).

    Example:

    >>> ds = kc.data.synthetic(num_images=64, image_size=256, batch_size=8, training=False)
    >>> metrics = kc.evaluation.coco_evaluate(model, ds)
    >>> metrics["AP"]
    """
    info = _dataset_info(dataset, info)
    evaluator = COCOEvaluator(
        info.ground_truth,
        label_to_category_id=info.label_to_category_id,
        max_detections=max_detections,
    )
    for targets, detections in predicted_batches(model, dataset, steps, verbose):
        boxes = to_original_boxes(detections["boxes"], np.asarray(targets["transform"]))
        evaluator.update(
            np.asarray(targets["image_id"]),
            boxes,
            detections["scores"],
            detections["labels"],
            detections.get("num_detections"),
        )
    return evaluator.result()


def predicted_batches(model, dataset, steps=None, verbose=1):
    """Yields `(targets, predictions as NumPy)` per evaluation batch, with a progress bar.

    What every COCO evaluation loop shares: it checks that the batches carry
    `image_id` and `transform` (a reader with `training=False`) and stops
    after `steps` batches when given.
    """
    total = steps if steps is not None else _cardinality(dataset)
    progress = keras.utils.Progbar(total, unit_name="batch") if verbose else None
    for step, batch in enumerate(dataset):
        if steps is not None and step >= steps:
            break
        images, targets = batch[0], batch[1]
        for key in ("image_id", "transform"):
            if key not in targets:
                raise ValueError(
                    f"Evaluation batches need `targets[{key!r}]`; this dataset has "
                    f"{sorted(targets)}. Use a reader with `training=False`."
                )
        # NumPy images, which every backend's predict takes (tf.data yields tf tensors,
        # which the JAX and PyTorch backends refuse).
        predictions = model.predict_on_batch(np.asarray(images))
        yield targets, {k: keras.ops.convert_to_numpy(v) for k, v in predictions.items()}
        if progress is not None:
            progress.update(step + 1)


def _cardinality(dataset):
    try:
        import tensorflow as tf

        count = int(dataset.cardinality())
        return count if count >= 0 and count != int(tf.data.INFINITE_CARDINALITY) else None
    except (AttributeError, TypeError, ImportError):
        return None


class COCOEvaluationCallback(keras.callbacks.Callback):
    """Logs COCO metrics every `every_n_epochs` epochs, into history and TensorBoard.

    The metrics are written into the epoch's `logs` as `<prefix><name>`
    (`val_AP`, `val_AP50`, ...), so `History`, `CSVLogger`,
    `ModelCheckpoint(monitor="val_AP", mode="max")` and `TensorBoard` see
    them — put this callback before those in the `callbacks` list.

    Args:
        dataset: evaluation dataset (see `coco_evaluate`).
        every_n_epochs: int. Defaults to 1.
        info: `DatasetInfo`. Defaults to `dataset.info`.
        prefix: str. Defaults to `"val_"`.
        steps: int or None. Batches per evaluation.
        verbose: int. 1 shows a progress bar.

    Example:

    >>> callback = COCOEvaluationCallback(val_ds, every_n_epochs=5)
    >>> model.fit(train_ds, epochs=50, callbacks=[callback, keras.callbacks.TensorBoard("logs")])
    """

    def __init__(self, dataset, every_n_epochs=1, info=None, prefix="val_", steps=None, verbose=0):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be >= 1; received {every_n_epochs}.")
        self.dataset = dataset
        self.info = _dataset_info(dataset, info)
        self.every_n_epochs = every_n_epochs
        self.prefix = prefix
        self.steps = steps
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        metrics = coco_evaluate(
            self.model, self.dataset, info=self.info, steps=self.steps, verbose=self.verbose
        )
        if logs is not None:
            logs.update({self.prefix + name: value for name, value in metrics.items()})
        logger.info(
            "Epoch %d: COCO AP %.4f, AP50 %.4f", epoch + 1, metrics["AP"], metrics["AP50"]
        )
