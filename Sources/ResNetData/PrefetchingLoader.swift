import Foundation
import ResNetModel
import ResNetSupport

/// An image that could not be used, and why (one line).
public struct ImageFailure: Sendable, Equatable {
    public var id: String
    public var path: String
    public var reason: String

    public init(id: String, path: String, reason: String) {
        self.id = id
        self.path = path
        self.reason = reason
    }
}

/// A batch of prepared images, NHWC [count, height, width, 3], in enumeration order, plus the images of
/// this stretch of the enumeration that failed. A batch may hold failures only (count 0).
public final class PreparedBatch: @unchecked Sendable {
    public let ids: [String]
    public let paths: [String]
    public let height: Int, width: Int
    public let failures: [ImageFailure]
    /// ids.count · height · width · 3 floats, owned by the batch (valid while it lives).
    public let pixels: UnsafeMutableBufferPointer<Float>

    public var count: Int { ids.count }

    init(ids: [String], paths: [String], height: Int, width: Int, failures: [ImageFailure], pixels: UnsafeMutableBufferPointer<Float>) {
        self.ids = ids
        self.paths = paths
        self.height = height
        self.width = width
        self.failures = failures
        self.pixels = pixels
    }

    deinit { pixels.deallocate() }
}

/// Decodes and prepares images on background threads, about two batches ahead of the consumer.
///
/// A producer thread takes `batchSize` accepted entries at a time from the enumerator, decodes and prepares
/// them on `workers` threads into the batch's own buffer, and hands the batch to a queue that holds at most
/// `queueDepth` batches; so memory is bounded by (queueDepth + 2) batches, whatever the number of images.
/// Entries the filter rejects (other shards, ids already done) are skipped before decoding.
/// With crop 0, every image must have the size of the first one that decodes; others are failures.
/// Dropping the loader (or `cancel()`) stops the producer.
public final class PrefetchingLoader: @unchecked Sendable {
    private let pipeline: LoaderPipeline

    public var batchSize: Int { pipeline.batchSize }
    public var preprocessing: Preprocessing { pipeline.preprocessing }

    public init(enumerator: ImageEnumerator, preprocessing: Preprocessing, batchSize: Int, workers: Int,
                queueDepth: Int = 2, accept: @escaping (ImageEntry) -> Bool = { _ in true }) {
        precondition(batchSize > 0 && workers > 0 && queueDepth > 0)
        let pipeline = LoaderPipeline(enumerator: enumerator, preprocessing: preprocessing, batchSize: batchSize,
                                      workers: workers, queueDepth: queueDepth, accept: accept)
        self.pipeline = pipeline
        // The thread owns the pipeline, so it stays valid until the producer has stopped.
        let thread = Thread { pipeline.produce() }
        thread.name = "image loader"
        thread.start()
    }

    deinit { pipeline.cancel() }

    /// The next batch in enumeration order, or nil when every image has been handed out.
    public func next() -> PreparedBatch? { pipeline.next() }

    /// Stops the producer (e.g. after too many failures); `next()` then returns nil.
    public func cancel() { pipeline.cancel() }
}

/// The loader's state, shared by the consumer and the producer thread.
final class LoaderPipeline: @unchecked Sendable {
    let batchSize: Int
    let preprocessing: Preprocessing
    private var enumerator: ImageEnumerator
    private let accept: (ImageEntry) -> Bool
    private let workers: Int
    private let queue: BatchQueue<PreparedBatch>
    /// Output size, fixed by the crop or by the first image that decodes.
    private var size: (height: Int, width: Int)?
    /// Ids handed out so far, with their files: a second file with the same id (`a.tif` beside `a.tiff`, or one
    /// name under two folders) is a failure, so that every id appears once in the output. Grows with the number
    /// of images (about 100 bytes each), like the set of done ids that a resumed run keeps.
    private var seen: [String: String] = [:]

    init(enumerator: ImageEnumerator, preprocessing: Preprocessing, batchSize: Int, workers: Int,
         queueDepth: Int, accept: @escaping (ImageEntry) -> Bool) {
        self.enumerator = enumerator
        self.preprocessing = preprocessing
        self.batchSize = batchSize
        self.workers = workers
        queue = BatchQueue(depth: queueDepth)
        self.accept = accept
        if preprocessing.crop > 0 { size = (preprocessing.crop, preprocessing.crop) }
    }

    func next() -> PreparedBatch? { queue.next() }

    func cancel() { queue.cancel() }

    func produce() {
        defer { queue.finish() }
        while !queue.isCancelled {
            var entries: [ImageEntry] = []
            var failures: [ImageFailure] = []
            while entries.count < batchSize, let entry = enumerator.next() {
                guard accept(entry) else { continue }
                if let problem = entry.problem {
                    failures.append(ImageFailure(id: entry.id, path: entry.path, reason: problem))
                } else if let first = seen[entry.id] {
                    failures.append(ImageFailure(id: entry.id, path: entry.path, reason: "duplicate id: \(first) has the same id"))
                } else {
                    seen[entry.id] = entry.path
                    entries.append(entry)
                }
            }
            if entries.isEmpty && failures.isEmpty { return }
            queue.push(prepare(entries, listingFailures: failures))
        }
    }

    /// Decodes `entries` in parallel into one buffer; keeps the successes in order, collects the failures.
    private func prepare(_ entries: [ImageEntry], listingFailures: [ImageFailure]) -> PreparedBatch {
        var failures = listingFailures
        var reasons = [String?](repeating: nil, count: entries.count)
        // Without a crop, the first image that decodes fixes the size of every image of the run.
        var probed: [RGBImage?] = []
        while size == nil && probed.count < entries.count {
            let index = probed.count
            do {
                let image = try TIFFDecoder.decode(path: entries[index].path)
                try Self.checkNetworkMinimum(image, preprocessing, path: entries[index].path)
                size = ImagePreparation.outputSize(width: image.width, height: image.height, preprocessing)
                probed.append(image)
            } catch {
                reasons[index] = Self.reason(error)
                probed.append(nil)
            }
        }
        let (height, width) = size ?? (0, 0)
        let imageFloats = height * width * 3
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(1, entries.count * imageFloats))
        let preprocessing = self.preprocessing
        let lanes = max(1, min(workers, entries.count))
        reasons.withUnsafeMutableBufferPointer { reasonSlots in
            let slots = reasonSlots  // each index is written by exactly one lane
            DispatchQueue.concurrentPerform(iterations: lanes) { lane in
                for index in stride(from: lane, to: entries.count, by: lanes) where slots[index] == nil {
                    let entry = entries[index]
                    do {
                        let image: RGBImage
                        if index < probed.count, let alreadyDecoded = probed[index] {
                            image = alreadyDecoded
                        } else {
                            image = try TIFFDecoder.decode(path: entry.path)
                        }
                        let out = ImagePreparation.outputSize(width: image.width, height: image.height, preprocessing)
                        if out != (height, width) {
                            throw FileError(entry.path, "is \(image.width)x\(image.height), but this run's images are \(width)x\(height) (use --crop)")
                        }
                        try ImagePreparation.prepare(image, preprocessing, into: buffer.baseAddress! + index * imageFloats, path: entry.path)
                    } catch {
                        slots[index] = Self.reason(error)
                    }
                }
            }
        }
        // Compact the successes to the front, in order.
        var ids: [String] = [], paths: [String] = []
        for (index, entry) in entries.enumerated() {
            if let reason = reasons[index] {
                failures.append(ImageFailure(id: entry.id, path: entry.path, reason: reason))
                continue
            }
            if ids.count != index {
                (buffer.baseAddress! + ids.count * imageFloats).update(from: buffer.baseAddress! + index * imageFloats, count: imageFloats)
            }
            ids.append(entry.id)
            paths.append(entry.path)
        }
        return PreparedBatch(ids: ids, paths: paths, height: height, width: width, failures: failures, pixels: buffer)
    }

    /// The network needs at least 32x32 pixels (PyTorch fails below: layer4 would be empty).
    static func checkNetworkMinimum(_ image: RGBImage, _ preprocessing: Preprocessing, path: String) throws {
        let (height, width) = ImagePreparation.outputSize(width: image.width, height: image.height, preprocessing)
        let minimum = ModelConfig.minimumInputSide
        if preprocessing.crop == 0 && min(height, width) < minimum {
            throw FileError(path, "is \(image.width)x\(image.height), smaller than the network's smallest input \(minimum)x\(minimum)")
        }
    }

    /// The one-line reason, without the path (the failure record carries it).
    static func reason(_ error: Error) -> String {
        (error as? FileError)?.problem ?? "\(error)"
    }
}
