import Foundation
import ResNetFormats
import ResNetModel
import TestSupport
import XCTest

/// fixtures/onnx (made by tools/make_onnx_fixtures.py) and ../shared/reference, found from this file's path.
enum ONNXFixtures {
    static let directory = TestPaths.fixtures.appendingPathComponent("onnx")
    static let reference = TestPaths.reference

    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    static func floats(_ name: String) throws -> [Float] { try readFloats(directory.appendingPathComponent(name)) }

    /// The committed input batch, NHWC [2, 64, 64, 3].
    static func input() throws -> [Float] {
        nhwc(fromNCHW: try floats("input_2x3x64x64.f32"), batch: 2, channels: 3, height: 64, width: 64)
    }

    /// Logits of a checkpoint on the committed input, through the fused eval-mode plan.
    static func logits(_ checkpoint: Checkpoint) throws -> [Float] {
        let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
        return plan.run(images: try input(), count: 2, height: 64, width: 64)
    }

    /// Asserts that `body` throws a one-line `path: problem` error (FileError) whose problem contains `fragment`.
    static func assertFileError(_ path: String, contains fragment: String, file: StaticString = #filePath, line: UInt = #line,
                         _ body: () throws -> Void) {
        do {
            try body()
            XCTFail("expected an error containing '\(fragment)'", file: file, line: line)
        } catch {
            let message = String(describing: error)
            XCTAssertEqual(String(describing: type(of: error)), "FileError", message, file: file, line: line)
            XCTAssertTrue(message.hasPrefix(path + ": "), message, file: file, line: line)
            XCTAssertTrue(message.dropFirst(path.count + 2).contains(fragment), message, file: file, line: line)
            XCTAssertFalse(message.contains("\n"), "one line: \(message)", file: file, line: line)
        }
    }
}
