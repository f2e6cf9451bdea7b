import ArgumentParser
import Foundation
import ResNetData
import ResNetDNNL
import ResNetFormats
import ResNetModel
import ResNetSupport

/// `resnetkit batch-infer PATH... --out CSV`: every image → logits and label, streamed, resumable, shardable.
struct BatchInfer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batch-infer",
        abstract: "Classify folders of TIFF images and write one CSV row per image.",
        discussion: """
            Output: header id,logit_0,…,logit_{K-1},label (label = index of the largest logit); --probs adds \
            prob_0,… (softmax) before label; --format kaggle writes id,label with label = probability of class 1. \
            With --tta N the logits are the mean over N views of each image, and label, probabilities and the \
            Kaggle column derive from that mean. id = file name without extension (with --recursive, the path below the folder given).

            Rows are appended batch by batch in enumeration order (readdir order sorted within chunks of 4096 \
            entries, sub-folders after files), so an interrupted file holds complete rows plus at most one torn \
            line. --resume cuts that line off, skips the ids already in the output and in the errors file, and \
            appends the rest, so every id appears exactly once; without --resume an existing output is refused. \
            (Logits can differ from an uninterrupted run's in the last bits when images are grouped into other \
            batches; with --batch-size 1 the files are identical.)

            Images that cannot be used are listed in the errors CSV (id,path,reason; default <out>.errors.csv, \
            rewritten by every run that is not resumed) and do not stop the run.

            Exit status: 0 all images done; 1 a fatal error (bad option, model or output file); 3 finished, but \
            some images failed; 4 stopped early because more than --max-errors images failed; 64 unparsable \
            arguments.

            Sharding: --shard I/N takes the images whose id's FNV-1a hash is I mod N; --shard auto reads \
            JOB_COMPLETION_INDEX (Kubernetes, with --shard-count or RESNETKIT_SHARD_COUNT) or the Slurm array \
            variables. See docs/scale-out.md.
            """)

    @Argument(help: "TIFF files or folders of .tif/.tiff files.")
    var paths: [String]

    @Option(help: "The CSV to write.")
    var out: String

    @Option(help: ArgumentHelp("Checkpoint, ONNX or HDF5 model (default: the newer of finetuned.safetensors and model.safetensors here).", valueName: "CKPT"))
    var model: String?

    @OptionGroup(title: "Preprocessing")
    var preprocessingOptions: PreprocessingOptions

    @Option(name: .customLong("batch-size"), parsing: .unconditional, help: "Images per GEMM batch.")
    var batchSize = 64

    @Option(help: TTAViews.help)
    var tta = TTAViews.one

    @Option(parsing: .unconditional, help: "Threads: lanes that each run the network on a share of every batch, and decoders (default: all cores).")
    var threads: Int?

    @Flag(help: "Descend into sub-folders.")
    var recursive = false

    @Flag(help: "Add softmax probability columns.")
    var probs = false

    @Option(help: ArgumentHelp("logits (all columns) or kaggle (id,label = P(class 1)).", valueName: "logits|kaggle"))
    var format = OutputFormat.logits

    @Flag(help: "Continue an interrupted run: keep the rows already written, do the rest.")
    var resume = false

    @Option(help: ArgumentHelp("Where failed images are listed (default: <out>.errors.csv).", valueName: "CSV"))
    var errors: String?

    @Option(name: .customLong("max-errors"), parsing: .unconditional, help: "Stop (status 4) when more than N images have failed.")
    var maxErrors: Int?

    @Option(help: ArgumentHelp("Process only shard I of N (0-based), or auto from Kubernetes/Slurm.", valueName: "I/N|auto"))
    var shard: String?

    @Option(name: .customLong("shard-count"), parsing: .unconditional, help: "Number of shards for --shard auto with a Kubernetes Indexed Job.")
    var shardCount: Int?

    @Flag(help: "No progress bar or summary (errors still go to stderr).")
    var quiet = false

    @Flag(help: "Replace an existing output (and errors file) instead of refusing.")
    var force = false

    @Option(name: .customLong("max-image-pixels"), parsing: .unconditional, help: "Refuse images with more pixels than this (default: a batch of them fits in about 1 GB).")
    var maxImagePixels: Int?

    @Option(help: EngineChoice.help)
    var precision = Precision.fp32

    /// `--format`: the CSV's columns.
    enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
        case logits, kaggle
    }

    func validate() throws {
        try Limits.check(batchSize, Limits.batchSize, "--batch-size")
        if let threads { try Limits.check(threads, Limits.threads, "--threads") }
        if force && resume { throw UsageError("--force and --resume exclude each other (replace the output, or continue it)") }
        if let maxErrors, maxErrors < 0 { throw UsageError("--max-errors must be 0 or more") }
        if format == .kaggle && probs { throw UsageError("--probs does not apply to --format kaggle (its label already is a probability)") }
    }

    func run() throws {
        Console.quiet = quiet
        TIFFDecoder.pixelBudget = try ImageBudget.resolve(maxImagePixels, batchSize: batchSize)
        let shard: Shard
        do { shard = try self.shard.map { try Shard.parse($0, shardCount: shardCount) } ?? .all } catch let error as Shard.SpecError {
            throw UsageError(error.description)
        }
        for path in paths {
            var info = stat()
            if stat(path, &info) != 0 { throw FileError(path, "no such file or folder") }
        }

        let modelPath = try model ?? Self.defaultModel()
        // Nothing is read or written before the outputs are known not to clash with the inputs or each other.
        let errorsPath = errors ?? out + ".errors.csv"
        let outputs = [OutputGuard.Output(out, option: "--out", mayExist: resume || force),
                       OutputGuard.Output(errorsPath, option: errors == nil ? "the errors file (--errors)" : "--errors",
                                          mayExist: resume || force || Self.isErrorsCSV(errorsPath))]
        try OutputGuard.check(outputs: outputs,
                              inputs: [OutputGuard.Input(modelPath, role: "model")] + paths.map { OutputGuard.Input($0, role: "input image path") },
                              forceHint: "use --resume to continue it, or --force to replace it")
        let locks = try OutputGuard.lock(outputs)
        defer { locks.forEach { $0.release() } }
        let checkpoint = try ModelImporter.load(path: modelPath).checkpoint
        Console.info("batch-infer: model \(modelPath)\(model == nil ? " (newest default model in this folder)" : "")")
        let preprocessing = try preprocessingOptions.applied(to: checkpoint.preprocessing)
        let classes = checkpoint.config.numClasses
        if format == .kaggle && classes != 2 {
            throw UsageError("--format kaggle needs a 2-class model; \(modelPath) has \(classes) classes")
        }

        let threadCount = threads ?? ProcessInfo.processInfo.activeProcessorCount
        BLASRuntime.setThreads(threadCount)
        Parallelism.threads = threadCount
        let plan = try EngineChoice.make(precision, checkpoint: checkpoint, modelPath: modelPath, threads: threadCount)
        let header = format == .kaggle ? ["id", "label"]
            : ["id"] + (0..<classes).map { "logit_\($0)" } + (probs ? (0..<classes).map { "prob_\($0)" } : []) + ["label"]
        let output = try AppendableCSV(path: out, header: header, existing: resume ? .resume : force ? .replace : .refuse)
        let errorLog = try AppendableCSV(path: errorsPath, header: ["id", "path", "reason"], existing: resume ? .resume : .replace)
        let done = Set(output.existingRecords.map { $0[0] } + errorLog.existingRecords.map { $0[0] })
        if resume {
            let torn = output.removedTornBytes > 0 ? ", removed a torn last line" : ""
            Console.info("batch-infer: resuming \(out): \(output.existingRecords.count) rows and \(errorLog.existingRecords.count) failures already there\(torn)")
        }

        let accept: @Sendable (ImageEntry) -> Bool = { shard.contains(id: $0.id) && !done.contains($0.id) }
        let loader = PrefetchingLoader(enumerator: ImageEnumerator(paths: paths, recursive: recursive),
                                       preprocessing: preprocessing, batchSize: batchSize, workers: threadCount, accept: accept)
        let progress = ProgressBar(label: "batch-infer")
        if progress.enabled { Self.countInBackground(paths: paths, recursive: recursive, accept: accept, into: progress) }

        let classifier = BatchClassifier(engine: plan, classes: classes, views: tta, batchSize: batchSize)
        try classifier.prepare(batch: batchSize, side: preprocessing.crop)
        var processed = 0, failed = errorLog.existingRecords.count
        try classifier.forEachBatch(loader.next) { batch, logits in
            if batch.count > 0 {
                try output.write(rows(batch.ids, logits, classes: classes))
                processed += batch.count
            }
            if !batch.failures.isEmpty {
                try errorLog.write(batch.failures.map { CSV.encodeRow([$0.id, $0.path, $0.reason]) }.joined())
                failed += batch.failures.count
                for failure in batch.failures.prefix(3) { Console.debug("\(failure.path): \(failure.reason)") }
            }
            progress.update(done: processed, failed: failed)
            if let maxErrors, failed > maxErrors {
                loader.cancel()
                progress.finish()
                Console.warning("stopped: \(failed) images failed, more than --max-errors \(maxErrors) (see \(errorsPath)); rerun with --resume to continue")
                throw ExitCode(4)
            }
        }
        progress.finish()
        let rate = progress.elapsed > 0 ? Double(processed) / progress.elapsed : 0
        let failures = failed > 0 ? ", \(failed) failed (listed in \(errorsPath))" : ", 0 failed"
        Console.info(String(format: "batch-infer: %d images%@, %.1f images/s, wrote %@", processed, failures, rate, out))
        if failed > 0 { throw ExitCode(3) }
    }

    /// CSV rows for a batch: id, logits, optional probabilities, label; or id and P(class 1) for Kaggle.
    func rows(_ ids: [String], _ logits: [Float], classes: Int) -> [UInt8] {
        PredictionRows.format(count: ids.count) { n, line in
            let row = logits[(n * classes)..<((n + 1) * classes)]
            line.append(CSV.encodeField(ids[n]))
            if format == .kaggle {
                line.append(",")
                line.append(Float(softmax(row)[1]))
            } else {
                line.appendFields(row)
                if probs { line.appendFields(ArraySlice(softmax(row).map { Float($0) })) }
                line.append(",")
                line.append(argmax(row))
            }
            line.append("\n")
        }
    }

    /// Whether `path` is an errors CSV of an earlier run (which a new run replaces without --force).
    static func isErrorsCSV(_ path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        let head = (try? handle.read(upToCount: 15)) ?? Data()
        return head == Data("id,path,reason\n".utf8)
    }

    /// The newer (by modification time) of what fine-tune and import-weights write by default.
    static func defaultModel() throws -> String {
        let candidates = ["finetuned.safetensors", "model.safetensors"].compactMap { name -> (String, Date)? in
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: name),
                  let date = attributes[.modificationDate] as? Date else { return nil }
            return (name, date)
        }
        guard let newest = candidates.max(by: { $0.1 < $1.1 }) else {
            throw UsageError("no --model given, and neither finetuned.safetensors nor model.safetensors is in the current folder")
        }
        return newest.0
    }

    /// Counts the images this run will process on a background thread, so the progress bar can show a
    /// total and an ETA without delaying the first prediction.
    static func countInBackground(paths: [String], recursive: Bool, accept: @escaping @Sendable (ImageEntry) -> Bool,
                                  into progress: ProgressBar) {
        let thread = Thread {
            var count = 0
            var enumerator = ImageEnumerator(paths: paths, recursive: recursive)
            while let entry = enumerator.next() {
                if accept(entry) { count += 1 }
            }
            progress.setTotal(count)
        }
        thread.start()
    }
}
