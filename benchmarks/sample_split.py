"""The fixed split of the shared samples (`../shared/data/nirvis_samples`) by id.

Shared by benchmarks/nir_benefit.py and benchmarks/cvm_matching.py. `nirvis_folder` has one
`train` split, stored in TFDS's index order, so the rule is applied to the ids and the resulting
positions are written as TFDS split strings (`train[3:4]+train[9:12]+...`); `define_splits`
reads the ids of those strings back and checks that they are exactly the rule's sets.
"""

import posixpath

from absl import app

MAX_SPLIT_CHARS = 180
SPLIT_RULE = (
    "EPFL pairs (ids starting with `epfl_nirscene1/`): within each category folder (the id's "
    "parent folder name, e.g. `country`, `urban`), sort the ids; the pairs at sorted positions "
    "3, 7, 11, ... (position % 4 == 3) are test, the rest train. The Zhi et al. Pittsburgh "
    "stereo frames (ids starting with `pittsburgh_stereo/`) are all train (crops of possibly "
    "the same frames are never split). The SANet indoor stereo pair "
    "(`sanet_own_rgbnir_stereo/...`) and the low-light pair (`lowlight_rgbnir/...`) are test. "
    "Any id matching none of these (future rows of pairs.csv) is train."
)


def read_ids(builder, split, by_index=False):
    """The ids of a split: in the order train.py / evaluate.py read them (TFDS's default
    interleaving of the shard files), or with `by_index` in TFDS index order (`train[i]`)."""
    import tensorflow_datasets as tfds

    decoders = {"vis": tfds.decode.SkipDecoding(), "nir": tfds.decode.SkipDecoding()}
    read_config = tfds.ReadConfig(interleave_cycle_length=1) if by_index else None
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=read_config)
    return [example["id"].numpy().decode() for example in ds]


def rule_test_ids(ids):
    """The test ids of SPLIT_RULE among `ids` (everything else is train)."""
    groups = {}
    test = set()
    for frame_id in ids:
        if frame_id.startswith("epfl_nirscene1/"):
            category = posixpath.basename(posixpath.dirname(frame_id))
            groups.setdefault(category, []).append(frame_id)
        elif frame_id.startswith(("sanet_own_rgbnir_stereo/", "lowlight_rgbnir/")):
            test.add(frame_id)
    for members in groups.values():
        test.update(m for position, m in enumerate(sorted(members)) if position % 4 == 3)
    return test


def slices(indices, base="train"):
    """Sorted positions -> ['train[a:b]', ...], one slice per run of consecutive positions."""
    parts, start, previous = [], None, None
    for index in sorted(indices):
        if start is None:
            start = previous = index
        elif index == previous + 1:
            previous = index
        else:
            parts.append(f"{base}[{start}:{previous + 1}]")
            start = previous = index
    if start is not None:
        parts.append(f"{base}[{start}:{previous + 1}]")
    return parts


def split_string(indices):
    return "+".join(slices(indices))


def chunked_split_strings(indices, max_chars=MAX_SPLIT_CHARS):
    """Split strings of at most ~max_chars each whose concatenation covers `indices` in order."""
    chunks, current = [], []
    for part in slices(indices):
        if current and len("+".join([*current, part])) > max_chars:
            chunks.append("+".join(current))
            current = []
        current.append(part)
    if current:
        chunks.append("+".join(current))
    return chunks


def thumbnails(builder, split):
    import cv2
    import numpy as np

    ds = builder.as_dataset(split=split, shuffle_files=False)
    out = {}
    for example in ds:
        vis = example["vis"].numpy().astype(np.float32)
        grey = vis @ np.array([0.299, 0.587, 0.114], np.float32)
        thumb = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA).ravel()
        thumb -= thumb.mean()
        out[example["id"].numpy().decode()] = thumb / (np.linalg.norm(thumb) + 1e-8)
    return out


def folder_ids(folder):
    """The ids of the rows of `<folder>/pairs.csv` (as the nirvis_folder builder names them)."""
    from etils import epath

    from datasets.nirvis_folder import nirvis_folder_dataset_builder as builder_module

    return [row[0] for row in builder_module.read_rows(epath.Path(folder) / "pairs.csv")]


def define_splits(data_dir, manual_dir, max_frames=None, rule_dir=None):
    """The train / test split strings, their ids, and the checks; prepares the data.

    `rule_dir`: apply the rule to the ids of that folder's pairs.csv instead of `manual_dir`'s,
    so that a cleaned copy of the samples (rows left out) keeps exactly the test frames it
    still has, instead of renumbering the positions of the rule.
    """
    from cspsr_tf.data import sources

    builder = sources.get_builder("nirvis_folder", data_dir, manual_dir)
    # Positions must be TFDS indices: a plain read of a split of several shard files
    # interleaves them, so its order is not `train[i]`'s.
    ids = read_ids(builder, "train", by_index=True)
    expected_test = rule_test_ids(folder_ids(rule_dir) if rule_dir else ids) & set(ids)
    test_pos = [i for i, frame_id in enumerate(ids) if frame_id in expected_test]
    train_pos = [i for i in range(len(ids)) if ids[i] not in expected_test]
    if not test_pos or not train_pos:
        raise app.UsageError(f"the split rule leaves an empty side on {manual_dir}")
    test_split, train_split = split_string(test_pos), split_string(train_pos)
    read_test, read_train = read_ids(builder, test_split), read_ids(builder, train_split)
    eval_pos = test_pos[:max_frames] if max_frames else test_pos
    eval_splits = chunked_split_strings(eval_pos)
    read_eval = [i for s in eval_splits for i in read_ids(builder, s)]
    checks = {
        "test_ids_match_rule": set(read_test) == expected_test,
        "train_ids_match_rule": set(read_train) == set(ids) - expected_test,
        "disjoint": not set(read_test) & set(read_train),
        "cover_all_pairs": len(read_test) + len(read_train) == len(ids) == len(set(ids)),
        "eval_splits_give_the_test_frames": sorted(read_eval) == sorted(ids[i] for i in eval_pos),
        "num_pairs": len(ids),
    }
    if not all(v for k, v in checks.items() if k != "num_pairs"):
        raise RuntimeError(f"split strings do not give the rule's frames: {checks}")
    thumbs = thumbnails(builder, "train")
    nearest = {}
    for frame_id in read_test:
        best = max((float(thumbs[frame_id] @ thumbs[t]), t) for t in read_train)
        nearest[frame_id] = {"max_correlation": round(best[0], 4), "train_frame": best[1]}
    checks["nearest_train_frame_by_thumbnail"] = nearest
    return {
        "rule": SPLIT_RULE, "train_split": train_split, "test_split": test_split,
        "eval_splits": eval_splits, "eval_ids": read_eval, "test_positions": test_pos,
        "train_ids": sorted(read_train), "test_ids": sorted(read_test), "checks": checks,
    }


# ---------------------------------------------------------------------------------------
# Models
