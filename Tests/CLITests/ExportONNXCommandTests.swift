import Foundation
import ResNetFormats
import ResNetModel
import XCTest

final class ExportONNXCommandTests: XCTestCase {
    /// The reference checkpoint exported by the command, read back: PyTorch's logits for the reference input.
    func testExportedReferenceModelGivesPyTorchLogits() throws {
        let out = try CLI.temporaryDirectory(self).appendingPathComponent("resnet18.onnx").path
        let result = try CLI.run(["export-onnx", CLI.reference.appendingPathComponent("resnet18.safetensors").path,
                                  "--out", out, "--opset", "13", "--quiet"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stderr, "")
        let imported = try ModelImporter.load(path: out)
        XCTAssertEqual(imported.sourceFormat, "ONNX (opset 13)")
        let plan = try InferencePlan(architecture: imported.checkpoint.architecture, state: imported.checkpoint.state)
        let nchw = try Data(contentsOf: CLI.reference.appendingPathComponent("input_4x3x49x49.f32"))
            .withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        let expected = try Data(contentsOf: CLI.reference.appendingPathComponent("logits_4x1000_from_49.f32"))
            .withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        let got = plan.run(images: nhwc(fromNCHW: nchw, batch: 4, channels: 3, height: 49, width: 49), count: 4, height: 49, width: 49)
        let diff = zip(got, expected).map { abs($0 - $1) }.max() ?? .infinity
        let scale = expected.map { abs($0) }.max() ?? 0
        XCTAssertLessThan(diff / scale, 1e-4)
    }

    func testRejectsOpsetOutOfRange() throws {
        let out = try CLI.temporaryDirectory(self).appendingPathComponent("model.onnx")
        let result = try CLI.run(["export-onnx", CLI.reference.appendingPathComponent("resnet18.safetensors").path,
                                  "--out", out.path, "--opset", "22"])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.contains("--opset must be between 9 and 21"), result.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.path))
    }

    func testNamesAMissingCheckpoint() throws {
        let out = try CLI.temporaryDirectory(self).appendingPathComponent("model.onnx")
        let result = try CLI.run(["export-onnx", "/nonexistent/model.safetensors", "--out", out.path])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.contains("/nonexistent/model.safetensors: no such file"), result.stderr)
    }
}
