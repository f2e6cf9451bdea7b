import Foundation
import ResNetFormats
import ResNetDNNL
import ResNetModel
import ResNetSupport

// resnetkit-bench: throughput figures printed as a table (never a timed unit test).
//   resnetkit-bench infer [--model CKPT] [--batches 16,64] [--sides 49,96] [--seconds S] [--threads N]
//   resnetkit-bench compare [--sides 49,96] [--batches 64] [--algorithms im2col,automatic]
//                                  (convolution algorithms side by side, interleaved, img per CPU-second)
//   resnetkit-bench precision [--precision fp32,bf16,int8] [--sides 49,96] [--batches 64] [--seconds S]
//                                  (engines per precision side by side, interleaved; see PrecisionBenchmark.swift)
//   resnetkit-bench train [--batches 16,64] [--steps 10] [--phases head-train,head-eval,whole] [--precision fp32,bf16]
//                                  (training steps/s, see TrainingBenchmark.swift; compare tools/bench_train_pytorch.py)
// Uses random inputs in [0, 1); the model defaults to ../shared/reference/resnet18.safetensors.

BLASRuntime.ensureOptimizedKernel()
// Every figure is about one machine: say which (CPU model, ISA, caches, OpenBLAS kernel).
print("machine: \(CPUInfo.current.summary)")

struct Options {
    var mode = "infer"
    var model = "../shared/reference/resnet18.safetensors"
    var batches = [16, 64]
    var sides = [49, 96]
    /// Whether `--sides` was given (training's default is 49 alone).
    var sidesGiven = false
    var seconds = 3.0
    var threads = 2
    var steps = 10
    var phases = TrainingPhase.allCases
    var algorithms: [ConvolutionAlgorithm] = [.im2col, .automatic]
    var precisions: [Precision] = Precision.allCases

    init(_ args: [String]) {
        var rest = args[...]
        if let first = rest.first, !first.hasPrefix("-") { mode = first; rest = rest.dropFirst() }
        while let flag = rest.popFirst() {
            let value = rest.popFirst() ?? ""
            switch flag {
            case "--model": model = value
            case "--batches": batches = value.split(separator: ",").compactMap { Int($0) }
            case "--sides": sides = value.split(separator: ",").compactMap { Int($0) }; sidesGiven = true
            case "--seconds": seconds = Double(value) ?? seconds
            case "--threads": threads = Int(value) ?? threads
            case "--steps": steps = Int(value) ?? steps
            case "--algorithms": algorithms = value.split(separator: ",").compactMap { ConvolutionAlgorithm(rawValue: String($0)) }
            case "--precision":
                precisions = value.split(separator: ",").compactMap { Precision(rawValue: String($0)) }
                if precisions.isEmpty {
                    FileHandle.standardError.write(Data("--precision takes fp32, bf16 or int8 (comma-separated), not '\(value)'\n".utf8))
                    exit(1)
                }
            case "--phases": phases = value.split(separator: ",").compactMap { TrainingPhase(rawValue: String($0)) }
            default:
                FileHandle.standardError.write(Data("unknown option \(flag)\n".utf8))
                exit(2)
            }
        }
    }
}

func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

/// User + system CPU seconds of this process so far.
func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6
}

/// Peak resident set size of this process so far, in MB (VmHWM).
func peakRSSMegabytes() -> Double {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM") }) else { return 0 }
    return Double(line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0) / 1024
}

func benchmarkInference(_ options: Options) throws {
    let checkpoint = try Checkpoint.load(path: options.model)
    BLASRuntime.setThreads(options.threads)
    Parallelism.threads = options.threads
    print("ResNetKit inference, OpenBLAS core \(BLASRuntime.coreName), \(options.threads) threads, model \(options.model)")
    // img/CPU-s (images per CPU-second) moves less than img/s when other work shares the machine.
    print("batch  side   img/s    ms/batch  peak RSS MB  img/CPU-s")
    for side in options.sides {
        for batch in options.batches {
            let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
            var images = [Float](repeating: 0, count: batch * side * side * 3)
            for i in images.indices { images[i] = Float.random(in: 0..<1) }
            var logits = [Float](repeating: 0, count: batch * plan.numClasses)
            let run = {
                images.withUnsafeBufferPointer { img in
                    logits.withUnsafeMutableBufferPointer { out in
                        plan.run(images: img.baseAddress!, count: batch, height: side, width: side, logits: out.baseAddress!)
                    }
                }
            }
            run()  // warm-up: buffers, OpenBLAS threads
            var iterations = 0
            let start = now(), cpuStart = cpuSeconds()
            while now() - start < options.seconds || iterations < 3 {
                run()
                iterations += 1
            }
            let elapsed = now() - start, cpu = cpuSeconds() - cpuStart
            let rate = Double(iterations * batch) / elapsed
            print(String(format: "%5d  %4d  %7.1f  %9.1f  %8.0f  %11.1f", batch, side, rate, 1000 * elapsed / Double(iterations),
                         peakRSSMegabytes(), Double(iterations * batch) / cpu))
        }
    }
}

/// `compare`: the convolution algorithms of `--algorithms` side by side for each side and batch, their plans
/// interleaved round by round so that other load on the machine hits all alike; CPU time based. Ratios are
/// against the first algorithm.
func compareAlgorithms(_ options: Options) throws {
    let checkpoint = try Checkpoint.load(path: options.model)
    BLASRuntime.setThreads(options.threads)
    Parallelism.threads = options.threads
    let algorithms = options.algorithms
    let columns = algorithms.map { "\($0.rawValue) img/CPU-s" } + algorithms.dropFirst().map { "\($0.rawValue) ratio" }
    print((["side", "batch"] + columns).joined(separator: "  "))
    func row(_ side: Int, _ batch: Int, _ cells: [String]) -> String {
        ([String(format: "%4d", side), String(format: "%5d", batch)]
            + zip(columns, cells).map { String(repeating: " ", count: max(0, $0.count - $1.count)) + $1 }).joined(separator: "  ")
    }
    for side in options.sides {
        for batch in options.batches {
            let rounds = max(2, Int(options.seconds * 2))
            let plans = try algorithms.map { algorithm in
                let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
                plan.algorithm = algorithm
                return plan
            }
            let images = (0..<(batch * side * side * 3)).map { _ in Float.random(in: 0..<1) }
            var logits = [Float](repeating: 0, count: batch * plans[0].numClasses)
            var cpu = [Double](repeating: 0, count: plans.count)
            for round in 0..<rounds {
                for (index, plan) in plans.enumerated() {
                    let start = cpuSeconds()
                    for _ in 0..<3 { plan.run(images: images, count: batch, height: side, width: side, logits: &logits) }
                    if round > 0 { cpu[index] += cpuSeconds() - start }  // round 0 warms up
                }
            }
            let rates = cpu.map { Double(batch * 3 * (rounds - 1)) / $0 }
            print(row(side, batch, rates.map { String(format: "%.1f", $0) } + rates.dropFirst().map { String(format: "%.2fx", $0 / rates[0]) }))
        }
    }
}

let options = Options(Array(CommandLine.arguments.dropFirst()))
do {
    switch options.mode {
    case "infer": try benchmarkInference(options)
    case "compare": try compareAlgorithms(options)
    case "precision": try benchmarkPrecisions(options)
    case "train":
        // Training runs fp32 or bf16; without --precision, fp32 alone.
        let precisions = options.precisions == Precision.allCases ? [.fp32] : options.precisions.filter { $0 != .int8 }
        for side in options.sidesGiven ? options.sides : [49] {
            runTrainingBenchmark(batches: options.batches, side: side, steps: options.steps, phases: options.phases, precisions: precisions)
        }
    default:
        FileHandle.standardError.write(Data("unknown mode \(options.mode) (infer, compare, precision, train)\n".utf8))
        exit(2)
    }
} catch {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    exit(1)
}
