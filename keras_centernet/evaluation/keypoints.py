"""COCO keypoint evaluation (OKS AP, pycocotools) of pose models such as `CenterNetPose`."""

import numpy as np

from keras_centernet.evaluation.coco_evaluate import _dataset_info
from keras_centernet.evaluation.coco_evaluate import predicted_batches
from keras_centernet.evaluation.coco_evaluator import COCOEvaluator
from keras_centernet.evaluation.coco_evaluator import to_original_boxes


# The order of `COCOeval.stats` for keypoints (20 people per image, OKS thresholds).
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


class COCOKeypointEvaluator(COCOEvaluator):
    """Accumulates people with their joints and computes COCO keypoint metrics (OKS).

    As `COCOEvaluator`, with each detection's joints: they are written as
    COCO results `[x, y, 1] * J` (as the official `multi_pose` evaluation)
    and scored with the person's score. pycocotools' keypoint evaluation
    takes the top 20 people of an image and uses COCO's 17 per-joint OKS
    sigmas.

    Args:
        ground_truth: dict. A COCO person-keypoints ground truth (its
            annotations carry `keypoints` and `num_keypoints`).
        label_to_category_id: sequence or dict. See `COCOEvaluator`.
        max_detections: int. People per image kept. Defaults to 100.

    Example:

    >>> evaluator = COCOKeypointEvaluator(ground_truth)
    >>> evaluator.update(image_ids, boxes, scores, labels, keypoints)  # pixels
    >>> evaluator.result()["AP"]
    """

    iou_type = "keypoints"
    stat_names = KEYPOINT_STAT_NAMES

    def update(self, image_ids, boxes, scores, labels, keypoints, num_detections=None):
        """Adds a batch of people.

        Args:
            image_ids: (B,) ints. Ground-truth image ids.
            boxes: (B, K, 4). xyxy boxes in original image pixels.
            scores: (B, K).
            labels: (B, K) ints; negative labels are padding.
            keypoints: (B, K, J, 2) or (B, K, J, 3). Joints `(x, y)` in
                original image pixels (a third channel is ignored).
            num_detections: optional (B,). Valid people per image.
        """
        image_ids = np.asarray(image_ids).reshape(-1)
        boxes = np.asarray(boxes, np.float64)
        scores = np.asarray(scores, np.float64)
        labels = np.asarray(labels)
        keypoints = np.asarray(keypoints, np.float64)
        if keypoints.ndim != 4 or keypoints.shape[:2] != scores.shape or keypoints.shape[-1] not in (2, 3):
            raise ValueError(
                f"`keypoints` must have shape (B, K, J, 2) for scores {scores.shape}; "
                f"received {keypoints.shape}."
            )
        for i, image_id in enumerate(image_ids):
            # The image counts as seen even without people (their absence is scored).
            super().update([image_id], boxes[i:i + 1, :0], scores[i:i + 1, :0], labels[i:i + 1, :0])
            count = boxes.shape[1] if num_detections is None else int(np.asarray(num_detections)[i])
            order = np.argsort(-scores[i, :count], kind="stable")[: self.max_detections]
            for k in order:
                # One person at a time through the box evaluator (its checks and
                # category ids); the joints join the result it adds.
                added = len(self.detections)
                super().update([image_id], boxes[i:i + 1, k:k + 1], scores[i:i + 1, k:k + 1],
                               labels[i:i + 1, k:k + 1])
                if len(self.detections) > added:
                    joints = np.concatenate(
                        [keypoints[i, k, :, :2], np.ones((keypoints.shape[2], 1))], axis=-1
                    )
                    self.detections[-1]["keypoints"] = [float(v) for v in joints.reshape(-1)]


def coco_keypoint_evaluate(model, dataset, info=None, max_detections=100, steps=None, verbose=1):
    """COCO keypoint metrics (OKS AP, pycocotools) of a pose model on an evaluation dataset.

    As `coco_evaluate`, for people and their joints: batches `(images,
    targets)` with `targets["image_id"]` and `targets["transform"]`
    (`keras_centernet.data.synthetic_pose(training=False)` yields them);
    people and joints are mapped back to original image pixels. Test-time
    augmentation is the model's (`model.configure_prediction(flip_test=True)`).

    Args:
        model: a `CenterNetPose` (any model whose `predict_on_batch` returns
            `boxes`, `scores`, `labels`, `keypoints` `(B, K, J, 2)` in
            input pixels and optionally `num_detections`).
        dataset: `tf.data.Dataset` of evaluation batches.
        info: `keras_centernet.data.DatasetInfo` whose `ground_truth` has
            COCO keypoint annotations. Defaults to `dataset.info`.
        max_detections: int. People per image kept (pycocotools scores the
            top 20). Defaults to 100.
        steps: int or None. Batches to evaluate; all by default.
        verbose: int. 1 shows a progress bar.

    Returns:
        dict: `AP`, `AP50`, `AP75`, `APm`, `APl`, `AR`, `AR50`, `AR75`,
        `ARm`, `ARl` (pycocotools reports -1 where the ground truth has no
        person of an area range).

    Example:

    >>> ds = kc.data.synthetic_pose(num_images=32, image_size=128, batch_size=8, training=False)
    >>> metrics = kc.evaluation.coco_keypoint_evaluate(model, ds)
    >>> metrics["AP"]
    """
    info = _dataset_info(dataset, info)
    evaluator = COCOKeypointEvaluator(
        info.ground_truth,
        label_to_category_id=info.label_to_category_id,
        max_detections=max_detections,
    )
    for targets, people in predicted_batches(model, dataset, steps, verbose):
        if "keypoints" not in people:
            raise ValueError(
                f"The model's predictions have no `keypoints` (keys {sorted(people)}): "
                "keypoint evaluation needs a pose model such as `CenterNetPose`."
            )
        transform = np.asarray(targets["transform"])
        boxes = to_original_boxes(people["boxes"], transform)
        # A joint is the degenerate box (x, y, x, y): the same inverse map.
        joints = people["keypoints"][..., :2]
        batch_size, count, num_joints = joints.shape[:3]
        points = np.concatenate([joints, joints], axis=-1).reshape(batch_size, count * num_joints, 4)
        joints = to_original_boxes(points, transform)[..., :2].reshape(batch_size, count, num_joints, 2)
        evaluator.update(
            np.asarray(targets["image_id"]),
            boxes,
            people["scores"],
            people["labels"],
            joints,
            people.get("num_detections"),
        )
    return evaluator.result()
