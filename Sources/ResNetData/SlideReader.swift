import CTIFF
import Foundation
import ResNetSupport

/// One resolution of a slide: an image file directory (IFD) of the main chain or a SubIFD.
public struct SlideLevel: Sendable, Equatable {
    public var width: Int, height: Int
    /// Pixels of one TIFF tile, or (width, rows per strip) for a stripped level.
    public var blockWidth: Int, blockHeight: Int
    public var tiled: Bool
    /// File offset of the level's IFD (libtiff's `TIFFSetSubDirectory` takes it for main and sub IFDs alike).
    var directoryOffset: UInt64
    var samplesPerPixel: Int
    var jpegYCbCr: Bool
    /// Bytes libtiff writes when it decodes one block.
    var blockBytes: Int

    init(width: Int, height: Int, blockWidth: Int, blockHeight: Int, tiled: Bool, directoryOffset: UInt64,
         samplesPerPixel: Int, jpegYCbCr: Bool, blockBytes: Int) {
        (self.width, self.height, self.blockWidth, self.blockHeight, self.tiled) = (width, height, blockWidth, blockHeight, tiled)
        (self.directoryOffset, self.samplesPerPixel, self.jpegYCbCr, self.blockBytes) = (directoryOffset, samplesPerPixel, jpegYCbCr, blockBytes)
    }

    /// A level's geometry alone (for grids computed without a file).
    public init(width: Int, height: Int, blockWidth: Int, blockHeight: Int, tiled: Bool) {
        self.init(width: width, height: height, blockWidth: blockWidth, blockHeight: blockHeight, tiled: tiled,
                  directoryOffset: 0, samplesPerPixel: 3, jpegYCbCr: false, blockBytes: blockWidth * blockHeight * 3)
    }
}

/// Reads 8-bit RGB regions of a tiled or stripped TIFF/BigTIFF slide through libtiff, one TIFF tile (or strip) at
/// a time, with a small cache of decoded blocks: memory is bounded by the cache, never by the slide.
///
/// Levels: the first IFD is level 0; further levels are the SubIFDs of every main IFD and the later main IFDs whose
/// aspect ratio matches level 0's (so a label or macro image is not taken for a level), largest first.
/// Accepted per level: 8-bit RGB(A) with contiguous samples (none, LZW, Deflate, PackBits, JPEG), and JPEG in YCbCr,
/// which libtiff converts to RGB. Not thread-safe: one reader per thread.
public final class SlideReader {
    public let path: String
    public let levels: [SlideLevel]
    private let tif: OpaquePointer
    private var messages: UnsafeMutablePointer<ResNetKitTIFFMessages>
    private var currentLevel = -1

    /// Decoded blocks of the current level by block index, with the time of their last use.
    private var cache: [Int: (buffer: UnsafeMutableRawBufferPointer, used: Int)] = [:]
    private var clock = 0
    /// Most blocks kept decoded; `cacheBlocks(forRegionWidth:height:)` gives what a traversal needs.
    public var cacheCapacity = 16
    /// Blocks decoded so far (each at most once per cache residence).
    public private(set) var blocksDecoded = 0

    /// Largest decoded block accepted: a strip or tile larger than this is refused rather than allocated.
    public static let maxBlockBytes = 1 << 28
    static let maxTileSide = 1 << 16
    static let maxDirectories = 256

    public init(path: String) throws {
        self.path = path
        _ = TIFFDecoder.globalHandlersSilenced
        let fd = try TIFFDecoder.openChecked(path)
        messages = .allocate(capacity: 1)
        messages.initialize(to: ResNetKitTIFFMessages())
        guard let tif = resnetkit_tiff_open(fd, path, messages, tmsize_t(Self.maxBlockBytes)) else {
            close(fd)
            let detail = TIFFDecoder.libtiffMessage(&messages.pointee, path: path, fallback: "libtiff cannot open it")
            messages.deallocate()
            throw FileError(path, "not a readable TIFF: \(detail)")
        }
        self.tif = tif
        do {
            levels = try Self.findLevels(tif, path: path)
        } catch {
            TIFFClose(tif)
            messages.deallocate()
            throw error
        }
    }

    deinit {
        for entry in cache.values { entry.buffer.deallocate() }
        TIFFClose(tif)
        messages.deallocate()
    }

    // MARK: Levels

    private static func findLevels(_ tif: OpaquePointer, path: String) throws -> [SlideLevel] {
        var mainOffsets: [UInt64] = [], subOffsets: [UInt64] = []
        repeat {
            mainOffsets.append(TIFFCurrentDirOffset(tif))
            var count: UInt16 = 0
            var offsets: UnsafeMutablePointer<UInt64>?
            if resnetkit_tiff_get_subifds(tif, &count, &offsets) == 1, let offsets {
                for i in 0..<min(Int(count), maxDirectories) { subOffsets.append(offsets[i]) }
            }
        } while mainOffsets.count < maxDirectories && TIFFReadDirectory(tif) == 1
        let first = try describe(tif, offset: mainOffsets[0], path: path, name: "level 0")
        var others: [SlideLevel] = []
        for offset in mainOffsets.dropFirst() + subOffsets {
            // Directories that are not RGB levels (masks, labels in other layouts) are skipped, not errors.
            guard let level = try? describe(tif, offset: offset, path: path, name: "IFD"), level.width < first.width else { continue }
            let rw = Double(level.width) / Double(first.width), rh = Double(level.height) / Double(first.height)
            // Levels round their sides, so a small level's ratio may be off by a pixel's worth.
            guard abs(rw - rh) <= 0.01 + 2 / Double(min(level.width, level.height)) else { continue }
            if !others.contains(where: { $0.width == level.width && $0.height == level.height }) { others.append(level) }
        }
        return [first] + others.sorted { $0.width > $1.width }
    }

    /// Reads one directory's layout; throws (naming `name`) what makes it unreadable as an RGB level.
    private static func describe(_ tif: OpaquePointer, offset: UInt64, path: String, name: String) throws -> SlideLevel {
        guard TIFFSetSubDirectory(tif, offset) == 1 else { throw FileError(path, "\(name): unreadable directory") }
        guard let width = TIFFDecoder.tag32(tif, TIFFTAG_IMAGEWIDTH), let height = TIFFDecoder.tag32(tif, TIFFTAG_IMAGELENGTH),
              width > 0, height > 0 else {
            throw FileError(path, "\(name): not a valid TIFF: no image dimensions")
        }
        let spp = TIFFDecoder.tag16(tif, TIFFTAG_SAMPLESPERPIXEL) ?? 1
        let bits = TIFFDecoder.tag16(tif, TIFFTAG_BITSPERSAMPLE) ?? 1
        let photometric = TIFFDecoder.tag16(tif, TIFFTAG_PHOTOMETRIC) ?? -1
        let compression = TIFFDecoder.tag16(tif, TIFFTAG_COMPRESSION) ?? Int(COMPRESSION_NONE)
        let separate = TIFFDecoder.tag16(tif, TIFFTAG_PLANARCONFIG) == Int(PLANARCONFIG_SEPARATE)
        let jpegYCbCr = photometric == Int(PHOTOMETRIC_YCBCR) && compression == Int(COMPRESSION_JPEG)
        guard bits == 8 else { throw FileError(path, "\(name): \(bits)-bit samples (slides must be 8-bit RGB)") }
        guard photometric == Int(PHOTOMETRIC_RGB) || jpegYCbCr, spp >= 3, spp <= 16 else {
            throw FileError(path, "\(name): not an RGB image (photometric \(photometric), \(spp) samples per pixel)")
        }
        guard !separate else { throw FileError(path, "\(name): separate colour planes are not supported in slides") }
        if jpegYCbCr {
            // libtiff's JPEG codec then hands out RGB and sizes its tiles accordingly.
            _ = resnetkit_tiff_set_int(tif, UInt32(TIFFTAG_JPEGCOLORMODE), Int32(JPEGCOLORMODE_RGB))
        }
        let tiled = TIFFIsTiled(tif) != 0
        let blockWidth: Int, blockHeight: Int, size: Int
        if tiled {
            guard let tw = TIFFDecoder.tag32(tif, TIFFTAG_TILEWIDTH), let th = TIFFDecoder.tag32(tif, TIFFTAG_TILELENGTH),
                  tw > 0, th > 0, tw <= maxTileSide, th <= maxTileSide else {
                throw FileError(path, "\(name): not a valid TIFF: missing or absurd tile size")
            }
            (blockWidth, blockHeight, size) = (tw, th, Int(TIFFTileSize(tif)))
        } else {
            let rows = min(height, max(1, TIFFDecoder.tag32(tif, TIFFTAG_ROWSPERSTRIP) ?? height))
            (blockWidth, blockHeight, size) = (width, rows, Int(TIFFStripSize(tif)))
        }
        // Every product below is checked: the sides come from the file.
        let (pixels, o1) = blockWidth.multipliedReportingOverflow(by: blockHeight)
        let (needed, o2) = pixels.multipliedReportingOverflow(by: jpegYCbCr ? 3 : spp)
        guard !o1, !o2, needed <= maxBlockBytes else {
            throw FileError(path, "\(name): \(tiled ? "tiles" : "strips") of \(blockWidth)x\(blockHeight) pixels are too large to read one at a time")
        }
        guard size >= needed else { throw FileError(path, "\(name): not a valid TIFF: inconsistent \(tiled ? "tile" : "strip") size") }
        return SlideLevel(width: width, height: height, blockWidth: blockWidth, blockHeight: blockHeight, tiled: tiled,
                          directoryOffset: offset, samplesPerPixel: jpegYCbCr ? 3 : spp, jpegYCbCr: jpegYCbCr, blockBytes: size)
    }

    /// Makes `level` libtiff's current directory (dropping the cache of another level).
    private func select(_ level: Int) throws {
        guard level != currentLevel else { return }
        for entry in cache.values { entry.buffer.deallocate() }
        cache = [:]
        let l = levels[level]
        guard TIFFSetSubDirectory(tif, l.directoryOffset) == 1 else { throw FileError(path, "level \(level): unreadable directory") }
        if l.jpegYCbCr { _ = resnetkit_tiff_set_int(tif, UInt32(TIFFTAG_JPEGCOLORMODE), Int32(JPEGCOLORMODE_RGB)) }
        currentLevel = level
    }

    /// Blocks a traversal needs in cache to decode each block once: regions of this size visited row by row
    /// over a band `bandWidth` pixels wide.
    public func cacheBlocks(level: Int, regionHeight: Int, bandWidth: Int) -> Int {
        let l = levels[level]
        let across = min(l.width, bandWidth + l.blockWidth - 1) / l.blockWidth + 2
        let down = (regionHeight + l.blockHeight - 1) / l.blockHeight + 1
        return across * down
    }

    // MARK: Reading

    /// The decoded block (tile or strip) at block coordinates, from the cache or libtiff.
    private func block(column: Int, row: Int) throws -> UnsafeRawPointer {
        let l = levels[currentLevel]
        let across = (l.width + l.blockWidth - 1) / l.blockWidth
        let key = row * across + column
        clock += 1
        if let entry = cache[key] {
            cache[key] = (entry.buffer, clock)
            return UnsafeRawPointer(entry.buffer.baseAddress!)
        }
        if cache.count >= max(1, cacheCapacity), let oldest = cache.min(by: { $0.value.used < $1.value.used }) {
            oldest.value.buffer.deallocate()
            cache[oldest.key] = nil
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: l.blockBytes, alignment: 16)
        let x0 = column * l.blockWidth, y0 = row * l.blockHeight
        let read: Int
        messages.pointee = ResNetKitTIFFMessages()
        if l.tiled {
            let index = TIFFComputeTile(tif, UInt32(x0), UInt32(y0), 0, 0)
            read = Int(TIFFReadEncodedTile(tif, index, buffer.baseAddress, tmsize_t(l.blockBytes)))
        } else {
            let index = TIFFComputeStrip(tif, UInt32(y0), 0)
            read = Int(TIFFReadEncodedStrip(tif, index, buffer.baseAddress, tmsize_t(l.blockBytes)))
        }
        let rows = min(l.blockHeight, l.height - y0), columns = min(l.blockWidth, l.width - x0)
        let needed = ((rows - 1) * l.blockWidth + columns) * l.samplesPerPixel
        guard read >= needed else {
            buffer.deallocate()
            let detail = TIFFDecoder.libtiffMessage(&messages.pointee, path: path, fallback: "")
            throw FileError(path, "level \(currentLevel): truncated or corrupt \(l.tiled ? "tile" : "strip") at x \(x0), y \(y0)"
                            + (detail.isEmpty ? "" : " (\(detail))"))
        }
        blocksDecoded += 1
        cache[key] = (buffer, clock)
        return UnsafeRawPointer(buffer.baseAddress!)
    }

    /// Copies the region [x, x+width) × [y, y+height) of `level` into `into` as 8-bit RGB, row-major.
    /// The region must lie inside the level.
    public func read(level: Int, x: Int, y: Int, width: Int, height: Int, into: UnsafeMutablePointer<UInt8>) throws {
        precondition(level >= 0 && level < levels.count && x >= 0 && y >= 0 && width > 0 && height > 0)
        let l = levels[level]
        precondition(x + width <= l.width && y + height <= l.height, "region outside the level")
        try select(level)
        let spp = l.samplesPerPixel
        var by = y / l.blockHeight
        while by * l.blockHeight < y + height {
            var bx = x / l.blockWidth
            while bx * l.blockWidth < x + width {
                let block = try self.block(column: bx, row: by).assumingMemoryBound(to: UInt8.self)
                let bx0 = bx * l.blockWidth, by0 = by * l.blockHeight
                let left = max(x, bx0), right = min(x + width, bx0 + l.blockWidth)
                let top = max(y, by0), bottom = min(y + height, by0 + l.blockHeight)
                for row in top..<bottom {
                    var source = block + ((row - by0) * l.blockWidth + (left - bx0)) * spp
                    var out = into + ((row - y) * width + (left - x)) * 3
                    if spp == 3 {
                        out.update(from: source, count: (right - left) * 3)
                        continue
                    }
                    for _ in left..<right {
                        out[0] = source[0]; out[1] = source[1]; out[2] = source[2]
                        source += spp
                        out += 3
                    }
                }
                bx += 1
            }
            by += 1
        }
    }

    /// An RGB thumbnail of the whole slide, at most `maxSide` pixels on its longer side, made by averaging the
    /// pixels of the smallest level that is at least `maxSide` long (or level 0), read block by block.
    /// Returns the level it came from, its size and its pixels (8-bit RGB, row-major).
    public func thumbnail(maxSide: Int) throws -> (level: Int, width: Int, height: Int, pixels: [UInt8]) {
        precondition(maxSide > 0)
        let level = levels.indices.last(where: { max(levels[$0].width, levels[$0].height) >= maxSide }) ?? 0
        let l = levels[level]
        let scale = min(1, Double(maxSide) / Double(max(l.width, l.height)))
        let width = max(1, Int((Double(l.width) * scale).rounded())), height = max(1, Int((Double(l.height) * scale).rounded()))
        try select(level)
        let saved = cacheCapacity
        cacheCapacity = 1
        defer { cacheCapacity = saved }
        // Sums for the thumbnail rows one row of blocks touches (plus one it shares with the next), flushed into
        // 8-bit pixels as they complete, so memory stays at the thumbnail and one band.
        let bandRows = (l.blockHeight * height + l.height - 1) / l.height + 2
        // Double: a thumbnail pixel of a huge single-level slide averages hundreds of thousands of pixels.
        var sums = [Double](repeating: 0, count: bandRows * width * 3)
        var counts = [Double](repeating: 0, count: bandRows * width)
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        var bandStart = 0
        let across = (l.width + l.blockWidth - 1) / l.blockWidth, down = (l.height + l.blockHeight - 1) / l.blockHeight
        for by in 0..<down {
            let y0 = by * l.blockHeight, yEnd = min(l.height, y0 + l.blockHeight)
            try sums.withUnsafeMutableBufferPointer { sums in
                try counts.withUnsafeMutableBufferPointer { counts in
                    for bx in 0..<across {
                        let block = try self.block(column: bx, row: by).assumingMemoryBound(to: UInt8.self)
                        let x0 = bx * l.blockWidth
                        // Which thumbnail column each of the block's columns falls in.
                        let columnCell = (x0..<min(l.width, x0 + l.blockWidth)).map { min(width - 1, $0 * width / l.width) }
                        for row in y0..<yEnd {
                            let cellRow = (min(height - 1, row * height / l.height) - bandStart) * width
                            var source = block + (row - y0) * l.blockWidth * l.samplesPerPixel
                            for column in x0..<min(l.width, x0 + l.blockWidth) {
                                let cell = cellRow + columnCell[column - x0]
                                sums[3 * cell] += Double(source[0])
                                sums[3 * cell + 1] += Double(source[1])
                                sums[3 * cell + 2] += Double(source[2])
                                counts[cell] += 1
                                source += l.samplesPerPixel
                            }
                        }
                    }
                }
            }
            // Rows below the one level row yEnd maps to receive nothing more.
            let complete = yEnd == l.height ? height : min(height, yEnd * height / l.height)
            for i in 0..<((complete - bandStart) * width) where counts[i] > 0 {
                let out = (bandStart * width + i) * 3
                for c in 0..<3 { pixels[out + c] = UInt8(min(255, (sums[3 * i + c] / counts[i]).rounded())) }
            }
            let kept = (complete - bandStart) * width
            for i in 0..<(bandRows * width) {
                let from = i + kept
                counts[i] = from < bandRows * width ? counts[from] : 0
                for c in 0..<3 { sums[3 * i + c] = from < bandRows * width ? sums[3 * from + c] : 0 }
            }
            bandStart = complete
        }
        return (level, width, height, pixels)
    }
}
