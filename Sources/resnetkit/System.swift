import ArgumentParser
import Foundation
import ResNetDNNL
import ResNetSupport

/// `resnetkit system`: what this machine offers the engine, for bug reports and benchmark notes.
struct System: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the CPU, its instruction sets and caches, and the OpenBLAS kernel this program runs.",
        discussion: """
            The OpenBLAS kernel is the one the other commands use: when OpenBLAS falls back to a generic core on \
            a CPU with AVX2 or AVX-512, resnetkit restarts itself with a better one (OPENBLAS_CORETYPE).
            """)

    @Flag(name: .customLong("blas-core"), help: "Print only the OpenBLAS kernel's name (for scripts).")
    var blasCoreOnly = false

    func run() {
        if blasCoreOnly {
            print(BLASRuntime.coreName)
            return
        }
        let cpu = CPUInfo.current
        func size(_ bytes: Int) -> String { bytes >= 1 << 20 ? "\(bytes >> 20) MB" : "\(bytes >> 10) KB" }
        print("CPU:               \(cpu.model)")
        print("instruction sets:  \(cpu.instructionSets.joined(separator: ", "))")
        print("caches:            L1d \(size(cpu.level1Data)), L2 \(size(cpu.level2)) per core, L3 \(size(cpu.level3))")
        print("OpenBLAS kernel:   \(BLASRuntime.coreName)")
        print("oneDNN:            \(DNNLRuntime.version), ISA \(DNNLRuntime.isa) (--precision bf16 / int8)")
        if DNNLRuntime.bf16Emulated { print("bf16:              emulated, slower than fp32 on this CPU (no AVX512_BF16 or AMX)") }
        print("cores available:   \(ProcessInfo.processInfo.activeProcessorCount)")
    }
}
