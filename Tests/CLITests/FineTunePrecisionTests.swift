import Foundation
import ResNetFormats
import XCTest

/// fine-tune --precision: bf16 trains both phases (the whole model's backward through oneDNN's lanes included)
/// and records its precision, across a --resume too; other values are refused in one line; where bf16 is emulated,
/// the commands warn that fp32 is faster.
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
        let inspect = try CLI.run(["inspect", out.path])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("Training:      fine-tune in bf16 (convolutions in bf16, weights stored fp32); finished after phase 2 epoch 1\n"), inspect.stdout)
        XCTAssertTrue(inspect.stdout.contains("Weights:       phase 2 epoch 1, val_loss "), inspect.stdout)

        let refused = try CLI.run(arguments + ["--precision", "int8", "--force"])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("--precision must be fp32 or bf16, not 'int8'"), refused.stderr)

        // RESNETKIT_WINOGRAD as the inference commands take it: off trains, anything but auto/off is refused in
        // one line before anything is written.
        let off = dir.appendingPathComponent("off.safetensors")
        let withoutWinograd = try CLI.run(["fine-tune", Self.images.path, "--labels", labels.path, "--from", Self.model, "--out", off.path,
                                           "--batch-size", "4", "--valid-fraction", "0.25", "--seed", "3", "--head-epochs", "1",
                                           "--finetune-epochs", "0", "--precision", "bf16", "--quiet"],
                                          environment: ["RESNETKIT_WINOGRAD": "off", "RESNETKIT_LOG": "debug"])
        XCTAssertEqual(withoutWinograd.status, 0, withoutWinograd.stderr)
        // The debug log names each convolution's kernels, training and forward only; none Winograd here.
        XCTAssertTrue(withoutWinograd.stderr.contains("oneDNN layer1.0.conv1 3x3/1 "), withoutWinograd.stderr)
        XCTAssertTrue(withoutWinograd.stderr.contains("forward only by taps, packed weight"), withoutWinograd.stderr)
        XCTAssertFalse(withoutWinograd.stderr.contains("winograd"), withoutWinograd.stderr)
        let bad = dir.appendingPathComponent("bad.safetensors")
        let badValue = try CLI.run(["fine-tune", Self.images.path, "--labels", labels.path, "--from", Self.model, "--out", bad.path,
                                    "--batch-size", "4", "--precision", "bf16", "--quiet"], environment: ["RESNETKIT_WINOGRAD": "fast"])
        XCTAssertEqual(badValue.status, 1, badValue.stderr)
        XCTAssertEqual(badValue.stderr, "error: RESNETKIT_WINOGRAD is 'fast': use auto or off\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: bad.path), "nothing written")
    }

    /// A resume may change --precision (a run moved to another CPU): it says so, and the checkpoint records both
    /// arithmetics in order; resumed in the same one, the record stays as it was.
    func testAResumeInAnotherPrecisionIsSaidAndRecorded() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = URL(fileURLWithPath: try writeAlternatingLabels(dir))
        let out = dir.appendingPathComponent("run.safetensors")
        func arguments(_ out: URL, finetuneEpochs: Int) -> [String] {
            ["fine-tune", Self.images.path, "--labels", labels.path, "--from", Self.model, "--out", out.path, "--batch-size", "4",
             "--valid-fraction", "0.25", "--seed", "3", "--head-epochs", "1", "--finetune-epochs", "\(finetuneEpochs)"]
        }
        let first = try CLI.run(arguments(out, finetuneEpochs: 0) + ["--precision", "bf16"])
        XCTAssertEqual(first.status, 0, first.stderr)
        // As a run stopped between its phases leaves it: the head phase done, one fine-tune epoch to go.
        var checkpoint = try Checkpoint.load(path: out.path)
        let record = try XCTUnwrap(checkpoint.extra["resnetkit.fine-tune"])
        checkpoint.extra["resnetkit.fine-tune"] = record.replacingOccurrences(of: "\"finished\":true", with: "\"finished\":false")
            .replacingOccurrences(of: "fine-tune epochs 0", with: "fine-tune epochs 1")
        XCTAssertNotEqual(checkpoint.extra["resnetkit.fine-tune"], record)
        try checkpoint.save(path: out.path)
        let same = dir.appendingPathComponent("same.safetensors")
        try FileManager.default.copyItem(at: out, to: same)

        let resumed = try CLI.run(arguments(out, finetuneEpochs: 1) + ["--resume", "--precision", "fp32"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stderr.contains("warning: --resume: \(out.path) was trained in bf16 so far; its remaining epochs run in fp32 (--precision)\n"),
                      resumed.stderr)
        XCTAssertEqual(try Checkpoint.load(path: out.path).extra["resnetkit.training-precision"], "bf16,fp32")
        let inspect = try CLI.run(["inspect", out.path])
        XCTAssertTrue(inspect.stdout.contains("Training:      fine-tune in bf16, then fp32 (--precision changed at a --resume; weights stored fp32); finished after phase 2 epoch 1\n"),
                      inspect.stdout)

        let kept = try CLI.run(arguments(same, finetuneEpochs: 1) + ["--resume", "--precision", "bf16"])
        XCTAssertEqual(kept.status, 0, kept.stderr)
        XCTAssertFalse(kept.stderr.contains("warning"), kept.stderr)
        XCTAssertEqual(try Checkpoint.load(path: same.path).extra["resnetkit.training-precision"], "bf16")
    }

    /// oneDNN limited to AVX-512 without AVX512_BF16 (Skylake-X, Cascade Lake, Ice Lake): bf16 still runs (emulated)
    /// but slower than fp32, which a warning says before the work, for inference and for training; not for fp32.
    func testEmulatedBF16IsNamedSlowerThanFP32() throws {
        let dir = try CLI.temporaryDirectory(self)
        let avx512 = ["ONEDNN_MAX_CPU_ISA": "AVX512_CORE"]
        let warning = "warning: bf16 is emulated on this CPU (oneDNN reports avx512_core: no AVX512_BF16 or AMX) and runs at a third to a half of fp32's speed; --precision fp32 is faster here, and exact\n"
        let inference = try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("p.csv").path,
                                     "--model", Self.model, "--precision", "bf16", "--quiet"], environment: avx512)
        XCTAssertEqual(inference.status, 0, inference.stderr)
        XCTAssertEqual(inference.stderr, warning)
        let exact = try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("q.csv").path,
                                 "--model", Self.model, "--quiet"], environment: avx512)
        XCTAssertEqual(exact.status, 0, exact.stderr)
        XCTAssertEqual(exact.stderr, "")
        let labels = try writeAlternatingLabels(dir)
        let training = try CLI.run(["fine-tune", Self.images.path, "--labels", labels, "--from", Self.model,
                                    "--out", dir.appendingPathComponent("t.safetensors").path, "--batch-size", "4", "--head-epochs", "1",
                                    "--finetune-epochs", "0", "--precision", "bf16", "--quiet"], environment: avx512)
        XCTAssertEqual(training.status, 0, training.stderr)
        XCTAssertTrue(training.stderr.contains(warning), training.stderr)
        let emulated = "bf16:              emulated, slower than fp32 on this CPU (no AVX512_BF16 or AMX)\n"
        XCTAssertTrue(try CLI.run(["system"], environment: avx512).stdout.contains(emulated))
        XCTAssertFalse(try CLI.run(["system"], environment: ["ONEDNN_MAX_CPU_ISA": "AVX2"]).stdout.contains("bf16:"))
    }
}
