import Foundation
@testable import ResNetFormats
import ResNetModel
import ResNetSupport
import TestSupport
import XCTest

/// `fixtures/pth/` (made by tools/make_pth_fixtures.py with PyTorch) and PyTorch's logits at 96x96 and 49x49.
enum PyTorchFixtures {
    static let directory = TestPaths.fixtures.appendingPathComponent("pth")
    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
    /// What the hostile pickles would create if anything ran them.
    static let marker = "/tmp/resnetkit-hostile-pickle-ran"

    /// Relative error of the checkpoint's logits against PyTorch's `<logits>.logits{96,49}.f32`, the larger of the two.
    static func logitsError(_ checkpoint: Checkpoint, _ logits: String) throws -> Float {
        let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
        var worst: Float = 0
        for side in [96, 49] {
            let input = try readFloats(directory.appendingPathComponent("input_2x3x\(side)x\(side).f32"))
            let got = plan.run(images: nhwc(fromNCHW: input, batch: 2, channels: 3, height: side, width: side),
                               count: 2, height: side, width: side)
            let want = try readFloats(directory.appendingPathComponent("\(logits).logits\(side).f32"))
            worst = max(worst, relativeError(got, want))
        }
        return worst
    }
}

final class PyTorchImporterTests: XCTestCase {
    @discardableResult
    func assertImports(_ file: String, _ logits: String, config: ModelConfig, format: String, location: String,
                       line: UInt = #line) throws -> ImportedModel {
        let path = PyTorchFixtures.path(file)
        XCTAssertEqual(try ModelFileKind.detect(path: path), .pytorch, line: line)
        let imported = try ModelImporter.load(path: path)
        XCTAssertEqual(imported.checkpoint.config, config, line: line)
        XCTAssertEqual(imported.sourceFormat, format, line: line)
        XCTAssertTrue(imported.notes.contains { $0.contains(location) }, "\(imported.notes)", line: line)
        let error = try PyTorchFixtures.logitsError(imported.checkpoint, logits)
        XCTAssertLessThan(error, 1e-4, "\(file): relative error \(error)", line: line)
        return imported
    }

    static let zipFormat = "PyTorch (torch.save zip format)", legacyFormat = "PyTorch (legacy torch.save format)"
    static let width2 = ModelConfig(numClasses: 3, head: .linear, baseWidth: 2)

    func testZipStateDict() throws {
        try assertImports("zip_state_dict.pth", "width4", config: ModelConfig(numClasses: 5, baseWidth: 4),
                          format: Self.zipFormat, location: "a state_dict")
    }

    func testLegacyFormat() throws {
        try assertImports("legacy_state_dict.pth", "width2", config: Self.width2, format: Self.legacyFormat, location: "a state_dict")
    }

    func testTrainingCheckpointWithOptimizerAndNumpyScalars() throws {
        try assertImports("checkpoint.tar", "width2", config: Self.width2, format: Self.zipFormat,
                          location: "a training checkpoint: weights under 'model_state_dict'")
    }

    func testWholePickledModule() throws {
        try assertImports("whole_module.pt", "width2", config: Self.width2, format: Self.zipFormat,
                          location: "a whole pickled module (fixture_models.ResNet18): its parameters and buffers")
        try assertImports("whole_module_legacy.pt", "width2", config: Self.width2, format: Self.legacyFormat,
                          location: "a whole pickled module (fixture_models.ResNet18)")
    }

    func testDataParallelPrefixes() throws {
        try assertImports("dataparallel.pth", "width2", config: Self.width2, format: Self.zipFormat, location: "prefix 'module.' stripped")
        try assertImports("nested_state_dict_module.pth", "width2", config: Self.width2, format: Self.zipFormat,
                          location: "a training checkpoint: weights under 'state_dict'")
    }

    func testOtherStorageTypesAreConverted() throws {
        for (name, dtype) in [("fp16", "float16"), ("bf16", "bfloat16"), ("fp64", "float64")] {
            let imported = try assertImports("\(name).pth", name, config: Self.width2, format: Self.zipFormat, location: "a state_dict")
            XCTAssertTrue(imported.notes.contains("\(dtype) tensors converted to float32"), "\(imported.notes)")
            XCTAssertEqual(imported.checkpoint.state["bn1.num_batches_tracked"]?.data, [1000])
        }
    }

    func testPickleProtocol4AndRebuildFromType() throws {
        try assertImports("protocol4.pth", "width2", config: Self.width2, format: Self.zipFormat, location: "a state_dict")
        // fc.bias carries a Python attribute, so torch.save wrote it through torch._tensor._rebuild_from_type_v2.
        try assertImports("rebuild_from_type.pth", "width2", config: Self.width2, format: Self.zipFormat, location: "a state_dict")
    }

    func testViewsWithOffsetsAndStridesIntoSharedStorages() throws {
        try assertImports("views_shared_storage.pth", "width2", config: Self.width2, format: Self.zipFormat, location: "a state_dict")
        try assertImports("views_shared_storage_legacy.pth", "width2", config: Self.width2, format: Self.legacyFormat, location: "a state_dict")
    }

    static let seed = ModelConfig(numClasses: 2, head: .mlp, hiddenUnits: 8, baseWidth: 2)

    func testSeedNotebookSequentialLayoutMapsToTheMLPHead() throws {
        let imported = try assertImports("seed_sequential.pth", "seed", config: Self.seed, format: Self.zipFormat,
                                         location: "the seed notebook's nn.Sequential layout")
        XCTAssertNotNil(imported.checkpoint.state["head.bn2.running_var"])
        XCTAssertNotNil(imported.checkpoint.state["layer4.1.conv2.weight"])
        try assertImports("seed_whole_module.pt", "seed", config: Self.seed, format: Self.zipFormat,
                          location: "a whole pickled module (torch.nn.modules.container.Sequential)")
    }

    func testSeedLayoutAsSafetensors() throws {
        let path = PyTorchFixtures.path("seed_sequential.safetensors")
        XCTAssertEqual(try ModelFileKind.detect(path: path), .checkpoint)
        let checkpoint = try ModelImporter.load(path: path).checkpoint
        XCTAssertEqual(checkpoint.config, Self.seed)
        XCTAssertLessThan(try PyTorchFixtures.logitsError(checkpoint, "seed"), 1e-4)
    }

    // MARK: Refusals

    func assertRefused(_ file: String, _ expected: String, line: UInt = #line) {
        let path = PyTorchFixtures.path(file)
        XCTAssertThrowsError(try ModelImporter.load(path: path), line: line) { error in
            guard let fileError = error as? FileError else { return XCTFail("\(error) is not a FileError", line: line) }
            XCTAssertEqual(fileError.path, path, line: line)
            XCTAssertTrue(fileError.problem.contains(expected), fileError.problem, line: line)
            XCTAssertFalse(fileError.description.contains("\n"), line: line)
        }
    }

    func testHostilePicklesAreRefusedAndNeverRun() throws {
        try? FileManager.default.removeItem(atPath: PyTorchFixtures.marker)
        // Pickle protocol 2 writes Python 2 names: builtins → __builtin__, subprocess.Popen → commands.Popen.
        let cases = [("hostile_os_system.pth", "calls posix.system"), ("hostile_eval.pth", "calls __builtin__.eval"),
                     ("hostile_popen.pth", "calls commands.Popen"), ("hostile_exec.pth", "calls __builtin__.exec"),
                     ("hostile_legacy_os_system.pth", "calls posix.system"), ("hostile_plain_pickle.pkl", "calls posix.system")]
        for (file, global) in cases {
            assertRefused(file, "the pickle \(global), which is not on the allowlist")
            XCTAssertFalse(FileManager.default.fileExists(atPath: PyTorchFixtures.marker), "\(file) ran its payload")
        }
    }

    func testOptimizerStatesAreNamed() {
        assertRefused("bad_optimizer_state.pth", "a pickled optimizer state (state, param_groups), no model weights")
        assertRefused("bad_optimizer_only.pth", "a training checkpoint holding only an optimizer state (keys: epoch, optimizer_state_dict), no model weights")
    }

    func testOtherArchitecturesAreNamed() {
        assertRefused("bad_resnet50.pth", "ResNet-50 keys (Bottleneck blocks with conv3, 3/4/6/3 per stage): not a ResNet-18")
        assertRefused("bad_resnet34.pth", "ResNet-34 keys (3/4/6/3 blocks per stage): not a ResNet-18 (2/2/2/2)")
        assertRefused("bad_preactivation.pth", "not torchvision's ResNet-18: pre-activation blocks (layer2.0.bn1 normalises the block's 2 input channels, not conv1's 4 outputs")
        assertRefused("bad_input_batchnorm.pth", "not torchvision's ResNet-18: an input BatchNorm over the 3 image channels ('0.*') comes before the stem convolution")
    }

    /// Handcrafted pickles: refusals name the opcode or global, nothing recurses on the file's nesting.
    func testHandcraftedPicklesAreRefusedPrecisely() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("crafted-\(UUID().uuidString).pkl").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let proto: [UInt8] = [0x80, 0x02]
        func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
        let deep = 200_000  // lists nested this deep would overflow the stack if walked or freed recursively
        let cases: [([UInt8], String)] = [
            (proto + bytes("csubprocess\nPopen\n)") + [0x81, 0x2e], "the pickle instantiates subprocess.Popen, which is not on the allowlist"),
            (proto + bytes("cbuiltins\ngetattr\n)R."), "the pickle calls builtins.getattr, which is not on the allowlist"),
            (proto + [0x58, 1, 0, 0, 0] + bytes("a)R."), "the pickle calls a value that is not a named function"),
            (proto + bytes("h") + [5, 0x2e], "the pickle is corrupt: memo entry 5 is missing"),
            (proto + [0xff, 0x2e], "unsupported pickle opcode 0xff at byte 2"),
            (proto + bytes("R."), "the pickle is corrupt: stack underflow at byte 2"),
            (proto + [0x58, 0xff, 0xff, 0xff, 0x7f], "the pickle is truncated: a length of 2147483647 bytes at byte 7 runs past its end"),
            (proto + [UInt8](repeating: 0x5d, count: deep) + [UInt8](repeating: 0x61, count: deep - 1) + [0x2e],
             "no model weights: the pickle holds a list of 1 items"),
        ]
        for (pickle, expected) in cases {
            try Data(pickle).write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try ModelImporter.load(path: path)) { error in
                guard let fileError = error as? FileError else { return XCTFail("\(error)") }
                XCTAssertEqual(fileError.path, path)
                XCTAssertTrue(fileError.problem.hasPrefix(expected), fileError.problem)
            }
        }
    }

    /// A CIFAR-style ResNet (3x3 stem) saved as a bare safetensors state dict: the stem is named.
    func testThreeByThreeStemIsNamed() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cifar-\(UUID().uuidString).safetensors").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try SafeTensors.write(path: path, tensors: [("conv1.weight", [4, 3, 3, 3], [Float](repeating: 0, count: 108)),
                                                    ("fc.weight", [2, 32], [Float](repeating: 0, count: 64))], metadata: [:])
        XCTAssertThrowsError(try ModelImporter.load(path: path)) { error in
            XCTAssertEqual(error as? FileError, FileError(path, "not torchvision's ResNet-18: conv1.weight is [4, 3, 3, 3] (a 3x3 stem, as in CIFAR-style ResNets), expected [width, 3, 7, 7]"))
        }
    }

    /// Every truncation and many bit flips of real files: a one-line FileError or a successful load, never a crash.
    func testTruncatedAndBitFlippedFilesGiveOneLineErrors() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("pth-damage-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        var generator = SplitMix64(seed: 12)  // fixed: the same damaged files on every run
        var refused = 0
        for name in ["legacy_state_dict.pth", "zip_state_dict.pth", "whole_module.pt"] {
            let original = try Data(contentsOf: URL(fileURLWithPath: PyTorchFixtures.path(name)))
            var damaged: [(String, Data)] = []
            for fraction in [0.0005, 0.01, 0.1, 0.3, 0.5, 0.9, 0.999] {
                damaged.append(("truncated to \(fraction)", original.prefix(max(1, Int(Double(original.count) * fraction)))))
            }
            for _ in 0..<24 {
                var copy = original
                // Half the flips in the first 2 KB, where the pickle and the zip headers are.
                let limit = Bool.random(using: &generator) ? min(2048, copy.count) : copy.count
                let index = Int.random(in: 0..<limit, using: &generator)
                copy[index] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &generator)
                damaged.append(("bit flipped at \(index)", copy))
            }
            for (what, bytes) in damaged {
                let path = folder.appendingPathComponent(name).path
                try bytes.write(to: URL(fileURLWithPath: path))
                do {
                    _ = try ModelImporter.load(path: path)
                    XCTAssertTrue(what.hasPrefix("bit flipped"), "\(name) \(what) loaded")
                } catch let error as FileError {
                    refused += 1
                    XCTAssertEqual(error.path, path)
                    XCTAssertFalse(error.description.contains("\n"), "\(name) \(what): \(error)")
                } catch {
                    XCTFail("\(name) \(what): \(error) is not a FileError")
                }
            }
        }
        XCTAssertGreaterThanOrEqual(refused, 21)  // at least every truncation
    }

    /// Zip records that ZIPFoundation 0.9.20 turns into a trap (an offset of 2^63 through `off_t(offset)`) or would
    /// read outside the file: refused by `ZipCheck` in one line before ZIPFoundation sees them (found by
    /// tools/fuzz.sh pickle). torch.save's zips carry a ZIP64 end record beside the plain one.
    func testZipRecordsThatWouldTrapZIPFoundationAreRefused() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("pth-zip-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let original = try Data(contentsOf: URL(fileURLWithPath: PyTorchFixtures.path("zip_state_dict.pth")))
        func lastIndex(of signature: [UInt8], in data: Data) throws -> Int {
            try XCTUnwrap((0...(data.count - 4)).reversed().first { data[$0..<$0 + 4].elementsEqual(signature) })
        }
        let end = try lastIndex(of: [0x50, 0x4b, 0x05, 0x06], in: original)
        let zip64End = try lastIndex(of: [0x50, 0x4b, 0x06, 0x06], in: original)
        let directory = Int(original[end + 16..<end + 20].enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) })
        func patched(_ at: Int, _ value: UInt64, bytes: Int) -> Data {
            var copy = original
            for k in 0..<bytes { copy[at + k] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(k))) }
            return copy
        }
        let cases: [(String, Data, String)] = [
            ("ZIP64 directory offset 2^63", patched(zip64End + 48, 1 << 63, bytes: 8),
             "its ZIP64 end of central directory disagrees with the end of central directory"),
            ("ZIP64 entry count 2^40", patched(zip64End + 32, 1 << 40, bytes: 8),
             "its ZIP64 end of central directory disagrees with the end of central directory"),
            ("entry's local header offset 0xFFFFFFFF", patched(directory + 42, 0xFFFF_FFFF, bytes: 4),
             "entry 1 has ZIP64 sizes (4 GB and more)"),
            ("entry's compressed size past the end", patched(directory + 20, UInt64(original.count), bytes: 4),
             "entry 1's data lie outside the file"),
            ("directory offset past the end in both records",
             { var d = patched(end + 16, UInt64(original.count), bytes: 4)
               for k in 0..<8 { d[zip64End + 48 + k] = UInt8(truncatingIfNeeded: UInt64(original.count) >> (8 * UInt64(k))) }
               return d }(),
             "its central directory lies outside the file"),
            ("the end record cut off", original.prefix(original.count - 10), "no end of central directory record"),
        ]
        for (what, bytes, expected) in cases {
            let path = folder.appendingPathComponent("damaged.pth").path
            try bytes.write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try ModelImporter.load(path: path), what) { error in
                XCTAssertTrue("\(error)".hasPrefix("\(path): a zip file that cannot be read: \(expected)"), "\(what): \(error)")
            }
        }
        // The untouched file passes the check and loads.
        XCTAssertNil(ZipCheck.problem(path: PyTorchFixtures.path("zip_state_dict.pth")))
    }
}
