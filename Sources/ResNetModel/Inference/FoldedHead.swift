/// The classifier head for inference, both engines' (it runs in fp32 after any backbone): the linear layers with
/// the MLP head's BatchNorms folded in, ReLU between them.
public struct FoldedHead {
    /// y = x · Wᵀ + b, weight [outputs, inputs].
    struct Layer {
        var inputs: Int, outputs: Int
        var weight: [Float]
        var bias: [Float]
    }
    let layers: [Layer]

    /// The head of a validated state dict.
    public init(_ architecture: Architecture, state: StateDict) {
        let eps = architecture.config.batchNormEpsilon
        layers = architecture.headLinearLayers.map { layer in
            let (weight, bias) = foldedLinear(state, layer.name, inputBatchNorm: layer.inputBatchNorm, epsilon: eps)
            let shape = state["\(layer.name).weight"]!.shape
            return Layer(inputs: shape[1], outputs: shape[0], weight: weight, bias: bias)
        }
    }

    /// Floats of `scratch` that `run` needs per image.
    public var scratchWidth: Int { layers.dropLast().map(\.outputs).max() ?? 0 }

    /// Logits [count, classes] from pooled features [count, featureWidth]; `scratch` holds the hidden layer
    /// ([count, scratchWidth]). `threads`: for the epilogue.
    public func run(_ features: UnsafePointer<Float>, count: Int, logits: UnsafeMutablePointer<Float>,
                    scratch: UnsafeMutablePointer<Float>, threads: Int) {
        var current = features
        for (index, layer) in layers.enumerated() {
            let last = index == layers.count - 1
            let dst = last ? logits : scratch
            layer.weight.withUnsafeBufferPointer { w in
                layer.bias.withUnsafeBufferPointer { b in
                    gemmABt(count, layer.outputs, layer.inputs, current, layer.inputs, w.baseAddress!, layer.inputs, dst, layer.outputs)
                    biasResidualReLU(dst, rows: count, channels: layer.outputs, bias: b.baseAddress!, residual: nil,
                                     relu: !last, threads: threads)
                }
            }
            current = UnsafePointer(dst)
        }
    }

    /// Logits for pooled features f, and ∂y_c/∂f (Grad-CAM's) (c = classIndex, or the largest logit's class).
    /// Forward: z_l = W_l · a_{l−1} + b_l, a_l = ReLU(z_l) except for the last layer; backward from e_c:
    /// g_{l−1} = W_lᵀ · (g_l ⊙ [z_l > 0]) (no mask on the last layer).
    func gradient(features: [Float], classIndex: Int?) -> (logits: [Float], gradient: [Float]) {
        var activations = [features]
        var preActivations: [[Float]] = []
        for (index, layer) in layers.enumerated() {
            let input = activations.last!
            var z = layer.bias
            for o in 0..<layer.outputs {
                var sum: Float = 0
                for i in 0..<layer.inputs { sum += layer.weight[o * layer.inputs + i] * input[i] }
                z[o] += sum
            }
            preActivations.append(z)
            activations.append(index == layers.count - 1 ? z : z.map { max(0, $0) })
        }
        let logits = activations.last!
        let c = classIndex ?? argmax(logits)
        precondition(c >= 0 && c < logits.count, "class out of range")
        var upstream = [Float](repeating: 0, count: logits.count)
        upstream[c] = 1
        for index in stride(from: layers.count - 1, through: 0, by: -1) {
            let layer = layers[index]
            if index != layers.count - 1 {
                for o in 0..<layer.outputs where preActivations[index][o] <= 0 { upstream[o] = 0 }
            }
            var down = [Float](repeating: 0, count: layer.inputs)
            for o in 0..<layer.outputs where upstream[o] != 0 {
                let u = upstream[o]
                for i in 0..<layer.inputs { down[i] += layer.weight[o * layer.inputs + i] * u }
            }
            upstream = down
        }
        return (logits, upstream)
    }
}
