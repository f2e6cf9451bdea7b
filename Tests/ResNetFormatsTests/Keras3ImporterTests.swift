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
