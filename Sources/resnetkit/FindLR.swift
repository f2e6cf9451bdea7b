import ArgumentParser
import Foundation
import ResNetData
import ResNetDNNL
import ResNetFormats
import ResNetModel
import ResNetSupport

/// `resnetkit find-lr DIR --labels CSV`: the learning-rate range test for one phase of the fine-tune recipe.
struct FindLR: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "find-lr",
        abstract: "Learning-rate range test: suggests --head-max-lr or --max-lr for fine-tune.",
        discussion: """
            Trains the model as fine-tune's phase would (--phase head: backbone frozen; finetune: everything), one \
            batch per step, with the learning rate growing exponentially from --start-lr to --end-lr over --steps \
            steps (AdamW, fine-tune's weight decay for the phase, PyTorch's betas). The loss is smoothed as fastai's \
            lr_find does (moving average, factor 0.98, with bias correction) and the test stops once the smoothed \
            loss exceeds 4 times its minimum. It suggests the rate where the smoothed loss falls fastest (printed as \
            the fine-tune option to pass) and, as an alternative, a tenth of the rate where it is lowest. \
            Nothing is saved but --csv and --plot.
            The model is --from with a new head for the labels' classes, as fine-tune makes it, or --from as it is \
            when it already has the requested head for those classes (e.g. fine-tune's output, to test --phase \
            finetune after a head phase). The training images are fine-tune's (same --seed and --valid-fraction: \
            the validation share is left out) with its augmentation and preprocessing.
            """)

    enum Phase: String, ExpressibleByArgument, CaseIterable {
        case head, finetune
    }

    @OptionGroup(title: "Training set, model and batches (as fine-tune's)")
    var training: TrainingOptions

    @Option(help: ArgumentHelp("Which fine-tune phase to test: head (backbone frozen) or finetune (everything trainable).", valueName: "head|finetune"))
    var phase = Phase.head

    @Option(name: .customLong("start-lr"), help: "Learning rate of the first step.")
    var startLR = 1e-7

    @Option(name: .customLong("end-lr"), help: "Learning rate of the last step.")
    var endLR = 10.0

    @Option(help: "Steps (batches) at most.")
    var steps = 100

    @Option(help: ArgumentHelp("Plot the loss against the learning rate here, the suggestions marked.", valueName: "SVG"))
    var plot: String?

    @Option(help: ArgumentHelp("Write lr,loss,smoothed_loss per step here.", valueName: "CSV"))
    var csv: String?

    @Option(name: .customLong("weight-decay"), help: "AdamW weight decay (default: fine-tune's for the phase, 0.01 head, 0.05 finetune).")
    var weightDecay: Double?

    @Flag(help: "No progress output (errors still go to stderr; the suggestion still goes to stdout).")
    var quiet = false

    func validate() throws {
        guard startLR > 0, endLR > startLR else { throw ValidationError("--start-lr must be positive and below --end-lr") }
        guard steps >= 10 else { throw ValidationError("--steps must be at least 10") }
        if let plot, let csv, plot == csv { throw ValidationError("--plot and --csv name the same file") }
    }

    func run() throws {
        Console.quiet = quiet
        let (headKind, crop, batchSize) = (training.head, training.crop, training.batchSize)

        // The model: --from as it is when it has this head for the labels' classes, else fine-tune's new head.
        let table = try LabelTable.load(path: training.labels)
        let source = try ModelImporter.load(path: training.from).checkpoint
        let reuse = source.classNames == table.classNames && source.config.numClasses == table.classNames.count
            && source.config.head == headKind
        let checkpoint = reuse ? source : try training.newModel(headKind: headKind)
        Console.info("find-lr: \(reuse ? "the head of \(training.from)" : "a new \(headKind.rawValue) head") for classes \(table.classNames.joined(separator: ", "))")
        let preprocessing = try training.preprocessingOptions.applied(to: checkpoint.preprocessing, defaultCrop: TrainingOptions.defaultCrop)

        let (train, _, classNames) = try training.loadData(classNames: checkpoint.classNames)
        guard train.count >= batchSize else {
            throw UsageError("need at least --batch-size \(batchSize) training images, have \(train.count)")
        }
        if crop > 0 && (train.width < crop || train.height < crop) {
            throw UsageError("--crop \(crop) is larger than the \(train.width)x\(train.height) images")
        }
        // fine-tune's model: its frozen BatchNorm mode and precision (bf16: convolutions built for this batch now).
        let side = train.inputSide(crop: crop)
        EngineChoice.warnIfSlow(training.precision)
        let model = try training.makeModel(
            architecture: checkpoint.architecture, state: checkpoint.state,
            lossWeights: try training.classWeights.weights(trainingLabels: train.labels, classNames: classNames), batch: batchSize, side: side)
        model.setBackboneFrozen(phase == .head)
        let decay = weightDecay ?? (phase == .head ? 0.01 : 0.05)
        let optimizer = AdamW(parameters: model.parameters, lr: startLR, weightDecay: decay)
        Console.info("find-lr: \(train.count) training images, \(phase.rawValue) phase, \(training.precision.rawValue), lr \(Self.short(startLR)) to \(Self.short(endLR)) over at most \(steps) steps of \(batchSize) images")

        var test = LearningRateRangeTest(startLR: startLR, endLR: endLR, steps: steps)
        var rng = SplitMix64(seed: training.seed &* 0x9E37_79B9 &+ 0xF1D)
        model.rng = SplitMix64(seed: rng.next())
        var buffer = [Float](repeating: 0, count: batchSize * side * side * 3)
        var order: [Int] = [], next = 0
        let progress = ProgressBar(label: "find-lr", unit: "steps")
        progress.setTotal(steps)
        while let lr = test.nextLearningRate {
            // One batch per step, through the training images in a fresh order each pass.
            if next + batchSize > order.count {
                order = Array(0..<train.count)
                order.shuffle(using: &rng)
                next = 0
            }
            let indices = order[next..<(next + batchSize)]
            next += batchSize
            optimizer.lr = lr
            buffer.withUnsafeMutableBufferPointer { b in
                train.fillBatch(indices, preprocessing: preprocessing, augment: !training.noAugment, rng: &rng, into: b.baseAddress!)
                _ = model.forward(images: b.baseAddress!, count: batchSize, height: side, width: side, training: true)
            }
            let loss = model.backward(labels: indices.map { train.labels[$0] })
            optimizer.step()
            test.record(loss: Double(loss))
            progress.update(done: test.losses.count)
        }
        progress.finish()
        Console.info("find-lr: \(test.losses.count) steps, up to lr \(Self.short(test.learningRates.last!))\(test.stopReason.map { "; stopped: \($0)" } ?? "")")

        if let csv {
            let rows = [["lr", "loss", "smoothed_loss"]] + test.learningRates.indices.map {
                [String(test.learningRates[$0]), String(test.losses[$0]), String(test.smoothedLosses[$0])]
            }
            try AtomicFile.write(Data(rows.map(CSV.encodeRow).joined().utf8), to: csv)
        }
        let suggestion = test.suggestion()
        if let plot { try AtomicFile.write(Data(Self.plot(test, suggestion).utf8), to: plot) }
        guard let suggestion else {
            throw UsageError("too few steps (\(test.losses.count)) for a suggestion; lower --start-lr or raise --steps")
        }
        let option = phase == .head ? "--head-max-lr" : "--max-lr"
        print("steepest descent of the smoothed loss at lr \(Self.short(suggestion.steepest)); lowest at \(Self.short(suggestion.minimum)) (a tenth: \(Self.short(suggestion.minimumOverTen)))")
        print("suggested: \(option) \(Self.short(suggestion.steepest))  (alternative: \(option) \(Self.short(suggestion.minimumOverTen)))")
    }

    /// 3.2e-3 style: two significant digits, an exponent without padding (valid input for every rate option).
    static func short(_ value: Double) -> String {
        guard value > 0, value.isFinite else { return "\(value)" }
        var exponent = Int(floor(log10(value)))
        var mantissa = (value / pow(10, Double(exponent)) * 10).rounded() / 10
        if mantissa >= 10 { mantissa /= 10; exponent += 1 }
        return String(format: "%.1fe%d", mantissa, exponent)
    }

    /// Loss against the learning rate on a log axis: raw (faint) and smoothed, the suggestions as vertical lines.
    static func plot(_ test: LearningRateRangeTest, _ suggestion: LearningRateRangeTest.Suggestion?) -> String {
        let x = test.learningRates.map { log10($0) }
        // The y axis shows the smoothed curve up to where it diverges (its last five points, as fastai's plot
        // leaves them out), with room above; what lies beyond is clipped to the top edge.
        let kept = max(1, test.smoothedLosses.count - 5)
        let settled = test.smoothedLosses.prefix(kept).filter(\.isFinite)
        let low = (settled + test.losses.prefix(kept).filter(\.isFinite)).min() ?? 0, high = settled.max() ?? 1
        let span = max(high - low, 1e-3 * max(abs(low), 1))
        let range = (low - 0.05 * span)...(high + 0.6 * span)
        func clip(_ v: Double) -> Double { v.isFinite ? min(max(v, range.lowerBound), range.upperBound) : range.upperBound }
        var series: [SVGPlot.Series] = [
            .init(label: "loss (per batch)", points: zip(x, test.losses).map { (x: $0, y: clip($1)) }, color: "#1f77b4", opacity: 0.3, lineWidth: 1),
            .init(label: "smoothed loss", points: zip(x, test.smoothedLosses).map { (x: $0, y: clip($1)) }, color: "#1f77b4", lineWidth: 2),
        ]
        if let suggestion {
            for (lr, label, color) in [(suggestion.steepest, "steepest descent", "#d62728"), (suggestion.minimumOverTen, "minimum / 10", "#2ca02c")] {
                series.append(.init(label: "\(label): \(short(lr))", points: [(log10(lr), range.lowerBound), (log10(lr), range.upperBound)],
                                    color: color, lineWidth: 1.5, dashed: true))
            }
        }
        var panel = SVGPlot(title: "Learning-rate range test", xLabel: "learning rate (log scale)", yLabel: "training loss",
                            series: series, yRange: range)
        panel.xTickLabel = { short(pow(10, $0)) }
        panel.legendLeft = true
        return SVGPlot.document([panel], width: 720, panelHeight: 420)
    }
}
