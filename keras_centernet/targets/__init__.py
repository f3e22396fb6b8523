"""Training targets of CenterNet, rendered inside the training step (`keras.ops`)."""

from keras_centernet.targets.corners import render_triplet_targets
from keras_centernet.targets.gaussian import gaussian_radius
from keras_centernet.targets.gaussian import ttfnet_radii
from keras_centernet.targets.keypoints import render_pose_targets
from keras_centernet.targets.render import render_targets

__all__ = ["gaussian_radius", "render_pose_targets", "render_targets", "render_triplet_targets", "ttfnet_radii"]
