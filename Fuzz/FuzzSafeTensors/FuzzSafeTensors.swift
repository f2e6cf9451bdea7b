import FuzzSupport
import Foundation
import ResNetFormats

// safetensors: the container parser on bytes, then a checkpoint load (metadata JSON, architecture, values).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafeTensors(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    _ = try? SafeTensors.parse(Data(bytes: start, count: count), path: "fuzz")
    _ = try? Checkpoint.load(path: FuzzInput.file(start, count))
    return 0
}

@_cdecl("FuzzSafeTensors_main")
public func fuzzSafeTensorsMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzSafeTensors)
}
