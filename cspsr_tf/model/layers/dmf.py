"""Dynamic multi-modal fusion (DMF) module: dynamic conv -> CSFT -> a convolution per branch."""

import keras
import tensorflow as tf

from cspsr_tf.model.layers.csft import CSFT
from cspsr_tf.model.layers.dynamic_conv import DynamicConv


@keras.saving.register_keras_serializable(package="cspsr_tf")
class DMF(keras.layers.Layer):
    """One dynamic multi-modal fusion module (paper Sec. 4.3, Fig. 3).

    F'_nir = DynamicConv(F_vis, F_nir); F'_vis = CSFT(F_vis, F'_nir); then one convolution
    per branch gives the next module's inputs:
        F^t_vis = conv_vis(relu(F'_vis)) (+ F^{t-1}_vis when `residual`)
        F^t_nir = conv_nir(relu(F'_nir)) (+ F^{t-1}_nir when `residual`)
    The ReLU and the residual connections are this implementation's choices (the paper names
    neither); the residual keeps the signal alive through T=15 sigmoid-gated modules.

    Ablation switches (paper Table 4):
        use_dynamic_conv=False: F'_nir = conv3x3(F_nir), a common convolution ("w/o DyConv").
        use_csft=False: F'_vis = conv1x1(concat(F'_nir, F_vis)), fusion by concatenation
            ("w/o CSFT").

    Args:
        channels: int, C.
        kernel_size: int, default 3; k of the dynamic convolution.
        use_dynamic_conv: bool, default True.
        use_csft: bool, default True.
        residual: bool, default True.
        dynamic_conv_implementation: `shift` (default), `patches` (reference) or `fused`
            (the dynamic convolution and CSFT's gates XLA-compiled; see DynamicConv, CSFT).
        kernel_normalization: `softmax` (default) or `none`.

    Call arguments:
        inputs: a pair `(f_vis, f_nir)` of [B, H, W, C] tensors.
        training: bool, passed to the batch norms of CSFT.

    Returns:
        The pair `(next_f_vis, next_f_nir)`.
    """

    def __init__(
        self,
        channels,
        kernel_size=3,
        use_dynamic_conv=True,
        use_csft=True,
        residual=True,
        dynamic_conv_implementation="shift",
        kernel_normalization="softmax",
        **kwargs,
    ):
        # Files saved before the two-convolution VIS path was retired say vis_convs=1.
        vis_convs = kwargs.pop("vis_convs", 1)
        if vis_convs != 1:
            raise ValueError(f"vis_convs={vis_convs} was retired (a second convolution on the VIS "
                             "path changed nothing beyond the seed spread)")
        super().__init__(**kwargs)
        self.channels = channels
        self.kernel_size = kernel_size
        self.use_dynamic_conv = use_dynamic_conv
        self.use_csft = use_csft
        self.residual = residual
        self.dynamic_conv_implementation = dynamic_conv_implementation
        self.kernel_normalization = kernel_normalization
        policy = self.dtype_policy
        if use_dynamic_conv:
            self.nir_filter = DynamicConv(
                kernel_size,
                normalization=kernel_normalization,
                implementation=dynamic_conv_implementation,
                name="dynamic_conv",
                dtype=policy,
            )
        else:
            self.nir_filter = keras.layers.Conv2D(
                channels, 3, padding="same", name="nir_conv", dtype=policy
            )
        if use_csft:
            self.fusion = CSFT(
                implementation="fused" if dynamic_conv_implementation == "fused" else "plain",
                name="csft",
                dtype=policy,
            )
        else:
            self.fusion = keras.layers.Conv2D(channels, 1, name="concat_fusion", dtype=policy)
        self.conv_vis = keras.layers.Conv2D(channels, 3, padding="same", name="conv_vis", dtype=policy)
        self.conv_nir = keras.layers.Conv2D(channels, 3, padding="same", name="conv_nir", dtype=policy)

    def build(self, input_shape):
        vis_shape, nir_shape = (tuple(s) for s in input_shape)
        if self.use_dynamic_conv:
            self.nir_filter.build((vis_shape, nir_shape))
        else:
            self.nir_filter.build(nir_shape)
        if self.use_csft:
            self.fusion.build((vis_shape, nir_shape))
        else:
            self.fusion.build(vis_shape[:-1] + (2 * self.channels,))
        self.conv_vis.build(vis_shape)
        self.conv_nir.build(nir_shape)

    def call(self, inputs, training=None):
        f_vis, f_nir = inputs
        if self.use_dynamic_conv:
            f_nir_dyn = self.nir_filter((f_vis, f_nir))
        else:
            f_nir_dyn = self.nir_filter(f_nir)
        if self.use_csft:
            # ReLU(F'_vis) from CSFT's own (XLA-fused) pass: F'_vis is read only through it.
            f_vis_active = self.fusion((f_vis, f_nir_dyn), training=training, relu_output=True)
        else:
            f_vis_active = tf.nn.relu(self.fusion(tf.concat([f_nir_dyn, f_vis], axis=-1)))
        next_vis = self.conv_vis(f_vis_active)
        next_nir = self.conv_nir(tf.nn.relu(f_nir_dyn))
        if self.residual:
            next_vis = next_vis + f_vis
            next_nir = next_nir + f_nir
        return next_vis, next_nir

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0]), tuple(input_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "kernel_size": self.kernel_size,
                "use_dynamic_conv": self.use_dynamic_conv,
                "use_csft": self.use_csft,
                "residual": self.residual,
                "dynamic_conv_implementation": self.dynamic_conv_implementation,
                "kernel_normalization": self.kernel_normalization,
            }
        )
        return config
