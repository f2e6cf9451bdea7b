import FuzzSupport
import Foundation
@testable import ResNetFormats

// PyTorch checkpoints: the restricted unpickler on raw bytes, then the whole import of the input as a file
// (zip archive or legacy stream, tensors collected, layout mapped, values checked).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPickle(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    _ = try? Unpickler(UnsafeRawBufferPointer(start: start, count: count)).load()
    _ = try? ModelImporter.load(path: FuzzInput.file(start, count))
    return 0
}

@_cdecl("FuzzPickle_main")
public func fuzzPickleMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzPickle)
}
