import CTIFF
import Foundation
import ResNetData
import ResNetSupport
import TestSupport
import XCTest

extension TestSlide {
    static func temporaryFile(_ test: XCTestCase, _ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("resnetkit-slide-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir.appendingPathComponent(name).path
    }
}

extension SlideLevel {
    static func testLevel(width: Int, height: Int) -> SlideLevel {
        SlideLevel(width: width, height: height, blockWidth: 256, blockHeight: 256, tiled: true)
    }
}

final class SlideReaderTests: XCTestCase {
    func region(_ reader: SlideReader, level: Int, x: Int, y: Int, width: Int, height: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: width * height * 3)
        try out.withUnsafeMutableBufferPointer { try reader.read(level: level, x: x, y: y, width: width, height: height, into: $0.baseAddress!) }
        return out
    }

    func expected(level: Int, x: Int, y: Int, width: Int, height: Int) -> [UInt8] {
        var out: [UInt8] = []
        for row in y..<(y + height) { for column in x..<(x + width) { for c in 0..<3 { out.append(TestSlide.pattern(column, row, c, level: level)) } } }
        return out
    }

    /// A pyramid in SubIFDs, tiled, Deflate, BigTIFF: levels in order, regions across tile borders and at the edges.
    func testTiledPyramidInSubIFDs() throws {
        let path = TestSlide.temporaryFile(self, "slide.tif")
        try TestSlide.write(path, levels: [.init(width: 300, height: 200), .init(width: 150, height: 100, level: 1),
                                           .init(width: 75, height: 50, level: 2)], block: 64)
        let reader = try SlideReader(path: path)
        XCTAssertEqual(reader.levels.map { [$0.width, $0.height] }, [[300, 200], [150, 100], [75, 50]])
        XCTAssertEqual(reader.levels.map(\.tiled), [true, true, true])
        for (x, y, w, h) in [(0, 0, 64, 64), (30, 50, 96, 96), (204, 104, 96, 96), (299, 199, 1, 1), (10, 60, 200, 5)] {
            XCTAssertEqual(try region(reader, level: 0, x: x, y: y, width: w, height: h), expected(level: 0, x: x, y: y, width: w, height: h), "\(x),\(y)")
        }
        XCTAssertEqual(try region(reader, level: 1, x: 100, y: 40, width: 50, height: 60), expected(level: 1, x: 100, y: 40, width: 50, height: 60))
        XCTAssertEqual(try region(reader, level: 2, x: 0, y: 0, width: 75, height: 50), expected(level: 2, x: 0, y: 0, width: 75, height: 50))
        // Back to level 0 after another level: the cache belongs to one level.
        XCTAssertEqual(try region(reader, level: 0, x: 1, y: 2, width: 70, height: 70), expected(level: 0, x: 1, y: 2, width: 70, height: 70))
    }

    /// Strips (LZW, classic TIFF) and levels as further main IFDs; an IFD of another aspect ratio (a label) is no level.
    func testStripsAndMainChainLevels() throws {
        let path = TestSlide.temporaryFile(self, "strips.tif")
        try TestSlide.write(path, levels: [.init(width: 200, height: 120), .init(width: 100, height: 60, level: 1),
                                           .init(width: 40, height: 40, level: 2)],
                            block: 16, tiled: false, compression: COMPRESSION_LZW, subIFDs: false, bigTIFF: false)
        let reader = try SlideReader(path: path)
        XCTAssertEqual(reader.levels.map { [$0.width, $0.height] }, [[200, 120], [100, 60]])
        XCTAssertEqual(reader.levels[0].tiled, false)
        XCTAssertEqual(try region(reader, level: 0, x: 13, y: 7, width: 96, height: 96), expected(level: 0, x: 13, y: 7, width: 96, height: 96))
        XCTAssertEqual(try region(reader, level: 1, x: 4, y: 0, width: 96, height: 60), expected(level: 1, x: 4, y: 0, width: 96, height: 60))
    }

    /// JPEG in YCbCr: libtiff converts to RGB; lossy, so close to the pattern (which is smooth), not equal.
    func testJPEGYCbCrTiles() throws {
        let path = TestSlide.temporaryFile(self, "jpeg.tif")
        try TestSlide.write(path, levels: [.init(width: 256, height: 192)], block: 128, compression: COMPRESSION_JPEG)
        let reader = try SlideReader(path: path)
        XCTAssertEqual(reader.levels.count, 1)
        let got = try region(reader, level: 0, x: 100, y: 50, width: 96, height: 96)
        let want = expected(level: 0, x: 100, y: 50, width: 96, height: 96)
        let meanError = zip(got, want).map { abs(Double($0) - Double($1)) }.reduce(0, +) / Double(got.count)
        XCTAssertLessThan(meanError, 3, "JPEG at quality 95 of a smooth ramp")
        XCTAssertGreaterThan(got.max()!, 100)
    }

    /// Each TIFF tile is decoded once when a grid is read in its band order with the cache the loader sizes.
    func testBandOrderDecodesEachTileOnce() throws {
        let path = TestSlide.temporaryFile(self, "slide.tif")
        try TestSlide.write(path, levels: [.init(width: 640, height: 480)], block: 64)
        let reader = try SlideReader(path: path)
        let grid = try SlideGrid(level: reader.levels[0], levelZero: reader.levels[0], tile: 48, stride: 40)
        reader.cacheCapacity = reader.cacheBlocks(level: 0, regionHeight: 48, bandWidth: 2 * 40 + 48)
        var buffer = [UInt8](repeating: 0, count: 48 * 48 * 3)
        for cell in grid.order(bandColumns: 2) {
            let (x, y) = grid.origin(cell)
            try buffer.withUnsafeMutableBufferPointer { try reader.read(level: 0, x: x, y: y, width: 48, height: 48, into: $0.baseAddress!) }
            XCTAssertEqual(buffer, expected(level: 0, x: x, y: y, width: 48, height: 48))
        }
        // 10 x 8 TIFF tiles; bands of 80 px can straddle a tile border, so a border tile may be decoded twice.
        XCTAssertLessThanOrEqual(reader.blocksDecoded, 80 * 2)
        XCTAssertGreaterThanOrEqual(reader.blocksDecoded, 80)
        XCTAssertLessThanOrEqual(reader.cacheCapacity, 20)
    }

    /// The thumbnail averages the pixels each thumbnail pixel covers, from the smallest level long enough.
    func testThumbnailAveragesTheSmallestLongEnoughLevel() throws {
        let path = TestSlide.temporaryFile(self, "slide.tif")
        try TestSlide.write(path, levels: [.init(width: 300, height: 200), .init(width: 150, height: 100, level: 1)], block: 32)
        let reader = try SlideReader(path: path)
        let whole = try reader.thumbnail(maxSide: 150)
        XCTAssertEqual([whole.level, whole.width, whole.height], [1, 150, 100])
        XCTAssertEqual(whole.pixels, expected(level: 1, x: 0, y: 0, width: 150, height: 100))
        let small = try reader.thumbnail(maxSide: 64)
        XCTAssertEqual([small.level, small.width, small.height], [1, 64, 43])
        var sums = [Double](repeating: 0, count: 64 * 43 * 3), counts = [Double](repeating: 0, count: 64 * 43)
        for y in 0..<100 { for x in 0..<150 {
            let cell = min(42, y * 43 / 100) * 64 + min(63, x * 64 / 150)
            counts[cell] += 1
            for c in 0..<3 { sums[3 * cell + c] += Double(TestSlide.pattern(x, y, c, level: 1)) }
        } }
        let want = (0..<(64 * 43 * 3)).map { UInt8((sums[$0] / counts[$0 / 3]).rounded()) }
        XCTAssertEqual(zip(small.pixels, want).map { abs(Int($0) - Int($1)) }.max(), 0)
        // Only level 0 is long enough for 256.
        XCTAssertEqual(try reader.thumbnail(maxSide: 256).level, 0)
    }

    func testBadSlidesAreRefusedWithOneLine() throws {
        let notTIFF = TestSlide.temporaryFile(self, "notes.txt")
        try Data("hello".utf8).write(to: URL(fileURLWithPath: notTIFF))
        XCTAssertThrowsError(try SlideReader(path: notTIFF)) { XCTAssertTrue("\($0)".contains("not a TIFF"), "\($0)") }
        XCTAssertThrowsError(try SlideReader(path: "/nonexistent/slide.tif")) { XCTAssertTrue("\($0)".contains("no such file"), "\($0)") }

        // 16-bit level 0: refused, naming the level.
        let gray = Fixtures.tiff("rgb16_deflate.tif")
        XCTAssertThrowsError(try SlideReader(path: gray)) { XCTAssertTrue("\($0)".contains("level 0: 16-bit"), "\($0)") }

        // Corrupt Deflate data: the directory is intact, a tile is not; the read fails naming the tile.
        let path = TestSlide.temporaryFile(self, "corrupt.tif")
        try TestSlide.write(path, levels: [.init(width: 256, height: 256)], block: 64, bigTIFF: false)
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        data.replaceSubrange(8..<1000, with: Data(repeating: 0xA5, count: 992))
        try data.write(to: URL(fileURLWithPath: path))
        let reader = try SlideReader(path: path)
        var buffer = [UInt8](repeating: 0, count: 64 * 64 * 3)
        XCTAssertThrowsError(try buffer.withUnsafeMutableBufferPointer { try reader.read(level: 0, x: 0, y: 0, width: 64, height: 64, into: $0.baseAddress!) }) {
            XCTAssertTrue("\($0)".hasPrefix(path + ": level 0: truncated or corrupt tile at x 0, y 0"), "\($0)")
        }

        // Cut short: libtiff writes the directory last, so the file no longer opens.
        let truncated = TestSlide.temporaryFile(self, "truncated.tif")
        try TestSlide.write(truncated, levels: [.init(width: 256, height: 256)], block: 64, compression: COMPRESSION_NONE, bigTIFF: false)
        let whole = try Data(contentsOf: URL(fileURLWithPath: truncated))
        try whole.prefix(150_000).write(to: URL(fileURLWithPath: truncated))
        XCTAssertThrowsError(try SlideReader(path: truncated)) { XCTAssertTrue("\($0)".hasPrefix(truncated + ": "), "\($0)") }
    }

    func testGridTissueAndColourMap() throws {
        let level = SlideLevel.testLevel(width: 1000, height: 500)
        let grid = try SlideGrid(level: SlideLevel.testLevel(width: 250, height: 125), levelZero: level, tile: 96, stride: 50)
        XCTAssertEqual([grid.columns, grid.rows], [4, 1])
        XCTAssertTrue(grid.levelZeroOrigin(GridCell(column: 3, row: 0)) == (600, 0))
        XCTAssertEqual(grid.order(bandColumns: 3).map { Int($0.column) }, [0, 1, 2, 3])
        // Bands and workers' strips end on TIFF tile edges: 8 cells of 96 are 3 tiles of 256.
        let big = SlideLevel.testLevel(width: 10_000, height: 10_000)
        let g96 = try SlideGrid(level: big, levelZero: big, tile: 96, stride: 96)
        XCTAssertEqual(g96.bandColumns(for: big, workers: 2), 16)
        XCTAssertEqual(g96.bandColumns(for: big, workers: 1), 16)
        XCTAssertEqual((0..<16).map { g96.worker(GridCell(column: $0 + 32, row: 5), band: 16, workers: 2) }, Array(repeating: 0, count: 8) + Array(repeating: 1, count: 8))
        let g97 = try SlideGrid(level: big, levelZero: big, tile: 97, stride: 97)
        XCTAssertEqual(g97.bandColumns(for: big, workers: 2), 21, "no aligned width nearby: about 2048 pixels")
        let stripped = SlideLevel(width: 10_000, height: 10_000, blockWidth: 10_000, blockHeight: 16, tiled: false)
        XCTAssertEqual(g96.bandColumns(for: stripped, workers: 2), g96.columns)
        XCTAssertThrowsError(try SlideGrid(level: level, levelZero: level, tile: 600, stride: 600)) {
            XCTAssertEqual("\($0)", "a 600-pixel tile is larger than the level (1000x500)")
        }
        XCTAssertThrowsError(try SlideGrid(level: SlideLevel.testLevel(width: 200_000, height: 200_000), levelZero: level, tile: 1, stride: 1))

        // Two populations of saturation: Otsu's threshold falls between them.
        let values = [Float](repeating: 0.02, count: 600) + [Float](repeating: 0.4, count: 400)
        let t = TissueMask.otsu(values)
        XCTAssertGreaterThan(t, 0.02)
        XCTAssertLessThanOrEqual(t, 0.4)
        // A thumbnail: left half glass (near white), right half pink.
        var thumbnail: [UInt8] = []
        for _ in 0..<10 { for x in 0..<20 { thumbnail += x < 10 ? [240, 238, 241] : [228, 140, 186] } }
        let mask = TissueMask(thumbnail: thumbnail, width: 20, height: 10)
        XCTAssertEqual(mask.fraction(x: 0, y: 0, width: 100, height: 100, levelWidth: 200, levelHeight: 100), 0)
        XCTAssertEqual(mask.fraction(x: 100, y: 0, width: 100, height: 100, levelWidth: 200, levelHeight: 100), 1)
        XCTAssertEqual(mask.fraction(x: 50, y: 0, width: 100, height: 100, levelWidth: 200, levelHeight: 100), 0.5)
        // Bare glass with noise: nothing is tissue.
        var glass: [UInt8] = []
        for i in 0..<300 {
            let a: Int = 236 + i % 5, b: Int = 238 - i % 3, c: Int = 237 + i % 4
            glass += [UInt8(a), UInt8(b), UInt8(c)]
        }
        XCTAssertEqual(TissueMask(thumbnail: glass, width: 30, height: 10).tissue.filter { $0 }.count, 0)

        XCTAssertTrue(ColorMap.viridis(0) == (68, 1, 84))
        XCTAssertTrue(ColorMap.viridis(1) == (253, 231, 37))
        XCTAssertTrue(ColorMap.viridis(.nan) == (68, 1, 84))
    }

    func testPNGRoundTrip() throws {
        let path = TestSlide.temporaryFile(self, "heat.png")
        let pixels: [UInt8] = [255, 0, 0, 255, 0, 255, 0, 0, 0, 0, 255, 128, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        try PNGFile.write(path: path, width: 3, height: 2, channels: 4, pixels: pixels)
        let back = try PNGFile.read(path: path)
        XCTAssertEqual(back.width, 3)
        XCTAssertEqual(back.height, 2)
        XCTAssertEqual(back.pixels, pixels)
        XCTAssertThrowsError(try PNGFile.write(path: "/nonexistent/x.png", width: 3, height: 2, channels: 4, pixels: pixels)) {
            XCTAssertTrue("\($0)".hasPrefix("/nonexistent/x.png: "), "\($0)")
        }
    }
}
