import CPNG
import Foundation
import ResNetSupport

/// 8-bit RGB or RGBA PNGs through libpng's simplified API, written atomically.
public enum PNGFile {
    // png.h's format flags (its composite macros do not reach Swift).
    static let alphaFlag: UInt32 = 0x01, colourFlag: UInt32 = 0x02

    /// Writes `pixels` ([height, width, channels], channels 3 or 4) to `path` (temporary file, then rename).
    public static func write(path: String, width: Int, height: Int, channels: Int, pixels: [UInt8]) throws {
        precondition((channels == 3 || channels == 4) && pixels.count == width * height * channels)
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = colourFlag | (channels == 4 ? alphaFlag : 0)
        try AtomicFile.write(to: path) { temp in
            let ok = pixels.withUnsafeBytes { raw in
                png_image_write_to_file(&image, temp, 0, raw.baseAddress, Int32(width * channels), nil)
            }
            let message = withUnsafeBytes(of: image.message) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            png_image_free(&image)
            guard ok != 0 else { throw FileError(path, "cannot write the PNG: \(message.isEmpty ? systemErrorMessage() : message)") }
        }
    }

    /// Reads a PNG as 8-bit RGBA [height, width, 4].
    public static func read(path: String) throws -> (width: Int, height: Int, pixels: [UInt8]) {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        guard png_image_begin_read_from_file(&image, path) != 0 else {
            let message = withUnsafeBytes(of: image.message) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            throw FileError(path, "not a readable PNG: \(message)")
        }
        image.format = colourFlag | alphaFlag
        let width = Int(image.width), height = Int(image.height)
        guard width > 0, height > 0, width.multipliedReportingOverflow(by: height).partialValue <= 1 << 28 else {
            png_image_free(&image)
            throw FileError(path, "absurd PNG dimensions \(width)x\(height)")
        }
        var pixels = [UInt8](repeating: 0, count: width * height * 4)
        let ok = pixels.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, Int32(width * 4), nil) }
        png_image_free(&image)
        guard ok != 0 else { throw FileError(path, "truncated or corrupt PNG") }
        return (width, height, pixels)
    }
}

/// Colour maps for heatmaps and explanations.
public enum ColorMap {
    /// matplotlib's viridis (perceptually uniform, readable in gray and by colour-blind readers) at 11 stops.
    static let viridisStops: [(Float, Float, Float)] = [
        (0.267004, 0.004874, 0.329415), (0.282623, 0.140926, 0.457517), (0.253935, 0.265254, 0.529983),
        (0.206756, 0.371758, 0.553117), (0.163625, 0.471133, 0.558148), (0.127568, 0.566949, 0.550556),
        (0.134692, 0.658636, 0.517649), (0.266941, 0.748751, 0.440573), (0.477504, 0.821444, 0.318195),
        (0.741388, 0.873449, 0.149561), (0.993248, 0.906157, 0.143936),
    ]

    /// Viridis at t in [0, 1] (clamped; NaN is 0), linearly interpolated between the stops, as 8-bit RGB.
    public static func viridis(_ t: Float) -> (UInt8, UInt8, UInt8) {
        let v = t.isNaN ? 0 : min(1, max(0, t)) * Float(viridisStops.count - 1)
        let i = min(viridisStops.count - 2, Int(v)), f = v - Float(i)
        let a = viridisStops[i], b = viridisStops[i + 1]
        func byte(_ x: Float, _ y: Float) -> UInt8 { UInt8(((x + (y - x) * f) * 255).rounded()) }
        return (byte(a.0, b.0), byte(a.1, b.1), byte(a.2, b.2))
    }
}

/// Drawing a slide's per-cell scores.
public enum SlideHeatmap {
    /// One RGBA pixel per grid cell: viridis of the score, transparent where the score is NaN (cell skipped).
    public static func render(scores: [Float], grid: SlideGrid) -> [UInt8] {
        precondition(scores.count == grid.count)
        var pixels = [UInt8](repeating: 0, count: grid.count * 4)
        for (i, score) in scores.enumerated() where !score.isNaN {
            let (r, g, b) = ColorMap.viridis(score)
            pixels[4 * i] = r; pixels[4 * i + 1] = g; pixels[4 * i + 2] = b; pixels[4 * i + 3] = 255
        }
        return pixels
    }

    /// The thumbnail (RGB, covering the whole level) with each pixel's grid cell coloured over it at `opacity`
    /// where that cell has a score; the cell of a pixel is the last tile that starts at or before it.
    public static func overlay(thumbnail: [UInt8], width: Int, height: Int, scores: [Float], grid: SlideGrid,
                               opacity: Float = 0.5) -> [UInt8] {
        var pixels = thumbnail
        for y in 0..<height {
            let levelY = (Double(y) + 0.5) * Double(grid.levelHeight) / Double(height)
            let row = Int(levelY) / grid.stride
            guard row < grid.rows, Int(levelY) < row * grid.stride + grid.tile else { continue }
            for x in 0..<width {
                let levelX = (Double(x) + 0.5) * Double(grid.levelWidth) / Double(width)
                let column = Int(levelX) / grid.stride
                guard column < grid.columns, Int(levelX) < column * grid.stride + grid.tile else { continue }
                let score = scores[row * grid.columns + column]
                guard !score.isNaN else { continue }
                let (r, g, b) = ColorMap.viridis(score)
                let i = 3 * (y * width + x)
                for (c, value) in [r, g, b].enumerated() {
                    pixels[i + c] = UInt8((Float(pixels[i + c]) * (1 - opacity) + Float(value) * opacity).rounded())
                }
            }
        }
        return pixels
    }
}
