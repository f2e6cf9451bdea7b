import ResNetSupport
import XCTest

/// GUIDE §2: Debian's OpenBLAS may fall back to a generic core; the program must end up on the right kernel.
final class BLASKernelTests: XCTestCase {
    let model = CLI.reference.appendingPathComponent("resnet18.safetensors").path
    let cpuFlags = BLASRuntime.cpuFlags()

    /// Kernels OpenBLAS may legitimately pick on a CPU with these features.
    var acceptableCores: Set<String> {
        if cpuFlags.contains("avx512f") { return ["SkylakeX", "Cooperlake", "SapphireRapids"] }
        if cpuFlags.contains("avx2") { return ["Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"] }
        return []
    }

    func testPreferredCoreFollowsCPUFlags() {
        XCTAssertEqual(BLASRuntime.preferredCore(cpuFlags: ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"]), "SkylakeX")
        XCTAssertEqual(BLASRuntime.preferredCore(cpuFlags: ["avx2", "fma", "sse4_2"]), "Haswell")
        XCTAssertNil(BLASRuntime.preferredCore(cpuFlags: ["sse4_2"]))
        XCTAssertTrue(BLASRuntime.isGeneric("Prescott"))
        XCTAssertFalse(BLASRuntime.isGeneric("SkylakeX"))
    }

    /// Without OPENBLAS_CORETYPE the process runs a non-generic kernel that suits the CPU.
    func testProcessRunsAnOptimizedKernel() throws {
        try XCTSkipIf(acceptableCores.isEmpty, "needs an AVX2 or AVX-512 CPU")
        let result = try CLI.run(["inspect", model], environment: ["RESNETKIT_LOG": "debug"],
                                 unsetting: ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let core = try XCTUnwrap(Self.finalCore(result.stderr), result.stderr)
        XCTAssertTrue(acceptableCores.contains(core), "ran on \(core)")
    }

    /// When OpenBLAS detects a generic core, the program sets OPENBLAS_CORETYPE and re-executes itself.
    func testGenericCoreTriggersReexecWithTheRightKernel() throws {
        try XCTSkipIf(acceptableCores.isEmpty, "needs an AVX2 or AVX-512 CPU")
        let result = try CLI.run(["inspect", model], environment: ["RESNETKIT_LOG": "debug", "RESNETKIT_SIMULATE_GENERIC_BLAS": "1"],
                                 unsetting: ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let expected = cpuFlags.contains("avx512f") ? "SkylakeX" : "Haswell"
        XCTAssertTrue(result.stderr.contains("re-executing with OPENBLAS_CORETYPE=\(expected)"), result.stderr)
        XCTAssertEqual(Self.finalCore(result.stderr), expected)
        XCTAssertTrue(result.stdout.contains("Total params: 11,689,512"), "the re-executed program did its job")
    }

    /// A core set by the user is respected.
    func testUserChoiceIsRespected() throws {
        let result = try CLI.run(["inspect", model], environment: ["RESNETKIT_LOG": "debug", "OPENBLAS_CORETYPE": "Haswell"])
        XCTAssertEqual(Self.finalCore(result.stderr), "Haswell")
    }

    /// `resnetkit system --blas-core` names the kernel the commands run on (tools/test.sh runs the tests on it).
    func testSystemNamesTheKernelTheCommandsRun() throws {
        try XCTSkipIf(acceptableCores.isEmpty, "needs an AVX2 or AVX-512 CPU")
        let generic = try CLI.run(["system", "--blas-core"], environment: ["RESNETKIT_SIMULATE_GENERIC_BLAS": "1"],
                                  unsetting: ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"])
        XCTAssertEqual(generic.stdout, (cpuFlags.contains("avx512f") ? "SkylakeX" : "Haswell") + "\n")
        let report = try CLI.run(["system"], environment: ["OPENBLAS_CORETYPE": "Haswell"])
        XCTAssertEqual(report.status, 0, report.stderr)
        XCTAssertTrue(report.stdout.contains("OpenBLAS kernel:   Haswell"), report.stdout)
        XCTAssertTrue(report.stdout.contains("CPU:               \(CPUInfo.current.model)"), report.stdout)
    }

    /// The core named by the last "OpenBLAS core X" debug line.
    static func finalCore(_ log: String) -> String? {
        log.split(separator: "\n").last(where: { $0.contains("debug: OpenBLAS core ") })
            .flatMap { $0.components(separatedBy: "OpenBLAS core ").last?.split(separator: " ").first.map(String.init) }
    }
}
