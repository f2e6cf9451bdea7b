import Foundation
import ResNetData
import ResNetModel
import ResNetSupport
import XCTest

final class ImageEnumeratorTests: XCTestCase {
    func testListsTIFFsCaseInsensitivelyInNameOrderWithSubfoldersAfterFiles() throws {
        let dir = try Fixtures.temporaryDirectory(self)
        for name in ["b.tif", "A.TIFF", "c.Tif", "notes.txt", "sub/z.tif", "sub/deeper/y.tiff", "other/x.tif"] {
            let url = dir.appendingPathComponent(name)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data().write(to: url)
        }
        let flat = Array(ImageEnumerator(paths: [dir.path], recursive: false))
        XCTAssertEqual(flat.map(\.id), ["A", "b", "c"])
        XCTAssertEqual(flat.map(\.path), ["A.TIFF", "b.tif", "c.Tif"].map { dir.path + "/" + $0 })
        let deep = Array(ImageEnumerator(paths: [dir.path], recursive: true))
        XCTAssertEqual(deep.map(\.id), ["A", "b", "c", "other/x", "sub/z", "sub/deeper/y"])
        // Files named explicitly are taken whatever their extension, in the order given.
        let explicit = Array(ImageEnumerator(paths: [dir.appendingPathComponent("notes.txt").path, dir.appendingPathComponent("b.tif").path],
                                             recursive: false))
        XCTAssertEqual(explicit.map(\.id), ["notes", "b"])
    }

    /// A folder bigger than one chunk comes out in full, each chunk sorted.
    func testLargeFoldersAreReadInChunks() throws {
        let dir = try Fixtures.temporaryDirectory(self)
        let count = ImageEnumerator.chunkSize + 10
        for i in 0..<count { FileManager.default.createFile(atPath: dir.appendingPathComponent("img\(i).tif").path, contents: nil) }
        let ids = ImageEnumerator(paths: [dir.path], recursive: false).map(\.id)
        XCTAssertEqual(ids.count, count)
        XCTAssertEqual(Set(ids).count, count)
    }
}

final class ShardTests: XCTestCase {
    /// Published FNV-1a 64 test vectors.
    func testFNV1aMatchesTheReferenceValues() {
        XCTAssertEqual(Shard.fnv1a(""), 0xcbf2_9ce4_8422_2325)
        XCTAssertEqual(Shard.fnv1a("a"), 0xaf63_dc4c_8601_ec8c)
        XCTAssertEqual(Shard.fnv1a("foobar"), 0x8594_4171_f739_67e8)
    }

    func testParsesExplicitAndEnvironmentShards() throws {
        XCTAssertEqual(try Shard.parse("2/5", environment: [:]), Shard(index: 2, count: 5))
        XCTAssertEqual(try Shard.parse("auto", environment: ["JOB_COMPLETION_INDEX": "3", "RESNETKIT_SHARD_COUNT": "8"]), Shard(index: 3, count: 8))
        XCTAssertEqual(try Shard.parse("auto", shardCount: 4, environment: ["JOB_COMPLETION_INDEX": "3"]), Shard(index: 3, count: 4))
        XCTAssertEqual(try Shard.parse("auto", environment: ["SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "5"]), Shard(index: 4, count: 5))
        XCTAssertEqual(try Shard.parse("auto", environment: ["SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "5"]),
                       Shard(index: 4, count: 5))
        for (spec, message) in [("5/5", "shard 5/5 does not exist (shards are 0…N−1 of N ≥ 1)"),
                                ("1-3", "--shard must be I/N (e.g. 0/4) or auto, not '1-3'"),
                                ("auto", "--shard auto needs JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID (Slurm job array)")] {
            XCTAssertThrowsError(try Shard.parse(spec, environment: [:])) { XCTAssertEqual("\($0)", message) }
        }
    }
}

final class ImagePreparationTests: XCTestCase {
    /// torchvision's CenterCrop rounds (side − crop) / 2 half to even: 96 → 49 starts at 24, 95 → 48 at 24, 97 → 48 at 24.
    func testCentreCropOffsetsFollowTorchvision() {
        XCTAssertEqual(ImagePreparation.centreCropOffset(side: 96, crop: 49), 24)
        XCTAssertEqual(ImagePreparation.centreCropOffset(side: 96, crop: 48), 24)
        XCTAssertEqual(ImagePreparation.centreCropOffset(side: 97, crop: 48), 24)
        XCTAssertEqual(ImagePreparation.centreCropOffset(side: 99, crop: 48), 26)
        XCTAssertEqual(ImagePreparation.centreCropOffset(side: 49, crop: 49), 0)
    }

    func testCropNormalisationAndChannelOrderByHand() throws {
        // 4x3 image; pixel (x, y) = (x/10, y/10, 0.5).
        var pixels: [Float] = []
        for y in 0..<3 { for x in 0..<4 { pixels += [Float(x) / 10, Float(y) / 10, 0.5] } }
        let image = RGBImage(width: 4, height: 3, pixels: pixels)
        var out = [Float](repeating: 0, count: 2 * 2 * 3)
        // Crop 2 of 4x3: left = round(1) = 1, top = round(0.5) = 0 (half to even).
        try ImagePreparation.prepare(image, Preprocessing(crop: 2, normalization: .imagenet, channelOrder: .bgr), into: &out, path: "p")
        // Output (0, 0) is source (1, 0) = (0.1, 0, 0.5); BGR puts blue first, normalised with blue's statistics.
        XCTAssertEqual(out[0], (0.5 - 0.406) / 0.225, accuracy: 1e-6)
        XCTAssertEqual(out[1], (0 - 0.456) / 0.224, accuracy: 1e-6)
        XCTAssertEqual(out[2], (0.1 - 0.485) / 0.229, accuracy: 1e-6)
        // Output (x 1, y 1) is source (2, 1) = (0.2, 0.1, 0.5), no normalisation, RGB.
        try ImagePreparation.prepare(image, Preprocessing(crop: 2, normalization: .none, channelOrder: .rgb), into: &out, path: "p")
        XCTAssertEqual(Array(out[9..<12]), [0.2, 0.1, 0.5])
        XCTAssertThrowsError(try ImagePreparation.prepare(image, Preprocessing(crop: 5), into: &out, path: "small.tif")) {
            XCTAssertEqual("\($0)", "small.tif: is 4x3, smaller than the crop 5")
        }
    }
}

final class AppendableCSVTests: XCTestCase {
    func testCompleteRecordsIgnoreLineBreaksInsideQuotes() {
        XCTAssertEqual(AppendableCSV.completeRecordsLength(Array("a,b\n\"x\ny\",1\n\"torn\n".utf8)), 12)
        XCTAssertEqual(AppendableCSV.completeRecordsLength(Array("a,b\n\"q\"\"\",1\n12".utf8)), 12)
        XCTAssertEqual(AppendableCSV.completeRecordsLength(Array("no line break".utf8)), 0)
    }

    func testResumeKeepsCompleteRecordsAndRejectsOtherColumns() throws {
        let dir = try Fixtures.temporaryDirectory(self)
        let path = dir.appendingPathComponent("out.csv").path
        try Data("id,v\n\"a\nb\",1\nc,2\nd,".utf8).write(to: URL(fileURLWithPath: path))
        let csv = try AppendableCSV(path: path, header: ["id", "v"], existing: .resume)
        XCTAssertEqual(csv.existingRecords, [["a\nb", "1"], ["c", "2"]])
        XCTAssertEqual(csv.removedTornBytes, 2)
        try csv.write("d,3\n")
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "id,v\n\"a\nb\",1\nc,2\nd,3\n")
        XCTAssertThrowsError(try AppendableCSV(path: path, header: ["id", "w"], existing: .resume)) {
            XCTAssertEqual("\($0)", "\(path): has the columns id,v but this run writes id,w (use the same options, or another output file); left unchanged")
        }
        XCTAssertThrowsError(try AppendableCSV(path: path, header: ["id", "v"], existing: .refuse)) {
            XCTAssertEqual("\($0)", "\(path): already exists (use --resume to continue it, or remove it)")
        }
        try Data("id,v\nx,1,2\n".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try AppendableCSV(path: path, header: ["id", "v"], existing: .resume)) {
            XCTAssertEqual("\($0)", "\(path): record 2 has 3 fields, expected 2; left unchanged")
        }
    }
}

final class PrefetchingLoaderTests: XCTestCase {
    /// Links to the 12 fixture images, `copies` times over.
    func imageFolder(copies: Int) throws -> URL {
        let dir = try Fixtures.temporaryDirectory(self)
        let images = Fixtures.directory.appendingPathComponent("images")
        let names = try FileManager.default.contentsOfDirectory(atPath: images.path).filter { $0.hasSuffix(".tif") }.sorted()
        for copy in 0..<copies {
            for name in names {
                try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent(String(format: "%04d-", copy) + name).path,
                                                           withDestinationPath: images.appendingPathComponent(name).path)
            }
        }
        return dir
    }

    /// Batches come in enumeration order, each image prepared exactly as ImagePreparation does it alone.
    func testBatchesArriveInOrderWithPreparedPixels() throws {
        let dir = try imageFolder(copies: 1)
        let entries = Array(ImageEnumerator(paths: [dir.path], recursive: false))
        let preprocessing = Preprocessing(crop: 49, normalization: .imagenet, channelOrder: .rgb)
        let loader = PrefetchingLoader(enumerator: ImageEnumerator(paths: [dir.path], recursive: false),
                                       preprocessing: preprocessing, batchSize: 5, workers: 3)
        var ids: [String] = []
        var counts: [Int] = []
        while let batch = loader.next() {
            counts.append(batch.count)
            XCTAssertEqual(batch.height, 49)
            for (n, path) in batch.paths.enumerated() {
                var single = [Float](repeating: 0, count: 49 * 49 * 3)
                try ImagePreparation.prepare(TIFFDecoder.decode(path: path), preprocessing, into: &single, path: path)
                XCTAssertEqual(Array(batch.pixels[(n * single.count)..<((n + 1) * single.count)]), single)
            }
            ids += batch.ids
        }
        XCTAssertEqual(counts, [5, 5, 2])
        XCTAssertEqual(ids, entries.map(\.id))
    }

    /// Without a consumer, the producer stops after filling the queue: it never runs through the folder.
    func testProducerStaysAFewBatchesAhead() throws {
        let dir = try imageFolder(copies: 10)
        final class Counter: @unchecked Sendable {
            let lock = NSLock()
            var value = 0
            func increment() { lock.lock(); value += 1; lock.unlock() }
            var current: Int { lock.lock(); defer { lock.unlock() }; return value }
        }
        let seen = Counter()
        let loader = PrefetchingLoader(enumerator: ImageEnumerator(paths: [dir.path], recursive: false),
                                       preprocessing: Preprocessing(crop: 49), batchSize: 4, workers: 2, queueDepth: 2,
                                       accept: { _ in seen.increment(); return true })
        usleep(300_000)
        // Two queued batches plus the one waiting to be queued.
        XCTAssertLessThanOrEqual(seen.current, 3 * 4)
        var total = 0
        while let batch = loader.next() { total += batch.count }
        XCTAssertEqual(total, 120)
        XCTAssertEqual(seen.current, 120)
    }

    func testFailuresAreReportedAndSkippedEntriesNeverDecoded() throws {
        let dir = try imageFolder(copies: 1)
        try FileManager.default.copyItem(atPath: Fixtures.tiff("bad_empty.tif"), toPath: dir.appendingPathComponent("0000-empty.tif").path)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        // A skipped bad file must not be reported: it is never decoded.
        try FileManager.default.copyItem(atPath: Fixtures.tiff("bad_empty.tif"), toPath: dir.appendingPathComponent("zzzz-skipped.tif").path)
        let skipped = Set(names.filter { !$0.contains("empty") }.prefix(3).map { String($0.dropLast(4)) } + ["zzzz-skipped"])
        let loader = PrefetchingLoader(enumerator: ImageEnumerator(paths: [dir.path], recursive: false),
                                       preprocessing: Preprocessing(crop: 0), batchSize: 64, workers: 2,
                                       accept: { !skipped.contains($0.id) })
        var ids: [String] = [], failures: [ImageFailure] = []
        while let batch = loader.next() {
            ids += batch.ids
            failures += batch.failures
            XCTAssertEqual(batch.height, 96)
        }
        XCTAssertEqual(failures, [ImageFailure(id: "0000-empty", path: dir.path + "/0000-empty.tif", reason: "the file is empty")])
        XCTAssertEqual(ids.count, 12 - 3)
        XCTAssertTrue(skipped.isDisjoint(with: ids))
    }
}
