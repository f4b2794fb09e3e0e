"""Model configurations: presets (paper, small, tiny) and the ablation rows of Tables 3-4."""

import dataclasses
import json

SUPPORTED_SCALES = (2, 3, 4, 8)
ARCHITECTURES = ("dual", "single")
SINGLE_BRANCH_INPUTS = ("vis", "vis_nir")
GEOMETRIES = ("stereo", "aligned")
CVM_NORMALIZATIONS = ("group", "none")
# How the dynamic convolution normalises its k*k taps (layers/dynamic_conv.py).
KERNEL_NORMALIZATIONS = ("softmax", "none")
SKIP_SOURCES = ("vis", "guided_filter")
# How a dual-branch model's NIR branch reaches its VIS branch (see CSPSRConfig.fusion).
FUSIONS = ("dmf", "zero_conv")
# Fields a saved config may lack, with the value the code had before the field existed.
LEGACY_MODEL_FIELDS = {"nir_guided_filter_radius": 0, "skip_gain": False, "skip_source": "vis",
                       "fusion": "dmf", "exposure_conditioning": False}


@dataclasses.dataclass(frozen=True)
class CSPSRConfig:
    """Everything `build_cspsr` needs. Each field is one switch a researcher may flip.

    Attributes:
        scale: SR factor, one of 2, 3, 4, 8.
        channels: feature width C of each SR branch (paper: 64).
        num_modules: T, the number of DMF modules (paper: 15); for single-branch models the
            number of residual blocks in the body.
        kernel_size: k of the per-pixel dynamic kernels (paper: 3).
        architecture: `dual` (CSPSR) or `single` (one VIS branch, Table 4 rows 1-3).
        single_branch_input: `vis` (the baseline) or `vis_nir` (NIR concatenated to the input,
            "w/ NIR"); only for `single`.
        use_cvm: warp the NIR into the left view with the CVM (False: "w/o CVM"; in a
            single-branch model with `vis_nir`, True is "w/ CVM").
        use_csft: CSFT fusion (False: fusion by concatenation + 1x1 conv, "w/o CSFT").
        use_dynamic_conv: dynamic convolution (False: a common 3x3 conv, "w/o DyConv").
        dmf_residual: residual connection around each DMF module (a documented choice).
        fusion: dual branch only. `dmf` (the paper): the VIS features pass through the T DMF
            modules. `zero_conv` (not in the paper; ControlNet's zero convolution): the VIS
            branch is the VIS-only network (T residual blocks, the same layer names), and
            each DMF module's VIS output is added to it through a 1x1 convolution initialised
            at zero, so the untrained model is the VIS-only one and training adds the NIR
            only where it lowers the loss.
        nir_guided_filter_radius: dual branch only; 0 (default) for none. Else the VIS
            branch's shallow features also read the LR VIS image filtered by a guided filter of
            this window radius whose guide is the aligned LR NIR (a learned eps per colour;
            `layers/guided_filter.py`; not in the paper: it hands the network the local linear
            model of VIS on NIR that a measured classical filter exploits).
        global_skip: add the bicubic upsampling of the LR input to each SR output.
        skip_gain: multiply the VIS output's bicubic skip by a learned gain per colour
            (`layers/skip_gain.py`; starts at 1). For inputs darker than the target (the
            `low_light` degradation), where a skip of gain 1 adds a dark image. Not in the paper.
        skip_source: what the VIS output's bicubic skip upsamples: `vis` (the LR VIS input,
            the paper's choice) or `guided_filter` (the output of the NIR-guided filter, so the
            skip is the NIR-denoised VIS; not in the paper).
        exposure_conditioning: statistics of the whole LR frame (mean levels, clipped share,
            noise; with the NIR, the VIS brightness against the NIR's) set a gain per colour
            on the LR VIS and a scale and shift of the VIS features (`layers/exposure.py`),
            for one model serving frames of unknown exposure (the `blind` degradation). Not
            in the paper.
        dynamic_conv_implementation: how the element-wise parts of each DMF module run:
            `fused` (default, fastest: the dynamic convolution's softmax and multiply-adds and
            CSFT's gates compiled by XLA, computed in float32), `shift` (plain TensorFlow
            ops) or `patches` (tf.image.extract_patches reference). Same numbers; inference
            CLIs can switch a trained model to another (`--ops`).
        kernel_normalization: `softmax` over the k*k taps (default) or `none`.
        cvm_base_channels, cvm_depth: width and number of stride-2 stages of the CVM.
        cvm_normalization: after the CVM's encoder/decoder convolutions, `group` norm
            (default; 8 groups, per example) or `none`. Measured (benchmarks/cvm_matching.py,
            README): group norm meets the EPE target (0.92 LR px); `none` collapsed (saturated
            disparity heads) with small training patches. `batch` was retired: its statistics
            of training patches biased the disparity on whole frames (+0.7 LR px).
        max_disparity: bound of the predicted disparity, in LR pixels.
        geometry: the camera rig the model serves: `stereo` (NIR camera to the right, the CVM
            predicts the disparity) or `aligned` (a registered pair: zero disparity, the NIR
            is used as it is; the CVM weights are kept but unused).
        lambda_cssc: weight of L_CSSC in Eq. (3) (paper: 0.1; 0 is "w/o L_CSSC").

    Retired fields (`RETIRED`: measured to give nothing; a saved config that uses one fails
    to load in one line naming it): `dmf_vis_convs`, `nir_early_fusion`, `learned_guide`,
    `lambda_guide`, several `nir_guided_filter_radii`, and `cvm_normalization="batch"`.
    """

    scale: int = 4
    channels: int = 64
    num_modules: int = 15
    kernel_size: int = 3
    architecture: str = "dual"
    single_branch_input: str = "vis"
    use_cvm: bool = True
    use_csft: bool = True
    use_dynamic_conv: bool = True
    dmf_residual: bool = True
    fusion: str = "dmf"
    nir_guided_filter_radius: int = 0
    global_skip: bool = True
    skip_gain: bool = False
    skip_source: str = "vis"
    exposure_conditioning: bool = False
    dynamic_conv_implementation: str = "fused"
    kernel_normalization: str = "softmax"
    cvm_base_channels: int = 16
    cvm_depth: int = 3
    cvm_normalization: str = "group"
    max_disparity: float = 24.0
    geometry: str = "stereo"
    lambda_cssc: float = 0.1

    def __post_init__(self):
        if self.scale not in SUPPORTED_SCALES:
            raise ValueError(f"scale must be one of {SUPPORTED_SCALES}. Received: scale={self.scale}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {ARCHITECTURES}. Received: {self.architecture!r}"
            )
        if self.single_branch_input not in SINGLE_BRANCH_INPUTS:
            raise ValueError(
                f"single_branch_input must be one of {SINGLE_BRANCH_INPUTS}. "
                f"Received: {self.single_branch_input!r}"
            )
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}. Received: {self.geometry!r}")
        if self.cvm_normalization not in CVM_NORMALIZATIONS:
            raise ValueError(
                f"cvm_normalization must be one of {CVM_NORMALIZATIONS}. Received: {self.cvm_normalization!r}"
            )
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}. Received: {self.fusion!r}")
        if self.fusion != "dmf" and self.architecture != "dual":
            raise ValueError("fusion is a dual-branch switch")
        if self.architecture == "single" and self.single_branch_input == "vis" and self.use_cvm:
            raise ValueError(
                "A single-branch model with single_branch_input='vis' has no NIR to match: "
                "set use_cvm=False."
            )
        for name in ("channels", "num_modules", "kernel_size", "cvm_base_channels", "cvm_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1. Received: {name}={getattr(self, name)}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd. Received: kernel_size={self.kernel_size}")
        radius = self.nir_guided_filter_radius
        if not isinstance(radius, int) or isinstance(radius, bool) or radius < 0:
            raise ValueError(f"nir_guided_filter_radius must be an integer >= 0. Received: {radius!r}")
        if radius and self.architecture != "dual":
            raise ValueError("nir_guided_filter_radius is a dual-branch switch")
        if self.skip_source not in SKIP_SOURCES:
            raise ValueError(f"skip_source must be one of {SKIP_SOURCES}. Received: {self.skip_source!r}")
        if (self.skip_gain or self.skip_source != "vis") and not self.global_skip:
            raise ValueError("skip_gain and skip_source need global_skip=True")
        if self.skip_source == "guided_filter" and not radius:
            raise ValueError("skip_source='guided_filter' needs nir_guided_filter_radius")
        if self.lambda_cssc < 0:
            raise ValueError(f"lambda_cssc must be >= 0. Received: {self.lambda_cssc}")

    @property
    def uses_nir(self):
        return self.architecture == "dual" or self.single_branch_input == "vis_nir"

    def replace(self, **overrides):
        """A copy with some fields changed (validated again)."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"Unknown config fields: {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values):
        """A config from a saved dict; fields added later get the value they had before.

        Raises:
            ValueError: in one line, for a config of a retired variant (see `RETIRED`).
        """
        values = dict(values)
        # Configs written before the field existed had a batch-norm CVM.
        if values.get("use_cvm", True) and "cvm_normalization" not in values:
            values["cvm_normalization"] = "batch"
        radii = values.pop("nir_guided_filter_radii", None)
        if radii is not None:  # the field before one radius replaced the list of radii
            if len(radii) > 1:
                raise ValueError(f"nir_guided_filter_radii={list(radii)} was retired (a bank of "
                                 "guided filters gained nothing over one: 27.28 vs 27.29 dB); "
                                 "retrain the model with the current code")
            values["nir_guided_filter_radius"] = int(radii[0]) if radii else 0
        for field, (is_retired, why) in RETIRED.items():
            if field in values and is_retired(values[field]):
                raise ValueError(f"{field}={values[field]!r} was retired ({why}); "
                                 "retrain the model with the current code")
        # Retired switches at their neutral value describe a model the code still builds.
        for field in RETIRED:
            if field != "cvm_normalization":
                values.pop(field, None)
        if "cvm_normalization" not in values:
            values["cvm_normalization"] = CSPSRConfig.cvm_normalization
        return cls(**{**LEGACY_MODEL_FIELDS, **values})


# Values a saved config may hold that the code no longer builds: field -> (test, why). The
# findings that retired them are in docs/nir_benefit.md.
RETIRED = {
    "cvm_normalization": (lambda v: v == "batch", "a batch-norm CVM biased the disparity by +0.7 "
                          "LR px on whole frames; group norm replaced it"),
    "dmf_vis_convs": (lambda v: v != 1, "a second convolution on the DMF VIS path changed "
                      "nothing beyond the seed spread"),
    "nir_early_fusion": (bool, "the NIR at the VIS branch input gave -0.06 dB"),
    "learned_guide": (bool, "a learned guide correction gave +0.02 dB"),
    "lambda_guide": (lambda v: v != 0, "a supervised learned guide gave -0.14 / -0.22 dB"),
}


PRESETS = {
    # Sec. 4.5 of the paper: T = 15 DMF modules, C = 64, 3x3 kernels.
    "paper": CSPSRConfig(channels=64, num_modules=15, kernel_size=3, cvm_base_channels=16, cvm_depth=4),
    # Trains on a 2-core CPU in minutes.
    # max_disparity 12 LR px (48 HR px at x4): the stereo data here spans 0-13; a search range
    # far beyond the data lets repetitive texture win at wrong disparities.
    "small": CSPSRConfig(channels=32, num_modules=4, kernel_size=3, cvm_base_channels=16, cvm_depth=3,
                         max_disparity=12.0),
    # For unit tests: a forward pass in milliseconds.
    "tiny": CSPSRConfig(channels=8, num_modules=2, kernel_size=3, cvm_base_channels=4, cvm_depth=2),
}

# The rows of the paper's Table 4 (and "w/o L_CSSC"), as overrides of any preset.
ABLATIONS = {
    "baseline": dict(architecture="single", single_branch_input="vis", use_cvm=False),
    "w_nir": dict(architecture="single", single_branch_input="vis_nir", use_cvm=False),
    "w_cvm": dict(architecture="single", single_branch_input="vis_nir", use_cvm=True),
    "wo_cvm": dict(use_cvm=False),
    "wo_csft": dict(use_csft=False),
    "wo_dyconv": dict(use_dynamic_conv=False),
    "wo_cssc": dict(lambda_cssc=0.0),
    # Not in the paper: the LR VIS guided-filtered by the aligned NIR at the VIS branch input,
    # and (for dark inputs) the VIS skip taken from that filter, with a learned gain.
    "full_gf": dict(nir_guided_filter_radius=2),
    "full_gf_skip": dict(nir_guided_filter_radius=2, skip_gain=True, skip_source="guided_filter"),
    "full": dict(),
    # Not in the paper: the VIS-only network plus the NIR branch through zero-initialised 1x1 convs.
    "full_zero_conv": dict(fusion="zero_conv"),
}


def get_config(preset="paper", ablation="full", **overrides):
    """The config of a preset, with an ablation row and field overrides applied."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}. Received: {preset!r}")
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {sorted(ABLATIONS)}. Received: {ablation!r}")
    return PRESETS[preset].replace(**{**ABLATIONS[ablation], **overrides})
