import ResNetSupport

/// Reads ResNet-18 weights from HDF5 files (see issue: import-weights).
public enum HDF5Importer {
    public static func importModel(path: String, options: ImportOptions) throws -> ImportedModel {
        throw FileError(path, "HDF5 import is not available in this build")
    }
}
