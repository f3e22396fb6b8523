import keras
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution

from keras_centernet.layers.decoder import apply_score_threshold
from keras_centernet.layers.decoder import decode_detections
from keras_centernet.layers.decoder import decode_ltrb_detections
from keras_centernet.layers.prediction_head import HEATMAP_PRIOR_BIAS
from keras_centernet.layers.prediction_head import PredictionHead
from keras_centernet.layers.preprocessing import ImageNormalization
from keras_centernet.layers.soft_nms import soft_nms
from keras_centernet.losses.focal import CLAMP_GRADIENTS
from keras_centernet.losses.focal import HEATMAP_LOSSES
from keras_centernet.losses.focal import focal_loss
from keras_centernet.losses.focal import quality_focal_loss
from keras_centernet.losses.iou import IOU_LOSSES
from keras_centernet.losses.iou import ltrb_center_loss
from keras_centernet.losses.iou import ltrb_gaussian_loss
from keras_centernet.losses.regression import reg_l1_loss
from keras_centernet.losses.reid import reid_embedding_scale
from keras_centernet.losses.reid import reid_loss
from keras_centernet.ops.kernel_gradients import RowMajorKernelGradients
from keras_centernet.targets.render import render_targets

# The paper's multi-scale test (official `--test_scales`).
OFFICIAL_TEST_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)

# How the box is regressed: the paper's `size` (+ `offset`) heads, or TTFNet's distances to the four sides.
BOX_HEADS = ("size", "ltrb")
# TTFNet's `wh_offset_base` (16 input pixels), in stride-4 map pixels.
LTRB_DISTANCE_SCALE = 4.0
# FairMOT's embedding dimension.
REID_DIM = 128


@keras.saving.register_keras_serializable(package="keras_centernet")
class CenterNet(RowMajorKernelGradients, keras.Model):
    """CenterNet object detector ("Objects as Points").

    A backbone returns a feature pyramid, a neck brings it to one stride-4
    map, and prediction heads (a dict name -> channels) read that map:
    by default a class `heatmap` (logits), the box `size` (w, h in output
    pixels) and the sub-pixel `offset` of the centre; with
    `box_head="ltrb"`, instead of size and offset, the distances `ltrb`
    `(left, top, right, bottom)` from the centre pixel to the box's sides
    (TTFNet), trained with an IoU loss; with `num_identities`, a FairMOT
    re-identification embedding `reid`. A stacked hourglass is
    backbone and neck at once: with `neck=None`, the backbone returns one
    stride-4 map per stack, each stack gets its own heads, and the last stack
    is the model's output.

    The model takes RGB images with values 0..255 (normalised inside with the
    official mean and std), of a height and width that are multiples of
    `size_divisor`.

    Args:
        backbone: `keras.Model`. Maps normalised images to a list of
            features (a pyramid; or, with `neck=None`, one stride-4 map per
            stack). A backbone with several stacks has an int attribute
            `num_stacks`.
        neck: `keras.layers.Layer` or `None`. Maps the backbone's features to
            one stride-4 map. Defaults to `None`.
        num_classes: int. Number of object classes. Defaults to 80.
        head_channels: int. Hidden channels of every head. Defaults to 64.
        heads: dict name -> output channels. Defaults to
            `{"heatmap": num_classes, "size": 2, "offset": 2}`, or
            `{"heatmap": num_classes, "ltrb": 4}` with `box_head="ltrb"`,
            plus `"reid": reid_dim` with `num_identities`; extra heads
            (pose, 3D) are added here.
        max_objects: int. Objects per image in training targets. Defaults
            to 128.
        max_detections: int. Detections per image. Defaults to 100.
        radius: `"official"`, `"fixed"` or `"ttfnet"`. Gaussian radius rule of
            the heatmap targets. Defaults to `"official"`.
        heatmap_loss_weight, size_loss_weight, offset_loss_weight: floats.
            Defaults to 1, 0.1 and 1 (the paper).
        bounding_box_format: str. Format of training boxes and predicted
            boxes. Defaults to `"xyxy"`.
        size_divisor: int. The network's total stride; input sizes must be
            multiples of it. Defaults to 32.
        regression_head_stddev: float or `None`. Normal initialisation of
            the non-heatmap heads (the official `fill_fc_weights`: 0.001).
        score_threshold: float. `predict` blanks detections scoring at most
            this (box 0, score 0, label -1) and counts the others in
            `num_detections`. Defaults to 0.0 (the paper scores the top 100).
        flip_test: bool. Flip test-time augmentation in `predict`: the
            heatmaps and sizes of the image and its mirror are averaged, as
            the official detector. Defaults to False.
        test_scales: tuple of floats. Multi-scale testing in `predict`
            (the paper: `OFFICIAL_TEST_SCALES`, 0.5 to 1.5), merged with the
            official Soft-NMS. Defaults to `(1.0,)`.
        augmentation: `keras_centernet.layers.BatchAugmentation` or `None`.
            The official training augmentation run on the accelerator, in
            training only (for datasets made with `augment_on="accelerator"`,
            whose boxes are on the canvas). Defaults to `None`.
        heatmap_loss: `"focal"` or `"quality_focal"`. `"focal"`: the
            paper's penalty-reduced focal loss (`losses.focal_loss`, with
            `focal_clamp_gradient`). `"quality_focal"`: the quality focal
            loss of Generalized Focal Loss with the Gaussian target as the
            soft label (`losses.quality_focal_loss`); not in the paper.
            Defaults to `"focal"`.
        box_head: `"size"` or `"ltrb"`. `"size"`: the paper's `size` and
            `offset` heads, L1 losses at the centres. `"ltrb"`: one `ltrb`
            head of non-negative distances from the centre pixel to the
            box's sides, in output pixels (`relu(x) * 4`, TTFNet's scaling,
            with an initial bias of 1 so that no distance starts dead under
            the relu), trained with `iou_loss`; not in the paper. Defaults to
            `"size"`.
        iou_loss: `"giou"`, `"diou"` or `"ciou"`. The LTRB box loss.
            Defaults to `"giou"`.
        ltrb_gaussian: bool. With `box_head="ltrb"`: every pixel of each
            object's Gaussian regresses its box, weighted as TTFNet
            (`ltrb_gaussian_loss`), instead of the centre pixel only;
            TTFNet pairs it with `radius="ttfnet"`. Defaults to False.
        ltrb_loss_weight: float. Weight of the LTRB loss. Defaults to 5
            (TTFNet's GIoU weight).
        num_identities: int or `None`. Identities of the training set:
            when set, a `reid` embedding head and a linear identity
            classifier train with FairMOT's loss (`reid_loss`), from the
            targets' `"ids"`. Defaults to `None` (no re-identification).
        reid_dim: int or `None`. Channels of the `reid` embedding. Defaults
            to 128 (FairMOT) when `num_identities` is set.
        reid_loss_weight: float. Weight of the identity loss. Defaults to
            1 (FairMOT's learned uncertainty weighting is not used).

    Training: `model.compile(optimizer=...)` and `model.fit(dataset)` with
    batches `(images, {"boxes": (B, M, 4), "labels": (B, M)})` (boxes in
    input pixels, format `bounding_box_format`, label -1 for padding); a
    model with `num_identities` also needs `"ids": (B, M)` int, the
    identity of each object slot in `[0, num_identities)`, -1 when unknown
    or padding. The targets are rendered inside the training step; the
    loss is the paper's (focal loss + 0.1 size L1 + offset L1, averaged
    over hourglass stacks), its parts logged as `heatmap_loss`,
    `size_loss` and `offset_loss` (with `box_head="ltrb"`: `heatmap_loss`
    and `ltrb_loss`; with re-identification, also `reid_loss`).

    Prediction: `model.predict(images)` returns `{"boxes": (B, K, 4),
    "scores": (B, K), "labels": (B, K), "num_detections": (B,)}` in input
    pixels, `K = max_detections`, sorted by score.
    `model.configure_prediction(...)` changes the thresholds, test-time
    augmentation, or returns the raw maps instead.

    Example:

    >>> model = CenterNet.from_preset("resnet18_dcn", num_classes=20)
    >>> raw = model(np.zeros((1, 128, 128, 3), "float32"))
    >>> tuple(raw["heatmap"].shape)
    (1, 32, 32, 20)

    Reference:
        Zhou, Wang and Krähenbühl, "Objects as Points", arXiv:1904.07850.
    """

    def __init__(
        self,
        backbone,
        neck=None,
        num_classes=80,
        head_channels=64,
        heads=None,
        max_objects=128,
        max_detections=100,
        radius="official",
        heatmap_loss_weight=1.0,
        size_loss_weight=0.1,
        offset_loss_weight=1.0,
        bounding_box_format="xyxy",
        size_divisor=32,
        regression_head_stddev=0.001,
        score_threshold=0.0,
        flip_test=False,
        test_scales=(1.0,),
        focal_clamp_gradient="official",
        heatmap_loss="focal",
        augmentation=None,
        box_head="size",
        iou_loss="giou",
        ltrb_gaussian=False,
        ltrb_loss_weight=5.0,
        num_identities=None,
        reid_dim=None,
        reid_loss_weight=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int; received {num_classes!r}.")
        if box_head not in BOX_HEADS:
            raise ValueError(f"`box_head` must be one of {BOX_HEADS}; received {box_head!r}.")
        if iou_loss not in IOU_LOSSES:
            raise ValueError(f"`iou_loss` must be one of {IOU_LOSSES}; received {iou_loss!r}.")
        if num_identities is not None and (not isinstance(num_identities, int) or num_identities < 1):
            raise ValueError(f"`num_identities` must be a positive int or None; received {num_identities!r}.")
        if num_identities is None and reid_dim is not None:
            raise ValueError("`reid_dim` needs `num_identities` (the identities the embedding is trained on).")
        if num_identities is not None:
            reid_dim = REID_DIM if reid_dim is None else reid_dim
            if not isinstance(reid_dim, int) or reid_dim < 1:
                raise ValueError(f"`reid_dim` must be a positive int; received {reid_dim!r}.")
        required = _required_heads(num_classes, box_head, reid_dim)
        heads = dict(required) if heads is None else dict(heads)
        if heads.get("heatmap") != num_classes:
            raise ValueError(
                f"`heads['heatmap']` must equal `num_classes` ({num_classes}); "
                f"received heads {heads}."
            )
        for name, channels in required.items():
            if heads.get(name) != channels:
                raise ValueError(
                    f"`heads['{name}']` must be {channels} channels; received heads {heads}."
                )
        if radius not in ("official", "fixed", "ttfnet"):
            raise ValueError(
                f"`radius` must be 'official', 'fixed' or 'ttfnet'; received {radius!r}."
            )
        for name, value in (("max_objects", max_objects), ("max_detections", max_detections)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; received {value!r}.")
        test_scales = _check_test_scales(test_scales)
        if focal_clamp_gradient not in CLAMP_GRADIENTS:
            raise ValueError(
                f"`focal_clamp_gradient` must be one of {CLAMP_GRADIENTS}; "
                f"received {focal_clamp_gradient!r}."
            )
        if heatmap_loss not in HEATMAP_LOSSES:
            raise ValueError(
                f"`heatmap_loss` must be one of {HEATMAP_LOSSES}; received {heatmap_loss!r}."
            )

        # === Layers ===
        self.preprocessor = ImageNormalization(
            size_divisor=size_divisor, dtype=self.dtype_policy, name="preprocessor"
        )
        self.backbone = backbone
        self.neck = neck
        num_stacks = getattr(backbone, "num_stacks", 1) if neck is None else 1
        self.head_layers = []
        for stack in range(num_stacks):
            for name, channels in heads.items():
                self.head_layers.append(
                    PredictionHead(
                        channels,
                        head_channels=head_channels,
                        bias_init=HEATMAP_PRIOR_BIAS if name == "heatmap" else None,
                        kernel_stddev=None if name == "heatmap" else regression_head_stddev,
                        distance_scale=LTRB_DISTANCE_SCALE if name == "ltrb" else None,
                        dtype=self.dtype_policy,
                        name=name if num_stacks == 1 else f"{name}_{stack}",
                    )
                )
        # FairMOT's identity classifier: trained with the embeddings, unused at inference.
        self.reid_classifier = None
        if num_identities is not None:
            self.reid_classifier = keras.layers.Dense(
                num_identities, dtype=self.dtype_policy, name="reid_classifier"
            )

        # === Config ===
        self.num_classes = num_classes
        self.head_channels = head_channels
        self.heads = heads
        self.num_stacks = num_stacks
        self.max_objects = max_objects
        self.max_detections = max_detections
        self.radius = radius
        self.heatmap_loss_weight = heatmap_loss_weight
        self.size_loss_weight = size_loss_weight
        self.offset_loss_weight = offset_loss_weight
        self.bounding_box_format = bounding_box_format
        self.size_divisor = size_divisor
        self.regression_head_stddev = regression_head_stddev
        self.score_threshold = float(score_threshold)
        self.flip_test = bool(flip_test)
        self.test_scales = test_scales
        self.focal_clamp_gradient = focal_clamp_gradient
        self.heatmap_loss = heatmap_loss
        # A layer (its seed generator is model state); see `call`.
        self.augmentation = augmentation
        self.box_head = box_head
        self.iou_loss = iou_loss
        self.ltrb_gaussian = bool(ltrb_gaussian)
        self.ltrb_loss_weight = ltrb_loss_weight
        self.num_identities = num_identities
        self.reid_dim = reid_dim
        self.reid_loss_weight = reid_loss_weight
        self.raw_maps = False

        # === Loss parts, reported as metrics ===
        self.heatmap_loss_tracker = keras.metrics.Mean(name="heatmap_loss")
        if box_head == "size":
            self.size_loss_tracker = keras.metrics.Mean(name="size_loss")
            self.offset_loss_tracker = keras.metrics.Mean(name="offset_loss")
        else:
            self.ltrb_loss_tracker = keras.metrics.Mean(name="ltrb_loss")
        if num_identities is not None:
            self.reid_loss_tracker = keras.metrics.Mean(name="reid_loss")

        self.build((None, None, None, 3))

    def build(self, input_shape):
        if self.reid_classifier is not None and not self.reid_classifier.built:
            self.reid_classifier.build((None, self.reid_dim))
        build_by_symbolic_pass(self, input_shape)

    def stack_heads(self, stack):
        """The head layers of one stack, as a dict name -> layer."""
        per_stack = len(self.heads)
        layers = self.head_layers[stack * per_stack:(stack + 1) * per_stack]
        return dict(zip(self.heads, layers))

    def stride4_maps(self, images, training=None):
        """Normalised images -> the list of stride-4 maps, one per stack."""
        x = self.preprocessor(images)
        features = self.backbone(x, training=training)
        if self.neck is not None:
            features = self.neck(features, training=training)
        if not isinstance(features, (list, tuple)):
            features = [features]
        if len(features) != self.num_stacks:
            raise ValueError(
                f"The backbone/neck gave {len(features)} stride-4 maps for "
                f"{self.num_stacks} stacks."
            )
        return list(features)

    def forward_stacks(self, images, training=None, all_stacks=False):
        """Raw head outputs of every stack (or only the last), as a list of dicts."""
        maps = self.stride4_maps(images, training=training)
        stacks = range(self.num_stacks) if all_stacks else [self.num_stacks - 1]
        return [
            {name: head(maps[s]) for name, head in self.stack_heads(s).items()}
            for s in stacks
        ]

    def call(self, images, training=None):
        augmented = None
        if training and self.augmentation is not None:
            # The augmentation contract: the heads see the augmented images,
            # and the outputs carry them with their per-image maps (canvas
            # to input pixels) under "augmentation", so that `compute_loss`
            # maps `y`'s boxes the same way. Plain data flow: no state
            # between the two calls, the same under tf.function, JAX's
            # stateless trainer and torch.
            augmented = self.augmentation.augment_batch(images)
            images = augmented["images"]
        stacks = self.forward_stacks(images, training=training, all_stacks=bool(training))
        outputs = dict(stacks[-1])
        if training and self.num_stacks > 1:
            # The loss of a stacked hourglass averages over every stack.
            outputs["intermediate"] = stacks[:-1]
        if augmented is not None:
            outputs["augmentation"] = augmented
        return outputs

    # === Training ===

    def heatmap_loss_fn(self, heatmap_true, heatmap_logits):
        """The loss of one heatmap (centres, or keypoints in subclasses), as `heatmap_loss` says."""
        if self.heatmap_loss == "quality_focal":
            return quality_focal_loss(heatmap_true, heatmap_logits)
        return focal_loss(heatmap_true, heatmap_logits, clamp_gradient=self.focal_clamp_gradient)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The paper's loss; targets are rendered here from `y`'s boxes and labels."""
        if sample_weight is not None:
            raise ValueError("CenterNet does not take `sample_weight`: weight objects by their boxes.")
        if not isinstance(y, dict) or "boxes" not in y or "labels" not in y:
            raise ValueError(
                "CenterNet trains on `(images, {'boxes': (B, M, 4), 'labels': (B, M)})`; "
                f"received targets {type(y).__name__}"
                + (f" with keys {sorted(y)}" if isinstance(y, dict) else "") + "."
            )
        if y_pred is None:
            y_pred = self(x, training=training)
        augmented = y_pred.get("augmentation")
        if augmented is not None:
            # `y`'s boxes are on the canvas `x`: map them as `call` mapped the images.
            y = self.augmentation.augment_targets(
                y, augmented["matrix"], ops.shape(x), bounding_box_format=self.bounding_box_format
            )
            x = augmented["images"]
        if self.num_identities is not None and "ids" not in y:
            raise ValueError(
                "A CenterNet with `num_identities` trains on targets with `'ids': (B, M)` "
                f"(-1 where unknown); received keys {sorted(y)}."
            )
        targets = self.render_targets(x, y, y_pred["heatmap"])
        stacks = list(y_pred.get("intermediate", [])) + [y_pred]
        # Loss parts in the order they are summed: heatmap, box (size, offset or ltrb), reid.
        parts = {"heatmap": 0.0}
        parts.update(dict.fromkeys(("size", "offset") if self.box_head == "size" else ("ltrb",), 0.0))
        if self.num_identities is not None:
            parts["reid"] = 0.0
        for outputs in stacks:
            parts["heatmap"] += self.heatmap_loss_fn(targets["heatmap"], outputs["heatmap"])
            if self.box_head == "size":
                parts["size"] += reg_l1_loss(
                    outputs["size"], targets["indices"], targets["mask"], targets["size"]
                )
                parts["offset"] += reg_l1_loss(
                    outputs["offset"], targets["indices"], targets["mask"], targets["offset"]
                )
            else:
                parts["ltrb"] += self.ltrb_loss(outputs["ltrb"], targets)
            if self.num_identities is not None:
                parts["reid"] += reid_loss(
                    outputs["reid"], targets["indices"], targets["mask"], targets["ids"],
                    self.reid_classifier, reid_embedding_scale(self.num_identities),
                )
        total = 0.0
        for name, value in parts.items():
            value = value / len(stacks)
            getattr(self, f"{name}_loss_tracker").update_state(value)
            total = total + getattr(self, f"{name}_loss_weight") * value
        # Under `tf.distribute` each replica's loss is divided by the number of
        # replicas, so that the summed gradients are their mean (what Keras'
        # own `compute_loss` does); elsewhere this is the identity.
        total = scale_loss_for_distribution(total)
        for extra in self.losses:  # weight regularisers (already scaled by Keras)
            total = total + ops.cast(self._aggregate_additional_loss(extra), total.dtype)
        return total

    def ltrb_loss(self, ltrb_map, targets):
        """The IoU loss of an `ltrb` map, at the centres or TTFNet-weighted over the Gaussians."""
        if self.ltrb_gaussian:
            return ltrb_gaussian_loss(
                ltrb_map, targets["boxes"], targets["mask"], mode=self.iou_loss,
                pixel_area=targets["stride"] ** 2,
            )
        return ltrb_center_loss(
            ltrb_map, targets["indices"], targets["mask"], targets["boxes"], mode=self.iou_loss
        )

    def render_targets(self, images, y, heatmap):
        """Training targets of a batch on the output grid of `heatmap` (see `render_targets`).

        LTRB models also get `boxes` `(B, max_objects, 4)`, each slot's box
        `xyxy` in map pixels as rendered (clipped), and the `stride`;
        re-identification models the `ids` `(B, max_objects)` of the slots.
        """
        height, width = heatmap.shape[1], heatmap.shape[2]
        if height is None or width is None:
            raise ValueError(
                "Training needs static image sizes (batches of one fixed height and width); "
                f"the heatmap has shape {heatmap.shape}."
            )
        boxes = ops.cast(ops.convert_to_tensor(y["boxes"]), "float32")
        labels = ops.convert_to_tensor(y["labels"])
        if len(boxes.shape) != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"`boxes` must have shape (B, M, 4); received {boxes.shape}.")
        image_height, image_width = images.shape[1], images.shape[2]
        if self.bounding_box_format != "xyxy":
            boxes = keras.utils.bounding_boxes.convert_format(
                boxes, source=self.bounding_box_format, target="xyxy",
                height=image_height, width=image_width,
            )
        stride_x = image_width / width if image_width else 4.0
        stride_y = image_height / height if image_height else 4.0
        boxes = boxes / ops.convert_to_tensor([stride_x, stride_y, stride_x, stride_y], "float32")
        targets = render_targets(
            boxes, labels, (height, width), self.num_classes,
            max_objects=self.max_objects, radius=self.radius,
        )
        if self.box_head == "ltrb":
            # The clipped box of each slot, back from its centre pixel, offset and size.
            indices = targets["indices"]
            center_x = ops.cast(indices % width, "float32") + targets["offset"][..., 0]
            center_y = ops.cast(indices // width, "float32") + targets["offset"][..., 1]
            half_w = targets["size"][..., 0] / 2
            half_h = targets["size"][..., 1] / 2
            targets["boxes"] = ops.stack(
                [center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], axis=-1
            )
            targets["stride"] = stride_x
        if self.num_identities is not None:
            targets["ids"] = _slot_values(y["ids"], self.max_objects)
        return targets

    # === Prediction ===

    def configure_prediction(self, score_threshold=None, flip_test=None, test_scales=None, raw_maps=None):
        """Changes what `predict` does (the compiled predict function is rebuilt).

        Args:
            score_threshold: float. See the constructor.
            flip_test: bool. Flip test-time augmentation.
            test_scales: tuple of floats. Multi-scale testing, e.g.
                `OFFICIAL_TEST_SCALES`.
            raw_maps: bool. `predict` returns the raw output maps of the last
                stack (heatmap logits, size, offset) instead of detections.

        Example:

        >>> model.configure_prediction(flip_test=True, test_scales=OFFICIAL_TEST_SCALES)
        """
        if score_threshold is not None:
            self.score_threshold = float(score_threshold)
        if flip_test is not None:
            self.flip_test = bool(flip_test)
        if test_scales is not None:
            self.test_scales = _check_test_scales(test_scales)
        if raw_maps is not None:
            self.raw_maps = bool(raw_maps)
        self.predict_function = None

    def predict_step(self, *args):
        if len(args) == 2:
            # The JAX trainer's stateless signature: (state, data) -> (outputs, state).
            (trainable_variables, non_trainable_variables), data = args
            mapping = list(zip(self.trainable_variables, trainable_variables))
            mapping += list(zip(self.non_trainable_variables, non_trainable_variables))
            with keras.StatelessScope(state_mapping=mapping):
                outputs = self._predict_outputs(data)
            return outputs, non_trainable_variables
        return self._predict_outputs(args[0])

    def _predict_outputs(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if self.raw_maps:
            return self(x, training=False)
        return self.detect(x)

    def detect(self, images):
        """Detections of a batch, with the configured test-time augmentation.

        Returns DESIGN.md's dict: `boxes` `(B, K, 4)` `xyxy` in input pixels,
        `scores`, `labels`, `num_detections`; with a `reid` head also
        `embeddings` `(B, K, reid_dim)`, each detection's identity
        embedding read at its peak and L2-normalised (FairMOT's tracker
        input; from the unflipped pass under `flip_test`), zero for
        detections below `score_threshold`.
        """
        images = ops.cast(ops.convert_to_tensor(images), "float32")
        per_scale = []
        for scale in self.test_scales:
            scaled = images if scale == 1.0 else self._rescale(images, scale)
            heat, boxes = self._probability_maps(scaled)
            stride = _stride(scaled, heat)
            extra = {"embeddings": boxes["reid"]} if "reid" in boxes else None
            if self.box_head == "ltrb":
                detections = decode_ltrb_detections(
                    heat, boxes["ltrb"], self.max_detections, stride=stride, heatmap_is_probability=True,
                    extra_maps=extra,
                )
            else:
                detections = decode_detections(
                    heat, boxes["size"], boxes["offset"], self.max_detections, stride=stride,
                    heatmap_is_probability=True, extra_maps=extra,
                )
            if extra:
                embeddings = detections["embeddings"]
                # FairMOT's `F.normalize`: unit length, 1e-12 guarding zero vectors.
                norm = ops.sqrt(ops.sum(ops.square(embeddings), axis=-1, keepdims=True))
                detections["embeddings"] = embeddings / ops.maximum(norm, 1e-12)
            if scale != 1.0:
                detections["boxes"] = detections["boxes"] / scale
            per_scale.append(detections)
        if len(per_scale) == 1:
            detections = per_scale[0]
        else:
            detections = self._merge_scales(per_scale)
        return apply_score_threshold(detections, self.score_threshold)

    def _probability_maps(self, images):
        """Sigmoid heatmap and box maps (size and offset, or ltrb) of the last stack; averaged over a flip when asked."""
        box_maps = ("size", "offset") if self.box_head == "size" else ("ltrb",)
        if self.reid_dim is not None:
            box_maps += ("reid",)
        if not self.flip_test:
            raw = self(images, training=False)
            return ops.sigmoid(ops.cast(raw["heatmap"], "float32")), {name: raw[name] for name in box_maps}
        # One batch of 2B: the images, then their mirrors.
        raw = self(ops.concatenate([images, ops.flip(images, axis=2)], axis=0), training=False)

        def halves(value):
            value = ops.cast(value, "float32")
            value = ops.reshape(value, (2, -1) + tuple(value.shape[1:]))
            return value[0], ops.flip(value[1], axis=2)

        heat, heat_flipped = halves(ops.sigmoid(ops.cast(raw["heatmap"], "float32")))
        # The identity embedding of the unflipped pass, as the offset.
        maps = {"reid": halves(raw["reid"])[0]} if "reid" in box_maps else {}
        if self.box_head == "ltrb":
            ltrb, ltrb_flipped = halves(raw["ltrb"])
            # In the mirror, the distance to the left side is the distance to the right.
            ltrb_flipped = ops.take(ltrb_flipped, [2, 1, 0, 3], axis=-1)
            return (heat + heat_flipped) / 2, {"ltrb": (ltrb + ltrb_flipped) / 2, **maps}
        size, size_flipped = halves(raw["size"])
        # As the official detector: the offset of the unflipped pass only.
        offset, _ = halves(raw["offset"])
        return (heat + heat_flipped) / 2, {"size": (size + size_flipped) / 2, "offset": offset, **maps}

    def _rescale(self, images, scale):
        """Images resized by `scale` (as the official `int(h * scale)`), padded bottom/right to the divisor."""
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            raise ValueError("Multi-scale testing needs images of a static height and width.")
        new_height, new_width = int(height * scale), int(width * scale)
        resized = ops.image.resize(images, (new_height, new_width), interpolation="bilinear")
        divisor = self.size_divisor
        pad_height = -new_height % divisor
        pad_width = -new_width % divisor
        return ops.pad(resized, ((0, 0), (0, pad_height), (0, pad_width), (0, 0)))

    def _merge_scales(self, per_scale):
        """The official merge: Soft-NMS per class over every scale's detections, then the top K."""
        boxes = ops.concatenate([d["boxes"] for d in per_scale], axis=1)
        scores = ops.concatenate([d["scores"] for d in per_scale], axis=1)
        labels = ops.concatenate([d["labels"] for d in per_scale], axis=1)
        scores = soft_nms(boxes, scores, labels, method="gaussian", sigma=0.5, iou_threshold=0.5,
                          score_threshold=0.001)
        scores, order = ops.top_k(scores, self.max_detections)
        merged = {
            "boxes": ops.take_along_axis(boxes, order[..., None], axis=1),
            "scores": scores,
            "labels": ops.take_along_axis(labels, order, axis=1),
        }
        if "embeddings" in per_scale[0]:
            embeddings = ops.concatenate([d["embeddings"] for d in per_scale], axis=1)
            merged["embeddings"] = ops.take_along_axis(embeddings, order[..., None], axis=1)
        return merged

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "neck": None if self.neck is None else keras.saving.serialize_keras_object(self.neck),
                "num_classes": self.num_classes,
                "head_channels": self.head_channels,
                "heads": self.heads,
                "max_objects": self.max_objects,
                "max_detections": self.max_detections,
                "radius": self.radius,
                "heatmap_loss_weight": self.heatmap_loss_weight,
                "size_loss_weight": self.size_loss_weight,
                "offset_loss_weight": self.offset_loss_weight,
                "bounding_box_format": self.bounding_box_format,
                "size_divisor": self.size_divisor,
                "regression_head_stddev": self.regression_head_stddev,
                "score_threshold": self.score_threshold,
                "flip_test": self.flip_test,
                "test_scales": list(self.test_scales),
                "focal_clamp_gradient": self.focal_clamp_gradient,
                "heatmap_loss": self.heatmap_loss,
                "augmentation": None if self.augmentation is None
                else keras.saving.serialize_keras_object(self.augmentation),
                "box_head": self.box_head,
                "iou_loss": self.iou_loss,
                "ltrb_gaussian": self.ltrb_gaussian,
                "ltrb_loss_weight": self.ltrb_loss_weight,
                "num_identities": self.num_identities,
                "reid_dim": self.reid_dim,
                "reid_loss_weight": self.reid_loss_weight,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("neck") is not None:
            config["neck"] = keras.saving.deserialize_keras_object(config["neck"])
        if config.get("augmentation") is not None:
            config["augmentation"] = keras.saving.deserialize_keras_object(config["augmentation"])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, num_classes=80, head_channels=None, heads=None, **kwargs):
        """Builds one of the paper's architectures by name (random weights).

        Args:
            preset: str. One of `keras_centernet.models.presets.PRESETS`
                (`"resnet18"`, `"resnet18_dcn"`, `"resnet101_dcn"`, `"dla34"`,
                `"hourglass104"`, `"hourglass52"`, ...; not in the paper:
                `"mobilenetv3_fpn"` with the LTRB head, `"resnet50_bifpn"`).
            num_classes: int. Defaults to 80.
            head_channels: int. Defaults to the preset's (the official
                `head_conv`: 64 for ResNets, 256 for DLA and hourglass).
            heads: dict name -> channels. Defaults to the preset's heads.
            **kwargs: other `CenterNet` arguments; they override the
                preset's (e.g. `box_head="size"` on `"mobilenetv3_fpn"`).

        Example:

        >>> model = CenterNet.from_preset("dla34", num_classes=20)
        """
        from keras_centernet.models.presets import get_preset

        spec = get_preset(preset)
        config = {
            "backbone": spec["backbone"](),
            "neck": spec["neck"]() if spec.get("neck") else None,
            "num_classes": num_classes,
            "head_channels": head_channels or spec["head_channels"],
            "size_divisor": spec["size_divisor"],
            **spec.get("options", {}),
        }
        if heads is not None:
            config["heads"] = heads
        config.update(kwargs)
        model = cls(**config)
        # Names the default export folder, `saved_models/<preset>/`.
        model.preset = preset
        return model


def build_by_symbolic_pass(model, input_shape):
    """The `build` of the CenterNet models: one symbolic pass of `forward_stacks` builds every sub-layer.

    `model` has a `preprocessor` (`ImageNormalization`) and a
    `forward_stacks(images, all_stacks=True)`; a built model is left as is.
    """
    if model.built:
        return
    model.preprocessor.check_input_shape(input_shape)
    model.forward_stacks(keras.KerasTensor(input_shape), all_stacks=True)
    model.built = True


def _required_heads(num_classes, box_head, reid_dim):
    """The heads a model's losses read, name -> channels."""
    heads = {"heatmap": num_classes}
    heads.update({"size": 2, "offset": 2} if box_head == "size" else {"ltrb": 4})
    if reid_dim is not None:
        heads["reid"] = reid_dim
    return heads


def _slot_values(values, max_objects):
    """Per-object values `(B, M)` cut or padded with -1 to the `max_objects` target slots."""
    values = ops.cast(ops.convert_to_tensor(values), "int32")
    if len(values.shape) != 2:
        raise ValueError(f"`ids` must have shape (B, M); received {values.shape}.")
    num_objects = values.shape[1]
    if num_objects is None:  # as `render_targets`: slots then follow the batch's objects
        return values
    if num_objects > max_objects:
        return values[:, :max_objects]
    if num_objects < max_objects:
        return ops.pad(values, ((0, 0), (0, max_objects - num_objects)), constant_values=-1)
    return values


def _check_test_scales(test_scales):
    scales = tuple(float(s) for s in (test_scales if isinstance(test_scales, (list, tuple)) else [test_scales]))
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"`test_scales` must be positive numbers; received {test_scales!r}.")
    return scales


def _stride(images, heatmap):
    """Input pixels per output pixel (4 for every CenterNet)."""
    if images.shape[2] is not None and heatmap.shape[2] is not None:
        return images.shape[2] / heatmap.shape[2]
    return 4
