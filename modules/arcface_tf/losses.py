"""Loss of arcface-tf2 (``modules/losses.py``): mean sparse softmax cross-entropy on the logits."""
from __future__ import annotations


def SoftmaxLoss():  # noqa: N802 - arcface-tf2's name
    """``softmax_loss(y_true, y_pred)``: y_true are class ids (any shape, any dtype), y_pred the logits."""

    def softmax_loss(y_true, y_pred):
        import tensorflow as tf

        y_true = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y_true, logits=y_pred)
        return tf.reduce_mean(ce)

    return softmax_loss
