import ArgumentParser
import Foundation
import ResNetData
import ResNetDNNL
import ResNetFormats
import ResNetModel
import ResNetSupport

/// `resnetkit quantize CKPT --calibrate DIR`: measures the activation ranges int8 inference needs.
struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Prepare a model for --precision int8: measure activation ranges on calibration images.",
        discussion: """
            Runs up to --images TIFFs from DIR (with the model's preprocessing) through the fp32 model and stores, \
            in the checkpoint's metadata, the range of the input and of every convolution layer's output \
            (per tensor). Weights stay fp32 in the file and are quantised per output channel when the model \
            loads. int8 then keeps post-ReLU activations as u8, the first layer's input and the downsample \
            outputs as s8. --method max (default) keeps the largest value seen; percentile (99.99 % of each \
            batch's magnitudes) clips rare outliers, which measured worse on a trained model (see README). Use \
            images like those the model will classify.
            """)

    @Argument(help: ArgumentHelp("Checkpoint to quantise.", valueName: "CKPT"))
    var model: String

    @Option(help: ArgumentHelp("Folder of calibration TIFF images.", valueName: "DIR"))
    var calibrate: String

    @Option(help: "Calibration images to use (at most).")
    var images = 512

    @Option(help: ArgumentHelp("max (the largest value seen) or percentile (99.99 % of each batch's magnitudes).", valueName: "max|percentile"))
    var method = RangeMethod.max

    @Option(help: ArgumentHelp("Where to write (default: replace CKPT).", valueName: "CKPT"))
    var out: String?

    @Flag(help: "No progress output (errors still go to stderr).")
    var quiet = false

    static let batchSize = 32

    /// `--method`: how a layer's range is taken from what calibration shows.
    enum RangeMethod: String, ExpressibleByArgument, CaseIterable {
        case max, percentile

        var collectorMethod: RangeCollector.Method {
            switch self {
            case .max: return .max
            case .percentile: return .percentile(99.99)
            }
        }
    }

    func validate() throws {
        guard images >= 1 else { throw UsageError("--images must be at least 1") }
    }

    func run() throws {
        Console.quiet = quiet
        let rangeMethod = method.collectorMethod
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: calibrate, isDirectory: &isFolder), isFolder.boolValue else {
            throw FileError(calibrate, "is not a folder of calibration images")
        }
        var checkpoint = try Checkpoint.load(path: model)
        let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
        let collector = RangeCollector(method: rangeMethod)
        let loader = PrefetchingLoader(enumerator: ImageEnumerator(paths: [calibrate], recursive: false),
                                       preprocessing: checkpoint.preprocessing, batchSize: Self.batchSize,
                                       workers: ProcessInfo.processInfo.activeProcessorCount, accept: { _ in true })
        var used = 0, failed = 0
        while used < images, let batch = loader.next() {
            failed += batch.failures.count
            let count = min(batch.count, images - used)
            guard count > 0 else { continue }
            collector.add(plan, images: UnsafeBufferPointer(rebasing: batch.pixels[0..<count * batch.height * batch.width * 3]),
                          count: count, height: batch.height, width: batch.width)
            used += count
        }
        loader.cancel()
        guard used > 0 else { throw FileError(calibrate, "no readable TIFF images to calibrate with (\(failed) failed)") }
        let scales = collector.scales(images: used)
        checkpoint.extra[ActivationScales.metadataKey] = scales.json
        let target = out ?? model
        try checkpoint.save(path: target)
        Console.info("quantize: \(scales.method)\(failed > 0 ? ", \(failed) unreadable skipped" : ""); wrote \(target) (run it with --precision int8)")
    }
}
