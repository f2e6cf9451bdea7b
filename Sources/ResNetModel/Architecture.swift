/// Geometry of one convolution (square kernel, no bias: ResNet's convolutions are followed by BatchNorm).
public struct ConvShape: Hashable, Sendable {
    public var inChannels: Int
    public var outChannels: Int
    public var kernel: Int
    public var stride: Int
    public var padding: Int

    public init(_ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int, padding: Int) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
    }

    /// PyTorch's output size: floor((side + 2·pad − kernel) / stride) + 1.
    public func outputSide(_ side: Int) -> Int { (side + 2 * padding - kernel) / stride + 1 }
    /// Length of one im2col row (kernel · kernel · inChannels).
    public var patchSize: Int { kernel * kernel * inChannels }
    /// torchvision weight shape [out, in, kh, kw].
    public var weightShape: [Int] { [outChannels, inChannels, kernel, kernel] }
}

/// One BasicBlock: conv3x3(stride) → BN → ReLU → conv3x3 → BN, plus the identity or a 1x1 downsample.
public struct BlockLayout: Equatable, Sendable {
    /// torchvision prefix, e.g. `layer2.0`.
    public var name: String
    public var conv1: ConvShape
    public var conv2: ConvShape
    public var downsample: ConvShape?
}

/// ResNet-18 exactly as torchvision builds it, at any width and class count.
public struct Architecture: Equatable, Sendable {
    public let config: ModelConfig
    /// conv1 7x7/2 pad 3 (followed by bn1, ReLU, maxpool 3x3/2 pad 1).
    public let stem: ConvShape
    public let blocks: [BlockLayout]

    public static let maxPoolKernel = 3, maxPoolStride = 2, maxPoolPadding = 1

    public init(_ config: ModelConfig) {
        self.config = config
        stem = ConvShape(3, config.baseWidth, kernel: 7, stride: 2, padding: 3)
        var blocks: [BlockLayout] = []
        var channels = config.baseWidth
        for (stage, width) in config.stageWidths.enumerated() {
            for index in 0..<2 {
                let stride = (stage > 0 && index == 0) ? 2 : 1
                let needsProjection = stride != 1 || channels != width
                blocks.append(BlockLayout(
                    name: "layer\(stage + 1).\(index)",
                    conv1: ConvShape(channels, width, kernel: 3, stride: stride, padding: 1),
                    conv2: ConvShape(width, width, kernel: 3, stride: 1, padding: 1),
                    downsample: needsProjection ? ConvShape(channels, width, kernel: 1, stride: stride, padding: 0) : nil))
                channels = width
            }
        }
        self.blocks = blocks
    }

    /// The stem's max pool output side: floor((side + 2·pad − kernel) / stride) + 1, as PyTorch computes it.
    public static func maxPoolOutputSide(_ side: Int) -> Int {
        (side + 2 * maxPoolPadding - maxPoolKernel) / maxPoolStride + 1
    }

    /// Spatial side after the stem (conv1 + maxpool) for an input side.
    public func stemOutputSide(_ side: Int) -> Int { Self.maxPoolOutputSide(stem.outputSide(side)) }

    /// Every convolution with the names of its weight and of the BatchNorm that follows it, in forward order.
    public var namedConvolutions: [(conv: String, batchNorm: String, shape: ConvShape)] {
        var list: [(String, String, ConvShape)] = [("conv1", "bn1", stem)]
        for block in blocks {
            list.append(("\(block.name).conv1", "\(block.name).bn1", block.conv1))
            list.append(("\(block.name).conv2", "\(block.name).bn2", block.conv2))
            if let ds = block.downsample {
                list.append(("\(block.name).downsample.0", "\(block.name).downsample.1", ds))
            }
        }
        return list
    }
}
