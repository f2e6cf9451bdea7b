import ArgumentParser
import Foundation
import ResNetData
import ResNetFormats
import ResNetModel
import ResNetSupport

/// `resnetkit import-weights FILE`: a foreign model file (ONNX, HDF5, PyTorch) → a native checkpoint with provenance.
struct ImportWeights: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-weights",
        abstract: "Convert an ONNX, HDF5, PyTorch or Keras 3 ResNet-18 into a ResNetKit checkpoint.",
        discussion: "The format is told by the file's content, not its extension: ONNX (folded or not), HDF5 written "
            + "by h5py from a PyTorch state_dict (flat or nested names) or by Keras (save_weights / model.save), a "
            + "PyTorch checkpoint written by torch.save (.pth/.pt/.tar: a state_dict, a training checkpoint or a whole "
            + "pickled model, read without running its pickle), a Keras 3 .weights.h5 or .keras file, or a safetensors state dict. The checkpoint records where it came from (path, SHA-256, importer). Without "
            + "--out it is written to model.safetensors in the current folder, where fine-tune and batch-infer look "
            + "for a model by default. An existing file is never replaced without --force.")

    @Argument(help: "The model file: ONNX, HDF5 (PyTorch state_dict or Keras weights), a PyTorch checkpoint, a .keras archive or safetensors.")
    var file: String

    @Option(name: .long, help: ArgumentHelp("Checkpoint to write.", valueName: "CKPT"))
    var out = "model.safetensors"

    @Flag(name: .long, help: "Replace the output file if it exists.")
    var force = false

    @Option(name: .long, help: ArgumentHelp(
        "Folder of TIFF images (up to \(calibrationLimit) are read) for rebuilding the BatchNorms of a model whose "
            + "BatchNorms were folded into its convolutions (ONNX exports in eval mode).", valueName: "DIR"))
    var calibrate: String?

    @Option(name: .long, help: ArgumentHelp(
        "Class names: comma-separated (benign,tumor) or a file with one name per line; as many as the model has classes.",
        valueName: "NAMES"))
    var classes: String?

    @Flag(name: .long, help: "No progress messages (errors are still shown).")
    var quiet = false

    static let calibrationLimit = 256

    func run() throws {
        Console.quiet = quiet
        if quiet { Console.silenceStandardOutput() }
        var inputs = [OutputGuard.Input(file, role: "model being imported")]
        if let calibrate { inputs.append(OutputGuard.Input(calibrate, role: "calibration images (--calibrate)")) }
        if let classes, FileManager.default.fileExists(atPath: classes) { inputs.append(OutputGuard.Input(classes, role: "class names (--classes)")) }
        let output = OutputGuard.Output(out, option: "--out", mayExist: force)
        try OutputGuard.check(outputs: [output], inputs: inputs)
        let locks = try OutputGuard.lock([output])
        defer { locks.forEach { $0.release() } }
        let classNames = try classes.map(Self.parseClassNames)
        let kind = try ModelFileKind.detect(path: file)
        var calibration: CalibrationImages?
        if let calibrate {
            // Only ONNX exports come with folded BatchNorms; other formats keep their statistics.
            if kind == .onnx {
                calibration = try Self.loadCalibration(folder: calibrate, preprocessing: Preprocessing())
            } else {
                Console.info("--calibrate not used: \(kind.rawValue) files keep their BatchNorm statistics")
            }
        }
        let imported = try ModelImporter.load(path: file, options: ImportOptions(calibration: calibration, classNames: classNames))
        var checkpoint = imported.checkpoint
        if let classNames {
            guard classNames.count == checkpoint.config.numClasses else {
                throw FileError(file, "the model has \(checkpoint.config.numClasses) classes but --classes gives \(classNames.count) names")
            }
            checkpoint.classNames = classNames
        }
        let producer = imported.producer.flatMap { $0.isEmpty ? nil : $0 }
        checkpoint.provenance = Provenance(
            source: file, sourceSHA256: try FileDigest.sha256(path: file),
            producer: "import-weights (\(imported.sourceFormat)\(producer.map { ", \($0)" } ?? ""))",
            notes: imported.notes)
        try checkpoint.save(path: out, overwrite: force)

        let config = checkpoint.config
        print("Read:       \(file)")
        print("Format:     \(imported.sourceFormat)\(producer.map { ", produced by \($0)" } ?? "")")
        print("Model:      ResNet-18, base width \(config.baseWidth), \(config.head.rawValue) head, \(config.numClasses) classes")
        let names = checkpoint.classNames
        print("Classes:    \(names.count <= 10 ? names.joined(separator: ", ") : names.prefix(10).joined(separator: ", ") + ", …")")
        print("Parameters: \(Console.grouped(checkpoint.architecture.trainableParameterCount))")
        print("BatchNorm:  \(imported.batchNormFolded ? "folded into the convolutions in the file" : "kept in the file"), epsilon \(config.batchNormEpsilon)")
        for note in imported.notes { print("Note:       \(note)") }
        print("SHA-256:    \(checkpoint.provenance.sourceSHA256)")
        print("Wrote:      \(out)")
    }

    /// `a,b,c`, or the path of a file with one name per line (blank lines ignored).
    static func parseClassNames(_ value: String) throws -> [String] {
        var isDirectory: ObjCBool = false
        let names: [String]
        if FileManager.default.fileExists(atPath: value, isDirectory: &isDirectory), !isDirectory.boolValue {
            guard let text = try? String(contentsOfFile: value, encoding: .utf8) else {
                throw FileError(value, "cannot read the class names (expected UTF-8 text, one name per line)")
            }
            names = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            guard !names.isEmpty else { throw FileError(value, "holds no class names") }
        } else {
            names = value.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard !names.contains(where: \.isEmpty) else {
                throw ValidationError("--classes has an empty name in '\(value)' (use a,b,c or a file with one name per line)")
            }
        }
        return names
    }

    /// Up to `calibrationLimit` TIFFs from `folder` (sorted by name), prepared as the checkpoint will prepare
    /// its input. Unreadable images and images of another size than the first are skipped with a warning.
    static func loadCalibration(folder: String, preprocessing: Preprocessing) throws -> CalibrationImages {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: folder) else {
            throw FileError(folder, "is not a readable folder of calibration images")
        }
        let names = entries.filter { ["tif", "tiff"].contains(URL(fileURLWithPath: $0).pathExtension.lowercased()) }.sorted()
        var pixels: [Float] = []
        var size: (height: Int, width: Int)?
        var count = 0, skipped = 0
        for name in names where count < calibrationLimit {
            let path = URL(fileURLWithPath: folder).appendingPathComponent(name).path
            do {
                let image = try TIFFDecoder.decode(path: path)
                let prepared = ImagePreparation.outputSize(width: image.width, height: image.height, preprocessing)
                guard prepared.height >= ModelConfig.minimumInputSide, prepared.width >= ModelConfig.minimumInputSide else {
                    throw FileError(path, "is \(image.width)x\(image.height), smaller than the network's minimum \(ModelConfig.minimumInputSide)x\(ModelConfig.minimumInputSide)")
                }
                if let size, size != prepared {
                    throw FileError(path, "is \(prepared.width)x\(prepared.height) after preprocessing, unlike the first image (\(size.width)x\(size.height))")
                }
                size = prepared
                let start = pixels.count
                pixels.append(contentsOf: repeatElement(0, count: prepared.height * prepared.width * 3))
                try pixels.withUnsafeMutableBufferPointer { buffer in
                    try ImagePreparation.prepare(image, preprocessing, into: buffer.baseAddress! + start, path: path)
                }
                count += 1
            } catch let error as FileError {
                Console.warning("calibration image skipped: \(error)")
                skipped += 1
            }
        }
        guard let size, count > 0 else {
            throw FileError(folder, "no usable TIFF images to calibrate with (\(names.count) found, \(skipped) skipped)")
        }
        Console.info("Calibration: read \(count) images (\(size.width)x\(size.height)) from \(folder)\(skipped > 0 ? ", skipped \(skipped)" : "")")
        return CalibrationImages(pixels: pixels, count: count, height: size.height, width: size.width)
    }
}
