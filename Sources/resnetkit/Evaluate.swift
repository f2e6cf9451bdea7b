import ArgumentParser
import Foundation
import ResNetData
import ResNetDNNL
import ResNetFormats
import ResNetModel
import ResNetSupport

/// `resnetkit evaluate PATH... --labels CSV --model CKPT`: how well a model does on labelled images.
struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Score a model on labelled images: loss, accuracy, confusion matrix, precision/recall/F1, ROC AUC.",
        discussion: """
            Images are classified with the model's own preprocessing (eval mode); with --tta N every figure comes \
            from the mean logits over N views of each image. Only images with a label are \
            scored; unreadable images are reported and skipped. For two classes, class 1 is the positive class: \
            ROC AUC and average precision are computed from P(class 1), and --plots writes roc.svg and pr.svg. \
            The JSON report holds accuracy, loss, confusion_matrix (rows: true class, columns: predicted), \
            per-class precision/recall/f1, roc_auc and average_precision (null unless two classes are present).
            """)

    @Argument(help: "TIFF files or folders of .tif/.tiff files.")
    var paths: [String]

    @Option(help: ArgumentHelp("CSV with id,label (labels as the model's class names or indices).", valueName: "CSV"))
    var labels: String

    @Option(help: ArgumentHelp("Checkpoint, ONNX or HDF5 model.", valueName: "CKPT"))
    var model: String

    @Option(help: ArgumentHelp("Write the figures as JSON here.", valueName: "JSON"))
    var report: String?

    @Option(help: ArgumentHelp("Write roc.svg and pr.svg (binary tasks) into this folder.", valueName: "DIR"))
    var plots: String?

    @Option(name: .customLong("batch-size"), parsing: .unconditional, help: "Images per batch.")
    var batchSize = 64

    @Option(help: TTAViews.help)
    var tta = TTAViews.one

    @Flag(help: "Descend into sub-folders.")
    var recursive = false

    @Flag(help: "No progress output or summary (errors still go to stderr).")
    var quiet = false

    @Flag(help: "Replace an existing --report or plots instead of refusing.")
    var force = false

    @Option(name: .customLong("max-image-pixels"), parsing: .unconditional, help: "Refuse images with more pixels than this (default: a batch of them fits in about 1 GB).")
    var maxImagePixels: Int?

    @Option(help: EngineChoice.help)
    var precision = Precision.fp32

    func validate() throws {
        try Limits.check(batchSize, Limits.batchSize, "--batch-size")
    }

    func run() throws {
        Console.quiet = quiet
        if quiet { Console.silenceStandardOutput() }
        TIFFDecoder.pixelBudget = try ImageBudget.resolve(maxImagePixels, batchSize: batchSize)
        for path in paths where !FileManager.default.fileExists(atPath: path) { throw FileError(path, "no such file or folder") }
        // Outputs are checked (and the plots folder made) before the evaluation, not after it.
        var outputs: [OutputGuard.Output] = []
        if let report { outputs.append(OutputGuard.Output(report, option: "--report", mayExist: force)) }
        if let plots {
            do { try FileManager.default.createDirectory(atPath: plots, withIntermediateDirectories: true) } catch {
                throw FileError(plots, "cannot create the plots folder: \((error as NSError).localizedFailureReason ?? systemErrorMessage())")
            }
            outputs += ["roc.svg", "pr.svg"].map { OutputGuard.Output((plots as NSString).appendingPathComponent($0), option: "--plots", mayExist: force) }
        }
        try OutputGuard.check(outputs: outputs, inputs: [OutputGuard.Input(model, role: "model (--model)"), OutputGuard.Input(labels, role: "labels (--labels)")]
                                + paths.map { OutputGuard.Input($0, role: "input image path") })
        let locks = try OutputGuard.lock(outputs)
        defer { locks.forEach { $0.release() } }
        let checkpoint = try ModelImporter.load(path: model).checkpoint
        let classes = checkpoint.config.numClasses
        let table = try LabelTable.load(path: labels, classNames: checkpoint.classNames)
        if let note = table.columnNote { Console.info("note: \(note)") }
        let labelOf = Dictionary(uniqueKeysWithValues: zip(table.ids, table.labels))
        let plan = try EngineChoice.make(precision, checkpoint: checkpoint, modelPath: model,
                                         threads: ProcessInfo.processInfo.activeProcessorCount)
        let loader = PrefetchingLoader(enumerator: ImageEnumerator(paths: paths, recursive: recursive),
                                       preprocessing: checkpoint.preprocessing, batchSize: batchSize,
                                       workers: max(1, ProcessInfo.processInfo.activeProcessorCount),
                                       accept: { labelOf[$0.id] != nil })
        let progress = ProgressBar(label: "evaluate")
        let classifier = BatchClassifier(engine: plan, classes: classes, views: tta, batchSize: batchSize)
        try classifier.prepare(batch: batchSize, side: checkpoint.preprocessing.crop)
        var logits: [Float] = [], truth: [Int] = [], failures: [ImageFailure] = []
        try classifier.forEachBatch(loader.next) { batch, batchLogits in
            failures += batch.failures
            guard batch.count > 0 else { return }
            logits += batchLogits
            truth += batch.ids.map { labelOf[$0]! }
            progress.update(done: truth.count, failed: failures.count)
        }
        progress.finish()
        for failure in failures.prefix(5) { Console.warning(failure.reason) }
        guard !truth.isEmpty else { throw FileError(labels, "none of its ids matched a readable image in \(paths.joined(separator: ", "))") }

        let metrics = ClassificationMetrics(logits: logits, labels: truth, classes: classes)
        let curves = classes == 2 ? BinaryCurves(scores: positiveProbabilities(logits), positive: truth.map { $0 == 1 }) : nil
        print(String(format: "images: %d (failed: %d, labelled but not found: %d)", truth.count, failures.count,
                     max(0, table.ids.count - truth.count - failures.count)))
        print(String(format: "loss: %.4f  accuracy: %.4f", metrics.loss, metrics.accuracy))
        if let curves { print(String(format: "ROC AUC: %.4f  average precision: %.4f", curves.rocAUC, curves.averagePrecision)) }
        print("confusion matrix (rows: true, columns: predicted):")
        let names = checkpoint.classNames
        let width = max(11, (names.map(\.count).max() ?? 0) + 2)
        func pad(_ s: String) -> String { String(repeating: " ", count: max(0, width - s.count)) + s }
        print(pad("") + names.map(pad).joined())
        for (k, row) in metrics.confusion.enumerated() { print(pad(names[k]) + row.map { pad(String($0)) }.joined()) }
        print(pad("class") + pad("precision") + pad("recall") + pad("F1"))
        for k in 0..<classes {
            print(pad(names[k]) + [metrics.precision[k], metrics.recall[k], metrics.f1[k]].map { pad(String(format: "%.4f", $0)) }.joined())
        }

        if let report {
            let perClass: [[String: Any]] = (0..<classes).map {
                ["class": names[$0], "precision": metrics.precision[$0], "recall": metrics.recall[$0], "f1": metrics.f1[$0],
                 "support": metrics.confusion[$0].reduce(0, +)]
            }
            let object: [String: Any] = [
                "model": model, "images": truth.count, "failed": failures.count, "classes": names,
                "accuracy": metrics.accuracy, "loss": metrics.loss, "confusion_matrix": metrics.confusion,
                "per_class": perClass,
                "roc_auc": curves.map { $0.rocAUC as Any } ?? NSNull(),
                "average_precision": curves.map { $0.averagePrecision as Any } ?? NSNull(),
            ]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
            try AtomicFile.write(data + Data("\n".utf8), to: report)
        }
        if let plots {
            try FileManager.default.createDirectory(atPath: plots, withIntermediateDirectories: true)
            guard let curves else {
                Console.warning("--plots: ROC and PR curves need a binary task with both classes present; none written")
                return
            }
            let roc = SVGPlot(title: String(format: "ROC (AUC %.4f)", curves.rocAUC), xLabel: "false positive rate",
                              yLabel: "true positive rate", series: [
                                .init(label: "model", points: curves.roc, color: "#1f77b4", lineWidth: 2),
                                .init(label: "chance", points: [(0, 0), (1, 1)], color: "#888", dashed: true),
                              ], xRange: 0...1, yRange: 0...1)
            let positives = Double(truth.filter { $0 == 1 }.count) / Double(truth.count)
            let pr = SVGPlot(title: String(format: "Precision-recall (AP %.4f)", curves.averagePrecision), xLabel: "recall",
                             yLabel: "precision", series: [
                                .init(label: "model", points: curves.precisionRecall, color: "#1f77b4", lineWidth: 2),
                                .init(label: "chance", points: [(0, positives), (1, positives)], color: "#888", dashed: true),
                             ], xRange: 0...1, yRange: 0...1)
            for (name, plot) in [("roc.svg", roc), ("pr.svg", pr)] {
                try AtomicFile.write(Data(SVGPlot.document([plot], width: 520, panelHeight: 480).utf8),
                                     to: (plots as NSString).appendingPathComponent(name))
            }
        }
    }
}
