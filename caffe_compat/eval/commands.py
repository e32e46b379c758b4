"""Command-line front ends of this package (argument parsing -> one library call).

``COMMANDS`` maps a ``caffe-compat`` subcommand to ``(help, add_arguments(parser), run(args) -> int)``.
"""

from __future__ import annotations

import argparse

from caffe_compat.errors import CaffeCompatError

# The mirror trick each protocol's reference code uses when the net does not do it itself.
PROTOCOL_MIRROR = {"sphereface": "concat", "insightface": "sum"}


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers, got '{text}'"
        ) from None


def _add_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the deploy net prototxt")
    parser.add_argument("--weights", required=True, help="the trained .caffemodel")
    parser.add_argument("--pairs", required=True, help="LFW-format pairs file (header '10 300')")
    parser.add_argument("--root", required=True, help="folder the image pattern is relative to")
    parser.add_argument("--blob", default="fc5", help="feature blob (default: fc5)")
    parser.add_argument(
        "--image-pattern",
        default="{name}/{name}_{idx:04d}.jpg",
        help="image path under --root, with {name} and {idx} (default: LFW's '{name}/{name}_{idx:04d}.jpg')",
    )
    parser.add_argument(
        "--protocol",
        choices=("sphereface", "insightface"),
        default="sphereface",
        help="evaluation protocol: SphereFace's evaluation.m or InsightFace's verification.py "
        "(default: sphereface)",
    )
    parser.add_argument(
        "--mirror",
        choices=("sum", "concat", "none"),
        default=None,
        help="combine each image's features with its mirror's (default: the protocol's: sphereface concat, "
        "insightface sum); a net with its own Flip layer is run once",
    )
    parser.add_argument(
        "--mean", type=_floats, default=[128.0], help="pixel mean, one value or B,G,R (default: 128)"
    )
    parser.add_argument(
        "--scale", type=float, default=0.0078125, help="pixel scale after the mean (default: 1/128)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--gpu", type=int, default=None, help="CUDA device id (default: CPU)")
    parser.add_argument("--roc", default=None, metavar="PNG", help="also write the ROC curve to this PNG")


def _run_verify(args: argparse.Namespace) -> int:
    import torch

    from caffe_compat import Net
    from caffe_compat.eval.features import extract_features
    from caffe_compat.eval.pairs import pair_images, pair_labels, read_pairs
    from caffe_compat.eval.verification import evaluate_pairs, format_metrics

    pairs = read_pairs(args.pairs)
    paths, index_a, index_b = pair_images(pairs, args.root, args.image_pattern)
    missing = next((path for path in paths if not path.is_file()), None)
    if missing is not None:
        raise CaffeCompatError(f"image not found: {missing}")
    net = Net(args.model, weights=args.weights, phase="TEST")
    if args.gpu is not None:
        if not torch.cuda.is_available():
            raise CaffeCompatError(f"--gpu {args.gpu}: CUDA is not available")
        net.to(f"cuda:{args.gpu}")
    mirror = args.mirror or PROTOCOL_MIRROR[args.protocol]
    features = extract_features(
        net,
        paths,
        blob=args.blob,
        mirror=None if mirror == "none" else mirror,
        batch_size=args.batch_size,
        mean=args.mean if len(args.mean) > 1 else args.mean[0],
        scale=args.scale,
    )
    issame, fold = pair_labels(pairs)
    result = evaluate_pairs(features[index_a], features[index_b], issame, fold, protocol=args.protocol)
    if args.roc:
        from caffe_compat.eval.plot import plot_roc

        plot_roc(result, args.roc)
    print(f"features: {features.shape[0]} images x {features.shape[1]} ({args.blob}, mirror: {mirror})")
    print(format_metrics(result))
    return 0


COMMANDS: dict = {
    "verify": (
        "face verification accuracy of a deploy net on an LFW-format pairs file (10-fold)",
        _add_verify,
        _run_verify,
    ),
}
