import Foundation
import XCTest

/// batch-infer and evaluate with --tta against PyTorch's mean logits over the same views of the fixture images
/// (fixtures/tta/expected-logits-tta{1,2,4,8}.csv, made by tools/make_tta_fixtures.py).
final class TestTimeAugmentationCLITests: XCTestCase, UsesDefaultFixtures {
    static func expected(_ views: Int) throws -> [(id: String, logits: [Double], label: String)] {
        let url = fixtures.appendingPathComponent("tta/expected-logits-tta\(views).csv")
        return try String(contentsOf: url, encoding: .utf8).split(separator: "\n").dropFirst().map {
            let f = $0.split(separator: ",").map(String.init)
            return (f[0], [Double(f[1])!, Double(f[2])!], f[3])
        }
    }

    func testBatchInferLogitsMatchPyTorchsMeanOverTheViews() throws {
        let dir = try CLI.temporaryDirectory(self)
        // Batch size 5: the last batch is smaller; 12: the 96 views of the batch run as 64 + 32 images.
        for (views, batchSize) in [(2, 5), (4, 5), (8, 5), (8, 12)] {
            let out = dir.appendingPathComponent("tta\(views)-\(batchSize).csv")
            let result = try CLI.run(["batch-infer", Self.images.path, "--out", out.path, "--model", Self.model,
                                      "--batch-size", String(batchSize), "--tta", String(views), "--quiet"])
            XCTAssertEqual(result.status, 0, result.stderr)
            let lines = try String(contentsOf: out, encoding: .utf8).split(separator: "\n")
            XCTAssertEqual(lines.first, "id,logit_0,logit_1,label")
            let got = Dictionary(uniqueKeysWithValues: lines.dropFirst().map { line -> (String, [String]) in
                let f = line.split(separator: ",").map(String.init)
                return (f[0], f)
            })
            let expected = try Self.expected(views)
            XCTAssertEqual(expected.count, 12)
            var worst = 0.0
            for e in expected {
                let row = try XCTUnwrap(got[e.id], "no row for \(e.id)")
                for k in 0..<2 { worst = max(worst, abs(Double(row[1 + k])! - e.logits[k])) }
                XCTAssertEqual(row[3], e.label, "\(views) views: label of \(e.id)")
            }
            XCTAssertLessThan(worst, 1e-4, "\(views) views, batch size \(batchSize)")
            print("--tta \(views) --batch-size \(batchSize): max abs logit error \(worst)")
        }
        // Without augmentation the logits differ: the views matter.
        let plain = try Self.expected(1), eight = try Self.expected(8)
        XCTAssertGreaterThan(zip(plain, eight).map { abs($0.logits[0] - $1.logits[0]) }.max()!, 0.05)
    }

    /// --format kaggle is P(class 1) of the mean logits.
    func testKaggleProbabilityComesFromTheMeanLogits() throws {
        let dir = try CLI.temporaryDirectory(self)
        let out = dir.appendingPathComponent("kaggle.csv")
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", out.path, "--model", Self.model,
                                  "--tta", "4", "--format", "kaggle", "--quiet"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let got = Dictionary(uniqueKeysWithValues: try String(contentsOf: out, encoding: .utf8).split(separator: "\n").dropFirst().map {
            let f = $0.split(separator: ","); return (String(f[0]), Double(f[1])!)
        })
        for e in try Self.expected(4) {
            XCTAssertEqual(try XCTUnwrap(got[e.id]), 1 / (1 + exp(e.logits[0] - e.logits[1])), accuracy: 1e-5, e.id)
        }
    }

    /// evaluate --tta 8: the loss and accuracy of PyTorch's mean logits.
    func testEvaluateScoresTheMeanLogits() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = dir.appendingPathComponent("labels.csv"), report = dir.appendingPathComponent("report.json")
        let truth = Dictionary(uniqueKeysWithValues: Self.imageIDs.enumerated().map { ($0.element, $0.offset % 2) })
        try (["id,label"] + Self.imageIDs.map { "\($0),\(truth[$0]!)" }).joined(separator: "\n").appending("\n")
            .write(to: labels, atomically: true, encoding: .utf8)
        let result = try CLI.run(["evaluate", Self.images.path, "--labels", labels.path, "--model", Self.model,
                                  "--tta", "8", "--report", report.path, "--quiet"])
        XCTAssertEqual(result.status, 0, result.stderr)
        var loss = 0.0, correct = 0
        let expected = try Self.expected(8)
        for e in expected {
            let y = truth[e.id]!, m = e.logits.max()!
            loss += m + log(e.logits.map { exp($0 - m) }.reduce(0, +)) - e.logits[y]
            if Int(e.label) == y { correct += 1 }
        }
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: report)) as? [String: Any])
        XCTAssertEqual(json["loss"] as? Double ?? -1, loss / 12, accuracy: 1e-4 * loss / 12)
        XCTAssertEqual(json["accuracy"] as? Double ?? -1, Double(correct) / 12, accuracy: 1e-12)
    }

    func testOtherViewCountsAreRefused() throws {
        let dir = try CLI.temporaryDirectory(self)
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("x.csv").path,
                                  "--model", Self.model, "--tta", "3"])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.contains("--tta"), result.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("x.csv").path))
    }
}
