import Foundation
import ResNetModel
import ResNetSupport
import ZIPFoundation

/// Reads `torch.save` files without running any pickle code: the zip format (torch ≥ 1.6: `<name>/data.pkl`,
/// `<name>/data/<key>`, `<name>/byteorder`) and the legacy stream (magic number, protocol, system info, the
/// object, storage keys, then each storage as an element count and its bytes). The object is rebuilt by the
/// restricted `Unpickler`; the weights are found in a state dict, a training checkpoint (`state_dict`,
/// `model_state_dict`, `model`, `net`) or a whole pickled `nn.Module` (its `_parameters` and `_buffers`).
public enum PyTorchImporter {
    static let zipSignature: [UInt8] = [0x50, 0x4b, 0x03, 0x04]
    /// The legacy format's first pickle: PROTO 2, LONG1 of 10 bytes (the magic number 0x1950a86a20f9469cfc6c).
    static let legacySignature: [UInt8] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]

    /// Whether the first bytes look like a PyTorch checkpoint (zip or legacy) or a bare pickle.
    static func recognises(_ head: [UInt8]) -> Bool {
        head.starts(with: zipSignature) || (head.count >= 2 && head[0] == 0x80 && (2...5).contains(head[1]))
    }

    /// Largest file read (ResNet-18 checkpoints with optimizer state are ~135 MB).
    static let maxFileBytes = 4 << 30

    public static func importModel(path: String, options: ImportOptions) throws -> ImportedModel {
        let found: Found
        do {
            found = try read(path: path)
        } catch let error as PickleError {
            throw FileError(path, error.problem)
        }
        guard !found.state.isEmpty else { throw FileError(path, "\(found.location), but no tensors in it") }
        let result = try StateDictLayout.normalize(found.state, path: path, epsilon: found.epsilon ?? 1e-5)
        var notes = [found.location] + result.notes
        if !found.converted.isEmpty { notes.append("\(found.converted.sorted().joined(separator: " and ")) tensors converted to float32") }
        if let eps = found.epsilon, eps != 1e-5 { notes.append("BatchNorm epsilon \(eps) from the pickled modules") }
        var checkpoint = Checkpoint(config: result.config, state: result.state)
        if let names = options.classNames {
            guard names.count == result.config.numClasses else {
                throw FileError(path, "the model has \(result.config.numClasses) classes but \(names.count) class names were given")
            }
            checkpoint.classNames = names
        }
        return ImportedModel(checkpoint: checkpoint, sourceFormat: found.format, producer: nil, batchNormFolded: false, notes: notes)
    }

    struct Found {
        var state: StateDict
        var format: String
        /// Where in the pickle the weights were, e.g. `a training checkpoint: weights under 'model_state_dict'`.
        var location: String
        var converted: Set<String>
        var epsilon: Float?
    }

    static func read(path: String) throws -> Found {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        guard let size = (attributes?[.size] as? NSNumber)?.intValue else { throw FileError(path, "no such file") }
        guard size > 0 else { throw FileError(path, "the file is empty") }
        guard size <= maxFileBytes else { throw FileError(path, "\(size) bytes is too large for a ResNet-18 checkpoint") }
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) else {
            throw FileError(path, "cannot read the file: \(systemErrorMessage())")
        }
        if data.starts(with: zipSignature) { return try readZip(path: path, fileSize: size) }
        if data.count > 262, data[257..<262].elementsEqual("ustar".utf8) {
            throw FileError(path, "a tar archive (the format of PyTorch before 0.4?): not supported; load and re-save it with a recent torch.save")
        }
        return try data.withUnsafeBytes { try readLegacy($0, path: path) }
    }

    // MARK: The zip format

    static func readZip(path: String, fileSize: Int) throws -> Found {
        try ZipCheck.check(path: path)
        let archive: Archive
        do { archive = try Archive(url: URL(fileURLWithPath: path), accessMode: .read) } catch {
            throw FileError(path, "a zip file that cannot be read (truncated or damaged): \(error)")
        }
        var entries: [String: Entry] = [:]
        var count = 0
        for entry in archive {
            count += 1
            guard count <= 100_000 else { throw FileError(path, "the zip holds more than 100000 entries") }
            entries[entry.path] = entry
        }
        let pickles = entries.keys.filter { $0.hasSuffix("/data.pkl") && $0.split(separator: "/").count == 2 }.sorted()
        guard let pickle = pickles.first else {
            if entries.keys.contains("config.json") && entries.keys.contains(where: { $0.hasSuffix(".weights.h5") }) {
                throw FileError(path, "a Keras archive without model.weights.h5: not supported")
            }
            throw FileError(path, "a zip file without <name>/data.pkl: not a PyTorch checkpoint")
        }
        let prefix = String(pickle.dropLast("data.pkl".count))
        func contents(_ name: String, expected: Int? = nil) throws -> Data {
            guard let entry = entries[name] else { throw FileError(path, "the checkpoint has no entry \(name)") }
            let declared = entry.uncompressedSize
            // Stored entries (what torch.save writes) cannot hold more than the file; compressed ones are bounded too.
            let limit = UInt64(entry.isCompressed ? min(maxFileBytes, fileSize.multipliedReportingOverflow(by: 64).overflow ? maxFileBytes : fileSize * 64) : fileSize)
            guard declared <= limit else { throw FileError(path, "entry \(name) declares \(declared) bytes, more than the file can hold") }
            if let expected, UInt64(expected) > declared {
                throw FileError(path, "entry \(name) holds \(declared) bytes, its storage needs \(expected)")
            }
            var out = Data()
            out.reserveCapacity(Int(declared))
            do {
                let checksum = try archive.extract(entry, skipCRC32: false) { chunk in
                    guard out.count + chunk.count <= Int(declared) else { throw PickleError("entry \(name) holds more than it declares") }
                    out.append(chunk)
                }
                guard checksum == entry.checksum else { throw PickleError("entry \(name) is damaged (its CRC-32 does not match)") }
            } catch let error as PickleError {
                throw FileError(path, error.problem)
            } catch {
                throw FileError(path, "entry \(name) cannot be read (truncated or damaged): \(error)")
            }
            guard out.count == Int(declared) else { throw FileError(path, "entry \(name) is truncated") }
            return out
        }
        var bigEndian = false
        if entries["\(prefix)byteorder"] != nil {
            let order = String(decoding: try contents("\(prefix)byteorder"), as: UTF8.self)
            guard ["little", "big"].contains(order) else { throw FileError(path, "byteorder '\(order.prefix(20))' is neither little nor big") }
            bigEndian = order == "big"
        }
        let pickleData = try contents(pickle)
        var root = PickleValue.none
        let unpickler = try pickleData.withUnsafeBytes { raw -> Unpickler in
            let u = Unpickler(raw)
            root = try u.load()
            return u
        }
        var storageBytes: [Int: Data] = [:]
        return try collect(unpickler, root: root, path: path, format: "PyTorch (torch.save zip format)", bigEndian: bigEndian) { index in
            if let cached = storageBytes[index] { return cached }
            let storage = unpickler.storage(index)
            let (bytes, overflow) = storage.count.multipliedReportingOverflow(by: storage.dtype.size)
            guard !overflow, bytes <= fileSize else {
                throw FileError(path, "storage \(storage.key) claims \(storage.count) elements, more than the file holds")
            }
            let data = try contents("\(prefix)data/\(storage.key)", expected: bytes)
            storageBytes[index] = data
            return data
        }
    }

    // MARK: The legacy format

    static func readLegacy(_ raw: UnsafeRawBufferPointer, path: String) throws -> Found {
        let unpickler = Unpickler(raw)
        let first = try unpickler.load()
        var bigEndian = false
        var root = first
        if case .bigInt(let magic) = first {
            guard magic == Array(legacySignature[4...]) else { throw FileError(path, "a pickle whose first value is not PyTorch's magic number") }
            guard try unpickler.load() == .int(1001) else { throw FileError(path, "PyTorch legacy format of an unknown protocol version") }
            let sysInfo = try unpickler.load()
            if case .bool(let little)? = unpickler.lookup(sysInfo, "little_endian") { bigEndian = !little }
            root = try unpickler.load()
            let keysValue = try unpickler.load()
            guard let keys = unpickler.list(keysValue)?.compactMap({ $0.string }) else {
                throw FileError(path, "the legacy checkpoint's list of storage keys is missing or malformed")
            }
            // After the pickles: per storage (in the order of the keys) an int64 element count, then its bytes.
            var offsets: [String: (start: Int, count: Int)] = [:]
            var position = unpickler.position
            var dtypes: [String: TensorDType] = [:]
            for i in 0..<unpickler.storages.count { dtypes[unpickler.storage(i).key] = unpickler.storage(i).dtype }
            for key in keys {
                guard let dtype = dtypes[key] else { throw FileError(path, "storage key \(key) is listed but no tensor uses it") }
                guard raw.count - position >= 8 else { throw FileError(path, "the file is truncated: storage \(key) is missing") }
                let count = Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: position, as: Int64.self)))
                position += 8
                let (bytes, overflow) = count.multipliedReportingOverflow(by: dtype.size)
                guard count >= 0, !overflow, bytes <= raw.count - position else {
                    throw FileError(path, "the file is truncated: storage \(key) needs \(count) elements of \(dtype.size) bytes")
                }
                offsets[key] = (position, count)
                position += bytes
            }
            return try collect(unpickler, root: root, path: path, format: "PyTorch (legacy torch.save format)", bigEndian: bigEndian) { index in
                let storage = unpickler.storage(index)
                guard let (start, count) = offsets[storage.key].map({ ($0.start, $0.count) }) else { throw FileError(path, "storage \(storage.key) has no data in the file") }
                guard count >= storage.count else { throw FileError(path, "storage \(storage.key) holds \(count) elements, \(storage.count) declared") }
                return Data(UnsafeRawBufferPointer(rebasing: raw[start..<(start + count * storage.dtype.size)]))
            }
        }
        // A bare pickle (pickle.dump of a dict, …): no storages to read.
        return try collect(unpickler, root: root, path: path, format: "pickle", bigEndian: false) { _ in
            throw FileError(path, "a plain pickle holds no PyTorch storages")
        }
    }
}
