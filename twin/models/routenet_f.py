"""RouteNet-F: RouteNet-Fermi's (Ferriol-Galmés et al., IEEE/ACM ToN 2023) state per (link, queue), with
three heads — per-path mean delay (s), jitter (delay variance, s²) and loss (share of packets) — in
Keras 3 / TensorFlow.

Like :class:`twin.models.routenet.RouteNetE`, but a path's hop waits in the queue its ToS selects
(``hop_class``), so a scheduled port's queues keep states of their own (policy, weight share, rank,
the load before them among their features); a link's state is updated from the sum of its queues'.
Per hop, a readout of [path state ‖ queue state] gives

- a wait = sigmoid × the queue's buffer / its served share (packets sent at the link's full rate):
  delay = Σ wait × service + transmission + propagation;
- a standard deviation = sigmoid × buffer / served share (the same unit): jitter = Σ (sd × service)², hops
  independent;
- a drop probability p: loss = 1 - Π (1 - p).

The served share is QT's (``hop_speed``: 1 for FIFO, less for a queue that SP, WFQ or DRR serves after
others), so a full queue served at a tenth of the link can wait ten buffers' worth of full-rate service
times; with the buffer alone as the bound, delays under overload came out up to 50 % short.
Every head is scale-free: packets, shares and ratios times the per-hop service time (s).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from twin.models.layers import hop_delays, mlp, path_recurrence
from twin.models.routenet import RouteNetE

@keras.saving.register_keras_serializable(package="ndt")
class RouteNetF(RouteNetE):
    """RouteNet-E's embeddings and GRUs over per-queue states, with delay, jitter and loss heads."""

    def __init__(self, state_dim: int = 32, iterations: int = 8, **kwargs):
        super().__init__(state_dim=state_dim, iterations=iterations, **kwargs)
        self.spread_readout = mlp([state_dim, state_dim // 2, 1], "spread_readout", last_bias=-4.0)
        self.drop_readout = mlp([state_dim, state_dim // 2, 1], "drop_readout", last_bias=-6.0)

    def call(self, x: dict, max_hops: int) -> tf.Tensor:
        """Per sorted path: (delay s, jitter s², loss), shape (P, 3)."""
        path = tf.tanh(self.path_embed(x["path_x"]))
        link = tf.tanh(self.link_embed(x["link_x"]))
        queue = tf.tanh(self.queue_embed(x["class_x"]))
        n_links, n_queues = tf.shape(link)[0], tf.shape(queue)[0]
        share = x["hop_share"][:, None]
        for _ in range(self.iterations):
            entity = tf.concat([queue, tf.gather(link, x["class_link"])], axis=1)
            hop_inputs = tf.gather(self.path_cell.project(entity), x["hop_class"])
            path, seq = path_recurrence(self.path_cell, path, hop_inputs, x["counts"], x["offsets"], max_hops)
            message = tf.math.unsorted_segment_sum(seq * share, x["hop_class"], n_queues)
            queue, _ = self.queue_cell(message, [queue])
            link, _ = self.link_cell(tf.math.unsorted_segment_sum(queue, x["class_link"], n_links), [link])
        readout_in = tf.concat([seq, tf.gather(queue, x["hop_class"])], axis=1)
        reach = x["hop_buffer"] / x["hop_speed"]  # the most a hop can wait, in full-rate service times
        delay = hop_delays(tf.sigmoid(self.readout(readout_in)[:, 0]) * reach, x)
        spread = tf.sigmoid(self.spread_readout(readout_in)[:, 0]) * reach * x["hop_service"]
        n_paths = tf.shape(x["path_x"])[0]
        jitter = tf.math.unsorted_segment_sum(tf.square(spread), x["hop_path"], n_paths)
        drop = tf.sigmoid(self.drop_readout(readout_in)[:, 0])
        survive = tf.math.unsorted_segment_sum(tf.math.log1p(-tf.minimum(drop, 1.0 - 1e-6)), x["hop_path"], n_paths)
        return tf.stack([delay, jitter, -tf.math.expm1(survive)], axis=1)
