import Foundation
import ResNetFormats
import ResNetSupport
import XCTest

/// Issue 11, group 1: outputs never replace inputs, existing outputs need --force (or --resume), --resume checks a
/// file before changing it, a second writer is refused, and temporary files of killed runs are cleaned up.
final class OutputSafetyTests: XCTestCase, UsesDefaultFixtures {
    /// A copy of the default model in `dir` (tests may not risk the committed fixture).
    func modelCopy(_ dir: URL, name: String = "m.safetensors") throws -> URL {
        let url = dir.appendingPathComponent(name)
        try FileManager.default.copyItem(at: URL(fileURLWithPath: Self.model), to: url)
        return url
    }

    /// Runs `arguments`, expects status 1 with `message` on stderr, and every file in `unchanged` as it was.
    func assertRefused(_ arguments: [String], _ message: String, unchanged: [URL], file: StaticString = #filePath, line: UInt = #line) throws {
        let before = try unchanged.map { try Data(contentsOf: $0) }
        let result = try CLI.run(arguments)
        XCTAssertEqual(result.status, 1, "\(arguments): \(result.stderr)", file: file, line: line)
        XCTAssertTrue(result.stderr.contains(message), "\(arguments): \(result.stderr)", file: file, line: line)
        XCTAssertEqual(result.stderr.split(separator: "\n").filter { $0.hasPrefix("error: ") }.count, 1, "one line: \(result.stderr)", file: file, line: line)
        for (url, data) in zip(unchanged, before) {
            XCTAssertEqual(try Data(contentsOf: url), data, "\(url.lastPathComponent) changed", file: file, line: line)
        }
    }

    func testAnOutputThatIsAnInputIsRefusedBeforeAnyWork() throws {
        let dir = try CLI.temporaryDirectory(self)
        let model = try modelCopy(dir), labels = URL(fileURLWithPath: try writeAlternatingLabels(dir))
        let link = dir.appendingPathComponent("link.safetensors")
        try FileManager.default.createSymbolicLink(at: link, withDestinationURL: model)
        let images = Self.images.path
        try assertRefused(["batch-infer", images, "--out", dir.appendingPathComponent("p.csv").path, "--model", model.path, "--errors", model.path],
                          "--errors is the same file as the model", unchanged: [model])
        try assertRefused(["batch-infer", images, "--out", link.path, "--model", model.path],
                          "--out is the same file as the model", unchanged: [model])
        try assertRefused(["fine-tune", images, "--labels", labels.path, "--from", model.path, "--out", model.path],
                          "--out is the same file as the pretrained model (--from)", unchanged: [model])
        try assertRefused(["fine-tune", images, "--labels", labels.path, "--from", model.path, "--out", link.path, "--force"],
                          "--out is the same file as the pretrained model (--from)", unchanged: [model])
        let out = dir.appendingPathComponent("f.safetensors").path
        try assertRefused(["fine-tune", images, "--labels", labels.path, "--from", model.path, "--out", out, "--history", out],
                          "--out and --history name the same file", unchanged: [model])
        try assertRefused(["fine-tune", images, "--labels", labels.path, "--from", model.path, "--out", out, "--plot", labels.path, "--force"],
                          "--plot is the same file as the labels (--labels)", unchanged: [labels])
        try assertRefused(["export-onnx", model.path, "--out", model.path, "--force"], "--out is the same file as the checkpoint", unchanged: [model])
        try assertRefused(["evaluate", images, "--labels", labels.path, "--model", model.path, "--report", labels.path, "--force"],
                          "--report is the same file as the labels (--labels)", unchanged: [labels])
        try assertRefused(["import-weights", model.path, "--out", link.path, "--force"], "--out is the same file as the model being imported",
                          unchanged: [model])
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "nothing written")
    }

    func testExistingOutputsAreReplacedOnlyWithForce() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = URL(fileURLWithPath: try writeAlternatingLabels(dir))
        let onnx = dir.appendingPathComponent("m.onnx"), report = dir.appendingPathComponent("r.json"), preds = dir.appendingPathComponent("p.csv")
        for url in [onnx, report, preds] { try Data("keep me\n".utf8).write(to: url) }
        try assertRefused(["export-onnx", Self.model, "--out", onnx.path], "\(onnx.path): already exists (use --force to replace it)", unchanged: [onnx])
        try assertRefused(["evaluate", Self.images.path, "--labels", labels.path, "--model", Self.model, "--report", report.path],
                          "\(report.path): already exists (use --force to replace it)", unchanged: [report])
        XCTAssertEqual(try CLI.run(["export-onnx", Self.model, "--out", onnx.path, "--force"]).status, 0)
        XCTAssertNotEqual(try Data(contentsOf: onnx), Data("keep me\n".utf8))
        XCTAssertEqual(try CLI.run(["evaluate", Self.images.path, "--labels", labels.path, "--model", Self.model, "--report", report.path, "--force"]).status, 0)
        XCTAssertNotNil(try JSONSerialization.jsonObject(with: Data(contentsOf: report)) as? [String: Any])
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", preds.path, "--model", Self.model, "--force"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(try String(contentsOf: preds, encoding: .utf8).split(separator: "\n").count, 13, "header and 12 rows")
        let both = try CLI.run(["batch-infer", Self.images.path, "--out", preds.path, "--model", Self.model, "--force", "--resume"])
        XCTAssertEqual(both.status, 1)
        XCTAssertTrue(both.stderr.contains("--force and --resume exclude each other"), both.stderr)
    }

    /// A foreign CSV (its last line without a line break) is not cut by --resume.
    func testResumeOnAForeignCSVChangesNothing() throws {
        let dir = try CLI.temporaryDirectory(self)
        let foreign = dir.appendingPathComponent("results.csv")
        try Data("name,score\nalice,3\nbob,4".utf8).write(to: foreign)
        try assertRefused(["batch-infer", Self.images.path, "--out", foreign.path, "--model", Self.model, "--resume"],
                          "has the columns name,score but this run writes id,logit_0,logit_1,label", unchanged: [foreign])
        // A file without any line break that is not a torn header of ours.
        try Data("just one line".utf8).write(to: foreign)
        try assertRefused(["batch-infer", Self.images.path, "--out", foreign.path, "--model", Self.model, "--resume"],
                          "is not a CSV written by this command", unchanged: [foreign])
    }

    func testASecondWriterOfTheSameOutputIsRefused() throws {
        let dir = try CLI.temporaryDirectory(self)
        let out = dir.appendingPathComponent("p.csv")
        let lock = try OutputLock.acquire(path: out.path, option: "--out")
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", out.path, "--model", Self.model, "--resume"])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("\(out.path): is being written by another process (pid \(getpid()))"), result.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), "nothing written while the other writer holds it")
        lock.release()
        let again = try CLI.run(["batch-infer", Self.images.path, "--out", out.path, "--model", Self.model, "--resume"])
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: OutputLock.lockPath(for: out.path)), "lock file removed at the end")
        // Two processes at once: exactly one of them writes.
        try FileManager.default.removeItem(at: out)
        let first = Process(), second = Process()
        for process in [first, second] {
            process.executableURL = CLI.executable
            process.arguments = ["batch-infer", Self.images.path, "--out", out.path, "--model", Self.model, "--resume", "--batch-size", "1", "--quiet"]
            process.standardError = FileHandle.nullDevice
        }
        try first.run()
        try second.run()
        first.waitUntilExit()
        second.waitUntilExit()
        let lines = try String(contentsOf: out, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 13, "every id once")
        XCTAssertEqual(Set(lines.dropFirst().map { $0.split(separator: ",")[0] }).count, 12)
    }

    /// Temporary files of a killed writer (`.<name>.<pid>.<random>.tmp`) are removed by the next run on that output.
    func testTemporaryFilesOfAKilledRunAreRemoved() throws {
        let dir = try CLI.temporaryDirectory(self)
        let dead = Process()
        dead.executableURL = URL(fileURLWithPath: "/bin/true")
        try dead.run()
        dead.waitUntilExit()
        let out = dir.appendingPathComponent("m.onnx")
        let stale = dir.appendingPathComponent(".m.onnx.\(dead.processIdentifier).12345.tmp")
        let live = dir.appendingPathComponent(".m.onnx.\(getpid()).6789.tmp")
        let other = dir.appendingPathComponent(".other.onnx.\(dead.processIdentifier).1.tmp")
        for url in [stale, live, other] { try Data(count: 1000).write(to: url) }
        XCTAssertEqual(try CLI.run(["export-onnx", Self.model, "--out", out.path]).status, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale.path), "a dead process's temporary file is removed")
        XCTAssertTrue(FileManager.default.fileExists(atPath: live.path), "a live process's temporary file is kept")
        XCTAssertTrue(FileManager.default.fileExists(atPath: other.path), "another output's temporary file is kept")
        XCTAssertFalse(FileManager.default.fileExists(atPath: OutputLock.lockPath(for: out.path)))
    }
}
