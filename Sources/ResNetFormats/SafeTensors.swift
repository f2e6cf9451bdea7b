import Foundation
import ResNetSupport

/// The safetensors container: 8-byte little-endian header length N, N bytes of JSON describing each
/// tensor (`dtype`, `shape`, `data_offsets` relative to the data section) plus `__metadata__`, then data.
/// Reading validates every offset and size against the file before touching data, so a lying header
/// can neither crash the reader nor make it allocate more than the file holds.
public enum SafeTensors {
    /// One stored tensor, converted to float32 (integers and other float widths are converted).
    public struct Entry: Equatable {
        public var shape: [Int]
        public var data: [Float]
        public var dtype: String
    }

    /// Largest header accepted (real headers are a few hundred KB at most).
    static let maxHeaderBytes = 100 << 20

    static let elementSizes: [String: Int] = ["F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4,
                                               "I16": 2, "I8": 1, "U8": 1, "BOOL": 1]

    /// Reads every tensor and the metadata. Errors name the file and the offending tensor.
    public static func read(path: String) throws -> (tensors: [String: Entry], metadata: [String: String]) {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) else {
            throw FileError(path, "cannot read the file: \(systemErrorMessage())")
        }
        return try parse(data, path: path)
    }

    public static func parse(_ data: Data, path: String) throws -> (tensors: [String: Entry], metadata: [String: String]) {
        guard data.count >= 8 else { throw FileError(path, "not a safetensors file: only \(data.count) bytes") }
        let headerLength = data.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard headerLength <= UInt64(min(maxHeaderBytes, data.count - 8)) else {
            throw FileError(path, "not a safetensors file: header length \(headerLength) exceeds the file size \(data.count)")
        }
        let headerEnd = 8 + Int(headerLength)
        guard let object = try? JSONSerialization.jsonObject(with: data.subdata(in: 8..<headerEnd)),
              let header = object as? [String: Any] else {
            throw FileError(path, "not a safetensors file: the header is not a JSON object")
        }
        var metadata: [String: String] = [:]
        if let meta = header["__metadata__"] {
            guard let dict = meta as? [String: Any] else { throw FileError(path, "__metadata__ is not an object") }
            for (key, value) in dict {
                guard let string = value as? String else { throw FileError(path, "__metadata__.\(key) is not a string") }
                metadata[key] = string
            }
        }
        let dataSize = data.count - headerEnd
        var tensors: [String: Entry] = [:]
        var pending: [(name: String, dtype: String, shape: [Int], count: Int, begin: Int, end: Int)] = []
        for (name, value) in header where name != "__metadata__" {
            guard let info = value as? [String: Any], let dtype = info["dtype"] as? String,
                  let shapeAny = info["shape"] as? [Any], let offsetsAny = info["data_offsets"] as? [Any],
                  offsetsAny.count == 2 else {
                throw FileError(path, "tensor \(name): malformed entry (needs dtype, shape, data_offsets)")
            }
            guard let size = elementSizes[dtype] else { throw FileError(path, "tensor \(name): unsupported dtype \(dtype)") }
            let shape = try shapeAny.map { item -> Int in
                guard let n = exactInt(item), n >= 0, n <= Int(Int32.max) else {
                    throw FileError(path, "tensor \(name): invalid shape \(shapeAny)")
                }
                return n
            }
            guard let begin = exactInt(offsetsAny[0]), let end = exactInt(offsetsAny[1]),
                  begin >= 0, end >= begin, end <= dataSize else {
                throw FileError(path, "tensor \(name): data_offsets \(offsetsAny) outside the \(dataSize)-byte data section")
            }
            var count = 1
            for n in shape {
                let (product, overflow) = count.multipliedReportingOverflow(by: n)
                guard !overflow, product <= dataSize else {
                    throw FileError(path, "tensor \(name): shape \(describeShape(shape)) is larger than the file")
                }
                count = product
            }
            guard count * size == end - begin else {
                throw FileError(path, "tensor \(name): shape \(describeShape(shape)) of \(dtype) needs \(count * size) bytes, data_offsets give \(end - begin)")
            }
            pending.append((name, dtype, shape, count, begin, end))
        }
        // Tensors may not share bytes (the format forbids it, and shared ranges would let a small file expand
        // into many copies of its largest tensor): checked before anything is converted.
        let ranges = pending.filter { $0.end > $0.begin }.sorted { ($0.begin, $0.name) < ($1.begin, $1.name) }
        for (previous, next) in zip(ranges, ranges.dropFirst()) where previous.end > next.begin {
            throw FileError(path, "tensors \(previous.name) and \(next.name) overlap (data_offsets [\(previous.begin), \(previous.end)] and [\(next.begin), \(next.end)])")
        }
        for t in pending {
            let values = data.withUnsafeBytes { raw in
                convert(UnsafeRawBufferPointer(rebasing: raw[(headerEnd + t.begin)..<(headerEnd + t.end)]), dtype: t.dtype, count: t.count)
            }
            tensors[t.name] = Entry(shape: t.shape, data: values, dtype: t.dtype)
        }
        return (tensors, metadata)
    }

    static func describeShape(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }

    /// A JSON number that is an exact integer (JSONSerialization gives NSNumber; fractions are rejected).
    static func exactInt(_ value: Any) -> Int? {
        guard let number = value as? NSNumber else { return nil }
        let double = number.doubleValue
        guard double.isFinite, double == double.rounded(), abs(double) < 9.0e15 else { return nil }
        return Int(double)
    }

    static func convert(_ raw: UnsafeRawBufferPointer, dtype: String, count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { out, initialized in
            for i in 0..<count {
                switch dtype {
                case "F32": out[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                case "F64": out[i] = Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))))
                case "F16": out[i] = halfToFloat(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                case "BF16": out[i] = Float(bitPattern: UInt32(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16)
                case "I64": out[i] = Float(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)))
                case "I32": out[i] = Float(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)))
                case "I16": out[i] = Float(Int16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)))
                case "I8": out[i] = Float(raw.load(fromByteOffset: i, as: Int8.self))
                default: out[i] = Float(raw.load(fromByteOffset: i, as: UInt8.self))
                }
            }
            initialized = count
        }
    }

    /// Writes tensors (F32, or I64 for the names in `integerNames`) and metadata, atomically.
    public static func write(path: String, tensors: [(name: String, shape: [Int], data: [Float])],
                             integerNames: Set<String> = [], metadata: [String: String], overwrite: Bool = true) throws {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for t in tensors {
            let size = integerNames.contains(t.name) ? 8 : 4
            header[t.name] = ["dtype": size == 8 ? "I64" : "F32", "shape": t.shape,
                              "data_offsets": [offset, offset + t.data.count * size]] as [String: Any]
            offset += t.data.count * size
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        json.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - json.count % 8) % 8))
        try AtomicFile.write(to: path, overwrite: overwrite) { handle in
            var prefix = Data(count: 8)
            prefix.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(json.count).littleEndian, as: UInt64.self) }
            try handle.write(contentsOf: prefix + json)
            for t in tensors {
                if integerNames.contains(t.name) {
                    let ints = t.data.map { Int64($0).littleEndian }
                    try ints.withUnsafeBytes { try handle.write(contentsOf: Data($0)) }
                } else {
                    // Little-endian hosts only (x86-64, arm64): float bits go out as they are.
                    try t.data.withUnsafeBytes { try handle.write(contentsOf: Data($0)) }
                }
            }
        }
    }
}

/// IEEE half → float.
func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h >> 15) << 31
    let exponent = Int((h >> 10) & 0x1f), mantissa = UInt32(h & 0x3ff)
    if exponent == 0 {
        let value = Float(mantissa) * Float(sign == 0 ? 1 : -1) / Float(1 << 24)
        return value
    }
    if exponent == 31 { return Float(bitPattern: sign | 0x7f80_0000 | (mantissa << 13)) }
    return Float(bitPattern: sign | UInt32(exponent - 15 + 127) << 23 | (mantissa << 13))
}
