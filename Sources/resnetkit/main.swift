import Foundation
import ResNetSupport

// `import-weights`, `batch-infer` and `fine-tune` are installed as links to this binary: the program
// name picks the subcommand, so the design card's invocations work verbatim.
var arguments = Array(CommandLine.arguments.dropFirst())
let programName = URL(fileURLWithPath: CommandLine.arguments.first ?? "resnetkit").lastPathComponent
if ResNetKit.linkedSubcommands.contains(programName) {
    arguments.insert(programName, at: 0)
}
BLASRuntime.ensureOptimizedKernel(log: Console.debug)
ResNetKit.main(arguments)
