/// BatchNorm folding, the one place it is written: the inference plan and the ONNX exporter both fold each
/// eval-mode BatchNorm into the layer next to it.

/// Eval-mode BatchNorm as y = scale · x + shift (scale = γ / √(var + eps), shift = β − mean · scale).
public func batchNormAffine(_ state: StateDict, _ bn: String, epsilon: Float) -> (scale: [Float], shift: [Float]) {
    let gamma = state["\(bn).weight"]!.data, beta = state["\(bn).bias"]!.data
    let mean = state["\(bn).running_mean"]!.data, variance = state["\(bn).running_var"]!.data
    var scale = [Float](repeating: 0, count: gamma.count), shift = scale
    for c in 0..<gamma.count {
        scale[c] = gamma[c] / (variance[c] + epsilon).squareRoot()
        shift[c] = beta[c] - mean[c] * scale[c]
    }
    return (scale, shift)
}

/// A convolution with the BatchNorm after it folded in: weight [out, in, kh, kw] scaled per output channel, and
/// the BatchNorm's shift as its bias.
public func foldedConvolution(_ state: StateDict, _ conv: String, batchNorm bn: String, shape: ConvShape,
                              epsilon: Float) -> (weight: [Float], bias: [Float]) {
    let (scale, shift) = batchNormAffine(state, bn, epsilon: epsilon)
    var weight = state["\(conv).weight"]!.data
    let perOutput = shape.patchSize
    for o in 0..<shape.outChannels {
        for i in 0..<perOutput { weight[o * perOutput + i] *= scale[o] }
    }
    return (weight, shift)
}

/// A linear layer (weight [out, in]) with an eval-mode BatchNorm on its input folded in:
/// W·(a⊙x + s) + b = (W·diag a)·x + (W·s + b).
public func foldedLinear(_ state: StateDict, _ name: String, inputBatchNorm bn: String?,
                         epsilon: Float) -> (weight: [Float], bias: [Float]) {
    let w = state["\(name).weight"]!
    let outputs = w.shape[0], inputs = w.shape[1]
    var weight = w.data, bias = state["\(name).bias"]!.data
    guard let bn else { return (weight, bias) }
    let (scale, shift) = batchNormAffine(state, bn, epsilon: epsilon)
    for o in 0..<outputs {
        var extra: Float = 0
        for i in 0..<inputs {
            extra += weight[o * inputs + i] * shift[i]
            weight[o * inputs + i] *= scale[i]
        }
        bias[o] += extra
    }
    return (weight, bias)
}

extension Architecture {
    /// The head's linear layers in order, each with the BatchNorm1d on its input (folded at inference): `fc`
    /// alone, or `head.fc1` after `head.bn1` and `head.fc2` after `head.bn2`. ReLU follows all but the last.
    public var headLinearLayers: [(name: String, inputBatchNorm: String?)] {
        switch config.head {
        case .linear: return [("fc", nil)]
        case .mlp: return [("head.fc1", "head.bn1"), ("head.fc2", "head.bn2")]
        }
    }
}
