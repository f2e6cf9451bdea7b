import Foundation
import ResNetFormats
import XCTest

/// fine-tune --monitor, --keep best, --early-stop and --class-weights on the 12 fixture patches.
final class FineTuneMonitorTests: XCTestCase, UsesDefaultFixtures {
    /// Labels alternating over the sorted ids (all 12: training), and the first 6 (validation).
    func writeLabels(_ dir: URL) throws -> (train: String, valid: String) {
        let rows = Self.imageIDs.enumerated().map { "\($0.element),\($0.offset % 2)" }
        let train = dir.appendingPathComponent("labels.csv"), valid = dir.appendingPathComponent("valid.csv")
        try (["id,label"] + rows).joined(separator: "\n").appending("\n").write(to: train, atomically: true, encoding: .utf8)
        try (["id,label"] + rows.prefix(6)).joined(separator: "\n").appending("\n").write(to: valid, atomically: true, encoding: .utf8)
        return (train.path, valid.path)
    }

    func arguments(_ labels: (train: String, valid: String), out: URL, _ extra: [String]) -> [String] {
        ["fine-tune", Self.images.path, "--labels", labels.train, "--valid-dir", Self.images.path, "--valid-labels", labels.valid,
         "--from", Self.model, "--out", out.path, "--batch-size", "4", "--seed", "3"] + extra
    }

    struct EpochRow { var phase: Int, epoch: Int, valLoss: Double, valAccuracy: Double, valAUC: Double }

    func epochRows(_ history: URL) throws -> [EpochRow] {
        let lines = try String(contentsOf: history, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.first, "kind,phase,epoch,step,loss,accuracy,average_loss,average_accuracy,val_loss,val_accuracy,val_auc")
        var rows: [EpochRow] = []
        for line in lines.dropFirst() {
            let f = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard f[0] == "epoch" else { continue }
            rows.append(EpochRow(phase: Int(f[1])!, epoch: Int(f[2])!, valLoss: Double(f[8])!, valAccuracy: Double(f[9])!,
                                 valAUC: Double(f[10])!))
        }
        return rows
    }

    func monitorRecord(_ checkpoint: URL) throws -> [String: Any] {
        let text = try XCTUnwrap(try Checkpoint.load(path: checkpoint.path).extra["resnetkit.fine-tune.monitor"], "monitor metadata")
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    /// --keep best: the checkpoint names the history's best epoch, and scoring it on the validation images gives
    /// that epoch's val_loss (not the last epoch's).
    func testKeepBestLeavesTheCheckpointOfTheHistorysBestEpoch() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeLabels(dir)
        let out = dir.appendingPathComponent("best.safetensors"), history = dir.appendingPathComponent("history.csv")
        let result = try CLI.run(arguments(labels, out: out, ["--head-epochs", "4", "--finetune-epochs", "3", "--keep", "best",
                                                              "--history", history.path]))
        XCTAssertEqual(result.status, 0, result.stderr)
        let rows = try epochRows(history)
        XCTAssertEqual(rows.count, 7)
        XCTAssertTrue(rows.allSatisfy { (0...1).contains($0.valAUC) }, "val_auc for two classes")
        let best = rows.indices.min { rows[$0].valLoss < rows[$1].valLoss || (rows[$0].valLoss == rows[$1].valLoss && $0 < $1) }!
        XCTAssertNotEqual(best, rows.count - 1, "this run's best epoch is not its last (else the test proves nothing)")
        let record = try monitorRecord(out)
        XCTAssertEqual(record["monitor"] as? String, "val_loss")
        XCTAssertEqual(record["keep"] as? String, "best")
        XCTAssertEqual(record["phase"] as? Int, rows[best].phase)
        XCTAssertEqual(record["epoch"] as? Int, rows[best].epoch)
        XCTAssertEqual(record["value"] as? Double ?? -1, rows[best].valLoss, accuracy: 1e-6)
        XCTAssertTrue(result.stderr.contains(String(format: "(phase %d epoch %d, val_loss %.4f)", rows[best].phase, rows[best].epoch, rows[best].valLoss)), result.stderr)

        let report = dir.appendingPathComponent("report.json")
        let scored = try CLI.run(["evaluate", Self.images.path, "--labels", labels.valid, "--model", out.path, "--report", report.path, "--quiet"])
        XCTAssertEqual(scored.status, 0, scored.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: report)) as? [String: Any])
        XCTAssertEqual(json["loss"] as? Double ?? -1, rows[best].valLoss, accuracy: 2e-6, "the checkpoint holds the best epoch's weights")

        // --monitor val_auc: the checkpoint scores the history's highest val_auc.
        let auc = dir.appendingPathComponent("auc.safetensors"), aucHistory = dir.appendingPathComponent("auc.csv")
        let byAUC = try CLI.run(arguments(labels, out: auc, ["--head-epochs", "4", "--finetune-epochs", "3", "--keep", "best",
                                                             "--monitor", "val_auc", "--history", aucHistory.path, "--quiet"]))
        XCTAssertEqual(byAUC.status, 0, byAUC.stderr)
        let aucRows = try epochRows(aucHistory)
        let bestAUC = aucRows.indices.max { aucRows[$0].valAUC < aucRows[$1].valAUC || (aucRows[$0].valAUC == aucRows[$1].valAUC && $0 > $1) }!
        let aucRecord = try monitorRecord(auc)
        XCTAssertEqual(aucRecord["epoch"] as? Int, aucRows[bestAUC].epoch)
        XCTAssertEqual(aucRecord["phase"] as? Int, aucRows[bestAUC].phase)
        let aucReport = dir.appendingPathComponent("auc.json")
        XCTAssertEqual(try CLI.run(["evaluate", Self.images.path, "--labels", labels.valid, "--model", auc.path, "--report", aucReport.path, "--quiet"]).status, 0)
        let aucJSON = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: aucReport)) as? [String: Any])
        XCTAssertEqual(aucJSON["roc_auc"] as? Double ?? -1, aucRows[bestAUC].valAUC, accuracy: 1e-6)

        // --keep last (the default) holds the last epoch and says so.
        let last = dir.appendingPathComponent("last.safetensors")
        XCTAssertEqual(try CLI.run(arguments(labels, out: last, ["--head-epochs", "4", "--finetune-epochs", "3", "--quiet"])).status, 0)
        let lastRecord = try monitorRecord(last)
        XCTAssertEqual(lastRecord["phase"] as? Int, 2)
        XCTAssertEqual(lastRecord["epoch"] as? Int, 3)
    }

    /// Replays early stopping from the history's figures: each phase must end at the first epoch that is `patience`
    /// epochs past its phase's best (or run all its epochs).
    func expectedEpochs(_ values: [Double], patience: Int, higherIsBetter: Bool) -> Int {
        var best: Double?, since = 0
        for (i, v) in values.enumerated() {
            if best == nil || (higherIsBetter ? v > best! : v < best!) { best = v; since = 0 } else { since += 1 }
            if since >= patience { return i + 1 }
        }
        return values.count
    }

    func testEarlyStopEndsAPhaseAtTheRightEpoch() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeLabels(dir)
        for (monitor, higher) in [("val_loss", false), ("val_acc", true)] {
            let out = dir.appendingPathComponent("\(monitor).safetensors"), history = dir.appendingPathComponent("\(monitor).csv")
            let result = try CLI.run(arguments(labels, out: out, ["--head-epochs", "12", "--finetune-epochs", "3", "--early-stop", "2",
                                                                  "--monitor", monitor, "--history", history.path]))
            XCTAssertEqual(result.status, 0, result.stderr)
            let rows = try epochRows(history)
            let head = rows.filter { $0.phase == 1 }, fine = rows.filter { $0.phase == 2 }
            XCTAssertEqual(head.map(\.epoch), Array(1...head.count))
            XCTAssertLessThan(head.count, 12, "\(monitor): phase 1 stopped early")
            let values = head.map { monitor == "val_loss" ? $0.valLoss : $0.valAccuracy }
            // The phase ran until the rule said stop, and no further.
            XCTAssertEqual(head.count, expectedEpochs(values, patience: 2, higherIsBetter: higher), "\(monitor): \(values)")
            XCTAssertTrue(result.stderr.contains("fine-tune: phase 1 stops early after epoch \(head.count): \(monitor) has not improved for 2 epochs"), result.stderr)
            let fineValues = fine.map { monitor == "val_loss" ? $0.valLoss : $0.valAccuracy }
            XCTAssertEqual(fine.count, expectedEpochs(fineValues, patience: 2, higherIsBetter: higher), "phase 2 has its own patience")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path + ".resume0.safetensors"), "finished: sidecars removed")
        }
    }

    /// A --keep best run killed mid-phase and resumed ends with the same best checkpoint and record as an
    /// uninterrupted run.
    func testResumeAfterAKillKeepsTheBest() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeLabels(dir)
        let options = ["--head-epochs", "40", "--finetune-epochs", "2", "--keep", "best", "--monitor", "val_acc", "--early-stop", "100"]
        let whole = dir.appendingPathComponent("whole.safetensors"), killed = dir.appendingPathComponent("killed.safetensors")
        let uninterrupted = try CLI.run(arguments(labels, out: whole, options))
        XCTAssertEqual(uninterrupted.status, 0, uninterrupted.stderr)

        let process = Process()
        process.executableURL = CLI.executable
        process.arguments = arguments(labels, out: killed, options)
        let err = Pipe()
        process.standardError = err
        try process.run()
        var seen = ""
        while seen.components(separatedBy: "[Epoch:").count <= 6 {
            let chunk = err.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            seen += String(decoding: chunk, as: UTF8.self)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationReason, .uncaughtSignal, "the run must be killed mid-way: \(seen)")
        let changed = try CLI.run(arguments(labels, out: killed, options.dropLast(2) + ["--resume"]))
        XCTAssertNotEqual(changed.status, 0)
        XCTAssertTrue(changed.stderr.contains("was trained with --monitor val_acc --keep best --early-stop 100; resume with the same options"), changed.stderr)

        let resumed = try CLI.run(arguments(labels, out: killed, options + ["--resume"]))
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stderr.contains("resuming"), resumed.stderr)
        let same = try Checkpoint.load(path: killed.path).state == Checkpoint.load(path: whole.path).state
        XCTAssertTrue(same, "the resumed run's checkpoint equals the uninterrupted run's")
        let a = try monitorRecord(killed), b = try monitorRecord(whole)
        XCTAssertEqual(a as NSDictionary, b as NSDictionary)
        XCTAssertEqual(a["keep"] as? String, "best")
    }

    func testClassWeightsArePrintedAndStored() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeLabels(dir)
        // 9 training images of the 12 (seeded split, --valid-fraction 0.25): balanced = 9 / (2 · n_k).
        let out = dir.appendingPathComponent("w.safetensors")
        let result = try CLI.run(["fine-tune", Self.images.path, "--labels", labels.train, "--from", Self.model, "--out", out.path,
                                  "--batch-size", "4", "--valid-fraction", "0.25", "--seed", "3", "--head-epochs", "1",
                                  "--finetune-epochs", "0", "--class-weights", "balanced"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let stored = try XCTUnwrap(try Checkpoint.load(path: out.path).extra["resnetkit.fine-tune.class-weights"])
        let weights = stored.split(separator: ",").map { Double($0)! }
        XCTAssertEqual(weights.count, 2)
        // n / (K · n_k) for some split of 9 images into n_0 + n_1: Σ n_k / w_k = 9 · 2 / ... each n_k = 9 / (2 w_k).
        let counts = weights.map { 9 / (2 * $0) }
        XCTAssertEqual(counts.reduce(0, +), 9, accuracy: 1e-4)
        for n in counts { XCTAssertEqual(n, n.rounded(), accuracy: 1e-4) }
        XCTAssertTrue(result.stderr.contains("fine-tune: class weights (loss) 0: \(String(format: "%.4g", weights[0])), 1: \(String(format: "%.4g", weights[1]))"), result.stderr)

        let explicit = try CLI.run(["fine-tune", Self.images.path, "--labels", labels.train, "--from", Self.model, "--out", out.path,
                                    "--batch-size", "4", "--head-epochs", "1", "--finetune-epochs", "0", "--class-weights", "1,3", "--force"])
        XCTAssertEqual(explicit.status, 0, explicit.stderr)
        XCTAssertEqual(try Checkpoint.load(path: out.path).extra["resnetkit.fine-tune.class-weights"], "1.0,3.0")

        for (value, message) in [("1,2,3", "--class-weights gives 3 weights for 2 classes"), ("1,x", "--class-weights"),
                                 ("0,1", "--class-weights"), ("-1,2", "--class-weights")] {
            let bad = try CLI.run(["fine-tune", Self.images.path, "--labels", labels.train, "--from", Self.model,
                                   "--out", dir.appendingPathComponent("bad.safetensors").path, "--class-weights", value])
            XCTAssertNotEqual(bad.status, 0, value)
            XCTAssertTrue(bad.stderr.contains(message), bad.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("bad.safetensors").path))
        }
    }

    func testMonitoringOptionsAreChecked() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeLabels(dir)
        let out = dir.appendingPathComponent("x.safetensors")
        let three = dir.appendingPathComponent("three.csv")
        try (["id,label"] + Self.imageIDs.enumerated().map { "\($0.element),\($0.offset % 3)" }).joined(separator: "\n").appending("\n")
            .write(to: three, atomically: true, encoding: .utf8)
        let cases: [([String], String)] = [
            (["--labels", three.path, "--monitor", "val_auc"], "--monitor val_auc needs two classes; the labels have 3"),
            (["--labels", labels.train, "--keep", "best", "--valid-fraction", "0"], "--keep best and --early-stop need validation images"),
            (["--labels", labels.train, "--early-stop", "0"], "--early-stop must be at least 1"),
            (["--labels", labels.train, "--monitor", "val_f1"], "--monitor"),
        ]
        for (extra, message) in cases {
            let result = try CLI.run(["fine-tune", Self.images.path, "--from", Self.model, "--out", out.path, "--batch-size", "4"] + extra)
            XCTAssertNotEqual(result.status, 0, "\(extra)")
            XCTAssertTrue(result.stderr.contains(message), "expected \(message), got \(result.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), "nothing written")
        }
    }
}
