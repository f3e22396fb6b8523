"""CenterNet's losses: the penalty-reduced focal loss and the L1 loss at centres."""

from keras_centernet.losses.embedding import embedding_losses, keypoint_offset_loss
from keras_centernet.losses.focal import focal_loss, quality_focal_loss
from keras_centernet.losses.keypoints import reg_weighted_l1_loss
from keras_centernet.losses.iou import box_iou_loss
from keras_centernet.losses.regression import reg_l1_loss
from keras_centernet.losses.reid import reid_loss

__all__ = [
    "box_iou_loss",
    "embedding_losses",
    "focal_loss",
    "keypoint_offset_loss",
    "quality_focal_loss",
    "reg_l1_loss",
    "reg_weighted_l1_loss",
    "reid_loss",
]
