import Foundation
import ResNetFormats
import ResNetModel
import TestSupport
import XCTest

/// Every export variant's imported logits against ONNX Runtime's on the same input (tools/make_onnx_fixtures.py).
final class ONNXImporterTests: XCTestCase {
    func importVariant(_ name: String, classes: Int, width: Int, folded: Bool, file: StaticString = #filePath,
                       line: UInt = #line) throws -> ImportedModel {
        let imported = try ONNXImporter.importModel(path: ONNXFixtures.path("\(name).onnx"), options: ImportOptions())
        XCTAssertEqual(imported.checkpoint.config.numClasses, classes, file: file, line: line)
        XCTAssertEqual(imported.checkpoint.config.baseWidth, width, file: file, line: line)
        XCTAssertEqual(imported.batchNormFolded, folded, file: file, line: line)
        let got = try ONNXFixtures.logits(imported.checkpoint)
        let expected = try ONNXFixtures.floats("\(name).logits.f32")
        let error = relativeError(got, expected)
        XCTAssertLessThan(error, 1e-4, "\(name): relative error \(error)", file: file, line: line)
        return imported
    }

    func testTorchScriptFoldedExport() throws {
        let imported = try importVariant("ts_folded", classes: 5, width: 8, folded: true)
        XCTAssertEqual(imported.sourceFormat, "ONNX (opset 17)")
        XCTAssertEqual(imported.producer, "pytorch 2.15.0")
        XCTAssertTrue(imported.notes.joined().contains("synthetic"), imported.notes.joined())
    }

    func testTorchScriptUnfoldedExportKeepsBatchNorm() throws {
        let imported = try importVariant("ts_unfolded", classes: 3, width: 4, folded: false)
        XCTAssertEqual(imported.sourceFormat, "ONNX (opset 11)")
        XCTAssertTrue(imported.notes.isEmpty)
        // The file's BatchNorm statistics are kept as they are (made non-trivial by the fixture script).
        let variance = try XCTUnwrap(imported.checkpoint.state["layer3.1.bn2.running_var"]).data
        XCTAssertTrue(variance.allSatisfy { $0 >= 0.5 && $0 < 1.5 }, "\(variance)")
    }

    func testDynamoExportWithExternalData() throws {
        let imported = try importVariant("dynamo", classes: 7, width: 4, folded: true)
        XCTAssertEqual(imported.sourceFormat, "ONNX (opset 20)")
    }

    func testOpset9TypedFieldsConstantsFloat16AndFloat64() throws {
        _ = try importVariant("opset9_typed", classes: 4, width: 4, folded: true)
    }

    func testMXNetStyleNames() throws {
        let imported = try importVariant("mxnet_style", classes: 6, width: 4, folded: false)
        XCTAssertEqual(imported.producer, "MXNet-style fixture 1.0")
    }

    func testReduceMeanIdentityAndMatMulAddHead() throws {
        _ = try importVariant("head_variants", classes: 3, width: 4, folded: false)
    }

    /// The full-size reference export against PyTorch's logits.
    func testReferenceResNet18MatchesPyTorch() throws {
        let path = ONNXFixtures.reference.appendingPathComponent("resnet18.onnx").path
        let imported = try ONNXImporter.importModel(path: path, options: ImportOptions())
        XCTAssertEqual(imported.checkpoint.config, ModelConfig(numClasses: 1000, baseWidth: 64))
        XCTAssertTrue(imported.batchNormFolded)
        let plan = try InferencePlan(architecture: imported.checkpoint.architecture, state: imported.checkpoint.state)
        let input = nhwc(fromNCHW: try readFloats(ONNXFixtures.reference.appendingPathComponent("input_4x3x96x96.f32")),
                         batch: 4, channels: 3, height: 96, width: 96)
        let got = plan.run(images: input, count: 4, height: 96, width: 96)
        let expected = try readFloats(ONNXFixtures.reference.appendingPathComponent("logits_4x1000_from_96.f32"))
        let error = relativeError(got, expected)
        XCTAssertLessThan(error, 1e-4, "relative error vs PyTorch \(error)")
    }
}
