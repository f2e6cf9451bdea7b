import ResNetSupport

/// Reads ResNet-18 ONNX exports (see issue: import-weights).
public enum ONNXImporter {
    public static func importModel(path: String, options: ImportOptions) throws -> ImportedModel {
        throw FileError(path, "ONNX import is not available in this build")
    }
}
