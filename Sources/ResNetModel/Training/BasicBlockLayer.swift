/// One BasicBlock: conv3x3(stride) → BN → ReLU → conv3x3 → BN, + identity or 1x1 downsample → ReLU.
/// bn2 adds the shortcut and applies the final ReLU in its own pass, so the block's output is bn2's.
final class BasicBlockLayer {
    let conv1: Conv2dLayer, bn1: BatchNormLayer, conv2: Conv2dLayer, bn2: BatchNormLayer
    let downsample: (conv: Conv2dLayer, bn: BatchNormLayer)?
    let outputGradient = FloatBuffer(), inputGradient = FloatBuffer()
    private var rows = 0, inputCount = 0

    init(conv1: Conv2dLayer, bn1: BatchNormLayer, conv2: Conv2dLayer, bn2: BatchNormLayer,
         downsample: (conv: Conv2dLayer, bn: BatchNormLayer)?) {
        precondition(bn2.relu, "a block's bn2 applies the block's final ReLU")
        self.conv1 = conv1; self.bn1 = bn1; self.conv2 = conv2; self.bn2 = bn2; self.downsample = downsample
    }

    var parameters: [TrainableParameter] {
        [conv1.weight, bn1.weight, bn1.bias, conv2.weight, bn2.weight, bn2.bias]
            + (downsample.map { [$0.conv.weight, $0.bn.weight, $0.bn.bias] } ?? [])
    }

    /// x [N·H·W, Cin] → y [N·Ho·Wo, Cout]; `statistics(bn)` says whether a BatchNorm uses batch statistics;
    /// `forBackward` false: no `backward` follows.
    func forward(_ x: UnsafePointer<Float>, _ g: Geometry, statistics: (BatchNormLayer) -> Bool,
                 forBackward: Bool = true) -> (UnsafeMutablePointer<Float>, Geometry) {
        inputCount = g.pixels * conv1.shape.inChannels
        let (c1, mid) = conv1.forward(x, g, forBackward: forBackward)
        let t = bn1.forward(c1, rows: mid.pixels, batchStatistics: statistics(bn1))
        let (c2, out) = conv2.forward(t, mid, forBackward: forBackward)
        var shortcut = x
        if let (dsConv, dsBN) = downsample {
            let (d, _) = dsConv.forward(x, g, forBackward: forBackward)
            shortcut = UnsafePointer(dsBN.forward(d, rows: out.pixels, batchStatistics: statistics(dsBN)))
        }
        rows = out.pixels
        let y = bn2.forward(c2, rows: out.pixels, batchStatistics: statistics(bn2), residual: shortcut)
        return (y, out)
    }

    /// dy [N·Ho·Wo, Cout] → dx [N·H·W, Cin] when `needsInputGradient`.
    func backward(_ dy: UnsafePointer<Float>, needsInputGradient: Bool) -> UnsafeMutablePointer<Float>? {
        // bn2 masks dy by the block's ReLU itself; the shortcut's gradient is the same masked dy (`g` below).
        let dA = bn2.backward(dy, needsInputGradient: true)!
        let conv1Trains = conv1.weight.requiresGrad || !bn1.isFrozen
        let dT = conv2.backward(dA, needsInputGradient: conv1Trains || needsInputGradient)
        var dx: UnsafeMutablePointer<Float>? = nil
        if let dT {
            let dC1 = bn1.backward(dT, needsInputGradient: conv1.weight.requiresGrad || needsInputGradient)
            if let dC1 { dx = conv1.backward(dC1, needsInputGradient: needsInputGradient) }
        }
        let shortcutTrains = downsample.map { $0.conv.weight.requiresGrad || !$0.bn.isFrozen } ?? false
        guard needsInputGradient || shortcutTrains else { return nil }
        let count = rows * conv2.shape.outChannels
        let g = outputGradient.reserve(count)
        reluGradient(dy, output: bn2.output.pointer, count: count, into: g)
        var shortcut: UnsafePointer<Float>? = needsInputGradient ? UnsafePointer(g) : nil
        if let (dsConv, dsBN) = downsample {
            let dD = dsBN.backward(g, needsInputGradient: true)!
            shortcut = dsConv.backward(dD, needsInputGradient: needsInputGradient).map { UnsafePointer($0) }
        }
        guard needsInputGradient, let shortcut else { return nil }
        // dx = the main path's gradient (when it reached the input) + the shortcut's.
        let result = inputGradient.reserve(inputCount)
        let main = dx.map { UnsafePointer($0) }
        TrainingLanes.forEachRange(inputCount, minimum: EngineTuning.bulkFloatsPerPart) { range in
            guard let main else { (result + range.lowerBound).update(from: shortcut + range.lowerBound, count: range.count); return }
            forEachChunk(range) { i in
                result.store(main.vector(i) + shortcut.vector(i), at: i)
            } remainder: { i in
                result[i] = main[i] + shortcut[i]
            }
        }
        return result
    }
}
