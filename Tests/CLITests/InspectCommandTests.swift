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
