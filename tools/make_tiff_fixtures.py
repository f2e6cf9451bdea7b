"""Writes fixtures/tiff/: one small image per TIFF layout the decoder must read, plus malformed files.

Pixels follow formulas the Swift tests recompute independently (x = column, y = row, c = channel):
  8-bit:  (x*37 + y*11 + c*71) % 256          16-bit: (x*3001 + y*517 + c*12345) % 65536
  JPEG files (lossy) hold the smooth ramp x*4 + y*4 + c*30 instead.
Uncompressed files come from tifffile; LZW, PackBits, Deflate and JPEG recompressions from libtiff's
`tiffcp` (Debian package libtiff-tools). Run: /opt/pyref/bin/python tools/make_tiff_fixtures.py
"""
import os
import struct
import subprocess

import numpy as np
import tifffile

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tiff")
W, H = 20, 12  # not square, so a transposed read shows


def pattern8(w=W, h=H, channels=3):
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(channels), indexing="ij")
    return ((x * 37 + y * 11 + c * 71) % 256).astype(np.uint8)


def pattern16(w=W, h=H, channels=3):
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(channels), indexing="ij")
    return ((x * 3001 + y * 517 + c * 12345) % 65536).astype(np.uint16)


def smooth8(w=32, h=16):
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return (x * 4 + y * 4 + c * 30).astype(np.uint8)


def path(name):
    return os.path.join(OUT, name)


def tiffcp(source, name, compression):
    subprocess.run(["tiffcp", "-c", compression, "-r", "5", source, path(name)], check=True)


def main():
    os.makedirs(OUT, exist_ok=True)
    rgb8, rgb16 = pattern8(), pattern16()
    # Strips (5 rows each: the last strip is short), uncompressed, contiguous.
    tifffile.imwrite(path("rgb8_strips.tif"), rgb8, photometric="rgb", rowsperstrip=5)
    for compression, name in [("lzw", "rgb8_lzw.tif"), ("packbits", "rgb8_packbits.tif"), ("zip", "rgb8_deflate.tif")]:
        tiffcp(path("rgb8_strips.tif"), name, compression)
    # Tiles of 16x16 over a 20x12 image: partial tiles at the right and bottom.
    tifffile.imwrite(path("rgb8_tiled.tif"), rgb8, photometric="rgb", tile=(16, 16))
    tifffile.imwrite(path("rgb8_planar.tif"), np.moveaxis(rgb8, 2, 0), photometric="rgb", planarconfig="separate",
                     rowsperstrip=5)
    tifffile.imwrite(path("rgb8_planar_tiled.tif"), np.moveaxis(rgb8, 2, 0), photometric="rgb",
                     planarconfig="separate", tile=(16, 16))
    tifffile.imwrite(path("rgba8.tif"), np.concatenate([rgb8, np.full((H, W, 1), 128, np.uint8)], axis=2),
                     photometric="rgb", extrasamples=["unassalpha"])
    # 16-bit: values that are not multiples of 257 would show a truncation to 8 bits.
    tifffile.imwrite(path("rgb16_strips.tif"), rgb16, photometric="rgb", rowsperstrip=5)
    tifffile.imwrite(path("rgb16_bigendian.tif"), rgb16, photometric="rgb", byteorder=">")
    tiffcp(path("rgb16_strips.tif"), "rgb16_deflate.tif", "zip")
    tifffile.imwrite(path("rgb16_tiled_planar.tif"), np.moveaxis(rgb16, 2, 0), photometric="rgb",
                     planarconfig="separate", tile=(16, 16))
    tifffile.imwrite(path("gray8.tif"), pattern8(channels=1)[:, :, 0], photometric="minisblack")
    tifffile.imwrite(path("gray16.tif"), pattern16(channels=1)[:, :, 0], photometric="minisblack")
    tifffile.imwrite(path("gray8_miniswhite.tif"), pattern8(channels=1)[:, :, 0], photometric="miniswhite")
    # Palette: index i maps to the colour pattern8 gives pixel (i % W, i // W); 16-bit colormap entries are
    # multiples of 257 so that libtiff's 8-bit rendering is exact.
    indices = (np.arange(H * W) % 256).reshape(H, W).astype(np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    for i in range(256):
        colormap[:, i] = [(i * 7 + c * 50) % 256 * 257 for c in range(3)]
    tifffile.imwrite(path("palette8.tif"), indices, photometric="palette", colormap=colormap)
    # JPEG (lossy): YCbCr (rendered by libtiff's RGBA interface) and RGB (read sample by sample).
    tifffile.imwrite(path("smooth_source.tif"), smooth8(), photometric="rgb")
    subprocess.run(["tiffcp", "-c", "jpeg:95", "-r", "16", path("smooth_source.tif"), path("rgb8_jpeg_ycbcr.tif")], check=True)
    subprocess.run(["tiffcp", "-c", "jpeg:r:95", "-r", "16", path("smooth_source.tif"), path("rgb8_jpeg_rgb.tif")], check=True)
    os.remove(path("smooth_source.tif"))

    # Malformed files.
    open(path("bad_empty.tif"), "wb").close()
    with open(path("bad_not_a_tiff.tif"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    whole = open(path("rgb8_strips.tif"), "rb").read()
    with open(path("bad_truncated.tif"), "wb") as f:
        f.write(whole[: len(whole) - 300])  # tifffile puts the IFD first: the header survives, pixels do not
    lzw = open(path("rgb8_lzw.tif"), "rb").read()
    with open(path("bad_truncated_lzw.tif"), "wb") as f:
        f.write(lzw[: len(lzw) // 2])
    with open(path("bad_garbage.tif"), "wb") as f:
        f.write(b"II*\x00" + np.random.default_rng(7).integers(0, 256, 200, dtype=np.uint8).tobytes())
    with open(path("bad_huge_dimensions.tif"), "wb") as f:
        f.write(huge_dimensions_tiff())


def huge_dimensions_tiff():
    """A well-formed little-endian TIFF whose IFD claims 2^31 columns of 8-bit RGB and a 24-byte strip."""
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 4, 1, 2 ** 31), (257, 4, 1, 1), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, 8 + 2 + 12 * 10 + 4), (277, 3, 1, 3), (278, 4, 1, 1), (279, 4, 1, 24), (284, 3, 1, 1),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(24)


if __name__ == "__main__":
    main()
