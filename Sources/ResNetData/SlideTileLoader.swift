import Foundation
import ResNetModel
import ResNetSupport

/// A batch of a slide's tiles, prepared for the network: NHWC [count, height, width, 3], plus the cells whose
/// tiles could not be read (a corrupt TIFF tile) and why.
public final class SlideBatch: @unchecked Sendable {
    public let cells: [GridCell]
    public let height: Int, width: Int
    public let failures: [(cell: GridCell, reason: String)]
    /// cells.count · height · width · 3 floats, owned by the batch.
    public let pixels: UnsafeMutableBufferPointer<Float>
    public var count: Int { cells.count }

    init(cells: [GridCell], height: Int, width: Int, failures: [(cell: GridCell, reason: String)],
         pixels: UnsafeMutableBufferPointer<Float>) {
        self.cells = cells
        self.height = height
        self.width = width
        self.failures = failures
        self.pixels = pixels
    }

    deinit { pixels.deallocate() }
}

/// Reads a slide's grid cells in the given order on a background thread, about two batches ahead of the consumer,
/// and prepares each tile exactly as `PrefetchingLoader` prepares an image file: 8-bit samples / 255, then
/// `ImagePreparation.prepare` (centre crop, channel order, normalisation). Memory: the reader's block cache plus
/// (queueDepth + 2) batches. `cancel()` stops the producer (the consumer calls it when it stops early).
public final class SlideTileLoader: @unchecked Sendable {
    private let reader: SlideReader
    private let level: Int
    private let grid: SlideGrid
    private let cells: [GridCell]
    private let preprocessing: Preprocessing
    private let batchSize: Int
    private let queueDepth: Int
    private let condition = NSCondition()
    private var queue: [SlideBatch] = []
    private var finished = false
    private var cancelled = false

    /// Takes the reader over: the loader's thread is its only user from now on.
    public init(reader: SlideReader, level: Int, grid: SlideGrid, cells: [GridCell], preprocessing: Preprocessing,
                batchSize: Int, queueDepth: Int = 2) {
        precondition(batchSize > 0 && queueDepth > 0)
        precondition(preprocessing.crop <= grid.tile)
        self.reader = reader
        self.level = level
        self.grid = grid
        self.cells = cells
        self.preprocessing = preprocessing
        self.batchSize = batchSize
        self.queueDepth = queueDepth
        reader.cacheCapacity = reader.cacheBlocks(level: level, regionHeight: grid.tile,
                                                  bandWidth: grid.bandColumns(for: reader.levels[level]) * grid.stride + grid.tile)
        let thread = Thread { [self] in produce() }
        thread.name = "slide reader"
        thread.start()
    }

    deinit { cancel() }

    public func next() -> SlideBatch? {
        condition.lock()
        defer { condition.unlock() }
        while queue.isEmpty && !finished { condition.wait() }
        guard !queue.isEmpty else { return nil }
        let batch = queue.removeFirst()
        condition.broadcast()
        return batch
    }

    public func cancel() {
        condition.lock()
        cancelled = true
        queue.removeAll()
        condition.broadcast()
        condition.unlock()
    }

    private var isCancelled: Bool {
        condition.lock()
        defer { condition.unlock() }
        return cancelled
    }

    private func produce() {
        defer {
            condition.lock()
            finished = true
            condition.broadcast()
            condition.unlock()
        }
        let tile = grid.tile
        let (height, width) = ImagePreparation.outputSize(width: tile, height: tile, preprocessing)
        let imageFloats = height * width * 3
        var raw = [UInt8](repeating: 0, count: tile * tile * 3)
        var image = RGBImage(width: tile, height: tile, pixels: [Float](repeating: 0, count: tile * tile * 3))
        let scale: Float = 1 / 255  // TIFFDecoder's factor for 8-bit samples
        var start = 0
        while start < cells.count && !isCancelled {
            let chunk = cells[start..<min(cells.count, start + batchSize)]
            start += chunk.count
            let pixels = UnsafeMutableBufferPointer<Float>.allocate(capacity: chunk.count * imageFloats)
            var done: [GridCell] = [], failures: [(cell: GridCell, reason: String)] = []
            for cell in chunk {
                let (x, y) = grid.origin(cell)
                do {
                    try raw.withUnsafeMutableBufferPointer {
                        try reader.read(level: level, x: x, y: y, width: tile, height: tile, into: $0.baseAddress!)
                    }
                    // The same arithmetic as an 8-bit TIFF file's decoding, so the network sees the same floats.
                    image.pixels.withUnsafeMutableBufferPointer { out in
                        for i in 0..<out.count { out[i] = Float(raw[i]) * scale }
                    }
                    try ImagePreparation.prepare(image, preprocessing, into: pixels.baseAddress! + done.count * imageFloats,
                                                 path: reader.path)
                    done.append(cell)
                } catch {
                    failures.append((cell, "\(error)"))
                }
            }
            let batch = SlideBatch(cells: done, height: height, width: width, failures: failures, pixels: pixels)
            condition.lock()
            while queue.count >= queueDepth && !cancelled { condition.wait() }
            if !cancelled { queue.append(batch) }
            condition.broadcast()
            condition.unlock()
        }
    }
}
