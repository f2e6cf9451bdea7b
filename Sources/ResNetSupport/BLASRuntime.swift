import COpenBLAS
import Foundation

/// Makes OpenBLAS run the kernels this CPU supports.
///
/// Debian's OpenBLAS picks its kernels when the library loads, before `main`, and on some virtual CPUs it
/// falls back to a generic core ("Prescott") that is several times slower. `OPENBLAS_CORETYPE` fixes the choice but
/// is read only at load time, so when it is unset and the detected core is generic while the CPU has
/// AVX-512 or AVX2, we set it and re-execute the program with the same arguments.
public enum BLASRuntime {
    /// Cores OpenBLAS falls back to when it does not recognise the CPU.
    static let genericCores: Set<String> = ["prescott", "core2", "katmai", "coppermine", "northwood", "banias",
                                             "atom", "nehalem", "generic", "athlon", "opteron", "barcelona"]
    /// Set in the re-executed process so that a second attempt can never loop.
    static let reexecMarker = "RESNETKIT_BLAS_REEXEC"
    /// Test hook: pretend the detected core is generic (exercises the re-exec path on any machine).
    static let simulateGenericVariable = "RESNETKIT_SIMULATE_GENERIC_BLAS"

    /// The core OpenBLAS is running (e.g. `SkylakeX`, `Haswell`, `Prescott`).
    public static var coreName: String { String(cString: openblas_get_corename()) }

    /// The core to request for a CPU with these /proc/cpuinfo flags, or nil when nothing better is known.
    public static func preferredCore(cpuFlags: Set<String>) -> String? {
        if cpuFlags.isSuperset(of: ["avx512f", "avx512bw", "avx512vl", "avx512dq"]) { return "SkylakeX" }
        if cpuFlags.isSuperset(of: ["avx2", "fma"]) { return "Haswell" }
        return nil
    }

    /// Whether a detected core name is one of OpenBLAS's generic fallbacks.
    public static func isGeneric(_ core: String) -> Bool { genericCores.contains(core.lowercased()) }

    /// The CPU's feature flags from /proc/cpuinfo (empty where it is not available).
    public static func cpuFlags() -> Set<String> { CPUInfo.current.flags }

    /// Call first thing in `main`. Returns normally when the kernel is fine (or cannot be improved);
    /// otherwise replaces the process with itself under `OPENBLAS_CORETYPE` and does not return.
    /// `log` receives one debug line describing the decision.
    public static func ensureOptimizedKernel(log: (String) -> Void = { _ in }) {
        let environment = ProcessInfo.processInfo.environment
        let detected = coreName
        if let preset = environment["OPENBLAS_CORETYPE"], !preset.isEmpty {
            log("OpenBLAS core \(detected) (OPENBLAS_CORETYPE=\(preset) set by the environment)")
            return
        }
        let simulated = environment[simulateGenericVariable] != nil && environment[reexecMarker] == nil
        guard isGeneric(detected) || simulated else {
            log("OpenBLAS core \(detected) (detected)")
            return
        }
        guard environment[reexecMarker] == nil, let core = preferredCore(cpuFlags: cpuFlags()) else {
            log("OpenBLAS core \(detected): generic, and no better core is known for this CPU")
            return
        }
        log("OpenBLAS detected \(detected); re-executing with OPENBLAS_CORETYPE=\(core)")
        setenv("OPENBLAS_CORETYPE", core, 1)
        setenv(reexecMarker, "1", 1)
        let arguments = CommandLine.arguments
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        argv.append(nil)
        execv("/proc/self/exe", &argv)
        // exec failed (no /proc): carry on with the generic kernel rather than refuse to run.
        log("re-exec failed (\(systemErrorMessage())); continuing on \(detected)")
    }

    /// Threads OpenBLAS uses for each GEMM.
    public static func setThreads(_ count: Int) { openblas_set_num_threads(Int32(max(1, count))) }
    public static var threads: Int { Int(openblas_get_num_threads()) }
}
