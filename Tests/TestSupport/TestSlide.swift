import CTIFF
import Foundation

/// Writes test slides through libtiff: every level as tiles or strips, with the given compression, the smaller
/// levels as SubIFDs of the first (or as further main IFDs).
public enum TestSlide {
    /// 8-bit RGB pattern of level `level` at (x, y): distinct per pixel and channel, smooth enough for JPEG.
    public static func pattern(_ x: Int, _ y: Int, _ c: Int, level: Int = 0) -> UInt8 {
        UInt8((x + 2 * y + 60 * c + 40 * level) % 256 / 2 + 40)
    }

    public struct Level {
        public var width: Int, height: Int
        public var pixels: [UInt8]
        public init(width: Int, height: Int, level: Int = 0) {
            self.width = width
            self.height = height
            pixels = [UInt8](repeating: 0, count: width * height * 3)
            for y in 0..<height { for x in 0..<width { for c in 0..<3 { pixels[(y * width + x) * 3 + c] = TestSlide.pattern(x, y, c, level: level) } } }
        }
        public init(width: Int, height: Int, pixels: [UInt8]) {
            self.width = width
            self.height = height
            self.pixels = pixels
        }
    }

    /// A slide level with glass (near white, with noise) left of `tissueFrom` and H&E-pink textured tissue right of it.
    public static func glassAndTissue(width: Int, height: Int, tissueFrom: Int) -> Level {
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        var state: UInt64 = 0x9E3779B97F4A7C15
        for y in 0..<height {
            for x in 0..<width {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let noise = Int((state >> 60) & 7) - 3
                let nucleus = (x / 7 + y / 5) % 9 == 0
                let base: [Int] = x < tissueFrom ? [238, 236, 240] : nucleus ? [96, 52, 140] : [228, 140 + (x * y) % 40, 186]
                for c in 0..<3 { pixels[(y * width + x) * 3 + c] = UInt8(max(0, min(255, base[c] + noise))) }
            }
        }
        return Level(width: width, height: height, pixels: pixels)
    }

    /// The square of `side` pixels at (x, y) of a level.
    public static func cut(_ level: Level, x: Int, y: Int, side: Int) -> Level {
        var pixels: [UInt8] = []
        for row in y..<(y + side) { pixels += level.pixels[((row * level.width + x) * 3)..<((row * level.width + x + side) * 3)] }
        return Level(width: side, height: side, pixels: pixels)
    }

    /// Half the size, each pixel the rounded mean of a 2x2 square.
    public static func halve(_ level: Level) -> Level {
        let w = level.width / 2, h = level.height / 2
        var pixels = [UInt8](repeating: 0, count: w * h * 3)
        for y in 0..<h { for x in 0..<w { for c in 0..<3 {
            var sum = 0
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] { sum += Int(level.pixels[((2 * y + dy) * level.width + 2 * x + dx) * 3 + c]) }
            pixels[(y * w + x) * 3 + c] = UInt8((sum + 2) / 4)
        } } }
        return Level(width: w, height: h, pixels: pixels)
    }

    public static func write(_ path: String, levels: [Level], block: Int, tiled: Bool = true, compression: Int32 = COMPRESSION_ADOBE_DEFLATE,
                      subIFDs: Bool = true, bigTIFF: Bool = true) throws {
        guard let tif = TIFFOpen(path, bigTIFF ? "w8" : "w") else { throw SlideWriteError(path: path) }
        defer { TIFFClose(tif) }
        for (index, level) in levels.enumerated() {
            func set16(_ tag: Int32, _ value: Int32) { _ = resnetkit_tiff_set_u16(tif, UInt32(tag), UInt16(value)) }
            func set32(_ tag: Int32, _ value: Int) { _ = resnetkit_tiff_set_u32(tif, UInt32(tag), UInt32(value)) }
            set32(TIFFTAG_IMAGEWIDTH, level.width)
            set32(TIFFTAG_IMAGELENGTH, level.height)
            set16(TIFFTAG_BITSPERSAMPLE, 8)
            set16(TIFFTAG_SAMPLESPERPIXEL, 3)
            set16(TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG)
            set16(TIFFTAG_COMPRESSION, compression)
            if compression == COMPRESSION_JPEG {
                set16(TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_YCBCR)
                _ = resnetkit_tiff_set_int(tif, UInt32(TIFFTAG_JPEGCOLORMODE), JPEGCOLORMODE_RGB)
                _ = resnetkit_tiff_set_int(tif, UInt32(TIFFTAG_JPEGQUALITY), 95)
            } else {
                set16(TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_RGB)
            }
            if index > 0 { set32(TIFFTAG_SUBFILETYPE, Int(FILETYPE_REDUCEDIMAGE)) }
            if index == 0 && subIFDs && levels.count > 1 { _ = resnetkit_tiff_set_subifds(tif, UInt16(levels.count - 1)) }
            if tiled {
                set32(TIFFTAG_TILEWIDTH, block)
                set32(TIFFTAG_TILELENGTH, block)
                var buffer = [UInt8](repeating: 0, count: block * block * 3)
                for ty in stride(from: 0, to: level.height, by: block) {
                    for tx in stride(from: 0, to: level.width, by: block) {
                        for i in buffer.indices { buffer[i] = 0 }
                        for y in ty..<min(level.height, ty + block) {
                            for x in tx..<min(level.width, tx + block) {
                                for c in 0..<3 { buffer[((y - ty) * block + (x - tx)) * 3 + c] = level.pixels[(y * level.width + x) * 3 + c] }
                            }
                        }
                        let tile = TIFFComputeTile(tif, UInt32(tx), UInt32(ty), 0, 0)
                        guard TIFFWriteEncodedTile(tif, tile, &buffer, tmsize_t(buffer.count)) >= 0 else { throw SlideWriteError(path: path) }
                    }
                }
            } else {
                set32(TIFFTAG_ROWSPERSTRIP, block)
                for (strip, y) in stride(from: 0, to: level.height, by: block).enumerated() {
                    let rows = min(block, level.height - y)
                    var data = Array(level.pixels[(y * level.width * 3)..<((y + rows) * level.width * 3)])
                    guard TIFFWriteEncodedStrip(tif, UInt32(strip), &data, tmsize_t(data.count)) >= 0 else { throw SlideWriteError(path: path) }
                }
            }
            guard TIFFWriteDirectory(tif) == 1 else { throw SlideWriteError(path: path) }
        }
    }
}

public struct SlideWriteError: Error { public var path: String }
