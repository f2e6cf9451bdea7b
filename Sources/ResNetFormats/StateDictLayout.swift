import Foundation
import ResNetModel
import ResNetSupport

/// Maps a state dict as users save it onto ResNetKit's torchvision names, by structure: wrapper prefixes
/// (`module.` from DataParallel, `model.` …), torchvision's names with a linear, native MLP or `fc = Sequential(…)`
/// head, and the seed notebook's `nn.Sequential(*children()[:-2], head)` (`0.weight`, `1.*`, `4.*`…`7.*`, `8.N.*`).
/// Other networks are named: ResNet-34/50/101/152 keys, pre-activation blocks, an input BatchNorm.
/// Used by the PyTorch checkpoint reader and for safetensors files without ResNetKit metadata.
enum StateDictLayout {
    struct Result {
        var config: ModelConfig
        var state: StateDict
        var notes: [String]
    }

    /// `notFound` is the message when the keys are neither torchvision's nor the seed's layout.
    static func normalize(_ input: StateDict, path: String, epsilon: Float = 1e-5,
                          notFound: String = "no ResNet-18 weights found") throws -> Result {
        var state = input
        var notes: [String] = []
        func fail(_ problem: String) -> FileError { FileError(path, problem) }

        // Wrappers: DataParallel's `module.` (possibly repeated), or any prefix in front of every key.
        var stripped: [String] = []
        while !state.isEmpty, state.keys.allSatisfy({ $0.hasPrefix("module.") }) {
            state = Dictionary(uniqueKeysWithValues: state.map { (String($0.key.dropFirst(7)), $0.value) })
            stripped.append("module.")
        }
        if state["conv1.weight"] == nil && sequentialStem(state) == nil {
            let candidates = state.keys.filter { key in
                (key.hasSuffix(".conv1.weight") && !key.contains("layer")) || (key.hasSuffix(".0.weight") && isStem(state[key]))
            }.sorted { $0.count < $1.count }
            if let stem = candidates.first {
                let prefix = String(stem.dropLast(stem.hasSuffix(".conv1.weight") ? "conv1.weight".count : "0.weight".count))
                if state.keys.allSatisfy({ $0.hasPrefix(prefix) }) {
                    state = Dictionary(uniqueKeysWithValues: state.map { (String($0.key.dropFirst(prefix.count)), $0.value) })
                    stripped.append(prefix)
                }
            }
        }
        if !stripped.isEmpty { notes.append("prefix \(stripped.map { "'\($0)'" }.joined(separator: " and ")) stripped from every key") }

        try rejectOtherArchitectures(state, path: path)

        var layout: String
        if state["conv1.weight"] != nil {
            layout = "torchvision names"
        } else if let stem = sequentialStem(state) {
            state = try mapSequential(state, stem: stem, path: path)
            layout = "the seed notebook's nn.Sequential layout (0.*, 1.*, 4.*–7.*, head at 8.*), mapped by structure"
        } else {
            let sample = state.keys.sorted().prefix(4).joined(separator: ", ")
            throw fail("\(notFound): expected torchvision names (conv1.weight, layer1.0.conv1.weight, …) or the seed "
                       + "notebook's nn.Sequential layout (0.weight, 4.0.conv1.weight, …); found \(state.count) tensors (\(sample)\(state.count > 4 ? ", …" : ""))")
        }
        guard let stem = state["conv1.weight"], stem.shape.count == 4 else { throw fail("conv1.weight is not a convolution kernel") }
        guard stem.shape[1] == 3, stem.shape[2] == 7, stem.shape[3] == 7, stem.shape[0] > 0 else {
            let what = stem.shape[2] == 3 ? " (a 3x3 stem, as in CIFAR-style ResNets)" : ""
            throw fail("not torchvision's ResNet-18: conv1.weight is \(describe(shape: stem.shape))\(what), expected [width, 3, 7, 7]")
        }
        try rejectPreActivation(state, path: path)

        // The head: fc.* (linear), head.{bn1,fc1,bn2,fc2}.* (ResNetKit's MLP) or a Sequential under fc or head.
        let width = stem.shape[0]
        var config = ModelConfig(numClasses: 1, head: .linear, baseWidth: width, batchNormEpsilon: epsilon)
        if let fc = state["fc.weight"], fc.shape.count == 2 {
            config.numClasses = fc.shape[0]
        } else if let fc1 = state["head.fc1.weight"], let fc2 = state["head.fc2.weight"], fc1.shape.count == 2, fc2.shape.count == 2 {
            config.head = .mlp
            config.hiddenUnits = fc1.shape[0]
            config.numClasses = fc2.shape[0]
        } else if let prefix = ["fc", "head"].first(where: { p in state.keys.contains { $0.hasPrefix("\(p).") } }) {
            let (head, headConfig, headNotes) = try mapHead(state, prefix: prefix, epsilon: epsilon, path: path)
            state = state.filter { !$0.key.hasPrefix("\(prefix).") }.merging(head) { $1 }
            config.head = headConfig.head
            config.hiddenUnits = headConfig.hiddenUnits
            config.numClasses = headConfig.numClasses
            notes += headNotes
        } else {
            throw fail("no classifier found (expected fc.*, head.fc1.*/head.fc2.*, or the seed's head)")
        }
        guard config.numClasses > 0, config.hiddenUnits > 0 else { throw fail("the classifier has no outputs") }
        notes.insert("PyTorch state_dict with \(layout)", at: 0)
        do { try Architecture(config).validate(state) } catch let error as StateDictError {
            throw fail("not a ResNet-18 of the shape its conv1 and classifier imply: \(error)")
        }
        for (name, tensor) in state.sorted(by: { $0.key < $1.key }) where !tensor.data.allSatisfy(\.isFinite) {
            throw fail("tensor \(name) holds NaN or infinite values")
        }
        if !state.keys.contains(where: { $0.hasSuffix("num_batches_tracked") }) {
            notes.append("no num_batches_tracked counters: stored as 0")
        }
        return Result(config: config, state: state, notes: notes)
    }

    static func isStem(_ tensor: Tensor?) -> Bool {
        guard let t = tensor, t.shape.count == 4 else { return false }
        return t.shape[1] == 3 && t.shape[2] == t.shape[3] && t.shape[2] >= 3
    }

    /// The index of the stem convolution in a Sequential layout: the first top-level `N.weight` that is a
    /// convolution over 3 channels.
    static func sequentialStem(_ state: StateDict) -> Int? {
        topLevelIndices(state).first { isStem(state["\($0).weight"]) }
    }

    static func topLevelIndices(_ state: StateDict) -> [Int] {
        Set(state.keys.compactMap { key in key.split(separator: ".").first.flatMap { Int($0) } }).sorted()
    }

    /// Keys under `prefix.` with the prefix removed.
    static func children(_ state: StateDict, _ prefix: String) -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for (key, value) in state where key.hasPrefix(prefix + ".") { out[String(key.dropFirst(prefix.count + 1))] = value }
        return out
    }

    /// `nn.Sequential(conv1, bn1, relu, maxpool, layer1…layer4, head)` → torchvision names.
    static func mapSequential(_ state: StateDict, stem: Int, path: String) throws -> StateDict {
        let indices = topLevelIndices(state)
        for index in indices where index < stem {
            let params = children(state, "\(index)")
            if let w = params["weight"], w.shape == [3], params["running_mean"] != nil {
                throw FileError(path, "not torchvision's ResNet-18: an input BatchNorm over the 3 image channels ('\(index).*') comes before the stem convolution")
            }
            throw FileError(path, "not torchvision's ResNet-18: layer '\(index)' (\(params.keys.sorted().joined(separator: ", "))) comes before the stem convolution")
        }
        var rest = indices.filter { $0 > stem }
        var mapped: StateDict = [:]
        for (key, value) in children(state, "\(stem)") { mapped["conv1.\(key)"] = value }
        guard let bn = rest.first, children(state, "\(bn)")["running_mean"] != nil else {
            throw FileError(path, "the stem convolution ('\(stem).weight') is not followed by a BatchNorm")
        }
        for (key, value) in children(state, "\(bn)") { mapped["bn1.\(key)"] = value }
        rest.removeFirst()
        for stage in 1...4 {
            guard let index = rest.first, state["\(index).0.conv1.weight"] != nil else {
                throw FileError(path, "the seed layout's layer\(stage) (residual blocks N.0.conv1 …) is missing after '\(stem)' and '\(bn)'")
            }
            for (key, value) in children(state, "\(index)") { mapped["layer\(stage).\(key)"] = value }
            rest.removeFirst()
        }
        guard let head = rest.first else { throw FileError(path, "no classifier found after the four stages of the seed layout") }
        rest.removeFirst()
        if let extra = rest.first {
            throw FileError(path, "unexpected layer '\(extra)' after the classifier '\(head)' in the Sequential layout")
        }
        for (key, value) in children(state, "\(head)") { mapped["fc.\(key)"] = value }
        return mapped
    }

    /// A Sequential head under `prefix` (`fc.0.*`, `8.2.*` …) or a bare Linear: Linear → the linear head;
    /// [BatchNorm1d] Linear [BatchNorm1d] Linear → the MLP head (a missing BatchNorm1d is the identity).
    /// A state dict records no activations: a ReLU between the two Linear layers is assumed, as in the seed.
    static func mapHead(_ state: StateDict, prefix: String, epsilon: Float, path: String)
        throws -> (StateDict, ModelConfig, [String]) {
        let params = children(state, prefix)
        var config = ModelConfig()
        if let w = params["weight"], w.shape.count == 2, w.count > 0, params.keys.allSatisfy({ ["weight", "bias"].contains($0) }) {
            return (["fc.weight": w, "fc.bias": params["bias"] ?? Tensor(zeros: [w.shape[0]])],
                    ModelConfig(numClasses: w.shape[0]), [])
        }
        enum Layer { case linear(Tensor, Tensor?), batchNorm([String: Tensor]) }
        var layers: [(index: Int, layer: Layer)] = []
        let indices = Set(params.keys.compactMap { $0.split(separator: ".").first.flatMap { Int($0) } }).sorted()
        guard !indices.isEmpty, params.keys.allSatisfy({ Int($0.split(separator: ".").first ?? "") != nil }) else {
            throw FileError(path, "the classifier '\(prefix).*' (\(params.keys.sorted().prefix(6).joined(separator: ", "))) is neither a Linear nor a Sequential head")
        }
        for index in indices {
            let p = children(params, "\(index)")
            if p["running_mean"] != nil, let w = p["weight"], w.shape.count == 1 {
                layers.append((index, .batchNorm(p)))
            } else if let w = p["weight"], w.shape.count == 2, w.count > 0 {
                layers.append((index, .linear(w, p["bias"])))
            } else {
                throw FileError(path, "the head's layer '\(prefix).\(index)' (\(p.keys.sorted().joined(separator: ", "))) is neither Linear nor BatchNorm1d")
            }
        }
        let kinds = layers.map { if case .linear = $0.layer { return "Linear" } else { return "BatchNorm1d" } }
        var out: StateDict = [:]
        var notes: [String] = []
        func linear(_ name: String, _ layer: Layer) {
            guard case .linear(let w, let b) = layer else { return }
            out["\(name).weight"] = w
            out["\(name).bias"] = b ?? Tensor(zeros: [w.shape[0]])
        }
        func batchNorm(_ name: String, _ layer: Layer?, channels: Int) {
            if case .batchNorm(let p)? = layer {
                for (key, value) in p { out["\(name).\(key)"] = value }
            } else {  // the identity: (x − 0) / sqrt(1 − eps + eps) · 1 + 0
                out["\(name).weight"] = Tensor(repeating: 1, shape: [channels])
                out["\(name).bias"] = Tensor(zeros: [channels])
                out["\(name).running_mean"] = Tensor(zeros: [channels])
                out["\(name).running_var"] = Tensor(repeating: 1 - epsilon, shape: [channels])
                notes.append("the head has no BatchNorm1d at \(name): an identity one was put there")
            }
        }
        let linears = layers.filter { if case .linear = $0.layer { return true } else { return false } }
        if kinds == ["Linear"] {
            linear("fc", layers[0].layer)
            guard case .linear(let w, _) = layers[0].layer else { throw FileError(path, "unreachable") }
            config.numClasses = w.shape[0]
            return (out, config, notes)
        }
        let accepted: Set<[String]> = [["BatchNorm1d", "Linear", "BatchNorm1d", "Linear"], ["Linear", "BatchNorm1d", "Linear"],
                                       ["BatchNorm1d", "Linear", "Linear"], ["Linear", "Linear"]]
        guard accepted.contains(kinds), linears.count == 2,
              case .linear(let w1, _) = linears[0].layer, case .linear(let w2, _) = linears[1].layer else {
            throw FileError(path, "the head '\(prefix).*' is \(kinds.joined(separator: ", ")): neither a Linear nor the seed's MLP head (BatchNorm1d, Linear, BatchNorm1d, Linear)")
        }
        let first = layers.first { $0.index < linears[0].index }?.layer
        let second = layers.first { $0.index > linears[0].index && $0.index < linears[1].index }?.layer
        batchNorm("head.bn1", first, channels: w1.shape[1])
        linear("head.fc1", linears[0].layer)
        batchNorm("head.bn2", second, channels: w1.shape[0])
        linear("head.fc2", linears[1].layer)
        config.head = .mlp
        config.hiddenUnits = w1.shape[0]
        config.numClasses = w2.shape[0]
        notes.append("MLP head from the classifier's layers (\(zip(layers, kinds).map { "\($0.index) \($1)" }.joined(separator: ", "))); "
                     + "a ReLU between the two Linear layers is assumed (a state dict does not record activations)")
        return (out, config, notes)
    }

    /// Deeper torchvision ResNets share ResNet-18's names: count the blocks per stage and say which it is.
    static func rejectOtherArchitectures(_ state: StateDict, path: String) throws {
        var blocks = [0, 0, 0, 0]
        var bottleneck = false
        for key in state.keys where key.hasPrefix("layer") {
            let parts = key.split(separator: ".")
            guard parts.count > 2, let stage = Int(parts[0].dropFirst(5)), (1...4).contains(stage), let block = Int(parts[1]) else { continue }
            blocks[stage - 1] = max(blocks[stage - 1], block + 1)
            if parts[2] == "conv3" { bottleneck = true }
        }
        let names: [[Int]: String] = [[3, 4, 6, 3]: "ResNet-50", [3, 4, 23, 3]: "ResNet-101", [3, 8, 36, 3]: "ResNet-152"]
        if bottleneck {
            let name = names[blocks] ?? "a Bottleneck ResNet"
            throw FileError(path, "\(name) keys (Bottleneck blocks with conv3, \(blocks.map(String.init).joined(separator: "/")) per stage): not a ResNet-18")
        }
        if blocks.contains(where: { $0 > 2 }) {
            let name = blocks == [3, 4, 6, 3] ? "ResNet-34" : "a deeper BasicBlock ResNet"
            throw FileError(path, "\(name) keys (\(blocks.map(String.init).joined(separator: "/")) blocks per stage): not a ResNet-18 (2/2/2/2)")
        }
    }

    /// In a pre-activation (v2) block bn1 normalises the block's input, so at a stage's first block it has the
    /// input's channels, not conv1's outputs.
    static func rejectPreActivation(_ state: StateDict, path: String) throws {
        for stage in 2...4 {
            let name = "layer\(stage).0"
            guard let bn = state["\(name).bn1.weight"], let conv = state["\(name).conv1.weight"], conv.shape.count == 4 else { continue }
            if bn.shape == [conv.shape[1]] && conv.shape[1] != conv.shape[0] {
                throw FileError(path, "not torchvision's ResNet-18: pre-activation blocks (\(name).bn1 normalises the block's \(conv.shape[1]) input "
                                    + "channels, not conv1's \(conv.shape[0]) outputs: BatchNorm and ReLU come before each convolution, as in ResNet v2)")
            }
        }
    }
}
