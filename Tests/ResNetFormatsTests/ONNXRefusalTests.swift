import Foundation
import ResNetFormats
import XCTest

/// Bad ONNX files: each refused with a one-line `path: problem` message, never a crash.
final class ONNXRefusalTests: XCTestCase {
    func assertRefused(_ path: String, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        ONNXFixtures.assertFileError(path, contains: fragment, file: file, line: line) {
            _ = try ONNXImporter.importModel(path: path, options: ImportOptions())
        }
    }

    func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("onnx-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    func testResNet50StyleBottleneckBlocks() {
        assertRefused(ONNXFixtures.path("bad_bottleneck.onnx"), "Bottleneck blocks: not ResNet-18")
    }

    func testMobileNetStyleNetwork() {
        assertRefused(ONNXFixtures.path("bad_mobilenet.onnx"),
                      "not a ResNet-18: the first convolution is 3x3 stride 2 over 3 channels; ResNet's stem is 7x7 stride 2 over 3")
    }

    func testResNet34HasTooManyBlocks() {
        assertRefused(ONNXFixtures.path("bad_resnet34.onnx"), "not a ResNet-18: more than 8 residual blocks (ResNet-18 has 2 per stage)")
    }

    func testSoftmaxAfterTheClassifierIsNamed() {
        assertRefused(ONNXFixtures.path("bad_softmax.onnx"), "unsupported operator Softmax (node '/1/Softmax')")
    }

    func testUnsupportedOperatorIsNamed() {
        assertRefused(ONNXFixtures.path("bad_unsupported_op.onnx"), "unsupported operator LeakyRelu (node '/layer1/layer1.1/relu/Relu')")
    }

    func testTensorLargerThanItsData() {
        assertRefused(ONNXFixtures.path("bad_short_tensor.onnx"),
                      "tensor 'layer1.0.conv1.weight': shape [4, 4, 3, 3] of float needs 576 bytes, the file holds 288")
    }

    func testExternalDataOutsideTheModelFolder() {
        assertRefused(ONNXFixtures.path("bad_external_escape.onnx"), "external data location '../escape.data' is outside the model's folder")
    }

    func testTruncatedProtobuf() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: ONNXFixtures.path("ts_folded.onnx")))
        let path = try temporaryDirectory().appendingPathComponent("truncated.onnx").path
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: path))
        assertRefused(path, "not a valid ONNX model: the protobuf is truncated or corrupt")
    }

    func testRandomBytes() throws {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let path = try temporaryDirectory().appendingPathComponent("random.onnx").path
        try Data([0x08] + bytes).write(to: URL(fileURLWithPath: path))
        assertRefused(path, "not a valid ONNX model")
    }

    func testEmptyFile() throws {
        let path = try temporaryDirectory().appendingPathComponent("empty.onnx").path
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data()))
        assertRefused(path, "the file is empty")
    }

    func testMissingExternalDataFile() throws {
        let folder = try temporaryDirectory()
        let path = folder.appendingPathComponent("dynamo.onnx").path
        try FileManager.default.copyItem(atPath: ONNXFixtures.path("dynamo.onnx"), toPath: path)
        assertRefused(path, "external data file 'dynamo.onnx.data' is missing")
    }

    func testShortExternalDataFile() throws {
        let folder = try temporaryDirectory()
        let path = folder.appendingPathComponent("dynamo.onnx").path
        try FileManager.default.copyItem(atPath: ONNXFixtures.path("dynamo.onnx"), toPath: path)
        let data = try Data(contentsOf: URL(fileURLWithPath: ONNXFixtures.path("dynamo.onnx.data")))
        try data.prefix(1000).write(to: folder.appendingPathComponent("dynamo.onnx.data"))
        assertRefused(path, "external data file 'dynamo.onnx.data' has 1000 bytes, too short for")
    }

    /// Damaged copies of a good file (bytes overwritten at random places, fixed seed): each either imports or
    /// is refused with a one-line message naming the file; none may crash the process.
    func testDamagedFilesNeverCrash() throws {
        let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: ONNXFixtures.path("ts_unfolded.onnx"))))
        let path = try temporaryDirectory().appendingPathComponent("damaged.onnx").path
        var state: UInt64 = 42
        func random(_ bound: Int) -> Int {  // xorshift64*: reproducible damage
            state ^= state >> 12; state ^= state << 25; state ^= state >> 27
            return Int((state &* 2_685_821_657_736_338_717) >> 33) % bound
        }
        var refused = 0
        for _ in 0..<60 {
            var bytes = original
            for _ in 0..<(1 + random(4)) {
                // Mostly the structure at the front (graph, nodes, tensor headers), sometimes anywhere.
                let position = random(4) == 0 ? random(bytes.count) : random(min(bytes.count, 4096))
                bytes[position] = UInt8(random(256))
            }
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                _ = try ONNXImporter.importModel(path: path, options: ImportOptions())
            } catch {
                let message = String(describing: error)
                XCTAssertTrue(message.hasPrefix(path + ": ") && !message.contains("\n"), message)
                refused += 1
            }
        }
        XCTAssertGreaterThan(refused, 0)
    }
}
