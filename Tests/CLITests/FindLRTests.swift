import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest

/// find-lr on the 12 fixture patches with the small default model.
final class FindLRTests: XCTestCase, UsesDefaultFixtures {
    /// The CSV holds the exponential schedule and fastai's smoothing; the suggestion printed is the steepest descent
    /// of the smoothed loss (first tenth and last five points left out), as the option to pass; nothing else is written.
    func testRangeTestWritesCurveAndSuggestsTheSteepestDescent() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir)
        let csv = dir.appendingPathComponent("lr.csv"), plot = dir.appendingPathComponent("lr.svg")
        let result = try CLI.run(["find-lr", Self.images.path, "--labels", labels, "--from", Self.model, "--batch-size", "4",
                                  "--start-lr", "1e-5", "--end-lr", "10", "--steps", "40", "--csv", csv.path, "--plot", plot.path])
        XCTAssertEqual(result.status, 0, result.stderr)
        let rows = try String(contentsOf: csv, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(rows.first, "lr,loss,smoothed_loss")
        let values = rows.dropFirst().map { $0.split(separator: ",").map { Double($0)! } }
        let lr = values.map { $0[0] }, loss = values.map { $0[1] }, smoothed = values.map { $0[2] }
        XCTAssertGreaterThan(values.count, 12)
        XCTAssertLessThanOrEqual(values.count, 40)
        for (i, rate) in lr.enumerated() { XCTAssertEqual(rate, 1e-5 * pow(1e6, Double(i) / 39), accuracy: rate * 1e-9) }
        var average = 0.0
        for i in loss.indices {
            average = 0.98 * average + 0.02 * loss[i]
            XCTAssertEqual(smoothed[i], average / (1 - pow(0.98, Double(i + 1))), accuracy: 1e-9 * abs(smoothed[i]))
        }
        // Either all 40 steps ran, or it stopped at the first smoothed loss above 4x the minimum before it.
        for i in 1..<(smoothed.count - 1) { XCTAssertLessThanOrEqual(smoothed[i], 4 * smoothed[..<i].min()!) }
        if values.count < 40 { XCTAssertGreaterThan(smoothed.last!, 4 * smoothed.dropLast().min()!) }

        var range = 4..<(smoothed.count - 5)
        if range.count < 3 { range = 0..<smoothed.count }
        let steepest = range.dropLast().min { (smoothed[$0 + 1] - smoothed[$0]) / log(lr[$0 + 1] / lr[$0]) < (smoothed[$1 + 1] - smoothed[$1]) / log(lr[$1 + 1] / lr[$1]) }!
        let line = try XCTUnwrap(result.stdout.split(separator: "\n").first { $0.hasPrefix("suggested: --head-max-lr ") }, result.stdout)
        let suggested = try XCTUnwrap(Double(line.split(separator: " ")[2]), String(line))
        XCTAssertEqual(suggested, lr[steepest], accuracy: lr[steepest] * 0.051, "two significant digits of the steepest descent")

        let svg = try Data(contentsOf: plot)
        XCTAssertTrue(XMLParser(data: svg).parse(), "the plot is well-formed XML")
        XCTAssertTrue(String(decoding: svg, as: UTF8.self).contains("steepest descent: \(line.split(separator: " ")[2])"), "the plot marks the suggestion")
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: dir.path)), ["labels.csv", "lr.csv", "lr.svg"], "the model is not saved")
    }

    func testFineTunePhaseSuggestsMaxLRAndBadRangesAreRefused() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir)
        let result = try CLI.run(["find-lr", Self.images.path, "--labels", labels, "--from", Self.model, "--batch-size", "4",
                                  "--phase", "finetune", "--steps", "20", "--start-lr", "1e-6", "--end-lr", "1", "--quiet"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stderr, "", "--quiet prints no progress")
        XCTAssertTrue(result.stdout.contains("suggested: --max-lr "), result.stdout)
        for (options, message) in [(["--start-lr", "1", "--end-lr", "0.1"], "--start-lr must be positive and below --end-lr"),
                                   (["--steps", "3"], "--steps must be at least 10"),
                                   (["--phase", "all"], "--phase"),
                                   // fine-tune's options, checked as fine-tune checks them (`TrainingOptions`)
                                   (["--batch-size", "1"], "error: --batch-size must be at least 2 (BatchNorm needs two images)\n"),
                                   (["--dropout", "1"], "error: --dropout must be in [0, 1)\n"),
                                   (["--valid-fraction", "-0.1"], "error: --valid-fraction must be in [0, 1)\n")] {
            let bad = try CLI.run(["find-lr", Self.images.path, "--labels", labels, "--from", Self.model] + options)
            XCTAssertNotEqual(bad.status, 0)
            XCTAssertTrue(bad.stderr.contains(message), bad.stderr)
        }
    }

    /// `--precision bf16` runs the test in fine-tune's bf16 arithmetic: the same schedule, losses close to fp32's but
    /// not equal to them; int8 is refused as fine-tune refuses it.
    func testBF16RunsInBF16AndInt8IsRefused() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir)
        func losses(_ precision: String) throws -> [Double] {
            let csv = dir.appendingPathComponent("\(precision).csv")
            let result = try CLI.run(["find-lr", Self.images.path, "--labels", labels, "--from", Self.model, "--batch-size", "4",
                                      "--steps", "12", "--start-lr", "1e-7", "--end-lr", "1e-5", "--precision", precision, "--csv", csv.path])
            XCTAssertEqual(result.status, 0, result.stderr)
            XCTAssertTrue(result.stderr.contains("head phase, \(precision), lr"), result.stderr)
            XCTAssertTrue(result.stdout.contains("suggested: --head-max-lr "), result.stdout)
            return try String(contentsOf: csv, encoding: .utf8).split(separator: "\n").dropFirst().map { Double($0.split(separator: ",")[1])! }
        }
        let fp32 = try losses("fp32"), bf16 = try losses("bf16")
        XCTAssertEqual(fp32.count, bf16.count)
        let difference = zip(fp32, bf16).map { abs($0 - $1) / abs($0) }.max()!
        XCTAssertGreaterThan(difference, 1e-7, "bf16 gave fp32's losses")
        // Train-mode BatchNorm over 4 images amplifies bf16's rounding (4.5 % here; PyTorch's autocast is 7 % off on
        // the 16-image training reference): close, not exact.
        XCTAssertLessThan(difference, 0.1)
        let int8 = try CLI.run(["find-lr", Self.images.path, "--labels", labels, "--from", Self.model, "--precision", "int8"])
        XCTAssertEqual(int8.status, 1, int8.stderr)
        XCTAssertTrue(int8.stderr.contains("--precision must be fp32 or bf16"), int8.stderr)
    }
}
