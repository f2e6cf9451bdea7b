import Foundation
import ResNetData
import TestSupport
import XCTest

/// infer-slide on slides written by the test through libtiff: the same logits as batch-infer on the tiles as
/// files, level-0 coordinates, tissue detection, resume, heatmaps, refusals.
final class InferSlideTests: XCTestCase, UsesDefaultFixtures {
    /// Data rows of a CSV without quoted fields; header checked.
    func rows(_ url: URL, header: String, file: StaticString = #filePath, line: UInt = #line) throws -> [[String]] {
        let lines = try String(contentsOf: url, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(lines.first.map(String.init), header, file: file, line: line)
        XCTAssertEqual(lines.last, "", "the file must end with a line break", file: file, line: line)
        return lines.dropFirst().dropLast().map { $0.split(separator: ",").map(String.init) }
    }

    /// A 3-level pyramid (SubIFDs, Deflate, 64-pixel tiles): glass left of x = 200, tissue right of it.
    func makeSlide(_ dir: URL) throws -> (path: String, level0: TestSlide.Level) {
        let level0 = TestSlide.glassAndTissue(width: 448, height: 320, tissueFrom: 200)
        let level1 = TestSlide.halve(level0)
        let path = dir.appendingPathComponent("slide.tif").path
        try TestSlide.write(path, levels: [level0, level1, TestSlide.halve(level1)], block: 64)
        return (path, level0)
    }

    func testTilesMatchBatchInferOnTheSameTilesAsFiles() throws {
        let dir = try CLI.temporaryDirectory(self)
        let (slide, level0) = try makeSlide(dir)
        let out = dir.appendingPathComponent("tiles.csv")
        let result = try CLI.run(["infer-slide", slide, "--out", out.path, "--model", Self.model, "--tile", "96", "--stride", "80",
                                  "--tissue", "none", "--batch-size", "7"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stderr.contains("levels 0: 448x320, 1: 224x160, 2: 112x80"), result.stderr)
        XCTAssertTrue(result.stderr.contains("5x3 tiles of 96 px every 80 px"), result.stderr)
        let got = try rows(out, header: "x,y,logit_0,logit_1,label")
        // Every grid cell once: x in 0, 80, …, 320; y in 0, 80, 160.
        let corners = Set(got.map { "\($0[0]),\($0[1])" })
        XCTAssertEqual(got.count, 15)
        XCTAssertEqual(corners, Set((0..<3).flatMap { r in (0..<5).map { c in "\(c * 80),\(r * 80)" } }))

        // The same tiles as TIFF files through batch-infer.
        let tiles = dir.appendingPathComponent("tiles")
        try FileManager.default.createDirectory(at: tiles, withIntermediateDirectories: true)
        for (x, y) in [(0, 0), (160, 80), (240, 160), (320, 0)] {
            try TestSlide.write(tiles.appendingPathComponent("\(x)_\(y).tif").path, levels: [TestSlide.cut(level0, x: x, y: y, side: 96)],
                                block: 8, tiled: false, compression: 1, bigTIFF: false)
        }
        let reference = dir.appendingPathComponent("reference.csv")
        let batch = try CLI.run(["batch-infer", tiles.path, "--out", reference.path, "--model", Self.model, "--quiet"])
        XCTAssertEqual(batch.status, 0, batch.stderr)
        let expected = try rows(reference, header: "id,logit_0,logit_1,label")
        XCTAssertEqual(expected.count, 4)
        let byCorner = Dictionary(uniqueKeysWithValues: got.map { ("\($0[0])_\($0[1])", $0) })
        var worst: Float = 0
        for e in expected {
            guard let g = byCorner[e[0]] else { XCTFail("no row for \(e[0])"); continue }
            XCTAssertEqual(g[4], e[3], "label of \(e[0])")
            let a = [Float(g[2])!, Float(g[3])!], b = [Float(e[1])!, Float(e[2])!]
            worst = max(worst, relativeError(a, b))
        }
        XCTAssertLessThan(worst, 1e-4)
    }

    /// `--precision bf16` on a trained model (the 10-class digits fixture; the random-weight default model's logits
    /// move 12 % under bf16 in batch-infer too): the same tiles as fp32, logits within bf16's 2e-2 (and not
    /// fp32's); int8 without activation ranges is refused in one line that names `resnetkit quantize`, before
    /// anything is written.
    func testPrecisionBF16MatchesFP32AndInt8NeedsQuantize() throws {
        let dir = try CLI.temporaryDirectory(self)
        let (slide, _) = try makeSlide(dir)
        let digits = CLI.repository.appendingPathComponent("fixtures/digits/model.safetensors").path
        let header = "x,y," + (0..<10).map { "logit_\($0)" }.joined(separator: ",") + ",label"
        var tables: [String: [String: [Float]]] = [:]
        for precision in ["fp32", "bf16"] {
            let out = dir.appendingPathComponent("\(precision).csv")
            let result = try CLI.run(["infer-slide", slide, "--out", out.path, "--model", digits, "--tile", "64", "--tissue", "none",
                                      "--precision", precision, "--quiet"])
            XCTAssertEqual(result.status, 0, result.stderr)
            tables[precision] = Dictionary(uniqueKeysWithValues: try rows(out, header: header).map {
                ("\($0[0]),\($0[1])", $0[2..<12].map { Float($0)! })
            })
        }
        let fp32 = try XCTUnwrap(tables["fp32"]), bf16 = try XCTUnwrap(tables["bf16"])
        XCTAssertEqual(Set(fp32.keys), Set(bf16.keys))
        XCTAssertEqual(fp32.count, 35)
        let keys = fp32.keys.sorted()
        let error = relativeError(keys.flatMap { bf16[$0]! }, keys.flatMap { fp32[$0]! })
        XCTAssertLessThan(error, 2e-2)
        XCTAssertGreaterThan(error, 1e-6, "bf16 gave fp32's logits")
        let refused = dir.appendingPathComponent("int8.csv")
        let int8 = try CLI.run(["infer-slide", slide, "--out", refused.path, "--model", digits, "--precision", "int8"])
        XCTAssertEqual(int8.status, 1, int8.stderr)
        XCTAssertTrue(int8.stderr.contains("error: ") && int8.stderr.contains("resnetkit quantize"), int8.stderr)
        XCTAssertEqual(int8.stderr.split(separator: "\n").filter { $0.hasPrefix("error: ") }.count, 1, int8.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: refused.path), "nothing written")
    }

    /// Level 1: the grid is on level 1's pixels, the CSV's corners are level 0's.
    func testLevelOneReportsLevelZeroCoordinates() throws {
        let dir = try CLI.temporaryDirectory(self)
        let (slide, _) = try makeSlide(dir)
        let out = dir.appendingPathComponent("tiles.csv")
        let result = try CLI.run(["infer-slide", slide, "--out", out.path, "--model", Self.model, "--level", "1", "--tile", "64",
                                  "--tissue", "none", "--crop", "0", "--quiet"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stderr, "")
        let got = try rows(out, header: "x,y,logit_0,logit_1,label")
        XCTAssertEqual(Set(got.map { "\($0[0]),\($0[1])" }), ["0,0", "128,0", "256,0", "0,128", "128,128", "256,128"])
    }

    func testTissueAutoKeepsTissueAndDropsGlassAndDrawsHeatmaps() throws {
        let dir = try CLI.temporaryDirectory(self)
        let (slide, _) = try makeSlide(dir)
        let out = dir.appendingPathComponent("tiles.csv")
        let heat = dir.appendingPathComponent("heat.png"), overlay = dir.appendingPathComponent("overlay.png")
        let result = try CLI.run(["infer-slide", slide, "--out", out.path, "--model", Self.model, "--tile", "64",
                                  "--heatmap", heat.path, "--overlay", overlay.path])
        XCTAssertEqual(result.status, 0, result.stderr)
        let got = try rows(out, header: "x,y,logit_0,logit_1,label")
        let xs = Set(got.map { Int($0[0])! })
        // Tissue starts at x = 200: tiles from 192 hold 8 tissue columns of 64 (12.5 %), kept; glass tiles (x ≤ 128) dropped.
        XCTAssertEqual(xs, [192, 256, 320, 384])
        XCTAssertEqual(got.count, 4 * 5)
        XCTAssertTrue(result.stderr.contains("tissue: 20 of 35 tiles"), result.stderr)

        let png = try PNGFile.read(path: heat.path)
        XCTAssertEqual([png.width, png.height], [7, 5])
        for row in 0..<5 {
            for column in 0..<7 {
                let alpha = png.pixels[(row * 7 + column) * 4 + 3]
                XCTAssertEqual(alpha, column >= 3 ? 255 : 0, "cell \(column),\(row)")
            }
        }
        // The kept cells' colour is viridis of P(class 1).
        let first = got.first { $0[0] == "256" && $0[1] == "64" }!
        let p = 1 / (1 + exp(Double(first[2])! - Double(first[3])!))
        let colour = ColorMap.viridis(Float(p))
        let i = (1 * 7 + 4) * 4
        XCTAssertEqual([png.pixels[i], png.pixels[i + 1], png.pixels[i + 2]], [colour.0, colour.1, colour.2])
        let thumb = try PNGFile.read(path: overlay.path)
        XCTAssertEqual([thumb.width, thumb.height], [448, 320])
        // Glass away from any kept tile keeps its colour; a tissue pixel under a kept tile does not.
        XCTAssertEqual(thumb.pixels[(10 * 448 + 10) * 4 + 3], 255)
        XCTAssertLessThan(abs(Int(thumb.pixels[(10 * 448 + 10) * 4]) - 238), 5)

        // A threshold above every saturation keeps nothing: a header-only CSV.
        let none = dir.appendingPathComponent("none.csv")
        let strict = try CLI.run(["infer-slide", slide, "--out", none.path, "--model", Self.model, "--tile", "64", "--tissue-threshold", "1"])
        XCTAssertEqual(strict.status, 0, strict.stderr)
        XCTAssertTrue(strict.stderr.contains("tissue: 0 of 35 tiles (saturation threshold 1.000)"), strict.stderr)
        XCTAssertEqual(try rows(none, header: "x,y,logit_0,logit_1,label").count, 0)
    }

    func testResumeFinishesATornFileWithEveryTileOnce() throws {
        let dir = try CLI.temporaryDirectory(self)
        let (slide, _) = try makeSlide(dir)
        let full = dir.appendingPathComponent("full.csv"), partial = dir.appendingPathComponent("partial.csv")
        let options = ["--model", Self.model, "--tile", "64", "--tissue", "none", "--batch-size", "4", "--quiet"]
        XCTAssertEqual(try CLI.run(["infer-slide", slide, "--out", full.path] + options).status, 0)
        let text = try String(contentsOf: full, encoding: .utf8)
        let lines = text.split(separator: "\n")
        // Header, 9 rows and half of the 10th, as a kill leaves it.
        let torn = lines.prefix(10).joined(separator: "\n") + "\n" + lines[10].prefix(12)
        try torn.write(to: partial, atomically: true, encoding: .utf8)

        let refused = try CLI.run(["infer-slide", slide, "--out", partial.path] + options)
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("\(partial.path): already exists (use --resume"), refused.stderr)

        let heat = dir.appendingPathComponent("heat.png")
        let resumed = try CLI.run(["infer-slide", slide, "--out", partial.path, "--resume", "--heatmap", heat.path] + options.dropLast())
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(resumed.stderr.contains("resuming \(partial.path): 9 rows already there, removed a torn last line; 26 tiles to do"), resumed.stderr)
        let before = try rows(full, header: "x,y,logit_0,logit_1,label")
        let after = try rows(partial, header: "x,y,logit_0,logit_1,label")
        XCTAssertEqual(after.count, 35)
        XCTAssertEqual(Set(after.map { "\($0[0]),\($0[1])" }).count, 35)
        XCTAssertEqual(Array(after.prefix(9)), Array(before.prefix(9)))
        XCTAssertEqual(Set(after.map { "\($0[0]),\($0[1])" }), Set(before.map { "\($0[0]),\($0[1])" }))
        // The heatmap of a resumed run covers the rows of the first run too.
        let png = try PNGFile.read(path: heat.path)
        XCTAssertEqual((0..<35).filter { png.pixels[4 * $0 + 3] == 255 }.count, 35)
        let first = after[0]
        let p = 1 / (1 + exp(Double(first[2])! - Double(first[3])!))
        let colour = ColorMap.viridis(Float(p))
        let i = (Int(first[1])! / 64 * 7 + Int(first[0])! / 64) * 4
        XCTAssertEqual([png.pixels[i], png.pixels[i + 1], png.pixels[i + 2]], [colour.0, colour.1, colour.2])
    }

    /// A corrupt TIFF tile costs its grid cell only: the others are classified as in an intact slide (status 3).
    func testACorruptTileIsReportedAndTheRestClassified() throws {
        let dir = try CLI.temporaryDirectory(self)
        let level0 = TestSlide.glassAndTissue(width: 320, height: 192, tissueFrom: 100)
        let intact = dir.appendingPathComponent("intact.tif").path, broken = dir.appendingPathComponent("broken.tif").path
        try TestSlide.write(intact, levels: [level0], block: 64, bigTIFF: false)
        try TestSlide.write(broken, levels: [level0], block: 64, bigTIFF: false)
        // Classic TIFF from libtiff: the first tile's Deflate stream starts right after the 8-byte header.
        var data = try Data(contentsOf: URL(fileURLWithPath: broken))
        data.replaceSubrange(8..<300, with: Data(repeating: 0xA5, count: 292))
        try data.write(to: URL(fileURLWithPath: broken))
        let options = ["--model", Self.model, "--tile", "64", "--tissue", "none", "--batch-size", "4", "--threads", "2"]
        let good = dir.appendingPathComponent("good.csv"), bad = dir.appendingPathComponent("bad.csv")
        XCTAssertEqual(try CLI.run(["infer-slide", intact, "--out", good.path, "--quiet"] + options).status, 0)
        let result = try CLI.run(["infer-slide", broken, "--out", bad.path] + options)
        XCTAssertEqual(result.status, 3, result.stderr)
        XCTAssertTrue(result.stderr.contains("warning: tile at x 0, y 0 skipped: \(broken): level 0: truncated or corrupt tile at x 0, y 0"), result.stderr)
        XCTAssertTrue(result.stderr.contains("14 tiles, 1 failed"), result.stderr)
        let expected = try rows(good, header: "x,y,logit_0,logit_1,label").filter { !($0[0] == "0" && $0[1] == "0") }
        let got = try rows(bad, header: "x,y,logit_0,logit_1,label")
        // Same tiles in the same order; logits equal up to the last bits (the batches group other tiles).
        XCTAssertEqual(got.map { [$0[0], $0[1], $0[4]] }, expected.map { [$0[0], $0[1], $0[4]] })
        XCTAssertLessThan(relativeError(got.flatMap { [Float($0[2])!, Float($0[3])!] }, expected.flatMap { [Float($0[2])!, Float($0[3])!] }), 1e-5)
    }

    func testBadSlidesAndOptionsAreRefusedWithOneLine() throws {
        let dir = try CLI.temporaryDirectory(self)
        let (slide, _) = try makeSlide(dir)
        let out = dir.appendingPathComponent("tiles.csv").path
        let notTIFF = dir.appendingPathComponent("notes.tif")
        try Data("not a slide at all".utf8).write(to: notTIFF)
        let cases: [([String], String)] = [
            ([notTIFF.path], "\(notTIFF.path): not a TIFF image"),
            ([slide, "--level", "3"], "\(slide): has no level 3 (levels: 0: 448x320, 1: 224x160, 2: 112x80)"),
            ([slide, "--level", "2", "--tile", "96"], "\(slide): level 2: a 96-pixel tile is larger than the level (112x80)"),
            ([slide, "--tile", "40"], "the crop (49) is larger than the tile (40)"),
            ([slide, "--tissue", "some"], "The value 'some' is invalid for '--tissue <auto|none>'. Please provide one of 'auto' and 'none'."),
            ([slide, "--heatmap", "heat.jpg"], "--heatmap writes a PNG"),
        ]
        for (arguments, message) in cases {
            let result = try CLI.run(["infer-slide"] + arguments + ["--out", out, "--model", Self.model])
            XCTAssertEqual(result.status, 1, "\(arguments)")
            XCTAssertTrue(result.stderr.contains(message), "\(arguments): \(result.stderr)")
            XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, result.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "nothing written for \(arguments)")
        }
    }
}
