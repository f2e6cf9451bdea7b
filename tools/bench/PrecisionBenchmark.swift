import Foundation
import ResNetDNNL
import ResNetFormats
import ResNetModel
import ResNetSupport

/// `precision`: the engines of `--precision` (fp32 on OpenBLAS, bf16 / int8 on oneDNN) side by side for each side
/// and batch, interleaved round by round so that other load on the machine hits all alike. Wall-clock img/s
/// (what a user sees) and img/CPU-s. int8's activation ranges come from the benchmark's own random images.
func benchmarkPrecisions(_ options: Options) throws {
    let checkpoint = try Checkpoint.load(path: options.model)
    BLASRuntime.setThreads(options.threads)
    Parallelism.threads = options.threads
    DNNLRuntime.setThreads(options.threads)
    // As the commands take it: RESNETKIT_WINOGRAD=off keeps bf16 and int8 on oneDNN's convolutions.
    let workSaving = try DNNLPlan.workSaving(environment: ProcessInfo.processInfo.environment)
    print("ResNetKit engines, OpenBLAS core \(BLASRuntime.coreName), oneDNN \(DNNLRuntime.version) ISA \(DNNLRuntime.isa), "
          + "\(options.threads) threads, work-saving layers \(workSaving == false ? "off" : "auto"), model \(options.model)")
    print("side  batch  precision    img/s  ms/batch  img/CPU-s  vs first")
    for side in options.sides {
        for batch in options.batches {
            var images = [Float](repeating: 0, count: batch * side * side * 3)
            for i in images.indices { images[i] = Float.random(in: 0..<1) }
            let engines: [any InferenceEngine] = try options.precisions.map { precision in
                var scales: ActivationScales?
                if precision == .int8 {
                    let collector = RangeCollector(method: .percentile(99.99))
                    let fp32 = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
                    images.withUnsafeBufferPointer { collector.add(fp32, images: $0, count: batch, height: side, width: side) }
                    scales = collector.scales(images: batch)
                }
                let engine = try precision.makeEngine(architecture: checkpoint.architecture, state: checkpoint.state, scales: scales,
                                                   workSaving: workSaving)
                if let dnnl = engine as? DNNLPlan, side == options.sides[0], batch == options.batches[0] {
                    for line in try dnnl.implementations(batch: batch, height: side, width: side) {
                        print("  \(precision.rawValue) \(line)")
                    }
                }
                if let dnnl = engine as? DNNLPlan { try dnnl.prepare(batch: batch, height: side, width: side) }
                return engine
            }
            var logits = [Float](repeating: 0, count: batch * checkpoint.config.numClasses)
            func once(_ engine: any InferenceEngine) throws {
                try images.withUnsafeBufferPointer { img in
                    try logits.withUnsafeMutableBufferPointer { out in
                        try engine.run(images: img.baseAddress!, count: batch, height: side, width: side, logits: out.baseAddress!)
                    }
                }
            }
            let rounds = max(3, Int(options.seconds * 2))
            var wall = [Double](repeating: 0, count: engines.count), cpu = wall, runs = [Int](repeating: 0, count: engines.count)
            for round in 0..<rounds {
                for (index, engine) in engines.enumerated() {
                    let start = now(), cpuStart = cpuSeconds()
                    // About half a second per engine and round.
                    var n = 0
                    repeat { try once(engine); n += 1 } while now() - start < 0.5 && round > 0
                    if round > 0 {  // round 0 warms up
                        wall[index] += now() - start
                        cpu[index] += cpuSeconds() - cpuStart
                        runs[index] += n
                    }
                }
            }
            let rates = (0..<engines.count).map { Double(runs[$0] * batch) / wall[$0] }
            for (index, precision) in options.precisions.enumerated() {
                print(String(format: "%4d  %5d  %-9@  %7.1f  %8.1f  %9.1f  %7.2fx", side, batch, precision.rawValue, rates[index],
                             1000 * wall[index] / Double(runs[index]), Double(runs[index] * batch) / cpu[index],
                             rates[index] / rates[0]))
            }
        }
    }
}
