"""``fmnist images``: write dataset images as PNG files, one folder per class.

These labelled folders are what the batch job, the demo and the benchmarks
classify; the folder name carries the label, so accuracy can be computed
from the files alone.

Usage: ``fmnist images --split test --count 500 --out samples/``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from fmnist.common import names, usage
from fmnist.pipeline import data


def run(split: data.Split, count: int, out: str | Path, *, prefix: str = "img", progress: bool = False) -> list[Path]:
    """Write the first ``count`` images of ``split``; returns the paths in order."""
    out = Path(out)
    for class_id in range(names.NUM_CLASSES):
        (out / names.folder_name(class_id)).mkdir(parents=True, exist_ok=True)
    paths = []
    total = min(count, len(split))
    for index in range(total):
        path = out / names.folder_name(int(split.labels[index])) / f"{prefix}_{index:06d}.png"
        Image.fromarray(split.images[index]).save(path, "PNG")
        paths.append(path)
        if progress and (index + 1) % 1000 == 0:
            print(f"  {index + 1}/{total} images written", flush=True)
    return paths


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = usage.CommandParser(
        prog=prog,
        description="Write Fashion-MNIST images as PNG files, one sub-folder per class name.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--split", choices=data.SPLITS, default="test")
    parser.add_argument("--count", type=int, default=1000, help="how many images, from the start of the split")
    parser.add_argument("--out", required=True, help="output directory; one sub-folder per class is created")
    parser.add_argument(
        "--data-dir", help=f"directory of the IDX files (else ${names.ENV_DATA_DIR}, the Keras cache, a download)"
    )
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must be ≥ 0")
    try:
        dataset = data.load(args.data_dir)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    paths = run(dataset.split(args.split), args.count, args.out, prefix=args.split, progress=True)
    print(f"wrote {len(paths)} PNG files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
