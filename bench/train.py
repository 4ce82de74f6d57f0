"""Training benchmark: wall time and held-out accuracy per model profile.

Runs the exporter's own stages (``pipeline.trainer.run`` with the profile's
recipe, then ``pipeline.evaluator.run`` on the 10,000 held-out images), so
the numbers are what ``fmnist train`` gets, without the push and the plots.

Usage::

    python bench/train.py                          # mlp and cnn with their own recipes (cnn: 11-15 min on 2 cores)
    python bench/train.py --profiles mlp --epochs 3
    python bench/train.py --quick                  # 1 epoch on 5,000 images each
"""

from __future__ import annotations

import argparse
import time

import _common  # first: fixes sys.path

from fmnist.pipeline import data, evaluator, model, trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Usage::")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profiles", default="mlp,cnn", help=f"comma-separated, of {', '.join(model.PROFILES)}")
    parser.add_argument("--epochs", type=int, help="override every profile's epochs")
    parser.add_argument("--limit", type=int, help="train on the first N training images only")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 5,000 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.limit = 1, 5_000
    _common.warn_if_busy()

    dataset = data.load()
    rows = []
    for profile in args.profiles.split(","):
        config = trainer.TrainConfig(profile=profile, epochs=args.epochs, limit=args.limit, verbose=0).resolve()
        started = time.perf_counter()
        result = trainer.run(config, dataset.train)
        trained = time.perf_counter() - started
        evaluation = evaluator.run(result.model, dataset.test, evaluator.EvalConfig())
        evaluated = time.perf_counter() - started - trained
        images = (config.limit or len(dataset.train)) * config.epochs
        rows.append(
            {
                "profile": profile,
                "epochs": config.epochs,
                "train_images": config.limit or len(dataset.train),
                "train_s": trained,
                "images_per_s": images / trained,
                "eval_s": evaluated,
                "accuracy": evaluation.metrics["accuracy"],
                "blessed": evaluation.blessed,
            }
        )
        print(f"  {profile}: {trained:.1f}s, accuracy {evaluation.metrics['accuracy']:.4f}", flush=True)

    print("\nTraining (wall time) and held-out accuracy (10,000 test images)\n")
    print(
        _common.table(
            rows, ["profile", "epochs", "train_images", "train_s", "images_per_s", "eval_s", "accuracy", "blessed"]
        )
    )
    if len(rows) > 1:
        print(
            "\n"
            + "; ".join(
                f"{r['profile']} ÷ {rows[0]['profile']}: {r['train_s'] / rows[0]['train_s']:.2f}× "
                f"the time, {100 * (r['accuracy'] - rows[0]['accuracy']):+.2f} points"
                for r in rows[1:]
            )
        )
    path = _common.write_results("train", {"args": vars(args), "runs": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
