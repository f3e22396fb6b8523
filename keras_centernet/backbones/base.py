"""The base class of our backbones: a functional model from images to feature maps."""

import keras


class Backbone(keras.Model):
    """A functional Keras model from `(B, H, W, 3)` images to a list of feature maps.

    Subclasses build their graph, call
    `super().__init__(inputs=images, outputs=features, **kwargs)`, then
    `self._keep_dtype(dtype)`, and return their own arguments from
    `_own_config()`; `get_config`, `from_config` and the list-valued `call`
    come from here. Any such model can be the `backbone` of a `CenterNet`
    (with a neck that takes its list of maps).

    Example:

    >>> class TinyBackbone(Backbone):
    ...     def __init__(self, filters=8, dtype=None, **kwargs):
    ...         images = keras.Input((None, None, 3))
    ...         x = keras.layers.Conv2D(filters, 3, strides=4, padding="same")(images)
    ...         super().__init__(inputs=images, outputs=[x], **kwargs)
    ...         self._keep_dtype(dtype)
    ...         self.filters = filters
    ...     def _own_config(self):
    ...         return {"filters": self.filters}
    >>> backbone = TinyBackbone()
    >>> [tuple(m.shape) for m in backbone(np.zeros((1, 32, 32, 3), "float32"))]
    [(1, 8, 8, 8)]
    >>> TinyBackbone.from_config(backbone.get_config()).filters
    8
    """

    def _keep_dtype(self, dtype):
        # A functional model does not take `dtype`; keep it for `get_config`.
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)

    def call(self, inputs, training=None, mask=None):
        # A functional model unpacks a single output; always return a list of maps.
        outputs = super().call(inputs, training=training, mask=mask)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    def _own_config(self):
        raise NotImplementedError(f"{type(self).__name__} must define `_own_config`.")

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            **self._own_config(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
