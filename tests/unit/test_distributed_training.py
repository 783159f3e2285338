"""Training under tf.distribute: two replicas (the CPU split in two logical devices, in a fresh process)
share a step's samples and agree with one device on the same loss, and a whole run goes through."""

import json
import subprocess
import sys

from twin.data.dataset import DatasetConfig, generate

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from twin.models.train import Item, TrainConfig, Trainer, batch_inputs, training_strategy

data, out = sys.argv[1], sys.argv[2]
config = TrainConfig(state_dim=8, iterations=2, epochs=3, batch_size=2, lr=5e-3, val_every=5)
quiet = dict(progress=False, log=lambda m: None)
two = Trainer(data, out + "/two", config, strategy=training_strategy(["/cpu:0", "/cpu:1"]), **quiet)
one = Trainer(data, out + "/one", config, strategy=training_strategy(["/cpu:0"]), **quiet)
same_start = all(np.array_equal(a, b) for a, b in zip(two.net.get_weights(), one.net.get_weights()))

# the same graph twice, labels scaled: as many valid paths each, so one device's mean over all paths
# is the mean of the two replicas' means
first = one.data.items[0]
pair = [first, Item(first.graph, first.delay * 1.3, first.nodes, first.index)]
two._step(*batch_inputs(pair, two.norm, 2))
one._step(*batch_inputs(pair, one.norm, 1))
gap = max(float(np.max(np.abs(a - b))) for a, b in zip(two.net.get_weights(), one.net.get_weights()))
moved = max(float(np.max(np.abs(a - b))) for a, b in zip(two.net.get_weights(), Trainer(
    data, out + "/fresh", config, strategy=training_strategy(["/cpu:0"]), **quiet).net.get_weights()))

summary = Trainer(data, out + "/run", config, strategy=training_strategy(["/cpu:0", "/cpu:1"]), **quiet).run()
print(json.dumps({"replicas": two.replicas, "same_start": same_start, "gap": gap, "moved": moved,
                  "losses": [h["train_loss"] for h in summary["history"]], "best": summary["best_val_mape"]}))
"""


def test_two_replicas_match_one_device(tmp_path):
    data = tmp_path / "data"
    generate(DatasetConfig(samples=8, min_nodes=5, max_nodes=8, packets_per_flow=300, shard_size=4,
                           real_fraction=0.0, seed=5), data, workers=1, progress=False)
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["same_start"]
    assert result["moved"] > 1e-4  # the step changed the weights
    assert result["gap"] < 1e-5 * max(1.0, result["moved"] * 100)  # and both engines changed them alike
    assert len(result["losses"]) == 3 and all(0 < loss < 10 for loss in result["losses"])
    assert (tmp_path / "run" / "best.weights.h5").exists() and result["best"] > 0
