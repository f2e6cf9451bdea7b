/// What the convolutions of a training network share: their scratch memory (they run one at a time) and how
/// they are computed.
final class TrainingWorkspace {
    var algorithm = ConvolutionAlgorithm.automatic
    let scratch = ConvolutionScratch()
}

/// Conv2d without bias, a training layer over the engine's `Convolution`: it keeps the input for backward and
/// owns its output and input-gradient buffers. Forward: out[P, Cout] = conv(x); backward: dW and dx.
final class Conv2dLayer {
    let shape: ConvShape
    let weight: TrainableParameter
    let convolution: Convolution
    let workspace: TrainingWorkspace
    let output = FloatBuffer(), inputGradient = FloatBuffer()
    /// When set, computes this layer instead of `convolution` (reduced precision on oneDNN).
    var external: (any TrainingConvolution)? { didSet { externalWeightVersion = nil } }
    /// The weight's version at the external convolution's last forward.
    private var externalWeightVersion: Int?
    private var input: UnsafePointer<Float>?
    private var inputGeometry = Geometry(batch: 0, height: 0, width: 0)

    init(_ shape: ConvShape, weight: TrainableParameter, workspace: TrainingWorkspace) {
        self.shape = shape
        self.weight = weight
        self.workspace = workspace
        convolution = Convolution(shape, parameter: weight)
    }

    /// x [N·H·W, Cin] → out [N·Ho·Wo, Cout]. `forBackward` false: no `backward` follows (see `TrainingConvolution`).
    func forward(_ x: UnsafePointer<Float>, _ g: Geometry, forBackward: Bool = true) -> (UnsafeMutablePointer<Float>, Geometry) {
        input = x
        inputGeometry = g
        let out = g.output(of: shape)
        let y = output.reserve(out.pixels * shape.outChannels)
        if let external {
            // The version moves at every optimizer step and `setValues`: what the external convolution derived
            // from the weight (its bf16 copies) is made once per step, not at every forward.
            let version = weight.version
            external.forward(x, g, weight: weight.value.baseAddress!, weightUnchanged: version == externalWeightVersion,
                             forBackward: forBackward, y)
            externalWeightVersion = version
            return (y, out)
        }
        let laneImages = (g.batch + Parallelism.threads - 1) / Parallelism.threads
        let method = convolution.method(g, laneImages: laneImages, algorithm: workspace.algorithm,
                                        trainable: weight.requiresGrad)
        convolution.prepare(method, g)
        convolution.forward(x, g, y, method: method, split: .lanes, scratch: workspace.scratch)
        return (y, out)
    }

    /// dy [N·Ho·Wo, Cout] → dx [N·H·W, Cin] (when `needsInputGradient`); dW overwritten when required.
    func backward(_ dy: UnsafePointer<Float>, needsInputGradient: Bool) -> UnsafeMutablePointer<Float>? {
        guard let x = input else { return nil }
        let g = inputGeometry
        let dx: UnsafeMutablePointer<Float>? = needsInputGradient ? inputGradient.reserve(g.pixels * shape.inChannels) : nil
        if let external {
            external.backward(dy, weightGradient: weight.requiresGrad ? weight.gradient.baseAddress! : nil, inputGradient: dx)
            return dx
        }
        convolution.backward(x, g, dy, weightGradient: weight.requiresGrad ? weight.gradient.baseAddress! : nil,
                             inputGradient: dx, algorithm: workspace.algorithm, scratch: workspace.scratch)
        return dx
    }
}
