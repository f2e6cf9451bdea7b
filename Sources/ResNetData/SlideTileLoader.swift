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

/// Reads a slide's grid cells in the given order on background threads (one reader per worker, each taking a
/// contiguous share of every batch), about two batches ahead of the consumer,
/// and prepares each tile exactly as `PrefetchingLoader` prepares an image file: 8-bit samples / 255, then
/// `ImagePreparation.prepare` (centre crop, channel order, normalisation). Memory: the readers' block caches plus
/// (queueDepth + 2) batches. `cancel()` stops the producer (the consumer calls it when it stops early).
public final class SlideTileLoader: @unchecked Sendable {
    private let readers: [SlideReader]
    private let level: Int
    private let grid: SlideGrid
    private let cells: [GridCell]
    private let preprocessing: Preprocessing
    private let batchSize: Int
    private let queue: BatchQueue<SlideBatch>

    /// Takes the readers over (one per decoding worker, all of the same slide): the loader's threads are their
    /// only users from now on.
    public init(readers: [SlideReader], level: Int, grid: SlideGrid, cells: [GridCell], preprocessing: Preprocessing,
                batchSize: Int, queueDepth: Int = 2) {
        precondition(batchSize > 0 && queueDepth > 0 && !readers.isEmpty)
        precondition(preprocessing.crop <= grid.tile)
        self.readers = readers
        self.level = level
        self.grid = grid
        self.cells = cells
        self.preprocessing = preprocessing
        self.batchSize = batchSize
        queue = BatchQueue(depth: queueDepth)
        for reader in readers {
            reader.cacheCapacity = reader.cacheBlocks(level: level, regionHeight: grid.tile,
                                                      bandWidth: grid.bandColumns(for: reader.levels[level], workers: readers.count) * grid.stride + grid.tile)
        }
        let thread = Thread { [self] in produce() }
        thread.name = "slide reader"
        thread.start()
    }

    deinit { cancel() }

    public func next() -> SlideBatch? { queue.next() }

    public func cancel() { queue.cancel() }

    private func produce() {
        defer { queue.finish() }
        let tile = grid.tile
        let (height, width) = ImagePreparation.outputSize(width: tile, height: tile, preprocessing)
        let imageFloats = height * width * 3
        let scale: Float = 1 / 255  // TIFFDecoder's factor for 8-bit samples
        let raws = readers.map { _ in UnsafeMutableBufferPointer<UInt8>.allocate(capacity: tile * tile * 3) }
        let bandColumns = grid.bandColumns(for: readers[0].levels[level], workers: readers.count)
        defer { raws.forEach { $0.deallocate() } }
        var start = 0
        while start < cells.count && !queue.isCancelled {
            let chunk = Array(cells[start..<min(cells.count, start + batchSize)])
            start += chunk.count
            let pixels = UnsafeMutableBufferPointer<Float>.allocate(capacity: chunk.count * imageFloats)
            let reasons = UnsafeMutableBufferPointer<String?>.allocate(capacity: chunk.count)
            reasons.initialize(repeating: nil)
            defer { reasons.deinitialize(); reasons.deallocate() }
            // Workers split the band's width: each reads the tiles in its vertical strip of the band with its own
            // reader (own libtiff handle and cache), so a TIFF tile is decoded by one worker, not by all.
            let workers = readers.count
            var shares = [[Int]](repeating: [], count: workers)
            for (j, cell) in chunk.enumerated() { shares[grid.worker(cell, band: bandColumns, workers: workers)].append(j) }
            DispatchQueue.concurrentPerform(iterations: workers) { w in
                guard !shares[w].isEmpty else { return }
                let reader = readers[w], raw = raws[w]
                var image = RGBImage(width: tile, height: tile, pixels: [Float](repeating: 0, count: tile * tile * 3))
                for j in shares[w] {
                    let (x, y) = grid.origin(chunk[j])
                    do {
                        try reader.read(level: level, x: x, y: y, width: tile, height: tile, into: raw.baseAddress!)
                        // The same arithmetic as an 8-bit TIFF file's decoding, so the network sees the same floats.
                        image.pixels.withUnsafeMutableBufferPointer { out in
                            for i in 0..<out.count { out[i] = Float(raw[i]) * scale }
                        }
                        try ImagePreparation.prepare(image, preprocessing, into: pixels.baseAddress! + j * imageFloats, path: reader.path)
                    } catch {
                        reasons[j] = "\(error)"
                    }
                }
            }
            // Failed tiles leave holes: close them so the batch's images stay contiguous and in order.
            var done: [GridCell] = [], failures: [(cell: GridCell, reason: String)] = []
            for (j, cell) in chunk.enumerated() {
                if let reason = reasons[j] {
                    failures.append((cell, reason))
                    continue
                }
                if done.count != j {
                    (pixels.baseAddress! + done.count * imageFloats).update(from: pixels.baseAddress! + j * imageFloats, count: imageFloats)
                }
                done.append(cell)
            }
            queue.push(SlideBatch(cells: done, height: height, width: width, failures: failures, pixels: pixels))
        }
    }
}
