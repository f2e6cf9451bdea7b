import Foundation
import XCTest

/// batch-infer against ONNX Runtime's logits (fixtures/images/expected-logits*.csv, made by
/// tools/make_default_fixtures.py), and its behaviour on resume, shards and bad files.
final class BatchInferTests: XCTestCase, UsesDefaultFixtures {
    /// Data rows of a CSV whose fields hold no commas or quotes, as fields; header checked.
    func rows(_ url: URL, header: String, file: StaticString = #filePath, line: UInt = #line) throws -> [[String]] {
        let lines = try String(contentsOf: url, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(lines.first.map(String.init), header, file: file, line: line)
        XCTAssertEqual(lines.last, "", "the file must end with a line break", file: file, line: line)
        return lines.dropFirst().dropLast().map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
    }

    /// max |a − b| / max |b| over all logits; ids and labels must agree exactly.
    func compareLogits(_ got: [[String]], _ expected: [[String]], file: StaticString = #filePath, line: UInt = #line) -> Float {
        XCTAssertEqual(got.map { $0[0] }, expected.map { $0[0] }, file: file, line: line)
        XCTAssertEqual(got.map { $0.last }, expected.map { $0.last }, "labels", file: file, line: line)
        var difference: Float = 0, scale: Float = 0
        for (g, e) in zip(got, expected) {
            for k in 1..<(e.count - 1) {
                guard let a = Float(g[k]), let b = Float(e[k]) else { XCTFail("not a number: \(g)", file: file, line: line); return .infinity }
                difference = max(difference, abs(a - b))
                scale = max(scale, abs(b))
            }
        }
        return difference / scale
    }

    func testLogitsMatchONNXRuntimeWithTheCheckpointsPreprocessing() throws {
        let dir = try CLI.temporaryDirectory(self)
        let out = dir.appendingPathComponent("preds.csv")
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", out.path, "--model", Self.model, "--batch-size", "5"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let header = "id,logit_0,logit_1,label"
        let expected = try rows(Self.images.appendingPathComponent("expected-logits.csv"), header: header)
        XCTAssertEqual(expected.count, 12)
        XCTAssertLessThan(compareLogits(try rows(out, header: header), expected), 1e-4)
        XCTAssertTrue(result.stderr.contains("batch-infer: 12 images, 0 failed"), result.stderr)
        XCTAssertTrue(result.stderr.contains("model \(Self.model)"), result.stderr)
    }

    /// --crop 0 --normalize none --channel-order bgr override the checkpoint's crop 49, ImageNet, RGB.
    func testFlagsOverrideTheCheckpointsPreprocessing() throws {
        let dir = try CLI.temporaryDirectory(self)
        let out = dir.appendingPathComponent("preds.csv")
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", out.path, "--model", Self.model,
                                  "--crop", "0", "--normalize", "none", "--channel-order", "bgr", "--quiet"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stderr, "", "--quiet prints nothing")
        let header = "id,logit_0,logit_1,label"
        let expected = try rows(Self.images.appendingPathComponent("expected-logits-full-none-bgr.csv"), header: header)
        XCTAssertLessThan(compareLogits(try rows(out, header: header), expected), 1e-4)
    }

    func testProbabilityColumnsAndKaggleFormat() throws {
        let dir = try CLI.temporaryDirectory(self)
        let expected = try rows(Self.images.appendingPathComponent("expected-logits.csv"), header: "id,logit_0,logit_1,label")
        // softmax of ONNX Runtime's logits, in Double.
        let softmax = expected.map { row -> [Double] in
            let a = Double(row[1])!, b = Double(row[2])!
            return [1 / (1 + exp(b - a)), 1 / (1 + exp(a - b))]
        }
        let probs = dir.appendingPathComponent("probs.csv")
        XCTAssertEqual(try CLI.run(["batch-infer", Self.images.path, "--out", probs.path, "--model", Self.model, "--probs"]).status, 0)
        let probRows = try rows(probs, header: "id,logit_0,logit_1,prob_0,prob_1,label")
        XCTAssertEqual(probRows.count, 12)
        for (row, p) in zip(probRows, softmax) {
            XCTAssertEqual(Double(row[3])!, p[0], accuracy: 1e-4)
            XCTAssertEqual(Double(row[4])!, p[1], accuracy: 1e-4)
        }
        let kaggle = dir.appendingPathComponent("kaggle.csv")
        XCTAssertEqual(try CLI.run(["batch-infer", Self.images.path, "--out", kaggle.path, "--model", Self.model, "--format", "kaggle"]).status, 0)
        let kaggleRows = try rows(kaggle, header: "id,label")
        XCTAssertEqual(kaggleRows.map { $0[0] }, Self.imageIDs)
        for (row, p) in zip(kaggleRows, softmax) { XCTAssertEqual(Double(row[1])!, p[1], accuracy: 1e-4) }
    }

    func testExistingOutputIsRefusedWithoutResume() throws {
        let dir = try CLI.temporaryDirectory(self)
        let out = dir.appendingPathComponent("preds.csv")
        try Data("keep me\n".utf8).write(to: out)
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", out.path, "--model", Self.model])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("\(out.path): already exists (use --resume to continue it, or --force to replace it)"), result.stderr)
        XCTAssertEqual(try String(contentsOf: out, encoding: .utf8), "keep me\n")
    }

    /// A file cut in the middle of a row (and one cut inside the header) resumes to the uninterrupted result.
    /// Batch size 1 makes every logit independent of which images share its batch, so files compare byte for byte.
    func testResumeCutsATornLastLine() throws {
        let dir = try CLI.temporaryDirectory(self)
        let full = dir.appendingPathComponent("full.csv")
        let common = ["batch-infer", Self.images.path, "--model", Self.model, "--batch-size", "1"]
        XCTAssertEqual(try CLI.run(common + ["--out", full.path]).status, 0)
        let reference = try Data(contentsOf: full)
        let text = String(decoding: reference, as: UTF8.self)
        let lines = text.split(separator: "\n")
        for kept in [6, 0] {
            let torn = dir.appendingPathComponent("torn\(kept).csv")
            let prefix = lines.prefix(kept).map { $0 + "\n" }.joined() + lines[kept].prefix(17)
            try Data(prefix.utf8).write(to: torn)
            let result = try CLI.run(common + ["--out", torn.path, "--resume"])
            XCTAssertEqual(result.status, 0, result.stderr)
            XCTAssertEqual(try Data(contentsOf: torn), reference, "resumed after \(kept) lines")
            XCTAssertTrue(result.stderr.contains("removed a torn last line"), result.stderr)
        }
    }

    /// Kill -9 in the middle of a long run, resume, and get exactly the uninterrupted run's file.
    func testResumeAfterSIGKILLEqualsAnUninterruptedRun() throws {
        let dir = try CLI.temporaryDirectory(self)
        let many = dir.appendingPathComponent("many")
        try FileManager.default.createDirectory(at: many, withIntermediateDirectories: true)
        for copy in 0..<50 {
            for id in Self.imageIDs {
                try FileManager.default.createSymbolicLink(atPath: many.appendingPathComponent("c\(copy)-\(id).tif").path,
                                                           withDestinationPath: Self.images.appendingPathComponent("\(id).tif").path)
            }
        }
        let total = 50 * Self.imageIDs.count
        let arguments = ["batch-infer", many.path, "--model", Self.model, "--batch-size", "1", "--threads", "1", "--quiet"]
        let killed = dir.appendingPathComponent("killed.csv")
        let process = Process()
        process.executableURL = CLI.executable
        process.arguments = arguments + ["--out", killed.path]
        try process.run()
        // Wait for some rows, then kill without warning.
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let size = (try? FileManager.default.attributesOfItem(atPath: killed.path)[.size] as? Int) ?? 0
            if size > 100 * 70 { break }
            usleep(500)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationReason, .uncaughtSignal)
        let partial = try String(contentsOf: killed, encoding: .utf8).split(separator: "\n").count - 1
        XCTAssertGreaterThan(partial, 0)
        XCTAssertLessThan(partial, total, "the run was killed before it finished")

        let resumed = try CLI.run(arguments + ["--out", killed.path, "--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        let clean = dir.appendingPathComponent("clean.csv")
        XCTAssertEqual(try CLI.run(arguments + ["--out", clean.path]).status, 0)
        let cleanText = try String(contentsOf: clean, encoding: .utf8)
        XCTAssertEqual(cleanText.split(separator: "\n").count, total + 1)
        XCTAssertEqual(try String(contentsOf: killed, encoding: .utf8), cleanText)
    }

    func testShardsPartitionTheImages() throws {
        let dir = try CLI.temporaryDirectory(self)
        let header = "id,logit_0,logit_1,label"
        let full = dir.appendingPathComponent("full.csv")
        let common = ["batch-infer", Self.images.path, "--model", Self.model, "--batch-size", "1"]
        XCTAssertEqual(try CLI.run(common + ["--out", full.path]).status, 0)
        var union: [[String]] = []
        var sizes: [Int] = []
        for index in 0..<3 {
            let out = dir.appendingPathComponent("shard\(index).csv")
            let result = try CLI.run(common + ["--out", out.path, "--shard", "\(index)/3"])
            XCTAssertEqual(result.status, 0, result.stderr)
            let shardRows = try rows(out, header: header)
            sizes.append(shardRows.count)
            union += shardRows
        }
        XCTAssertEqual(union.count, 12, "disjoint: every image exactly once")
        XCTAssertEqual(union.sorted { $0[0] < $1[0] }, try rows(full, header: header))
        XCTAssertTrue(sizes.allSatisfy { $0 < 12 }, "every shard is a part: \(sizes)")

        // --shard auto from a Kubernetes Indexed Job and from a Slurm array picks the same shard 1/3.
        let shard1 = try String(contentsOf: dir.appendingPathComponent("shard1.csv"), encoding: .utf8)
        let environments = [["JOB_COMPLETION_INDEX": "1", "RESNETKIT_SHARD_COUNT": "3"],
                            ["SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"]]
        for (n, environment) in environments.enumerated() {
            let out = dir.appendingPathComponent("auto\(n).csv")
            let result = try CLI.run(common + ["--out", out.path, "--shard", "auto"], environment: environment)
            XCTAssertEqual(result.status, 0, result.stderr)
            XCTAssertEqual(try String(contentsOf: out, encoding: .utf8), shard1)
        }
        let missing = try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("x.csv").path,
                                   "--model", Self.model, "--shard", "auto"], environment: ["JOB_COMPLETION_INDEX": "0"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("--shard auto: the shard count (--shard-count N or RESNETKIT_SHARD_COUNT) is not set"), missing.stderr)
        let bad = try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("y.csv").path,
                               "--model", Self.model, "--shard", "3/3"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("shard 3/3 does not exist"), bad.stderr)
    }

    /// A folder of good images plus every kind of bad file: the run completes, lists each failure, exits 3.
    func badFolder() throws -> (URL, [String: String]) {
        let dir = try CLI.temporaryDirectory(self)
        let folder = dir.appendingPathComponent("mixed")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for id in Self.imageIDs {
            try FileManager.default.copyItem(at: Self.images.appendingPathComponent("\(id).tif"), to: folder.appendingPathComponent("\(id).tif"))
        }
        let bad = ["bad_empty": "the file is empty", "bad_not_a_tiff": "not a TIFF image",
                   "bad_truncated_lzw": "not a readable TIFF", "bad_huge_dimensions": "absurd dimensions 2147483648x1",
                   "rgb8_strips": "is 20x12, smaller than the crop 49"]
        for name in bad.keys {
            try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("tiff/\(name).tif"),
                                             to: folder.appendingPathComponent("\(name).TIF"))
        }
        try FileManager.default.createDirectory(at: folder.appendingPathComponent("folder.tif"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: folder.appendingPathComponent("dangling.tiff").path, withDestinationPath: "/nonexistent.tif")
        try Data("not an image".utf8).write(to: folder.appendingPathComponent("notes.txt"))
        return (folder, bad.merging(["folder": "is a folder, not a TIFF image",
                                     "dangling": "is a symbolic link to a file that does not exist"]) { a, _ in a })
    }

    func testBadFilesAreListedAndTheRunCompletesWithStatus3() throws {
        let (folder, bad) = try badFolder()
        let out = folder.deletingLastPathComponent().appendingPathComponent("preds.csv")
        let result = try CLI.run(["batch-infer", folder.path, "--out", out.path, "--model", Self.model, "--batch-size", "4"])
        XCTAssertEqual(result.status, 3, result.stderr)
        XCTAssertTrue(result.stderr.contains("12 images, 7 failed (listed in \(out.path).errors.csv)"), result.stderr)
        XCTAssertEqual(try rows(out, header: "id,logit_0,logit_1,label").map { $0[0] }, Self.imageIDs)
        let errors = try String(contentsOf: URL(fileURLWithPath: out.path + ".errors.csv"), encoding: .utf8)
            .split(separator: "\n").map(String.init)
        XCTAssertEqual(errors.first, "id,path,reason")
        XCTAssertEqual(errors.count, 1 + bad.count, errors.joined(separator: "\n"))
        for (id, reason) in bad {
            XCTAssertTrue(errors.contains { $0.hasPrefix("\(id),\(folder.path)/\(id).") && $0.contains(reason) }, "\(id): \(reason)")
        }
    }

    /// Two files with one id (a.tif and a.tiff): the first is classified, the second listed as a duplicate.
    func testDuplicateIDsAreReportedNotWrittenTwice() throws {
        let folder = try CLI.temporaryDirectory(self).appendingPathComponent("images")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let id = try XCTUnwrap(Self.imageIDs.first)
        let source = Self.images.appendingPathComponent("\(id).tif")
        try FileManager.default.copyItem(at: source, to: folder.appendingPathComponent("\(id).tif"))
        try FileManager.default.copyItem(at: source, to: folder.appendingPathComponent("\(id).tiff"))
        let out = folder.deletingLastPathComponent().appendingPathComponent("preds.csv")
        let result = try CLI.run(["batch-infer", folder.path, "--out", out.path, "--model", Self.model])
        XCTAssertEqual(result.status, 3, result.stderr)
        XCTAssertEqual(try rows(out, header: "id,logit_0,logit_1,label").map { $0[0] }, [id])
        let errors = try String(contentsOf: URL(fileURLWithPath: out.path + ".errors.csv"), encoding: .utf8)
            .split(separator: "\n").map(String.init)
        XCTAssertEqual(errors.count, 2, errors.joined(separator: "\n"))
        XCTAssertTrue(errors[1].hasPrefix("\(id),\(folder.path)/\(id).tif"), errors[1])
        XCTAssertTrue(errors[1].contains("duplicate id: \(folder.path)/\(id).tif"), errors[1])
    }

    func testMaxErrorsStopsEarlyWithStatus4() throws {
        let (folder, _) = try badFolder()
        let out = folder.deletingLastPathComponent().appendingPathComponent("preds.csv")
        let result = try CLI.run(["batch-infer", folder.path, "--out", out.path, "--model", Self.model,
                                  "--batch-size", "1", "--max-errors", "2"])
        XCTAssertEqual(result.status, 4, result.stderr)
        XCTAssertTrue(result.stderr.contains("stopped: 3 images failed, more than --max-errors 2"), result.stderr)
        let errors = try String(contentsOf: URL(fileURLWithPath: out.path + ".errors.csv"), encoding: .utf8)
        XCTAssertEqual(errors.split(separator: "\n").count, 1 + 3)
    }

    func testRecursiveIDsAreRelativePaths() throws {
        let dir = try CLI.temporaryDirectory(self)
        let nested = dir.appendingPathComponent("root/a/b")
        try FileManager.default.createDirectory(at: nested, withIntermediateDirectories: true)
        let ids = Self.imageIDs
        try FileManager.default.copyItem(at: Self.images.appendingPathComponent("\(ids[0]).tif"), to: nested.appendingPathComponent("deep.tif"))
        try FileManager.default.copyItem(at: Self.images.appendingPathComponent("\(ids[1]).tif"),
                                         to: dir.appendingPathComponent("root/top.tiff"))
        let flat = dir.appendingPathComponent("flat.csv"), deep = dir.appendingPathComponent("deep.csv")
        XCTAssertEqual(try CLI.run(["batch-infer", dir.appendingPathComponent("root").path, "--out", flat.path, "--model", Self.model]).status, 0)
        XCTAssertEqual(try rows(flat, header: "id,logit_0,logit_1,label").map { $0[0] }, ["top"])
        XCTAssertEqual(try CLI.run(["batch-infer", dir.appendingPathComponent("root").path, "--out", deep.path, "--model", Self.model,
                                    "--recursive"]).status, 0)
        XCTAssertEqual(try rows(deep, header: "id,logit_0,logit_1,label").map { $0[0] }, ["top", "a/b/deep"])
    }

    func testDefaultModelIsTheNewerOfFinetunedAndModel() throws {
        let dir = try CLI.temporaryDirectory(self)
        let none = try CLI.run(["batch-infer", Self.images.path, "--out", "a.csv"], currentDirectory: dir)
        XCTAssertEqual(none.status, 1)
        XCTAssertTrue(none.stderr.contains("no --model given, and neither finetuned.safetensors nor model.safetensors"), none.stderr)
        for (name, age) in [("model.safetensors", 100.0), ("finetuned.safetensors", 10.0)] {
            let path = dir.appendingPathComponent(name).path
            try FileManager.default.copyItem(atPath: Self.model, toPath: path)
            try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-age)], ofItemAtPath: path)
        }
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", "b.csv"], currentDirectory: dir)
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stderr.contains("model finetuned.safetensors (newest default model in this folder)"), result.stderr)
    }
}

extension BatchInferTests {
    /// With batches, a resumed run groups images differently, so logits may differ in the last bits from an
    /// uninterrupted run's; every id must still appear exactly once, in order, with the same label.
    func testResumeWithBatchesKeepsEveryIDOnce() throws {
        let dir = try CLI.temporaryDirectory(self)
        let header = "id,logit_0,logit_1,label"
        let out = dir.appendingPathComponent("preds.csv")
        let expected = try rows(Self.images.appendingPathComponent("expected-logits.csv"), header: header)
        let partial = [header] + expected.prefix(5).map { $0.joined(separator: ",") } + [expected[5][0] + ",0.12"]
        try Data(partial.joined(separator: "\n").utf8).write(to: out)
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", out.path, "--model", Self.model, "--resume", "--batch-size", "4"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stderr.contains("resuming \(out.path): 5 rows and 0 failures already there, removed a torn last line"), result.stderr)
        XCTAssertLessThan(compareLogits(try rows(out, header: header), expected), 1e-4)
    }
}

extension BatchInferTests {
    func testFatalErrorsExitWithStatus1AndWriteNothing() throws {
        let dir = try CLI.temporaryDirectory(self)
        let out = dir.appendingPathComponent("preds.csv").path
        let badModel = Self.fixtures.appendingPathComponent("tiff/bad_empty.tif").path
        let cases: [([String], String)] = [
            (["/nonexistent/folder", "--out", out, "--model", Self.model], "/nonexistent/folder: no such file or folder"),
            ([Self.images.path, "--out", out, "--model", badModel], "\(badModel): the file is empty"),
            ([Self.images.path, "--out", out, "--model", Self.model, "--crop", "16"], "--crop must be 0 (none) or at least 32"),
            ([Self.images.path, "--out", out, "--model", Self.model, "--format", "kaggle", "--probs"], "--probs does not apply to --format kaggle"),
            ([Self.images.path, "--out", out, "--model", Self.model, "--normalize", "zscore"],
             "The value 'zscore' is invalid for '--normalize <imagenet|none>'. Please provide one of 'imagenet' and 'none'."),
            ([Self.images.path, "--out", out, "--model", Self.model, "--format", "csv"],
             "The value 'csv' is invalid for '--format <logits|kaggle>'. Please provide one of 'logits' and 'kaggle'."),
            ([Self.images.path, "--out", out, "--model", Self.model, "--batch-size", "0"], "--batch-size must be between 1 and 65536, not 0"),
        ]
        for (arguments, message) in cases {
            let result = try CLI.run(["batch-infer"] + arguments)
            XCTAssertEqual(result.status, 1, "\(arguments)")
            XCTAssertTrue(result.stderr.contains(message), "\(arguments): \(result.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "\(arguments) left an output")
        }
    }
}

extension BatchInferTests {
    /// Files given by name are processed in the order given.
    func testExplicitFilesKeepTheOrderGiven() throws {
        let dir = try CLI.temporaryDirectory(self)
        let out = dir.appendingPathComponent("preds.csv")
        let ids = Self.imageIDs
        let result = try CLI.run(["batch-infer", Self.images.appendingPathComponent("\(ids[3]).tif").path,
                                  Self.images.appendingPathComponent("\(ids[1]).tif").path, "--out", out.path, "--model", Self.model])
        XCTAssertEqual(result.status, 0, result.stderr)
        let expected = try rows(Self.images.appendingPathComponent("expected-logits.csv"), header: "id,logit_0,logit_1,label")
        XCTAssertLessThan(compareLogits(try rows(out, header: "id,logit_0,logit_1,label"), [expected[3], expected[1]]), 1e-4)
    }
}
