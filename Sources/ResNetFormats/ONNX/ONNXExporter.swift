import Foundation
import ONNXProto
import ResNetModel
import ResNetSupport

/// Writes a checkpoint as a standard eval-mode ONNX model, the way PyTorch's exporter does: BatchNorm folded
/// into Conv (with bias), Relu, MaxPool, Add, GlobalAveragePool, Flatten, Gemm (the MLP head's BatchNorm1d
/// folded into its Gemms). Input `input` [batch, 3, height, width] (batch and sides dynamic), output `logits`.
public enum ONNXExporter {
    public static let supportedOpsets = 9...21
    public static let defaultOpset = 17

    public static func export(_ checkpoint: Checkpoint, to path: String, opset: Int = defaultOpset) throws {
        guard supportedOpsets.contains(opset) else {
            throw FileError(path, "opset \(opset) is not supported (use \(supportedOpsets.lowerBound)…\(supportedOpsets.upperBound))")
        }
        let architecture = checkpoint.architecture
        do { try architecture.validate(checkpoint.state) } catch let error as StateDictError {
            throw FileError(path, "the checkpoint does not fit its architecture: \(error)")
        }
        let builder = ONNXModelBuilder()
        builder.build(checkpoint, opset: opset)
        try AtomicFile.write(builder.pack(), to: path)
    }
}

/// `metadata_props` keys written by the exporter and read back by the importer (JSON values).
enum ONNXMetadataKey {
    static let classes = "resnetkit.classes"
    static let preprocessing = "resnetkit.preprocessing"
}

/// Builds a `ModelProto` out of C structs allocated with malloc and freed together at the end.
final class ONNXModelBuilder {
    private var allocations: [UnsafeMutableRawPointer] = []
    private var nodes: [UnsafeMutablePointer<Onnx__NodeProto>?] = []
    private var initializers: [UnsafeMutablePointer<Onnx__TensorProto>?] = []
    private var model: UnsafeMutablePointer<Onnx__ModelProto>?

    deinit { allocations.forEach { free($0) } }

    private func allocate<T>(_ type: T.Type, count: Int = 1) -> UnsafeMutablePointer<T> {
        let raw = calloc(max(count, 1), MemoryLayout<T>.stride)!
        allocations.append(raw)
        return raw.bindMemory(to: T.self, capacity: max(count, 1))
    }

    private func string(_ s: String) -> UnsafeMutablePointer<CChar> {
        let p = strdup(s)!
        allocations.append(UnsafeMutableRawPointer(p))
        return p
    }

    private func array<T>(_ values: [T]) -> UnsafeMutablePointer<T> {
        let p = allocate(T.self, count: values.count)
        for (i, v) in values.enumerated() { p[i] = v }
        return p
    }

    /// The IR version that goes with an opset (onnx/helper.py's VERSION_TABLE).
    static func irVersion(opset: Int) -> Int64 {
        switch opset {
        case ...9: return 4
        case 10: return 5
        case 11: return 6
        case 12...14: return 7
        case 15...18: return 8
        case 19...20: return 9
        default: return 10
        }
    }

    private func tensor(_ name: String, _ dims: [Int], _ values: [Float]) -> String {
        let t = allocate(Onnx__TensorProto.self)
        onnx__tensor_proto__init(t)
        t.pointee.name = string(name)
        t.pointee.n_dims = dims.count
        t.pointee.dims = array(dims.map(Int64.init))
        t.pointee.has_data_type = 1
        t.pointee.data_type = 1  // FLOAT
        let bytes = allocate(UInt8.self, count: values.count * 4)
        values.withUnsafeBytes { UnsafeMutableRawPointer(bytes).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        t.pointee.has_raw_data = 1
        t.pointee.raw_data = ProtobufCBinaryData(len: values.count * 4, data: bytes)
        initializers.append(t)
        return name
    }

    private enum AttributeValue { case int(Int), ints([Int]), float(Float), string(String) }

    @discardableResult
    private func node(_ op: String, _ name: String, _ inputs: [String], _ output: String,
                      _ attributes: [(String, AttributeValue)] = []) -> String {
        let n = allocate(Onnx__NodeProto.self)
        onnx__node_proto__init(n)
        n.pointee.op_type = string(op)
        n.pointee.name = string(name)
        n.pointee.n_input = inputs.count
        n.pointee.input = array(inputs.map { Optional(string($0)) })
        n.pointee.n_output = 1
        n.pointee.output = array([Optional(string(output))])
        let attrs: [UnsafeMutablePointer<Onnx__AttributeProto>?] = attributes.map { key, value in
            let a = allocate(Onnx__AttributeProto.self)
            onnx__attribute_proto__init(a)
            a.pointee.name = string(key)
            a.pointee.has_type = 1
            switch value {
            case .int(let i):
                a.pointee.type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT
                a.pointee.has_i = 1
                a.pointee.i = Int64(i)
            case .ints(let list):
                a.pointee.type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS
                a.pointee.n_ints = list.count
                a.pointee.ints = array(list.map(Int64.init))
            case .float(let f):
                a.pointee.type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT
                a.pointee.has_f = 1
                a.pointee.f = f
            case .string(let text):
                let utf8 = Array(text.utf8)
                let bytes = allocate(UInt8.self, count: utf8.count)
                bytes.update(from: utf8, count: utf8.count)
                a.pointee.type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING
                a.pointee.has_s = 1
                a.pointee.s = ProtobufCBinaryData(len: utf8.count, data: bytes)
            }
            return a
        }
        n.pointee.n_attribute = attrs.count
        n.pointee.attribute = array(attrs)
        nodes.append(n)
        return output
    }

    /// A float tensor value: fixed sizes as numbers, dynamic ones as named parameters.
    private func valueInfo(_ name: String, _ dims: [Any]) -> UnsafeMutablePointer<Onnx__ValueInfoProto>? {
        let shape = allocate(Onnx__TensorShapeProto.self)
        onnx__tensor_shape_proto__init(shape)
        let list: [UnsafeMutablePointer<Onnx__TensorShapeProto__Dimension>?] = dims.map { d in
            let dim = allocate(Onnx__TensorShapeProto__Dimension.self)
            onnx__tensor_shape_proto__dimension__init(dim)
            if let n = d as? Int {
                dim.pointee.value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE
                dim.pointee.dim_value = Int64(n)
            } else {
                dim.pointee.value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM
                dim.pointee.dim_param = string("\(d)")
            }
            return dim
        }
        shape.pointee.n_dim = list.count
        shape.pointee.dim = array(list)
        let tensorType = allocate(Onnx__TypeProto__Tensor.self)
        onnx__type_proto__tensor__init(tensorType)
        tensorType.pointee.has_elem_type = 1
        tensorType.pointee.elem_type = 1  // FLOAT
        tensorType.pointee.shape = shape
        let type = allocate(Onnx__TypeProto.self)
        onnx__type_proto__init(type)
        type.pointee.value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE
        type.pointee.tensor_type = tensorType
        let info = allocate(Onnx__ValueInfoProto.self)
        onnx__value_info_proto__init(info)
        info.pointee.name = string(name)
        info.pointee.type = type
        return info
    }

    /// Fills the model from a validated checkpoint.
    func build(_ checkpoint: Checkpoint, opset: Int) {
        let state = checkpoint.state, config = checkpoint.config, eps = config.batchNormEpsilon
        // TensorFlow's 'same' depends on the input size, which the graph leaves open: auto_pad says it.
        func padding(_ shape: ConvShape) -> (String, AttributeValue) {
            shape.samePadding ? ("auto_pad", .string("SAME_UPPER")) : ("pads", .ints(Array(repeating: shape.padding, count: 4)))
        }
        func conv(_ input: String, _ name: String, _ bn: String, _ shape: ConvShape) -> String {
            let (folded, shift) = foldedConvolution(state, name, batchNorm: bn, shape: shape, epsilon: eps)
            let onnxName = "/" + name.replacingOccurrences(of: ".", with: "/")
            let w = tensor("\(name).weight", shape.weightShape, folded), b = tensor("\(name).bias", [shape.outChannels], shift)
            return node("Conv", "\(onnxName)/Conv", [input, w, b], "\(onnxName)/Conv_output_0",
                        [("kernel_shape", .ints([shape.kernel, shape.kernel])), ("strides", .ints([shape.stride, shape.stride])),
                         padding(shape), ("dilations", .ints([1, 1])), ("group", .int(1))])
        }
        let architecture = checkpoint.architecture
        var x = conv("input", "conv1", "bn1", architecture.stem)
        x = node("Relu", "/relu/Relu", [x], "/relu/Relu_output_0")
        x = node("MaxPool", "/maxpool/MaxPool", [x], "/maxpool/MaxPool_output_0",
                 [("kernel_shape", .ints([3, 3])), ("strides", .ints([2, 2])), padding(architecture.maxPool)])
        for block in architecture.blocks {
            let prefix = "/" + block.name.replacingOccurrences(of: ".", with: "/")
            var y = conv(x, "\(block.name).conv1", "\(block.name).bn1", block.conv1)
            y = node("Relu", "\(prefix)/relu/Relu", [y], "\(prefix)/relu/Relu_output_0")
            y = conv(y, "\(block.name).conv2", "\(block.name).bn2", block.conv2)
            let shortcut = block.downsample.map { conv(x, "\(block.name).downsample.0", "\(block.name).downsample.1", $0) } ?? x
            y = node("Add", "\(prefix)/Add", [y, shortcut], "\(prefix)/Add_output_0")
            x = node("Relu", "\(prefix)/relu_1/Relu", [y], "\(prefix)/relu_1/Relu_output_0")
        }
        x = node("GlobalAveragePool", "/avgpool/GlobalAveragePool", [x], "/avgpool/GlobalAveragePool_output_0")
        x = node("Flatten", "/Flatten", [x], "/Flatten_output_0", [("axis", .int(1))])
        // Linear layers as Gemm(x, W[out, in], b, transB = 1), an eval-mode BatchNorm1d on the input folded in.
        func gemm(_ input: String, _ name: String, inputBatchNorm bn: String?, output: String) -> String {
            let shape = state["\(name).weight"]!.shape, outputs = shape[0], inputs = shape[1]
            let (weight, bias) = foldedLinear(state, name, inputBatchNorm: bn, epsilon: eps)
            return node("Gemm", "/\(name.replacingOccurrences(of: ".", with: "/"))/Gemm",
                        [input, tensor("\(name).weight", [outputs, inputs], weight), tensor("\(name).bias", [outputs], bias)], output,
                        [("alpha", .float(1)), ("beta", .float(1)), ("transB", .int(1))])
        }
        switch config.head {
        case .linear:
            x = gemm(x, "fc", inputBatchNorm: nil, output: "logits")
        case .mlp:
            x = gemm(x, "head.fc1", inputBatchNorm: "head.bn1", output: "/head/fc1/Gemm_output_0")
            x = node("Relu", "/head/relu/Relu", [x], "/head/relu/Relu_output_0")
            x = gemm(x, "head.fc2", inputBatchNorm: "head.bn2", output: "logits")
        }

        let graph = allocate(Onnx__GraphProto.self)
        onnx__graph_proto__init(graph)
        graph.pointee.name = string("resnet18")
        graph.pointee.n_node = nodes.count
        graph.pointee.node = array(nodes)
        graph.pointee.n_initializer = initializers.count
        graph.pointee.initializer = array(initializers)
        graph.pointee.n_input = 1
        graph.pointee.input = array([valueInfo("input", ["batch", 3, "height", "width"])])
        graph.pointee.n_output = 1
        graph.pointee.output = array([valueInfo("logits", ["batch", config.numClasses])])

        let opsetID = allocate(Onnx__OperatorSetIdProto.self)
        onnx__operator_set_id_proto__init(opsetID)
        opsetID.pointee.domain = string("")
        opsetID.pointee.has_version = 1
        opsetID.pointee.version = Int64(opset)
        let m = allocate(Onnx__ModelProto.self)
        onnx__model_proto__init(m)
        m.pointee.has_ir_version = 1
        m.pointee.ir_version = Self.irVersion(opset: opset)
        m.pointee.producer_name = string("resnetkit")
        m.pointee.producer_version = string("0.1.0")
        m.pointee.n_opset_import = 1
        m.pointee.opset_import = array([Optional(opsetID)])
        m.pointee.graph = graph
        // What the model expects and what its outputs mean, for people and for a later import.
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let properties: [(String, String)] = [
            (ONNXMetadataKey.classes, String(decoding: (try? encoder.encode(checkpoint.classNames)) ?? Data(), as: UTF8.self)),
            (ONNXMetadataKey.preprocessing, String(decoding: (try? encoder.encode(checkpoint.preprocessing)) ?? Data(), as: UTF8.self)),
        ]
        let entries: [UnsafeMutablePointer<Onnx__StringStringEntryProto>?] = properties.map { key, value in
            let entry = allocate(Onnx__StringStringEntryProto.self)
            onnx__string_string_entry_proto__init(entry)
            entry.pointee.key = string(key)
            entry.pointee.value = string(value)
            return entry
        }
        m.pointee.n_metadata_props = entries.count
        m.pointee.metadata_props = array(entries)
        model = m
    }

    /// The serialized `ModelProto`.
    func pack() -> Data {
        guard let model else { return Data() }
        let size = onnx__model_proto__get_packed_size(model)
        var data = Data(count: size)
        data.withUnsafeMutableBytes { _ = onnx__model_proto__pack(model, $0.bindMemory(to: UInt8.self).baseAddress) }
        return data
    }
}
