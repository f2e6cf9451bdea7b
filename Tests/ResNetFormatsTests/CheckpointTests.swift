import Foundation
import ResNetFormats
import ResNetModel
import ResNetSupport
import TestSupport
import XCTest

final class CheckpointTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ckpt-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// A small random model (base width 4, MLP head, 3 classes).
    static func smallCheckpoint() -> Checkpoint {
        let config = ModelConfig(numClasses: 3, head: .mlp, hiddenUnits: 8, baseWidth: 4)
        var state: StateDict = [:]
        for spec in Architecture(config).parameterSpecs {
            let count = spec.shape.reduce(1, *)
            let values: [Float] = (0..<count).map { _ in
                switch spec.role {
                case .runningVar: return Float.random(in: 0.5..<1.5)
                case .counter: return 7
                default: return Float.random(in: -0.5..<0.5)
                }
            }
            state[spec.name] = Tensor(shape: spec.shape, data: values)
        }
        return Checkpoint(config: config, state: state, classNames: ["a", "b,c", "ü"],
                          preprocessing: Preprocessing(crop: 49, normalization: .none, channelOrder: .bgr),
                          provenance: Provenance(source: "x.onnx", sourceSHA256: "abc", producer: "test", notes: ["n"]))
    }

    func testRoundTripKeepsEverything() throws {
        let original = Self.smallCheckpoint()
        try original.save(path: path("m.safetensors"))
        let loaded = try Checkpoint.load(path: path("m.safetensors"))
        XCTAssertEqual(loaded.config, original.config)
        XCTAssertEqual(loaded.classNames, ["a", "b,c", "ü"])
        XCTAssertEqual(loaded.preprocessing, original.preprocessing)
        XCTAssertEqual(loaded.provenance, original.provenance)
        XCTAssertEqual(loaded.state, original.state)
        // No temporary files left beside the output.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path), ["m.safetensors"])
    }

    func testHeaderIsPaddedJSONAndCountersAreInt64() throws {
        try Self.smallCheckpoint().save(path: path("m.safetensors"))
        let data = try Data(contentsOf: URL(fileURLWithPath: path("m.safetensors")))
        let length = data.prefix(8).withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
        XCTAssertEqual(length % 8, 0)
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + length))) as? [String: Any])
        let counter = try XCTUnwrap(header["bn1.num_batches_tracked"] as? [String: Any])
        XCTAssertEqual(counter["dtype"] as? String, "I64")
        XCTAssertEqual(counter["shape"] as? [Int], [])
        let weight = try XCTUnwrap(header["conv1.weight"] as? [String: Any])
        XCTAssertEqual(weight["dtype"] as? String, "F32")
        XCTAssertEqual(weight["shape"] as? [Int], [4, 3, 7, 7])
        let meta = try XCTUnwrap(header["__metadata__"] as? [String: String])
        XCTAssertEqual(meta["format"], "resnetkit-checkpoint/1")
    }

    func testRefusesToOverwriteUnlessAsked() throws {
        let checkpoint = Self.smallCheckpoint()
        try checkpoint.save(path: path("m.safetensors"))
        XCTAssertThrowsError(try checkpoint.save(path: path("m.safetensors"), overwrite: false)) { error in
            XCTAssertEqual("\(error)", "\(self.path("m.safetensors")): already exists (use --force to replace it)")
        }
    }

    func testLoadsBareTorchvisionStateDict() throws {
        let reference = TestPaths.reference.appendingPathComponent("resnet18.safetensors")
        let checkpoint = try Checkpoint.load(path: reference.path)
        XCTAssertEqual(checkpoint.config, ModelConfig(numClasses: 1000, head: .linear))
        XCTAssertEqual(checkpoint.state["bn1.num_batches_tracked"]?.data, [1000])
    }

    // MARK: hostile files

    func assertLoadFails(_ bytes: Data, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        let target = path("bad.safetensors")
        FileManager.default.createFile(atPath: target, contents: bytes)
        XCTAssertThrowsError(try Checkpoint.load(path: target), file: file, line: line) { error in
            XCTAssertEqual("\(error)", "\(target): \(expected)", file: file, line: line)
        }
    }

    static func file(header: String, data: Data = Data()) -> Data {
        var bytes = Data(count: 8)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(header.utf8.count).littleEndian, as: UInt64.self) }
        return bytes + Data(header.utf8) + data
    }

    func testEmptyAndTinyFiles() {
        assertLoadFails(Data(), "not a safetensors file: only 0 bytes")
        assertLoadFails(Data([1, 2, 3]), "not a safetensors file: only 3 bytes")
    }

    func testLyingHeaderLength() {
        var bytes = Data(count: 8)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(1 << 40).littleEndian, as: UInt64.self) }
        assertLoadFails(bytes + Data("{}".utf8), "not a safetensors file: header length 1099511627776 exceeds the file size 10")
    }

    func testHeaderNotJSON() {
        assertLoadFails(Self.file(header: "{not json"), "not a safetensors file: the header is not a JSON object")
    }

    func testOffsetsOutsideData() {
        assertLoadFails(Self.file(header: #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: Data(count: 4)),
                        "tensor w: data_offsets [0, 8] outside the 4-byte data section")
    }

    func testShapeLargerThanFile() {
        assertLoadFails(Self.file(header: #"{"w":{"dtype":"F32","shape":[4294967295,4294967295],"data_offsets":[0,4]}}"#, data: Data(count: 4)),
                        "tensor w: invalid shape [4294967295, 4294967295]")
        assertLoadFails(Self.file(header: #"{"w":{"dtype":"F32","shape":[65536,65536],"data_offsets":[0,4]}}"#, data: Data(count: 4)),
                        "tensor w: shape [65536, 65536] is larger than the file")
    }

    func testSizeMismatch() {
        assertLoadFails(Self.file(header: #"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: Data(count: 8)),
                        "tensor w: shape [3] of F32 needs 12 bytes, data_offsets give 8")
    }

    /// Issue 11: shared byte ranges are refused before any tensor is converted.
    func testOverlappingDataOffsetsAreRefused() {
        assertLoadFails(Self.file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                                  data: Data(count: 12)),
                        "tensors a and b overlap (data_offsets [0, 8] and [4, 12])")
        assertLoadFails(Self.file(header: #"{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                                  data: Data(count: 8)),
                        "tensors a and b overlap (data_offsets [0, 8] and [0, 8])")
        // Empty tensors occupy no bytes and may sit anywhere.
        XCTAssertNoThrow(try SafeTensors.parse(Self.file(header: #"{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                                                         data: Data(count: 8)), path: "x"))
    }

    func testUnsupportedDtype() {
        assertLoadFails(Self.file(header: #"{"w":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#, data: Data(count: 8)),
                        "tensor w: unsupported dtype C64")
    }

    func testNotAResNet() {
        assertLoadFails(Self.file(header: #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: Data(count: 4)),
                        "not a ResNetKit checkpoint and not a torchvision ResNet-18 state dict (no conv1.weight)")
    }

    func testMisshapenTensorIsNamed() throws {
        var checkpoint = Self.smallCheckpoint()
        try checkpoint.save(path: path("m.safetensors"))
        // Rewrite with a 3x3 downsample kernel where 1x1 is expected, keeping the stored config.
        let (entries, metadata) = try SafeTensors.read(path: path("m.safetensors"))
        var tensors = entries.map { (name: $0.key, shape: $0.value.shape, data: $0.value.data) }
        let index = try XCTUnwrap(tensors.firstIndex { $0.name == "layer2.0.downsample.0.weight" })
        tensors[index].shape = [8, 4, 3, 3]
        tensors[index].data = [Float](repeating: 0, count: 8 * 4 * 9)
        try SafeTensors.write(path: path("bad.safetensors"), tensors: tensors, metadata: metadata)
        XCTAssertThrowsError(try Checkpoint.load(path: path("bad.safetensors"))) { error in
            XCTAssertEqual("\(error)", "\(self.path("bad.safetensors")): not a ResNet-18 checkpoint of the stated shape: "
                           + "layer2.0.downsample.0.weight: expected [8, 4, 1, 1], got [8, 4, 3, 3]")
        }
        checkpoint.state["fc.weight"] = Tensor(zeros: [3, 32])
        XCTAssertThrowsError(try checkpoint.save(path: path("extra.safetensors")))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("extra.safetensors")))
    }

    func testNonFiniteWeightsAreRefused() throws {
        var checkpoint = Self.smallCheckpoint()
        checkpoint.state["conv1.weight"]!.data[5] = .nan
        try checkpoint.save(path: path("nan.safetensors"))
        XCTAssertThrowsError(try Checkpoint.load(path: path("nan.safetensors"))) { error in
            XCTAssertEqual("\(error)", "\(self.path("nan.safetensors")): tensor conv1.weight holds NaN or infinite values")
        }
    }

    func testTruncatedCheckpoint() throws {
        try Self.smallCheckpoint().save(path: path("m.safetensors"))
        let data = try Data(contentsOf: URL(fileURLWithPath: path("m.safetensors")))
        let target = path("cut.safetensors")
        FileManager.default.createFile(atPath: target, contents: data.prefix(data.count - 100))
        XCTAssertThrowsError(try Checkpoint.load(path: target)) { error in
            XCTAssertTrue("\(error)".hasPrefix("\(target): tensor "), "\(error)")
            XCTAssertTrue("\(error)".contains("outside the"), "\(error)")
        }
    }
}
