"""Writes a synthetic whole-slide image: a pyramidal (Big)TIFF of H&E-coloured "tissue" blobs on glass.

Level 0 is the first IFD, the smaller levels are its SubIFDs (each half the size of the one before), as
tifffile and OME-TIFF store pyramids. Tiles are generated one at a time, so slides of any size can be written
with little memory. Pixels are deterministic for a seed: a smooth low-resolution field decides where tissue is
(about 40 % of the slide), tissue is pink stroma with purple nuclei and noise, glass is near-white with noise.

  python3 tools/make_slide.py /tmp/slide.tif --size 12288                 # ~450 MB decoded, Deflate, BigTIFF
  python3 tools/make_slide.py fixtures/slide/small.tif --size 640x448 --tile 128 --levels 3 \
      --tiles-dir fixtures/slide/tiles --tiles 96,0 192,96 288,192          # the tests' small slide
  python3 tools/make_slide.py /tmp/stripped.tif --size 1024 --stripped --compression none

--tiles-dir also writes the listed level-0 tiles (x,y of their corners, --tile-side pixels) as separate
uncompressed TIFFs named x_y.tif, so batch-infer can be run on exactly the pixels infer-slide reads.
(tifffile writes Deflate without extra packages; LZW and JPEG slides are written by the Swift tests through libtiff.)
"""
import argparse
import os

import numpy as np
import tifffile

NOISE = 6.0


def field(seed, cells_y, cells_x):
    """A smooth random field on a coarse grid (values roughly in [-1, 1])."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((cells_y + 3, cells_x + 3))
    # Box-blur twice: blobs a few cells wide.
    for _ in range(2):
        f = (f + np.roll(f, 1, 0) + np.roll(f, -1, 0) + np.roll(f, 1, 1) + np.roll(f, -1, 1)) / 5
    return f / (f.std() + 1e-9)


def sample(f, ys, xs):
    """Bilinear sample of the coarse field at fractional coordinates (arrays of the same shape)."""
    y0 = np.floor(ys).astype(int); x0 = np.floor(xs).astype(int)
    fy = ys - y0; fx = xs - x0
    a = f[y0, x0]; b = f[y0, x0 + 1]; c = f[y0 + 1, x0]; d = f[y0 + 1, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def render(f, nuclei, x0, y0, w, h, width, height, seed):
    """Pixels [h, w, 3] of the region at (x0, y0) of a level width x height (coordinates relative to the level)."""
    gy, gx = f.shape[0] - 3, f.shape[1] - 3
    ys, xs = np.meshgrid(np.arange(y0, y0 + h) + 0.5, np.arange(x0, x0 + w) + 0.5, indexing="ij")
    v = sample(f, ys / height * gy, xs / width * gx)
    n = sample(nuclei, ys / height * (nuclei.shape[0] - 3), xs / width * (nuclei.shape[1] - 3))
    rng = np.random.default_rng([seed, x0, y0, width])
    noise = rng.normal(0, NOISE, (h, w, 3))
    glass = np.array([238, 236, 240], float)
    stroma = np.array([228, 140, 186], float)
    nucleus = np.array([96, 52, 140], float)
    tissue = np.clip((v - 0.25) * 6, 0, 1)[..., None]
    dots = np.clip((n - 1.2) * 3, 0, 1)[..., None]
    colour = stroma * (1 - dots) + nucleus * dots
    pixels = glass * (1 - tissue) + colour * tissue + noise
    return np.clip(pixels, 0, 255).astype(np.uint8)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--size", default="12288", help="WIDTHxHEIGHT or SIDE of level 0")
    p.add_argument("--tile", type=int, default=256, help="TIFF tile side (rows per strip with --stripped)")
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--compression", default="zlib", choices=["zlib", "none"])
    p.add_argument("--stripped", action="store_true")
    p.add_argument("--classic", action="store_true", help="classic TIFF instead of BigTIFF")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--tiles-dir")
    p.add_argument("--tiles", nargs="*", default=[])
    p.add_argument("--tile-side", type=int, default=96)
    p.add_argument("--noise", type=float, default=6.0, help="standard deviation of the pixel noise")
    a = p.parse_args()
    global NOISE
    NOISE = a.noise
    width, height = (int(s) for s in a.size.split("x")) if "x" in a.size else (int(a.size), int(a.size))
    f = field(a.seed, max(4, height // 512), max(4, width // 512))
    nuclei = field(a.seed + 1, max(4, height // 12), max(4, width // 12))
    compression = None if a.compression == "none" else "zlib"

    sizes = [(width, height)]
    while len(sizes) < a.levels and min(sizes[-1]) // 2 >= 16:
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))

    def tiles(w, h):
        t = a.tile
        for ty in range(0, h, t):
            for tx in range(0, w, t):
                block = np.zeros((t, t, 3), np.uint8)
                rw, rh = min(t, w - tx), min(t, h - ty)
                block[:rh, :rw] = render(f, nuclei, tx, ty, rw, rh, w, h, a.seed)
                yield block

    def strips(w, h):
        for y in range(0, h, a.tile):
            yield render(f, nuclei, 0, y, w, min(a.tile, h - y), w, h, a.seed)

    with tifffile.TiffWriter(a.out, bigtiff=not a.classic) as tif:
        for index, (w, h) in enumerate(sizes):
            options = dict(shape=(h, w, 3), dtype=np.uint8, photometric="rgb", compression=compression)
            if a.stripped:
                data = np.concatenate(list(strips(w, h)))  # tifffile wants the level whole for strips
                options.pop("shape"); options.pop("dtype")
                options["rowsperstrip"] = a.tile
            else:
                data = tiles(w, h)
                options["tile"] = (a.tile, a.tile)
            if index == 0:
                options["subifds"] = len(sizes) - 1
            else:
                options["subfiletype"] = 1
            tif.write(data, **options)
    decoded = sum(w * h * 3 for w, h in sizes)
    print(f"{a.out}: levels {', '.join(f'{w}x{h}' for w, h in sizes)}; {decoded / 1e6:.0f} MB decoded, "
          f"{os.path.getsize(a.out) / 1e6:.1f} MB on disk")

    if a.tiles_dir:
        os.makedirs(a.tiles_dir, exist_ok=True)
        s = a.tile_side
        # Cut from the written slide, so each file holds exactly the slide's pixels.
        level0 = tifffile.imread(a.out, key=0)
        for spec in a.tiles:
            x, y = (int(v) for v in spec.split(","))
            pixels = level0[y:y + s, x:x + s]
            tifffile.imwrite(os.path.join(a.tiles_dir, f"{x}_{y}.tif"), np.ascontiguousarray(pixels), photometric="rgb")


if __name__ == "__main__":
    main()
