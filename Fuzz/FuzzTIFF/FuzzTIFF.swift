import FuzzSupport
import ResNetData

// TIFF: header checks and decoding through libtiff, with a small pixel budget so that each input is quick.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTIFF(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    TIFFDecoder.pixelBudget = 1 << 16
    _ = try? TIFFDecoder.decode(path: FuzzInput.file(start, count))
    return 0
}

@_cdecl("FuzzTIFF_main")
public func fuzzTIFFMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzTIFF)
}
