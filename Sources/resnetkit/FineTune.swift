import ArgumentParser
import Foundation
import ResNetData
import ResNetDNNL
import ResNetFormats
import ResNetModel
import ResNetSupport

/// `resnetkit fine-tune DIR --labels CSV`: the seed's transfer-learning recipe on a folder of TIFF patches.
struct FineTune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fine-tune",
        abstract: "Train a new head on a pretrained backbone, then fine-tune the whole model.",
        discussion: """
            Recipe (the seed notebook's, all changeable): a new head for the classes of the labels CSV; phase 1 \
            trains it with the backbone frozen (AdamW lr 1e-3, OneCycleLR max 1e-2, 10 epochs); phase 2 trains \
            everything (AdamW lr 1e-5, weight decay 0.05, OneCycleLR max 1e-4, 20 epochs). Batch 16; training \
            images get random flips and a rotation within ±20° (nearest, fill 0) before the centre crop. \
            Each epoch prints the seed's line, e.g.
              [Epoch: 01/10] loss: 0.5991 acc: 0.7019 val_loss: 0.5274 val_acc: 0.7422
            where loss/acc average the last 5 % of the epoch's steps and val_* cover the validation images.
            --frozen-bn: how the frozen backbone's BatchNorm behaves in phase 1. 'train' (default) is the seed's \
            behaviour (batch statistics, running statistics adapt to the new images): it reproduces the recipe's \
            results, and phase 2 uses batch statistics anyway, so the statistics adapt before fine-tuning instead \
            of changing at the phase boundary. 'eval' is Keras' advice (frozen layers compute what they compute \
            at inference; nothing in the backbone moves).
            The checkpoint is written atomically after every epoch, with the optimizer state beside it in \
            <out>.resume.safetensors; --resume continues an interrupted run from the last finished epoch (same \
            options, same seed: same result). Images are decoded once and kept in memory as 8-bit RGB.
            For two classes the epoch line and the history add val_auc (ROC AUC from P(class 1)).
            --keep best: the checkpoint holds the epoch with the best --monitor figure so far (over both phases), \
            and the next phase starts from those weights (as Keras' restore_best_weights); its metadata \
            (resnetkit.fine-tune.monitor) names the phase, epoch and value. --early-stop N ends a phase once the \
            figure has not improved on that phase's best for N epochs; each phase gets its own patience.
            --class-weights weights the training loss only (val_loss stays the plain mean, comparable across \
            runs); the weights are printed and stored in the checkpoint (resnetkit.fine-tune.class-weights).
            """)

    @Argument(help: "Folder of training images (<id>.tif).")
    var dir: String

    @Option(help: ArgumentHelp("CSV with id,label (integer or string labels).", valueName: "CSV"))
    var labels: String

    @Option(help: ArgumentHelp("Pretrained model: checkpoint, ONNX or HDF5.", valueName: "CKPT"))
    var from = "model.safetensors"

    @Option(help: ArgumentHelp("Checkpoint to write.", valueName: "CKPT"))
    var out = "finetuned.safetensors"

    @Option(name: .customLong("valid-dir"), help: ArgumentHelp("Folder of validation images.", valueName: "DIR"))
    var validDir: String?

    @Option(name: .customLong("valid-labels"), help: ArgumentHelp("Labels of the validation images.", valueName: "CSV"))
    var validLabels: String?

    @Option(name: .customLong("valid-fraction"), parsing: .unconditional, help: "Without --valid-dir: share of DIR held out for validation (seeded).")
    var validFraction = 0.2

    @Option(name: .customLong("train-size"), parsing: .unconditional, help: "Use at most N training images (a seeded sample).")
    var trainSize: Int?

    @Option(name: .customLong("valid-size"), parsing: .unconditional, help: "Use at most N validation images.")
    var validSize: Int?

    @Option(name: .customLong("head-epochs"), parsing: .unconditional, help: "Epochs of phase 1 (backbone frozen).")
    var headEpochs = 10

    @Option(name: .customLong("finetune-epochs"), parsing: .unconditional, help: "Epochs of phase 2 (everything trainable).")
    var finetuneEpochs = 20

    @Option(name: .customLong("batch-size"), parsing: .unconditional, help: "Images per step.")
    var batchSize = 16

    @Option(name: .customLong("head-lr"), parsing: .unconditional, help: "AdamW learning rate of phase 1 (overwritten by OneCycleLR, as in PyTorch).")
    var headLR = 1e-3

    @Option(name: .customLong("head-max-lr"), parsing: .unconditional, help: "OneCycleLR peak of phase 1.")
    var headMaxLR = 1e-2

    @Option(name: .customLong("head-weight-decay"), parsing: .unconditional, help: "AdamW weight decay of phase 1 (PyTorch's default).")
    var headWeightDecay = 0.01

    @Option(parsing: .unconditional, help: "AdamW learning rate of phase 2.")
    var lr = 1e-5

    @Option(name: .customLong("max-lr"), parsing: .unconditional, help: "OneCycleLR peak of phase 2.")
    var maxLR = 1e-4

    @Option(name: .customLong("weight-decay"), parsing: .unconditional, help: "AdamW weight decay of phase 2.")
    var weightDecay = 0.05

    @Option(help: ArgumentHelp("mlp (the seed's head) or linear (a single fc layer).", valueName: "mlp|linear"))
    var head = HeadKind.mlp

    @Option(parsing: .unconditional, help: "Dropout probability in the MLP head.")
    var dropout: Float = 0.5

    @OptionGroup(title: "Preprocessing")
    var preprocessingOptions: PreprocessingOptions

    @Flag(name: .customLong("no-augment"), help: "No random flips or rotation.")
    var noAugment = false

    @Option(name: .customLong("frozen-bn"), help: ArgumentHelp("train (the seed's) or eval (Keras'): see above.", valueName: "train|eval"))
    var frozenBN = FrozenBatchNormMode.train

    @Option(help: ArgumentHelp("fp32 (OpenBLAS, PyTorch-exact; default) or bf16 (convolutions on oneDNN in bf16 with fp32 accumulation; fp32 master weights, optimizer, BatchNorm, loss and head).", valueName: "fp32|bf16"))
    var precision = "fp32"

    @Option(help: ArgumentHelp("The validation figure that picks the best epoch (--keep best) and drives --early-stop; val_auc needs two classes.", valueName: "val_loss|val_acc|val_auc"))
    var monitor = MonitorChoice.valLoss

    @Option(help: ArgumentHelp("Which weights the checkpoint holds: the last epoch's (the seed's) or the best by --monitor (see above).", valueName: "last|best"))
    var keep = KeepChoice.last

    @Option(name: .customLong("early-stop"), help: ArgumentHelp("End a phase when --monitor has not improved for N epochs of it.", valueName: "N"))
    var earlyStop: Int?

    @Option(name: .customLong("class-weights"), help: ArgumentHelp("Per-class weights of the training loss (PyTorch's CrossEntropyLoss(weight=)): none, balanced (n / (K·n_k) from the training labels) or one positive number per class.", valueName: "none|balanced|W0,W1,…"))
    var classWeights = ClassWeighting.none

    @Option(help: "Seed for the split, the order, the augmentation, dropout and the new head.")
    var seed: UInt64 = 0

    @Option(help: ArgumentHelp("Write every step's and epoch's figures here.", valueName: "CSV"))
    var history: String?

    @Option(help: ArgumentHelp("Plot loss and accuracy per step here.", valueName: "SVG"))
    var plot: String?

    @Flag(help: "Continue an interrupted run from its last finished epoch.")
    var resume = false

    @Flag(help: "No progress output (errors still go to stderr).")
    var quiet = false

    @Flag(help: "Replace an existing --out, --history or --plot instead of refusing.")
    var force = false

    @Option(name: .customLong("max-image-pixels"), parsing: .unconditional, help: "Refuse images with more pixels than this (default: a batch of them fits in about 1 GB).")
    var maxImagePixels: Int?


    /// The seed's centre crop, whatever the model's preprocessing says.
    static let defaultCrop = 49

    /// Centre crop side of the training and validation images.
    var crop: Int { preprocessingOptions.crop ?? Self.defaultCrop }

    /// One training phase of the recipe.
    struct Phase {
        var name: String
        var epochs: Int
        var frozenBackbone: Bool
        var lr: Double, maxLR: Double, weightDecay: Double
    }

    /// What the checkpoint's metadata records so that --resume knows where to continue.
    struct ResumeState: Codable {
        var phase: Int
        /// Epochs finished in that phase.
        var epoch: Int
        var finished: Bool
        /// What fixes the schedule and the data order; a resumed run must agree on it.
        var recipe: String
    }

    /// The options a resumed run must repeat for its schedule and data order to continue the same run.
    var recipe: String {
        "seed \(seed), batch size \(batchSize), head epochs \(headEpochs), fine-tune epochs \(finetuneEpochs), "
            + "train size \(trainSize.map(String.init) ?? "all"), valid fraction \(validFraction), head \(head.rawValue), "
            + "head lr \(headLR)/\(headMaxLR)/\(headWeightDecay), lr \(lr)/\(maxLR)/\(weightDecay), dropout \(dropout), "
            + "crop \(crop), frozen BN \(frozenBN.rawValue), augment \(!noAugment)"
        // --monitor, --keep, --early-stop and --class-weights are checked on their own (FineTuneMonitoring).
    }

    static let resumeKey = "resnetkit.fine-tune"
    static let precisionKey = "resnetkit.training-precision"

    func validate() throws {
        guard precision == "fp32" || precision == "bf16" else { throw UsageError("--precision must be fp32 or bf16, not '\(precision)'") }
        guard batchSize >= 2 else { throw UsageError("--batch-size must be at least 2 (BatchNorm needs two images)") }
        try Limits.check(batchSize, Limits.batchSize, "--batch-size")
        try Limits.check(headEpochs, Limits.epochs, "--head-epochs")
        try Limits.check(finetuneEpochs, Limits.epochs, "--finetune-epochs")
        if let trainSize { try Limits.check(trainSize, 1...Int(Int32.max), "--train-size") }
        if let validSize { try Limits.check(validSize, 0...Int(Int32.max), "--valid-size") }
        if force && resume { throw UsageError("--force and --resume exclude each other (start afresh, or continue)") }
        guard headEpochs >= 0, finetuneEpochs >= 0, headEpochs + finetuneEpochs > 0 else {
            throw UsageError("--head-epochs and --finetune-epochs must be 0 or more, and not both 0")
        }
        guard (0..<1).contains(validFraction) else { throw UsageError("--valid-fraction must be in [0, 1)") }
        guard (0..<1).contains(dropout) else { throw UsageError("--dropout must be in [0, 1)") }
        for (name, value) in [("--head-lr", headLR), ("--head-max-lr", headMaxLR), ("--lr", lr), ("--max-lr", maxLR)] where !(value > 0 && value.isFinite) {
            throw UsageError("\(name) must be positive")
        }
        for (name, value) in [("--head-weight-decay", headWeightDecay), ("--weight-decay", weightDecay)] where !(value >= 0 && value.isFinite) {
            throw UsageError("\(name) must be 0 or more")
        }
        guard (validDir == nil) == (validLabels == nil) else { throw UsageError("--valid-dir and --valid-labels go together") }
        try validateMonitoring()
    }

    func run() throws {
        Console.quiet = quiet
        let bf16 = precision == "bf16"
        TIFFDecoder.pixelBudget = try ImageBudget.resolve(maxImagePixels, batchSize: batchSize)
        // Outputs are checked and locked before anything is read: no clash with an input, nothing replaced
        // unless --resume or --force, and a second run on the same --out is refused.
        let replace = resume || force
        var outputs = [OutputGuard.Output(out, option: "--out", mayExist: replace)]
        if let history { outputs.append(OutputGuard.Output(history, option: "--history", mayExist: replace)) }
        if let plot { outputs.append(OutputGuard.Output(plot, option: "--plot", mayExist: replace)) }
        outputs += (0..<2).map { OutputGuard.Output(out + ".resume\($0).safetensors", option: "the optimizer state beside --out", mayExist: true) }
        var inputs = [OutputGuard.Input(dir, role: "training images"), OutputGuard.Input(labels, role: "labels (--labels)"),
                      OutputGuard.Input(from, role: "pretrained model (--from)")]
        if let validDir { inputs.append(OutputGuard.Input(validDir, role: "validation images (--valid-dir)")) }
        if let validLabels { inputs.append(OutputGuard.Input(validLabels, role: "validation labels (--valid-labels)")) }
        try OutputGuard.check(outputs: outputs, inputs: inputs, forceHint: "use --resume to continue it, or --force to replace it")
        let locks = try OutputGuard.lock(Array(outputs.prefix(outputs.count - 2)))
        defer { locks.forEach { $0.release() } }
        let phases = [Phase(name: "head", epochs: headEpochs, frozenBackbone: true, lr: headLR, maxLR: headMaxLR, weightDecay: headWeightDecay),
                      Phase(name: "fine-tune", epochs: finetuneEpochs, frozenBackbone: false, lr: lr, maxLR: maxLR, weightDecay: weightDecay)]

        // The starting point: a previous run's checkpoint when resuming, otherwise the pretrained model + new head.
        // Optimizer state after epoch e of a phase goes to slot e % 2, so the state matching the last checkpoint
        // survives a kill between writing the next state and the next checkpoint.
        func sidecar(_ epoch: Int) -> String { out + ".resume\(epoch % 2).safetensors" }
        var start = ResumeState(phase: 0, epoch: 0, finished: false, recipe: recipe)
        let checkpoint: Checkpoint
        if resume && FileManager.default.fileExists(atPath: out) {
            checkpoint = try Checkpoint.load(path: out)
            guard let text = checkpoint.extra[Self.resumeKey],
                  let state = try? JSONDecoder().decode(ResumeState.self, from: Data(text.utf8)) else {
                throw FileError(out, "has no fine-tune progress to resume (not written by fine-tune)")
            }
            guard state.recipe == recipe else { throw UsageError("\(out) was trained with \(state.recipe); resume with the same options") }
            if state.finished { Console.info("fine-tune: \(out) is already finished"); return }
            start = state
            Console.info("fine-tune: resuming \(out) after epoch \(state.epoch) of phase \(state.phase + 1)")
        } else {
            if resume { Console.warning("--resume: \(out) does not exist yet, so training starts from the beginning") }
            if force && FileManager.default.fileExists(atPath: out) { Console.info("fine-tune: replacing \(out) (--force)") }
            checkpoint = try newModel(headKind: head)
        }
        let preprocessing = try preprocessingOptions.applied(to: checkpoint.preprocessing, defaultCrop: Self.defaultCrop)

        let (train, valid, classNames) = try loadData(classNames: resume ? checkpoint.classNames : nil)
        guard classNames == checkpoint.classNames else {
            throw UsageError("the labels' classes \(classNames) differ from the model's \(checkpoint.classNames)")
        }
        guard train.count >= 2 else { throw UsageError("need at least 2 training images, have \(train.count)") }
        if crop > 0 && (train.width < crop || train.height < crop) {
            throw UsageError("--crop \(crop) is larger than the \(train.width)x\(train.height) images")
        }
        Console.info("fine-tune: \(train.count) training and \(valid?.count ?? 0) validation images, classes \(classNames.joined(separator: ", "))")

        let resumed = resume && start.epoch > 0 ? checkpoint : nil
        var tracker = try startMonitor(resumed: resumed, classNames: classNames)
        let lossWeights = try lossWeights(trainingLabels: train.labels, classNames: classNames, resumed: resumed)
        func makeModel(_ state: StateDict) throws -> TrainableResNet {
            let model = try TrainableResNet(architecture: checkpoint.architecture, state: state)
            model.frozenBatchNorm = frozenBN
            model.classWeights = lossWeights
            if bf16 {
                do { try model.setConvolutions(BF16Training.convolutions) } catch let error as DNNLError { throw UsageError(error.description) }
                model.frozenBackboneEngine = BF16Training.frozenBackbone
            }
            return model
        }
        var model = try makeModel(checkpoint.state)
        // --keep best: the best weights so far (what the checkpoint holds); within a phase, training goes on from the last.
        var bestState: StateDict? = keep == .best && resumed != nil ? checkpoint.state : nil
        var held: (phase: Int, epoch: Int, value: Double?) = (0, 0, nil)
        if let resumed, let text = resumed.extra[Self.monitorKey], let record = try? JSONDecoder().decode(MonitorRecord.self, from: Data(text.utf8)) {
            held = (record.phase, record.epoch, record.value)
        }
        var historyLog = try HistoryLog(path: history, resumeAfter: resume ? (start.phase, start.epoch) : nil)
        let stepsPerEpoch = max(1, train.count / batchSize)
        let side = crop > 0 ? crop : min(train.width, train.height)
        var batchBuffer = [Float](repeating: 0, count: min(batchSize, train.count) * side * side * 3)

        for (phaseIndex, phase) in phases.enumerated() where phaseIndex >= start.phase && phase.epochs > 0 {
            let firstEpoch = phaseIndex == start.phase ? start.epoch : 0
            let phaseOver = firstEpoch >= phase.epochs || tracker.stoppedPhases.contains(phaseIndex)
            if keep == .best && !phaseOver {
                if firstEpoch == 0, let bestState {
                    model = try makeModel(bestState)  // a new phase starts from the best weights
                } else if firstEpoch > 0 {
                    model = try makeModel(try Self.lastModelState(sidecar: sidecar(start.epoch)))
                }
            }
            if firstEpoch == 0 { tracker.startPhase() }
            model.setBackboneFrozen(phase.frozenBackbone)
            // Each phase gets a fresh optimizer, as the seed builds a new one.
            let optimizer = AdamW(parameters: model.parameters, lr: phase.lr, weightDecay: phase.weightDecay)
            let schedule = OneCycleSchedule(maxLR: phase.maxLR, totalSteps: phase.epochs * stepsPerEpoch)
            // A finished phase needs no optimizer state: the next one starts afresh.
            if firstEpoch > 0 && !phaseOver {
                let path = sidecar(start.epoch)
                let (tensors, metadata) = try SafeTensors.read(path: path)
                guard metadata["phase"] == String(phaseIndex), metadata["epoch"] == String(start.epoch) else {
                    throw FileError(path, "optimizer state is for phase \(metadata["phase"] ?? "?") epoch \(metadata["epoch"] ?? "?"), the checkpoint for phase \(phaseIndex) epoch \(start.epoch)")
                }
                var state: StateDict = [:]
                for (name, entry) in tensors { state[name] = Tensor(shape: entry.shape, data: entry.data) }
                let steps = Dictionary(uniqueKeysWithValues: model.parameters.map { ($0.name, start.epoch * stepsPerEpoch) })
                do { try optimizer.restore(tensors: state, steps: steps) } catch { throw FileError(path, "\(error)") }
            }
            guard !phaseOver else { continue }
            Console.info("fine-tune: phase \(phaseIndex + 1) (\(phase.name)): \(phase.epochs) epochs of \(stepsPerEpoch) steps")
            for epoch in firstEpoch..<phase.epochs {
                // Every epoch's randomness derives from (seed, phase, epoch): a resumed run repeats it exactly.
                var rng = SplitMix64(seed: seed &+ UInt64(phaseIndex * 100_003 + epoch) &* 0x9E37_79B9)
                model.rng = SplitMix64(seed: rng.next())
                var order = Array(0..<train.count)
                order.shuffle(using: &rng)
                let progress = ProgressBar(label: String(format: "[Epoch: %02d/%02d]", epoch + 1, phase.epochs))
                progress.setTotal(stepsPerEpoch * batchSize)
                let trainer = Trainer(model: model, optimizer: optimizer, schedule: schedule, stepsPerEpoch: stepsPerEpoch)
                let (averageLoss, averageAccuracy): (Float, Float)
                do {
                    (averageLoss, averageAccuracy) = try batchBuffer.withUnsafeMutableBufferPointer { buffer in
                        try trainer.runEpoch(epoch, side: side, images: buffer.baseAddress!) { step, images in
                            let indices = order[(step * batchSize)..<min(train.count, (step + 1) * batchSize)]
                            train.fillBatch(indices, preprocessing: preprocessing, augment: !noAugment, rng: &rng, into: images)
                            return indices.map { train.labels[$0] }
                        } onStep: { step in
                            historyLog.step(phase: phaseIndex + 1, epoch: epoch + 1, loss: step.loss, accuracy: step.accuracy,
                                            averageLoss: step.averageLoss, averageAccuracy: step.averageAccuracy)
                            progress.update(done: (step.index + 1) * batchSize)
                        }
                    }
                } catch let divergence as Trainer.Divergence {
                    progress.finish()
                    let kept = start.phase > 0 || start.epoch > 0 || epoch > 0 || phaseIndex > start.phase
                        ? "\(out) keeps the last finished epoch" : "nothing was written"
                    throw UsageError("training diverged: the loss is \(divergence.loss) at phase \(phaseIndex + 1) (\(phase.name)) epoch \(epoch + 1) step \(divergence.step + 1) at learning rate \(String(format: "%.3g", divergence.learningRate)); \(kept). Lower \(phaseIndex == 0 ? "--head-max-lr" : "--max-lr") (now \(String(format: "%g", phase.maxLR)))")
                }
                progress.finish()
                var line = String(format: "[Epoch: %02d/%02d] loss: %.4f acc: %.4f", epoch + 1, phase.epochs, averageLoss, averageAccuracy)
                var validation: ValidationFigures?
                if let valid, valid.count > 0 {
                    let metrics = try Self.evaluate(model.stateDict(), architecture: model.architecture, on: valid, preprocessing: preprocessing)
                    line += String(format: " val_loss: %.4f val_acc: %.4f", metrics.loss, metrics.accuracy)
                    if model.numClasses == 2 { line += String(format: " val_auc: %.4f", metrics.rocAUC ?? .nan) }
                    validation = metrics
                }
                Console.info(line)
                historyLog.epoch(phase: phaseIndex + 1, epoch: epoch + 1, validation: validation)
                let value = validation?.value(monitor.figure)
                let improved = value.map { tracker.record($0, phase: phaseIndex + 1, epoch: epoch + 1) } ?? false
                if keep == .last || improved || bestState == nil {
                    held = (phaseIndex + 1, epoch + 1, value.flatMap { $0.isNaN ? nil : $0 })
                    if keep == .best { bestState = model.stateDict() }
                }
                let stopping = epoch + 1 < phase.epochs && tracker.shouldStop(patience: earlyStop)
                if stopping {
                    tracker.markStopped(phase: phaseIndex)
                    Console.info("fine-tune: phase \(phaseIndex + 1) stops early after epoch \(epoch + 1): \(monitor.rawValue) has not improved for \(earlyStop!) epochs")
                }

                // Optimizer state first (into the other slot), then the checkpoint: a kill between the two leaves the
                // previous checkpoint with its optimizer state intact.
                let finished = (epoch + 1 == phase.epochs || stopping) && phases[(phaseIndex + 1)...].allSatisfy { $0.epochs == 0 }
                let state = ResumeState(phase: phaseIndex, epoch: epoch + 1, finished: finished, recipe: recipe)
                let (moments, _) = optimizer.state()
                try SafeTensors.write(path: sidecar(epoch + 1), tensors: moments.keys.sorted().map { ($0, moments[$0]!.shape, moments[$0]!.data) }
                                        + (keep == .best ? Self.lastModelTensors(model.stateDict()) : []),
                                      metadata: ["phase": String(phaseIndex), "epoch": String(epoch + 1)])
                var saved = checkpoint
                saved.config = model.architecture.config
                let current = model.stateDict()
                if let bad = current.first(where: { !$0.value.data.allSatisfy(\.isFinite) }) {
                    throw UsageError("training diverged: \(bad.key) holds NaN or infinite values after phase \(phaseIndex + 1) epoch \(epoch + 1); \(out) keeps the last good epoch. Lower \(phaseIndex == 0 ? "--head-max-lr" : "--max-lr") (now \(String(format: "%g", phase.maxLR)))")
                }
                saved.state = keep == .best ? bestState ?? current : current
                // History before the checkpoint: after a kill between the two, --resume cuts the history back to
                // the checkpoint's epoch, so the two always agree.
                try historyLog.write()
                if let plot { try AtomicFile.write(Data(historyLog.plot().utf8), to: plot) }
                saved.preprocessing = preprocessing
                saved.provenance.producer = "fine-tune"
                let encoder = JSONEncoder()
                encoder.outputFormatting = .sortedKeys  // same run, same bytes
                saved.extra[Self.resumeKey] = String(decoding: try encoder.encode(state), as: UTF8.self)
                saved.extra[Self.monitorKey] = try Self.encode(MonitorRecord(monitor: monitor.figure, keep: keep.rawValue, earlyStop: earlyStop,
                                                                             tracker: tracker, phase: held.phase, epoch: held.epoch, value: held.value))
                saved.extra[Self.classWeightsKey] = lossWeights.map(Self.encode)
                saved.extra[Self.precisionKey] = precision  // the arithmetic it was trained in; the weights are fp32
                try saved.save(path: out)
                if finished {
                    for slot in 0..<2 { try? FileManager.default.removeItem(atPath: sidecar(slot)) }
                }
                if stopping { break }
            }
        }
        let heldValue = held.value.map { String(format: ", %@ %.4f", monitor.rawValue, $0) } ?? ""
        Console.info("fine-tune: wrote \(out) (phase \(held.phase) epoch \(held.epoch)\(heldValue))")
    }

    /// The pretrained backbone from --from with a freshly initialised head for the labels' classes.
    func newModel(headKind: HeadKind) throws -> Checkpoint {
        let source = try ModelImporter.load(path: from).checkpoint
        let table = try LabelTable.load(path: labels)
        var config = source.config
        config.numClasses = table.classNames.count
        config.head = headKind
        config.dropout = dropout
        let architecture = Architecture(config)
        var state = source.state.filter { !TrainableResNet.isHeadName($0.key) }
        var rng = SplitMix64(seed: seed)
        for (name, tensor) in ParameterInitialization.head(architecture, rng: &rng) { state[name] = tensor }
        var provenance = source.provenance
        provenance.notes.append("fine-tuned from \(from) on \(dir) (\(labels)), seed \(seed)")
        return Checkpoint(config: config, state: state, classNames: table.classNames, preprocessing: source.preprocessing,
                          provenance: provenance)
    }

    /// The training and validation image sets (decoded once), and the class names.
    func loadData(classNames: [String]?) throws -> (ImageSet, ImageSet?, [String]) {
        let table = try LabelTable.load(path: labels, classNames: classNames)
        if let note = table.columnNote { Console.info("note: \(note)") }
        var rng = SplitMix64(seed: seed ^ 0x5EED)
        var order = Array(0..<table.ids.count)
        order.shuffle(using: &rng)
        var trainIndices = order, validIndices: [Int] = []
        if validDir == nil {
            let held = Int((Double(order.count) * validFraction).rounded())
            validIndices = Array(order.prefix(held))
            trainIndices = Array(order.dropFirst(held))
        }
        if let trainSize { trainIndices = Array(trainIndices.prefix(max(0, trainSize))) }
        let threads = ProcessInfo.processInfo.activeProcessorCount
        func load(_ directory: String, _ t: LabelTable, _ indices: [Int], what: String) throws -> ImageSet {
            let progress = ProgressBar(label: "decoding \(what) images")
            progress.setTotal(indices.count)
            let set = try ImageSet.load(directory: directory, ids: indices.map { t.ids[$0] }, labels: indices.map { t.labels[$0] },
                                        threads: threads) { progress.update(done: $0) }
            progress.finish()
            if !set.failures.isEmpty {
                Console.warning("\(set.failures.count) \(what) image(s) skipped, e.g. \(set.failures[0].reason)")
            }
            return set
        }
        let train = try load(dir, table, trainIndices, what: "training")
        var valid: ImageSet?
        if let validDir, let validLabels {
            let validTable = try LabelTable.load(path: validLabels, classNames: table.classNames)
            var indices = Array(0..<validTable.ids.count)
            if let validSize { indices = Array(indices.prefix(max(0, validSize))) }
            valid = try load(validDir, validTable, indices, what: "validation")
        } else if !validIndices.isEmpty {
            if let validSize { validIndices = Array(validIndices.prefix(max(0, validSize))) }
            valid = try load(dir, table, validIndices, what: "validation")
        }
        return (train, valid, table.classNames)
    }

    /// Eval-mode figures over an image set, with the fused inference plan.
    static func evaluate(_ state: StateDict, architecture: Architecture, on set: ImageSet,
                         preprocessing: Preprocessing) throws -> ValidationFigures {
        let classifier = BatchClassifier(engine: try InferencePlan(architecture: architecture, state: state),
                                         classes: architecture.config.numClasses, batchSize: 64)
        let side = preprocessing.crop > 0 ? preprocessing.crop : min(set.width, set.height)
        let batch = 64, classes = architecture.config.numClasses
        var images = [Float](repeating: 0, count: batch * side * side * 3)
        var logits = [Float](repeating: 0, count: set.count * classes)
        var rng = SplitMix64(seed: 0)
        try images.withUnsafeMutableBufferPointer { buffer in
            try logits.withUnsafeMutableBufferPointer { out in
                for first in stride(from: 0, to: set.count, by: batch) {
                    let indices = first..<min(set.count, first + batch)
                    set.fillBatch(ArraySlice(indices), preprocessing: preprocessing, augment: false, rng: &rng, into: buffer.baseAddress!)
                    try classifier.classify(images: buffer.baseAddress!, count: indices.count, height: side, width: side,
                                            into: out.baseAddress! + first * classes)
                }
            }
        }
        return ValidationFigures(logits: logits, labels: set.labels, classes: classes)
    }
}

/// The run's figures, step by step and epoch by epoch: the --history CSV and the --plot SVG.
struct HistoryLog {
    static let header = ["kind", "phase", "epoch", "step", "loss", "accuracy", "average_loss", "average_accuracy",
                         "val_loss", "val_accuracy", "val_auc"]
    let path: String?
    var rows: [[String]] = []
    var step = 0

    /// Reads back the rows of an interrupted run up to (phase index, epochs done) when resuming.
    init(path: String?, resumeAfter: (phase: Int, epoch: Int)?) throws {
        self.path = path
        guard let path, let resumeAfter, let data = FileManager.default.contents(atPath: path) else { return }
        let records = try CSV.parse(String(decoding: data, as: UTF8.self), path: path)
        // Histories written before the val_auc column (the header's last) get an empty one.
        guard let header = records.first, header == Self.header || header == Array(Self.header.dropLast()) else {
            throw FileError(path, "is not a fine-tune history (its header is not \(Self.header.joined(separator: ","))); left unchanged")
        }
        for var record in records.dropFirst() where record.count == header.count {
            if record.count < Self.header.count { record.append("") }
            guard let phase = Int(record[1]), let epoch = Int(record[2]) else {
                throw FileError(path, "not a fine-tune history (record \(record.prefix(3).joined(separator: ",")))")
            }
            let before = phase - 1 < resumeAfter.phase || (phase - 1 == resumeAfter.phase && epoch <= resumeAfter.epoch)
            if before { rows.append(record); step = max(step, Int(record[3]) ?? 0) }
        }
        let (phase, epoch) = (String(resumeAfter.phase + 1), String(resumeAfter.epoch))
        if resumeAfter.epoch > 0 && !rows.contains(where: { $0[0] == "epoch" && $0[1] == phase && $0[2] == epoch }) {
            throw FileError(path, "does not reach the checkpoint's epoch \(epoch) of phase \(phase) (written by another run?); use another --history, or --force to start afresh")
        }
    }

    static func f(_ v: Float) -> String { String(format: "%.6f", v) }

    mutating func step(phase: Int, epoch: Int, loss: Float, accuracy: Float, averageLoss: Float, averageAccuracy: Float) {
        step += 1
        rows.append(["step", String(phase), String(epoch), String(step), Self.f(loss), Self.f(accuracy),
                     Self.f(averageLoss), Self.f(averageAccuracy), "", "", ""])
    }

    mutating func epoch(phase: Int, epoch: Int, validation: ValidationFigures?) {
        rows.append(["epoch", String(phase), String(epoch), String(step), "", "", "", "",
                     validation.map { String(format: "%.6f", $0.loss) } ?? "",
                     validation.map { String(format: "%.6f", $0.accuracy) } ?? "",
                     validation?.rocAUC.map { String(format: "%.6f", $0) } ?? ""])
    }

    func write() throws {
        guard let path else { return }
        let text = ([Self.header] + rows).map(CSV.encodeRow).joined()
        try AtomicFile.write(Data(text.utf8), to: path)
    }

    /// Loss and accuracy against the global step: raw train (faint), train average, validation per epoch,
    /// a dotted line where fine-tuning starts.
    func plot() -> String {
        func series(_ kind: String, _ column: Int) -> [(x: Double, y: Double)] {
            rows.filter { $0[0] == kind }.compactMap { r in Double(r[column]).map { (Double(r[3]) ?? 0, $0) } }
        }
        let fineTuneStart = rows.first { $0[0] == "step" && $0[1] == "2" }.flatMap { Double($0[3]) }.map { $0 - 1 }
        let markers = fineTuneStart.map { [(x: $0, label: "fine-tuning")] } ?? []
        func panel(_ title: String, raw: Int, average: Int, valid: Int) -> SVGPlot {
            SVGPlot(title: title, xLabel: "step", yLabel: title, series: [
                .init(label: "train (raw)", points: series("step", raw), color: "#1f77b4", opacity: 0.25, lineWidth: 1),
                .init(label: "train (average)", points: series("step", average), color: "#1f77b4", lineWidth: 2),
                .init(label: "validation", points: series("epoch", valid), color: "#d62728", lineWidth: 2, markers: true),
            ], markers: markers)
        }
        return SVGPlot.document([panel("loss", raw: 4, average: 6, valid: 8), panel("accuracy", raw: 5, average: 7, valid: 9)])
    }
}
