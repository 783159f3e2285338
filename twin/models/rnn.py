"""RNN baseline: a GRU over each path's per-hop features, then an MLP; no message passing.

Each hop reads its link's features and those of the queue the path's ToS selects there (its
scheduling policy, weight share, place in the serving order, load, and the QT answers for it;
on a FIFO port the queue is the link's one), as RouteNet-F's queues do, so the baselines see the
same inputs. The MLP reads the path's final GRU state and predicts its total queueing wait in units
of its per-hop service times (dimensionless), so

    delay(path) = softplus(MLP(h)) × Σ_hops service + Σ_hops size / C + propagation   (s),

a hop's service time being its queue's mean packet size / C.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from twin.models.features import CLASS_FEATURES, LINK_FEATURES, PATH_FEATURES
from twin.models.layers import HopGRU, mlp, path_recurrence


@keras.saving.register_keras_serializable(package="ndt")
class PathRNN(keras.Model):
    """GRU over [link ‖ queue (class) ‖ path] features hop by hop; MLP readout of the path's waiting time."""

    def __init__(self, state_dim: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.state_dim = state_dim
        self.path_embed = mlp([state_dim, state_dim], "path_embed")
        self.cell = HopGRU(state_dim, name="path_gru")
        self.cell.build(len(LINK_FEATURES) + len(CLASS_FEATURES) + len(PATH_FEATURES) + 1)
        self.readout = mlp([state_dim, state_dim // 2, 1], "wait_readout", last_bias=-1.0)

    def call(self, x: dict, max_hops: int) -> tf.Tensor:
        """Per sorted path mean delay, s."""
        path = tf.tanh(self.path_embed(x["path_x"]))
        hop_inputs = tf.concat([
            tf.gather(x["link_x"], x["hop_link"]),
            tf.gather(x["class_x"], x["hop_class"]),
            tf.gather(x["path_x"], x["hop_path"]),
            x["hop_share"][:, None],
        ], axis=1)
        path, _ = path_recurrence(self.cell, path, self.cell.project(hop_inputs), x["counts"], x["offsets"], max_hops)
        n_paths = tf.shape(path)[0]
        service = tf.math.unsorted_segment_sum(x["hop_service"], x["hop_path"], n_paths)
        transmit = tf.math.unsorted_segment_sum(x["hop_transmit"], x["hop_path"], n_paths)
        wait = tf.nn.softplus(self.readout(path)[:, 0]) * service
        return wait + transmit + x["path_prop"]

    def get_config(self):
        return {**super().get_config(), "state_dim": self.state_dim}
