import Foundation
import ResNetData
import ResNetFormats
import TestSupport
import XCTest

/// explain's Grad-CAM maps against PyTorch's autograd (fixtures/gradcam/reference.safetensors, made by
/// tools/make_gradcam_reference.py): torchvision's ResNet-18 (linear head) and the default model (MLP head).
final class ExplainTests: XCTestCase, UsesDefaultFixtures {
    static let ids = ["0e1a308beda2ae65c4c0bcdf61d4c8626827264b", "2f5f633c561827dec1b95bf89d41d78f44872c79"]

    func reference() throws -> [String: SafeTensors.Entry] {
        try SafeTensors.read(path: Self.fixtures.appendingPathComponent("gradcam/reference.safetensors").path).tensors
    }

    func explain(_ model: String, _ extra: [String], dir: URL) throws -> CLI.Result {
        let inputs = Self.ids.map { Self.images.appendingPathComponent("\($0).tif").path }
        return try CLI.run(["explain"] + inputs + ["--model", model, "--out", dir.path] + extra)
    }

    func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
        guard a.count == b.count else { return .infinity }
        return zip(a, b).map { abs($0 - $1) }.max() ?? 0
    }

    func testTorchvisionResNet18MatchesPyTorch() throws {
        let dir = try CLI.temporaryDirectory(self)
        let model = CLI.reference.appendingPathComponent("resnet18.safetensors").path
        let result = try explain(model, ["--crop", "0", "--normalize", "imagenet", "--channel-order", "rgb"], dir: dir)
        XCTAssertEqual(result.status, 0, result.stderr)
        let reference = try reference()
        for id in Self.ids {
            let cam = try FloatTIFF.read(path: dir.appendingPathComponent("\(id).cam.tiff").path)
            XCTAssertEqual([cam.width, cam.height], [96, 96])
            let expected = reference["resnet18/\(id)/predicted"]!.data
            XCTAssertLessThan(maxDifference(cam.values, expected), 1e-3, id)
            let predicted = Int(reference["resnet18/\(id)/predicted_class"]!.data[0])
            XCTAssertTrue(result.stderr.contains("\(id): class \(predicted) "), result.stderr)
            let png = try PNGFile.read(path: dir.appendingPathComponent("\(id).png").path)
            XCTAssertEqual([png.width, png.height], [96, 96])
        }
    }

    /// The MLP head (BatchNorm folded, ReLU mask) with the model's own crop; the predicted class and class 1.
    /// One image's predicted-class map is all zero in PyTorch: it must stay zero, not be divided by 0.
    func testMLPHeadMatchesPyTorchForThePredictedClassAndClassOne() throws {
        let reference = try reference()
        for (suffix, options) in [("predicted", [String]()), ("class1", ["--class", "1"])] {
            let dir = try CLI.temporaryDirectory(self)
            let result = try explain(Self.model, options + ["--quiet"], dir: dir)
            XCTAssertEqual(result.status, 0, result.stderr)
            XCTAssertEqual(result.stderr, "")
            for id in Self.ids {
                let cam = try FloatTIFF.read(path: dir.appendingPathComponent("\(id).cam.tiff").path)
                XCTAssertEqual([cam.width, cam.height], [49, 49])
                let expected = reference["default/\(id)/\(suffix)"]!.data
                XCTAssertLessThan(maxDifference(cam.values, expected), 1e-3, "\(id) \(suffix)")
                XCTAssertEqual(cam.values.max() == 0, expected.max() == 0, "\(id) \(suffix): zero maps stay zero")
            }
        }
    }

    func testRefusals() throws {
        let dir = try CLI.temporaryDirectory(self)
        var result = try explain(Self.model, ["--class", "2"], dir: dir)
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("--class must be between 0 and 1"), result.stderr)
        let file = dir.appendingPathComponent("file.txt")
        try Data("x".utf8).write(to: file)
        result = try CLI.run(["explain", Self.images.path, "--model", Self.model, "--out", file.path])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("\(file.path): is a file; --out takes a folder"), result.stderr)
        // A bad image is reported and the others are still explained (status 3).
        let bad = dir.appendingPathComponent("bad.tif")
        try Data("not a tiff".utf8).write(to: bad)
        let out = dir.appendingPathComponent("cams")
        result = try CLI.run(["explain", bad.path, Self.images.appendingPathComponent("\(Self.ids[0]).tif").path,
                              "--model", Self.model, "--out", out.path, "--quiet"])
        XCTAssertEqual(result.status, 3, result.stderr)
        XCTAssertTrue(result.stderr.contains("\(bad.path): not a TIFF image"), result.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out.appendingPathComponent("\(Self.ids[0]).png").path))
    }
}
