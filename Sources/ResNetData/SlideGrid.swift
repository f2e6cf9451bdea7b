import Foundation
import ResNetModel
import ResNetSupport

/// One cell of a slide's tile grid (column and row of the grid, not pixels).
public struct GridCell: Hashable, Sendable {
    public var column: Int32, row: Int32
    public init(column: Int, row: Int) {
        self.column = Int32(column)
        self.row = Int32(row)
    }
}

/// Tiles of `tile` pixels every `stride` pixels from (0, 0) of one level, each wholly inside the level (a partial
/// tile at the right or bottom edge is not part of the grid).
public struct SlideGrid: Sendable, Equatable {
    public let levelWidth: Int, levelHeight: Int
    public let levelZeroWidth: Int, levelZeroHeight: Int
    public let tile: Int, stride: Int
    public let columns: Int, rows: Int

    /// Most cells a grid may have (their list and the heatmap are kept in memory).
    public static let maxCells = 1 << 25

    public enum GridError: Error, CustomStringConvertible {
        case tileTooLarge(tile: Int, width: Int, height: Int)
        case tooManyCells(Int)
        public var description: String {
            switch self {
            case .tileTooLarge(let tile, let width, let height): "a \(tile)-pixel tile is larger than the level (\(width)x\(height))"
            case .tooManyCells(let cells): "a grid of \(cells) tiles is too large (at most \(SlideGrid.maxCells)); use a larger --stride"
            }
        }
    }

    public init(level: SlideLevel, levelZero: SlideLevel, tile: Int, stride: Int) throws {
        precondition(tile > 0 && stride > 0)
        guard tile <= level.width, tile <= level.height else {
            throw GridError.tileTooLarge(tile: tile, width: level.width, height: level.height)
        }
        levelWidth = level.width
        levelHeight = level.height
        levelZeroWidth = levelZero.width
        levelZeroHeight = levelZero.height
        self.tile = tile
        self.stride = stride
        columns = (level.width - tile) / stride + 1
        rows = (level.height - tile) / stride + 1
        let (cells, overflow) = columns.multipliedReportingOverflow(by: rows)
        guard !overflow, cells <= Self.maxCells else { throw GridError.tooManyCells(overflow ? Int.max : cells) }
    }

    public var count: Int { columns * rows }

    /// Top-left corner of a cell's tile in the level's pixels.
    public func origin(_ cell: GridCell) -> (x: Int, y: Int) { (Int(cell.column) * stride, Int(cell.row) * stride) }

    /// Top-left corner of a cell's tile in level 0's pixels (scaled by the level's size ratio, rounded).
    public func levelZeroOrigin(_ cell: GridCell) -> (x: Int, y: Int) {
        let (x, y) = origin(cell)
        return (Int((Double(x) * Double(levelZeroWidth) / Double(levelWidth)).rounded()),
                Int((Double(y) * Double(levelZeroHeight) / Double(levelHeight)).rounded()))
    }

    /// Row-major index of a cell (for per-cell arrays such as the heatmap's).
    public func index(_ cell: GridCell) -> Int { Int(cell.row) * columns + Int(cell.column) }

    /// Visiting order: vertical bands `bandColumns` cells wide, left to right, each read row by row, so a reader
    /// needs only one band's height of TIFF tiles decoded at a time (stripped levels: one band, the whole width).
    public func order(bandColumns: Int, keep: (GridCell) -> Bool = { _ in true }) -> [GridCell] {
        let band = max(1, bandColumns)
        var cells: [GridCell] = []
        var first = 0
        while first < columns {
            for row in 0..<rows {
                for column in first..<min(columns, first + band) {
                    let cell = GridCell(column: column, row: row)
                    if keep(cell) { cells.append(cell) }
                }
            }
            first += band
        }
        return cells
    }

    /// Band width (in cells) for a level read by `workers` readers, each taking an equal vertical strip of the band:
    /// about 2048 pixels of a tiled level, with the band's and the strips' edges on TIFF tile edges where the
    /// stride allows (so no TIFF tile is decoded twice across them); the whole width of a stripped level.
    public func bandColumns(for level: SlideLevel, workers: Int = 1) -> Int {
        guard level.tiled else { return columns }
        let workers = max(1, workers)
        func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
        // The fewest cells whose width is a whole number of TIFF tiles.
        let unit = level.blockWidth / gcd(stride, level.blockWidth)
        let unitPixels = unit * stride
        guard unitPixels <= 4096 else { return max(workers, 2048 / stride) }
        return max(1, 2048 / workers / unitPixels) * unit * workers
    }

    /// Which of `workers` readers reads a cell: the strip of its band it falls in.
    public func worker(_ cell: GridCell, band: Int, workers: Int) -> Int {
        Int(cell.column) % band * workers / band
    }
}

/// Glass versus tissue on a slide thumbnail: HSV saturation, (max − min) / max of each pixel's RGB, thresholded.
/// Stained tissue is coloured, glass is near-white or gray, so saturation separates them where brightness alone
/// fails on pale tissue and dark dust. The threshold is Otsu's (the one that maximises the between-class
/// variance of the saturation histogram) unless given, and never below `minimumThreshold`, so that a slide of bare
/// glass, whose histogram is all noise, keeps nothing.
public struct TissueMask: Sendable {
    public let width: Int, height: Int
    public let threshold: Float
    /// Per thumbnail pixel, row-major.
    public let tissue: [Bool]
    public static let minimumThreshold: Float = 0.05

    public init(thumbnail pixels: [UInt8], width: Int, height: Int, threshold: Float? = nil) {
        precondition(pixels.count == width * height * 3)
        self.width = width
        self.height = height
        let saturation = (0..<(width * height)).map { i -> Float in
            let r = pixels[3 * i], g = pixels[3 * i + 1], b = pixels[3 * i + 2]
            let high = max(r, g, b), low = min(r, g, b)
            return high == 0 ? 0 : Float(high - low) / Float(high)
        }
        let t = threshold ?? max(Self.minimumThreshold, Self.otsu(saturation))
        self.threshold = t
        tissue = saturation.map { $0 > t }
    }

    /// Otsu's threshold for values in [0, 1] over a 256-bin histogram: the upper edge of the last bin of the
    /// lower class. 0 when every value falls in one bin.
    public static func otsu(_ values: [Float]) -> Float {
        var histogram = [Double](repeating: 0, count: 256)
        for v in values { histogram[min(255, max(0, Int(v * 256)))] += 1 }
        let total = Double(values.count)
        let sumAll = histogram.enumerated().reduce(0) { $0 + Double($1.offset) * $1.element }
        var weightLow = 0.0, sumLow = 0.0, best = -1.0, bestBin = -1
        for bin in 0..<255 {
            weightLow += histogram[bin]
            sumLow += Double(bin) * histogram[bin]
            let weightHigh = total - weightLow
            guard weightLow > 0, weightHigh > 0 else { continue }
            let meanLow = sumLow / weightLow, meanHigh = (sumAll - sumLow) / weightHigh
            let between = weightLow * weightHigh * (meanLow - meanHigh) * (meanLow - meanHigh)
            if between > best { best = between; bestBin = bin }
        }
        return bestBin < 0 ? 0 : Float(bestBin + 1) / 256
    }

    /// Fraction of tissue pixels in the thumbnail footprint of a level rectangle (at least one pixel).
    public func fraction(x: Int, y: Int, width w: Int, height h: Int, levelWidth: Int, levelHeight: Int) -> Float {
        let sx = Double(width) / Double(levelWidth), sy = Double(height) / Double(levelHeight)
        let left = min(width - 1, Int(Double(x) * sx)), top = min(height - 1, Int(Double(y) * sy))
        let right = max(left + 1, min(width, Int((Double(x + w) * sx).rounded(.up))))
        let bottom = max(top + 1, min(height, Int((Double(y + h) * sy).rounded(.up))))
        var count = 0
        for row in top..<bottom {
            for column in left..<right where tissue[row * width + column] { count += 1 }
        }
        return Float(count) / Float((right - left) * (bottom - top))
    }
}
