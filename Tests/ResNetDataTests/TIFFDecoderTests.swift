import Foundation
import ResNetData
import ResNetSupport
import XCTest

final class TIFFDecoderTests: XCTestCase {
    /// Decodes `name` and checks every pixel against `expected(x, y, c)` within `tolerance`.
    func assertPixels(_ name: String, width: Int = 20, height: Int = 12, tolerance: Float = 1e-7,
                      meanTolerance: Float? = nil, _ expected: (Int, Int, Int) -> Float,
                      file: StaticString = #filePath, line: UInt = #line) throws {
        let image = try TIFFDecoder.decode(path: Fixtures.tiff(name))
        XCTAssertEqual(image.width, width, name, file: file, line: line)
        XCTAssertEqual(image.height, height, name, file: file, line: line)
        guard image.width == width && image.height == height else { return }
        var worst: Float = 0, total: Float = 0
        for y in 0..<height {
            for x in 0..<width {
                for c in 0..<3 {
                    let error = abs(image.pixels[(y * width + x) * 3 + c] - expected(x, y, c))
                    worst = max(worst, error)
                    total += error
                }
            }
        }
        XCTAssertLessThanOrEqual(worst, tolerance, "\(name): largest pixel error", file: file, line: line)
        if let meanTolerance {
            XCTAssertLessThanOrEqual(total / Float(width * height * 3), meanTolerance, "\(name): mean error", file: file, line: line)
        }
    }

    func testEightBitRGBLayoutsDecodeExactly() throws {
        for name in ["rgb8_strips.tif", "rgb8_lzw.tif", "rgb8_packbits.tif", "rgb8_deflate.tif", "rgb8_tiled.tif",
                     "rgb8_planar.tif", "rgb8_planar_tiled.tif", "rgba8.tif"] {
            try assertPixels(name, Fixtures.pattern8)
        }
    }

    /// 16-bit samples keep their full precision (an 8-bit detour would err by up to 128/65535).
    func testSixteenBitLayoutsKeepPrecision() throws {
        for name in ["rgb16_strips.tif", "rgb16_bigendian.tif", "rgb16_deflate.tif", "rgb16_tiled_planar.tif"] {
            try assertPixels(name, tolerance: 1e-7, Fixtures.pattern16)
        }
    }

    func testGrayIsReplicatedToRGB() throws {
        try assertPixels("gray8.tif") { x, y, _ in Fixtures.pattern8(x, y, 0) }
        try assertPixels("gray16.tif") { x, y, _ in Fixtures.pattern16(x, y, 0) }
        try assertPixels("gray8_miniswhite.tif") { x, y, _ in 1 - Fixtures.pattern8(x, y, 0) }
    }

    func testPaletteColoursComeFromTheColormap() throws {
        try assertPixels("palette8.tif") { x, y, c in
            let index = (y * 20 + x) % 256
            return Float((index * 7 + c * 50) % 256) / 255
        }
    }

    /// JPEG is lossy: the smooth ramp must come back within a few levels (YCbCr through libtiff's RGBA path).
    func testJPEGDecodesCloseToTheSource() throws {
        for name in ["rgb8_jpeg_ycbcr.tif", "rgb8_jpeg_rgb.tif"] {
            try assertPixels(name, width: 32, height: 16, tolerance: 12 / 255, meanTolerance: 3 / 255, Fixtures.smooth8)
        }
    }

    func assertFails(_ path: String, _ problem: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try TIFFDecoder.decode(path: path), file: file, line: line) { error in
            guard let error = error as? FileError else { return XCTFail("not a FileError: \(error)", file: file, line: line) }
            XCTAssertEqual(error.path, path, file: file, line: line)
            XCTAssertTrue(error.problem.contains(problem), "message was: \(error)", file: file, line: line)
            XCTAssertFalse(error.description.contains("\n"), file: file, line: line)
        }
    }

    func testBadFilesAreNamedWithTheReason() throws {
        assertFails(Fixtures.tiff("bad_empty.tif"), "the file is empty")
        assertFails(Fixtures.tiff("bad_not_a_tiff.tif"), "not a TIFF image (it does not start with II*/MM*)")
        assertFails(Fixtures.tiff("bad_truncated.tif"), "truncated: a 20x12 image needs 720 bytes of pixels, the file has 708")
        assertFails(Fixtures.tiff("bad_truncated_lzw.tif"), "not a readable TIFF")
        assertFails(Fixtures.tiff("bad_garbage.tif"), "not a readable TIFF")
        assertFails(Fixtures.tiff("bad_huge_dimensions.tif"), "absurd dimensions 2147483648x1")
        // Found by tools/fuzz.sh tiff: sides of 2^31 + 4 and 2^32 − 1, whose product overflowed (a trap) before
        // the sides were checked one by one.
        assertFails(Fixtures.tiff("bad_fuzz_dimension_overflow.tif"), "absurd dimensions 2147483652x4294967295")
        assertFails(Fixtures.tiff("missing.tif"), "no such file")
    }

    func testFoldersSymlinksAndPermissionsAreReported() throws {
        let dir = try Fixtures.temporaryDirectory(self)
        let folder = dir.appendingPathComponent("x.tif")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        assertFails(folder.path, "is a folder, not a TIFF image")
        let link = dir.appendingPathComponent("dangling.tif")
        try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: dir.appendingPathComponent("gone.tif").path)
        assertFails(link.path, "is a symbolic link to a file that does not exist")
        let locked = dir.appendingPathComponent("locked.tif")
        try FileManager.default.copyItem(atPath: Fixtures.tiff("rgb8_strips.tif"), toPath: locked.path)
        chmod(locked.path, 0)
        if geteuid() == 0 { throw XCTSkip("root reads files whatever their permissions") }
        assertFails(locked.path, "cannot open: Permission denied")
    }

    /// Many threads decoding at once, each its own handle: results identical, errors do not leak between calls.
    func testConcurrentDecodesAgree() throws {
        let good = Fixtures.tiff("rgb8_lzw.tif"), bad = Fixtures.tiff("bad_truncated_lzw.tif")
        let reference = try TIFFDecoder.decode(path: good)
        final class Results: @unchecked Sendable { var ok = [Bool](repeating: false, count: 64) }
        let results = Results()
        DispatchQueue.concurrentPerform(iterations: 64) { i in
            if i % 2 == 0 {
                results.ok[i] = (try? TIFFDecoder.decode(path: good)) == reference
            } else {
                results.ok[i] = (try? TIFFDecoder.decode(path: bad)) == nil
            }
        }
        XCTAssertEqual(results.ok, [Bool](repeating: true, count: 64))
    }
}

/// Damaged files must give a FileError, never a crash, a trap or a hang.
final class TIFFDecoderRobustnessTests: XCTestCase {
    /// SplitMix64: a fixed, seeded sequence so that any failure reproduces.
    struct SplitMix64 {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
    }

    func testMutatedAndTruncatedFilesFailCleanly() throws {
        let dir = try Fixtures.temporaryDirectory(self)
        let target = dir.appendingPathComponent("mutant.tif")
        var random = SplitMix64(state: 42)
        var decoded = 0, rejected = 0
        for name in ["rgb8_strips.tif", "rgb8_lzw.tif", "rgb8_tiled.tif", "rgb16_tiled_planar.tif", "palette8.tif",
                     "rgb8_jpeg_ycbcr.tif", "gray16.tif", "rgb8_deflate.tif"] {
            let original = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.tiff(name))))
            var variants: [[UInt8]] = stride(from: 0, to: original.count, by: max(1, original.count / 40)).map { Array(original.prefix($0)) }
            for _ in 0..<150 {
                var bytes = original
                for _ in 0..<(1 + Int(random.next() % 4)) {
                    // Mostly the header and IFD (the first 300 bytes), where a flipped byte changes the layout.
                    let limit = random.next() % 4 == 0 ? bytes.count : min(bytes.count, 300)
                    bytes[Int(random.next() % UInt64(limit))] = UInt8(truncatingIfNeeded: random.next())
                }
                variants.append(bytes)
            }
            for bytes in variants {
                try Data(bytes).write(to: target)
                do {
                    let image = try TIFFDecoder.decode(path: target.path)
                    XCTAssertEqual(image.pixels.count, image.width * image.height * 3)
                    decoded += 1
                } catch let error as FileError {
                    XCTAssertEqual(error.path, target.path)
                    XCTAssertFalse(error.problem.isEmpty || error.problem.contains("\n"), error.problem)
                    rejected += 1
                }
            }
        }
        XCTAssertGreaterThan(rejected, 100, "most damage is detected")
    }
}
