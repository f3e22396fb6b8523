"""`keras.applications` classifiers as CenterNet backbones: their feature pyramids at strides 4 to 32.

CenterNet normalises its input inside the model (`ImageNormalization`:
`(pixels / 255 - COCO mean) / COCO std`, DESIGN.md's data contract), and
every backbone receives that. A `keras.applications` model was trained on
its own preprocessing instead (ResNet-50: BGR pixels minus the ImageNet
mean, "caffe"; MobileNetV2: pixels / 127.5 - 1, "tf"; MobileNetV3 and
EfficientNet: raw 0..255 pixels, scaled by their own first layers). So the
wrapper's first layer (`ApplicationPreprocessing`) undoes CenterNet's
normalisation and applies the application's own: with
`weights="imagenet"` the pretrained filters see exactly the inputs they
were trained on, and the model still takes raw RGB pixels.
"""

import keras
from keras import ops

from keras_centernet.layers.preprocessing import COCO_MEAN_RGB
from keras_centernet.layers.preprocessing import COCO_STD_RGB
from keras_centernet.backbones.base import Backbone

# The "caffe" mode of `keras.applications.imagenet_utils.preprocess_input`, BGR order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

PREPROCESSING_MODES = ("caffe", "tf", "pixels")

# name -> (constructor, preprocessing mode, the four taps at strides 4, 8, 16, 32).
# A tap is ("output", layer) or ("input", layer); `None` is the model's output.
# The taps before the stride-2 blocks are their expansion activations (as the
# TF Object Detection API taps MobileNets); MobileNetV3's activations have
# session-dependent names, so its taps are the inputs of the strided blocks' pads.
ARCHITECTURES = {
    "resnet50": (
        "ResNet50", "caffe",
        (("output", "conv2_block3_out"), ("output", "conv3_block4_out"),
         ("output", "conv4_block6_out"), ("output", "conv5_block3_out")),
    ),
    "mobilenet_v2": (
        "MobileNetV2", "tf",
        (("output", "block_3_expand_relu"), ("output", "block_6_expand_relu"),
         ("output", "block_13_expand_relu"), ("output", "out_relu")),
    ),
    "mobilenet_v3_small": (
        "MobileNetV3Small", "pixels",
        (("input", "expanded_conv_1_depthwise_pad"), ("input", "expanded_conv_3_depthwise_pad"),
         ("input", "expanded_conv_8_depthwise_pad"), ("output", None)),
    ),
    "mobilenet_v3_large": (
        "MobileNetV3Large", "pixels",
        (("input", "expanded_conv_3_depthwise_pad"), ("input", "expanded_conv_6_depthwise_pad"),
         ("input", "expanded_conv_12_depthwise_pad"), ("output", None)),
    ),
    "efficientnet_b0": (
        "EfficientNetB0", "pixels",
        (("output", "block3a_expand_activation"), ("output", "block4a_expand_activation"),
         ("output", "block6a_expand_activation"), ("output", "top_activation")),
    ),
}


@keras.saving.register_keras_serializable(package="keras_centernet")
class ApplicationPreprocessing(keras.layers.Layer):
    """From CenterNet's normalised images to a `keras.applications` model's expected input.

    `pixels = (x * std + mean) * 255` undoes `ImageNormalization`; then
    `"caffe"`: BGR pixels minus the ImageNet mean (ResNet-50),
    `"tf"`: `pixels / 127.5 - 1` (MobileNetV2), `"pixels"`: the 0..255
    pixels (MobileNetV3, EfficientNet, which scale them themselves).

    Args:
        mode: `"caffe"`, `"tf"` or `"pixels"`.
        mean: three floats. The RGB mean of `ImageNormalization`.
            Defaults to the official COCO mean.
        std: three floats. Its RGB std. Defaults to the official COCO std.

    Example:

    >>> layer = ApplicationPreprocessing("tf")
    >>> tuple(layer(np.zeros((1, 32, 32, 3), "float32")).shape)
    (1, 32, 32, 3)
    """

    def __init__(self, mode, mean=COCO_MEAN_RGB, std=COCO_STD_RGB, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"`mode` must be one of {PREPROCESSING_MODES}; received {mode!r}.")
        self.mode = mode
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        scale = ops.convert_to_tensor([255.0 * s for s in self.std], self.compute_dtype)
        shift = ops.convert_to_tensor([255.0 * m for m in self.mean], self.compute_dtype)
        pixels = x * scale + shift
        if self.mode == "tf":
            return pixels / 127.5 - 1.0
        if self.mode == "caffe":
            return ops.flip(pixels, axis=-1) - ops.convert_to_tensor(CAFFE_MEAN_BGR, self.compute_dtype)
        return pixels

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "mean": self.mean, "std": self.std})
        return config


@keras.saving.register_keras_serializable(package="keras_centernet")
class ApplicationBackbone(Backbone):
    """A `keras.applications` classifier returning its pyramid at strides 4, 8, 16 and 32.

    Wraps ResNet-50, MobileNetV2, MobileNetV3 Small/Large or EfficientNet-B0
    (without their classifiers) for `CenterNet`: the input is CenterNet's
    normalised image, converted to the application's own preprocessing
    (`ApplicationPreprocessing`; see the module docstring), and the outputs
    are four maps at strides 4 to 32 (ResNet-50: the last block of each
    stage; the others: the expansion activation before each stride-2 block,
    and the last map).

    Args:
        architecture: str. One of `ARCHITECTURES`: `"resnet50"`,
            `"mobilenet_v2"`, `"mobilenet_v3_small"`, `"mobilenet_v3_large"`,
            `"efficientnet_b0"`.
        weights: `None`, `"imagenet"` or a weights file, passed to the
            `keras.applications` constructor (`"imagenet"` downloads them).
            Saved models hold their weights, so the config stores `None`.
            Defaults to `None`.
        frozen_stages: int in 0..4. Layers computing the first
            `frozen_stages` outputs are not trained (their BatchNorms stay in
            inference mode): 1 freezes the stem and everything up to stride
            4, 4 the whole backbone. Defaults to 0.
        dtype: string or `keras.DTypePolicy`. Defaults to `None`.

    Example:

    >>> backbone = ApplicationBackbone("mobilenet_v3_small")
    >>> [tuple(f.shape) for f in backbone(np.zeros((1, 64, 64, 3), "float32"))]
    [(1, 16, 16, 72), (1, 8, 8, 96), (1, 4, 4, 288), (1, 2, 2, 576)]

    Reference:
        He et al., "Deep Residual Learning", 2016; Sandler et al.,
        "MobileNetV2", 2018; Howard et al., "Searching for MobileNetV3",
        2019; Tan and Le, "EfficientNet", 2019.
    """

    def __init__(self, architecture, weights=None, frozen_stages=0, dtype=None, **kwargs):
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"`architecture` must be one of {sorted(ARCHITECTURES)}; received {architecture!r}."
            )
        if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) or not 0 <= frozen_stages <= 4:
            raise ValueError(f"`frozen_stages` must be an int in 0..4; received {frozen_stages!r}.")
        constructor, mode, taps = ARCHITECTURES[architecture]
        options = {"include_preprocessing": True} if architecture.startswith("mobilenet_v3") else {}
        application = getattr(keras.applications, constructor)(
            input_shape=(None, None, 3), include_top=False, weights=weights, **options
        )
        outputs = []
        for where, layer_name in taps:
            if layer_name is None:
                outputs.append(application.output)
            else:
                layer = application.get_layer(layer_name)
                outputs.append(layer.input if where == "input" else layer.output)
        extractor = keras.Model(application.input, outputs, name=f"{architecture}_pyramid")
        if frozen_stages:
            # The layers of the sub-graph up to the last frozen output.
            frozen = keras.Model(application.input, outputs[frozen_stages - 1])
            for layer in frozen.layers:
                layer.trainable = False

        # === Functional Model ===
        images = keras.Input((None, None, 3), name="images")
        x = ApplicationPreprocessing(mode, dtype=dtype, name="application_preprocessing")(images)
        features = extractor(x)
        super().__init__(inputs=images, outputs=list(features), **kwargs)

        # === Config ===
        self._keep_dtype(dtype)
        self.architecture = architecture
        self.weights_source = weights
        self.frozen_stages = frozen_stages

    def _own_config(self):
        return {
            "architecture": self.architecture,
            "weights": None,
            "frozen_stages": self.frozen_stages,
        }
