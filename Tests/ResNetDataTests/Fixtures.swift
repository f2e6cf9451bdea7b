import Foundation
import TestSupport
import XCTest

/// The repository's `fixtures/` folder and the pixel formulas `tools/make_tiff_fixtures.py` wrote.
enum Fixtures {
    static let directory = TestPaths.fixtures

    static func tiff(_ name: String) -> String { directory.appendingPathComponent("tiff/\(name)").path }

    /// The 8-bit pattern at column x, row y, channel c, as 0...1.
    static func pattern8(_ x: Int, _ y: Int, _ c: Int) -> Float { Float((x * 37 + y * 11 + c * 71) % 256) / 255 }
    static func pattern16(_ x: Int, _ y: Int, _ c: Int) -> Float { Float((x * 3001 + y * 517 + c * 12345) % 65536) / 65535 }
    static func smooth8(_ x: Int, _ y: Int, _ c: Int) -> Float { Float(x * 4 + y * 4 + c * 30) / 255 }

    static func temporaryDirectory(_ test: XCTestCase) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("resnetdata-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }
}
