import FuzzSupport
@testable import ResNetFormats

// ONNX: the nesting scan on raw bytes, then the whole import (detection, libprotobuf-c, graph matching).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzONNX(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    _ = try? ProtobufNesting.check(UnsafeRawBufferPointer(start: start, count: count))
    _ = try? ONNXImporter.importModel(path: FuzzInput.file(start, count), options: ImportOptions())
    return 0
}

@_cdecl("FuzzONNX_main")
public func fuzzONNXMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzONNX)
}
