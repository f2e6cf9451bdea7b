import ArgumentParser
import ResNetModel
import ResNetSupport

/// --crop, --normalize and --channel-order: how images are prepared for the network, shared by every command
/// that feeds it images. What is not given comes from the model (fine-tune and find-lr crop 49 by default, the
/// seed's recipe).
struct PreprocessingOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: "Centre crop side (0: whole image); default: the model's (fine-tune and find-lr: 49).")
    var crop: Int?

    @Option(help: ArgumentHelp("Pixel normalisation; default from the model.", valueName: "imagenet|none"))
    var normalize: Normalization?

    @Option(name: .customLong("channel-order"), help: ArgumentHelp("Channel order the network was trained on; default from the model.", valueName: "rgb|bgr"))
    var channelOrder: ChannelOrder?

    func validate() throws {
        if let crop {
            try Limits.check(crop, Limits.crop, "--crop")
            try Self.checkCrop(crop)
        }
    }

    /// `model` with the options given applied; `defaultCrop` replaces the model's crop when --crop is not given.
    func applied(to model: Preprocessing, defaultCrop: Int? = nil) throws -> Preprocessing {
        var preprocessing = model
        if let side = crop ?? defaultCrop { preprocessing.crop = side }
        if let normalize { preprocessing.normalization = normalize }
        if let channelOrder { preprocessing.channelOrder = channelOrder }
        try Self.checkCrop(preprocessing.crop)
        return preprocessing
    }

    static func checkCrop(_ side: Int) throws {
        guard side == 0 || side >= ModelConfig.minimumInputSide else {
            throw UsageError("--crop must be 0 (none) or at least \(ModelConfig.minimumInputSide), the network's smallest input")
        }
    }
}

// Options whose value is one of a few names: argument-parser lists the names in --help and refuses the others
// with a message that names the option and its choices.
extension Normalization: ExpressibleByArgument {}
extension ChannelOrder: ExpressibleByArgument {}
extension HeadKind: ExpressibleByArgument {}
extension FrozenBatchNormMode: ExpressibleByArgument {}
