"""COCO box evaluation with pycocotools (the metric of the paper)."""

import contextlib
import copy
import io
import logging

import numpy as np

logger = logging.getLogger("keras_centernet")

# The order of `COCOeval.stats` for boxes.
STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


class COCOEvaluator:
    """Accumulates detections in original image pixels and computes COCO box metrics.

    Args:
        ground_truth: dict. A COCO-format ground truth (`images`,
            `annotations`, `categories`), as pycocotools reads it.
        label_to_category_id: sequence or dict. Our contiguous label ->
            the ground truth's category id. Defaults to the ground truth's
            category ids in sorted order (what the readers of
            `keras_centernet.data` use).
        max_detections: int. Detections per image kept, the paper's 100.

    Example:

    >>> evaluator = COCOEvaluator(ground_truth)
    >>> evaluator.update(image_ids, boxes, scores, labels)  # boxes xyxy, pixels
    >>> evaluator.result()["AP"]
    """

    # What pycocotools scores, and the names of its `stats` (subclasses change both).
    iou_type = "bbox"
    stat_names = STAT_NAMES

    def __init__(self, ground_truth, label_to_category_id=None, max_detections=100):
        for field in ("images", "annotations", "categories"):
            if field not in ground_truth:
                raise ValueError(f"The COCO ground truth has no {field!r} field.")
        self.ground_truth = ground_truth
        if label_to_category_id is None:
            label_to_category_id = sorted(c["id"] for c in ground_truth["categories"])
        if not isinstance(label_to_category_id, dict):
            label_to_category_id = dict(enumerate(label_to_category_id))
        self.label_to_category_id = {int(k): int(v) for k, v in label_to_category_id.items()}
        self.max_detections = max_detections
        self.image_ids = {int(image["id"]) for image in ground_truth["images"]}
        self.reset()

    def reset(self):
        self.detections = []
        self.seen_images = set()

    def update(self, image_ids, boxes, scores, labels, num_detections=None):
        """Adds a batch of detections.

        Args:
            image_ids: (B,) ints. Ground-truth image ids.
            boxes: (B, K, 4). xyxy boxes in original image pixels.
            scores: (B, K).
            labels: (B, K) ints, contiguous labels; negative labels are padding.
            num_detections: optional (B,). Valid detections per image.
        """
        image_ids = np.asarray(image_ids).reshape(-1)
        boxes = np.asarray(boxes, np.float64)
        scores = np.asarray(scores, np.float64)
        labels = np.asarray(labels).astype(np.int64)
        for i, image_id in enumerate(image_ids):
            image_id = int(image_id)
            if image_id not in self.image_ids:
                raise ValueError(f"Image id {image_id} is not in the ground truth.")
            self.seen_images.add(image_id)
            count = boxes.shape[1] if num_detections is None else int(np.asarray(num_detections)[i])
            order = np.argsort(-scores[i, :count], kind="stable")[: self.max_detections]
            for k in order:
                label = int(labels[i, k])
                if label < 0:
                    continue
                if label not in self.label_to_category_id:
                    raise ValueError(
                        f"Label {label} has no category id; the mapping covers "
                        f"{sorted(self.label_to_category_id)}."
                    )
                x1, y1, x2, y2 = boxes[i, k]
                self.detections.append(
                    {
                        "image_id": image_id,
                        "category_id": self.label_to_category_id[label],
                        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                        "score": float(scores[i, k]),
                    }
                )

    def result(self, image_ids=None):
        """COCO metrics over the images seen (or `image_ids`): dict name -> float."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        evaluated = sorted(self.seen_images if image_ids is None else image_ids)
        if not evaluated:
            raise ValueError("No detections were added: nothing to evaluate.")
        with contextlib.redirect_stdout(io.StringIO()) as captured:
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(self.ground_truth)
            coco_gt.createIndex()
            if self.detections:
                coco_dt = coco_gt.loadRes(copy.deepcopy(self.detections))
            else:
                coco_dt = COCO()
                coco_dt.dataset = {"images": self.ground_truth["images"], "annotations": [],
                                   "categories": self.ground_truth["categories"]}
                coco_dt.createIndex()
            evaluation = COCOeval(coco_gt, coco_dt, self.iou_type)
            evaluation.params.imgIds = evaluated
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        logger.debug(captured.getvalue())
        # pycocotools reports -1 where a metric has no ground truth (e.g. no small objects).
        return {name: float(value) for name, value in zip(self.stat_names, evaluation.stats)}


def to_original_boxes(boxes, transform):
    """Maps boxes from input-image pixels back to original-image pixels (NumPy).

    The inverse of the eval-mode `transform` that the datasets yield: use it
    on predictions to score them against the original annotations.

    Args:
        boxes: array `(..., 4)`, `xyxy` in the input image's pixels.
        transform: array `(2, 3)` or batched `(B, 2, 3)` (then `boxes` is
            `(B, K, 4)`), the affine map from original pixels to input pixels.

    Returns:
        float32 array of the shape of `boxes`, `xyxy` in original pixels.

    Example:

    >>> import numpy as np
    >>> transform = np.array([[0.5, 0.0, 10.0], [0.0, 0.5, 20.0]])
    >>> to_original_boxes(np.array([[10.0, 20.0, 30.0, 40.0]]), transform)
    array([[ 0.,  0., 40., 40.]], dtype=float32)
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    transform = np.asarray(transform, dtype=np.float64)
    if transform.shape[-2:] != (2, 3):
        raise ValueError(f"`transform` must have shape (..., 2, 3); received {transform.shape}.")
    linear = transform[..., :2]
    offset = transform[..., 2]
    inverse = np.linalg.inv(linear)
    if transform.ndim == 3:
        inverse = inverse[:, None]
        offset = offset[:, None]
    corners = np.stack(
        [
            boxes[..., [0, 1]],
            boxes[..., [2, 1]],
            boxes[..., [0, 3]],
            boxes[..., [2, 3]],
        ],
        axis=-2,
    )
    offset = offset[..., None, :]
    inverse = inverse[..., None, :, :]
    original = np.einsum("...ij,...j->...i", inverse, corners - offset)
    result = np.concatenate([original.min(axis=-2), original.max(axis=-2)], axis=-1)
    return result.astype(np.float32)
