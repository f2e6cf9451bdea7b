import ResNetSupport

/// Measures how deeply an ONNX file nests its messages by walking the protobuf wire format with an explicit
/// stack, before libprotobuf-c (which recurses once per level) unpacks it: a small file of subgraphs nested
/// thousands deep would otherwise overflow the stack. Only the fields through which ONNX messages can contain
/// themselves are followed (graphs in attributes, types in types, functions, training info); every other field
/// is skipped by its wire type.
enum ProtobufNesting {
    enum Message { case model, graph, node, attribute, type, typeElement, typeMap, valueInfo, training, function }

    /// The message type of field `field` of a `message`, when it is one the walk follows.
    static func child(_ message: Message, _ field: UInt64) -> Message? {
        switch (message, field) {
        case (.model, 7): return .graph
        case (.model, 20): return .training
        case (.model, 25): return .function
        case (.graph, 1): return .node
        case (.graph, 11), (.graph, 12), (.graph, 13): return .valueInfo
        case (.node, 5): return .attribute
        case (.attribute, 6), (.attribute, 11): return .graph
        case (.attribute, 14), (.attribute, 15): return .type
        case (.valueInfo, 2): return .type
        case (.type, 4), (.type, 9): return .typeElement   // sequence_type, optional_type
        case (.type, 5): return .typeMap                    // map_type
        case (.typeElement, 1): return .type
        case (.typeMap, 2): return .type
        case (.training, 1), (.training, 2): return .graph
        case (.function, 7): return .node
        case (.function, 12): return .valueInfo
        default: return nil
        }
    }

    enum Problem: Error, Equatable { case tooDeep(Int), corrupt }

    /// Throws `.tooDeep` when messages nest deeper than `limit`, `.corrupt` when the wire format is broken.
    static func check(_ bytes: UnsafeRawBufferPointer, limit: Int = Limits.protobufDepth) throws {
        var stack: [(end: Int, message: Message)] = [(bytes.count, .model)]
        var i = 0
        func varint(_ end: Int) throws -> UInt64 {
            var value: UInt64 = 0, shift: UInt64 = 0
            while true {
                guard i < end, shift < 64 else { throw Problem.corrupt }
                let byte = bytes[i]
                i += 1
                value |= UInt64(byte & 0x7f) << shift
                if byte & 0x80 == 0 { return value }
                shift += 7
            }
        }
        while let top = stack.last {
            if i == top.end {
                stack.removeLast()
                continue
            }
            guard i < top.end else { throw Problem.corrupt }
            let key = try varint(top.end)
            switch key & 7 {
            case 0: _ = try varint(top.end)
            case 1, 5:
                let size = key & 7 == 1 ? 8 : 4
                guard top.end - i >= size else { throw Problem.corrupt }
                i += size
            case 2:
                let length = try varint(top.end)
                guard length <= UInt64(top.end - i) else { throw Problem.corrupt }
                if let message = child(top.message, key >> 3) {
                    stack.append((i + Int(length), message))
                    guard stack.count <= limit else { throw Problem.tooDeep(limit) }
                } else {
                    i += Int(length)
                }
            default: throw Problem.corrupt
            }
        }
    }
}
