"""The arcface-tf2 model (peteryuX/arcface-tf2, ``modules/models.py``) on tf_keras (Keras 2).

The functions build the same layers, in the same order, with the same nesting
and variable names as arcface-tf2, so its TF-format checkpoints
(``e_<epoch>_b_<batch>.ckpt``) load with ``model.load_weights(path)``::

    input_image (112, 112, 3) RGB float in [0, 1]
      -> Backbone: tf_keras.applications.ResNet50 / MobileNetV2, include_top=False (a nested Model)
      -> OutputLayer (a nested Model): BatchNormalization -> Dropout(0.5) -> Flatten
                                       -> Dense(embd_shape, L2) -> BatchNormalization
      -> [training only] ArcHead (nested Model, second Input 'label') or NormHead

One deliberate difference: the backbone is always built with ``weights=None``.
Nothing is ever downloaded (arcface-tf2 fetches ImageNet weights by default);
``use_pretrain=True`` is refused.

TensorFlow is imported inside the functions, never when this module is imported.
"""
from __future__ import annotations

from ..errors import ConfigError

BACKBONES = ("ResNet50", "MobileNetV2")
HEADS = ("ArcHead", "NormHead")


def _regularizer(weights_decay=5e-4):
    import tf_keras

    return tf_keras.regularizers.l2(weights_decay)


def Backbone(backbone_type="ResNet50", use_pretrain=False):  # noqa: N802 - arcface-tf2's names
    """A function ``x_in -> features`` applying a headless ResNet50/MobileNetV2 (random init)."""
    if use_pretrain:
        raise ConfigError(
            "use_pretrain=True would download ImageNet weights; this project never downloads weights "
            "(train from scratch or load an arcface-tf2 checkpoint)"
        )
    if backbone_type not in BACKBONES:
        raise ConfigError(f"backbone_type must be one of {', '.join(BACKBONES)}, got {backbone_type!r}")

    def backbone(x_in):
        import tf_keras

        app = tf_keras.applications.ResNet50 if backbone_type == "ResNet50" else tf_keras.applications.MobileNetV2
        return app(input_shape=tuple(x_in.shape[1:]), include_top=False, weights=None)(x_in)

    return backbone


def OutputLayer(embd_shape, w_decay=5e-4, name="OutputLayer"):  # noqa: N802
    """BN -> Dropout(0.5) -> Flatten -> Dense(embd_shape) -> BN, wrapped in a Model called ``name``."""

    def output_layer(x_in):
        import tf_keras

        from .layers import BatchNormalization

        x = inputs = tf_keras.Input(x_in.shape[1:])
        x = BatchNormalization()(x)
        x = tf_keras.layers.Dropout(rate=0.5)(x)
        x = tf_keras.layers.Flatten()(x)
        x = tf_keras.layers.Dense(embd_shape, kernel_regularizer=_regularizer(w_decay))(x)
        x = BatchNormalization()(x)
        return tf_keras.Model(inputs, x, name=name)(x_in)

    return output_layer


def ArcHead(num_classes, margin=0.5, logist_scale=64, name="ArcHead"):  # noqa: N802
    """``(embds, labels) -> logits`` through :class:`ArcMarginPenaltyLogists`, wrapped in a Model."""

    def arc_head(x_in, y_in):
        import tf_keras

        from .layers import ArcMarginPenaltyLogists

        x = inputs1 = tf_keras.Input(x_in.shape[1:])
        y = tf_keras.Input(y_in.shape[1:])
        x = ArcMarginPenaltyLogists(num_classes=num_classes, margin=margin, logist_scale=logist_scale)(x, y)
        return tf_keras.Model((inputs1, y), x, name=name)((x_in, y_in))

    return arc_head


def NormHead(num_classes, w_decay=5e-4, name="NormHead"):  # noqa: N802
    """A plain Dense classifier (softmax baseline), wrapped in a Model."""

    def norm_head(x_in):
        import tf_keras

        x = inputs = tf_keras.Input(x_in.shape[1:])
        x = tf_keras.layers.Dense(num_classes, kernel_regularizer=_regularizer(w_decay))(x)
        return tf_keras.Model(inputs, x, name=name)(x_in)

    return norm_head


def ArcFaceModel(  # noqa: N802
    size=None,
    channels=3,
    num_classes=None,
    name="arcface_model",
    margin=0.5,
    logist_scale=64,
    embd_shape=512,
    head_type="ArcHead",
    backbone_type="ResNet50",
    w_decay=5e-4,
    use_pretrain=False,
    training=False,
):
    """arcface-tf2's ``ArcFaceModel``.

    ``training=False``: ``input_image -> embeddings`` (raw, not normalised).
    ``training=True``: ``(input_image, label) -> logits`` with the ``head_type`` head.
    """
    import tf_keras

    if head_type not in HEADS:
        raise ConfigError(f"head_type must be one of {', '.join(HEADS)}, got {head_type!r}")
    x = inputs = tf_keras.Input([size, size, channels], name="input_image")

    x = Backbone(backbone_type=backbone_type, use_pretrain=use_pretrain)(x)

    embds = OutputLayer(embd_shape, w_decay=w_decay)(x)

    if training:
        if num_classes is None:
            raise ConfigError("a training model needs num_classes")
        labels = tf_keras.Input([], name="label")
        if head_type == "ArcHead":
            logist = ArcHead(num_classes=num_classes, margin=margin, logist_scale=logist_scale)(embds, labels)
        else:
            logist = NormHead(num_classes=num_classes, w_decay=w_decay)(embds)
        return tf_keras.Model((inputs, labels), logist, name=name)
    return tf_keras.Model(inputs, embds, name=name)


def model_from_config(config, *, training: bool = False, num_classes: int | None = None):
    """``ArcFaceModel`` from an :class:`~modules.config.ArcFaceTFConfig`."""
    return ArcFaceModel(
        size=config.input_size,
        num_classes=num_classes if num_classes is not None else config.num_classes,
        margin=config.margin,
        logist_scale=config.logist_scale,
        embd_shape=config.embd_shape,
        head_type=config.head_type,
        backbone_type=config.backbone_type,
        w_decay=config.w_decay,
        training=training,
    )


def embedding_model(model):
    """The ``input_image -> embeddings`` model of a training model, sharing its layers and weights.

    Its layers are those of ``ArcFaceModel(training=False)`` in the same order
    (``input_image``, backbone, ``OutputLayer``), so its checkpoints have the
    inference model's layout.  An inference model is returned unchanged.
    """
    import tf_keras

    if len(model.inputs) == 1:
        return model
    image_in = model.get_layer("input_image").output
    output_layer = model.get_layer("OutputLayer")
    backbone = output_layer.inbound_nodes[-1].inbound_layers  # the layer feeding OutputLayer
    embds = output_layer(backbone(image_in))
    return tf_keras.Model(image_in, embds, name=model.name)
