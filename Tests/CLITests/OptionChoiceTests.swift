import XCTest

/// Options whose value is one of a few names: --help lists the names, and any other value is refused in one line
/// that names the option and its choices (status 1, nothing read or written).
final class OptionChoiceTests: XCTestCase {
    /// The help text with its line wrapping undone.
    func help(_ command: String) throws -> String {
        let result = try CLI.run([command, "--help"])
        XCTAssertEqual(result.status, 0, result.stderr)
        return result.stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
    }

    func testHelpListsTheChoices() throws {
        let preprocessing = ["--normalize <imagenet|none>", "(values: imagenet, none)", "--channel-order <rgb|bgr>", "(values: rgb, bgr)"]
        for command in ["batch-infer", "fine-tune", "find-lr", "infer-slide", "explain"] {
            let text = try help(command)
            for expected in preprocessing + ["--crop <crop>"] { XCTAssertTrue(text.contains(expected), "\(command): \(expected) in \(text)") }
        }
        let batchInfer = try help("batch-infer")
        XCTAssertTrue(batchInfer.contains("(values: logits, kaggle; default: logits)"), batchInfer)
        XCTAssertTrue(batchInfer.contains("(values: fp32, bf16, int8; default: fp32)"), batchInfer)
        XCTAssertTrue(try help("evaluate").contains("(values: fp32, bf16, int8; default: fp32)"))
        let fineTune = try help("fine-tune")
        XCTAssertTrue(fineTune.contains("(values: linear, mlp; default: mlp)"), fineTune)
        XCTAssertTrue(fineTune.contains("(values: train, eval; default: train)"), fineTune)
        XCTAssertTrue(try help("infer-slide").contains("(values: auto, none; default: auto)"))
        XCTAssertTrue(try help("quantize").contains("(values: max, percentile; default: max)"))
    }

    func testOtherValuesAreRefusedInOneLine() throws {
        let cases: [([String], String)] = [
            (["explain", "x.tif", "--model", "m.safetensors", "--out", "cams", "--channel-order", "grb"],
             "error: The value 'grb' is invalid for '--channel-order <rgb|bgr>'. Please provide one of 'rgb' and 'bgr'.\n"),
            (["fine-tune", "train", "--labels", "labels.csv", "--head", "deep"],
             "error: The value 'deep' is invalid for '--head <mlp|linear>'. Please provide one of 'linear' and 'mlp'.\n"),
            (["find-lr", "train", "--labels", "labels.csv", "--normalize", "zscore"],
             "error: The value 'zscore' is invalid for '--normalize <imagenet|none>'. Please provide one of 'imagenet' and 'none'.\n"),
            (["quantize", "m.safetensors", "--calibrate", "images", "--method", "mean"],
             "error: The value 'mean' is invalid for '--method <max|percentile>'. Please provide one of 'max' and 'percentile'.\n"),
        ]
        for (arguments, message) in cases {
            let result = try CLI.run(arguments)
            XCTAssertEqual(result.status, 1, "\(arguments): \(result.stderr)")
            XCTAssertEqual(result.stderr, message, "\(arguments)")
        }
    }

    /// Checks that need no file run before any file is looked at, with the same one-line message as before.
    func testChecksRunBeforeFilesAreRead() throws {
        let result = try CLI.run(["fine-tune", "/nonexistent", "--labels", "/nonexistent.csv", "--crop", "16"])
        XCTAssertEqual(result.status, 1, result.stderr)
        XCTAssertEqual(result.stderr, "error: --crop must be 0 (none) or at least 32, the network's smallest input\n")
    }
}
