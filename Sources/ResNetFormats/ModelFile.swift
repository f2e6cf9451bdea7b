import Foundation
import ResNetModel
import ResNetSupport

/// What a model file is, told by its content (never by its extension).
public enum ModelFileKind: String, Sendable {
    case checkpoint = "safetensors"
    case onnx = "ONNX"
    case hdf5 = "HDF5"
    case pytorch = "PyTorch"
    case keras = "Keras 3"

    static let hdf5Signature: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]

    /// Sniffs the first bytes: the HDF5 signature (at 0 or a power-of-two user-block offset), a safetensors
    /// header (length + `{`), or a protobuf `ModelProto` (its first field is a small varint/length tag).
    public static func detect(path: String) throws -> ModelFileKind {
        var info = stat()
        if stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR {
            throw FileError(path, "is a folder, not a model file")
        }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
                throw FileError(path, "is a folder, not a model file")
            }
            throw FileError(path, FileManager.default.fileExists(atPath: path) ? "cannot open: \(systemErrorMessage())" : "no such file")
        }
        defer { try? handle.close() }
        let head = [UInt8]((try? handle.read(upToCount: 16)) ?? Data())
        guard !head.isEmpty else { throw FileError(path, "the file is empty") }
        if head.starts(with: hdf5Signature) { return .hdf5 }
        for offset in [512, 1024, 2048, 4096] {
            try? handle.seek(toOffset: UInt64(offset))
            if let bytes = try? handle.read(upToCount: 8), [UInt8](bytes) == hdf5Signature { return .hdf5 }
        }
        if head.count >= 9 && head[8] == UInt8(ascii: "{") { return .checkpoint }
        // torch.save: a zip (torch ≥ 1.6) or a pickle stream (PROTO opcode 0x80, then the protocol number).
        if PyTorchImporter.recognises(head) {
            return head.starts(with: PyTorchImporter.zipSignature) && KerasArchive.recognises(path: path) ? .keras : .pytorch
        }
        // ModelProto fields: ir_version (1, varint → 0x08), producer_name (2 → 0x12), producer_version (3 → 0x1a),
        // domain (4 → 0x22), model_version (5 → 0x28), doc_string (6 → 0x32), graph (7 → 0x3a), opset_import (8 → 0x42).
        if [0x08, 0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42].contains(head[0]) { return .onnx }
        throw FileError(path, "not a model file this tool reads (expected ONNX, HDF5, a PyTorch or Keras 3 file, or a safetensors checkpoint)")
    }
}

/// A model read from a foreign format, with an account of what the importer found and did.
public struct ImportedModel {
    public var checkpoint: Checkpoint
    /// e.g. `ONNX (opset 17)`, `HDF5 (PyTorch state_dict, nested groups)`, `HDF5 (Keras)`.
    public var sourceFormat: String
    /// The producing software as the file names it (e.g. `pytorch 2.15.0`), if it does.
    public var producer: String?
    /// Whether BatchNorm had been folded into the convolutions in the file.
    public var batchNormFolded: Bool
    /// What the importer did, one line each, printed by `import-weights` and kept in the provenance.
    public var notes: [String]

    public init(checkpoint: Checkpoint, sourceFormat: String, producer: String?, batchNormFolded: Bool, notes: [String]) {
        self.checkpoint = checkpoint
        self.sourceFormat = sourceFormat
        self.producer = producer
        self.batchNormFolded = batchNormFolded
        self.notes = notes
    }
}

/// Images for estimating BatchNorm statistics of a folded model: NHWC, already preprocessed.
public struct CalibrationImages {
    public var pixels: [Float]
    public var count: Int, height: Int, width: Int
    public init(pixels: [Float], count: Int, height: Int, width: Int) {
        self.pixels = pixels
        self.count = count
        self.height = height
        self.width = width
    }
}

public struct ImportOptions {
    /// Used to rebuild folded BatchNorms from real activations (`--calibrate DIR`).
    public var calibration: CalibrationImages?
    /// Class names to store (`--classes`); defaults to "0", "1", ….
    public var classNames: [String]?
    public init(calibration: CalibrationImages? = nil, classNames: [String]? = nil) {
        self.calibration = calibration
        self.classNames = classNames
    }
}

public enum ModelImporter {
    /// Reads any supported model file into a checkpoint. Safetensors files load as they are.
    public static func load(path: String, options: ImportOptions = ImportOptions()) throws -> ImportedModel {
        switch try ModelFileKind.detect(path: path) {
        case .checkpoint:
            let checkpoint = try Checkpoint.load(path: path)
            return ImportedModel(checkpoint: checkpoint, sourceFormat: "safetensors", producer: checkpoint.provenance.producer,
                                 batchNormFolded: false, notes: [])
        case .onnx:
            return try validated(ONNXImporter.importModel(path: path, options: options), path: path)
        case .hdf5:
            return try validated(isolated(.hdf5, path: path, options: options), path: path)
        case .pytorch:
            return try validated(PyTorchImporter.importModel(path: path, options: options), path: path)
        case .keras:
            return try validated(isolated(.keras, path: path, options: options), path: path)
        }
    }

    /// What libhdf5 reads (HDF5 files, `.keras` archives), in a child process when the program set one up.
    static func isolated(_ kind: HDF5Isolation.Kind, path: String, options: ImportOptions) throws -> ImportedModel {
        guard let executable = HDF5Isolation.executable else { return try kind.importModel(path: path, options: options) }
        return try HDF5Isolation.importModel(path: path, kind: kind, options: options, executable: executable)
    }

    /// Imported values get the checks a checkpoint's get (epsilon, variances, sizes).
    static func validated(_ model: ImportedModel, path: String) throws -> ImportedModel {
        try ModelValidation.check(config: model.checkpoint.config, preprocessing: model.checkpoint.preprocessing, path: path)
        try ModelValidation.check(state: model.checkpoint.state, path: path)
        return model
    }
}
