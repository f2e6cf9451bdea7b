import Foundation
import ResNetFormats
import ResNetModel
import XCTest

final class ImportWeightsCommandTests: XCTestCase {
    static let fixtures = CLI.repository.appendingPathComponent("fixtures/hdf5")
    static func fixture(_ name: String) -> String { fixtures.appendingPathComponent(name).path }

    /// The saved checkpoint's logits on the committed input against PyTorch's (max abs diff / max abs logit).
    func assertLogits(_ checkpoint: Checkpoint, _ expectedFile: String, line: UInt = #line) throws {
        func floats(_ name: String) throws -> [Float] {
            try Data(contentsOf: Self.fixtures.appendingPathComponent(name)).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        }
        let input = nhwc(fromNCHW: try floats("input_2x3x40x40.f32"), batch: 2, channels: 3, height: 40, width: 40)
        let got = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state).run(images: input, count: 2, height: 40, width: 40)
        let expected = try floats(expectedFile)
        XCTAssertEqual(got.count, expected.count, line: line)
        let diff = zip(got, expected).map { abs($0 - $1) }.max() ?? .infinity
        let scale = expected.map(abs).max() ?? 0
        XCTAssertLessThan(diff / scale, 1e-4, line: line)
    }

    func testWritesModelSafetensorsByDefaultWithProvenance() throws {
        let folder = try CLI.temporaryDirectory(self)
        let source = Self.fixture("flat.h5")
        let result = try CLI.run(["import-weights", source], currentDirectory: folder)
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("Format:     HDF5 (PyTorch state_dict, flat names)"), result.stdout)
        // PyTorch's sum(p.numel() for p in model.parameters()) for the fixture model.
        XCTAssertTrue(result.stdout.contains("Parameters: 44,937"), result.stdout)
        XCTAssertTrue(result.stdout.contains("BatchNorm:  kept in the file"), result.stdout)
        let checkpoint = try Checkpoint.load(path: folder.appendingPathComponent("model.safetensors").path)
        XCTAssertEqual(checkpoint.provenance.source, source)
        // `sha256sum fixtures/hdf5/flat.h5`
        XCTAssertEqual(checkpoint.provenance.sourceSHA256, "86a24661e5c8d3a014fbec44653707ce0724c1d6746e762c5ca7f5120459f280")
        XCTAssertEqual(checkpoint.provenance.producer, "import-weights (HDF5 (PyTorch state_dict, flat names))")
        XCTAssertEqual(checkpoint.classNames, ["0", "1", "2", "3", "4"])
        try assertLogits(checkpoint, "logits_linear.f32")
    }

    func testKerasFileWithClassNamesFromAFile() throws {
        let folder = try CLI.temporaryDirectory(self)
        let classes = folder.appendingPathComponent("classes.txt")
        try "benign\ntumor\nstroma\n\nfat\nmucosa\n".write(to: classes, atomically: true, encoding: .utf8)
        let out = folder.appendingPathComponent("keras.safetensors").path
        let result = try CLI.run(["import-weights", Self.fixture("keras_split.h5"), "--out", out, "--classes", classes.path])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("Format:     HDF5 (Keras), produced by keras 2.13.1 (tensorflow)"), result.stdout)
        let checkpoint = try Checkpoint.load(path: out)
        XCTAssertEqual(checkpoint.classNames, ["benign", "tumor", "stroma", "fat", "mucosa"])
        XCTAssertEqual(checkpoint.config.batchNormEpsilon, 1e-3)
        XCTAssertTrue(checkpoint.provenance.notes.contains("20 convolution biases folded into the following BatchNorm's running_mean"))
        try assertLogits(checkpoint, "logits_keras_split.f32")
    }

    func testRefusesToOverwriteWithoutForce() throws {
        let folder = try CLI.temporaryDirectory(self)
        let out = folder.appendingPathComponent("model.safetensors")
        try Data("keep me".utf8).write(to: out)
        let refused = try CLI.run(["import-weights", Self.fixture("mlp.h5"), "--out", out.path])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertEqual(refused.stderr, "error: \(out.path): already exists (use --force to replace it)\n")
        XCTAssertEqual(try Data(contentsOf: out), Data("keep me".utf8))

        let forced = try CLI.run(["import-weights", Self.fixture("mlp.h5"), "--out", out.path, "--force", "--classes", "benign, tumor"])
        XCTAssertEqual(forced.status, 0, forced.stderr)
        let checkpoint = try Checkpoint.load(path: out.path)
        XCTAssertEqual(checkpoint.classNames, ["benign", "tumor"])
        try assertLogits(checkpoint, "logits_mlp.f32")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path), ["model.safetensors"])
    }

    func testBadFilesFailWithOneLineAndLeaveNothing() throws {
        let cases = [
            ("bad_truncated.h5", "cannot open the HDF5 file, it is truncated or damaged (truncated file"),
            ("bad_random.h5", "not a model file this tool reads"),
            ("bad_misshapen.h5", "layer2.0.downsample.0.weight: expected [4, 2, 1, 1], got [4, 2, 3, 3]"),
            ("bad_absurd.h5", "dataset 'fc.weight' claims shape [1048576, 1048576]"),
            ("bad_resnet50.h5", "not a ResNet-18: 'layer1.0.conv3.weight' belongs to a Bottleneck block"),
            ("bad_strings.h5", "dataset 'fc.bias' holds text"),
        ]
        for (name, message) in cases { try assertRefused(Self.fixture(name), message) }
    }

    /// import-weights on `source` fails with status 1 and one `error:` line naming the file and holding
    /// `message`, and writes nothing into the folder it runs in.
    func assertRefused(_ source: String, _ message: String, line: UInt = #line) throws {
        let folder = try CLI.temporaryDirectory(self)
        let result = try CLI.run(["import-weights", source], currentDirectory: folder)
        XCTAssertEqual(result.status, 1, source, line: line)
        XCTAssertTrue(result.stderr.hasPrefix("error: \(source): "), result.stderr, line: line)
        XCTAssertTrue(result.stderr.contains(message), result.stderr, line: line)
        XCTAssertEqual(result.stderr.filter { $0 == "\n" }.count, 1, result.stderr, line: line)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path), [], source, line: line)
    }

    /// The ONNX refusals, end to end: one `error:` line naming the file, non-zero status, nothing written.
    func testBadONNXFilesFailWithOneLineAndLeaveNothing() throws {
        let onnx = CLI.repository.appendingPathComponent("fixtures/onnx")
        let scratch = try CLI.temporaryDirectory(self)
        let good = try Data(contentsOf: onnx.appendingPathComponent("ts_unfolded.onnx"))
        let truncated = scratch.appendingPathComponent("truncated.onnx")
        try good.prefix(good.count / 2).write(to: truncated)
        let cases = [
            (onnx.appendingPathComponent("bad_bottleneck.onnx").path, "Bottleneck blocks: not ResNet-18"),
            (onnx.appendingPathComponent("bad_resnet34.onnx").path, "not a ResNet-18: more than 8 residual blocks"),
            (onnx.appendingPathComponent("bad_mobilenet.onnx").path, "not a ResNet-18: the first convolution is 3x3 stride 2"),
            (onnx.appendingPathComponent("bad_unsupported_op.onnx").path, "unsupported operator LeakyRelu (node '/layer1/layer1.1/relu/Relu')"),
            (onnx.appendingPathComponent("bad_short_tensor.onnx").path, "shape [4, 4, 3, 3] of float needs 576 bytes, the file holds 288"),
            (onnx.appendingPathComponent("bad_external_escape.onnx").path, "is outside the model's folder"),
            (truncated.path, "not a valid ONNX model: the protobuf is truncated or corrupt"),
        ]
        for (source, message) in cases { try assertRefused(source, message) }
    }

    func testClassCountMustMatch() throws {
        let folder = try CLI.temporaryDirectory(self)
        let source = Self.fixture("flat.h5")
        let result = try CLI.run(["import-weights", source, "--classes", "benign,tumor"], currentDirectory: folder)
        XCTAssertNotEqual(result.status, 0)
        XCTAssertEqual(result.stderr, "error: \(source): the model has 5 classes but 2 class names were given\n")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path), [])
    }

    func testCalibrationFolder() throws {
        let folder = try CLI.temporaryDirectory(self)
        // HDF5 files keep their BatchNorm statistics: the images are not needed.
        let hdf5 = try CLI.run(["import-weights", Self.fixture("flat.h5"), "--calibrate", "/nonexistent/images"], currentDirectory: folder)
        XCTAssertEqual(hdf5.status, 0, hdf5.stderr)
        XCTAssertTrue(hdf5.stderr.contains("--calibrate not used: HDF5 files keep their BatchNorm statistics"), hdf5.stderr)

        let onnx = CLI.reference.appendingPathComponent("resnet18.onnx").path
        let missing = try CLI.run(["import-weights", onnx, "--calibrate", "/nonexistent/images", "--out", "m.safetensors"],
                                  currentDirectory: folder)
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertEqual(missing.stderr, "error: /nonexistent/images: is not a readable folder of calibration images\n")

        // 20x12 patches are below the network's 32x32 minimum; a damaged TIFF is skipped too.
        let images = folder.appendingPathComponent("images")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        for name in ["rgb8_strips.tif", "bad_truncated.tif"] {
            try FileManager.default.copyItem(at: CLI.repository.appendingPathComponent("fixtures/tiff/\(name)"),
                                             to: images.appendingPathComponent(name))
        }
        let small = try CLI.run(["import-weights", onnx, "--calibrate", images.path, "--out", "m.safetensors"], currentDirectory: folder)
        XCTAssertNotEqual(small.status, 0)
        XCTAssertTrue(small.stderr.contains("rgb8_strips.tif: is 20x12, smaller than the network's minimum 32x32"), small.stderr)
        XCTAssertTrue(small.stderr.contains("error: \(images.path): no usable TIFF images to calibrate with (2 found, 2 skipped)"), small.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder.appendingPathComponent("m.safetensors").path))
    }

    /// A baseline TIFF (8-bit RGB, one uncompressed strip), written byte by byte so the test needs no image library.
    static func writeTIFF(_ url: URL, side: Int) throws {
        var bytes: [UInt8] = []
        func u16(_ v: Int) { bytes += [UInt8(v & 0xff), UInt8(v >> 8 & 0xff)] }
        func u32(_ v: Int) { u16(v & 0xffff); u16(v >> 16) }
        let entries: [(tag: Int, type: Int, count: Int, value: Int)]
        let ifdSize = 2 + 10 * 12 + 4, bitsOffset = 8 + ifdSize, pixelOffset = bitsOffset + 6
        entries = [(256, 3, 1, side), (257, 3, 1, side), (258, 3, 3, bitsOffset), (259, 3, 1, 1), (262, 3, 1, 2),
                   (273, 4, 1, pixelOffset), (277, 3, 1, 3), (278, 3, 1, side), (279, 4, 1, side * side * 3), (284, 3, 1, 1)]
        bytes += Array("II".utf8); u16(42); u32(8)
        u16(entries.count)
        for e in entries {
            u16(e.tag); u16(e.type); u32(e.count)
            if e.type == 3 && e.count == 1 { u16(e.value); u16(0) } else { u32(e.value) }
        }
        u32(0)
        u16(8); u16(8); u16(8)
        bytes += (0..<(side * side * 3)).map { UInt8($0 % 251) }
        try Data(bytes).write(to: url)
    }

    func testCalibrationImagesAreReadForONNX() throws {
        let folder = try CLI.temporaryDirectory(self)
        let images = folder.appendingPathComponent("images")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        try Self.writeTIFF(images.appendingPathComponent("a.tif"), side: 40)
        try Self.writeTIFF(images.appendingPathComponent("b.tiff"), side: 40)
        try Self.writeTIFF(images.appendingPathComponent("c.tif"), side: 36)
        try Data("not an image".utf8).write(to: images.appendingPathComponent("notes.txt"))
        let onnx = CLI.reference.appendingPathComponent("resnet18.onnx").path
        let result = try CLI.run(["import-weights", onnx, "--calibrate", images.path, "--out", "m.safetensors"], currentDirectory: folder)
        XCTAssertTrue(result.stderr.contains("c.tif: is 36x36 after preprocessing, unlike the first image (40x40)"), result.stderr)
        XCTAssertTrue(result.stderr.contains("Calibration: read 2 images (40x40) from \(images.path), skipped 1"), result.stderr)
    }

    func testRunsUnderItsLinkName() throws {
        let folder = try CLI.temporaryDirectory(self)
        let result = try CLI.run([Self.fixture("nested.h5"), "--out", "nested.safetensors", "--quiet"],
                                 programName: "import-weights", currentDirectory: folder)
        XCTAssertEqual(result.status, 0, result.stderr)
        try assertLogits(try Checkpoint.load(path: folder.appendingPathComponent("nested.safetensors").path), "logits_linear.f32")
    }

    func testInspectReadsHDF5() throws {
        let result = try CLI.run(["inspect", Self.fixture("keras.h5"), "--input-size", "1x3x40x40"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("Format:        HDF5 (Keras), produced by keras 2.13.1 (tensorflow)"), result.stdout)
        XCTAssertTrue(result.stdout.contains("Architecture:  ResNet-18, base width 4, linear head, 5 classes"), result.stdout)
        // torchinfo at 1x3x40x40: conv1 → [1, 4, 20, 20], fc → [1, 5] with 32·5 + 5 parameters.
        XCTAssertTrue(result.stdout.contains("conv1 (Conv2d)                              [1, 4, 20, 20]"), result.stdout)
        XCTAssertTrue(result.stdout.contains("fc (Linear)                                 [1, 5]                    165"), result.stdout)
    }
}
