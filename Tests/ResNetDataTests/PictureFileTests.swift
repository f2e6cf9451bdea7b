import Foundation
import ResNetData
import ResNetSupport
import XCTest

/// Pictures (PNG through libpng, float TIFF through libtiff) are written atomically: what was written reads back,
/// and a write that fails names the file and leaves nothing behind, neither the file nor a temporary beside it.
final class PictureFileTests: XCTestCase {
    func testWritesReadBackAndFailuresLeaveNothing() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pictures-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func contents() throws -> Set<String> { Set(try FileManager.default.contentsOfDirectory(atPath: dir.path)) }

        let png = dir.appendingPathComponent("a.png").path, tiff = dir.appendingPathComponent("a.tif").path
        let rgb = (0..<18).map { UInt8($0 * 13) }  // 3 x 2 pixels
        try PNGFile.write(path: png, width: 3, height: 2, channels: 3, pixels: rgb)
        let read = try PNGFile.read(path: png)
        XCTAssertEqual(read.width, 3)
        XCTAssertEqual(read.height, 2)
        var rgba: [UInt8] = []
        for pixel in 0..<6 { rgba += rgb[(pixel * 3)..<(pixel * 3 + 3)] + [255] }
        XCTAssertEqual(read.pixels, rgba, "RGB read back as RGBA, opaque")
        try FloatTIFF.write(path: tiff, width: 2, height: 2, values: [0, 1.5, -2, 3e-7])
        XCTAssertEqual(try FloatTIFF.read(path: tiff).values, [0, 1.5, -2, 3e-7])
        XCTAssertEqual(try contents(), ["a.png", "a.tif"])

        // A writer that fails: its error comes through, and its temporary file is removed.
        struct Refused: Error {}
        XCTAssertThrowsError(try AtomicFile.write(to: dir.appendingPathComponent("b.png").path) { temp in
            FileManager.default.createFile(atPath: temp, contents: Data([1, 2, 3]))
            throw Refused()
        }) { XCTAssertTrue($0 is Refused, "\($0)") }
        // A folder that does not exist: one error naming the file.
        for path in ["no/such/c.png", "no/such/c.tif"].map({ dir.appendingPathComponent($0).path }) {
            XCTAssertThrowsError(try path.hasSuffix(".png")
                ? PNGFile.write(path: path, width: 3, height: 2, channels: 3, pixels: rgb)
                : FloatTIFF.write(path: path, width: 2, height: 2, values: [0, 1, 2, 3])) { error in
                XCTAssertTrue("\(error)".hasPrefix(path + ": "), "\(error)")
            }
        }
        XCTAssertEqual(try contents(), ["a.png", "a.tif"], "nothing left behind")
    }
}
