import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import ResNetFormats
import ResNetModel
import XCTest

/// fine-tune and evaluate on the 12 fixture patches with the small default model (base width 8).
final class FineTuneTests: XCTestCase, UsesDefaultFixtures {
    func fineTuneArguments(_ labels: String, out: URL, extra: [String] = []) -> [String] {
        ["fine-tune", Self.images.path, "--labels", labels, "--from", Self.model, "--out", out.path,
         "--batch-size", "4", "--valid-fraction", "0.25", "--seed", "3"] + extra
    }

    func testTwoPhasesWriteCheckpointHistoryPlotAndRepeatWithTheSameSeed() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir, names: ["normal", "tumor"])
        let a = dir.appendingPathComponent("a.safetensors"), b = dir.appendingPathComponent("b.safetensors")
        let history = dir.appendingPathComponent("history.csv"), plot = dir.appendingPathComponent("plot.svg")
        let options = ["--head-epochs", "2", "--finetune-epochs", "1"]
        let first = try CLI.run(fineTuneArguments(labels, out: a, extra: options + ["--history", history.path, "--plot", plot.path]))
        XCTAssertEqual(first.status, 0, first.stderr)
        let second = try CLI.run(fineTuneArguments(labels, out: b, extra: options + ["--quiet"]))
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertEqual(second.stderr, "", "--quiet prints nothing")
        XCTAssertEqual(try Data(contentsOf: a), try Data(contentsOf: b), "same seed, same checkpoint")

        // The seed's epoch line, once per epoch of each phase.
        let pattern = try NSRegularExpression(pattern: #"^\[Epoch: 0[12]/0[12]\] loss: \d+\.\d{4} acc: [01]\.\d{4} val_loss: \d+\.\d{4} val_acc: [01]\.\d{4} val_auc: ([01]\.\d{4}|nan)$"#,
                                              options: .anchorsMatchLines)
        let text = first.stderr
        XCTAssertEqual(pattern.numberOfMatches(in: text, range: NSRange(text.startIndex..., in: text)), 3, text)
        XCTAssertTrue(text.contains("9 training and 3 validation images, classes normal, tumor"), text)

        let checkpoint = try Checkpoint.load(path: a.path)
        XCTAssertEqual(checkpoint.classNames, ["normal", "tumor"])
        XCTAssertEqual(checkpoint.config.head, .mlp)
        XCTAssertEqual(checkpoint.config.numClasses, 2)
        XCTAssertEqual(checkpoint.preprocessing.crop, 49)

        // 9 training images in batches of 4: 2 steps per epoch, 3 epochs; one validation row per epoch.
        let rows = try String(contentsOf: history, encoding: .utf8).split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        XCTAssertEqual(rows.first?.joined(separator: ","), "kind,phase,epoch,step,loss,accuracy,average_loss,average_accuracy,val_loss,val_accuracy,val_auc")
        XCTAssertEqual(rows.filter { $0.first == "step" }.count, 6)
        let epochs = rows.filter { $0.first == "epoch" }
        XCTAssertEqual(epochs.map { "\($0[1])/\($0[2])/\($0[3])" }, ["1/1/2", "1/2/4", "2/1/6"])
        XCTAssertTrue(epochs.allSatisfy { Double($0[8]) != nil && Double($0[9]) != nil })

        let svg = try Data(contentsOf: plot)
        XCTAssertTrue(XMLParser(data: svg).parse(), "the plot is well-formed XML")
        XCTAssertTrue(String(decoding: svg, as: UTF8.self).contains("stroke-dasharray=\"2,3\""), "dotted line where fine-tuning starts")
        for slot in 0..<2 {
            XCTAssertFalse(FileManager.default.fileExists(atPath: a.path + ".resume\(slot).safetensors"), "sidecars removed when finished")
        }
    }

    /// Phase 1 only, frozen BatchNorm in eval mode: every backbone tensor, running statistics included, is
    /// bit-for-bit the pretrained one; in train mode the running statistics move but the weights do not.
    func testFrozenBackboneStaysUnchanged() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir)
        let source = try Checkpoint.load(path: Self.model)
        for mode in ["eval", "train"] {
            let out = dir.appendingPathComponent("\(mode).safetensors")
            let result = try CLI.run(fineTuneArguments(labels, out: out, extra: ["--head-epochs", "2", "--finetune-epochs", "0", "--frozen-bn", mode]))
            XCTAssertEqual(result.status, 0, result.stderr)
            let trained = try Checkpoint.load(path: out.path)
            for spec in source.architecture.backboneSpecs {
                let same = trained.state[spec.name]?.data == source.state[spec.name]?.data
                switch (mode, spec.role) {
                case ("eval", _), (_, .weight), (_, .bias): XCTAssertTrue(same, "\(mode): \(spec.name) changed")
                case (_, .runningMean): XCTAssertFalse(same, "\(mode): \(spec.name) should adapt")
                default: break
                }
            }
        }
    }

    /// A separate validation folder and sizes: --train-size caps the seeded sample, --valid-size the validation set.
    func testSeparateValidationFolderAndSizes() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir)
        let out = dir.appendingPathComponent("out.safetensors")
        let result = try CLI.run(["fine-tune", Self.images.path, "--labels", labels, "--from", Self.model, "--out", out.path,
                                  "--valid-dir", Self.images.path, "--valid-labels", labels, "--train-size", "8",
                                  "--valid-size", "5", "--head-epochs", "1", "--finetune-epochs", "1", "--batch-size", "4",
                                  "--head", "linear", "--no-augment"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stderr.contains("8 training and 5 validation images"), result.stderr)
        XCTAssertEqual(try Checkpoint.load(path: out.path).config.head, .linear)
    }

    /// A labelled image that is missing or unreadable is reported and skipped; the run goes on.
    func testUnreadableImagesAreSkippedWithAWarning() throws {
        let dir = try CLI.temporaryDirectory(self)
        let images = dir.appendingPathComponent("images")
        try FileManager.default.copyItem(at: Self.images, to: images)
        try Data("not a tiff".utf8).write(to: images.appendingPathComponent("broken.tif"))
        let labels = dir.appendingPathComponent("labels.csv")
        let rows = Self.imageIDs.enumerated().map { "\($0.element),\($0.offset % 2)" } + ["broken,1", "absent,0"]
        try ((["id,label"] + rows).joined(separator: "\n") + "\n").write(to: labels, atomically: true, encoding: .utf8)
        let result = try CLI.run(["fine-tune", images.path, "--labels", labels.path, "--from", Self.model,
                                  "--out", dir.appendingPathComponent("out.safetensors").path, "--valid-fraction", "0",
                                  "--head-epochs", "1", "--finetune-epochs", "0", "--batch-size", "4"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stderr.contains("warning: 2 training image(s) skipped, e.g. "), result.stderr)
        XCTAssertTrue(result.stderr.contains("12 training and 0 validation images"), result.stderr)
        XCTAssertTrue(result.stderr.contains("[Epoch: 01/01] loss: "), result.stderr)
    }

    /// A run killed after a few epochs of `phase` and resumed ends bit-for-bit where an uninterrupted run ends.
    func checkKillAndResume(options: [String], killAfter marker: String) throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir)
        let whole = dir.appendingPathComponent("whole.safetensors"), killed = dir.appendingPathComponent("killed.safetensors")
        XCTAssertEqual(try CLI.run(fineTuneArguments(labels, out: whole, extra: options)).status, 0)

        let process = Process()
        process.executableURL = CLI.executable
        process.arguments = fineTuneArguments(labels, out: killed, extra: options)
        let err = Pipe()
        process.standardError = err
        try process.run()
        var seen = ""
        // Three epoch lines after the marker: the kill lands mid-phase.
        while !(seen.contains(marker) && seen.components(separatedBy: marker)[1].components(separatedBy: "[Epoch:").count > 3) {
            let chunk = err.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            seen += String(decoding: chunk, as: UTF8.self)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationReason, .uncaughtSignal, "the run must be killed mid-way: \(seen)")
        XCTAssertTrue((0..<2).contains { FileManager.default.fileExists(atPath: killed.path + ".resume\($0).safetensors") },
                      "optimizer state kept for resuming")

        let changed = try CLI.run(fineTuneArguments(labels, out: killed, extra: options + ["--resume", "--seed", "4"]))
        XCTAssertNotEqual(changed.status, 0)
        XCTAssertTrue(changed.stderr.contains("was trained with seed 3, batch size 4"), changed.stderr)
        let resumed = try CLI.run(fineTuneArguments(labels, out: killed, extra: options + ["--resume"]))
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stderr.contains("resuming"), resumed.stderr)
        XCTAssertEqual(try Checkpoint.load(path: killed.path).state, try Checkpoint.load(path: whole.path).state)
    }

    func testResumeContinuesARunKilledWhileFineTuning() throws {
        try checkKillAndResume(options: ["--head-epochs", "2", "--finetune-epochs", "40"], killAfter: "phase 2")
    }

    func testResumeContinuesARunKilledWhileTrainingTheHead() throws {
        try checkKillAndResume(options: ["--head-epochs", "60", "--finetune-epochs", "2"], killAfter: "phase 1")
    }

    func testBadLabelsAndOptionsAreReportedOnOneLine() throws {
        let dir = try CLI.temporaryDirectory(self)
        let out = dir.appendingPathComponent("out.safetensors")
        let ids = Self.imageIDs
        let cases: [(String, String)] = [
            ("id,label\n\(ids[0]),0\n\(ids[0]),1\n", "labels.csv: record 3: id \(ids[0]) appears twice"),
            ("id,label\n\(ids[0]),0\n\(ids[1])\n", "labels.csv: record 3: 1 field(s), the header has 2"),
            ("id,label\n\(ids[0]),1\n\(ids[1]),1\n", "labels.csv: only one class (1): a classifier needs at least two"),
            ("id,label\n", "labels.csv: no labelled rows after the header (expected id,label)"),
            ("id,label\n\"\(ids[0]),0\n", "labels.csv:"),
        ]
        for (content, message) in cases {
            let labels = dir.appendingPathComponent("labels.csv")
            try content.write(to: labels, atomically: true, encoding: .utf8)
            let result = try CLI.run(fineTuneArguments(labels.path, out: out))
            XCTAssertNotEqual(result.status, 0, content)
            XCTAssertTrue(result.stderr.contains(message), "expected \(message), got \(result.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), "nothing written")
        }
        let labels = try writeAlternatingLabels(dir)
        let missing = try CLI.run(["fine-tune", Self.images.path, "--labels", labels, "--from", dir.appendingPathComponent("none.safetensors").path])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("none.safetensors"), missing.stderr)
        let unpaired = try CLI.run(fineTuneArguments(labels, out: out, extra: ["--valid-dir", dir.path]))
        XCTAssertTrue(unpaired.stderr.contains("--valid-dir and --valid-labels go together"), unpaired.stderr)
        // --resume on a checkpoint that fine-tune did not write.
        try FileManager.default.copyItem(atPath: Self.model, toPath: out.path)
        let foreign = try CLI.run(fineTuneArguments(labels, out: out, extra: ["--resume"]))
        XCTAssertNotEqual(foreign.status, 0)
        XCTAssertTrue(foreign.stderr.contains("\(out.path): has no fine-tune progress to resume"), foreign.stderr)
        let badMode = try CLI.run(fineTuneArguments(labels, out: out, extra: ["--frozen-bn", "sometimes"]))
        XCTAssertEqual(badMode.status, 1, badMode.stderr)
        XCTAssertEqual(badMode.stderr, "error: The value 'sometimes' is invalid for '--frozen-bn <train|eval>'. Please provide one of 'train' and 'eval'.\n")
    }

    /// evaluate's figures against ONNX Runtime's logits for the fixture images (fixtures/images/expected-logits.csv),
    /// with loss, accuracy, confusion matrix and ROC AUC (pair counting) computed here from those logits.
    func testEvaluateMatchesFiguresComputedFromONNXRuntimeLogits() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir)
        let report = dir.appendingPathComponent("report.json"), plots = dir.appendingPathComponent("plots")
        let result = try CLI.run(["evaluate", Self.images.path, "--labels", labels, "--model", Self.model,
                                  "--report", report.path, "--plots", plots.path])
        XCTAssertEqual(result.status, 0, result.stderr)

        let lines = try String(contentsOf: Self.images.appendingPathComponent("expected-logits.csv"), encoding: .utf8)
            .split(separator: "\n").dropFirst().map { $0.split(separator: ",") }
        let truth = Dictionary(uniqueKeysWithValues: Self.imageIDs.enumerated().map { ($0.element, $0.offset % 2) })
        var loss = 0.0, correct = 0, confusion = [[0, 0], [0, 0]]
        var positives: [Double] = [], negatives: [Double] = []
        for line in lines {
            let l0 = Double(line[1])!, l1 = Double(line[2])!, y = truth[String(line[0])]!
            let logSum = max(l0, l1) + log(exp(l0 - max(l0, l1)) + exp(l1 - max(l0, l1)))
            loss += logSum - (y == 0 ? l0 : l1)
            let predicted = l1 > l0 ? 1 : 0
            confusion[y][predicted] += 1
            if predicted == y { correct += 1 }
            if y == 1 { positives.append(l1 - l0) } else { negatives.append(l1 - l0) }
        }
        var pairs = 0.0
        for p in positives { for n in negatives { pairs += p > n ? 1 : (p == n ? 0.5 : 0) } }
        let auc = pairs / Double(positives.count * negatives.count)

        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: report)) as? [String: Any])
        XCTAssertEqual(json["images"] as? Int, 12)
        XCTAssertEqual(json["accuracy"] as? Double ?? -1, Double(correct) / 12, accuracy: 1e-12)
        XCTAssertEqual(json["confusion_matrix"] as? [[Int]], confusion)
        XCTAssertEqual(json["loss"] as? Double ?? -1, loss / 12, accuracy: 1e-4 * loss / 12)
        XCTAssertEqual(json["roc_auc"] as? Double ?? -1, auc, accuracy: 1e-12)
        XCTAssertNotNil(json["average_precision"] as? Double)
        for name in ["roc.svg", "pr.svg"] {
            let svg = try Data(contentsOf: plots.appendingPathComponent(name))
            XCTAssertTrue(XMLParser(data: svg).parse(), name)
        }
        XCTAssertTrue(result.stdout.contains(String(format: "ROC AUC: %.4f", auc)), result.stdout)
    }

    func testEvaluateRefusesLabelsOutsideTheModelsClasses() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = try writeAlternatingLabels(dir, names: ["0", "cat"])
        let result = try CLI.run(["evaluate", Self.images.path, "--labels", labels, "--model", Self.model])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.contains("labels.csv: record 3: label cat is not one of the classes 0, 1"), result.stderr)
    }
}
