import Foundation
import ResNetFormats
import ResNetSupport

// `import-weights`, `batch-infer` and `fine-tune` are installed as links to this binary: the program
// name picks the subcommand, so the design card's invocations work verbatim.
var arguments = Array(CommandLine.arguments.dropFirst())
let programName = URL(fileURLWithPath: CommandLine.arguments.first ?? "resnetkit").lastPathComponent
if ResNetKit.linkedSubcommands.contains(programName) {
    arguments.insert(programName, at: 0)
}
// HDF5 files are read by a child copy of this program (libhdf5 can crash on damaged files); this is that child.
HDF5Isolation.runChildIfRequested()
HDF5Isolation.executable = "/proc/self/exe"
BLASRuntime.ensureOptimizedKernel(log: Console.debug)
do {
    var command = try ResNetKit.parseAsRoot(arguments)
    try command.run()
} catch let error where error is FileError || error is UsageError || error is LimitError {
    // A problem with a file the user gave (`error: path: problem`) or with the options: one line, status 1.
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    exit(1)
} catch {
    let status = ResNetKit.exitCode(for: error), message = ResNetKit.message(for: error)
    if status == .failure && !message.isEmpty {
        // A refusal from a command's validate(): one line, status 1, like the same refusal from run().
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        exit(status.rawValue)
    }
    if status == .validationFailure && message.hasPrefix("The value '") && message.contains(". Please provide one of '")
        && !message.contains("\n") {
        // A value that is not one of an option's choices: argument-parser's message names the option and the
        // choices. One line and status 1, as every other refusal of an option's value.
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        exit(EXIT_FAILURE)
    }
    // Other usage errors, --help, and the commands' own exit codes, as swift-argument-parser reports them.
    ResNetKit.exit(withError: error)
}
