import Foundation
import ResNetModel
import ResNetSupport

/// Where a checkpoint's weights came from.
public struct Provenance: Codable, Equatable, Sendable {
    /// The file the weights were read from (as given by the user).
    public var source: String
    /// SHA-256 of that file, hex.
    public var sourceSHA256: String
    /// What produced the checkpoint, e.g. `import-weights (ONNX, pytorch 2.15)` or `fine-tune`.
    public var producer: String
    /// Free-form notes, e.g. how folded BatchNorms were rebuilt.
    public var notes: [String]

    public init(source: String = "", sourceSHA256: String = "", producer: String = "", notes: [String] = []) {
        self.source = source
        self.sourceSHA256 = sourceSHA256
        self.producer = producer
        self.notes = notes
    }
}

/// A native ResNetKit checkpoint: a safetensors file whose tensors carry torchvision's names (so it loads
/// into `torchvision.models.resnet18()` with `strict=True` for the linear head) and whose metadata say
/// everything needed to use the model: architecture, head, classes, preprocessing, provenance.
public struct Checkpoint: Equatable {
    public var config: ModelConfig
    public var state: StateDict
    public var classNames: [String]
    public var preprocessing: Preprocessing
    public var provenance: Provenance
    /// Extra string metadata kept verbatim (e.g. a trainer's resume state).
    public var extra: [String: String]

    public init(config: ModelConfig, state: StateDict, classNames: [String]? = nil,
                preprocessing: Preprocessing = Preprocessing(), provenance: Provenance = Provenance(),
                extra: [String: String] = [:]) {
        self.config = config
        self.state = state
        self.classNames = classNames ?? (0..<config.numClasses).map(String.init)
        self.preprocessing = preprocessing
        self.provenance = provenance
        self.extra = extra
    }

    public var architecture: Architecture { Architecture(config) }

    static let formatTag = "resnetkit-checkpoint/1"

    /// Reads and validates a checkpoint. A safetensors file without ResNetKit metadata (e.g. a plain
    /// torchvision `state_dict`) is accepted when its tensors identify a ResNet-18 unambiguously.
    public static func load(path: String) throws -> Checkpoint {
        let (entries, metadata) = try SafeTensors.read(path: path)
        var state: StateDict = [:]
        for (name, entry) in entries { state[name] = Tensor(shape: entry.shape, data: entry.data) }
        let decoder = JSONDecoder()
        func decode<T: Decodable>(_ type: T.Type, _ key: String) throws -> T? {
            guard let text = metadata[key] else { return nil }
            do { return try decoder.decode(T.self, from: Data(text.utf8)) } catch {
                throw FileError(path, "metadata '\(key)' is not valid: \(error)")
            }
        }
        let config: ModelConfig
        if let stored = try decode(ModelConfig.self, "config") {
            config = stored
        } else {
            let layout = try inferLayout(state, path: path)
            config = layout.config
            state = layout.state
        }
        guard config.numClasses > 0, config.baseWidth > 0, config.hiddenUnits > 0 else {
            throw FileError(path, "metadata 'config' describes an empty network")
        }
        let preprocessing = try decode(Preprocessing.self, "preprocessing") ?? Preprocessing()
        try ModelValidation.check(config: config, preprocessing: preprocessing, path: path)
        do { try Architecture(config).validate(state) } catch let error as StateDictError {
            throw FileError(path, "not a ResNet-18 checkpoint of the stated shape: \(error)")
        }
        try ModelValidation.check(state: state, path: path)
        let classNames = try decode([String].self, "classes")
        if let classNames, classNames.count != config.numClasses {
            throw FileError(path, "metadata lists \(classNames.count) class names for \(config.numClasses) classes")
        }
        let known: Set<String> = ["format", "config", "classes", "preprocessing", "provenance"]
        return Checkpoint(config: config, state: state, classNames: classNames,
                          preprocessing: preprocessing,
                          provenance: try decode(Provenance.self, "provenance") ?? Provenance(source: path),
                          extra: metadata.filter { !known.contains($0.key) })
    }

    /// Recognises a bare state dict (torchvision names or the seed notebook's Sequential layout, linear or MLP
    /// head, wrapper prefixes) by its keys and shapes, and maps it onto ResNetKit's names.
    static func inferLayout(_ state: StateDict, path: String) throws -> StateDictLayout.Result {
        let recognisable = state.keys.contains { key in
            key.hasSuffix("conv1.weight") || (key.hasSuffix("0.weight") && StateDictLayout.isStem(state[key]))
        }
        guard recognisable else {
            throw FileError(path, "not a ResNetKit checkpoint and not a torchvision ResNet-18 state dict (no conv1.weight)")
        }
        return try StateDictLayout.normalize(state, path: path)
    }

    /// Writes the checkpoint atomically; refuses to replace an existing file unless `overwrite`.
    public func save(path: String, overwrite: Bool = true) throws {
        let arch = architecture
        try arch.validate(state)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        func json<T: Encodable>(_ value: T) throws -> String { String(decoding: try encoder.encode(value), as: UTF8.self) }
        var metadata = extra
        metadata["format"] = Self.formatTag
        metadata["config"] = try json(config)
        metadata["classes"] = try json(classNames)
        metadata["preprocessing"] = try json(preprocessing)
        metadata["provenance"] = try json(provenance)
        let specs = arch.parameterSpecs
        let tensors = specs.map { spec -> (name: String, shape: [Int], data: [Float]) in
            let data = state[spec.name]?.data ?? [0]
            return (spec.name, spec.shape, data)
        }
        let counters = Set(specs.filter { $0.role == .counter }.map(\.name))
        try SafeTensors.write(path: path, tensors: tensors, integerNames: counters, metadata: metadata, overwrite: overwrite)
    }
}
