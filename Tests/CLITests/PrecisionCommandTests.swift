import Foundation
import XCTest

/// `--precision bf16|int8` and `resnetkit quantize` on a trained model (fixtures/digits, made by
/// tools/make_digits_fixture.py) against PyTorch's fp32 logits, and the one-line refusals.
final class PrecisionCommandTests: XCTestCase {
    static let digits = CLI.repository.appendingPathComponent("fixtures/digits")
    static let images = digits.appendingPathComponent("images")
    static let model = digits.appendingPathComponent("model.safetensors").path

    /// id → logits from a CSV whose rows are id,logit_0,…[,label].
    func logits(_ url: URL, dropLast: Bool) throws -> [String: [Float]] {
        let lines = try String(contentsOf: url, encoding: .utf8).split(separator: "\n").dropFirst()
        var table: [String: [Float]] = [:]
        for line in lines {
            let fields = line.split(separator: ",").map(String.init)
            table[fields[0]] = (dropLast ? fields.dropFirst().dropLast() : fields.dropFirst()).map { Float($0)! }
        }
        return table
    }

    /// batch-infer at `precision` (on `model`) against PyTorch: max |Δ| relative to the largest logit, and whether
    /// every label agrees.
    func errorAgainstPyTorch(_ precision: String, model: String) throws -> (error: Float, labelsAgree: Bool) {
        let dir = try CLI.temporaryDirectory(self)
        let out = dir.appendingPathComponent("preds.csv")
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", out.path, "--model", model,
                                  "--precision", precision, "--batch-size", "16", "--quiet"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let got = try logits(out, dropLast: true)
        let expected = try logits(Self.digits.appendingPathComponent("expected-logits.csv"), dropLast: false)
        XCTAssertEqual(Set(got.keys), Set(expected.keys))
        var difference: Float = 0, scale: Float = 0, agree = true
        for (id, e) in expected {
            guard let g = got[id], g.count == e.count else { return (.infinity, false) }
            for k in e.indices {
                difference = max(difference, abs(g[k] - e[k]))
                scale = max(scale, abs(e[k]))
            }
            if g.indices.max(by: { g[$0] < g[$1] }) != e.indices.max(by: { e[$0] < e[$1] }) { agree = false }
        }
        return (difference / scale, agree)
    }

    func testBF16MatchesPyTorch() throws {
        let (error, agree) = try errorAgainstPyTorch("bf16", model: Self.model)
        XCTAssertLessThan(error, 2e-2)
        XCTAssertGreaterThan(error, 1e-6, "bf16 gave fp32's logits")
        XCTAssertTrue(agree)
    }

    func testQuantizeThenInt8MatchesPyTorch() throws {
        let dir = try CLI.temporaryDirectory(self)
        let quantized = dir.appendingPathComponent("int8.safetensors").path
        let result = try CLI.run(["quantize", Self.model, "--calibrate", Self.images.path, "--out", quantized])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stderr.contains("max over 40 images"), result.stderr)
        let inspect = try CLI.run(["inspect", quantized])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("int8 ranges:   20 layers, max over 40 images"), inspect.stdout)
        let (error, agree) = try errorAgainstPyTorch("int8", model: quantized)
        XCTAssertLessThan(error, 5e-2)
        XCTAssertGreaterThan(error, 1e-4, "int8 gave fp32's logits")
        XCTAssertTrue(agree)
    }

    /// With a crop the engine is built for full batches before the first (while the decoders start);
    /// `RESNETKIT_LOG=debug` lists oneDNN's choices once either way (layer4's 3x3 on 2x2 as a dense layer), and the
    /// logits are those of the run without a crop (a 49 crop of 49x49 images is the whole image).
    func testDebugLogListsOneDNNChoicesOnce() throws {
        let dir = try CLI.temporaryDirectory(self)
        let cropped = dir.appendingPathComponent("cropped.csv"), whole = dir.appendingPathComponent("whole.csv")
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", cropped.path, "--model", Self.model,
                                  "--precision", "bf16", "--batch-size", "16", "--crop", "49"],
                                 environment: ["RESNETKIT_LOG": "debug"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stderr.components(separatedBy: "oneDNN 7x7/2 3→16: ").count - 1, 1, result.stderr)
        // Where bf16 is native (the debug line names the ISA), layer4 on 2x2 runs as a dense layer.
        if result.stderr.contains("ISA avx512_core_bf16") || result.stderr.contains("ISA avx512_core_amx") {
            XCTAssertTrue(result.stderr.contains("oneDNN 3x3/1 128→128 on 2x2 as dense: "), result.stderr)
        }
        let plain = try CLI.run(["batch-infer", Self.images.path, "--out", whole.path, "--model", Self.model,
                                 "--precision", "bf16", "--batch-size", "16", "--quiet"])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        XCTAssertEqual(try logits(cropped, dropLast: true), try logits(whole, dropLast: true))
    }

    /// bf16 runs layer1's 3x3 on 4x4 maps as Winograd where bf16 is native; RESNETKIT_WINOGRAD=off keeps oneDNN's
    /// convolutions (closer to PyTorch); any other value is refused in one line.
    func testWinogradCanBeTurnedOff() throws {
        let dir = try CLI.temporaryDirectory(self)
        func run(_ value: String?, _ name: String, debug: Bool = true) throws -> CLI.Result {
            var environment = debug ? ["RESNETKIT_LOG": "debug"] : [:]
            environment["RESNETKIT_WINOGRAD"] = value
            return try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent(name).path, "--model", Self.model,
                                "--precision", "bf16", "--batch-size", "16"] + (debug ? [] : ["--quiet"]), environment: environment)
        }
        let automatic = try run(nil, "auto.csv"), off = try run("off", "off.csv")
        XCTAssertEqual(automatic.status, 0, automatic.stderr)
        XCTAssertEqual(off.status, 0, off.stderr)
        if automatic.stderr.contains("ISA avx512_core_bf16") {
            XCTAssertTrue(automatic.stderr.contains(" as Winograd: "), automatic.stderr)
        }
        XCTAssertFalse(off.stderr.contains("Winograd") || off.stderr.contains("by taps"), off.stderr)
        assertOneLineError(try run("fast", "bad.csv", debug: false), contains: "RESNETKIT_WINOGRAD is 'fast': use auto or off")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("bad.csv").path), "nothing written")
    }

    func assertOneLineError(_ result: CLI.Result, contains text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(result.status, 1, result.stderr, file: file, line: line)
        let lines = result.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, result.stderr, file: file, line: line)
        XCTAssertTrue(result.stderr.hasPrefix("error: ") && result.stderr.contains(text), result.stderr, file: file, line: line)
    }

    func testUnknownPrecisionIsRefused() throws {
        let dir = try CLI.temporaryDirectory(self)
        assertOneLineError(try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("p.csv").path,
                                        "--model", Self.model, "--precision", "fp16", "--quiet"]),
                           contains: "The value 'fp16' is invalid for '--precision <fp32|bf16|int8>'. Please provide one of 'fp32', 'bf16' or 'int8'.")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("p.csv").path))
        assertOneLineError(try CLI.run(["evaluate", Self.images.path, "--labels", Self.digits.appendingPathComponent("labels.csv").path,
                                        "--model", Self.model, "--precision", "int4", "--quiet"]),
                           contains: "The value 'int4' is invalid for '--precision <fp32|bf16|int8>'")
    }

    func testInt8WithoutScalesNamesQuantize() throws {
        let dir = try CLI.temporaryDirectory(self)
        assertOneLineError(try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("p.csv").path,
                                        "--model", Self.model, "--precision", "int8", "--quiet"]), contains: "resnetkit quantize")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("p.csv").path), "nothing written")
    }

    /// oneDNN limited to SSE4.1 (as on a CPU without AVX): bf16 and int8 are refused in one line rather than
    /// run on reference kernels; fp32 still runs.
    func testCPUWithoutAVXIsRefusedForReducedPrecision() throws {
        let dir = try CLI.temporaryDirectory(self)
        let quantized = dir.appendingPathComponent("int8.safetensors").path
        XCTAssertEqual(try CLI.run(["quantize", Self.model, "--calibrate", Self.images.path, "--out", quantized, "--images", "8"]).status, 0)
        let old = ["ONEDNN_MAX_CPU_ISA": "SSE41"]
        assertOneLineError(try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("p.csv").path,
                                        "--model", quantized, "--precision", "bf16", "--quiet"], environment: old),
                           contains: "--precision bf16 needs a CPU with AVX-512")
        assertOneLineError(try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("q.csv").path,
                                        "--model", quantized, "--precision", "int8", "--quiet"], environment: old),
                           contains: "--precision int8 needs a CPU with AVX2")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("q.csv").path), "nothing written")
        XCTAssertEqual(try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("r.csv").path,
                                    "--model", quantized, "--quiet"], environment: old).status, 0)
    }

    func testQuantizeRefusesAMissingFolder() throws {
        assertOneLineError(try CLI.run(["quantize", Self.model, "--calibrate", "/nonexistent/calibration"]),
                           contains: "/nonexistent/calibration")
    }
}
