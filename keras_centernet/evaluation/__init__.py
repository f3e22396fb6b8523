"""COCO evaluation (pycocotools) of detectors, and its Keras callback."""

from keras_centernet.evaluation.coco_evaluate import COCOEvaluationCallback
from keras_centernet.evaluation.coco_evaluate import coco_evaluate
from keras_centernet.evaluation.coco_evaluator import COCOEvaluator
from keras_centernet.evaluation.keypoints import COCOKeypointEvaluator
from keras_centernet.evaluation.keypoints import coco_keypoint_evaluate

__all__ = [
    "COCOEvaluationCallback",
    "COCOEvaluator",
    "COCOKeypointEvaluator",
    "coco_evaluate",
    "coco_keypoint_evaluate",
]
