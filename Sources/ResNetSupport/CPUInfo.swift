import Foundation

/// What a benchmark figure or a bug report needs to say about the machine: the CPU model, the instruction sets
/// that matter to this tool, and the cache sizes (from sysfs, as the kernel reports them).
public struct CPUInfo: Sendable {
    public var model: String
    public var flags: Set<String>
    /// Per-core L1 data and L2, and the (shared) L3, in bytes; 0 where unknown.
    public var level1Data: Int, level2: Int, level3: Int

    public static let current = CPUInfo()

    init() {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        func field(_ name: String) -> String? {
            guard let line = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix(name) }),
                  let colon = line.firstIndex(of: ":") else { return nil }
            return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        model = field("model name") ?? "unknown CPU"
        flags = Set((field("flags") ?? "").split(separator: " ").map(String.init))
        var sizes: [String: Int] = [:]
        let root = "/sys/devices/system/cpu/cpu0/cache"
        for index in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] where index.hasPrefix("index") {
            func read(_ name: String) -> String? {
                (try? String(contentsOfFile: "\(root)/\(index)/\(name)", encoding: .utf8))?
                    .trimmingCharacters(in: .whitespacesAndNewlines)
            }
            guard let level = read("level"), let type = read("type"), type != "Instruction",
                  let size = read("size").flatMap(Self.bytes) else { continue }
            sizes[level] = size
        }
        level1Data = sizes["1"] ?? Self.sysconfBytes(Int32(_SC_LEVEL1_DCACHE_SIZE))
        level2 = sizes["2"] ?? Self.sysconfBytes(Int32(_SC_LEVEL2_CACHE_SIZE))
        level3 = sizes["3"] ?? Self.sysconfBytes(Int32(_SC_LEVEL3_CACHE_SIZE))
    }

    /// "32K", "1024K", "32M" → bytes.
    static func bytes(_ text: String) -> Int? {
        let unit = text.last.map { "KMG".contains($0) ? $0 : " " } ?? " "
        guard let value = Int(unit == " " ? text : String(text.dropLast())) else { return nil }
        switch unit {
        case "K": return value << 10
        case "M": return value << 20
        case "G": return value << 30
        default: return value
        }
    }

    static func sysconfBytes(_ name: Int32) -> Int { max(0, sysconf(name)) }

    /// The instruction sets that decide which kernels can run, strongest first.
    public var instructionSets: [String] {
        var sets: [String] = []
        if flags.isSuperset(of: ["amx_tile", "amx_bf16"]) { sets.append("AMX-BF16") }
        if flags.contains("amx_int8") { sets.append("AMX-INT8") }
        if flags.contains("avx512_bf16") { sets.append("AVX512_BF16") }
        if flags.contains("avx512_vnni") { sets.append("AVX512_VNNI") }
        if flags.contains("avx512f") { sets.append("AVX-512") }
        if flags.contains("avx2") { sets.append("AVX2") }
        return sets.isEmpty ? ["SSE"] : sets
    }

    /// One line for benchmark headers: model, ISA, caches and the OpenBLAS kernel in use.
    public var summary: String {
        func size(_ bytes: Int) -> String { bytes >= 1 << 20 ? "\(bytes >> 20) MB" : "\(bytes >> 10) KB" }
        return "\(model); \(instructionSets.joined(separator: ", ")); L1d \(size(level1Data)), L2 \(size(level2)), "
            + "L3 \(size(level3)); OpenBLAS core \(BLASRuntime.coreName)"
    }
}
