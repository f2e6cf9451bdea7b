import ArgumentParser
import Foundation
import ResNetData
import ResNetDNNL
import ResNetFormats
import ResNetModel
import ResNetSupport

/// `resnetkit infer-slide SLIDE --out CSV`: a whole-slide TIFF cut into a grid of tiles, each classified;
/// streamed, resumable, with an optional heatmap and overlay.
struct InferSlide: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "infer-slide",
        abstract: "Classify a whole-slide TIFF tile by tile; write a CSV row per tile and optional heatmap PNGs.",
        discussion: """
            Examples:
              resnetkit infer-slide slide.tif --out tiles.csv --model finetuned.safetensors --heatmap heat.png
              resnetkit infer-slide slide.tif --out tiles.csv --level 1 --tile 96 --stride 48 --overlay overlay.png
              resnetkit infer-slide slide.tif --out tiles.csv --resume          # after a crash or kill -9

            The slide: a tiled or stripped TIFF or BigTIFF, 8-bit RGB (none, LZW, Deflate, PackBits or JPEG), read \
            through libtiff one TIFF tile or strip at a time, so memory does not grow with the slide. Level 0 is the \
            first image; the other pyramid levels are its SubIFDs and the later images with the same aspect ratio, \
            largest first (the command lists them).

            The grid: tiles of --tile pixels every --stride pixels (default: the tile) from (0, 0) of --level; a \
            tile must lie wholly inside the level. Each tile is prepared exactly as batch-infer prepares an image \
            file (centre crop, channel order, normalisation from the model or the options), so its logits are \
            those of batch-infer on the tile saved as a TIFF.

            --tissue auto (default) skips glass: on a thumbnail of the slide (from the smallest level at least 2048 \
            pixels long, averaged down to at most 2048), each pixel's HSV saturation (max - min) / max is compared \
            with a threshold, Otsu's on the saturation histogram but at least 0.05 (--tissue-threshold sets it); a \
            tile is kept when at least 10% of its footprint is tissue. --tissue none keeps every tile.

            Output: header x,y,logit_0,...,logit_{K-1},label with x, y the level-0 pixel coordinates of the tile's \
            top-left corner; rows are appended batch by batch (in vertical bands of up to about 2048 pixels, row \
            by row within a band). --resume cuts off a torn last line and does only the tiles not in the file; without \
            it an existing output is refused.

            --heatmap: a PNG with one pixel per grid cell, P(class 1) (for more than 2 classes, the top class's \
            probability) in the viridis colour map (dark blue 0, yellow 1), skipped tiles transparent. --overlay: \
            the same colours at 50% over the slide's thumbnail.

            Exit status: 0 done; 1 a fatal error (bad option, slide, model or output file); 3 finished, but some \
            tiles could not be read (named on stderr; --resume retries them); 64 unparsable arguments.
            """)

    @Argument(help: "The slide: a TIFF or BigTIFF, tiled or stripped, optionally pyramidal.")
    var slide: String

    @Option(help: "The CSV to write.")
    var out: String

    @Option(help: ArgumentHelp("Checkpoint, ONNX or HDF5 model (default: the newer of finetuned.safetensors and model.safetensors here).", valueName: "CKPT"))
    var model: String?

    @Option(help: "Tile side in pixels of the chosen level.")
    var tile = 96

    @Option(help: "Pixels between the corners of neighbouring tiles (default: the tile side).")
    var stride: Int?

    @Option(help: "Pyramid level (0: full resolution).")
    var level = 0

    @Option(help: ArgumentHelp("auto (skip glass) or none (every tile).", valueName: "auto|none"))
    var tissue = TissueChoice.auto

    @Option(name: .customLong("tissue-threshold"), help: ArgumentHelp("Saturation above which a thumbnail pixel is tissue, 0...1 (default: Otsu's, at least 0.05).", valueName: "X"))
    var tissueThreshold: Float?

    @Option(help: ArgumentHelp("PNG heatmap, one pixel per grid cell.", valueName: "PNG"))
    var heatmap: String?

    @Option(help: ArgumentHelp("PNG of the heatmap over the slide's thumbnail.", valueName: "PNG"))
    var overlay: String?

    @Option(name: .customLong("batch-size"), help: "Tiles per GEMM batch.")
    var batchSize = 64

    @Option(help: "Threads: lanes for the network and tile decoders (default: all cores).")
    var threads: Int?

    @Option(help: EngineChoice.help)
    var precision = Precision.fp32

    @OptionGroup(title: "Preprocessing")
    var preprocessingOptions: PreprocessingOptions

    @Flag(help: "Continue an interrupted run: keep the rows already written, do the rest.")
    var resume = false

    @Flag(help: "No progress bar or summary (errors still go to stderr).")
    var quiet = false

    /// Thumbnail size for tissue detection and the overlay.
    static let thumbnailSide = 2048
    /// Share of a tile's footprint that must be tissue for the tile to be kept.
    static let minimumTissueFraction: Float = 0.1

    /// `--tissue`: which tiles are classified.
    enum TissueChoice: String, ExpressibleByArgument, CaseIterable {
        case auto, none
    }

    func validate() throws {
        guard tile >= 1 else { throw UsageError("--tile must be at least 1") }
        if let stride { guard stride >= 1 else { throw UsageError("--stride must be at least 1") } }
        guard level >= 0 else { throw UsageError("--level must be 0 or more") }
        guard batchSize >= 1 else { throw UsageError("--batch-size must be at least 1") }
        if let threads, threads < 1 { throw UsageError("--threads must be at least 1") }
        if let tissueThreshold {
            guard tissue == .auto else { throw UsageError("--tissue-threshold applies to --tissue auto only") }
            guard tissueThreshold >= 0 && tissueThreshold <= 1 else { throw UsageError("--tissue-threshold must be between 0 and 1") }
        }
        for (path, name) in [(heatmap, "--heatmap"), (overlay, "--overlay")] {
            if let path, !path.lowercased().hasSuffix(".png") { throw UsageError("\(name) writes a PNG: give a .png file name, not '\(path)'") }
        }
    }

    func run() throws {
        Console.quiet = quiet
        let stride = self.stride ?? tile

        // The slide first: a wrong slide or level is the likeliest mistake, and cheap to find.
        let reader = try SlideReader(path: slide)
        guard level < reader.levels.count else {
            throw FileError(slide, "has no level \(level) (levels: \(Self.describe(reader.levels)))")
        }
        let chosen = reader.levels[level]
        let grid: SlideGrid
        do { grid = try SlideGrid(level: chosen, levelZero: reader.levels[0], tile: tile, stride: stride) } catch let error as SlideGrid.GridError {
            throw FileError(slide, "level \(level): \(error.description)")
        }

        let modelPath = try model ?? BatchInfer.defaultModel()
        let checkpoint = try ModelImporter.load(path: modelPath).checkpoint
        let preprocessing = try preprocessingOptions.applied(to: checkpoint.preprocessing)
        guard preprocessing.crop <= tile else {
            throw UsageError("the crop (\(preprocessing.crop)) is larger than the tile (\(tile)): use a larger --tile or a smaller --crop")
        }
        guard preprocessing.crop > 0 || tile >= ModelConfig.minimumInputSide else {
            throw UsageError("--tile must be at least \(ModelConfig.minimumInputSide) (the network's smallest input) without a crop")
        }
        let classes = checkpoint.config.numClasses
        // The engine before any output: a refused precision (int8 without ranges, a CPU oneDNN cannot serve)
        // leaves nothing behind.
        let threadCount = threads ?? ProcessInfo.processInfo.activeProcessorCount
        BLASRuntime.setThreads(threadCount)
        Parallelism.threads = threadCount
        let engine = try EngineChoice.make(precision, checkpoint: checkpoint, modelPath: modelPath, threads: threadCount)

        let header = ["x", "y"] + (0..<classes).map { "logit_\($0)" } + ["label"]
        let output = try AppendableCSV(path: out, header: header, existing: resume ? .resume : .refuse)
        // Scores (for the heatmaps) of the rows already written, by level-0 corner.
        var previous: [String: Float] = [:]
        for record in output.existingRecords {
            let logits = record[2..<(2 + classes)].compactMap { Float($0) }
            guard logits.count == classes else { throw FileError(out, "row \(record[0]),\(record[1]) has a logit that is not a number") }
            previous[record[0] + "," + record[1]] = Self.score(logits[...])
        }

        Console.info("infer-slide: \(slide): levels \(Self.describe(reader.levels)); level \(level), "
                     + "\(grid.columns)x\(grid.rows) tiles of \(tile) px every \(stride) px")
        Console.info("infer-slide: model \(modelPath)\(model == nil ? " (newest default model in this folder)" : "")")

        var thumbnail: (level: Int, width: Int, height: Int, pixels: [UInt8])?
        if tissue == .auto || overlay != nil { thumbnail = try reader.thumbnail(maxSide: Self.thumbnailSide) }
        var mask: TissueMask?
        if tissue == .auto, let thumbnail {
            mask = TissueMask(thumbnail: thumbnail.pixels, width: thumbnail.width, height: thumbnail.height, threshold: tissueThreshold)
        }
        var scores = [Float](repeating: .nan, count: grid.count)
        var tissueCells = 0
        let cells = grid.order(bandColumns: grid.bandColumns(for: chosen, workers: threadCount)) { cell in
            if let mask {
                let (x, y) = grid.origin(cell)
                guard mask.fraction(x: x, y: y, width: tile, height: tile, levelWidth: grid.levelWidth,
                                    levelHeight: grid.levelHeight) >= Self.minimumTissueFraction else { return false }
            }
            tissueCells += 1
            let (x0, y0) = grid.levelZeroOrigin(cell)
            if let score = previous["\(x0),\(y0)"] {
                scores[grid.index(cell)] = score
                return false
            }
            return true
        }
        if let mask {
            Console.info(String(format: "infer-slide: tissue: %d of %d tiles (saturation threshold %.3f%@)", tissueCells, grid.count,
                                mask.threshold, tissueThreshold == nil ? ", Otsu's" : ""))
        }
        if resume {
            let torn = output.removedTornBytes > 0 ? ", removed a torn last line" : ""
            Console.info("infer-slide: resuming \(out): \(output.existingRecords.count) rows already there\(torn); \(cells.count) tiles to do")
        }

        // Decoders: as many as the network's threads, each with its own libtiff handle.
        let readers = try [reader] + (1..<threadCount).map { _ in try SlideReader(path: slide) }
        let loader = SlideTileLoader(readers: readers, level: level, grid: grid, cells: cells, preprocessing: preprocessing,
                                     batchSize: batchSize)
        defer { loader.cancel() }
        let progress = ProgressBar(label: "infer-slide", unit: "tiles")
        progress.setTotal(cells.count)
        let classifier = BatchClassifier(engine: engine, classes: classes, batchSize: batchSize)
        // Every tile has the same size.
        try classifier.prepare(batch: min(batchSize, cells.count), side: preprocessing.crop > 0 ? preprocessing.crop : tile)
        var processed = 0, failed = 0
        try classifier.forEachBatch(loader.next) { batch, logits in
            if batch.count > 0 {
                try output.write(PredictionRows.format(count: batch.count) { n, line in
                    let (x, y) = grid.levelZeroOrigin(batch.cells[n])
                    let row = logits[(n * classes)..<((n + 1) * classes)]
                    line.append("\(x),\(y)")
                    line.appendFields(row)
                    line.append(",\(argmax(row))\n")
                })
                for (n, cell) in batch.cells.enumerated() {
                    scores[grid.index(cell)] = Self.score(logits[(n * classes)..<((n + 1) * classes)])
                }
                processed += batch.count
            }
            for failure in batch.failures {
                let (x, y) = grid.levelZeroOrigin(failure.cell)
                Console.warning("tile at x \(x), y \(y) skipped: \(failure.reason)")
            }
            failed += batch.failures.count
            progress.update(done: processed + failed, failed: failed)
        }
        progress.finish()
        Console.debug("infer-slide: \(readers.map(\.blocksDecoded).reduce(0, +)) TIFF \(chosen.tiled ? "tiles" : "strips") decoded by \(readers.count) readers")
        let rate = progress.elapsed > 0 ? Double(processed) / progress.elapsed : 0
        Console.info(String(format: "infer-slide: %d tiles, %d failed, %.1f tiles/s, wrote %@", processed, failed, rate, out))

        if let heatmap {
            try PNGFile.write(path: heatmap, width: grid.columns, height: grid.rows, channels: 4,
                              pixels: SlideHeatmap.render(scores: scores, grid: grid))
            Console.info("infer-slide: wrote \(heatmap) (\(grid.columns)x\(grid.rows), viridis; transparent: skipped)")
        }
        if let overlay, let thumbnail {
            let pixels = SlideHeatmap.overlay(thumbnail: thumbnail.pixels, width: thumbnail.width, height: thumbnail.height,
                                              scores: scores, grid: grid)
            try PNGFile.write(path: overlay, width: thumbnail.width, height: thumbnail.height, channels: 3, pixels: pixels)
            Console.info("infer-slide: wrote \(overlay) (\(thumbnail.width)x\(thumbnail.height))")
        }
        if failed > 0 { throw ExitCode(3) }
    }

    /// What the heatmap shows: P(class 1) for two classes, the top class's probability otherwise.
    static func score(_ logits: ArraySlice<Float>) -> Float {
        let p = softmax(logits)
        return Float(logits.count == 2 ? p[1] : p.max() ?? 0)
    }

    /// "0: 20000x16000, 1: 5000x4000"
    static func describe(_ levels: [SlideLevel]) -> String {
        levels.enumerated().map { "\($0.offset): \($0.element.width)x\($0.element.height)" }.joined(separator: ", ")
    }
}
