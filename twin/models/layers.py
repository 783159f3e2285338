"""Keras building blocks shared by the learned models (:mod:`twin.models.routenet`,
:mod:`twin.models.rnn`): an MLP, a GRU cell that projects its inputs once per entity, the
recurrent pass along sorted paths, and the per-hop delay decomposition (s)."""

from __future__ import annotations

import keras
import tensorflow as tf


def mlp(units: list[int], name: str, last_bias: float = 0.0) -> keras.Sequential:
    """Dense layers with ReLU between them and a linear last layer (its bias starting at ``last_bias``)."""
    layers = [keras.layers.Dense(u, activation="relu") for u in units[:-1]]
    last = keras.layers.Dense(units[-1], bias_initializer=keras.initializers.Constant(last_bias))
    return keras.Sequential(layers + [last], name=name)


@keras.saving.register_keras_serializable(package="ndt")
class HopGRU(keras.layers.Layer):
    """A GRU cell whose input projection is applied once per entity, not once per hop.

    ``project(x)`` maps per-link (or per-hop) inputs to the three gate
    pre-activations; ``step(xp, h)`` advances the states ``h`` given projected
    inputs ``xp``. Same equations as Keras's GRUCell (reset gate after the matmul).
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        dim = input_shape[-1] if isinstance(input_shape, (tuple, list)) else int(input_shape)
        self.kernel = self.add_weight(shape=(dim, 3 * self.units), initializer="glorot_uniform", name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 3 * self.units), initializer="orthogonal",
                                                name="recurrent_kernel")
        self.bias = self.add_weight(shape=(2, 3 * self.units), initializer="zeros", name="bias")

    def project(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, self.kernel) + self.bias[0]

    def step(self, xp: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
        x_z, x_r, x_h = tf.split(xp, 3, axis=1)
        h_z, h_r, h_h = tf.split(tf.matmul(h, self.recurrent_kernel) + self.bias[1], 3, axis=1)
        z = tf.sigmoid(x_z + h_z)
        r = tf.sigmoid(x_r + h_r)
        candidate = tf.tanh(x_h + r * h_h)
        return z * h + (1.0 - z) * candidate

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def path_recurrence(cell: HopGRU, h: tf.Tensor, hop_inputs: tf.Tensor, counts: tf.Tensor, offsets: tf.Tensor,
                    max_hops: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Run ``cell`` along every path, one hop position at a time, over the active prefix only.

    h: (P, d) initial path states, paths sorted longest first; hop_inputs: (H, 3d)
    projected inputs ordered by hop position then path. Returns the final path
    states (P, d) and the state after each hop (H, d), in the order of ``hop_inputs``.
    """
    outputs, finished = [], [h[counts[0]:]]  # paths with no hop keep their state
    for k in range(max_hops):
        n, start = counts[k], offsets[k]
        h = cell.step(hop_inputs[start:start + n], h[:n])
        outputs.append(h)
        following = counts[k + 1] if k + 1 < max_hops else 0
        finished.append(h[following:])  # paths whose last hop is k
    return tf.concat(finished[::-1], axis=0), tf.concat(outputs, axis=0)


def hop_delays(occupancy: tf.Tensor, x: dict) -> tf.Tensor:
    """Per-path delay (s) from per-hop occupancy (packets): Σ waiting + transmission, plus propagation."""
    per_hop = occupancy * x["hop_service"] + x["hop_transmit"]
    n_paths = tf.shape(x["path_x"])[0]
    return tf.math.unsorted_segment_sum(per_hop, x["hop_path"], n_paths) + x["path_prop"]
