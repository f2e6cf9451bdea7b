import ArgumentParser
import Foundation
import ResNetData
import ResNetDNNL
import ResNetFormats
import ResNetModel
import ResNetSupport

/// What fine-tune and find-lr both take: the training images and their labels, the pretrained model and its new
/// head, how batches are drawn and prepared, and the arithmetic they train in. find-lr tests a learning rate on
/// the model, data and batches fine-tune would train with, so both read these options alike.
struct TrainingOptions: ParsableArguments {
    @Argument(help: "Folder of training images (<id>.tif).")
    var dir: String

    @Option(help: ArgumentHelp("CSV with id,label (integer or string labels).", valueName: "CSV"))
    var labels: String

    @Option(help: ArgumentHelp("Pretrained model: checkpoint, ONNX or HDF5.", valueName: "CKPT"))
    var from = "model.safetensors"

    @Option(name: .customLong("valid-fraction"), parsing: .unconditional,
            help: "Share of DIR held out for validation (seeded; fine-tune: unless --valid-dir is given).")
    var validFraction = 0.2

    @Option(name: .customLong("train-size"), parsing: .unconditional, help: "Use at most N training images (a seeded sample).")
    var trainSize: Int?

    @Option(name: .customLong("batch-size"), parsing: .unconditional, help: "Images per step.")
    var batchSize = 16

    @Option(help: ArgumentHelp("A new head: mlp (the seed's) or linear (a single fc layer).", valueName: "mlp|linear"))
    var head = HeadKind.mlp

    @Option(parsing: .unconditional, help: "Dropout probability in the MLP head.")
    var dropout: Float = 0.5

    @OptionGroup(title: "Preprocessing")
    var preprocessingOptions: PreprocessingOptions

    @Flag(name: .customLong("no-augment"), help: "No random flips or rotation.")
    var noAugment = false

    @Option(name: .customLong("frozen-bn"), help: ArgumentHelp("The frozen backbone's BatchNorm in the head phase: train (the seed's: batch statistics, running statistics adapt) or eval (Keras': as at inference, nothing moves).", valueName: "train|eval"))
    var frozenBN = FrozenBatchNormMode.train

    @Option(help: ArgumentHelp("fp32 (OpenBLAS, PyTorch-exact; default) or bf16 (convolutions on oneDNN in bf16 with fp32 accumulation; fp32 master weights, optimizer, BatchNorm, loss and head; the frozen backbone's forward runs some layers as Winograd where that pays, RESNETKIT_WINOGRAD=off to keep oneDNN's convolutions).", valueName: "fp32|bf16"))
    var precision = Precision.fp32

    @Option(name: .customLong("class-weights"), help: ArgumentHelp("Per-class weights of the training loss (PyTorch's CrossEntropyLoss(weight=)): none, balanced (n / (K·n_k) from the training labels) or one positive number per class.", valueName: "none|balanced|W0,W1,…"))
    var classWeights = ClassWeighting.none

    @Option(help: "Seed for the split, the order, the augmentation, dropout and the new head.")
    var seed: UInt64 = 0

    /// The seed's centre crop, whatever the model's preprocessing says.
    static let defaultCrop = 49

    /// Centre crop side of the training and validation images.
    var crop: Int { preprocessingOptions.crop ?? Self.defaultCrop }

    func validate() throws {
        guard precision != .int8 else { throw UsageError("--precision must be fp32 or bf16, not 'int8' (int8 is for inference)") }
        guard batchSize >= 2 else { throw UsageError("--batch-size must be at least 2 (BatchNorm needs two images)") }
        try Limits.check(batchSize, Limits.batchSize, "--batch-size")
        if let trainSize { try Limits.check(trainSize, 1...Int(Int32.max), "--train-size") }
        guard (0..<1).contains(validFraction) else { throw UsageError("--valid-fraction must be in [0, 1)") }
        guard (0..<1).contains(dropout) else { throw UsageError("--dropout must be in [0, 1)") }
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

    /// A validation set of its own (fine-tune's --valid-dir and --valid-labels) instead of DIR's held-out share.
    struct ValidationSource {
        var dir: String, labels: String
    }

    /// The training and validation image sets (decoded once), and the class names. The validation images are DIR's
    /// held-out share (--valid-fraction) or `validation`'s, at most `validSize` of them.
    func loadData(classNames: [String]?, validation: ValidationSource? = nil,
                  validSize: Int? = nil) throws -> (ImageSet, ImageSet?, [String]) {
        let table = try LabelTable.load(path: labels, classNames: classNames)
        if let note = table.columnNote { Console.info("note: \(note)") }
        var rng = SplitMix64(seed: seed ^ 0x5EED)
        var order = Array(0..<table.ids.count)
        order.shuffle(using: &rng)
        var trainIndices = order, validIndices: [Int] = []
        if validation == nil {
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
        if let validation {
            let validTable = try LabelTable.load(path: validation.labels, classNames: table.classNames)
            var indices = Array(0..<validTable.ids.count)
            if let validSize { indices = Array(indices.prefix(max(0, validSize))) }
            valid = try load(validation.dir, validTable, indices, what: "validation")
        } else if !validIndices.isEmpty {
            if let validSize { validIndices = Array(validIndices.prefix(max(0, validSize))) }
            valid = try load(dir, table, validIndices, what: "validation")
        }
        return (train, valid, table.classNames)
    }

    /// The trainable model for `state`, its frozen BatchNorm as --frozen-bn says; with bf16, its convolutions on
    /// oneDNN, built for batches of `batch` images of `side` x `side`.
    func makeModel(architecture: Architecture, state: StateDict, lossWeights: [Float]?, batch: Int, side: Int) throws -> TrainableResNet {
        let model = try TrainableResNet(architecture: architecture, state: state)
        model.frozenBatchNorm = frozenBN
        model.classWeights = lossWeights
        if precision == .bf16 {
            do {
                try BF16Training.setUp(model, count: batch, height: side, width: side, workSaving: try EngineChoice.workSaving())
                if Console.debugEnabled {
                    Console.debug("oneDNN \(DNNLRuntime.version), ISA \(DNNLRuntime.isa): bf16 training convolutions for batches of \(batch)")
                    for line in try model.describeConvolutions(count: batch, height: side, width: side) { Console.debug("oneDNN \(line)") }
                }
            } catch let error as DNNLError {
                throw UsageError(error.description)
            }
        }
        return model
    }
}
