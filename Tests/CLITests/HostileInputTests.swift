import Foundation
import ResNetFormats
import ResNetSupport
import XCTest

/// Issue 11, groups 2–8: no option or file reaches a trap, a crash or an unbounded allocation; model files that
/// lie are refused; divergence stops training; labels CSVs with a BOM or other column names; clear messages.
final class HostileInputTests: XCTestCase, UsesDefaultFixtures {
    /// The default model with its metadata edited by `change` (written without the checkpoint's own checks).
    func editedModel(_ dir: URL, _ name: String, metadata change: (inout [String: String]) -> Void = { _ in },
                     tensors changeTensors: (inout [String: SafeTensors.Entry]) -> Void = { _ in }) throws -> String {
        var (tensors, metadata) = try SafeTensors.read(path: Self.model)
        change(&metadata)
        changeTensors(&tensors)
        let path = dir.appendingPathComponent(name).path
        let names = tensors.keys.sorted()
        try SafeTensors.write(path: path, tensors: names.map { ($0, tensors[$0]!.shape, tensors[$0]!.data) },
                              integerNames: Set(names.filter { tensors[$0]!.dtype == "I64" }), metadata: metadata)
        return path
    }

    /// Replaces `"key":value` in a JSON metadata string.
    func replacing(_ json: String?, _ key: String, with value: String) -> String {
        let text = json ?? "{}"
        let pattern = try! NSRegularExpression(pattern: "\"\(key)\":[^,}]*")
        return pattern.stringByReplacingMatches(in: text, range: NSRange(text.startIndex..., in: text), withTemplate: "\"\(key)\":\(value)")
    }

    func assertFails(_ arguments: [String], status: Int32 = 1, _ message: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let result = try CLI.run(arguments)
        XCTAssertEqual(result.status, status, "\(arguments): \(result.stderr)", file: file, line: line)
        XCTAssertTrue(result.stderr.contains(message), "\(arguments): \(result.stderr)", file: file, line: line)
    }

    // MARK: crashes and overflow traps

    /// An ONNX file of subgraph attributes nested 3000 deep (30 KB): libprotobuf-c's recursive unpack overflowed the stack.
    func testDeeplyNestedONNXIsRefused() throws {
        let dir = try CLI.temporaryDirectory(self)
        func field(_ number: UInt8, _ body: [UInt8]) -> [UInt8] {
            var length = body.count, varint: [UInt8] = []
            repeat { varint.append(UInt8(length & 0x7f) | (length > 0x7f ? 0x80 : 0)); length >>= 7 } while length > 0
            return [number << 3 | 2] + varint + body
        }
        var graph: [UInt8] = []
        for _ in 0..<3000 { graph = field(1, field(5, field(6, graph))) }  // Graph.node → Node.attribute → Attribute.g
        let model = [0x08, 0x07] + field(7, graph)  // ir_version 7, graph
        let path = dir.appendingPathComponent("nested.onnx")
        try Data(model).write(to: path)
        for command in [["inspect", path.path], ["import-weights", path.path, "--out", dir.appendingPathComponent("x.safetensors").path],
                        ["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("p.csv").path, "--model", path.path]] {
            try assertFails(command, "nest deeper than \(Limits.protobufDepth) levels")
        }
    }

    func testHugeOptionValuesAreRefusedNotTrapped() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = dir.appendingPathComponent("labels.csv")
        try "id,label\na,0\nb,1\n".write(to: labels, atomically: true, encoding: .utf8)
        let out = dir.appendingPathComponent("o.safetensors").path
        try assertFails(["inspect", Self.model, "--input-size", "1x3x3000000000x3000000000"], status: 64, "--input-size must look like 16x3x49x49")
        try assertFails(["inspect", Self.model, "--input-size", "1000000x3x65536x65536"], status: 64, "too large to count mult-adds")
        let fineTune = ["fine-tune", Self.images.path, "--labels", labels.path, "--from", Self.model, "--out", out]
        try assertFails(fineTune + ["--head-epochs", "9223372036854775807"], "--head-epochs must be between 0 and 1000000, not 9223372036854775807")
        try assertFails(fineTune + ["--batch-size", "9223372036854775807"], "--batch-size must be between 1 and 65536")
        try assertFails(fineTune + ["--crop", "1099511627776"], "--crop must be between 0 and 16384")
        try assertFails(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("p.csv").path, "--model", Self.model,
                         "--batch-size", "10000000000"], "--batch-size must be between 1 and 65536, not 10000000000")
        try assertFails(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("p.csv").path, "--model", Self.model,
                         "--batch-size", "-1"], "--batch-size must be between 1 and 65536, not -1")
        // Negative numbers are values, not options the parser cannot find ("Missing value").
        try assertFails(fineTune + ["--crop", "-5"], "--crop must be between 0 and 16384, not -5")
        try assertFails(fineTune + ["--head-epochs", "-1"], "--head-epochs must be between 0 and 1000000, not -1")
        try assertFails(fineTune + ["--lr", "-1"], "--lr must be positive")
        try assertFails(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("p.csv").path, "--model", Self.model,
                         "--threads", "-2"], "--threads must be between 1 and 1024, not -2")
        // A Slurm task id that would overflow the subtraction.
        let slurm = try CLI.run(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("p.csv").path, "--model", Self.model,
                                 "--shard", "auto"], environment: ["SLURM_ARRAY_TASK_ID": "-9223372036854775808", "SLURM_ARRAY_TASK_MIN": "1",
                                                                   "SLURM_ARRAY_TASK_COUNT": "2"], unsetting: ["JOB_COMPLETION_INDEX"])
        XCTAssertEqual(slurm.status, 1, slurm.stderr)
        XCTAssertTrue(slurm.stderr.contains("out of range"), slurm.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("p.csv").path), "no header-only CSV left")
    }

    func testCheckpointConfigValuesOutsideTheLimitsAreRefused() throws {
        let dir = try CLI.temporaryDirectory(self)
        let wide = try editedModel(dir, "wide.safetensors") { $0["config"] = replacing($0["config"], "baseWidth", with: "2305843009213693952") }
        try assertFails(["inspect", wide], "\(wide): the base width is 2305843009213693952, outside 1…1024")
        let crop = try editedModel(dir, "crop.safetensors") { $0["preprocessing"] = replacing($0["preprocessing"], "crop", with: "1099511627776") }
        try assertFails(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("p.csv").path, "--model", crop],
                        "\(crop): the preprocessing crop is 1099511627776, outside 0…16384")
        let small = try editedModel(dir, "small-crop.safetensors") { $0["preprocessing"] = replacing($0["preprocessing"], "crop", with: "16") }
        try assertFails(["batch-infer", Self.images.path, "--out", dir.appendingPathComponent("p.csv").path, "--model", small],
                        "\(small): the preprocessing crop is 16; it must be 0 (none) or at least 32")
        let one = try editedModel(dir, "one.safetensors") { $0["config"] = replacing($0["config"], "numClasses", with: "1") }
        try assertFails(["inspect", one], "\(one): the class count is 1, outside 2…100000")
    }

    // MARK: memory

    /// An uncompressed RGB TIFF of `width`x`height` (a 0x80 grey), written by hand.
    func writeTIFF(_ url: URL, width: Int, height: Int) throws {
        var data = Data()
        func u16(_ v: Int) { data.append(contentsOf: [UInt8(v & 0xff), UInt8(v >> 8 & 0xff)]) }
        func u32(_ v: Int) { u16(v & 0xffff); u16(v >> 16) }
        let entries = 10, ifd = 8, bits = ifd + 2 + entries * 12 + 4, pixels = bits + 6
        data.append(contentsOf: Array("II".utf8)); u16(42); u32(ifd)
        u16(entries)
        for (tag, type, count, value) in [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bits), (259, 3, 1, 1), (262, 3, 1, 2),
                                          (273, 4, 1, pixels), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, width * height * 3),
                                          (284, 3, 1, 1)] {
            u16(tag); u16(type); u32(count)
            if type == 3 && count == 1 { u16(value); u16(0) } else { u32(value) }
        }
        u32(0)
        u16(8); u16(8); u16(8)
        data.append(Data(repeating: 0x80, count: width * height * 3))
        try data.write(to: url)
    }

    func testImagesBeyondThePixelBudgetAreReportedAndTheOptionRaisesIt() throws {
        let dir = try CLI.temporaryDirectory(self)
        let images = dir.appendingPathComponent("images")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        try writeTIFF(images.appendingPathComponent("big.tif"), width: 1500, height: 1500)
        try FileManager.default.copyItem(at: Self.images.appendingPathComponent(Self.imageIDs[0] + ".tif"),
                                        to: images.appendingPathComponent("small.tif"))
        let out = dir.appendingPathComponent("p.csv"), errors = dir.appendingPathComponent("e.csv")
        // Batch 64: the default budget is 2^30 / (12 · 64) = 1 398 101 pixels, below 1500² = 2 250 000.
        let result = try CLI.run(["batch-infer", images.path, "--out", out.path, "--errors", errors.path, "--model", Self.model])
        XCTAssertEqual(result.status, 3, result.stderr)
        let reasons = try String(contentsOf: errors, encoding: .utf8)
        XCTAssertTrue(reasons.contains("big,\(images.appendingPathComponent("big.tif").path),\"1500x1500 is 2250000 pixels, more than the per-image budget of 1398101 (--max-image-pixels raises it"), reasons)
        let raised = try CLI.run(["batch-infer", images.path, "--out", out.path, "--errors", errors.path, "--model", Self.model,
                                  "--force", "--max-image-pixels", "3000000"])
        XCTAssertEqual(raised.status, 0, raised.stderr)
        XCTAssertEqual(try String(contentsOf: out, encoding: .utf8).split(separator: "\n").count, 3)
        try assertFails(["batch-infer", images.path, "--out", out.path, "--model", Self.model, "--force", "--max-image-pixels", "0"],
                        "--max-image-pixels must be between 1 and 67108864, not 0")
    }

    /// A batch size far above the number of images allocates for the images present only (fine-tune's batch
    /// buffer at 65536 images of 49x49 would be 1.9 GB).
    func testBufferFollowsTheImagesNotTheBatchSize() throws {
        let dir = try CLI.temporaryDirectory(self)
        let out = dir.appendingPathComponent("p.csv")
        let result = try CLI.run(["batch-infer", Self.images.path, "--out", out.path, "--model", Self.model, "--batch-size", "65536"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(try String(contentsOf: out, encoding: .utf8).split(separator: "\n").count, 13)
        let labels = dir.appendingPathComponent("labels.csv")
        try (["id,label"] + Self.imageIDs.enumerated().map { "\($0.element),\($0.offset % 2)" }).joined(separator: "\n")
            .write(to: labels, atomically: true, encoding: .utf8)
        let training = try CLI.run(["fine-tune", Self.images.path, "--labels", labels.path, "--from", Self.model,
                                    "--out", dir.appendingPathComponent("f.safetensors").path, "--batch-size", "65536",
                                    "--head-epochs", "1", "--finetune-epochs", "0", "--quiet"])
        XCTAssertEqual(training.status, 0, training.stderr)
        var usage = rusage()
        getrusage(RUSAGE_CHILDREN.rawValue, &usage)
        XCTAssertLessThan(usage.ru_maxrss, 1 << 20, "peak RSS of every child so far, KiB: under 1 GiB")
    }

    // MARK: model files that lie

    func testHDF5DataOutsideTheFileIsRefused() throws {
        let hdf5 = Self.fixtures.appendingPathComponent("hdf5")
        let dir = try CLI.temporaryDirectory(self)
        for (name, message) in [("bad_external_storage", "dataset 'bn1.running_mean' keeps its data in external files; refused"),
                                ("bad_external_link", "'bn1.running_mean' is an external or user-defined link; refused"),
                                ("bad_virtual", "dataset 'bn1.running_mean' is a virtual dataset; refused")] {
            // From the fixtures folder, so that the relative names inside the files would resolve.
            let out = dir.appendingPathComponent("\(name).safetensors")
            let result = try CLI.run(["import-weights", "\(name).h5", "--out", out.path], currentDirectory: hdf5)
            XCTAssertEqual(result.status, 1, "\(name): \(result.stderr)")
            XCTAssertTrue(result.stderr.contains("\(name).h5: \(message)"), result.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path))
        }
    }

    /// Found by tools/fuzz.sh hdf5: a damaged datatype claiming 4 GB numbers made libhdf5 allocate 4 GB for a
    /// 4-element dataset before it noticed the data were not in the file.
    func testHDF5NumbersOfAbsurdSizeAreRefusedBeforeReading() throws {
        let path = Self.fixtures.appendingPathComponent("hdf5/bad_fuzz_huge_element.h5").path
        try assertFails(["inspect", path], "\(path): dataset 'layer1.0.bn1.bias' has 4278190084-byte numbers: truncated or damaged")
        var usage = rusage()
        getrusage(RUSAGE_CHILDREN.rawValue, &usage)
        XCTAssertLessThan(usage.ru_maxrss, 1 << 20, "peak RSS of every child so far, KiB: under 1 GiB")
    }

    /// `inspect` and `import-weights` on the damaged fixture `name` (under fixtures/; HDF5 inside): status 1, one line
    /// each (the file, then one of the messages given), nothing written.
    func assertDamagedHDF5(_ name: String, inspect: [String], importWeights: [String]) throws {
        let dir = try CLI.temporaryDirectory(self)
        let path = Self.fixtures.appendingPathComponent(name).path, out = dir.appendingPathComponent("x.safetensors").path
        for (command, messages) in [(["inspect", path], inspect), (["import-weights", path, "--out", out], importWeights)] {
            let result = try CLI.run(command)
            XCTAssertEqual(result.status, 1, "\(command): \(result.stderr)")
            XCTAssertTrue(messages.map { "error: \(path): \($0)\n" }.contains(result.stderr), "\(command): \(result.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "nothing written")
    }

    /// Found by tools/fuzz.sh hdf5: a damaged group B-tree that makes libhdf5 itself dereference NULL. HDF5 files
    /// are read in a child process, so the command reports it in one line with status 1.
    func testACrashInsideLibHDF5IsAOneLineError() throws {
        let crash = ["the HDF5 library crashed reading this file (signal 11): it is damaged"]
        try assertDamagedHDF5("hdf5/bad_fuzz_libhdf5_crash.h5", inspect: crash, importWeights: crash)
    }

    /// The same crash inside a .keras archive (tools/make_keras_crash_fixture.py): its weights are read by libhdf5
    /// in the child process too, so the command still answers in one line.
    func testACrashInsideLibHDF5InAKerasArchiveIsAOneLineError() throws {
        let crash = ["the HDF5 library crashed reading this file (signal 11): it is damaged"]
        try assertDamagedHDF5("keras3/bad_fuzz_libhdf5_crash.keras", inspect: crash, importWeights: crash)
    }

    /// Found by tools/fuzz.sh hdf5: a damaged datatype on which libhdf5's bit copy (H5T__bit_copy) reads outside
    /// its buffer: a bus error (SIGBUS; SIGSEGV would do as well) or, as the memory around it happens to be, a read past
    /// the end of the file (in 40 runs: 22 and 18).
    func testABusErrorInsideLibHDF5IsAOneLineError() throws {
        let messages = ["the HDF5 library crashed reading this file (signal 7): it is damaged",
                        "the HDF5 library crashed reading this file (signal 11): it is damaged",
                        "cannot read dataset 'layer2.0.downsample.1.num_batches_tracked': the file is truncated or damaged "
                            + "(addr overflow, addr = 279216, size = 8, eoa = 234064)"]
        try assertDamagedHDF5("hdf5/bad_fuzz_bit_copy.h5", inspect: messages, importWeights: messages)
    }

    /// Found by tools/fuzz.sh hdf5: a damaged superblock that makes H5Fopen itself allocate and clear gigabytes.
    /// The HDF5 reader runs with a memory limit, so the allocation fails and the file is reported as damaged.
    func testHDF5AllocationsInsideLibHDF5AreBounded() throws {
        let path = Self.fixtures.appendingPathComponent("hdf5/bad_fuzz_huge_superblock.h5").path
        try assertFails(["inspect", path], "\(path): cannot open the HDF5 file, it is truncated or damaged")
        var usage = rusage()
        getrusage(RUSAGE_CHILDREN.rawValue, &usage)
        XCTAssertLessThan(usage.ru_maxrss, 1 << 20, "peak RSS of every child so far, KiB: under 1 GiB")
    }

    func testBatchNormValuesThatGiveGarbageAreRefused() throws {
        let dir = try CLI.temporaryDirectory(self)
        let out = dir.appendingPathComponent("p.csv").path
        let epsilon = try editedModel(dir, "eps.safetensors") { $0["config"] = replacing($0["config"], "batchNormEpsilon", with: "-1") }
        try assertFails(["batch-infer", Self.images.path, "--out", out, "--model", epsilon], "\(epsilon): BatchNorm epsilon is -1.0; it must be positive")
        let variance = try editedModel(dir, "var.safetensors", tensors: { $0["layer1.0.bn1.running_var"]!.data[0] = -4 })
        try assertFails(["batch-infer", Self.images.path, "--out", out, "--model", variance],
                        "\(variance): tensor layer1.0.bn1.running_var holds a negative variance (-4.0)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    }

    // MARK: labels CSV and messages

    func testLabelsWithABOMAndOtherColumnNames() throws {
        let dir = try CLI.temporaryDirectory(self)
        let labels = dir.appendingPathComponent("labels.csv")
        let rows = Self.imageIDs.enumerated().map { "\($0.element),\($0.offset % 2)" }
        try Data([0xEF, 0xBB, 0xBF] + Array((["image,target"] + rows).joined(separator: "\r\n").utf8)).write(to: labels)
        let result = try CLI.run(["evaluate", Self.images.path, "--labels", labels.path, "--model", Self.model])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("images: 12 (failed: 0, labelled but not found: 0)"), result.stdout)
        XCTAssertTrue(result.stderr.contains("no id,label header; using its first two columns 'image' and 'target' as id and label"), result.stderr)
        // Named columns in another order, a BOM, and a blank label.
        try Data([0xEF, 0xBB, 0xBF] + Array("Label,ID\n0,a\n,b\n".utf8)).write(to: labels)
        try assertFails(["evaluate", Self.images.path, "--labels", labels.path, "--model", Self.model],
                        "\(labels.path): record 3: the label of b is empty")
    }

    func testMessagesNameTheFileAndTheProblem() throws {
        let dir = try CLI.temporaryDirectory(self)
        try assertFails(["inspect", dir.path], "\(dir.path): is a folder, not a model file")
        let labels = dir.appendingPathComponent("labels.csv")
        try (["id,label"] + Self.imageIDs.enumerated().map { "\($0.element),\($0.offset % 2)" }).joined(separator: "\n")
            .write(to: labels, atomically: true, encoding: .utf8)
        // Plots into a folder that cannot be made: refused before the evaluation, in one line.
        let blocker = dir.appendingPathComponent("file")
        try Data().write(to: blocker)
        let plots = blocker.appendingPathComponent("plots").path
        let result = try CLI.run(["evaluate", Self.images.path, "--labels", labels.path, "--model", Self.model, "--plots", plots])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.hasPrefix("error: \(plots): cannot create the plots folder"), result.stderr)
        XCTAssertFalse(result.stderr.contains("NSCocoaErrorDomain"), result.stderr)
        XCTAssertEqual(result.stdout, "", "refused before the evaluation")
        // fine-tune's output folder is checked before training.
        let missing = dir.appendingPathComponent("no/such/folder/f.safetensors").path
        try assertFails(["fine-tune", Self.images.path, "--labels", labels.path, "--from", Self.model, "--out", missing],
                        "\(missing): cannot write here (--out)")
        // --quiet quiets evaluate and import-weights.
        let quietEvaluate = try CLI.run(["evaluate", Self.images.path, "--labels", labels.path, "--model", Self.model, "--quiet"])
        XCTAssertEqual(quietEvaluate.status, 0, quietEvaluate.stderr)
        XCTAssertEqual(quietEvaluate.stdout + quietEvaluate.stderr, "")
        let quietImport = try CLI.run(["import-weights", Self.fixtures.appendingPathComponent("hdf5/flat.h5").path,
                                       "--out", dir.appendingPathComponent("i.safetensors").path, "--quiet"])
        XCTAssertEqual(quietImport.status, 0, quietImport.stderr)
        XCTAssertEqual(quietImport.stdout + quietImport.stderr, "")
    }
}
