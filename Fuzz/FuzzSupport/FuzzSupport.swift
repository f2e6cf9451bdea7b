import Foundation

/// The fuzzers' shared piece: readers that take a path get the input through a file in /dev/shm (or the
/// temporary folder), one per process, rewritten for every input.
public enum FuzzInput {
    public static let path: String = {
        let folder = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        return (folder as NSString).appendingPathComponent("resnetkit-fuzz-\(getpid())")
    }()

    /// Writes the input to `path` and returns it.
    public static func file(_ start: UnsafeRawPointer, _ count: Int) -> String {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        if fd >= 0 {
            var offset = 0
            while offset < count {
                let written = write(fd, start + offset, count - offset)
                if written <= 0 { break }
                offset += written
            }
            close(fd)
        }
        return path
    }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafeRawPointer?, Int) -> CInt) -> CInt

/// SwiftPM makes an executable's `main` an alias of `<Module>_main`, which would hide libFuzzer's own `main`:
/// each target defines that function and hands control to libFuzzer's driver from here.
public func runFuzzer(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                      _ callback: @convention(c) (UnsafeRawPointer?, Int) -> CInt) -> CInt {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments, callback)
}
