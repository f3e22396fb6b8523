"""FairMOT's re-identification loss: identities classified from the embeddings at object centres."""

import math

from keras import ops

from keras_centernet.losses.regression import gather_at_indices


def reid_embedding_scale(num_identities):
    """FairMOT's scale of the normalised embeddings, `sqrt(2) log(num_identities - 1)`."""
    return math.sqrt(2) * math.log(max(num_identities - 1, 2))


def reid_loss(embedding_map, indices, mask, identities, classifier, scale):
    """Cross-entropy of the identity of each object, from its L2-normalised embedding at its centre.

    As FairMOT's `id_loss`: the embedding at the object's centre cell is
    L2-normalised, multiplied by `scale`, classified by `classifier` (a
    linear layer to `num_identities` logits); the cross-entropy is averaged
    over objects with an identity (`identities >= 0` and `mask`).

    Args:
        embedding_map: float tensor `(B, H, W, D)`, the `reid` head.
        indices: int tensor `(B, M)`, centre cells (`render_targets`).
        mask: float tensor `(B, M)`, 1 for objects.
        identities: int tensor `(B, M)`, identity per object slot, -1 when
            unknown.
        classifier: callable `(N, D) -> (N, num_identities)` logits.
        scale: float. See `reid_embedding_scale`.

    Returns:
        Scalar float32 tensor (0 when no object has an identity).

    Example:

    >>> loss = reid_loss(raw["reid"], targets["indices"], targets["mask"], y["identities"],
    ...                  model.reid_classifier, reid_embedding_scale(500))

    Reference:
        Zhang, Wang, Wang, Zeng and Liu, "FairMOT: On the Fairness of
        Detection and Re-Identification in Multiple Object Tracking",
        IJCV 2021, section 3.4.
    """
    embeddings = ops.cast(gather_at_indices(embedding_map, indices), "float32")
    embeddings = scale * embeddings / (ops.norm(embeddings, axis=-1, keepdims=True) + 1e-12)
    logits = ops.cast(classifier(embeddings), "float32")
    identities = ops.cast(identities, "int32")
    valid = ops.cast(identities >= 0, "float32") * ops.cast(mask, "float32")
    log_probabilities = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(log_probabilities, ops.maximum(identities, 0)[..., None], axis=-1)[..., 0]
    return -ops.sum(picked * valid) / ops.maximum(ops.sum(valid), 1.0)
