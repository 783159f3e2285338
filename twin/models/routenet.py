"""RouteNet-E (Ferriol-Galmés et al., INFOCOM 2022) in Keras 3 / TensorFlow.

The network reads like the paper's algorithm: initial path, link and queue
states (32-d) from the scale-free features of :mod:`twin.models.features`; T = 8
iterations in which a path GRU runs over the per-hop sequence of
[queue ‖ link] states, each queue aggregates the path states at its hop
(weighted by the path's share of the link, rate / C, so the message stays
bounded however many paths cross it) and is GRU-updated, and each link is
GRU-updated from its queue; then a per-hop readout of the queue occupancy
(sigmoid × buffer, packets) gives

    delay(path) = Σ_hops occupancy × mean_size / C + size / C + propagation   (s).

The recurrent pass runs fast: paths sorted by length,
one GRUCell step per hop position over the prefix of paths still active.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from twin.models.layers import HopGRU, hop_delays, mlp, path_recurrence


@keras.saving.register_keras_serializable(package="ndt")
class RouteNetE(keras.Model):
    """RouteNet-Erlang's message passing with the scalable per-hop occupancy readout."""

    def __init__(self, state_dim: int = 32, iterations: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.state_dim = state_dim
        self.iterations = iterations
        self.path_embed = mlp([state_dim, state_dim], "path_embed")
        self.link_embed = mlp([state_dim, state_dim], "link_embed")
        self.queue_embed = mlp([state_dim, state_dim], "queue_embed")
        self.path_cell = HopGRU(state_dim, name="path_gru")
        self.path_cell.build(2 * state_dim)
        self.queue_cell = keras.layers.GRUCell(state_dim, name="queue_gru")
        self.link_cell = keras.layers.GRUCell(state_dim, name="link_gru")
        self.readout = mlp([state_dim, state_dim // 2, 1], "occupancy_readout", last_bias=-4.0)

    def call(self, x: dict, max_hops: int) -> tf.Tensor:
        """Per sorted path mean delay, s."""
        path = tf.tanh(self.path_embed(x["path_x"]))
        link = tf.tanh(self.link_embed(x["link_x"]))
        queue = tf.tanh(self.queue_embed(x["queue_x"]))
        n_links = tf.shape(link)[0]
        share = x["hop_share"][:, None]
        for _ in range(self.iterations):
            hop_inputs = tf.gather(self.path_cell.project(tf.concat([queue, link], axis=1)), x["hop_link"])
            path, seq = path_recurrence(self.path_cell, path, hop_inputs, x["counts"], x["offsets"], max_hops)
            message = tf.math.unsorted_segment_sum(seq * share, x["hop_link"], n_links)
            queue, _ = self.queue_cell(message, [queue])
            link, _ = self.link_cell(queue, [link])
        readout_in = tf.concat([seq, tf.gather(queue, x["hop_link"])], axis=1)
        occupancy = tf.sigmoid(self.readout(readout_in)[:, 0]) * x["hop_buffer"]
        return hop_delays(occupancy, x)

    def get_config(self):
        return {**super().get_config(), "state_dim": self.state_dim, "iterations": self.iterations}
