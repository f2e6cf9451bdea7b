/// Linear: y[N, out] = x[N, in] · Wᵀ + b, W [out, in] (torchvision layout), optionally followed by ReLU.
final class LinearLayer {
    let inputs: Int, outputs: Int
    let weight: TrainableParameter, bias: TrainableParameter
    let relu: Bool
    let output = FloatBuffer(), inputGradient = FloatBuffer(), outputGradient = FloatBuffer()
    private var input: UnsafePointer<Float>?
    private var batch = 0

    init(weight: TrainableParameter, bias: TrainableParameter, relu: Bool) {
        outputs = weight.shape[0]
        inputs = weight.shape[1]
        self.weight = weight
        self.bias = bias
        self.relu = relu
    }

    func forward(_ x: UnsafePointer<Float>, batch: Int) -> UnsafeMutablePointer<Float> {
        input = x
        self.batch = batch
        let y = output.reserve(batch * outputs)
        SplitGEMM.abT(batch, outputs, inputs, x, inputs, UnsafePointer(weight.value.baseAddress!), inputs, y, outputs)
        biasResidualReLU(y, rows: batch, channels: outputs, bias: bias.value.baseAddress!, residual: nil, relu: relu, threads: 1)
        return y
    }

    /// dy [N, out] → dx [N, in]; dW = dyᵀ·x, db = Σ dy.
    func backward(_ dyIn: UnsafePointer<Float>, needsInputGradient: Bool) -> UnsafeMutablePointer<Float>? {
        guard let x = input else { return nil }
        var dy = dyIn
        if relu {
            let masked = outputGradient.reserve(batch * outputs)
            reluGradient(dyIn, output: output.pointer, count: batch * outputs, into: masked)
            dy = UnsafePointer(masked)
        }
        if weight.requiresGrad {
            SplitGEMM.aTb(outputs, inputs, batch, dy, outputs, x, inputs, weight.gradient.baseAddress!, inputs)
        }
        if bias.requiresGrad {
            let db = bias.gradient
            for o in 0..<outputs { db[o] = 0 }
            for n in 0..<batch { for o in 0..<outputs { db[o] += dy[n * outputs + o] } }
        }
        guard needsInputGradient else { return nil }
        let dx = inputGradient.reserve(batch * inputs)
        SplitGEMM.ab(batch, inputs, outputs, dy, outputs, UnsafePointer(weight.value.baseAddress!), inputs, dx, inputs)
        return dx
    }
}
