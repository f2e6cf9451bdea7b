#!/usr/bin/env python3
"""A real labelled image set in the Kaggle layout: scikit-learn's copy of the UCI handwritten digits.

  tools/make_digits_set.py OUT [--test-fraction F] [--side S] [--seed N]
writes OUT/train/<id>.tif, OUT/train_labels.csv (id,label), OUT/test/<id>.tif and OUT/test_labels.csv.

The 1797 digits (8x8, 16 grey levels, written by 43 people; ten classes, balanced) ship inside scikit-learn, so
no download is needed. Each is scaled up bilinearly to S x S (default 49, the seed's crop, so nothing is cut off),
white on black as in the source, as 8-bit RGB TIFFs. The split is seeded and stratified by class.
This is what tools/compare_finetune.sh runs on for "a real labelled image set" when no PCam data is at hand:
  tools/make_digits_set.py /tmp/digits && tools/compare_finetune.sh /tmp/digits
Needs numpy, tifffile and scikit-learn (not needed by users).
"""
import argparse, csv, os
import numpy as np


def upscale(image, side):
    """Bilinear resize of a small grey image to side x side (pixel centres aligned, as PIL does)."""
    h, w = image.shape
    ys = np.clip((np.arange(side) + 0.5) * h / side - 0.5, 0, h - 1)
    xs = np.clip((np.arange(side) + 0.5) * w / side - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--side", type=int, default=49)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    import tifffile
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(args.seed)
    test = np.zeros(len(digits.target), bool)
    for label in np.unique(digits.target):
        members = np.flatnonzero(digits.target == label)
        test[rng.choice(members, int(round(len(members) * args.test_fraction)), replace=False)] = True

    rows = {"train": [], "test": []}
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        split = "test" if test[index] else "train"
        folder = os.path.join(args.out, split)
        os.makedirs(folder, exist_ok=True)
        grey = np.clip(np.round(upscale(image / 16.0, args.side) * 255), 0, 255).astype(np.uint8)
        ident = f"digit{index:04d}"
        tifffile.imwrite(os.path.join(folder, ident + ".tif"), np.repeat(grey[:, :, None], 3, axis=2), photometric="rgb")
        rows[split].append((ident, int(label)))
    for split, entries in rows.items():
        with open(os.path.join(args.out, f"{split}_labels.csv"), "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["id", "label"])
            writer.writerows(entries)
        print(f"{split}: {len(entries)} images in {os.path.join(args.out, split)}")


if __name__ == "__main__":
    main()
