import ResNetData
import ResNetModel

/// A batch of preprocessed images [count, height, width, 3] as a loader hands it out.
protocol ImageBatch {
    var count: Int { get }
    var height: Int { get }
    var width: Int { get }
    var pixels: UnsafeMutableBufferPointer<Float> { get }
}

extension PreparedBatch: ImageBatch {}
extension SlideBatch: ImageBatch {}

/// Runs a model over batches of preprocessed images: the one loop behind batch-infer, evaluate, infer-slide and
/// fine-tune's validation. Every batch goes through the checked engine (oneDNN failures are errors, not traps) and,
/// with test-time augmentation, the logits are the mean over the views.
struct BatchClassifier {
    let engine: any InferenceEngine
    let classes: Int
    let augmentation: TestTimeAugmentation
    /// Images per engine call once the views multiply a batch.
    let maxBatch: Int

    init(engine: any InferenceEngine, classes: Int, views: TTAViews = .one, batchSize: Int) {
        self.engine = engine
        self.classes = classes
        augmentation = TestTimeAugmentation(viewCount: views.rawValue)!
        maxBatch = max(batchSize, 64)
    }

    /// Builds the engine for batches of `batch` images of `side` x `side` before the first arrives (oneDNN's
    /// primitives and packed weights, while the decoders read the first images; nothing to do for fp32). Not with
    /// test-time augmentation, whose views change the engine's batch sizes; not when the side is unknown (0).
    func prepare(batch: Int, side: Int) throws {
        guard side > 0, batch > 0, augmentation.views.count == 1 else { return }
        try engine.checkedPrepare(batch: batch, height: side, width: side)
    }

    /// Logits [count, classes] of images [count, height, width, 3] into `logits`.
    func classify(images: UnsafePointer<Float>, count: Int, height: Int, width: Int, into logits: UnsafeMutablePointer<Float>) throws {
        try augmentation.meanLogits(images: images, count: count, height: height, width: width, classes: classes,
                                    maxBatch: maxBatch, into: logits) {
            try engine.checkedRun(images: $0, count: $1, height: $2, width: $3, logits: $4)
        }
    }

    /// Logits [batch.count, classes] of one batch.
    func logits(of batch: some ImageBatch) throws -> [Float] {
        var logits = [Float](repeating: 0, count: batch.count * classes)
        guard batch.count > 0 else { return logits }
        try logits.withUnsafeMutableBufferPointer {
            try classify(images: batch.pixels.baseAddress!, count: batch.count, height: batch.height, width: batch.width,
                         into: $0.baseAddress!)
        }
        return logits
    }

    /// Calls `body(batch, logits)` for every batch `next()` returns, until it returns nil. Batches that hold only
    /// failures are handed over too (with no logits), so the caller can report them.
    func forEachBatch<Batch: ImageBatch>(_ next: () -> Batch?, _ body: (Batch, [Float]) throws -> Void) throws {
        while let batch = next() {
            try body(batch, try logits(of: batch))
        }
    }
}
