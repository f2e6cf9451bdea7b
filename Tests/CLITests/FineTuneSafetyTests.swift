import Foundation
import ResNetFormats
import ResNetModel
import XCTest

/// Issue 11 for fine-tune: divergence stops with a message and a good checkpoint, --resume refuses changed options
/// and says when it starts afresh, and the history agrees with the checkpoint after a kill.
final class FineTuneSafetyTests: XCTestCase, UsesDefaultFixtures {
    func arguments(_ labels: String, out: URL, _ extra: [String]) -> [String] {
        ["fine-tune", Self.images.path, "--labels", labels, "--from", Self.model, "--out", out.path,
         "--batch-size", "4", "--valid-fraction", "0.25", "--seed", "3", "--quiet"] + extra
    }

    func testDivergenceStopsAtTheFirstNonFiniteLossAndKeepsTheLastGoodCheckpoint() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir), out = dir.appendingPathComponent("f.safetensors")
        let result = try CLI.run(arguments(labels, out: out, ["--head-epochs", "1", "--finetune-epochs", "5", "--max-lr", "1e30"]))
        XCTAssertEqual(result.status, 1, result.stderr)
        XCTAssertTrue(result.stderr.hasPrefix("error: training diverged: "), result.stderr)
        XCTAssertTrue(result.stderr.contains("at phase 2 (fine-tune) epoch "), result.stderr)
        XCTAssertTrue(result.stderr.contains("Lower --max-lr (now 1e+30)"), result.stderr)
        XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, result.stderr)
        // The head phase's checkpoint is there and loads (finite weights).
        let checkpoint = try Checkpoint.load(path: out.path)
        XCTAssertTrue(checkpoint.state.values.allSatisfy { $0.data.allSatisfy(\.isFinite) })
        XCTAssertTrue(checkpoint.extra["resnetkit.fine-tune"]?.contains("\"phase\":0") ?? false, "the last good epoch is the head phase's")

        // The case: at 1e6 the loss can stay finite while running variances overflow; caught at the epoch's end.
        try FileManager.default.removeItem(at: out)
        let overflow = try CLI.run(arguments(labels, out: out, ["--head-epochs", "1", "--finetune-epochs", "3", "--max-lr", "1e6"]))
        XCTAssertEqual(overflow.status, 1, overflow.stderr)
        XCTAssertTrue(overflow.stderr.hasPrefix("error: training diverged: "), overflow.stderr)
        XCTAssertTrue(overflow.stderr.contains("Lower --max-lr (now 1e+06)"), overflow.stderr)
        XCTAssertNoThrow(try Checkpoint.load(path: out.path), "the checkpoint left behind loads")
    }

    func testResumeRefusesChangedOptionsAndSaysWhenItStartsAfresh() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir), out = dir.appendingPathComponent("f.safetensors")
        let options = ["--head-epochs", "1", "--finetune-epochs", "1"]
        let fresh = try CLI.run(arguments(labels, out: out, options + ["--resume"]))
        XCTAssertEqual(fresh.status, 0, fresh.stderr)
        XCTAssertTrue(fresh.stderr.contains("warning: --resume: \(out.path) does not exist yet, so training starts from the beginning"), fresh.stderr)
        for changed in [["--lr", "1e-3"], ["--head", "linear"], ["--max-lr", "5e-4"]] {
            let result = try CLI.run(arguments(labels, out: out, options + ["--resume"] + changed))
            XCTAssertEqual(result.status, 1, "\(changed): \(result.stderr)")
            XCTAssertTrue(result.stderr.contains("resume with the same options"), result.stderr)
        }
        let again = try CLI.run(arguments(labels, out: out, options))
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stderr.contains("\(out.path): already exists (use --resume to continue it, or --force to replace it)"), again.stderr)
    }

    /// The checkpoint says "after epoch 1 of phase 1" while the history holds phase 2 as well (killed after the
    /// history was written, before the checkpoint): --resume cuts the history back and numbers steps on.
    /// A history that misses the checkpoint's epoch is refused rather than continued with gaps.
    func testResumeMakesTheHistoryAgreeWithTheCheckpoint() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir), out = dir.appendingPathComponent("f.safetensors"), history = dir.appendingPathComponent("h.csv")
        let options = ["--head-epochs", "1", "--finetune-epochs", "1", "--history", history.path]
        XCTAssertEqual(try CLI.run(arguments(labels, out: out, options)).status, 0)
        let complete = try String(contentsOf: history, encoding: .utf8)
        // Rewind the checkpoint's progress to the end of phase 1.
        func rewind() throws {
            var (tensors, metadata) = try SafeTensors.read(path: out.path)
            metadata["resnetkit.fine-tune"] = metadata["resnetkit.fine-tune"]!
                .replacingOccurrences(of: "\"epoch\":1,\"finished\":true,\"phase\":1", with: "\"epoch\":1,\"finished\":false,\"phase\":0")
            let names = tensors.keys.sorted()
            try SafeTensors.write(path: out.path, tensors: names.map { ($0, tensors[$0]!.shape, tensors[$0]!.data) },
                                  integerNames: Set(names.filter { tensors[$0]!.dtype == "I64" }), metadata: metadata)
            tensors = [:]
        }
        try rewind()
        let resumed = try CLI.run(arguments(labels, out: out, options + ["--resume"]))
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        let rows = try String(contentsOf: history, encoding: .utf8).split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        XCTAssertEqual(rows.filter { $0.first == "epoch" }.map { "\($0[1])/\($0[2])/\($0[3])" }, ["1/1/2", "2/1/4"])
        XCTAssertEqual(rows.filter { $0.first == "step" }.map { String($0[3]) }, ["1", "2", "3", "4"])
        XCTAssertEqual(rows.count, complete.split(separator: "\n").count)

        // A history without the checkpoint's epoch (phase 1 rows gone).
        let cut = complete.split(separator: "\n").filter { !$0.hasPrefix("step,1,") && !$0.hasPrefix("epoch,1,") }.joined(separator: "\n") + "\n"
        try cut.write(to: history, atomically: true, encoding: .utf8)
        try rewind()
        let refused = try CLI.run(arguments(labels, out: out, options + ["--resume"]))
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("\(history.path): does not reach the checkpoint's epoch 1 of phase 1"), refused.stderr)
        XCTAssertEqual(try String(contentsOf: history, encoding: .utf8), cut, "left unchanged")
    }
}
