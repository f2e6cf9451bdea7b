import Foundation
import ResNetFormats
import ResNetModel
import ResNetSupport
import TestSupport
import XCTest

/// fixtures/keras3 (tools/make_keras3_fixtures.py, Keras 3 on the torch backend): Keras' own logits on the inputs
/// of fixtures/pth at 96x96 and 49x49.
final class Keras3ImporterTests: XCTestCase {
    static let directory = TestPaths.fixtures.appendingPathComponent("keras3")
    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    func logitsError(_ checkpoint: Checkpoint, _ logits: String) throws -> Float {
        let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
        var worst: Float = 0
        for side in [96, 49] {
            let input = try readFloats(PyTorchFixtures.directory.appendingPathComponent("input_2x3x\(side)x\(side).f32"))
            let got = plan.run(images: nhwc(fromNCHW: input, batch: 2, channels: 3, height: side, width: side), count: 2, height: side, width: side)
            worst = max(worst, relativeError(got, try readFloats(Self.directory.appendingPathComponent("\(logits).logits\(side).f32"))))
        }
        return worst
    }

    func testBareWeightsFileMapsByStructure() throws {
        let path = Self.path("linear.weights.h5")
        XCTAssertEqual(try ModelFileKind.detect(path: path), .hdf5)
        let imported = try ModelImporter.load(path: path)
        XCTAssertEqual(imported.sourceFormat, "HDF5 (Keras 3 .weights.h5)")
        XCTAssertEqual(imported.checkpoint.config, ModelConfig(numClasses: 3, head: .linear, baseWidth: 2, batchNormEpsilon: 1e-3))
        XCTAssertTrue(imported.notes.contains { $0.hasPrefix("Keras 3 weights without a config") }, "\(imported.notes)")
        let error = try logitsError(imported.checkpoint, "linear")
        XCTAssertLessThan(error, 1e-4, "relative error \(error)")
    }

    func testKerasArchiveWithTheMLPHead() throws {
        let path = Self.path("mlp.keras")
        XCTAssertEqual(try ModelFileKind.detect(path: path), .keras)
        let imported = try ModelImporter.load(path: path)
        XCTAssertEqual(imported.sourceFormat, "Keras 3 (.keras)")
        XCTAssertEqual(imported.checkpoint.config, ModelConfig(numClasses: 2, head: .mlp, hiddenUnits: 8, baseWidth: 2, batchNormEpsilon: 1e-3))
        XCTAssertTrue(imported.notes.contains { $0.contains("each paired with the BatchNormalization it feeds in the model_config graph") }, "\(imported.notes)")
        let error = try logitsError(imported.checkpoint, "mlp")
        XCTAssertLessThan(error, 1e-4, "relative error \(error)")
    }

    /// padding='same' at stride 2 (the stem, the max pool, every stride-2 3x3 and 1x1): TensorFlow pads 96x96 inputs
    /// one pixel more at the bottom and right, 49x49 ones symmetrically; the .keras archive and the legacy .h5
    /// (model_config) both say so, and the logits are Keras' at both sizes.
    func testSamePaddingAtStrideTwoComputesWhatKerasComputes() throws {
        let expected: Set<String> = ["conv1", "maxpool", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
        for file in ["same.keras", "same.h5"] {
            let imported = try ModelImporter.load(path: Self.path(file))
            XCTAssertEqual(imported.checkpoint.config.samePadding, expected, file)
            XCTAssertTrue(imported.notes.contains { $0.contains("padding='same' at stride 2") }, "\(imported.notes)")
            let error = try logitsError(imported.checkpoint, "same")
            XCTAssertLessThan(error, 1e-4, "\(file): relative error \(error)")
            // Read as if the file said nothing about padding, the 96x96 logits are far off: the test can fail.
            var symmetric = imported.checkpoint
            symmetric.config.samePadding = []
            XCTAssertGreaterThan(try logitsError(symmetric, "same"), 1e-2, file)
        }
    }

    /// The rule travels in the checkpoint, so every command applies it at any input size; training's layers
    /// compute the same as the plan.
    func testSamePaddingSurvivesTheCheckpointAndTraining() throws {
        let imported = try ModelImporter.load(path: Self.path("same.keras"))
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("same-\(UUID().uuidString).safetensors").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try imported.checkpoint.save(path: path)
        let loaded = try Checkpoint.load(path: path)
        XCTAssertEqual(loaded.config.samePadding, imported.checkpoint.config.samePadding)
        XCTAssertLessThan(try logitsError(loaded, "same"), 1e-4)
        let model = try TrainableResNet(architecture: loaded.architecture, state: loaded.state)
        let plan = try InferencePlan(architecture: loaded.architecture, state: loaded.state)
        var rng = SplitMix64(seed: 4)
        let images = (0..<(2 * 64 * 66 * 3)).map { _ in rng.nextUnitFloat() }
        let trained = model.forward(images: images, count: 2, height: 64, width: 66, training: false)
        XCTAssertLessThan(relativeError(trained, plan.run(images: images, count: 2, height: 64, width: 66)), 1e-5)
    }

    /// The same model as ONNX: explicit asymmetric pads for a fixed 96x96 input (what converters from Keras
    /// write; tools/make_same_padding_onnx.py, checked with ONNX Runtime) are recognised as TensorFlow's rule, which
    /// then holds at 49x49 too; export-onnx writes auto_pad = SAME_UPPER, and reading it back changes nothing.
    func testSamePaddingThroughONNX() throws {
        let expected: Set<String> = ["conv1", "maxpool", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
        let explicit = try ModelImporter.load(path: Self.path("same_pads96.onnx"))
        XCTAssertEqual(explicit.checkpoint.config.samePadding, expected)
        XCTAssertLessThan(try logitsError(explicit.checkpoint, "same"), 1e-4)

        let keras = try ModelImporter.load(path: Self.path("same.keras")).checkpoint
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("same-\(UUID().uuidString).onnx").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try ONNXExporter.export(keras, to: path)
        let roundTrip = try ModelImporter.load(path: path).checkpoint
        XCTAssertEqual(roundTrip.config.samePadding, expected)
        XCTAssertLessThan(try logitsError(roundTrip, "same"), 1e-4)
    }

    func testDamagedKerasArchiveGivesOneLine() throws {
        let original = try Data(contentsOf: URL(fileURLWithPath: Self.path("mlp.keras")))
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("damaged-\(UUID().uuidString).keras").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        for cut in [original.count / 2, original.count - 100] {
            try original.prefix(cut).write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try ModelImporter.load(path: path)) { error in
                guard let fileError = error as? FileError else { return XCTFail("\(error)") }
                XCTAssertEqual(fileError.path, path)
                XCTAssertFalse(fileError.description.contains("\n"), "\(fileError)")
            }
        }
    }
}
