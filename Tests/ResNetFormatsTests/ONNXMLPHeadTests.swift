import Foundation
import ResNetFormats
import ResNetModel
import ResNetSupport
import TestSupport
import XCTest

/// The seed notebook's model as ONNX (fixtures/pth, tools/make_pth_fixtures.py): its MLP head imports as the MLP
/// head, from torch.onnx.export and through export-onnx and back.
final class ONNXMLPHeadTests: XCTestCase {
    static let seed = ModelConfig(numClasses: 2, head: .mlp, hiddenUnits: 8, baseWidth: 2)

    func testTorchOnnxExportsOfTheSeedModelMatchPyTorch() throws {
        // TorchScript exporter (Gemm, BatchNormalization on 2-D input), dynamo exporter (ReduceMean, Reshape), MatMul + Add.
        for file in ["seed_torchscript.onnx", "seed_dynamo.onnx", "seed_matmul.onnx"] {
            let imported = try ONNXImporter.importModel(path: PyTorchFixtures.path(file), options: ImportOptions())
            XCTAssertEqual(imported.checkpoint.config, Self.seed, file)
            XCTAssertTrue(imported.notes.contains { $0.hasPrefix("the seed's MLP head (") && !$0.contains("identity") }, "\(file): \(imported.notes)")
            let error = try PyTorchFixtures.logitsError(imported.checkpoint, "seed")
            XCTAssertLessThan(error, 1e-4, "\(file): relative error \(error)")
        }
    }

    func testExportOnnxRoundTripKeepsTheMLPHead() throws {
        let original = try ModelImporter.load(path: PyTorchFixtures.path("seed_sequential.pth")).checkpoint
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("mlp-onnx-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("seed.onnx").path
        try ONNXExporter.export(original, to: path)
        let imported = try ONNXImporter.importModel(path: path, options: ImportOptions())
        XCTAssertEqual(imported.checkpoint.config, Self.seed)
        XCTAssertTrue(imported.notes.contains { $0.contains("no BatchNorm1d before fc1 and before fc2 (folded into the Linear layers in the file)") },
                      "\(imported.notes)")
        for side in [96, 49] {
            let input = try readFloats(PyTorchFixtures.directory.appendingPathComponent("input_2x3x\(side)x\(side).f32"))
            let images = nhwc(fromNCHW: input, batch: 2, channels: 3, height: side, width: side)
            let before = try InferencePlan(architecture: original.architecture, state: original.state).run(images: images, count: 2, height: side, width: side)
            let after = try InferencePlan(architecture: imported.checkpoint.architecture, state: imported.checkpoint.state)
                .run(images: images, count: 2, height: side, width: side)
            XCTAssertLessThan(relativeError(after, before), 1e-6, "\(side)x\(side)")
        }
        XCTAssertLessThan(try PyTorchFixtures.logitsError(imported.checkpoint, "seed"), 1e-4)
    }

    func testOtherTopologiesAreRefusedNamingWhatDiffers() {
        for (file, expected) in [
            ("bad_preactivation.onnx", "not torchvision's ResNet-18: pre-activation blocks: BatchNormalization '/layer1/layer1.0/bn1/BatchNormalization' and a Relu come before the convolutions of block 1 (ResNet v2)"),
            ("bad_input_batchnorm.onnx", "not torchvision's ResNet-18: an input BatchNormalization (BatchNormalization '/0/BatchNormalization') normalises the image before the stem convolution"),
        ] {
            let path = PyTorchFixtures.path(file)
            XCTAssertThrowsError(try ONNXImporter.importModel(path: path, options: ImportOptions())) { error in
                guard let fileError = error as? FileError else { return XCTFail("\(error)") }
                XCTAssertTrue(fileError.problem.hasPrefix(expected), fileError.problem)
                XCTAssertFalse(fileError.description.contains("\n"))
            }
        }
    }
}
