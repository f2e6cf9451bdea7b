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
            options, same seed: same result; a different --precision is allowed, said and recorded). Images are \
            decoded once and kept in memory as 8-bit RGB.
            For two classes the epoch line and the history add val_auc (ROC AUC from P(class 1)).
            --keep best: the checkpoint holds the epoch with the best --monitor figure so far (over both phases), \
            and the next phase starts from those weights (as Keras' restore_best_weights); its metadata \
            (resnetkit.fine-tune.monitor) names the phase, epoch and value. --early-stop N ends a phase once the \
            figure has not improved on that phase's best for N epochs; each phase gets its own patience.
            --class-weights weights the training loss only (val_loss stays the plain mean, comparable across \
            runs); the weights are printed and stored in the checkpoint (resnetkit.fine-tune.class-weights).
            """)

    @OptionGroup(title: "Training set, model and batches (shared with find-lr)")
    var training: TrainingOptions

    @Option(help: ArgumentHelp("Checkpoint to write.", valueName: "CKPT"))
    var out = "finetuned.safetensors"

    @Option(name: .customLong("valid-dir"), help: ArgumentHelp("Folder of validation images.", valueName: "DIR"))
    var validDir: String?

    @Option(name: .customLong("valid-labels"), help: ArgumentHelp("Labels of the validation images.", valueName: "CSV"))
    var validLabels: String?

    @Option(name: .customLong("valid-size"), parsing: .unconditional, help: "Use at most N validation images.")
    var validSize: Int?

    @Option(name: .customLong("head-epochs"), parsing: .unconditional, help: "Epochs of phase 1 (backbone frozen).")
    var headEpochs = 10

    @Option(name: .customLong("finetune-epochs"), parsing: .unconditional, help: "Epochs of phase 2 (everything trainable).")
    var finetuneEpochs = 20

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

    @Option(help: ArgumentHelp("The validation figure that picks the best epoch (--keep best) and drives --early-stop; val_auc needs two classes.", valueName: "val_loss|val_acc|val_auc"))
    var monitor = MonitorChoice.valLoss

    @Option(help: ArgumentHelp("Which weights the checkpoint holds: the last epoch's (the seed's) or the best by --monitor (see above).", valueName: "last|best"))
    var keep = KeepChoice.last

    @Option(name: .customLong("early-stop"), help: ArgumentHelp("End a phase when --monitor has not improved for N epochs of it.", valueName: "N"))
    var earlyStop: Int?

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
        let t = training
        return "seed \(t.seed), batch size \(t.batchSize), head epochs \(headEpochs), fine-tune epochs \(finetuneEpochs), "
            + "train size \(t.trainSize.map(String.init) ?? "all"), valid fraction \(t.validFraction), head \(t.head.rawValue), "
            + "head lr \(headLR)/\(headMaxLR)/\(headWeightDecay), lr \(lr)/\(maxLR)/\(weightDecay), dropout \(t.dropout), "
            + "crop \(t.crop), frozen BN \(t.frozenBN.rawValue), augment \(!t.noAugment)"
        // --monitor, --keep, --early-stop and --class-weights are checked on their own (FineTuneMonitoring).
    }

    static let resumeKey = "resnetkit.fine-tune"
    /// The arithmetic the checkpoint's epochs were trained in: `fp32`, `bf16`, or both in order of use (`bf16,fp32`)
    /// when a --resume changed --precision.
    static let precisionKey = "resnetkit.training-precision"

    /// What `precisionKey` records after this run: the resumed run's record (`extra`, nil for a fresh run; none
    /// recorded is fp32, from before bf16 training), then `precision` if it differs from the last. A resume may
    /// change the arithmetic (to move a run to a CPU without AVX-512, say): it is said, and recorded.
    static func precisions(continuing extra: [String: String]?, in precision: Precision, out: String) -> [String] {
        guard let extra, extra[resumeKey] != nil else { return [precision.rawValue] }
        let earlier = (extra[precisionKey] ?? Precision.fp32.rawValue).split(separator: ",").map(String.init)
        guard let last = earlier.last else { return [precision.rawValue] }
        guard last != precision.rawValue else { return earlier }
        Console.warning("--resume: \(out) was trained in \(last) so far; its remaining epochs run in \(precision.rawValue) (--precision)")
        return earlier + [precision.rawValue]
    }

    /// The shared options check themselves (`TrainingOptions.validate`).
    func validate() throws {
        try Limits.check(headEpochs, Limits.epochs, "--head-epochs")
        try Limits.check(finetuneEpochs, Limits.epochs, "--finetune-epochs")
        if let validSize { try Limits.check(validSize, 0...Int(Int32.max), "--valid-size") }
        if force && resume { throw UsageError("--force and --resume exclude each other (start afresh, or continue)") }
        guard headEpochs >= 0, finetuneEpochs >= 0, headEpochs + finetuneEpochs > 0 else {
            throw UsageError("--head-epochs and --finetune-epochs must be 0 or more, and not both 0")
        }
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
        TIFFDecoder.pixelBudget = try ImageBudget.resolve(maxImagePixels, batchSize: training.batchSize)
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
        var inputs = [OutputGuard.Input(training.dir, role: "training images"), OutputGuard.Input(training.labels, role: "labels (--labels)"),
                      OutputGuard.Input(training.from, role: "pretrained model (--from)")]
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
            return (try training.newModel(headKind: training.head), fresh)
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
