import Foundation
import ResNetFormats
import ResNetModel
import TestSupport
import XCTest

/// PyTorch checkpoints through the commands: detected by content whatever their name.
final class PyTorchCommandTests: XCTestCase, UsesDefaultFixtures {
    static func fixture(_ name: String) -> String { fixtures.appendingPathComponent("pth/\(name)").path }

    func testImportWeightsReadsTheSeedNotebooksCheckpoint() throws {
        let folder = try CLI.temporaryDirectory(self)
        let result = try CLI.run(["import-weights", Self.fixture("seed_sequential.pth"), "--classes", "benign,tumor"], currentDirectory: folder)
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("Format:     PyTorch (torch.save zip format)"), result.stdout)
        XCTAssertTrue(result.stdout.contains("Model:      ResNet-18, base width 2, mlp head, 2 classes"), result.stdout)
        let checkpoint = try Checkpoint.load(path: folder.appendingPathComponent("model.safetensors").path)
        XCTAssertEqual(checkpoint.classNames, ["benign", "tumor"])
        XCTAssertEqual(checkpoint.provenance.producer, "import-weights (PyTorch (torch.save zip format))")
        XCTAssertTrue(checkpoint.provenance.notes.contains { $0.contains("the seed notebook's nn.Sequential layout") }, "\(checkpoint.provenance.notes)")
        let input = try readFloats(Self.fixtures.appendingPathComponent("pth/input_2x3x49x49.f32"))
        let got = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
            .run(images: nhwc(fromNCHW: input, batch: 2, channels: 3, height: 49, width: 49), count: 2, height: 49, width: 49)
        XCTAssertLessThan(relativeError(got, try readFloats(Self.fixtures.appendingPathComponent("pth/seed.logits49.f32"))), 1e-4)
    }

    func testBatchInferTakesATrainingCheckpointDirectly() throws {
        let folder = try CLI.temporaryDirectory(self)
        let out = folder.appendingPathComponent("preds.csv").path
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", out, "--model", Self.fixture("checkpoint.tar"), "--quiet"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let rows = try String(contentsOfFile: out, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(rows.first, "id,logit_0,logit_1,logit_2,label")
        XCTAssertEqual(rows.count, 1 + Self.imageIDs.count)
    }

    func testHostileCheckpointIsRefusedWithOneLineAndNothingRuns() throws {
        let marker = "/tmp/resnetkit-hostile-pickle-ran"
        try? FileManager.default.removeItem(atPath: marker)
        let folder = try CLI.temporaryDirectory(self)
        let result = try CLI.run(["import-weights", Self.fixture("hostile_os_system.pth")], currentDirectory: folder)
        XCTAssertEqual(result.status, 1)
        XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, result.stderr)
        XCTAssertTrue(result.stderr.contains("the pickle calls posix.system, which is not on the allowlist"), result.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker))
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder.appendingPathComponent("model.safetensors").path))
    }
}
