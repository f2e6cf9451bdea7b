#!/usr/bin/env python3
"""A synthetic, labelled PCam-like data set in the Kaggle layout, for trying the whole flow without real data.

  tools/make_labelled_set.py OUT [--train N] [--test M] [--seed S]
writes OUT/train/<id>.tif, OUT/train_labels.csv (id,label), OUT/test/<id>.tif and OUT/test_labels.csv.
96x96 RGB 8-bit uncompressed TIFFs (like PCam's): pink stroma-like noise with dark purple "nuclei"; as in PCam,
the label depends on the centre 32x32 region only: label 1 patches tend to have more large, dark nuclei there
(the classes overlap, so accuracy stays well below 100 %). About 60/40 negative/positive, like the Kaggle set. Needs numpy and tifffile (not needed by users).
"""
import argparse, csv, hashlib, os
import numpy as np

def patch(rng, positive):
    h = w = 96
    base = np.array([226, 170, 200], np.float32) + rng.normal(0, 8, 3)
    img = base + rng.normal(0, 10, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    def nucleus(cy, cx, r, darkness):
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r * rng.uniform(0.7, 1.3)
        img[mask] = img[mask] * (1 - darkness) + np.array([90, 40, 120]) * darkness
    for _ in range(rng.integers(8, 20)):            # scattered normal nuclei everywhere
        nucleus(rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.5, 3), rng.uniform(0.5, 0.8))
    # The centre region: a few large, dark nuclei in positives; sometimes one or two in negatives too, and
    # positives with few of them, so the classes overlap as real ones do.
    extra = rng.integers(1, 6) if positive else rng.integers(0, 3)
    for _ in range(extra):
        nucleus(rng.uniform(34, 62), rng.uniform(34, 62), rng.uniform(2.5, 4.5), rng.uniform(0.5, 0.9))
    return np.clip(img, 0, 255).astype(np.uint8)

def write(folder, count, rng, prefix):
    import tifffile
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(count):
        label = int(rng.random() < 0.4)
        ident = hashlib.sha1(f"{prefix}-{i}".encode()).hexdigest()
        tifffile.imwrite(os.path.join(folder, ident + ".tif"), patch(rng, label), photometric="rgb")
        rows.append((ident, label))
    return rows

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    for split, count in (("train", a.train), ("test", a.test)):
        rows = write(os.path.join(a.out, split), count, rng, split)
        with open(os.path.join(a.out, f"{split}_labels.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "label"])
            w.writerows(rows)
        print(f"{split}: {count} images, {sum(r[1] for r in rows)} positive")

if __name__ == "__main__":
    main()
