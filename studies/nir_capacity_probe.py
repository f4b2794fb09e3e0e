"""Would a far larger network, trained far longer, get +1 dB from the NIR in low light? (GPU probe)

    # 1. here, with TensorFlow: the registered training frames of the nir_benefit split, in parts
    .venv/bin/python studies/nir_capacity_probe.py --pack=runs/nir_capacity_probe/frames --conditions=low_light,clean
    # 2. on a machine with a GPU, Keras 3 and JAX (TensorFlow is not needed there)
    KERAS_BACKEND=jax python3 studies/nir_capacity_probe.py --train=runs/nir_capacity_probe/frames \
        --conditions=low_light --sizes=32x8,64x16,128x16 --budget_s=470 --weights_out=runs/nir_capacity_probe/low_light
    # 3. here again: score the trained networks on the test frames, with evaluate.py's inputs
    .venv/bin/python studies/nir_capacity_probe.py --score=runs/nir_capacity_probe/low_light \
        --out=studies/results/nir_capacity_probe_low_light.json

The issue's low-light target (+1.0 dB from the NIR) was missed on the 2-core CPU, where the
`small` preset trains for 2,000-4,000 steps. Whether the limit is the data or the model size
cannot be told there. This probe trains generic networks of several sizes on a GPU, with and
without the NIR, on the same frames and the same low-light inputs, and reports the NIR's gain
at each size. It does not train CSPSR: its layers are TensorFlow ops, and the GPU machines lent
here have no TensorFlow. The networks are plain EDSR-style ones in Keras 3 (backend-agnostic):

    head conv 3x3 (C) -> B residual blocks (conv-ReLU-conv, residual x0.1) -> conv, + head
    -> (conv to 4C, pixel shuffle x2) twice -> conv to 3 channels

`vis` takes the LR VIS (3 channels), `vis_nir` the LR VIS and the LR NIR (4 channels,
concatenated: registered frames only, like the `w_nir` rows). Inputs are shifted by -0.5.

Packing (`--pack`, needs TensorFlow and the `nir_benefit` TFDS folder): the registered
training frames of the `nir_benefit.py` split (its results JSON, `--results`; every id is
checked against the JSON's), HR VIS and HR NIR as the project's pipeline gives them
(`pipeline.make_eval_dataset`: cropped to a multiple of `scale`), as lossless WebP, in parts of
at most `--part_mib` MiB, so that each part travels to a GPU machine in one call. The LR inputs
are made where the probe trains, with PIL's float bicubic, which equals the project's TF
antialiased bicubic (`cspsr_tf/ops/resize.py`; a test checks it again).

Training (`--train`, any Keras 3 backend): every network of the run is trained at once, on
the same batches: one Keras model holds them all (they share no weights) and its loss is the
sum of their MSEs, so each network gets exactly its own gradient, and Adam's per-weight steps
keep them independent (a test checks that a network trains the same alone). Each step:
`--batch_size` random HR patches (`--patch`, at LR-aligned positions) of random training
frames, their LR patches cut from the whole-frame LR (equal to downscaling the patch except
within about 2 LR pixels of its edge), a vertical flip with probability 0.5, and for a noisy
condition new noise on the LR VIS (`low_light`: the model of `degradations.py`, drawn with
numpy; a test checks its statistics against the TF one). Unlike `train.py`, frames are not
randomly downscaled first. Adam; the learning rate changes per epoch of `--steps_per_epoch`
steps: epoch 0 (which compiles) at a fifth of the peak, then a cosine from the peak. The
number of epochs fills `--budget_s`: epoch 1's time fixes it. The weights go to `--weights_out`
in files of at most 15 MiB, with `train.json` (steps, time per step, final losses, machine).

Scoring (`--score`, needs TensorFlow): the same networks with those weights, on the registered
test frames of the split, with the inputs `evaluate.py` gives them (`nir_usage.load_frames`:
the same noise draws), each frame whole, the SR quantised to 8 bits, PSNR on Y with `scale`
pixels shaved (the standard protocol: `cspsr_tf.ops.metrics.psnr`, as `evaluate.py` scores).
So the figures compare directly with the `nir_benefit` rows on these 42 frames.
"""

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from benchmarks import bench_util  # noqa: E402  (standard library only: no TensorFlow)
from studies import default_out  # noqa: E402

NAME = "nir_capacity_probe"
INPUTS = ("vis", "vis_nir")
LOW_LIGHT_DEFAULTS = {"gain": 0.25, "photons_at_white": 400.0, "read_noise": 0.005}
FLAGS = flags.FLAGS


# ---------------------------------------------------------------------------------------------
# Packing (TensorFlow side)


def pack_frames(results_path, conditions, data_dir, manual_dir, scale, out_dir, part_mib):
    """Writes the registered training frames of a nir_benefit split as lossless WebP, in parts.

    Each part (`part0`, `part1`, ... under `out_dir`) holds whole frames and at most about
    `part_mib` MiB, so that each travels in one call; every part holds `meta.json`.
    """
    from cspsr_tf.data import pipeline, sources
    from cspsr_tf.evaluate.evaluation import quantize

    with open(results_path) as f:
        results = json.load(f)
    split = results["split"]

    def registered(splits, expected_ids):
        frames = []
        for one_split in splits:
            raw = sources.load_split("nirvis_folder", one_split, data_dir, manual_dir)
            for _, targets, meta in pipeline.make_eval_dataset(raw, scale=scale):
                frame_id = bytes(np.asarray(meta["id"]).reshape(-1)[0]).decode()
                if frame_id not in expected_ids:
                    raise ValueError(f"{frame_id} is not among the split's ids in {results_path}: "
                                     "the dataset folder no longer matches that run")
                if bytes(np.asarray(meta["geometry"]).reshape(-1)[0]).decode() == "aligned":
                    frames.append((frame_id, quantize(np.asarray(targets["vis_hr"])[0]),
                                   quantize(np.asarray(targets["nir_hr"])[0])))
        return frames

    frames = {"train": registered([split["train_split"]], set(split["train_ids"]))}
    if not frames["train"]:
        raise ValueError("no registered frames in the train split")
    meta = {"scale": scale, "results": os.path.basename(results_path),
            "conditions": {c: results["conditions"][c] for c in conditions},
            "train_ids": [f[0] for f in frames["train"]]}
    parts = write_pack(out_dir, meta, {k: [f[1:] for f in v] for k, v in frames.items()}, part_mib)
    return meta, parts


def write_pack(out_dir, meta, frames, part_mib):
    """Writes {"train": [(hr uint8 [H,W,3], nir uint8 [H,W,1])]} as lossless WebP parts.

    Returns the number of parts. Written beside `out_dir` first, then moved into place."""
    import shutil

    import cv2

    meta = dict(meta, files={})
    encoded = []
    for subset, items in frames.items():
        for i, (vis, nir) in enumerate(items):
            for kind, image in (("vis", vis[..., ::-1]), ("nir", nir)):
                ok, buffer = cv2.imencode(".webp", np.ascontiguousarray(image), [cv2.IMWRITE_WEBP_QUALITY, 101])
                if not ok:
                    raise ValueError(f"WebP encoding failed for {subset} frame {i}")
                encoded.append((f"{subset}_{i:03d}_{kind}.webp", buffer.tobytes()))
    staging = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    part, used = 0, 0
    for name, data in encoded:
        if used and used + len(data) > part_mib * 2**20:
            part, used = part + 1, 0
        os.makedirs(os.path.join(staging, f"part{part}"), exist_ok=True)
        with open(os.path.join(staging, f"part{part}", name), "wb") as f:
            f.write(data)
        meta["files"][name], used = f"part{part}", used + len(data)
    for k in range(part + 1):
        with open(os.path.join(staging, f"part{k}", "meta.json"), "w") as f:
            json.dump(meta, f)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(staging, out_dir)
    return part + 1


def bicubic_downscale(image, scale):
    """TF's antialiased bicubic downscaling (`cspsr_tf.ops.resize`) with PIL's float images.

    `resize.py` measured PIL's float ("F") bicubic equal to TF's to float32 rounding; a test
    checks it again. uint8 [H, W, C] in, float32 [H/scale, W/scale, C] in [0, 1] out."""
    from PIL import Image

    h, w = image.shape[:2]
    channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32) / 255.0, mode="F")
                           .resize((w // scale, h // scale), Image.BICUBIC)) for c in range(image.shape[2])]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


def load_frames(root):
    """(meta, train [(hr uint8, vis_lr, nir_lr)]) of a pack; the LR inputs are made here."""
    import cv2

    with open(os.path.join(root, "part0", "meta.json")) as f:
        meta = json.load(f)
    scale = int(meta["scale"])

    def read(name, kind):
        path = os.path.join(root, meta["files"][name], name)
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise FileNotFoundError(f"missing or unreadable {path}")
        return image[..., ::-1] if kind == "vis" else image.reshape(image.shape[:2] + (-1,))[..., :1]

    def frame(i):
        hr, nir = read(f"train_{i:03d}_vis.webp", "vis"), read(f"train_{i:03d}_nir.webp", "nir")
        return np.ascontiguousarray(hr), bicubic_downscale(hr, scale), bicubic_downscale(nir, scale)

    return meta, [frame(i) for i in range(len(meta["train_ids"]))]


# ---------------------------------------------------------------------------------------------
# Numpy pieces (no TensorFlow)


def parse_degradation(spec):
    """`none` -> None; `low_light[:k=v,...]` -> the low-light parameters (degradations.py's)."""
    if spec in (None, "none"):
        return None
    name, _, rest = spec.partition(":")
    if name != "low_light":
        raise ValueError(f"the probe draws only low_light noise, got degradation {spec!r}")
    params = dict(LOW_LIGHT_DEFAULTS)
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in params:
            raise ValueError(f"unknown low_light parameter {key!r} in {spec!r}")
        params[key] = float(value)
    return params


def low_light(vis_lr, rng, gain, photons_at_white, read_noise):
    """The `low_light` degradation of `degradations.py`, drawn with a numpy generator."""
    photons = rng.poisson(np.asarray(vis_lr, np.float64) * gain * photons_at_white)
    read = rng.normal(0.0, read_noise, size=np.shape(vis_lr))
    return np.clip(photons / photons_at_white + read, 0.0, 1.0).astype(np.float32)


class PatchSampler:
    """Random training batches: HR patches, their LR VIS/NIR patches, per-condition LR VIS."""

    def __init__(self, frames, scale, patch, batch_size, conditions, seed):
        self.frames, self.scale, self.patch, self.batch_size = frames, scale, patch, batch_size
        self.conditions = {c: parse_degradation(spec) for c, spec in conditions.items()}
        self.seed = seed
        lr_patch = patch // scale
        for k, (hr, vis, _) in enumerate(frames):
            if min(vis.shape[:2]) < lr_patch or hr.shape[:2] != (vis.shape[0] * scale, vis.shape[1] * scale):
                raise ValueError(f"training frame {k}: LR size {vis.shape[:2]} is smaller than the LR patch "
                                 f"{lr_patch} or HR size {hr.shape[:2]} is not x{scale}")

    def batch(self, index):
        """Batch number `index`: the same for a given seed and index, whatever the thread."""
        rng = np.random.default_rng([self.seed, index])
        s, lp = self.scale, self.patch // self.scale
        hr_b, vis_b, nir_b = [], [], []
        for k in rng.integers(len(self.frames), size=self.batch_size):
            hr, vis, nir = self.frames[k]
            i = rng.integers(vis.shape[0] - lp + 1)
            j = rng.integers(vis.shape[1] - lp + 1)
            parts = [hr[i * s:(i + lp) * s, j * s:(j + lp) * s], vis[i:i + lp, j:j + lp], nir[i:i + lp, j:j + lp]]
            if rng.random() < 0.5:
                parts = [p[::-1] for p in parts]
            for dest, part in zip((hr_b, vis_b, nir_b), parts, strict=True):
                dest.append(part)
        hr_b = np.stack(hr_b).astype(np.float32) / 255.0
        vis_b, nir_b = np.stack(vis_b).astype(np.float32), np.stack(nir_b).astype(np.float32)
        inputs = {"nir_lr": nir_b}
        for condition, params in self.conditions.items():
            inputs[f"vis_lr_{condition}"] = vis_b if params is None else low_light(vis_b, rng, **params)
        return inputs, hr_b


# ---------------------------------------------------------------------------------------------
# Networks (Keras 3, any backend)


def network_name(condition, width, blocks, inputs):
    return f"{condition}__c{width}_b{blocks}__{inputs}"


def pixel_shuffle(x, r):
    """`tf.nn.depth_to_space` in keras.ops: [B, h, w, r*r*c] -> [B, h*r, w*r, c]."""
    from keras import ops

    b, h, w = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
    c = x.shape[-1] // (r * r)
    x = ops.reshape(x, (b, h, w, r, r, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (b, h * r, w * r, c))


def build_networks(conditions, sizes, scale, seed):
    """One keras.Model: inputs nir_lr and vis_lr_<condition>, one SR output per network.

    Each layer's initial weights depend on `seed` and its name only, so a network starts the
    same whichever other networks the model holds."""
    import zlib

    import keras
    from keras import layers

    if scale not in (2, 4, 8):
        raise ValueError(f"the probe's upsampler is x2 pixel shuffles: scale must be 2, 4 or 8, got {scale}")

    def edsr(x, width, blocks, name):
        def conv(n, tag):
            init = keras.initializers.GlorotUniform(seed=(seed * 7919 + zlib.crc32(f"{name}.{tag}".encode())) % 2**31)
            return layers.Conv2D(n, 3, padding="same", kernel_initializer=init, name=f"{name}.{tag}")

        head = conv(width, "head")(x)
        y = head
        for b in range(blocks):
            r = layers.ReLU()(conv(width, f"b{b}a")(y))
            r = conv(width, f"b{b}b")(r)
            y = layers.Add()([y, layers.Rescaling(0.1)(r)])
        y = layers.Add()([head, conv(width, "body")(y)])
        for u in range(scale.bit_length() - 1):
            y = layers.Lambda(lambda t: pixel_shuffle(t, 2))(conv(4 * width, f"up{u}")(y))
        return conv(3, "out")(y)

    nir = keras.Input((None, None, 1), name="nir_lr")
    inputs, outputs = {"nir_lr": nir}, {}
    for condition in conditions:
        vis = keras.Input((None, None, 3), name=f"vis_lr_{condition}")
        inputs[f"vis_lr_{condition}"] = vis
        for width, blocks in sizes:
            for kind in INPUTS:
                name = network_name(condition, width, blocks, kind)
                x = vis if kind == "vis" else layers.Concatenate()([vis, nir])
                x = layers.Rescaling(1.0, offset=-0.5)(x)
                outputs[name] = layers.Identity(name=name)(edsr(x, width, blocks, name))
    return keras.Model(inputs, outputs)


def network_params(model, name):
    """Trainable parameters of one network (its layers are named `<name>.<part>`)."""
    return int(sum(np.prod(w.shape) for layer in model.layers if layer.name.startswith(name + ".")
                   for w in layer.trainable_weights))


def compile_networks(model, learning_rate, steps_per_execution=1):
    """Adam on the sum of the networks' MSEs; the learning rate is set per epoch by `train`."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss={name: "mean_squared_error" for name in model.output_names}, jit_compile=True,
                  steps_per_execution=steps_per_execution)


def epoch_learning_rate(epoch, epochs, peak):
    """Epoch 0 warms up at peak / 5; epochs 1 .. epochs-1 follow a cosine from the peak to near 0."""
    if epoch == 0:
        return peak / 5
    if epochs is None or epochs <= 2:
        return peak
    return peak * 0.5 * (1.0 + np.cos(np.pi * (epoch - 1) / (epochs - 1)))


def train(model, sampler, steps_per_epoch, peak_lr, epochs=None, budget_s=None, log=print):
    """Trains in epochs of `steps_per_epoch` batches, for `epochs` or as many as `budget_s` holds.

    With a budget, epoch 0 (which compiles) and epoch 1 run first; epoch 1's time then fixes
    the number of epochs that fit in what is left, and the cosine schedule spans them.
    Returns {"steps", "epochs", "seconds", "epoch_s", "losses" (last epoch, per network)}."""
    import itertools
    import threading

    import keras

    if (epochs is None) == (budget_s is None):
        raise ValueError("give epochs or budget_s")
    names = list(model.output_names)
    counter, lock = itertools.count(), threading.Lock()

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return steps_per_epoch

        def __getitem__(self, index):
            with lock:  # a running batch number: every batch of the run is a new one
                number = next(counter)
            x, y = sampler.batch(number)
            return x, {n: y for n in names}

    state = {"epochs": epochs, "ends": []}

    class Schedule(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate = float(epoch_learning_rate(epoch, state["epochs"], peak_lr))

        def on_epoch_end(self, epoch, logs=None):
            state["ends"].append(time.perf_counter())
            if budget_s is not None and epoch == 1:
                epoch_s = state["ends"][1] - state["ends"][0]
                left = budget_s - (state["ends"][1] - start)
                state["epochs"] = 2 + max(1, int(left // epoch_s))
                log(f"epoch 1: {epoch_s:.1f} s for {steps_per_epoch} steps -> {state['epochs']} epochs")
            over_budget = budget_s is not None and state["ends"][-1] - start > budget_s
            if over_budget or (state["epochs"] is not None and epoch + 1 >= state["epochs"]):
                self.model.stop_training = True

    start = time.perf_counter()
    history = model.fit(Batches(), epochs=epochs or 10**6, verbose=0, callbacks=[Schedule()])
    seconds = time.perf_counter() - start
    done = len(state["ends"])
    return {"steps": done * steps_per_epoch, "epochs": done, "seconds": seconds,
            "epoch_s": (state["ends"][-1] - state["ends"][0]) / max(done - 1, 1),
            "losses": {n: float(history.history[f"{n}_loss"][-1]) for n in names}}


def score(model, test, scale):
    """{network: [PSNR per frame]} on whole test frames, one frame at a time.

    `test`: {condition: [(hr uint8, vis_lr, nir_lr)]}, the same frames in the same order for
    every condition of the model. Needs TensorFlow (the project's metrics)."""
    from cspsr_tf.evaluate.evaluation import quantize
    from cspsr_tf.ops.metrics import psnr

    names = list(model.output_names)
    per_frame = {n: [] for n in names}
    conditions = list(test)
    for k in range(len(test[conditions[0]])):
        hr, _, nir = test[conditions[0]][k]
        feed = {"nir_lr": nir[None]}
        for c in conditions:
            feed[f"vis_lr_{c}"] = test[c][k][1][None]
        out = model(feed, training=False)
        for n in names:
            per_frame[n].append(psnr(quantize(np.asarray(out[n])[0]), hr, protocol="standard", scale=scale))
    return per_frame


def train_probe(pack_path, conditions, sizes, batch_size, patch, learning_rate, seed, steps_per_epoch,
                epochs=None, budget_s=None, log=print):
    """(model, facts) after training every network of `conditions` x `sizes` x INPUTS."""
    import keras

    meta, frames = load_frames(pack_path)
    conditions = conditions or list(meta["conditions"])
    missing = [c for c in conditions if c not in meta["conditions"]]
    if missing:
        raise ValueError(f"conditions {missing} are not in {pack_path} (it has {list(meta['conditions'])})")
    scale = int(meta["scale"])
    specs = {c: meta["conditions"][c] for c in conditions}
    keras.utils.set_random_seed(seed)
    model = build_networks(conditions, sizes, scale, seed)
    compile_networks(model, learning_rate, steps_per_execution=10 if steps_per_epoch % 10 == 0 else 1)
    trained = train(model, PatchSampler(frames, scale, patch, batch_size, specs, seed), steps_per_epoch,
                    learning_rate, epochs=epochs, budget_s=budget_s, log=log)
    log(f"trained {trained['steps']} steps in {trained['seconds']:.0f} s")
    return model, {
        "conditions": specs, "sizes": [list(size) for size in sizes], "scale": scale, "steps": trained["steps"],
        "epochs": trained["epochs"], "steps_per_epoch": steps_per_epoch, "train_s": trained["seconds"],
        "ms_per_step": 1000 * trained["epoch_s"] / steps_per_epoch, "batch_size": batch_size, "patch": patch,
        "learning_rate": learning_rate, "seed": seed, "train_frames": len(frames), "train_ids": meta["train_ids"],
        "params": {name: network_params(model, name) for name in model.output_names},
        "final_loss": trained["losses"]}


def save_weights(model, folder, max_mib=15):
    """Every layer's weights in `weights_<k>.npz` files of at most about `max_mib` MiB each."""
    os.makedirs(folder, exist_ok=True)
    files, current, used = [], {}, 0
    for layer in model.layers:
        for k, value in enumerate(layer.get_weights()):
            if current and used + value.nbytes > max_mib * 2**20:
                files.append(current)
                current, used = {}, 0
            current[f"{layer.name}/{k}"], used = value, used + value.nbytes
    files.append(current)
    for k, arrays in enumerate(files):
        np.savez(os.path.join(folder, f"weights_{k}.npz"), **arrays)
    return len(files)


def load_weights(model, folder):
    """Sets every layer's weights from `save_weights` files; a missing or extra one is an error."""
    import glob

    stored = {}
    for path in sorted(glob.glob(os.path.join(folder, "weights_*.npz"))):
        with np.load(path) as data:
            stored.update({key: data[key] for key in data.files})
    for layer in model.layers:
        if layer.get_weights():
            keys = [f"{layer.name}/{k}" for k in range(len(layer.get_weights()))]
            missing = [key for key in keys if key not in stored]
            if missing:
                raise ValueError(f"{folder}: no weights for {missing[0]}")
            layer.set_weights([stored.pop(key) for key in keys])
    if stored:
        raise ValueError(f"{folder}: weights of no layer of this model: {sorted(stored)[:3]}")


def score_networks(model, test, scale):
    """{condition/cCbB: row} and {network: [PSNR per frame]}; test = {condition: [(hr, vis, nir)]}."""
    per_frame = score(model, test, scale)
    rows = {}
    for name in model.output_names:
        condition, size, kind = name.split("__")
        if kind != "vis":
            continue
        gains = np.subtract(per_frame[f"{condition}__{size}__vis_nir"], per_frame[name])
        rows[f"{condition}/{size}"] = {
            "vis_psnr_db": float(np.mean(per_frame[name])),
            "vis_nir_psnr_db": float(np.mean(per_frame[f"{condition}__{size}__vis_nir"])),
            "nir_gain_db": float(np.mean(gains)), "frames_nir_wins": int(np.sum(gains > 0))}
    return rows, per_frame


def _machine():
    """What ran the probe (bench_util.machine_info needs TensorFlow, which the GPU machine lacks)."""
    import platform

    import keras

    info = {"cpu_model": bench_util.cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "keras": keras.__version__, "backend": keras.backend.backend(), "device": "CPU"}
    if keras.backend.backend() == "jax":
        import jax

        info.update(jax=jax.__version__, device=str(jax.devices()[0].device_kind))
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        info.update(tensorflow=tf.__version__, device="GPU" if tf.config.list_physical_devices("GPU") else "CPU")
    return info


def parse_sizes(values):
    sizes = []
    for value in values:
        width, _, blocks = value.partition("x")
        if not (width.isdigit() and blocks.isdigit()):
            raise ValueError(f"--sizes takes CxB items such as 64x16, got {value!r}")
        sizes.append((int(width), int(blocks)))
    return sizes


def registered_test_frames(results_path, conditions, data_dir, manual_dir, scale):
    """{condition: [(hr, vis_lr, nir_lr)]}: the registered test frames with evaluate.py's inputs."""
    from benchmarks.nir_usage import load_frames

    with open(results_path) as f:
        results = json.load(f)
    test, ids = {}, None
    for condition, spec in conditions.items():
        if results["conditions"].get(condition) != spec:
            raise ValueError(f"condition {condition!r} is {spec!r} in training but "
                             f"{results['conditions'].get(condition)!r} in {results_path}")
        frames = [f for f in load_frames("nirvis_folder", results["split"]["eval_splits"], data_dir, manual_dir,
                                         scale, spec) if f[4] == "aligned"]
        if ids is not None and [f[0] for f in frames] != ids:
            raise ValueError(f"{condition}: the test frames differ from the other condition's")
        ids = [f[0] for f in frames]
        test[condition] = [(f[3], f[1][0], f[2][0]) for f in frames]
    return test, ids


def main(argv):
    del argv
    modes = [m for m in ("pack", "train", "score") if getattr(FLAGS, m)]
    if len(modes) != 1:
        raise app.UsageError("give exactly one of --pack=DIR, --train=PACK_DIR or --score=WEIGHTS_DIR")
    if FLAGS.pack or FLAGS.score:
        from cspsr_tf.util.cli import quiet_tensorflow

        quiet_tensorflow()
    if FLAGS.pack:
        meta, parts = pack_frames(FLAGS.results, FLAGS.conditions, FLAGS.data_dir, FLAGS.manual_dir, FLAGS.scale,
                                  FLAGS.pack, FLAGS.part_mib)
        print(f"{FLAGS.pack}: {len(meta['train_ids'])} training frames in {parts} parts, "
              f"conditions {list(meta['conditions'])}")
        return
    if FLAGS.train:
        if not os.path.isfile(os.path.join(FLAGS.train, "part0", "meta.json")):
            raise app.UsageError(f"--train: {FLAGS.train} is not a pack (no part0/meta.json)")
        facts = {"benchmark": NAME, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "command": bench_util.command_line(),
                 "machine": _machine()}
        model, trained = train_probe(FLAGS.train, FLAGS.conditions, parse_sizes(FLAGS.sizes), FLAGS.batch_size,
                                     FLAGS.patch, FLAGS.learning_rate, FLAGS.seed, FLAGS.steps_per_epoch,
                                     epochs=FLAGS.epochs, budget_s=None if FLAGS.epochs else FLAGS.budget_s)
        facts["training"] = trained
        files = save_weights(model, FLAGS.weights_out)
        bench_util.write_json(os.path.join(FLAGS.weights_out, "train.json"), facts)
        print(f"{FLAGS.weights_out}: {files} weight files and train.json")
        return
    with open(os.path.join(FLAGS.score, "train.json")) as f:
        facts = json.load(f)
    trained = facts["training"]
    model = build_networks(list(trained["conditions"]), [tuple(s) for s in trained["sizes"]], trained["scale"],
                           trained["seed"])
    load_weights(model, FLAGS.score)
    test, ids = registered_test_frames(FLAGS.results, trained["conditions"], FLAGS.data_dir, FLAGS.manual_dir,
                                       trained["scale"])
    start = time.perf_counter()
    rows, per_frame = score_networks(model, test, trained["scale"])
    facts["scoring"] = {"command": bench_util.command_line(),
                        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "machine": {"cpu_model": bench_util.cpu_model(), "cpu_count": os.cpu_count()},
                        "results": bench_util.rel(FLAGS.results), "test_frames": len(ids), "test_ids": ids,
                        "score_s": time.perf_counter() - start, "rows": rows,
                        "per_frame": {n: [round(v, 4) for v in values] for n, values in per_frame.items()}}
    bench_util.write_json(FLAGS.out, facts)
    for key, row in rows.items():
        print(f"{key}: vis {row['vis_psnr_db']:.2f}  vis_nir {row['vis_nir_psnr_db']:.2f}  "
              f"NIR gain {row['nir_gain_db']:+.2f} dB ({row['frames_nir_wins']}/{len(ids)} frames)")


if __name__ == "__main__":
    flags.DEFINE_string("pack", None, "Write the frames to this folder (needs TensorFlow).")
    flags.DEFINE_integer("part_mib", 55, "Largest part of a pack, MiB.")
    flags.DEFINE_string("train", None, "Train on the pack in this folder; weights to --weights_out.")
    flags.DEFINE_string("weights_out", os.path.join(bench_util.REPO_ROOT, "runs", NAME), "Where --train writes.")
    flags.DEFINE_string("score", None, "Score the networks of this --weights_out folder (needs TensorFlow).")
    flags.DEFINE_string("results", os.path.join(bench_util.RESULTS_DIR,
                                                "nir_benefit_gf_skip_4k.json"),
                        "nir_benefit.py results JSON whose split and conditions to use.")
    flags.DEFINE_list("conditions", ["low_light"], "Conditions (packed, or to train: default all packed).")
    flags.DEFINE_list("sizes", ["32x8", "64x16", "128x16"], "Network sizes, CxB (width x residual blocks).")
    flags.DEFINE_float("budget_s", 300.0, "Seconds of training, compilation included.")
    flags.DEFINE_integer("steps_per_epoch", 500, "Steps between learning-rate changes.")
    flags.DEFINE_integer("epochs", None, "Train this many epochs instead of filling --budget_s.")
    flags.DEFINE_integer("batch_size", 16, "Patches per step.")
    flags.DEFINE_integer("patch", 96, "HR patch side.")
    flags.DEFINE_float("learning_rate", 3e-4, "Adam's peak learning rate.")
    flags.DEFINE_integer("seed", 0, "Seed of the weights and the batches.")
    flags.DEFINE_integer("scale", 4, "SR factor (packing).")
    flags.DEFINE_string("data_dir", os.path.join(bench_util.REPO_ROOT, "runs", "nir_benefit", "tfds"),
                        "TFDS folder of the nir_benefit run.")
    flags.DEFINE_string("manual_dir", bench_util.SAMPLES_DIR, "The shared sample pairs.")
    flags.DEFINE_string("out", default_out(NAME), "JSON results.")
    app.run(main)
