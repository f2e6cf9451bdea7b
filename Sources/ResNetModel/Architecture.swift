/// Geometry of one convolution or pooling window (square kernel; ResNet's convolutions have no bias, a
/// BatchNorm follows each).
public struct ConvShape: Hashable, Sendable {
    public var inChannels: Int
    public var outChannels: Int
    public var kernel: Int
    public var stride: Int
    /// PyTorch's padding: this many pixels on every side.
    public var padding: Int
    /// TensorFlow's padding='same' instead: the padding depends on the input size and may be one pixel larger
    /// after than before (`pads`).
    public var samePadding: Bool

    public init(_ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int, padding: Int, samePadding: Bool = false) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        self.samePadding = samePadding
    }

    /// Padding before (top or left) and after (bottom or right) along an axis of this size. 'same': the output
    /// has ceil(side / stride) pixels, total padding max((out − 1)·stride + kernel − side, 0), the smaller half
    /// before.
    public func pads(_ side: Int) -> (before: Int, after: Int) {
        guard samePadding else { return (padding, padding) }
        let out = (side + stride - 1) / stride
        let total = max((out - 1) * stride + kernel - side, 0)
        return (total / 2, total - total / 2)
    }

    /// floor((side + before + after − kernel) / stride) + 1, as PyTorch and TensorFlow compute it.
    public func outputSide(_ side: Int) -> Int {
        let (before, after) = pads(side)
        return (side + before + after - kernel) / stride + 1
    }

    /// Whether padding is the same on every side for inputs of this size.
    public func isSymmetric(height: Int, width: Int) -> Bool {
        let h = pads(height), w = pads(width)
        return h.before == h.after && w.before == w.after && h.before == w.before
    }
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

    /// The stem's max pool, 3x3 stride 2 pad 1 (channels: the stem's).
    public let maxPool: ConvShape

    public init(_ config: ModelConfig) {
        self.config = config
        let same = config.samePadding
        stem = ConvShape(3, config.baseWidth, kernel: 7, stride: 2, padding: 3, samePadding: same.contains("conv1"))
        maxPool = ConvShape(config.baseWidth, config.baseWidth, kernel: 3, stride: 2, padding: 1,
                            samePadding: same.contains(ModelConfig.maxPoolName))
        var blocks: [BlockLayout] = []
        var channels = config.baseWidth
        for (stage, width) in config.stageWidths.enumerated() {
            for index in 0..<2 {
                let stride = (stage > 0 && index == 0) ? 2 : 1
                let needsProjection = stride != 1 || channels != width
                let name = "layer\(stage + 1).\(index)"
                blocks.append(BlockLayout(
                    name: name,
                    conv1: ConvShape(channels, width, kernel: 3, stride: stride, padding: 1,
                                     samePadding: same.contains("\(name).conv1")),
                    conv2: ConvShape(width, width, kernel: 3, stride: 1, padding: 1, samePadding: same.contains("\(name).conv2")),
                    downsample: needsProjection ? ConvShape(channels, width, kernel: 1, stride: stride, padding: 0,
                                                            samePadding: same.contains("\(name).downsample.0")) : nil))
                channels = width
            }
        }
        self.blocks = blocks
    }

    /// Spatial side after the stem (conv1 + maxpool) for an input side.
    public func stemOutputSide(_ side: Int) -> Int { maxPool.outputSide(stem.outputSide(side)) }

    /// The input geometry of every convolution for a batch of `input`, in the order a forward pass runs them:
    /// the stem, then per block conv1, the downsample (where there is one) and conv2.
    public func convolutionInputs(_ input: Geometry) -> [Geometry] {
        var list = [input]
        var g = Geometry(batch: input.batch, height: stemOutputSide(input.height), width: stemOutputSide(input.width))
        for block in blocks {
            let mid = g.output(of: block.conv1)
            list += [g] + (block.downsample == nil ? [] : [g]) + [mid]
            g = mid.output(of: block.conv2)
        }
        return list
    }

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
