import FuzzSupport
import ResNetFormats

// HDF5: the whole import through libhdf5 (groups, attributes, Keras layouts, storage checks). libhdf5 itself is
// not instrumented, so coverage comes from the Swift side only.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHDF5(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    _ = try? HDF5Importer.importModel(path: FuzzInput.file(start, count), options: ImportOptions())
    return 0
}

@_cdecl("FuzzHDF5_main")
public func fuzzHDF5Main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzHDF5)
}
