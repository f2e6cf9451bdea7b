import ResNetFormats
import XCTest

final class InspectCommandTests: XCTestCase {
    /// The seed's torchinfo summary for the 1000-class model at 16x3x49x49.
    func testInspectMatchesTorchinfoForSeedInput() throws {
        let result = try CLI.run(["inspect", CLI.reference.appendingPathComponent("resnet18.safetensors").path,
                                  "--input-size", "16x3x49x49"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("conv1 (Conv2d)                              [16, 64, 25, 25]"))
        XCTAssertTrue(result.stdout.contains("layer4.1 (BasicBlock)                       [16, 512, 2, 2]"))
        XCTAssertTrue(result.stdout.contains("fc (Linear)                                 [16, 1000]"))
        XCTAssertTrue(result.stdout.contains("Total params: 11,689,512"))
        XCTAssertTrue(result.stdout.contains("Total mult-adds (G): 1.99"))
    }

    /// ONNX files are read directly: the folded reference export gives the same table as its state dict.
    func testInspectReadsONNX() throws {
        let result = try CLI.run(["inspect", CLI.reference.appendingPathComponent("resnet18.onnx").path,
                                  "--input-size", "16x3x49x49"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("Format:        ONNX (opset 17), produced by pytorch"), result.stdout)
        XCTAssertTrue(result.stdout.contains("BatchNorm:     folded into the convolutions in the file"), result.stdout)
        XCTAssertTrue(result.stdout.contains("layer2.0.downsample.0 (Conv2d)"), result.stdout)
        XCTAssertTrue(result.stdout.contains("Total params: 11,689,512"))
        XCTAssertTrue(result.stdout.contains("Total mult-adds (G): 1.99"))
    }

    /// A checkpoint's records of how it was made: shown when they decode, named as unreadable when not (a file's
    /// metadata is not trusted), absent from files without them.
    func testInspectShowsTrainingRecords() throws {
        let dir = try CLI.temporaryDirectory(self)
        var checkpoint = try Checkpoint.load(path: CLI.repository.appendingPathComponent("fixtures/digits/model.safetensors").path)
        /// `inspect`'s output for the checkpoint as it now is, saved as `name`.
        func inspect(_ name: String) throws -> String {
            let path = dir.appendingPathComponent(name).path
            try checkpoint.save(path: path)
            let result = try CLI.run(["inspect", path])
            XCTAssertEqual(result.status, 0, result.stderr)
            return result.stdout
        }
        checkpoint.extra["resnetkit.fine-tune"] = #"{"epoch":3,"finished":false,"phase":0,"recipe":"seed 0"}"#
        checkpoint.extra["resnetkit.fine-tune.class-weights"] = "0.5,2.0"
        let shown = try inspect("partial.safetensors")
        XCTAssertTrue(shown.contains("Training:      fine-tune in fp32; stopped after phase 1 epoch 3 (fine-tune --resume continues it)\n"), shown)
        XCTAssertTrue(shown.contains("Class weights: 0.5, 2.0 (training loss)\n"), shown)

        checkpoint.extra["resnetkit.fine-tune"] = "{not json"
        checkpoint.extra["resnetkit.training-precision"] = "fp8\nerror: x"
        checkpoint.extra["int8_activation_ranges"] = "[1, 2]"
        checkpoint.extra["resnetkit.fine-tune.class-weights"] = "0.5,\nerror: x"
        let named = try inspect("broken.safetensors")
        XCTAssertTrue(named.contains("Training:      fine-tune in an unknown arithmetic ('fp8error: x'); its progress record (resnetkit.fine-tune) is unreadable\n"), named)
        XCTAssertTrue(named.contains("Class weights: unreadable (resnetkit.fine-tune.class-weights)\n"), named)
        XCTAssertTrue(named.contains("int8 ranges:   unreadable (int8_activation_ranges); rerun `resnetkit quantize`\n"), named)

        let plain = try CLI.run(["inspect", CLI.reference.appendingPathComponent("resnet18.safetensors").path])
        XCTAssertFalse(plain.stdout.contains("Training:") || plain.stdout.contains("int8 ranges:"), plain.stdout)
    }

    func testInspectRejectsBadInputSize() throws {
        let result = try CLI.run(["inspect", CLI.reference.appendingPathComponent("resnet18.safetensors").path,
                                  "--input-size", "16x3x8x8"])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.contains("--input-size"), result.stderr)
    }

    func testInspectNamesMissingFile() throws {
        let result = try CLI.run(["inspect", "/nonexistent/model.onnx"])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.contains("/nonexistent/model.onnx: no such file"), result.stderr)
    }
}
