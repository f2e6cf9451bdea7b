import Foundation

/// A value built by the restricted unpickler. Containers live in the unpickler's arena and are referred to by
/// index, so no Swift value nests inside another: a file cannot build a structure deep enough to overflow the
/// stack when it is walked or freed, and cycles made through the memo are harmless.
enum PickleValue: Hashable {
    case none
    case bool(Bool)
    case int(Int)
    /// An integer too wide for Int (little-endian two's complement bytes), e.g. the legacy format's magic number.
    case bigInt([UInt8])
    case float(Double)
    case string(String)
    case bytes(Int)  // index into `bytes`
    case tuple(Int), list(Int), dict(Int)
    /// A module-level name (`collections.OrderedDict`): only ever a reference, never resolved or called.
    case global(module: String, name: String)
    /// An object of a class the unpickler does not construct (an `nn.Module`, a numpy scalar…): its class, the
    /// arguments it was created with and the state BUILD gave it, all inert.
    case object(Int)
    case storage(Int)
    case tensor(Int)

    var string: String? { if case .string(let s) = self { return s } else { return nil } }
    var int: Int? {
        switch self {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }
}

/// A PyTorch storage named by a persistent id: its element type, key (the data's entry name) and element count.
struct PickleStorage {
    var dtype: TensorDType
    var key: String
    var count: Int
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view (offset, sizes, strides in elements) of a storage.
struct PickleTensor {
    var storage: Int
    var offset: Int
    var shape: [Int]
    var strides: [Int]
}

struct InertObject {
    var module: String, name: String
    var arguments: PickleValue
    var state: PickleValue?
    /// Items added by SETITEM(S) / APPEND(S) to an object of an unknown class (e.g. an OrderedDict subclass).
    var dictItems: [(PickleValue, PickleValue)] = []
}

/// Element types of PyTorch storages (`torch.FloatStorage` …) and safetensors dtypes.
enum TensorDType: String {
    case float32 = "float32", float16 = "float16", bfloat16 = "bfloat16", float64 = "float64"
    case int64 = "int64", int32 = "int32", int16 = "int16", int8 = "int8", uint8 = "uint8", bool = "bool"

    var size: Int {
        switch self {
        case .float64, .int64: return 8
        case .float32, .int32: return 4
        case .float16, .bfloat16, .int16: return 2
        case .int8, .uint8, .bool: return 1
        }
    }
    var isFloat: Bool { [.float32, .float16, .bfloat16, .float64].contains(self) }

    static let storageTypes: [String: TensorDType] = [
        "FloatStorage": .float32, "HalfStorage": .float16, "BFloat16Storage": .bfloat16, "DoubleStorage": .float64,
        "LongStorage": .int64, "IntStorage": .int32, "ShortStorage": .int16, "CharStorage": .int8,
        "ByteStorage": .uint8, "BoolStorage": .bool,
    ]

    /// Element `index` of little- (or big-) endian raw data as a Float. The caller checks the bounds.
    func load(_ raw: UnsafeRawBufferPointer, _ index: Int, bigEndian: Bool) -> Float {
        func u16() -> UInt16 { let v = raw.loadUnaligned(fromByteOffset: 2 * index, as: UInt16.self); return bigEndian ? v.byteSwapped : v }
        func u32() -> UInt32 { let v = raw.loadUnaligned(fromByteOffset: 4 * index, as: UInt32.self); return bigEndian ? v.byteSwapped : v }
        func u64() -> UInt64 { let v = raw.loadUnaligned(fromByteOffset: 8 * index, as: UInt64.self); return bigEndian ? v.byteSwapped : v }
        switch self {
        case .float32: return Float(bitPattern: u32())
        case .float16: return halfToFloat(u16())
        case .bfloat16: return Float(bitPattern: UInt32(u16()) << 16)
        case .float64: return Float(Double(bitPattern: u64()))
        case .int64: return Float(Int64(bitPattern: u64()))
        case .int32: return Float(Int32(bitPattern: u32()))
        case .int16: return Float(Int16(bitPattern: u16()))
        case .int8: return Float(raw.load(fromByteOffset: index, as: Int8.self))
        case .uint8, .bool: return Float(raw.load(fromByteOffset: index, as: UInt8.self))
        }
    }
}

/// Why a pickle was refused. The reader adds the file's path.
struct PickleError: Error {
    var problem: String
    init(_ problem: String) { self.problem = problem }
}

/// A restricted unpickler for what `torch.save` writes. It never imports or calls anything: globals are names;
/// a short allowlist (OrderedDict, PyTorch's tensor and parameter rebuild functions, storage types) is
/// interpreted by this code, harmless constructors of plain data (sets, numpy scalars, `torch.Size` …) give inert
/// objects, classes instantiated with NEWOBJ (`nn.Module`s) give inert objects holding their state, and a call
/// of anything else refuses the file, naming the global. Work and memory are bounded by the input's size.
final class Unpickler {
    private let data: UnsafeRawBufferPointer
    private(set) var position: Int
    private let end: Int

    // The arena (see PickleValue).
    private(set) var tuples: [[PickleValue]] = []
    private(set) var lists: [[PickleValue]] = []
    private(set) var dicts: [[(PickleValue, PickleValue)]] = []
    private(set) var objects: [InertObject] = []
    private(set) var storages: [PickleStorage] = []
    private(set) var tensors: [PickleTensor] = []
    private(set) var byteStrings: [[UInt8]] = []
    /// Storage keys already seen → index, so tensors sharing a storage share it here too.
    private var storageByKey: [String: Int] = [:]
    /// Every global the pickle named, for messages ("a pickled torch.optim.AdamW …").
    private(set) var globalsSeen: [String] = []

    /// Stack and memo bounds: far above what torch.save writes for any ResNet, far below what would hurt.
    static let maxStack = 1 << 20, maxMemo = 1 << 20, maxDimensions = 16

    init(_ data: UnsafeRawBufferPointer, start: Int = 0) {
        self.data = data
        self.position = start
        self.end = data.count
    }

    // MARK: Reading bytes

    private func need(_ count: Int) throws {
        guard count >= 0, count <= end - position else { throw PickleError("the pickle is truncated (at byte \(position))") }
    }
    private func byte() throws -> UInt8 {
        try need(1)
        defer { position += 1 }
        return data[position]
    }
    private func bytes(_ count: Int) throws -> UnsafeRawBufferPointer {
        try need(count)
        defer { position += count }
        return UnsafeRawBufferPointer(rebasing: data[position..<(position + count)])
    }
    private func uint(_ count: Int) throws -> UInt64 {
        let raw = try bytes(count)
        var value: UInt64 = 0
        for i in (0..<count).reversed() { value = value << 8 | UInt64(raw[i]) }
        return value
    }
    /// A length field (4 or 8 bytes) that must fit in what is left of the input.
    private func length(_ size: Int) throws -> Int {
        let n = try uint(size)
        guard n <= UInt64(end - position) else { throw PickleError("the pickle is truncated: a length of \(n) bytes at byte \(position) runs past its end") }
        return Int(n)
    }
    private func line() throws -> String {
        guard let newline = data[position..<end].firstIndex(of: 0x0a) else { throw PickleError("the pickle is truncated (unterminated line)") }
        guard newline - position <= 4096 else { throw PickleError("a text field at byte \(position) is too long") }
        defer { position = newline + 1 }
        return String(decoding: UnsafeRawBufferPointer(rebasing: data[position..<newline]), as: UTF8.self)
    }
    private func utf8(_ count: Int) throws -> String {
        let raw = try bytes(count)
        guard let s = String(bytes: raw, encoding: .utf8) else { throw PickleError("a string at byte \(position - count) is not valid UTF-8") }
        return s
    }

    // MARK: Running

    /// Runs one pickle up to its STOP and returns the object it built. Persistent ids (PyTorch's storages) are
    /// resolved by `persistentLoad`. Can be called again for the next pickle of a stream (the legacy format).
    func load() throws -> PickleValue {
        var stack: [PickleValue] = []
        var marks: [Int] = []
        var memo: [Int: PickleValue] = [:]

        func pop() throws -> PickleValue {
            guard let v = stack.popLast() else { throw PickleError("the pickle is corrupt: stack underflow at byte \(position - 1)") }
            if let mark = marks.last, stack.count < mark { throw PickleError("the pickle is corrupt: stack underflow past a mark at byte \(position - 1)") }
            return v
        }
        func top() throws -> PickleValue {
            guard let v = stack.last, stack.count > (marks.last ?? 0) else { throw PickleError("the pickle is corrupt: empty stack at byte \(position - 1)") }
            return v
        }
        func popMark() throws -> [PickleValue] {
            guard let mark = marks.popLast() else { throw PickleError("the pickle is corrupt: no mark at byte \(position - 1)") }
            let items = Array(stack[mark...])
            stack.removeSubrange(mark...)
            return items
        }
        func push(_ v: PickleValue) throws {
            guard stack.count < Self.maxStack else { throw PickleError("the pickle's stack grows beyond \(Self.maxStack) items") }
            stack.append(v)
        }
        func put(_ index: Int) throws {
            guard memo.count < Self.maxMemo || memo[index] != nil else { throw PickleError("the pickle's memo grows beyond \(Self.maxMemo) items") }
            memo[index] = try top()
        }
        func get(_ index: Int) throws -> PickleValue {
            guard let v = memo[index] else { throw PickleError("the pickle is corrupt: memo entry \(index) is missing") }
            return v
        }
        func newTuple(_ items: [PickleValue]) -> PickleValue { tuples.append(items); return .tuple(tuples.count - 1) }

        while true {
            let opcode = try byte()
            switch opcode {
            case 0x80: // PROTO
                let version = try byte()
                guard version <= 5 else { throw PickleError("pickle protocol \(version) is not one Python writes") }
            case 0x95: _ = try uint(8) // FRAME: a length hint only
            case 0x2e: return try pop() // STOP
            case 0x28: marks.append(stack.count) // MARK
            case 0x30: _ = try pop() // POP
            case 0x31: _ = try popMark() // POP_MARK
            case 0x32: try push(try top()) // DUP
            case 0x4e: try push(.none) // NONE
            case 0x88: try push(.bool(true)) // NEWTRUE
            case 0x89: try push(.bool(false)) // NEWFALSE
            case 0x4a: try push(.int(Int(Int32(bitPattern: UInt32(try uint(4)))))) // BININT
            case 0x4b: try push(.int(Int(try byte()))) // BININT1
            case 0x4d: try push(.int(Int(try uint(2)))) // BININT2
            case 0x8a, 0x8b: // LONG1, LONG4
                let n = opcode == 0x8a ? Int(try byte()) : try length(4)
                try push(Self.long(Array(try bytes(n))))
            case 0x49: // INT (text; protocol 0, also True/False as 01/00)
                let text = try line()
                if text == "01" { try push(.bool(true)) } else if text == "00" { try push(.bool(false)) } else {
                    guard let i = Int(text) else { throw PickleError("INT '\(text.prefix(40))' is not a number") }
                    try push(.int(i))
                }
            case 0x4c: // LONG (text)
                var text = try line()
                if text.hasSuffix("L") { text.removeLast() }
                guard let i = Int(text) else { throw PickleError("LONG '\(text.prefix(40))' is out of range") }
                try push(.int(i))
            case 0x47: try push(.float(Double(bitPattern: try uint(8).byteSwapped))) // BINFLOAT (big-endian)
            case 0x46: // FLOAT (text)
                let text = try line()
                guard let d = Double(text) else { throw PickleError("FLOAT '\(text.prefix(40))' is not a number") }
                try push(.float(d))
            case 0x58: try push(.string(try utf8(try length(4)))) // BINUNICODE
            case 0x8c: try push(.string(try utf8(Int(try byte())))) // SHORT_BINUNICODE
            case 0x8d: try push(.string(try utf8(try length(8)))) // BINUNICODE8
            case 0x55, 0x54: // SHORT_BINSTRING, BINSTRING (Python 2 str: bytes, read as Latin-1 text)
                let n = opcode == 0x55 ? Int(try byte()) : try length(4)
                try push(.string(String(decoding: try bytes(n).map { UInt16($0) }, as: UTF16.self)))
            case 0x43, 0x42, 0x8e, 0x96: // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                let n = opcode == 0x43 ? Int(try byte()) : try length(opcode == 0x42 ? 4 : 8)
                byteStrings.append(Array(try bytes(n)))
                try push(.bytes(byteStrings.count - 1))
            case 0x29: try push(newTuple([])) // EMPTY_TUPLE
            case 0x74: try push(newTuple(try popMark())) // TUPLE
            case 0x85, 0x86, 0x87: // TUPLE1-3
                var items: [PickleValue] = []
                for _ in 0..<Int(opcode - 0x84) { items.insert(try pop(), at: 0) }
                try push(newTuple(items))
            case 0x5d: lists.append([]); try push(.list(lists.count - 1)) // EMPTY_LIST
            case 0x6c: lists.append(try popMark()); try push(.list(lists.count - 1)) // LIST
            case 0x61: // APPEND
                let item = try pop()
                try append([item], to: try top())
            case 0x65: // APPENDS
                let items = try popMark()
                try append(items, to: try top())
            case 0x7d: dicts.append([]); try push(.dict(dicts.count - 1)) // EMPTY_DICT
            case 0x64: // DICT
                let items = try popMark()
                dicts.append(try Self.pairs(items))
                try push(.dict(dicts.count - 1))
            case 0x73: // SETITEM
                let value = try pop(), key = try pop()
                try setItems([(key, value)], on: try top())
            case 0x75: // SETITEMS
                let items = try popMark()
                try setItems(try Self.pairs(items), on: try top())
            case 0x8f: lists.append([]); try push(.list(lists.count - 1)) // EMPTY_SET (kept as a list)
            case 0x90: // ADDITEMS
                let items = try popMark()
                try append(items, to: try top())
            case 0x91: lists.append(try popMark()); try push(.list(lists.count - 1)) // FROZENSET
            case 0x63: // GLOBAL
                let module = try line(), name = try line()
                try push(global(module, name))
            case 0x93: // STACK_GLOBAL
                let name = try pop(), module = try pop()
                guard let m = module.string, let n = name.string else { throw PickleError("STACK_GLOBAL with a module or name that is not a string") }
                try push(global(m, n))
            case 0x52: // REDUCE
                let arguments = try pop(), callable = try pop()
                try push(try call(callable, arguments))
            case 0x81: // NEWOBJ
                let arguments = try pop(), cls = try pop()
                try push(try instantiate(cls, arguments))
            case 0x92: // NEWOBJ_EX
                _ = try pop()
                let arguments = try pop(), cls = try pop()
                try push(try instantiate(cls, arguments))
            case 0x62: // BUILD
                let state = try pop()
                try build(try top(), state)
            case 0x51: // BINPERSID
                let pid = try pop()
                try push(try persistentLoad(pid))
            case 0x71: try put(Int(try byte())) // BINPUT
            case 0x72: try put(Int(try uint(4))) // LONG_BINPUT
            case 0x94: try put(memo.count) // MEMOIZE
            case 0x70: // PUT (text)
                guard let i = Int(try line()) else { throw PickleError("PUT with a non-numeric index") }
                try put(i)
            case 0x68: try push(try get(Int(try byte()))) // BINGET
            case 0x6a: try push(try get(Int(try uint(4)))) // LONG_BINGET
            case 0x67: // GET (text)
                guard let i = Int(try line()) else { throw PickleError("GET with a non-numeric index") }
                try push(try get(i))
            default:
                throw PickleError(String(format: "unsupported pickle opcode 0x%02x at byte %d", opcode, position - 1))
            }
        }
    }

    static func long(_ raw: [UInt8]) -> PickleValue {
        guard raw.count <= 8 else { return .bigInt(raw) }
        guard !raw.isEmpty else { return .int(0) }
        var value: UInt64 = raw.last! & 0x80 != 0 ? ~0 : 0  // sign extension
        for b in raw.reversed() { value = value << 8 | UInt64(b) }
        return .int(Int(Int64(bitPattern: value)))
    }

    static func pairs(_ items: [PickleValue]) throws -> [(PickleValue, PickleValue)] {
        guard items.count % 2 == 0 else { throw PickleError("the pickle is corrupt: a dict built from an odd number of items") }
        return stride(from: 0, to: items.count, by: 2).map { (items[$0], items[$0 + 1]) }
    }

    private func append(_ items: [PickleValue], to target: PickleValue) throws {
        switch target {
        case .list(let i): lists[i] += items
        case .object: break  // a list subclass of no interest: its items are dropped
        default: throw PickleError("the pickle is corrupt: APPEND to something that is not a list")
        }
    }

    private func setItems(_ items: [(PickleValue, PickleValue)], on target: PickleValue) throws {
        switch target {
        case .dict(let i): dicts[i] += items
        case .object(let i): objects[i].dictItems += items
        default: throw PickleError("the pickle is corrupt: SETITEM on something that is not a dict")
        }
    }

    private func global(_ module: String, _ name: String) -> PickleValue {
        let qualified = "\(module).\(name)"
        if globalsSeen.count < 1000, !globalsSeen.contains(qualified) { globalsSeen.append(qualified) }
        return .global(module: module, name: name)
    }

    // MARK: What a global may do

    /// Functions this code interprets (never the real ones).
    static let interpreted: Set<String> = [
        "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state", "torch._tensor._rebuild_from_type_v2",
    ]

    /// Constructors of plain data that checkpoints carry next to the weights; calling one gives an inert object.
    static let inertConstructors: Set<String> = [
        "builtins.set", "builtins.frozenset", "builtins.slice", "builtins.complex", "builtins.bytearray",
        "__builtin__.set", "__builtin__.frozenset", "collections.defaultdict", "collections.Counter",
        "_codecs.encode", "torch.Size", "torch.device", "torch._utils._rebuild_device_tensor_from_numpy",
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar", "numpy.dtype", "numpy.ndarray", "argparse.Namespace", "copyreg._reconstructor",
        "torch.serialization._get_layout", "pathlib.PosixPath", "pathlib.WindowsPath", "datetime.datetime", "datetime.date",
        "datetime.timedelta", "decimal.Decimal", "fractions.Fraction", "uuid.UUID",
    ]

    /// Modules whose names a checkpoint has no business holding even as classes: refused on sight of a call or
    /// instantiation.
    static let dangerousModules: Set<String> = [
        "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "shutil", "socket", "importlib", "pickle",
        "_pickle", "marshal", "runpy", "code", "codeop", "pty", "ctypes", "multiprocessing", "webbrowser", "io", "_io",
        "types", "functools", "operator", "pdb", "timeit", "asyncio", "threading", "signal", "tempfile", "glob", "commands",
    ]

    private func call(_ callable: PickleValue, _ arguments: PickleValue) throws -> PickleValue {
        guard case .global(let module, let name) = callable else {
            throw PickleError("the pickle calls a value that is not a named function (refused: only allowlisted globals are interpreted)")
        }
        let qualified = "\(module).\(name)"
        let args: [PickleValue]
        if case .tuple(let i) = arguments { args = tuples[i] } else { args = [] }
        switch qualified {
        case "collections.OrderedDict":
            var items: [(PickleValue, PickleValue)] = []
            if let first = args.first, case .list(let l) = first {  // OrderedDict([[k, v], …])
                for pair in lists[l] {
                    if case .tuple(let t) = pair, tuples[t].count == 2 { items.append((tuples[t][0], tuples[t][1])) }
                    else if case .list(let p) = pair, lists[p].count == 2 { items.append((lists[p][0], lists[p][1])) }
                }
            }
            dicts.append(items)
            return .dict(dicts.count - 1)
        case "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor":
            return try rebuildTensor(args)
        case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
            guard let data = args.first, case .tensor = data else { throw PickleError("\(qualified) without a tensor") }
            return data
        case "torch._tensor._rebuild_from_type_v2":  // (function, type, args, state): apply the function to args
            guard args.count >= 3 else { throw PickleError("\(qualified) with \(args.count) arguments") }
            guard case .global(let m, let n) = args[0], ["torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor",
                                                         "torch._utils._rebuild_parameter"].contains("\(m).\(n)") else {
                throw PickleError("\(qualified) with a function that is not on the allowlist")
            }
            return try call(args[0], args[2])
        default:
            if Self.inertConstructors.contains(qualified) {
                objects.append(InertObject(module: module, name: name, arguments: arguments))
                return .object(objects.count - 1)
            }
            throw PickleError("the pickle calls \(qualified), which is not on the allowlist of what a checkpoint may construct (refused; nothing was run)")
        }
    }

    /// NEWOBJ: `cls.__new__(cls, *args)` of a class, e.g. an `nn.Module` of a whole pickled model. The class is
    /// never resolved; the object is a record of its name and later its state.
    private func instantiate(_ cls: PickleValue, _ arguments: PickleValue) throws -> PickleValue {
        guard case .global(let module, let name) = cls else { throw PickleError("NEWOBJ of a value that is not a class") }
        let root = String(module.split(separator: ".").first ?? "")
        if Self.dangerousModules.contains(root) && !["builtins.object", "builtins.set", "builtins.frozenset"].contains("\(module).\(name)") {
            throw PickleError("the pickle instantiates \(module).\(name), which is not on the allowlist (refused; nothing was run)")
        }
        if module == "collections", name == "OrderedDict" { return try call(cls, arguments) }
        objects.append(InertObject(module: module, name: name, arguments: arguments))
        return .object(objects.count - 1)
    }

    private func build(_ target: PickleValue, _ state: PickleValue) throws {
        switch target {
        case .object(let i): objects[i].state = state
        case .dict, .tensor: break  // e.g. an OrderedDict's or a parameter's attribute state: not needed
        default: throw PickleError("the pickle is corrupt: BUILD on something that is not an object")
        }
    }

    /// `("storage", torch.FloatStorage, key, location, numel[, view_metadata])`.
    private func persistentLoad(_ pid: PickleValue) throws -> PickleValue {
        // The legacy format saves an nn.Module class with its source code: ("module", class, file, source).
        if case .tuple(let t) = pid, tuples[t].count == 4, tuples[t][0].string == "module", case .global = tuples[t][1] {
            return tuples[t][1]
        }
        guard case .tuple(let t) = pid, tuples[t].count >= 5, tuples[t][0].string == "storage" else {
            throw PickleError("a persistent id that is not a PyTorch storage")
        }
        let fields = tuples[t]
        guard case .global(let module, let name) = fields[1], module == "torch" else {
            throw PickleError("a storage whose type is not a torch storage type")
        }
        guard let dtype = TensorDType.storageTypes[name] else { throw PickleError("storages of type torch.\(name) are not supported") }
        guard let key = fields[2].string ?? fields[2].int.map(String.init), let count = fields[4].int, count >= 0 else {
            throw PickleError("a storage with a malformed key or size")
        }
        if let existing = storageByKey[key] {
            guard storages[existing].dtype == dtype else { throw PickleError("storage \(key) is declared with two element types") }
            return .storage(existing)
        }
        storages.append(PickleStorage(dtype: dtype, key: key, count: count))
        storageByKey[key] = storages.count - 1
        return .storage(storages.count - 1)
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
    private func rebuildTensor(_ args: [PickleValue]) throws -> PickleValue {
        guard args.count >= 4, case .storage(let storage) = args[0], let offset = args[1].int, offset >= 0 else {
            throw PickleError("a tensor without a storage and offset")
        }
        func ints(_ v: PickleValue) throws -> [Int] {
            guard case .tuple(let t) = v else { throw PickleError("a tensor's size or stride is not a tuple") }
            guard tuples[t].count <= Self.maxDimensions else { throw PickleError("a tensor with \(tuples[t].count) dimensions") }
            return try tuples[t].map { item in
                guard let n = item.int, n >= 0 else { throw PickleError("a tensor's size or stride holds \(item)") }
                return n
            }
        }
        let shape = try ints(args[2]), strides = try ints(args[3])
        guard shape.count == strides.count else { throw PickleError("a tensor with \(shape.count) sizes and \(strides.count) strides") }
        tensors.append(PickleTensor(storage: storage, offset: offset, shape: shape, strides: strides))
        return .tensor(tensors.count - 1)
    }

    // MARK: Reading the result

    func tuple(_ v: PickleValue) -> [PickleValue]? { if case .tuple(let i) = v { return tuples[i] } else { return nil } }
    func list(_ v: PickleValue) -> [PickleValue]? { if case .list(let i) = v { return lists[i] } else { return nil } }
    func dict(_ v: PickleValue) -> [(PickleValue, PickleValue)]? { if case .dict(let i) = v { return dicts[i] } else { return nil } }
    func object(_ v: PickleValue) -> InertObject? { if case .object(let i) = v { return objects[i] } else { return nil } }
    func storage(_ i: Int) -> PickleStorage { storages[i] }
    func tensor(_ i: Int) -> PickleTensor { tensors[i] }
    /// The value under a string key of a dict.
    func lookup(_ v: PickleValue, _ key: String) -> PickleValue? {
        dict(v)?.last(where: { $0.0.string == key })?.1
    }
}
