import Foundation
import ResNetFormats
import ResNetModel
import TestSupport
import XCTest

/// export → import round trips, checked against ONNX Runtime's logits for the source file.
final class ONNXExporterTests: XCTestCase {
    func temporaryFile(_ name: String) throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("onnx-export-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url.appendingPathComponent(name).path
    }

    /// ts_unfolded (real BatchNorm statistics) → export (folded) → import: still ONNX Runtime's logits.
    func testRoundTripKeepsLogitsAtEveryOpsetBoundary() throws {
        let source = try ONNXImporter.importModel(path: ONNXFixtures.path("ts_unfolded.onnx"), options: ImportOptions())
        let expected = try ONNXFixtures.floats("ts_unfolded.logits.f32")
        for opset in [9, 17, 21] {
            let path = try temporaryFile("model.onnx")
            try ONNXExporter.export(source.checkpoint, to: path, opset: opset)
            let back = try ONNXImporter.importModel(path: path, options: ImportOptions())
            XCTAssertEqual(back.sourceFormat, "ONNX (opset \(opset))")
            XCTAssertEqual(back.producer, "resnetkit 0.1.0")
            XCTAssertTrue(back.batchNormFolded)
            XCTAssertEqual(back.checkpoint.config.numClasses, 3)
            let error = relativeError(try ONNXFixtures.logits(back.checkpoint), expected)
            XCTAssertLessThan(error, 1e-4, "opset \(opset): relative error vs ONNX Runtime \(error)")
        }
    }

    /// Class names and preprocessing travel in metadata_props and come back on import.
    func testClassNamesAndPreprocessingSurviveTheRoundTrip() throws {
        var checkpoint = try ONNXImporter.importModel(path: ONNXFixtures.path("ts_unfolded.onnx"), options: ImportOptions()).checkpoint
        checkpoint.classNames = ["normal", "tumour, \"suspect\"", "other"]
        checkpoint.preprocessing = Preprocessing(crop: 49, normalization: .none, channelOrder: .bgr)
        let path = try temporaryFile("model.onnx")
        try ONNXExporter.export(checkpoint, to: path)
        let back = try ONNXImporter.importModel(path: path, options: ImportOptions()).checkpoint
        XCTAssertEqual(back.classNames, ["normal", "tumour, \"suspect\"", "other"])
        XCTAssertEqual(back.preprocessing, Preprocessing(crop: 49, normalization: .none, channelOrder: .bgr))
    }

    func testRefusesUnsupportedOpsetWithoutWriting() throws {
        let source = try ONNXImporter.importModel(path: ONNXFixtures.path("ts_unfolded.onnx"), options: ImportOptions())
        let path = try temporaryFile("model.onnx")
        ONNXFixtures.assertFileError(path, contains: "opset 8 is not supported (use 9…21)") {
            try ONNXExporter.export(source.checkpoint, to: path, opset: 8)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
    }
}
