import Foundation
import ResNetFormats
import XCTest

/// fine-tune --precision: bf16 trains both phases (the whole model's backward through oneDNN's lanes included)
/// and records its precision; other values are refused in one line.
final class FineTunePrecisionTests: XCTestCase, UsesDefaultFixtures {
    func testBF16TrainsBothPhasesAndRecordsItsPrecision() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = URL(fileURLWithPath: try writeAlternatingLabels(dir))
        let out = dir.appendingPathComponent("bf16.safetensors")
        let arguments = ["fine-tune", Self.images.path, "--labels", labels.path, "--from", Self.model, "--out", out.path,
                         "--batch-size", "4", "--valid-fraction", "0.25", "--seed", "3", "--head-epochs", "1", "--finetune-epochs", "1"]
        let result = try CLI.run(arguments + ["--precision", "bf16"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stderr.contains("phase 2 (fine-tune)"), result.stderr)
        XCTAssertEqual(try Checkpoint.load(path: out.path).extra["resnetkit.training-precision"], "bf16")

        let refused = try CLI.run(arguments + ["--precision", "int8", "--force"])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("--precision must be fp32 or bf16, not 'int8'"), refused.stderr)
    }
}
