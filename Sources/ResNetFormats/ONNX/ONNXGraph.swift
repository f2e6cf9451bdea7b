import Foundation
import ONNXProto
import ResNetSupport

/// An ONNX model unpacked into Swift values: the parts the importer reads, every tensor decoded to float32.
/// Decoding checks each tensor's declared size against the bytes that hold it (inline or external) before
/// allocating, so a lying file can neither crash the reader nor make it allocate more than the data it holds.
struct ONNXGraph {
    struct Attribute {
        var int: Int?
        var float: Float?
        var string: String?
        var ints: [Int]
        var floats: [Float]
        var tensor: ONNXTensor?
    }

    struct Node {
        var opType: String
        var name: String
        var inputs: [String]
        var outputs: [String]
        var attributes: [String: Attribute]

        /// The node as messages name it: `Conv 'node_name'` (or its first output when it has no name).
        var label: String { "\(opType) '\(name.isEmpty ? (outputs.first ?? "") : name)'" }
        func int(_ key: String) -> Int? { attributes[key]?.int }
        func ints(_ key: String) -> [Int]? { attributes[key].map(\.ints) }
    }

    /// A graph input or output: its name and its dimensions (nil where symbolic or unknown).
    struct Value {
        var name: String
        var dims: [Int?]
    }

    var producer: String
    var opset: Int
    /// The model's `metadata_props`.
    var metadata: [String: String]
    var nodes: [Node]
    /// Initializers by name (Constant nodes are added by the importer as it meets them).
    var initializers: [String: ONNXTensor]
    var inputs: [Value]
    var outputs: [Value]

    /// Largest model file read into memory (the biggest real ResNet-18 exports are ~45 MB).
    static let maxModelBytes = 2 << 30

    static func read(path: String) throws -> ONNXGraph {
        let url = URL(fileURLWithPath: path)
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        guard let size = (attributes?[.size] as? NSNumber)?.intValue else { throw FileError(path, "no such file") }
        guard size > 0 else { throw FileError(path, "the file is empty") }
        guard size <= maxModelBytes else { throw FileError(path, "\(size) bytes is too large for an ONNX model read into memory") }
        guard let data = try? Data(contentsOf: url, options: .alwaysMapped) else {
            throw FileError(path, "cannot read the file: \(systemErrorMessage())")
        }
        do { try data.withUnsafeBytes { try ProtobufNesting.check($0) } } catch {
            if case ProtobufNesting.Problem.tooDeep(let limit) = error {
                throw FileError(path, "not a ResNet-18 ONNX model: its messages (subgraphs or types) nest deeper than \(limit) levels")
            }
            throw FileError(path, "not a valid ONNX model: the protobuf is truncated or corrupt")
        }
        let unpacked = data.withUnsafeBytes { raw in
            onnx__model_proto__unpack(nil, raw.count, raw.bindMemory(to: UInt8.self).baseAddress)
        }
        guard let model = unpacked else {
            throw FileError(path, "not a valid ONNX model: the protobuf is truncated or corrupt")
        }
        defer { onnx__model_proto__free_unpacked(model, nil) }
        guard let graph = model.pointee.graph else { throw FileError(path, "not a valid ONNX model: it has no graph") }
        let decoder = TensorDecoder(path: path, folder: url.deletingLastPathComponent())

        var opset = 0
        for i in 0..<model.pointee.n_opset_import {
            guard let entry = model.pointee.opset_import[i] else { continue }
            let domain = string(entry.pointee.domain)
            if domain.isEmpty || domain == "ai.onnx" { opset = Int(entry.pointee.version) }
        }
        let producer = [string(model.pointee.producer_name), string(model.pointee.producer_version)]
            .filter { !$0.isEmpty }.joined(separator: " ")

        var metadata: [String: String] = [:]
        for i in 0..<model.pointee.n_metadata_props {
            guard let entry = model.pointee.metadata_props[i]?.pointee else { continue }
            metadata[string(entry.key)] = string(entry.value)
        }

        let g = graph.pointee
        var initializers: [String: ONNXTensor] = [:]
        for i in 0..<g.n_initializer {
            guard let tensor = g.initializer[i] else { continue }
            let name = string(tensor.pointee.name)
            initializers[name] = try decoder.decode(tensor, name: name)
        }
        var nodes: [Node] = []
        for i in 0..<g.n_node {
            guard let node = g.node[i] else { continue }
            let n = node.pointee
            var attributes: [String: Attribute] = [:]
            for a in 0..<n.n_attribute {
                guard let attr = n.attribute[a]?.pointee else { continue }
                let name = string(attr.name)
                attributes[name] = Attribute(
                    int: attr.has_i != 0 ? Int(attr.i) : nil,
                    float: attr.has_f != 0 ? attr.f : nil,
                    string: attr.has_s != 0 ? String(decoding: UnsafeRawBufferPointer(start: attr.s.data, count: attr.s.len), as: UTF8.self) : nil,
                    ints: (0..<attr.n_ints).map { Int(attr.ints[$0]) },
                    floats: (0..<attr.n_floats).map { attr.floats[$0] },
                    tensor: try attr.t.map { try decoder.decode($0, name: "\(string(n.name)).\(name)") })
            }
            nodes.append(Node(opType: string(n.op_type), name: string(n.name),
                              inputs: (0..<n.n_input).map { string(n.input[$0]) },
                              outputs: (0..<n.n_output).map { string(n.output[$0]) }, attributes: attributes))
        }
        return ONNXGraph(producer: producer, opset: opset, metadata: metadata, nodes: nodes, initializers: initializers,
                         inputs: (0..<g.n_input).compactMap { g.input[$0].map(value) },
                         outputs: (0..<g.n_output).compactMap { g.output[$0].map(value) })
    }

    static func string(_ pointer: UnsafeMutablePointer<CChar>?) -> String { pointer.map { String(cString: $0) } ?? "" }

    static func value(_ info: UnsafeMutablePointer<Onnx__ValueInfoProto>) -> Value {
        var dims: [Int?] = []
        if let type = info.pointee.type, type.pointee.value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE,
           let shape = type.pointee.tensor_type?.pointee.shape {
            for i in 0..<shape.pointee.n_dim {
                guard let dim = shape.pointee.dim[i]?.pointee else { dims.append(nil); continue }
                dims.append(dim.value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE ? Int(dim.dim_value) : nil)
            }
        }
        return Value(name: string(info.pointee.name), dims: dims)
    }
}

/// A constant tensor of the graph, converted to float32 (integer tensors too: they only carry shapes and axes).
struct ONNXTensor {
    var dims: [Int]
    var values: [Float]
}

/// Decodes `TensorProto`s: raw little-endian bytes, typed fields, or external data beside the model.
struct TensorDecoder {
    let path: String
    let folder: URL

    /// ONNX data types read here and their sizes in bytes.
    enum DataType: Int32 {
        case float = 1, uint8 = 2, int8 = 3, int32 = 6, int64 = 7, float16 = 10, double = 11
        var size: Int {
            switch self {
            case .uint8, .int8: return 1
            case .float16: return 2
            case .float, .int32: return 4
            case .int64, .double: return 8
            }
        }
    }

    func decode(_ tensor: UnsafeMutablePointer<Onnx__TensorProto>, name: String) throws -> ONNXTensor {
        let t = tensor.pointee
        guard let type = DataType(rawValue: t.data_type) else {
            throw FileError(path, "tensor '\(name)': unsupported data type \(t.data_type)")
        }
        var dims: [Int] = [], count = 1
        for i in 0..<t.n_dims {
            let d = t.dims[i]
            guard d >= 0, d <= Int64(Int32.max) else { throw FileError(path, "tensor '\(name)': invalid dimension \(d)") }
            let (product, overflow) = count.multipliedReportingOverflow(by: Int(d))
            guard !overflow, product <= Int(Int32.max) else { throw FileError(path, "tensor '\(name)': absurd size \(describe(dims: t))") }
            dims.append(Int(d))
            count = product
        }
        let shape = describe(dims: t)
        if t.has_data_location != 0 && t.data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL {
            let bytes = try externalData(t, name: name, needed: count * type.size)
            return ONNXTensor(dims: dims, values: bytes.withUnsafeBytes { convert($0, type, count) })
        }
        if t.has_raw_data != 0 {
            guard t.raw_data.len == count * type.size else {
                throw FileError(path, "tensor '\(name)': shape \(shape) of \(type) needs \(count * type.size) bytes, the file holds \(t.raw_data.len)")
            }
            return ONNXTensor(dims: dims, values: convert(UnsafeRawBufferPointer(start: t.raw_data.data, count: t.raw_data.len), type, count))
        }
        func typed<T>(_ n: Int, _ field: UnsafeMutablePointer<T>?, _ map: (T) -> Float) throws -> [Float] {
            guard n == count else {
                throw FileError(path, "tensor '\(name)': shape \(shape) needs \(count) values, the file holds \(n)")
            }
            guard let field else { return [] }
            return (0..<n).map { map(field[$0]) }
        }
        switch type {
        case .float: return ONNXTensor(dims: dims, values: try typed(t.n_float_data, t.float_data) { $0 })
        case .double: return ONNXTensor(dims: dims, values: try typed(t.n_double_data, t.double_data) { Float($0) })
        case .int64: return ONNXTensor(dims: dims, values: try typed(t.n_int64_data, t.int64_data) { Float($0) })
        // float16 bits, int8, uint8 and int32 all travel in int32_data.
        case .float16: return ONNXTensor(dims: dims, values: try typed(t.n_int32_data, t.int32_data) { halfToFloat(UInt16(truncatingIfNeeded: $0)) })
        case .int32, .int8, .uint8: return ONNXTensor(dims: dims, values: try typed(t.n_int32_data, t.int32_data) { Float($0) })
        }
    }

    func describe(dims t: Onnx__TensorProto) -> String { "[" + (0..<t.n_dims).map { String(t.dims[$0]) }.joined(separator: ", ") + "]" }

    /// Reads `needed` bytes of external data (`location`, `offset`, `length`), refusing any location that
    /// leaves the model's folder.
    func externalData(_ t: Onnx__TensorProto, name: String, needed: Int) throws -> Data {
        var keys: [String: String] = [:]
        for i in 0..<t.n_external_data {
            guard let entry = t.external_data[i]?.pointee else { continue }
            keys[ONNXGraph.string(entry.key)] = ONNXGraph.string(entry.value)
        }
        guard let location = keys["location"], !location.isEmpty else {
            throw FileError(path, "tensor '\(name)': external data without a location")
        }
        let components = location.split(separator: "/", omittingEmptySubsequences: false)
        guard !location.hasPrefix("/"), !location.contains("\\"), !components.contains(where: { $0 == ".." }) else {
            throw FileError(path, "tensor '\(name)': external data location '\(location)' is outside the model's folder")
        }
        let file = folder.appendingPathComponent(location)
        // A symbolic link may still point elsewhere: compare resolved paths.
        let resolvedFolder = folder.resolvingSymlinksInPath().path
        let resolvedFile = file.resolvingSymlinksInPath().path
        guard resolvedFile.hasPrefix(resolvedFolder.hasSuffix("/") ? resolvedFolder : resolvedFolder + "/") else {
            throw FileError(path, "tensor '\(name)': external data location '\(location)' is outside the model's folder")
        }
        guard let offset = Int(keys["offset"] ?? "0"), offset >= 0 else {
            throw FileError(path, "tensor '\(name)': invalid external data offset '\(keys["offset"] ?? "")'")
        }
        let attributes = try? FileManager.default.attributesOfItem(atPath: file.path)
        guard let size = (attributes?[.size] as? NSNumber)?.intValue else {
            throw FileError(path, "tensor '\(name)': external data file '\(location)' is missing")
        }
        let length = keys["length"].flatMap { Int($0) } ?? (size - offset)
        guard length == needed else {
            throw FileError(path, "tensor '\(name)': needs \(needed) bytes, external data gives length \(length)")
        }
        guard offset <= size, size - offset >= length else {
            throw FileError(path, "tensor '\(name)': external data file '\(location)' has \(size) bytes, too short for \(length) bytes at offset \(offset)")
        }
        guard let handle = FileHandle(forReadingAtPath: file.path) else {
            throw FileError(path, "tensor '\(name)': cannot open external data file '\(location)': \(systemErrorMessage())")
        }
        defer { try? handle.close() }
        do {
            try handle.seek(toOffset: UInt64(offset))
            let bytes = try handle.read(upToCount: length) ?? Data()
            guard bytes.count == length else { throw FileError(path, "tensor '\(name)': external data file '\(location)' ended early") }
            return bytes
        } catch let error as FileError {
            throw error
        } catch {
            throw FileError(path, "tensor '\(name)': cannot read external data file '\(location)': \(error.localizedDescription)")
        }
    }

    func convert(_ raw: UnsafeRawBufferPointer, _ type: DataType, _ count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { out, initialized in
            for i in 0..<count {
                switch type {
                case .float: out[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                case .double: out[i] = Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))))
                case .float16: out[i] = halfToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                case .int64: out[i] = Float(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)))
                case .int32: out[i] = Float(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)))
                case .int8: out[i] = Float(raw.load(fromByteOffset: i, as: Int8.self))
                case .uint8: out[i] = Float(raw.load(fromByteOffset: i, as: UInt8.self))
                }
            }
            initialized = count
        }
    }
}
