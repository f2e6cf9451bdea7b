import ArgumentParser
import Foundation
import ResNetDNNL
import ResNetFormats
import ResNetModel
import ResNetSupport

/// `--precision fp32|bf16|int8` for the commands that run a model: fp32 on OpenBLAS (exact, the default),
/// bf16 and int8 on oneDNN (int8 needs the activation ranges `resnetkit quantize` stores in the checkpoint).
/// `RESNETKIT_WINOGRAD=off` keeps bf16 on oneDNN's convolutions (closer to fp32, slower) where the plan would
/// run Winograd and by-taps layers.
enum EngineChoice {
    static let help = ArgumentHelp(
        "fp32 (OpenBLAS, exact), bf16 or int8 (oneDNN; int8 needs a model from `resnetkit quantize`). bf16 runs some layers as Winograd (faster, a little further from fp32; RESNETKIT_WINOGRAD=off to keep oneDNN's convolutions).",
        valueName: "fp32|bf16|int8")

    /// RESNETKIT_WINOGRAD (`DNNLPlan.workSaving(environment:)`), a bad value as a one-line usage error.
    static func workSaving() throws -> Bool? {
        do { return try DNNLPlan.workSaving(environment: ProcessInfo.processInfo.environment) } catch let error as DNNLError {
            throw UsageError(error.description)
        }
    }

    /// A warning when `precision` would run slower than fp32 on this CPU (bf16 emulated), before the work starts.
    static func warnIfSlow(_ precision: Precision) {
        if precision == .bf16, let note = DNNLRuntime.bf16EmulationNote { Console.warning(note) }
    }

    /// The engine for `checkpoint` (read from `modelPath`) at this precision; `threads` (the lanes, as set in
    /// `Parallelism.threads`) only for the debug line.
    /// Every refusal is one line: int8 without scales, a CPU oneDNN cannot serve.
    static func make(_ precision: Precision, checkpoint: Checkpoint, modelPath: String, threads: Int) throws -> any InferenceEngine {
        var scales: ActivationScales?
        if let json = checkpoint.extra[ActivationScales.metadataKey] {
            do { scales = try ActivationScales(json: json) } catch {
                throw FileError(modelPath, "metadata '\(ActivationScales.metadataKey)' is not valid; rerun `resnetkit quantize`")
            }
        }
        if precision == .int8 && scales == nil {
            throw FileError(modelPath, "no int8 activation ranges: run `resnetkit quantize \(modelPath) --calibrate DIR` first")
        }
        warnIfSlow(precision)
        if precision != .fp32 {
            // The plan splits batches into Parallelism.threads lanes of one OpenMP thread each (see DNNLPlan).
            Console.debug("oneDNN \(DNNLRuntime.version), ISA \(DNNLRuntime.isa), \(threads) lanes of one OpenMP thread, \(precision.rawValue)")
        }
        do {
            return try precision.makeEngine(architecture: checkpoint.architecture, state: checkpoint.state, scales: scales,
                                            workSaving: try workSaving())
        } catch let error as DNNLError {
            throw UsageError(error.description)
        }
    }
}

extension InferenceEngine {
    /// `run` for the commands: oneDNN's failures as one-line usage errors, and with `RESNETKIT_LOG=debug` the
    /// implementations it chose, listed the first time.
    func checkedRun(images: UnsafePointer<Float>, count: Int, height: Int, width: Int, logits: UnsafeMutablePointer<Float>) throws {
        do {
            if let dnnl = self as? DNNLPlan, !dnnl.hasPrepared {
                try Self.logImplementations(dnnl, batch: count, height: height, width: width)
            }
            try run(images: images, count: count, height: height, width: width, logits: logits)
        } catch let error as DNNLError {
            throw UsageError(error.description)
        }
    }

    /// Builds what a oneDNN engine needs for batches of this shape (primitives, packed weights: a tenth of a second)
    /// before the first arrives, e.g. while the decoders read the first images. Nothing to do for fp32.
    func checkedPrepare(batch: Int, height: Int, width: Int) throws {
        guard let dnnl = self as? DNNLPlan else { return }
        do {
            try dnnl.prepare(batch: batch, height: height, width: width)
            try Self.logImplementations(dnnl, batch: batch, height: height, width: width)
        } catch let error as DNNLError {
            throw UsageError(error.description)
        }
    }

    /// With `RESNETKIT_LOG=debug`, the implementation oneDNN chose for each kind of layer.
    private static func logImplementations(_ dnnl: DNNLPlan, batch: Int, height: Int, width: Int) throws {
        guard Console.debugEnabled else { return }
        for line in try dnnl.implementations(batch: batch, height: height, width: width) { Console.debug("oneDNN \(line)") }
    }
}

extension Precision: ExpressibleByArgument {}
