import Foundation
import ResNetModel
import ResNetSupport

extension PyTorchImporter {
    /// Keys under which training checkpoints keep the model's weights, in the order they are tried.
    static let weightKeys = ["state_dict", "model_state_dict", "model", "net", "model_state", "network"]

    /// Finds the weights in the unpickled object and reads their data (`storageData` gives a storage's bytes).
    static func collect(_ u: Unpickler, root: PickleValue, path: String, format: String, bigEndian: Bool,
                        storageData: (Int) throws -> Data) throws -> Found {
        var (tensors, location, epsilon) = try locate(u, root: root, path: path)
        var state: StateDict = [:]
        var converted: Set<String> = []
        // Views may overlap (shared storages, stride 0), but not without bound: at most twice the storages' elements.
        var storagesUsed: Set<Int> = [], storageElements = 0, elements = 0
        for (name, index) in tensors {
            let tensor = u.tensor(index)
            let storage = u.storage(tensor.storage)
            if storagesUsed.insert(tensor.storage).inserted { storageElements = storageElements.addingReportingOverflow(storage.count).partialValue }
            let data = try storageData(tensor.storage)
            let values = try materialize(tensor, storage, data, bigEndian: bigEndian, name: name, path: path)
            elements += values.count
            guard elements <= 2 * storageElements + (1 << 24) else {
                throw FileError(path, "the tensors' views add up to far more values than their storages hold")
            }
            state[name] = values
            if storage.dtype.isFloat && storage.dtype != .float32 { converted.insert(storage.dtype.rawValue) }
        }
        if bigEndian { location += " (big-endian data)" }
        return Found(state: state, format: format, location: location, converted: converted, epsilon: epsilon)
    }

    /// The tensors of the model and where they were found. Never recursive: a walk with its own stack and bounds.
    static func locate(_ u: Unpickler, root: PickleValue, path: String) throws -> ([(String, Int)], String, Float?) {
        var current = root
        var descended: [String] = []
        for _ in 0..<4 {
            let place = descended.isEmpty ? "" : ": weights under " + descended.map { "'\($0)'" }.joined(separator: " → ")
            if let items = u.dict(current) {
                let tensors = items.compactMap { key, value -> (String, Int)? in
                    guard let name = key.string, case .tensor(let i) = value else { return nil }
                    return (name, i)
                }
                if !tensors.isEmpty {
                    return (tensors, descended.isEmpty ? "a state_dict" : "a training checkpoint\(place)", nil)
                }
                let keys = items.compactMap { $0.0.string }
                if let key = weightKeys.first(where: { k in
                    guard let v = u.lookup(current, k) else { return false }
                    if case .dict = v { return true }
                    if case .object = v { return true }
                    return false
                }) {
                    current = u.lookup(current, key) ?? .none
                    descended.append(key)
                    continue
                }
                let shown = keys.prefix(8).joined(separator: ", ") + (keys.count > 8 ? ", …" : "")
                if keys.contains("state") && keys.contains("param_groups") {
                    throw FileError(path, "a pickled optimizer state (state, param_groups), no model weights")
                }
                if keys.contains(where: { $0.lowercased().contains("optim") }) {
                    throw FileError(path, "a training checkpoint holding only an optimizer state (keys: \(shown)), no model weights")
                }
                throw FileError(path, "no model weights: a dict with keys \(shown.isEmpty ? "(none)" : shown) (expected a state_dict, or one under state_dict, model_state_dict, model or net)")
            }
            if let object = u.object(current) {
                guard let state = object.state, u.lookup(state, "_parameters") != nil || u.lookup(state, "_modules") != nil else {
                    throw FileError(path, "a pickled \(object.module).\(object.name) object, no model weights")
                }
                let (tensors, epsilon) = try moduleTensors(u, root: current, path: path)
                return (tensors, "a whole pickled module (\(object.module).\(object.name))\(descended.isEmpty ? "" : " under " + descended.map { "'\($0)'" }.joined(separator: " → ")): its parameters and buffers", epsilon)
            }
            let kind: String
            switch current {
            case .list(let i): kind = "a list of \(u.lists[i].count) items"
            case .tuple(let i): kind = "a tuple of \(u.tuples[i].count) items"
            case .tensor: kind = "a single tensor"
            case .string: kind = "a string"
            case .int, .bigInt, .float, .bool: kind = "a number"
            case .none: kind = "None"
            default: kind = "a value of another kind"
            }
            throw FileError(path, "no model weights: the pickle holds \(kind)")
        }
        throw FileError(path, "no model weights: nested too deeply under \(descended.joined(separator: " → "))")
    }

    /// `_parameters` and persistent `_buffers` of an inert `nn.Module` and of its `_modules`, named by path, and
    /// the BatchNorm epsilon when the modules agree on one.
    static func moduleTensors(_ u: Unpickler, root: PickleValue, path: String) throws -> ([(String, Int)], Float?) {
        var out: [(String, Int)] = []
        var epsilons: Set<Float> = []
        var stack: [(PickleValue, String)] = [(root, "")]
        var visited: Set<Int> = [], visitedStates: Set<PickleValue> = []
        while let (value, prefix) = stack.popLast() {
            guard case .object(let index) = value, visited.insert(index).inserted, let state = u.object(value)?.state,
                  visitedStates.insert(state).inserted else { continue }
            guard visited.count <= 100_000 else { throw FileError(path, "more than 100000 pickled modules") }
            var nonPersistent: Set<String> = []
            if let set = u.lookup(state, "_non_persistent_buffers_set").flatMap({ u.object($0) }),
               let first = u.tuple(set.arguments)?.first, let names = u.list(first) {
                nonPersistent = Set(names.compactMap(\.string))
            }
            for (field, skip) in [("_parameters", Set<String>()), ("_buffers", nonPersistent)] {
                for (key, tensor) in u.lookup(state, field).flatMap({ u.dict($0) }) ?? [] {
                    guard let name = key.string, !skip.contains(name), case .tensor(let t) = tensor else { continue }
                    out.append(("\(prefix)\(name)", t))
                    if name == "running_mean", case .float(let eps)? = u.lookup(state, "eps") { epsilons.insert(Float(eps)) }
                }
            }
            for (key, child) in u.lookup(state, "_modules").flatMap({ u.dict($0) }) ?? [] {
                guard let name = key.string else { continue }
                stack.append((child, "\(prefix)\(name)."))
            }
        }
        return (out, epsilons.count == 1 ? epsilons.first : nil)
    }

    /// A tensor's values from its storage: checks the view (offset, sizes, strides) lies inside the storage
    /// and the storage inside its data before reading, with overflow-checked arithmetic throughout.
    static func materialize(_ t: PickleTensor, _ storage: PickleStorage, _ data: Data, bigEndian: Bool,
                            name: String, path: String) throws -> Tensor {
        func fail(_ problem: String) -> FileError { FileError(path, "tensor \(name): \(problem)") }
        var count = 1
        for n in t.shape {
            let (product, overflow) = count.multipliedReportingOverflow(by: n)
            guard !overflow, product <= max(storage.count, 1 << 24) else { throw fail("shape \(describe(shape: t.shape)) is larger than its storage") }
            count = product
        }
        if count == 0 { return Tensor(shape: t.shape, data: []) }
        var last = t.offset
        for (n, s) in zip(t.shape, t.strides) {
            let (step, o1) = (n - 1).multipliedReportingOverflow(by: s)
            let (sum, o2) = last.addingReportingOverflow(step)
            guard !o1, !o2 else { throw fail("its strides run outside the storage") }
            last = sum
        }
        guard last < storage.count else {
            throw fail("the view (offset \(t.offset), shape \(describe(shape: t.shape)), strides \(t.strides)) runs past its storage of \(storage.count) elements")
        }
        let (bytes, overflow) = storage.count.multipliedReportingOverflow(by: storage.dtype.size)
        guard !overflow, data.count >= bytes else { throw fail("its storage holds fewer bytes than declared") }
        var values = [Float](repeating: 0, count: count)
        let rank = t.shape.count
        data.withUnsafeBytes { raw in
            var index = [Int](repeating: 0, count: rank)
            var element = t.offset
            for i in 0..<count {
                values[i] = storage.dtype.load(raw, element, bigEndian: bigEndian)
                // Odometer over the dimensions, last fastest.
                var d = rank - 1
                while d >= 0 {
                    index[d] += 1
                    element += t.strides[d]
                    if index[d] < t.shape[d] { break }
                    element -= t.strides[d] * t.shape[d]
                    index[d] = 0
                    d -= 1
                }
            }
        }
        return Tensor(shape: t.shape, data: values)
    }
}
