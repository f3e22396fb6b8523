from keras_centernet.models.centernet import CenterNet
from keras_centernet.models.centernet_3d import CenterNet3D
from keras_centernet.models.centernet_pose import CenterNetPose
from keras_centernet.models.centernet_triplets import CenterNetTriplets
from keras_centernet.models.presets import list_presets

__all__ = ["CenterNet", "CenterNet3D", "CenterNetPose", "CenterNetTriplets", "list_presets"]
