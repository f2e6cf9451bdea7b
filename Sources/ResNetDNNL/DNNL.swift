import CDNNL
import Foundation

/// A failed oneDNN call or a CPU it cannot serve, as one line.
public struct DNNLError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

@inline(__always)
func check(_ status: dnnl_status_t, _ what: @autoclosure () -> String) throws {
    guard status == dnnl_success else { throw DNNLError("oneDNN: \(what()) failed (status \(status.rawValue))") }
}

/// The process's oneDNN CPU engine and a stream for work done once (weight reorders), created on first use.
final class DNNLContext: @unchecked Sendable {
    let engine: dnnl_engine_t
    let stream: Stream

    static let shared = Result { try DNNLContext() }

    private init() throws {
        var engine: dnnl_engine_t?
        try check(dnnl_engine_create(&engine, dnnl_cpu, 0), "creating the CPU engine")
        self.engine = engine!
        stream = try Stream(engine!)
    }
}

/// An in-order queue of primitive executions; one per lane (streams are not shared between threads).
final class Stream {
    let handle: dnnl_stream_t

    init(_ engine: dnnl_engine_t? = nil) throws {
        var stream: dnnl_stream_t?
        let engine = try engine ?? DNNLContext.shared.get().engine
        try check(dnnl_stream_create(&stream, engine, UInt32(dnnl_stream_default_flags.rawValue)), "creating a stream")
        handle = stream!
    }

    func wait() throws { try check(dnnl_stream_wait(handle), "waiting for a stream") }

    deinit { dnnl_stream_destroy(handle) }
}

/// A memory descriptor built from dimensions, a data type and a format tag (`dnnl_format_tag_any` lets the
/// primitive choose).
func memoryDesc(_ dims: [Int], _ type: dnnl_data_type_t, _ tag: dnnl_format_tag_t) throws -> dnnl_memory_desc_t {
    var md = dnnl_memory_desc_t()
    let d = dims.map { dnnl_dim_t($0) }
    try check(dnnl_memory_desc_init_by_tag(&md, Int32(d.count), d, type, tag), "describing a \(dims) tensor")
    return md
}

/// An owned oneDNN object handle, destroyed with the owner.
final class Memory {
    let handle: dnnl_memory_t
    var desc: dnnl_memory_desc_t
    /// DNNL_MEMORY_ALLOCATE, `(void *)(size_t)-1` (a macro Swift does not import).
    static let allocate = UnsafeMutableRawPointer(bitPattern: UInt.max)!

    /// Library-allocated memory for `desc`, or a view of `buffer` (not owned).
    init(_ desc: dnnl_memory_desc_t, buffer: UnsafeMutableRawPointer? = nil) throws {
        var m: dnnl_memory_t?
        var d = desc
        try check(dnnl_memory_create(&m, &d, try DNNLContext.shared.get().engine, buffer ?? Self.allocate),
                  "allocating memory")
        handle = m!
        self.desc = desc
    }

    var data: UnsafeMutableRawPointer {
        var p: UnsafeMutableRawPointer?
        dnnl_memory_get_data_handle(handle, &p)
        return p!
    }

    func setData(_ pointer: UnsafeMutableRawPointer) { dnnl_memory_set_data_handle(handle, pointer) }

    deinit { dnnl_memory_destroy(handle) }
}

/// Primitive attributes: output scales (int8) and post-ops (sum for the residual, then ReLU).
final class Attributes {
    let handle: dnnl_primitive_attr_t

    /// `mask`: which dimensions the scales vary over (default: dst channels when there are several scales).
    /// `userScratchpad`: the caller passes each execution its scratchpad (lanes run primitives concurrently;
    /// the library's own scratchpad is shared by all primitives).
    init(outputScales: [Float]? = nil, mask: Int32? = nil, sum: (scale: Float, type: dnnl_data_type_t)? = nil, relu: Bool = false,
         userScratchpad: Bool = false) throws {
        var a: dnnl_primitive_attr_t?
        try check(dnnl_primitive_attr_create(&a), "creating attributes")
        handle = a!
        if userScratchpad {
            try check(dnnl_primitive_attr_set_scratchpad_mode(handle, dnnl_scratchpad_mode_user), "setting the scratchpad mode")
        }
        if let outputScales {
            try check(dnnl_primitive_attr_set_output_scales(handle, dnnl_dim_t(outputScales.count),
                                                            mask ?? (outputScales.count > 1 ? 1 << 1 : 0), outputScales),
                      "setting output scales")
        }
        if sum != nil || relu {
            var ops: dnnl_post_ops_t?
            try check(dnnl_post_ops_create(&ops), "creating post-ops")
            defer { dnnl_post_ops_destroy(ops) }
            if let sum { try check(dnnl_post_ops_append_sum_v2(ops, sum.scale, sum.type), "appending a sum post-op") }
            if relu { try check(dnnl_post_ops_append_eltwise(ops, 1, dnnl_eltwise_relu, 0, 0), "appending a ReLU post-op") }
            try check(dnnl_primitive_attr_set_post_ops(handle, ops), "setting post-ops")
        }
    }

    deinit { dnnl_primitive_attr_destroy(handle) }
}

/// A primitive descriptor and its primitive.
final class Primitive {
    let pd: dnnl_primitive_desc_t
    let primitive: dnnl_primitive_t

    /// From an operation descriptor (convolution, pooling, …).
    /// `hint`: the forward primitive a backward one belongs to.
    init<Desc>(_ desc: inout Desc, attributes: Attributes?, hint: Primitive? = nil, what: String) throws {
        let engine = try DNNLContext.shared.get().engine
        var pd: dnnl_primitive_desc_t?
        try withUnsafePointer(to: &desc) { d in
            try check(dnnl_primitive_desc_create(&pd, UnsafeRawPointer(d), attributes?.handle, engine, hint?.pd),
                      "creating \(what) (no implementation for this CPU and data type?)")
        }
        self.pd = pd!
        var p: dnnl_primitive_t?
        try check(dnnl_primitive_create(&p, pd), "creating \(what)")
        primitive = p!
    }

    /// A reorder (layout and/or data type conversion, optionally scaled) between two descriptors.
    init(reorderFrom src: dnnl_memory_desc_t, to dst: dnnl_memory_desc_t, attributes: Attributes? = nil) throws {
        let engine = try DNNLContext.shared.get().engine
        var s = src, d = dst
        var pd: dnnl_primitive_desc_t?
        try check(dnnl_reorder_primitive_desc_create(&pd, &s, engine, &d, engine, attributes?.handle), "creating a reorder")
        self.pd = pd!
        var p: dnnl_primitive_t?
        try check(dnnl_primitive_create(&p, pd), "creating a reorder")
        primitive = p!
    }

    func md(_ what: dnnl_query_t, _ index: Int32 = 0) -> dnnl_memory_desc_t {
        dnnl_primitive_desc_query_md(pd, what, index)!.pointee
    }

    /// The implementation oneDNN chose, e.g. `brgconv:avx512_core_bf16`.
    var implementation: String {
        var name: UnsafePointer<CChar>?
        guard dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name) == dnnl_success, let name else { return "?" }
        return String(cString: name)
    }

    /// Bytes of scratchpad this primitive needs (with a user scratchpad).
    var scratchpadSize: Int { dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0)) }

    func execute(_ args: [(Int32, Memory)], on stream: Stream) throws {
        let list = args.map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1.handle) }
        try check(dnnl_primitive_execute(primitive, stream.handle, Int32(list.count), list), "executing a primitive")
    }

    /// Runs a reorder once and waits (weights at load; not concurrently with itself).
    static func reorder(_ src: Memory, _ dst: Memory, attributes: Attributes? = nil) throws {
        let r = try Primitive(reorderFrom: src.desc, to: dst.desc, attributes: attributes)
        let stream = try DNNLContext.shared.get().stream
        try r.execute([(DNNL_ARG_FROM, src), (DNNL_ARG_TO, dst)], on: stream)
        try stream.wait()
    }

    deinit {
        dnnl_primitive_destroy(primitive)
        dnnl_primitive_desc_destroy(pd)
    }
}

/// What oneDNN can do on this CPU, and its OpenMP thread count.
public enum DNNLRuntime {
    /// The instruction set oneDNN dispatches to (after `ONEDNN_MAX_CPU_ISA`, if set), e.g. `avx512_core_bf16`.
    public static var isa: String {
        switch dnnl_get_effective_cpu_isa() {
        case dnnl_cpu_isa_sse41: return "sse41"
        case dnnl_cpu_isa_avx: return "avx"
        case dnnl_cpu_isa_avx2: return "avx2"
        case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni"
        case dnnl_cpu_isa_avx512_mic, dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic"
        case dnnl_cpu_isa_avx512_core: return "avx512_core"
        case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni"
        case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16"
        case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx"
        default: return "none"
        }
    }

    /// oneDNN's version, e.g. `2.6.3`.
    public static var version: String {
        let v = dnnl_version()!.pointee
        return "\(v.major).\(v.minor).\(v.patch)"
    }

    /// Whether oneDNN emulates bf16 here: AVX-512 but neither AVX512_BF16 nor AMX (Skylake-X, Cascade Lake, Ice Lake),
    /// where bf16 runs slower than fp32 (measured with oneDNN limited to AVX-512 on Zen 4: inference 0.34–0.42x fp32,
    /// training 0.45–0.55x).
    public static var bf16Emulated: Bool { atLeast(dnnl_cpu_isa_avx512_core) && !atLeast(dnnl_cpu_isa_avx512_core_bf16) }

    /// Why bf16 would be slow on this CPU, for a warning, or nil (`bf16Emulated`).
    public static var bf16EmulationNote: String? {
        guard bf16Emulated else { return nil }
        return "bf16 is emulated on this CPU (oneDNN reports \(isa): no AVX512_BF16 or AMX) and runs at a third to a half of fp32's speed; --precision fp32 is faster here, and exact"
    }

    /// The ISA rank oneDNN reports, compared bitwise: each ISA's mask contains its predecessors'.
    static func atLeast(_ isa: dnnl_cpu_isa_t) -> Bool {
        let have = dnnl_get_effective_cpu_isa().rawValue, need = isa.rawValue
        return have & need == need
    }

    /// Sets the OpenMP thread count of oneDNN calls made from the calling thread (an OpenMP setting is per
    /// thread). libgomp is loaded with libdnnl but not linked here, so the symbol is looked up at run time.
    public static func setThreads(_ count: Int) {
        guard let setNumThreads else { return }
        setNumThreads(Int32(max(1, count)))
    }

    /// Runs `body` with the calling thread's OpenMP thread count at `count`, then restores it. For creating
    /// primitives: oneDNN fixes a primitive's thread count when it is created (from the creating thread's
    /// setting), not when it runs, so one created at two threads starts a team of its own in every lane.
    static func withThreads<T>(_ count: Int, _ body: () throws -> T) rethrows -> T {
        guard let setNumThreads, let getMaxThreads else { return try body() }
        let previous = getMaxThreads()
        setNumThreads(Int32(max(1, count)))
        defer { setNumThreads(previous) }
        return try body()
    }

    private typealias SetThreads = @convention(c) (Int32) -> Void
    private typealias GetThreads = @convention(c) () -> Int32
    private static let setNumThreads: SetThreads? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "omp_set_num_threads") else { return nil }
        return unsafeBitCast(symbol, to: SetThreads.self)
    }()
    private static let getMaxThreads: GetThreads? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "omp_get_max_threads") else { return nil }
        return unsafeBitCast(symbol, to: GetThreads.self)
    }()
}
