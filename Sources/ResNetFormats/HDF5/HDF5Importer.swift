import CHDF5
import Foundation
import ResNetModel
import ResNetSupport

/// Reads ResNet-18 weights from HDF5 files in the two layouts met in practice:
/// a PyTorch `state_dict` written by h5py (flat dotted names or nested groups), and Keras weights
/// (`model_weights` group or the root, `layer_names` / `weight_names` attributes).
public enum HDF5Importer {
    public static func importModel(path: String, options: ImportOptions) throws -> ImportedModel {
        HDF5File.lock.lock()
        defer { HDF5File.lock.unlock() }
        let file = try HDF5File(path: path)
        var imported: ImportedModel
        if let kerasRoot = try KerasWeights.weightsGroup(in: file) {
            defer { H5Gclose(kerasRoot) }
            imported = try KerasWeights.read(file, weightsGroup: kerasRoot)
        } else if Keras3Weights.recognises(file) {
            imported = try Keras3Weights.read(file, config: nil, format: "HDF5 (Keras 3 .weights.h5)")
        } else {
            imported = try readStateDict(file)
        }
        let config = imported.checkpoint.config
        do { try Architecture(config).validate(imported.checkpoint.state) } catch let error as StateDictError {
            throw FileError(path, "not a ResNet-18 of the shape its conv1 and classifier imply: \(error)")
        }
        for (name, tensor) in imported.checkpoint.state where !tensor.data.allSatisfy(\.isFinite) {
            throw FileError(path, "tensor \(name) holds NaN or infinite values")
        }
        if let names = options.classNames {
            guard names.count == config.numClasses else {
                throw FileError(path, "the model has \(config.numClasses) classes but \(names.count) class names were given")
            }
            imported.checkpoint.classNames = names
        }
        return imported
    }

    // MARK: PyTorch state_dict

    /// h5py's rendering of `torch.save`-free state dicts: one dataset per tensor, named by the key
    /// (`layer1.0.conv1.weight`) or with the dots as groups (`layer1/0/conv1/weight`).
    static func readStateDict(_ file: HDF5File) throws -> ImportedModel {
        let datasets = try file.datasets(in: file.id)
        guard !datasets.isEmpty else { throw FileError(file.path, "the HDF5 file holds no datasets") }
        let nested = datasets.contains { $0.path.contains("/") }
        var byName: [String: HDF5File.Dataset] = [:]
        for dataset in datasets {
            let name = dataset.path.replacingOccurrences(of: "/", with: ".")
            if let other = byName[name] {
                throw FileError(file.path, "datasets '\(other.path)' and '\(dataset.path)' both name tensor \(name)")
            }
            byName[name] = dataset
        }
        let names = Set(byName.keys)
        // A DataParallel / wrapper prefix (`module.conv1.weight`, `model/conv1/weight`) is stripped when every name has it.
        if byName["conv1.weight"] == nil,
           let stem = names.first(where: { $0.hasSuffix(".conv1.weight") && !$0.contains("layer") }) {
            let prefix = String(stem.dropLast("conv1.weight".count))
            if names.allSatisfy({ $0.hasPrefix(prefix) }) {
                byName = Dictionary(uniqueKeysWithValues: byName.map { (String($0.key.dropFirst(prefix.count)), $0.value) })
            }
        }
        try rejectOtherArchitectures(Set(byName.keys), path: file.path)
        let config = try inferConfig(byName, path: file.path)
        try checkTotalSize(Array(byName.values), config: config, path: file.path)

        var state: StateDict = [:]
        var converted: Set<String> = []
        for (name, dataset) in byName {
            let isCounter = name.hasSuffix("num_batches_tracked")
            guard dataset.isFloat || (isCounter && dataset.isInteger) else {
                let kind = dataset.typeClass == H5T_STRING ? "text" : dataset.isInteger ? "integers" : "a non-numeric type"
                throw FileError(file.path, "dataset '\(dataset.path)' holds \(kind), expected floating-point numbers")
            }
            if dataset.isFloat && dataset.elementSize != 4 { converted.insert("float\(8 * dataset.elementSize)") }
            state[name] = Tensor(shape: dataset.shape, data: try file.readFloats(dataset, in: file.id))
        }
        var notes = ["PyTorch state_dict with \(nested ? "nested groups" : "flat dotted names"): tensors matched by torchvision name"]
        if !converted.isEmpty { notes.append("\(converted.sorted().joined(separator: " and ")) tensors converted to float32") }
        if !state.keys.contains(where: { $0.hasSuffix("num_batches_tracked") }) {
            notes.append("no num_batches_tracked counters in the file: stored as 0")
        }
        let checkpoint = Checkpoint(config: config, state: state)
        return ImportedModel(checkpoint: checkpoint,
                             sourceFormat: "HDF5 (PyTorch state_dict, \(nested ? "nested groups" : "flat names"))",
                             producer: nil, batchNormFolded: false, notes: notes)
    }

    /// Refuses, before reading any data, files whose datasets hold far more values than the network they
    /// describe (each dataset is bounded on its own; this bounds their sum).
    static func checkTotalSize(_ datasets: [HDF5File.Dataset], config: ModelConfig, path: String) throws {
        let expected = Architecture(config).parameterSpecs.reduce(0) { $0 + $1.shape.reduce(1, *) }
        let total = datasets.reduce(0) { $0 + $1.count }
        guard total <= 2 * expected + (1 << 20) else {
            throw FileError(path, "the datasets hold \(total) values, far more than the \(expected) of the ResNet-18 "
                                + "its conv1 and classifier describe")
        }
    }

    /// Deeper ResNets share ResNet-18's names but add blocks (`layer1.2`, ResNet-34) or a third conv per
    /// block (`conv3`, the Bottleneck of ResNet-50/101/152): say so rather than list dozens of stray tensors.
    static func rejectOtherArchitectures(_ names: Set<String>, path: String) throws {
        if let bottleneck = names.sorted().first(where: { $0.hasPrefix("layer") && $0.contains(".conv3.") }) {
            throw FileError(path, "not a ResNet-18: '\(bottleneck)' belongs to a Bottleneck block (ResNet-50/101/152)")
        }
        for name in names.sorted() where name.hasPrefix("layer") {
            let parts = name.split(separator: ".")
            if parts.count > 2, let block = Int(parts[1]), block >= 2 {
                throw FileError(path, "not a ResNet-18: '\(name)' is block \(block) of \(parts[0]) (ResNet-18 has 2 per stage; ResNet-34 has more)")
            }
        }
    }

    /// Base width from conv1, head and class count from the classifier's shapes.
    static func inferConfig(_ byName: [String: HDF5File.Dataset], path: String) throws -> ModelConfig {
        guard let stem = byName["conv1.weight"] else {
            if byName.values.contains(where: { $0.path.hasPrefix("layers/") && $0.path.contains("/vars/") }) {
                throw FileError(path, "Keras 3 .weights.h5 layout (layers/*/vars/*) is not supported: save with model.save('model.h5') instead")
            }
            throw FileError(path, "no ResNet weights found: neither a conv1.weight dataset nor Keras layer_names")
        }
        guard stem.shape.count == 4, stem.shape[1] == 3, stem.shape[2] == 7, stem.shape[3] == 7, stem.shape[0] > 0 else {
            throw FileError(path, "conv1.weight: expected [width, 3, 7, 7], got \(describe(shape: stem.shape))")
        }
        let width = stem.shape[0]
        if let fc = byName["fc.weight"] {
            guard fc.shape.count == 2, fc.shape[0] > 0 else { throw FileError(path, "fc.weight: expected [classes, \(8 * width)], got \(describe(shape: fc.shape))") }
            return ModelConfig(numClasses: fc.shape[0], head: .linear, baseWidth: width)
        }
        if let fc1 = byName["head.fc1.weight"], let fc2 = byName["head.fc2.weight"] {
            guard fc1.shape.count == 2, fc2.shape.count == 2, fc1.shape[0] > 0, fc2.shape[0] > 0 else {
                throw FileError(path, "head.fc1.weight / head.fc2.weight must be matrices, got \(describe(shape: fc1.shape)) and \(describe(shape: fc2.shape))")
            }
            return ModelConfig(numClasses: fc2.shape[0], head: .mlp, hiddenUnits: fc1.shape[0], baseWidth: width)
        }
        throw FileError(path, "no classifier found (expected fc.weight, or head.fc1.weight and head.fc2.weight)")
    }
}
