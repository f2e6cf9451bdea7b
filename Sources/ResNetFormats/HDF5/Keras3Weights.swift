import CHDF5
import Foundation
import ResNetModel
import ResNetSupport
import ZIPFoundation

/// Keras 3 weights: `.weights.h5` (`layers/<name>/vars/<i>`) and the `.keras` archive (a zip of `config.json`,
/// `metadata.json` and `model.weights.h5`).
///
/// Keras 3 names each layer's group after its class with a counter in the model's layer order (`conv2d`,
/// `conv2d_1`, … `batch_normalization_7`), whatever the layer's own name, and numbers its variables in creation
/// order (Conv2D/Dense: kernel, bias; BatchNormalization: gamma, beta, moving_mean, moving_variance). So the
/// counters give the order within each kind, and the layers are then mapped by structure as Keras 2 files are.
/// The `.keras` config gives each layer's real name, the graph (which BatchNorm follows which convolution) and
/// the epsilon; a bare `.weights.h5` has no config, so BatchNorms pair with convolutions by position and the
/// epsilon is Keras' default.
enum Keras3Weights {
    static func recognises(_ file: HDF5File) -> Bool { file.hasGroup("layers", in: file.id) }

    static func read(_ file: HDF5File, config: Any?, format: String) throws -> ImportedModel {
        let path = file.path
        var byGroup: [String: [Int: HDF5File.Dataset]] = [:]
        for dataset in try file.datasets(in: file.id) where dataset.path.hasPrefix("layers/") {
            let parts = dataset.path.split(separator: "/").map(String.init)
            guard parts.count == 4, parts[2] == "vars", let index = Int(parts[3]), index >= 0, index < 16 else {
                if parts.count > 4 { throw FileError(path, "'\(dataset.path)': nested models in Keras 3 weights files are not supported") }
                continue
            }
            guard byGroup[parts[1], default: [:]][index] == nil else { throw FileError(path, "'\(dataset.path)' appears twice") }
            byGroup[parts[1], default: [:]][index] = dataset
        }
        guard !byGroup.isEmpty else { throw FileError(path, "a Keras 3 weights file (layers/…) without any variables") }

        // Config layers in model order: (h5 group name, class, real name, config).
        var described: [String: (className: String, name: String, config: [String: Any])] = [:]
        if let layers = ((config as? [String: Any])?["config"] as? [String: Any])?["layers"] as? [Any] {
            var counters: [String: Int] = [:]
            for case let layer as [String: Any] in layers {
                guard let className = layer["class_name"] as? String else { continue }
                let layerConfig = layer["config"] as? [String: Any] ?? [:]
                let base = snakeCase(className)
                let count = counters[base, default: 0]
                counters[base] = count + 1
                let name = layer["name"] as? String ?? layerConfig["name"] as? String ?? base
                described[count == 0 ? base : "\(base)_\(count)"] = (className, name, layerConfig)
            }
        }

        var layers: [(order: Int, layer: KerasWeights.Layer)] = []
        for (group, variables) in byGroup {
            let info = described[group]
            let className = info?.className ?? Self.className(ofGroup: group)
            let indices = variables.keys.sorted()
            guard indices == Array(0..<indices.count) else { throw FileError(path, "Keras layer '\(group)': its variables are not numbered 0…\(indices.count - 1)") }
            let kinds: [String]
            switch className {
            case "Conv2D", "Dense": kinds = ["kernel", "bias"]
            case "BatchNormalization":
                if let config = info?.config {  // gamma only with scale=True, beta only with center=True
                    kinds = (config["scale"] as? Bool ?? true ? ["gamma"] : []) + (config["center"] as? Bool ?? true ? ["beta"] : [])
                        + ["moving_mean", "moving_variance"]
                } else if indices.count == 3 {
                    throw FileError(path, "Keras layer '\(group)' has 3 variables: without a config (.keras) it is unclear whether gamma or beta is missing")
                } else {
                    kinds = indices.count == 2 ? ["moving_mean", "moving_variance"] : ["gamma", "beta", "moving_mean", "moving_variance"]
                }
            default: kinds = indices.map { "vars/\($0)" }
            }
            guard indices.count <= kinds.count, className != "BatchNormalization" || indices.count == kinds.count else {
                throw FileError(path, "Keras layer '\(group)' (\(className)) has \(indices.count) variables, expected \(kinds.count)")
            }
            var layer = KerasWeights.Layer(name: info?.name ?? group)
            for index in indices {
                guard var dataset = variables[index] else { continue }
                guard dataset.isFloat else { throw FileError(path, "'\(dataset.path)' does not hold floating-point numbers") }
                dataset.path = "layers/\(group)/vars/\(index)"
                layer.variables[kinds[index]] = dataset
            }
            layers.append((Self.counter(ofGroup: group), layer))
        }
        // The counters give the model's order within each kind of layer, which is all the mapping needs.
        let ordered = layers.sorted { $0.order < $1.order || ($0.order == $1.order && $0.layer.name < $1.layer.name) }.map(\.layer)
        let notes = [config == nil
            ? "Keras 3 weights without a config: layers ordered by Keras' per-class counters (conv2d, conv2d_1, …), BatchNorms paired with convolutions by position; "
                + "the file records no padding (a model built with padding='same' at stride 2 pads asymmetrically in Keras)"
            : "Keras 3 archive: layers named and connected by its config.json"]
        return try KerasWeights.read(file, file.id, layers: ordered, modelConfig: config, format: format, producer: nil, notes: notes)
    }

    /// `BatchNormalization` → `batch_normalization`, `Conv2D` → `conv2d` (Keras' `to_snake_case`).
    static func snakeCase(_ name: String) -> String {
        var out = ""
        let chars = Array(name)
        for (i, c) in chars.enumerated() {
            if c.isUppercase, i > 0, chars[i - 1].isLowercase || (i + 1 < chars.count && chars[i + 1].isLowercase && chars[i - 1].isUppercase) {
                out.append("_")
            }
            out.append(contentsOf: c.lowercased())
        }
        return out
    }

    static func counter(ofGroup group: String) -> Int {
        guard let underscore = group.lastIndex(of: "_"), let n = Int(group[group.index(after: underscore)...]) else { return 0 }
        return n
    }

    static func className(ofGroup group: String) -> String {
        var base = group
        if let underscore = group.lastIndex(of: "_"), Int(group[group.index(after: underscore)...]) != nil { base = String(group[..<underscore]) }
        switch base {
        case "conv2d": return "Conv2D"
        case "dense": return "Dense"
        case "batch_normalization": return "BatchNormalization"
        default: return base
        }
    }
}

/// The `.keras` archive: `config.json` and `model.weights.h5` in a zip.
enum KerasArchive {
    static func recognises(path: String) -> Bool {
        guard ZipCheck.problem(path: path) == nil, let archive = try? Archive(url: URL(fileURLWithPath: path), accessMode: .read, pathEncoding: nil) else { return false }
        return archive["config.json"] != nil && archive["model.weights.h5"] != nil
    }

    /// Largest member read (a ResNet-18's weights are ~45 MB).
    static let maxMemberBytes: UInt64 = 1 << 30

    static func importModel(path: String, options: ImportOptions) throws -> ImportedModel {
        try ZipCheck.check(path: path)
        let archive: Archive
        do { archive = try Archive(url: URL(fileURLWithPath: path), accessMode: .read) } catch {
            throw FileError(path, "a zip file that cannot be read (truncated or damaged): \(error)")
        }
        func contents(_ name: String) throws -> Data {
            guard let entry = archive[name] else { throw FileError(path, "the .keras archive has no \(name)") }
            guard entry.uncompressedSize <= maxMemberBytes else { throw FileError(path, "\(name) declares \(entry.uncompressedSize) bytes") }
            var out = Data()
            do {
                let checksum = try archive.extract(entry) { chunk in
                    guard UInt64(out.count + chunk.count) <= entry.uncompressedSize else { throw FileError(path, "\(name) holds more than it declares") }
                    out.append(chunk)
                }
                guard checksum == entry.checksum else { throw FileError(path, "\(name) is damaged (its CRC-32 does not match)") }
            } catch let error as FileError { throw error } catch {
                throw FileError(path, "\(name) cannot be read (truncated or damaged): \(error)")
            }
            return out
        }
        guard let config = try? JSONSerialization.jsonObject(with: try contents("config.json")) else {
            throw FileError(path, "the .keras archive's config.json is not valid JSON")
        }
        // libhdf5 reads files: the weights go to a private temporary folder, removed afterwards.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("resnetkit-keras-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(at: folder) }
        let weights = folder.appendingPathComponent("model.weights.h5")
        try contents("model.weights.h5").write(to: weights)

        HDF5File.lock.lock()
        defer { HDF5File.lock.unlock() }
        var imported: ImportedModel
        do {
            let file = try HDF5File(path: weights.path)
            imported = try Keras3Weights.read(file, config: config, format: "Keras 3 (.keras)")
        } catch let error as FileError {
            throw FileError(path, "model.weights.h5: \(error.problem)")
        }
        let architecture = imported.checkpoint.architecture
        do { try architecture.validate(imported.checkpoint.state) } catch let error as StateDictError {
            throw FileError(path, "not a ResNet-18 of the shape its conv1 and classifier imply: \(error)")
        }
        for (name, tensor) in imported.checkpoint.state where !tensor.data.allSatisfy(\.isFinite) {
            throw FileError(path, "tensor \(name) holds NaN or infinite values")
        }
        if let names = options.classNames {
            guard names.count == imported.checkpoint.config.numClasses else {
                throw FileError(path, "the model has \(imported.checkpoint.config.numClasses) classes but \(names.count) class names were given")
            }
            imported.checkpoint.classNames = names
        }
        return imported
    }
}
