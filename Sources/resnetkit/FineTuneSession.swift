import Foundation
import ResNetData
import ResNetDNNL
import ResNetFormats
import ResNetModel
import ResNetSupport

/// One fine-tune run from its starting point to its last epoch: the phases in order, each epoch trained by the
/// library's `Trainer`, validated, and saved (optimizer state, history, checkpoint, in that order, so that a
/// kill at any moment leaves a checkpoint that --resume continues exactly).
final class FineTuneSession {
    /// The epoch whose weights the checkpoint holds (1-based phase and epoch; 0, 0 before the first) and its
    /// monitored value.
    struct HeldEpoch {
        var phase = 0, epoch = 0
        var value: Double?
    }

    let options: FineTune
    /// What the run started from: classes, provenance, architecture, and the weights of the starting point.
    let checkpoint: Checkpoint
    let start: FineTune.ResumeState
    let preprocessing: Preprocessing
    let train: ImageSet
    let valid: ImageSet?
    let lossWeights: [Float]?
    let stepsPerEpoch: Int
    /// Side of the (square) training images after the crop.
    let side: Int
    var model: TrainableResNet
    var tracker: TrainingMonitor
    var held = HeldEpoch()
    /// --keep best: the best weights so far (what the checkpoint holds); within a phase, training goes on from the last.
    var bestState: StateDict?
    var history: HistoryLog
    /// The arithmetic of the epochs the checkpoint holds, in order of use (`FineTune.precisionKey`).
    let precisions: [String]

    /// Loads the data and builds the model; checks that a resumed run agrees with its checkpoint.
    init(_ options: FineTune, checkpoint: Checkpoint, start: FineTune.ResumeState) throws {
        self.options = options
        self.checkpoint = checkpoint
        self.start = start
        preprocessing = try options.training.preprocessingOptions.applied(to: checkpoint.preprocessing, defaultCrop: TrainingOptions.defaultCrop)
        let (train, valid, classNames) = try options.training.loadData(
            classNames: options.resume ? checkpoint.classNames : nil,
            validation: options.validDir.map { TrainingOptions.ValidationSource(dir: $0, labels: options.validLabels!) },
            validSize: options.validSize)
        guard classNames == checkpoint.classNames else {
            throw UsageError("the labels' classes \(classNames) differ from the model's \(checkpoint.classNames)")
        }
        guard train.count >= 2 else { throw UsageError("need at least 2 training images, have \(train.count)") }
        let crop = options.training.crop
        if crop > 0 && (train.width < crop || train.height < crop) {
            throw UsageError("--crop \(crop) is larger than the \(train.width)x\(train.height) images")
        }
        Console.info("fine-tune: \(train.count) training and \(valid?.count ?? 0) validation images, classes \(classNames.joined(separator: ", "))")
        self.train = train
        self.valid = valid
        stepsPerEpoch = max(1, train.count / options.training.batchSize)
        side = train.inputSide(crop: crop)

        let resumed = options.resume && start.epoch > 0 ? checkpoint : nil
        tracker = try options.startMonitor(resumed: resumed, classNames: classNames)
        lossWeights = try options.lossWeights(trainingLabels: train.labels, classNames: classNames, resumed: resumed)
        if let resumed {
            if options.keep == .best { bestState = checkpoint.state }
            if let text = resumed.extra[FineTune.monitorKey],
               let record = try? JSONDecoder().decode(FineTune.MonitorRecord.self, from: Data(text.utf8)) {
                held = HeldEpoch(phase: record.phase, epoch: record.epoch, value: record.value)
            }
        }
        history = try HistoryLog(path: options.history, resumeAfter: options.resume ? (start.phase, start.epoch) : nil)
        precisions = FineTune.precisions(continuing: options.resume ? checkpoint.extra : nil, in: options.training.precision, out: options.out)
        EngineChoice.warnIfSlow(options.training.precision)
        model = try options.training.makeModel(architecture: checkpoint.architecture, state: checkpoint.state, lossWeights: lossWeights,
                                               batch: min(options.training.batchSize, train.count), side: side)
    }

    func makeModel(_ state: StateDict) throws -> TrainableResNet {
        try options.training.makeModel(architecture: checkpoint.architecture, state: state, lossWeights: lossWeights,
                                       batch: min(options.training.batchSize, train.count), side: side)
    }

    func run() throws {
        for (index, phase) in options.phases.enumerated() where index >= start.phase && phase.epochs > 0 {
            try runPhase(index, phase)
        }
        let heldValue = held.value.map { String(format: ", %@ %.4f", options.monitor.rawValue, $0) } ?? ""
        Console.info("fine-tune: wrote \(options.out) (phase \(held.phase) epoch \(held.epoch)\(heldValue))")
    }

    /// Phase `index` from its first unfinished epoch, with a fresh optimizer (as the seed builds a new one), or
    /// the resumed one's state.
    func runPhase(_ index: Int, _ phase: FineTune.Phase) throws {
        let firstEpoch = index == start.phase ? start.epoch : 0
        let phaseOver = firstEpoch >= phase.epochs || tracker.stoppedPhases.contains(index)
        if options.keep == .best && !phaseOver {
            if firstEpoch == 0, let bestState {
                model = try makeModel(bestState)  // a new phase starts from the best weights
            } else if firstEpoch > 0 {
                model = try makeModel(try FineTune.lastModelState(sidecar: options.sidecar(start.epoch)))
            }
        }
        if firstEpoch == 0 { tracker.startPhase() }
        model.setBackboneFrozen(phase.frozenBackbone)
        let optimizer = AdamW(parameters: model.parameters, lr: phase.lr, weightDecay: phase.weightDecay)
        let schedule = OneCycleSchedule(maxLR: phase.maxLR, totalSteps: phase.epochs * stepsPerEpoch)
        // A finished phase needs no optimizer state: the next one starts afresh.
        guard !phaseOver else { return }
        if firstEpoch > 0 { try restore(optimizer, phase: index, epoch: firstEpoch) }
        Console.info("fine-tune: phase \(index + 1) (\(phase.name)): \(phase.epochs) epochs of \(stepsPerEpoch) steps")
        let trainer = Trainer(model: model, optimizer: optimizer, schedule: schedule, stepsPerEpoch: stepsPerEpoch)
        var images = [Float](repeating: 0, count: min(options.training.batchSize, train.count) * side * side * 3)
        for epoch in firstEpoch..<phase.epochs {
            let (loss, accuracy) = try images.withUnsafeMutableBufferPointer {
                try trainEpoch(epoch, of: phase, index: index, trainer: trainer, images: $0.baseAddress!)
            }
            var line = String(format: "[Epoch: %02d/%02d] loss: %.4f acc: %.4f", epoch + 1, phase.epochs, loss, accuracy)
            let validation = try validationFigures()
            if let validation {
                line += String(format: " val_loss: %.4f val_acc: %.4f", validation.loss, validation.accuracy)
                if model.numClasses == 2 { line += String(format: " val_auc: %.4f", validation.rocAUC ?? .nan) }
            }
            Console.info(line)
            history.epoch(phase: index + 1, epoch: epoch + 1, validation: validation)

            let value = validation?.value(options.monitor.figure)
            let improved = value.map { tracker.record($0, phase: index + 1, epoch: epoch + 1) } ?? false
            if options.keep == .last || improved || bestState == nil {
                held = HeldEpoch(phase: index + 1, epoch: epoch + 1, value: value.flatMap { $0.isNaN ? nil : $0 })
                if options.keep == .best { bestState = model.stateDict() }
            }
            let stopping = epoch + 1 < phase.epochs && tracker.shouldStop(patience: options.earlyStop)
            if stopping {
                tracker.markStopped(phase: index)
                Console.info("fine-tune: phase \(index + 1) stops early after epoch \(epoch + 1): \(options.monitor.rawValue) has not improved for \(options.earlyStop!) epochs")
            }
            let finished = (epoch + 1 == phase.epochs || stopping) && options.phases[(index + 1)...].allSatisfy { $0.epochs == 0 }
            try save(optimizer, phase: index, epoch: epoch + 1, maxLR: phase.maxLR, finished: finished)
            if stopping { break }
        }
    }

    /// One epoch: the data order and every random draw derive from (seed, phase, epoch), so a resumed run
    /// repeats it exactly. A diverged loss ends the run with a one-line error.
    func trainEpoch(_ epoch: Int, of phase: FineTune.Phase, index: Int, trainer: Trainer,
                    images: UnsafeMutablePointer<Float>) throws -> (loss: Float, accuracy: Float) {
        let batchSize = options.training.batchSize
        var rng = SplitMix64(seed: options.training.seed &+ UInt64(index * 100_003 + epoch) &* 0x9E37_79B9)
        model.rng = SplitMix64(seed: rng.next())
        var order = Array(0..<train.count)
        order.shuffle(using: &rng)
        let progress = ProgressBar(label: String(format: "[Epoch: %02d/%02d]", epoch + 1, phase.epochs))
        progress.setTotal(stepsPerEpoch * batchSize)
        defer { progress.finish() }
        do {
            return try trainer.runEpoch(epoch, side: side, images: images) { step, images in
                let indices = order[(step * batchSize)..<min(train.count, (step + 1) * batchSize)]
                train.fillBatch(indices, preprocessing: preprocessing, augment: !options.training.noAugment, rng: &rng, into: images)
                return indices.map { train.labels[$0] }
            } onStep: { step in
                history.step(phase: index + 1, epoch: epoch + 1, loss: step.loss, accuracy: step.accuracy,
                             averageLoss: step.averageLoss, averageAccuracy: step.averageAccuracy)
                progress.update(done: (step.index + 1) * batchSize)
            }
        } catch let divergence as Trainer.Divergence {
            let kept = start.phase > 0 || start.epoch > 0 || epoch > 0 || index > start.phase
                ? "\(options.out) keeps the last finished epoch" : "nothing was written"
            throw UsageError("training diverged: the loss is \(divergence.loss) at phase \(index + 1) (\(phase.name)) epoch \(epoch + 1) step \(divergence.step + 1) at learning rate \(String(format: "%.3g", divergence.learningRate)); \(kept). \(lowerHint(index))")
        }
    }

    /// Eval-mode figures over the validation images; nil without any.
    func validationFigures() throws -> ValidationFigures? {
        guard let valid, valid.count > 0 else { return nil }
        return try FineTune.evaluate(model.stateDict(), architecture: model.architecture, on: valid, preprocessing: preprocessing)
    }

    /// The resumed phase's optimizer state, from the sidecar written with the checkpoint of epoch `epoch`.
    func restore(_ optimizer: AdamW, phase: Int, epoch: Int) throws {
        let path = options.sidecar(epoch)
        let (tensors, metadata) = try SafeTensors.read(path: path)
        guard metadata["phase"] == String(phase), metadata["epoch"] == String(epoch) else {
            throw FileError(path, "optimizer state is for phase \(metadata["phase"] ?? "?") epoch \(metadata["epoch"] ?? "?"), the checkpoint for phase \(phase) epoch \(epoch)")
        }
        var state: StateDict = [:]
        for (name, entry) in tensors { state[name] = Tensor(shape: entry.shape, data: entry.data) }
        let steps = Dictionary(uniqueKeysWithValues: model.parameters.map { ($0.name, epoch * stepsPerEpoch) })
        do { try optimizer.restore(tensors: state, steps: steps) } catch { throw FileError(path, "\(error)") }
    }

    /// After epoch `epoch` (1-based) of phase `phase`: the optimizer state first (into the other slot), then the
    /// history, then the checkpoint. A kill between any two leaves the previous checkpoint with its optimizer
    /// state intact, and --resume cuts the history back to the checkpoint's epoch, so the three always agree.
    func save(_ optimizer: AdamW, phase: Int, epoch: Int, maxLR: Double, finished: Bool) throws {
        let keepBest = options.keep == .best
        let (moments, _) = optimizer.state()
        try SafeTensors.write(path: options.sidecar(epoch),
                              tensors: moments.keys.sorted().map { ($0, moments[$0]!.shape, moments[$0]!.data) }
                                  + (keepBest ? FineTune.lastModelTensors(model.stateDict()) : []),
                              metadata: ["phase": String(phase), "epoch": String(epoch)])
        let current = model.stateDict()
        if let bad = current.first(where: { !$0.value.data.allSatisfy(\.isFinite) }) {
            throw UsageError("training diverged: \(bad.key) holds NaN or infinite values after phase \(phase + 1) epoch \(epoch); \(options.out) keeps the last good epoch. \(lowerHint(phase))")
        }
        try history.write()
        if let plot = options.plot { try AtomicFile.write(Data(history.plot().utf8), to: plot) }

        var saved = checkpoint
        saved.config = model.architecture.config
        saved.state = keepBest ? bestState ?? current : current
        saved.preprocessing = preprocessing
        saved.provenance.producer = "fine-tune"
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys  // same run, same bytes
        let progress = FineTune.ResumeState(phase: phase, epoch: epoch, finished: finished, recipe: options.recipe)
        saved.extra[FineTune.resumeKey] = String(decoding: try encoder.encode(progress), as: UTF8.self)
        saved.extra[FineTune.monitorKey] = try FineTune.encode(FineTune.MonitorRecord(
            monitor: options.monitor.figure, keep: options.keep.rawValue, earlyStop: options.earlyStop,
            tracker: tracker, phase: held.phase, epoch: held.epoch, value: held.value))
        saved.extra[FineTune.classWeightsKey] = lossWeights.map(FineTune.encode)
        saved.extra[FineTune.precisionKey] = precisions.joined(separator: ",")  // the arithmetic it was trained in; the weights are fp32
        try saved.save(path: options.out)
        if finished {
            for slot in 0..<2 { try? FileManager.default.removeItem(atPath: options.sidecar(slot)) }
        }
    }

    /// The end of a divergence message: which option lowers the phase's peak learning rate.
    func lowerHint(_ phase: Int) -> String {
        "Lower \(phase == 0 ? "--head-max-lr" : "--max-lr") (now \(String(format: "%g", options.phases[phase].maxLR)))"
    }
}
