"""COCO evaluation (pycocotools) of detectors, and its Keras callback."""

from keras_centernet.evaluation.coco_evaluate import COCOEvaluationCallback
from keras_centernet.evaluation.coco_evaluate import coco_evaluate
from keras_centernet.evaluation.coco_evaluator import COCOEvaluator

__all__ = ["COCOEvaluationCallback", "COCOEvaluator", "coco_evaluate"]
