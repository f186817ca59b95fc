"""`python -m experiments.input_pipeline`: load a dataset as a config would and print it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from experiments.input_pipeline.dataset import DatasetError, LazySplit, _LazyColumn, _split_len
from experiments.input_pipeline.loader import DATASET_NAMES, SOURCES, load_dataset
from experiments.input_pipeline.sources import DATA_DIR_ENV


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.input_pipeline",
        description="Load a dataset as a config would and print what came out.",
    )
    parser.add_argument("--name", required=True, choices=DATASET_NAMES)
    parser.add_argument("--source", default="auto", choices=SOURCES)
    parser.add_argument("--data_dir", default=None, help=f"default: ${DATA_DIR_ENV}")
    parser.add_argument("--tfds_data_dir", default=None)
    parser.add_argument("--num_train", type=int, default=None)
    parser.add_argument("--num_test", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        ds = load_dataset(vars(args))
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{ds.name}: source={ds.source} num_classes={ds.num_classes}")
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        shapes = ", ".join(
            f"{k} {tuple(np.shape(v)) if not isinstance(v, _LazyColumn) else v.shape} "
            f"{getattr(v, 'dtype', 'lazy')}"
            for k, v in split.items()
        )
        print(f"  {split_name}: {_split_len(split)} examples: {shapes}")
        if isinstance(split, LazySplit):
            print("    class counts: not computed for a lazy split")
        else:
            counts = np.bincount(split["label"], minlength=ds.num_classes)
            print(f"    class counts: {counts.tolist()}")
    info = {k: v for k, v in ds.info.items() if k != "planted"}
    print(f"  info: {info}")


if __name__ == "__main__":
    _main()
