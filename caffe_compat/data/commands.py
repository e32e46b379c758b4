"""Command-line front ends of this package (argument parsing -> one library call).

``COMMANDS`` maps a ``caffe-compat`` subcommand to ``(help, add_arguments(parser), run(args) -> int)``:

- ``convert-imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME``: Caffe's ``convert_imageset``, with its
  flags ``-resize_height -resize_width -gray -shuffle -encoded -encode_type -backend -check_size``
  (gflags spellings ``-gray``, ``-gray=true``, ``-gray=false``, ``-nogray`` all work) and ``--seed``
  for a reproducible ``-shuffle``.
- ``compute-image-mean [-backend lmdb] INPUT_DB [OUTPUT_FILE]``: Caffe's ``compute_image_mean``.
- ``make-faces OUT [--identities N --per-identity K --seed S ...]``: the synthetic face dataset.
"""

from __future__ import annotations

import argparse


def _bool_flag(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    """A gflags boolean: ``--name``, ``--name=true|1`` set it; ``--name=false|0``, ``--noname`` clear it."""
    parser.add_argument(
        f"--{name}", f"--{name}=true", f"--{name}=1", dest=name, action="store_true", help=help_text
    )
    parser.add_argument(
        f"--{name}=false",
        f"--{name}=0",
        f"--no{name}",
        dest=name,
        action="store_false",
        help=argparse.SUPPRESS,
    )


def _add_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "root_folder", metavar="ROOTFOLDER/", help="prepended to every path of the list, as text"
    )
    parser.add_argument("list_file", metavar="LISTFILE", help="'path label' lines")
    parser.add_argument("db_name", metavar="DB_NAME", help="the database folder to create (must not exist)")
    _bool_flag(parser, "gray", "treat images as grayscale ones")
    _bool_flag(parser, "shuffle", "randomly shuffle the order of images and their labels")
    parser.add_argument(
        "--backend", default="lmdb", help="the backend {lmdb, leveldb} for storing the result"
    )
    parser.add_argument("--resize_width", type=int, default=0, help="width images are resized to")
    parser.add_argument("--resize_height", type=int, default=0, help="height images are resized to")
    _bool_flag(parser, "check_size", "check that all the datum have the same size")
    _bool_flag(parser, "encoded", "store the encoded image in the datum")
    parser.add_argument(
        "--encode_type", default="", help="what type to encode the image as ('png', 'jpg', ...)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of -shuffle (Caffe's is unseeded)")


def _run_convert(args: argparse.Namespace) -> int:
    from caffe_compat.data.tools import convert_imageset

    report = convert_imageset(
        args.root_folder,
        args.list_file,
        args.db_name,
        resize_height=args.resize_height,
        resize_width=args.resize_width,
        gray=args.gray,
        shuffle=args.shuffle,
        backend=args.backend,
        check_size=args.check_size,
        encoded=args.encoded,
        encode_type=args.encode_type,
        seed=args.seed,
    )
    skipped = f", skipped {len(report.skipped)} unreadable image(s)" if report.skipped else ""
    print(f"wrote {report.written} records to {args.db_name}{skipped}")
    return 0


def _add_mean(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input_db", metavar="INPUT_DB", help="an LMDB/LevelDB of Datum records")
    parser.add_argument(
        "output_file", metavar="OUTPUT_FILE", nargs="?", help="the mean .binaryproto to write"
    )
    parser.add_argument("--backend", default="lmdb", help="the backend {leveldb, lmdb} containing the images")


def _run_mean(args: argparse.Namespace) -> int:
    from caffe_compat.data.tools import compute_image_mean

    mean = compute_image_mean(args.input_db, args.output_file, args.backend)
    channels = mean.shape[1]
    per_channel = mean.reshape(channels, -1).astype("float64").mean(axis=1)
    print(f"mean image {list(mean.shape)}" + (f" written to {args.output_file}" if args.output_file else ""))
    for channel, value in enumerate(per_channel):
        print(f"mean_value channel [{channel}]: {value:g}")
    return 0


def _add_faces(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the folder to create (must not exist, or be empty)")
    parser.add_argument("--identities", type=int, default=100, help="training identities (default 100)")
    parser.add_argument("--per-identity", type=int, default=20, help="images per identity (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="the dataset's seed (default 0)")
    parser.add_argument(
        "--pair-identities",
        type=int,
        default=None,
        help="held-out identities for pairs.txt (default max(2*folds, N/2))",
    )
    parser.add_argument("--folds", type=int, default=10, help="folds of pairs.txt (default 10)")
    parser.add_argument(
        "--pairs-per-fold", type=int, default=30, help="matched (and mismatched) pairs per fold"
    )
    parser.add_argument(
        "--format", default="png", choices=("png", "jpg"), help="image file format (default png)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="processes drawing in parallel (default: automatic)"
    )


def _run_faces(args: argparse.Namespace) -> int:
    from caffe_compat.data.synthetic_faces import make_faces

    report = make_faces(
        args.out,
        identities=args.identities,
        per_identity=args.per_identity,
        seed=args.seed,
        pair_identities=args.pair_identities,
        folds=args.folds,
        pairs_per_fold=args.pairs_per_fold,
        image_format=args.format,
        workers=args.workers,
    )
    print(
        f"wrote {report.out}: {report.train_images} training and {report.val_images} validation images "
        f"(train.txt, val.txt; root_folder '{report.out}/'), {report.pairs} pairs over "
        f"{report.pair_identities} held-out identities (pairs.txt)"
    )
    return 0


COMMANDS: dict = {
    "convert-imageset": (
        "convert a set of images to an LMDB/LevelDB of Datum records (Caffe's convert_imageset)",
        _add_convert,
        _run_convert,
    ),
    "compute-image-mean": (
        "compute the mean image of a Datum database (Caffe's compute_image_mean)",
        _add_mean,
        _run_mean,
    ),
    "make-faces": (
        "write a synthetic face-identity dataset (train.txt, val.txt, LFW-style pairs.txt)",
        _add_faces,
        _run_faces,
    ),
}
