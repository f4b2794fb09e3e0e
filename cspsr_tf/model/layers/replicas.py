"""Whether a layer runs under a tf.distribute strategy with several replicas."""

import tensorflow as tf


def several_replicas():
    """True under a strategy with several replicas in sync (MirroredStrategy on 2+ devices,
    MultiWorkerMirroredStrategy).

    Layers take a replica-safe path then: the CVM never skips its network on one replica alone
    (the synchronised batch norms need every replica in the same branch), and the `fused`
    DMF ops run as plain TensorFlow ops (with the XLA-compiled functions inside the replicas,
    TF 2.21's gradient all-reduce saw different shapes on different replicas and failed;
    tests/test_training.py's mirrored test).
    """
    return tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1
