"""Keras layers of CenterNet."""

from keras_centernet.layers.batch_augmentation import BatchAugmentation
from keras_centernet.layers.batch_normalization import OnePassBatchNormalization
from keras_centernet.layers.corner_pooling import CascadeCornerPooling, CenterPooling, CornerPooling
from keras_centernet.layers.ddd_decoder import CenterNet3DDecoder
from keras_centernet.layers.ddd_decoder import decode_3d_detections
from keras_centernet.layers.decoder import CenterNetDecoder
from keras_centernet.layers.decoder import decode_detections
from keras_centernet.layers.decoder import decode_ltrb_detections
from keras_centernet.layers.deformable_conv2d import DeformableConv2D
from keras_centernet.layers.pose_decoder import CenterNetPoseDecoder
from keras_centernet.layers.pose_decoder import decode_poses
from keras_centernet.layers.triplet_decoder import decode_triplets
from keras_centernet.layers.depthwise_conv2d_transpose import DepthwiseConv2DTranspose
from keras_centernet.layers.prediction_head import PredictionHead
from keras_centernet.layers.preprocessing import ImageNormalization
from keras_centernet.layers.soft_nms import SoftNMS
from keras_centernet.layers.soft_nms import soft_nms

__all__ = [
    "BatchAugmentation",
    "CascadeCornerPooling",
    "CenterPooling",
    "CornerPooling",
    "CenterNet3DDecoder",
    "CenterNetDecoder",
    "CenterNetPoseDecoder",
    "DeformableConv2D",
    "DepthwiseConv2DTranspose",
    "ImageNormalization",
    "OnePassBatchNormalization",
    "PredictionHead",
    "SoftNMS",
    "decode_3d_detections",
    "decode_detections",
    "decode_ltrb_detections",
    "decode_poses",
    "decode_triplets",
    "soft_nms",
]
