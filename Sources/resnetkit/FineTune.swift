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

    @Option(help: ArgumentHelp("fp32 (OpenBLAS, PyTorch-exact; default) or bf16 (convolutions on oneDNN in bf16 with fp32 accumulation; fp32 master weights, optimizer, BatchNorm, loss and head; the frozen backbone's forward runs some layers as Winograd where that pays, RESNETKIT_WINOGRAD=off to keep oneDNN's convolutions).", valueName: "fp32|bf16"))
    var precision = Precision.fp32

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
        guard precision != .int8 else { throw UsageError("--precision must be fp32 or bf16, not 'int8' (int8 is for inference)") }
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
        TIFFDecoder.pixelBudget = try ImageBudget.resolve(maxImagePixels, batchSize: batchSize)
        let locks = try lockOutputs()
        defer { locks.forEach { $0.release() } }
        guard let (checkpoint, start) = try startingPoint() else { return }
        try FineTuneSession(self, checkpoint: checkpoint, start: start).run()
    }

    /// The recipe's two phases, in order.
    var phases: [Phase] {
        [Phase(name: "head", epochs: headEpochs, frozenBackbone: true, lr: headLR, maxLR: headMaxLR, weightDecay: headWeightDecay),
         Phase(name: "fine-tune", epochs: finetuneEpochs, frozenBackbone: false, lr: lr, maxLR: maxLR, weightDecay: weightDecay)]
    }

    /// Where the optimizer state after epoch `epoch` of a phase goes: slot epoch % 2, so the state matching the
    /// last checkpoint survives a kill between writing the next state and the next checkpoint.
    func sidecar(_ epoch: Int) -> String { out + ".resume\(epoch % 2).safetensors" }

    /// Checks and locks the outputs before anything is read: no clash with an input, nothing replaced unless
    /// --resume or --force, and a second run on the same --out is refused.
    func lockOutputs() throws -> [OutputLock] {
        let replace = resume || force
        var outputs = [OutputGuard.Output(out, option: "--out", mayExist: replace)]
        if let history { outputs.append(OutputGuard.Output(history, option: "--history", mayExist: replace)) }
        if let plot { outputs.append(OutputGuard.Output(plot, option: "--plot", mayExist: replace)) }
        let sidecars = (0..<2).map { OutputGuard.Output(sidecar($0), option: "the optimizer state beside --out", mayExist: true) }
        var inputs = [OutputGuard.Input(dir, role: "training images"), OutputGuard.Input(labels, role: "labels (--labels)"),
                      OutputGuard.Input(from, role: "pretrained model (--from)")]
        if let validDir { inputs.append(OutputGuard.Input(validDir, role: "validation images (--valid-dir)")) }
        if let validLabels { inputs.append(OutputGuard.Input(validLabels, role: "validation labels (--valid-labels)")) }
        try OutputGuard.check(outputs: outputs + sidecars, inputs: inputs, forceHint: "use --resume to continue it, or --force to replace it")
        return try OutputGuard.lock(outputs)
    }

    /// The run's starting point: the checkpoint of an interrupted run and where it stopped (--resume), or the
    /// pretrained model with a new head at phase 0 epoch 0. nil when the resumed run is already finished.
    func startingPoint() throws -> (Checkpoint, ResumeState)? {
        let fresh = ResumeState(phase: 0, epoch: 0, finished: false, recipe: recipe)
        guard resume && FileManager.default.fileExists(atPath: out) else {
            if resume { Console.warning("--resume: \(out) does not exist yet, so training starts from the beginning") }
            if force && FileManager.default.fileExists(atPath: out) { Console.info("fine-tune: replacing \(out) (--force)") }
            return (try newModel(headKind: head), fresh)
        }
        let checkpoint = try Checkpoint.load(path: out)
        guard let text = checkpoint.extra[Self.resumeKey],
              let state = try? JSONDecoder().decode(ResumeState.self, from: Data(text.utf8)) else {
            throw FileError(out, "has no fine-tune progress to resume (not written by fine-tune)")
        }
        guard state.recipe == recipe else { throw UsageError("\(out) was trained with \(state.recipe); resume with the same options") }
        if state.finished { Console.info("fine-tune: \(out) is already finished"); return nil }
        Console.info("fine-tune: resuming \(out) after epoch \(state.epoch) of phase \(state.phase + 1)")
        return (checkpoint, state)
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
        let side = set.inputSide(crop: preprocessing.crop)
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
