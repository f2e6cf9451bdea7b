import CHDF5
import Foundation
import ResNetModel
import ResNetSupport

/// Keras' HDF5 weights (`save_weights` / `model.save` to .h5, Keras 2 and Keras 3's legacy format):
/// a `layer_names` attribute listing the layers in order, a group per layer with a `weight_names`
/// attribute, datasets at `<layer>/<weight name>` (`conv2d_3/conv2d_3/kernel:0`).
///
/// Keras names layers freely (`conv2d_17`, `res2a_branch1`), so the mapping onto torchvision's names goes by
/// structure: Conv2D layers in forward order (the 7x7 stem, then the 3x3 convolutions block by block, the
/// 1x1 ones being the downsample projections), each BatchNormalization paired with the convolution feeding it
/// in the `model_config` graph (or, without one, with the convolution at the same position), Dense layers as
/// the classifier.
enum KerasWeights {
    /// A layer's weights, keyed by variable kind (`kernel`, `bias`, `gamma`, `moving_mean`, …).
    struct Layer {
        var name: String
        var variables: [String: HDF5File.Dataset] = [:]
        var kernelRank: Int? { variables["kernel"]?.shape.count }
    }

    static let kerasDefaultEpsilon: Float = 1e-3

    /// The group holding Keras layers (`model_weights`, or the root), or nil for a non-Keras file.
    static func weightsGroup(in file: HDF5File) throws -> hid_t? {
        if file.hasGroup("model_weights", in: file.id) {
            let group = try file.openGroup("model_weights", in: file.id)
            if hasLayerNames(group) { return group }
            H5Gclose(group)
        }
        return hasLayerNames(file.id) ? try file.openGroup("/", in: file.id) : nil
    }

    static func hasLayerNames(_ group: hid_t) -> Bool {
        defer { H5Eclear2(hid_t(H5E_DEFAULT)) }
        return H5Aexists(group, "layer_names") > 0 || H5Aexists(group, "layer_names0") > 0
    }

    static func read(_ file: HDF5File, weightsGroup group: hid_t) throws -> ImportedModel {
        try read(file, group, layers: try readLayers(file, group), modelConfig: try readModelConfig(file),
                 format: "HDF5 (Keras)", producer: try producer(file, group))
    }

    /// Maps Keras layers (in the model's order within each kind) onto ResNet-18; `modelConfig` (the model's JSON
    /// config, if any) pairs BatchNorms with their convolutions and gives the epsilon. Keras 3 files come here too.
    static func read(_ file: HDF5File, _ group: hid_t, layers: [Layer], modelConfig: Any?, format: String,
                     producer: String?, notes extraNotes: [String] = []) throws -> ImportedModel {
        let path = file.path
        var convs: [Layer] = [], norms: [Layer] = [], denses: [Layer] = []
        for layer in layers {
            if layer.variables["moving_mean"] != nil && layer.variables["moving_variance"] != nil {
                norms.append(layer)
            } else if layer.kernelRank == 4 {
                convs.append(layer)
            } else if layer.kernelRank == 2 {
                denses.append(layer)
            } else {
                throw FileError(path, "Keras layer '\(layer.name)' has weights \(layer.variables.keys.sorted()): not Conv2D, Dense or BatchNormalization, which is all a ResNet-18 holds")
            }
        }
        guard let stem = convs.first, let stemKernel = stem.variables["kernel"], stemKernel.shape[0] == 7,
              stemKernel.shape[1] == 7, stemKernel.shape[2] == 3, stemKernel.shape[3] > 0 else {
            throw FileError(path, "no 7x7 Conv2D stem with 3 input channels as the first convolution: not a ResNet-18")
        }
        let config = try headConfig(path: path, width: stemKernel.shape[3], convs: convs, norms: norms, denses: denses)
        try HDF5Importer.checkTotalSize(layers.flatMap { $0.variables.values }, config: config, path: path)
        let architecture = Architecture(config)
        let named = architecture.namedConvolutions
        // Keras kernels are [kh, kw, in, out]: the kernel side tells the stem (7), block (3) and projection (1)
        // convolutions apart. These are positions in `convs`.
        let threeByThree = convs.indices.dropFirst().filter { convs[$0].variables["kernel"]?.shape[0] == 3 }
        let oneByOne = convs.indices.dropFirst().filter { convs[$0].variables["kernel"]?.shape[0] == 1 }
        let expectedThree = named.filter { $0.shape.kernel == 3 }.count, expectedOne = named.filter { $0.shape.kernel == 1 }.count
        guard threeByThree.count == expectedThree, oneByOne.count == expectedOne, convs.count == named.count else {
            throw FileError(path, "found \(convs.count) Conv2D layers (\(threeByThree.count) 3x3, \(oneByOne.count) 1x1): "
                                + "ResNet-18 has \(named.count) (the 7x7 stem, \(expectedThree) 3x3, \(expectedOne) 1x1 projections)")
        }
        var pending3 = threeByThree[...], pending1 = oneByOne[...]
        var assignment: [(torch: (conv: String, batchNorm: String), position: Int)] = [((named[0].conv, named[0].batchNorm), 0)]
        for entry in named.dropFirst() {
            let position = entry.shape.kernel == 1 ? pending1.removeFirst() : pending3.removeFirst()
            assignment.append(((entry.conv, entry.batchNorm), position))
        }

        let (normOf, pairingNote) = pairBatchNorms(convs: convs, norms: norms, graph: modelConfig.map(batchNormInputs) ?? [:])
        var state: StateDict = [:]
        var kerasNameOf: [String: String] = [:]
        var biasesFolded = 0
        for (torch, position) in assignment {
            let layer = convs[position], norm = norms[normOf[position]]
            state["\(torch.conv).weight"] = try convolutionWeight(file, group, layer)
            try addBatchNorm(file, group, norm, as: torch.batchNorm, into: &state)
            if let bias = layer.variables["bias"] {
                // conv(x) + b, then BN: the same as BN with running_mean − b.
                let values = try file.readFloats(bias, in: group)
                guard let mean = state["\(torch.batchNorm).running_mean"], mean.count == values.count else {
                    throw FileError(path, "Keras layer '\(layer.name)': bias has \(values.count) values for \(norm.name)'s channels")
                }
                state["\(torch.batchNorm).running_mean"] = Tensor(shape: mean.shape, data: zip(mean.data, values).map { $0 - $1 })
                biasesFolded += 1
            }
            kerasNameOf[torch.conv] = layer.name
            kerasNameOf[torch.batchNorm] = norm.name
        }
        switch config.head {
        case .linear:
            try addDense(file, group, denses[0], as: "fc", into: &state)
            kerasNameOf["fc"] = denses[0].name
        case .mlp:
            let used = Set(normOf)
            let headNorms = norms.indices.filter { !used.contains($0) }.map { norms[$0] }
            for (torch, layer) in zip(["head.bn1", "head.bn2"], headNorms) {
                try addBatchNorm(file, group, layer, as: torch, into: &state)
                kerasNameOf[torch] = layer.name
            }
            for (torch, layer) in zip(["head.fc1", "head.fc2"], denses) {
                try addDense(file, group, layer, as: torch, into: &state)
                kerasNameOf[torch] = layer.name
            }
        }
        do { try architecture.validate(state) } catch let error as StateDictError {
            // Name the Keras layer behind each problem: the user knows the file by those names.
            let problems = error.problems.map { problem -> String in
                let tensor = String(problem.prefix { $0 != ":" })
                let module = tensor.split(separator: ".").dropLast().joined(separator: ".")
                return kerasNameOf[module].map { "\(problem) (Keras layer '\($0)')" } ?? problem
            }
            let shown = problems.prefix(5).joined(separator: "; ") + (problems.count > 5 ? "; and \(problems.count - 5) more" : "")
            throw FileError(path, "Keras weights do not fit ResNet-18 at base width \(config.baseWidth): \(shown)")
        }

        let (epsilon, epsilonNote) = try batchNormEpsilon(modelConfig, path: path)
        var finalConfig = config
        finalConfig.batchNormEpsilon = epsilon
        let padding = try modelConfig.map { try paddingRules($0, kerasNames: kerasNameOf, architecture: architecture, path: path) }
        finalConfig.samePadding = padding?.same ?? []
        var notes = extraNotes + ["Keras layers mapped by structure, not name: \(convs.count) Conv2D in forward order (7x7 stem, 3x3 block "
                     + "convolutions, 1x1 downsample projections), \(pairingNote); "
                     + "\(denses.count) Dense as \(config.head == .linear ? "fc" : "head.fc1, head.fc2")",
                     "kernels transposed: Conv2D HWIO → OIHW, Dense (in, out) → (out, in)",
                     epsilonNote]
        if let note = padding?.note { notes.append(note) }
        if biasesFolded > 0 { notes.append("\(biasesFolded) convolution biases folded into the following BatchNorm's running_mean") }
        let converted = layers.flatMap { $0.variables.values }.filter { $0.elementSize != 4 }
        if !converted.isEmpty { notes.append("\(converted.count) float64/float16 tensors converted to float32") }
        return ImportedModel(checkpoint: Checkpoint(config: finalConfig, state: state), sourceFormat: format,
                             producer: producer, batchNormFolded: false, notes: notes)
    }

    /// Layers in file order, each with its variables; layers without weights (ReLU, Add, pooling) are skipped.
    /// A nested model appears as one layer whose weight names carry the inner layer (`conv1/kernel:0`).
    static func readLayers(_ file: HDF5File, _ group: hid_t) throws -> [Layer] {
        guard let layerNames = try file.splitStrings(attribute: "layer_names", of: group) else { return [] }
        var layers: [Layer] = []
        for layerName in layerNames {
            let layerGroup = try file.openGroup(layerName, in: group)
            defer { H5Gclose(layerGroup) }
            let weightNames = try file.splitStrings(attribute: "weight_names", of: layerGroup) ?? []
            for weightName in weightNames {
                var components = weightName.split(separator: "/").map(String.init)
                // `kernel:0` → `kernel`: the suffix is TensorFlow's output index.
                let kind = String((components.popLast() ?? "").prefix { $0 != ":" })
                let inner = components.joined(separator: "/")
                let owner = inner.isEmpty || inner == layerName ? layerName : "\(layerName)/\(inner)"
                if layers.last?.name != owner { layers.append(Layer(name: owner)) }
                var dataset = try file.dataset(weightName, in: layerGroup)
                guard dataset.isFloat else {
                    let kind = dataset.typeClass == H5T_STRING ? "text" : "a non-floating-point type"
                    throw FileError(file.path, "dataset '\(layerName)/\(weightName)' holds \(kind), expected floating-point numbers")
                }
                guard layers[layers.count - 1].variables[kind] == nil else {
                    throw FileError(file.path, "Keras layer '\(owner)' lists '\(kind)' twice")
                }
                dataset.path = "\(layerName)/\(weightName)"
                layers[layers.count - 1].variables[kind] = dataset
            }
        }
        guard !layers.isEmpty else { throw FileError(file.path, "the Keras layer_names list no layer with weights") }
        return layers
    }

    /// Linear head (one Dense) or the seed's MLP head (BatchNorm, Dense, BatchNorm, Dense after the backbone).
    static func headConfig(path: String, width: Int, convs: [Layer], norms: [Layer], denses: [Layer]) throws -> ModelConfig {
        let extraNorms = norms.count - convs.count
        switch (denses.count, extraNorms) {
        case (1, 0):
            guard let classes = denses[0].variables["kernel"]?.shape[1], classes > 0 else { break }
            return ModelConfig(numClasses: classes, head: .linear, baseWidth: width)
        case (2, 2):
            guard let hidden = denses[0].variables["kernel"]?.shape[1], let classes = denses[1].variables["kernel"]?.shape[1],
                  hidden > 0, classes > 0 else { break }
            return ModelConfig(numClasses: classes, head: .mlp, hiddenUnits: hidden, baseWidth: width)
        default: break
        }
        throw FileError(path, "found \(convs.count) Conv2D, \(norms.count) BatchNormalization and \(denses.count) Dense layers: "
                            + "expected one BatchNormalization per Conv2D and a Dense classifier (or BN, Dense, BN, Dense)")
    }

    static func convolutionWeight(_ file: HDF5File, _ group: hid_t, _ layer: Layer) throws -> Tensor {
        let dataset = layer.variables["kernel"]!
        let hwio = try file.readFloats(dataset, in: group)
        let (kh, kw, cin, cout) = (dataset.shape[0], dataset.shape[1], dataset.shape[2], dataset.shape[3])
        // [kh, kw, in, out] → [out, in, kh, kw]
        var oihw = [Float](repeating: 0, count: hwio.count)
        hwio.withUnsafeBufferPointer { src in
            oihw.withUnsafeMutableBufferPointer { dst in
                for y in 0..<kh {
                    for x in 0..<kw {
                        for i in 0..<cin {
                            let from = ((y * kw + x) * cin + i) * cout
                            for o in 0..<cout { dst[((o * cin + i) * kh + y) * kw + x] = src[from + o] }
                        }
                    }
                }
            }
        }
        return Tensor(shape: [cout, cin, kh, kw], data: oihw)
    }

    static func addDense(_ file: HDF5File, _ group: hid_t, _ layer: Layer, as prefix: String, into state: inout StateDict) throws {
        let dataset = layer.variables["kernel"]!
        let inOut = try file.readFloats(dataset, in: group)
        let (inputs, outputs) = (dataset.shape[0], dataset.shape[1])
        // [in, out] → [out, in]
        var outIn = [Float](repeating: 0, count: inOut.count)
        for i in 0..<inputs { for o in 0..<outputs { outIn[o * inputs + i] = inOut[i * outputs + o] } }
        state["\(prefix).weight"] = Tensor(shape: [outputs, inputs], data: outIn)
        if let bias = layer.variables["bias"] {
            state["\(prefix).bias"] = Tensor(shape: bias.shape, data: try file.readFloats(bias, in: group))
        } else {
            state["\(prefix).bias"] = Tensor(zeros: [outputs])  // Dense(use_bias=False)
        }
    }

    /// gamma/beta may be absent (`scale=False`, `center=False`): they are then 1 and 0.
    static func addBatchNorm(_ file: HDF5File, _ group: hid_t, _ layer: Layer, as prefix: String, into state: inout StateDict) throws {
        let mean = layer.variables["moving_mean"]!, variance = layer.variables["moving_variance"]!
        state["\(prefix).running_mean"] = Tensor(shape: mean.shape, data: try file.readFloats(mean, in: group))
        state["\(prefix).running_var"] = Tensor(shape: variance.shape, data: try file.readFloats(variance, in: group))
        let channels = mean.shape
        state["\(prefix).weight"] = try layer.variables["gamma"].map { Tensor(shape: $0.shape, data: try file.readFloats($0, in: group)) }
            ?? Tensor(repeating: 1, shape: channels)
        state["\(prefix).bias"] = try layer.variables["beta"].map { Tensor(shape: $0.shape, data: try file.readFloats($0, in: group)) }
            ?? Tensor(zeros: channels)
    }

    /// The `model_config` JSON that `model.save` stores at the root (absent for `save_weights` files).
    static func readModelConfig(_ file: HDF5File) throws -> Any? {
        guard let text = try file.strings(attribute: "model_config", of: file.id)?.first else { return nil }
        guard let json = try? JSONSerialization.jsonObject(with: Data(text.utf8)) else {
            throw FileError(file.path, "attribute 'model_config' is not valid JSON")
        }
        return json
    }

    /// Every layer description (`class_name` + `config`) in the model config, nested models included.
    static func layerDescriptions(_ node: Any) -> [[String: Any]] {
        if let object = node as? [String: Any] {
            let own = object["class_name"] is String && object["config"] is [String: Any] ? [object] : []
            return own + object.values.flatMap(layerDescriptions)
        }
        return (node as? [Any])?.flatMap(layerDescriptions) ?? []
    }

    /// BatchNormalization layer name → the layer feeding it, from the graph in the model config: Keras 2 writes
    /// `"inbound_nodes": [[["conv2d_3", 0, 0, {}]]]`, Keras 3 `... "keras_history": ["conv2d_3", 0, 0] ...`;
    /// both hold a `[name, number, ...]` array.
    static func batchNormInputs(_ config: Any) -> [String: String] {
        layerInputs(config, of: ["BatchNormalization"])
    }

    /// Layer name → the layer feeding it, for the layers of these classes (all when nil).
    static func layerInputs(_ config: Any, of classes: Set<String>? = nil) -> [String: String] {
        func firstSource(_ node: Any) -> String? {
            if let array = node as? [Any] {
                if array.count >= 2, let name = array[0] as? String, array[1] is NSNumber { return name }
                return array.lazy.compactMap(firstSource).first
            }
            if let object = node as? [String: Any] {
                return object.keys.sorted().lazy.compactMap { firstSource(object[$0]!) }.first
            }
            return nil
        }
        var inputs: [String: String] = [:]
        for layer in layerDescriptions(config) where classes?.contains(layer["class_name"] as? String ?? "") ?? true {
            guard let name = (layer["config"] as? [String: Any])?["name"] as? String ?? layer["name"] as? String,
                  let nodes = layer["inbound_nodes"], let source = firstSource(nodes) else { continue }
            inputs[name] = source
        }
        return inputs
    }

    /// For each convolution (by position), the position of its BatchNorm: from the model config's graph when it
    /// names one BatchNorm fed by every convolution, else the BatchNorm at the same position in the file's order.
    static func pairBatchNorms(convs: [Layer], norms: [Layer], graph: [String: String]) -> (pairing: [Int], note: String) {
        var normsFedBy: [String: [Int]] = [:]
        for (index, norm) in norms.enumerated() {
            if let source = graph[norm.name] { normsFedBy[source, default: []].append(index) }
        }
        let byGraph = convs.compactMap { conv in normsFedBy[conv.name].flatMap { $0.count == 1 ? $0[0] : nil } }
        if byGraph.count == convs.count && Set(byGraph).count == convs.count {
            return (byGraph, "each paired with the BatchNormalization it feeds in the model_config graph")
        }
        return (Array(convs.indices), "each paired with the BatchNormalization at the same position (no usable model_config graph)")
    }

    /// Which layers pad TensorFlow's way, from the model config: a Conv2D or MaxPooling2D with padding='same'
    /// at stride 2 (at stride 1, 'same' is PyTorch's symmetric padding). A 'valid' layer must get PyTorch's
    /// padding from a ZeroPadding2D before it (or need none); anything else computes another network.
    /// `kerasNames` maps torchvision's convolution names onto the Keras layers they were read from.
    static func paddingRules(_ config: Any, kerasNames: [String: String], architecture: Architecture,
                             path: String) throws -> (same: Set<String>, note: String?) {
        var layers: [String: (className: String, settings: [String: Any])] = [:]
        for layer in layerDescriptions(config) {
            guard let className = layer["class_name"] as? String, let settings = layer["config"] as? [String: Any],
                  let name = settings["name"] as? String ?? layer["name"] as? String else { continue }
            layers[name] = (className, settings)
        }
        let inputs = layerInputs(config)
        func ints(_ value: Any?) -> [Int] {
            if let n = value as? NSNumber { return [n.intValue] }
            return (value as? [Any])?.flatMap { ints($0) } ?? []
        }
        /// Whether the layer pads TensorFlow's way (false: PyTorch's); throws when its padding is neither.
        func rule(_ name: String, _ shape: ConvShape, what: String) throws -> Bool {
            guard let layer = layers[name] else { return false }
            let strides = ints(layer.settings["strides"])
            let stride = strides.first ?? shape.stride
            if layer.settings["padding"] as? String == "same" { return stride > 1 && shape.kernel > 1 }
            // 'valid': the padding, if any, comes from a ZeroPadding2D feeding the layer.
            var pads = [0, 0, 0, 0]
            if let source = inputs[name], let padding = layers[source], padding.className == "ZeroPadding2D" {
                let p = ints(padding.settings["padding"])
                pads = p.count == 4 ? [p[0], p[2], p[1], p[3]] : p.count == 2 ? [p[0], p[1], p[0], p[1]]
                    : p.count == 1 ? Array(repeating: p[0], count: 4) : []
            }
            guard pads == Array(repeating: shape.padding, count: 4) else {
                throw FileError(path, "Keras layer '\(name)' (\(what)) pads its input by \(pads) (top, left, bottom, right) "
                                    + "where ResNet-18 pads \(shape.padding) on every side or TensorFlow's 'same' would: not a ResNet-18 this tool computes")
            }
            return false
        }
        var same: Set<String> = []
        for (conv, _, shape) in architecture.namedConvolutions {
            if let name = kerasNames[conv], try rule(name, shape, what: conv) { same.insert(conv) }
        }
        let pools = layers.filter { $0.value.className == "MaxPooling2D" }.map(\.key)
        if pools.count == 1, try rule(pools[0], architecture.maxPool, what: "the stem's max pool") { same.insert(ModelConfig.maxPoolName) }
        guard !same.isEmpty else { return ([], nil) }
        return (same, "\(same.count) layers use padding='same' at stride 2 (\(same.sorted().prefix(3).joined(separator: ", "))"
                    + "\(same.count > 3 ? ", …" : "")): computed TensorFlow's way, the extra pixel at the bottom and right for "
                    + "even-sized inputs, at any input size")
    }

    /// The BatchNormalization epsilon from the model config, else Keras' default.
    static func batchNormEpsilon(_ config: Any?, path: String) throws -> (Float, String) {
        guard let config else {
            return (kerasDefaultEpsilon, "no model_config in the file: BatchNorm epsilon set to Keras' default 1e-3")
        }
        let epsilons = Set(layerDescriptions(config).compactMap { layer -> Double? in
            guard layer["class_name"] as? String == "BatchNormalization" else { return nil }
            return ((layer["config"] as? [String: Any])?["epsilon"] as? NSNumber)?.doubleValue
        })
        guard let epsilon = epsilons.first else {
            return (kerasDefaultEpsilon, "model_config names no BatchNormalization epsilon: Keras' default 1e-3 used")
        }
        guard epsilons.count == 1, epsilon > 0, epsilon < 1 else {
            throw FileError(path, "BatchNormalization layers use epsilons \(epsilons.sorted()): one value between 0 and 1 is supported")
        }
        return (Float(epsilon), "BatchNorm epsilon \(epsilon) from the file's model_config")
    }

    /// `keras 2.13.1 (tensorflow)` from the `keras_version` and `backend` attributes.
    static func producer(_ file: HDF5File, _ group: hid_t) throws -> String? {
        let version = try file.strings(attribute: "keras_version", of: group)?.first
            ?? file.strings(attribute: "keras_version", of: file.id)?.first
        let backend = try file.strings(attribute: "backend", of: group)?.first
            ?? file.strings(attribute: "backend", of: file.id)?.first
        guard let version else { return backend.map { "keras (\($0))" } }
        return "keras \(version)" + (backend.map { " (\($0))" } ?? "")
    }
}
