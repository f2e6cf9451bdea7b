/// One row of the torchinfo-like table that `inspect` prints.
public struct LayerSummary: Equatable, Sendable {
    public var name: String
    public var type: String
    /// Nesting depth (0 = top-level module).
    public var depth: Int
    /// NCHW (or [N, features]) output shape.
    public var outputShape: [Int]
    public var parameters: Int
    public var multAdds: Int
}

extension Architecture {
    /// Layer-by-layer shapes, parameter counts and multiply-adds for an input of `batch`×3×`height`×`width`,
    /// counted as torchinfo counts them (weights × output positions; BatchNorm as its parameters × batch).
    public func summary(batch: Int, height: Int, width: Int) -> [LayerSummary] {
        var rows: [LayerSummary] = []
        var g = Geometry(batch: batch, height: height, width: width)
        func conv(_ name: String, _ s: ConvShape, depth: Int) -> LayerSummary {
            let out = g.output(of: s)
            let weights = s.outChannels * s.patchSize
            return LayerSummary(name: name, type: "Conv2d", depth: depth, outputShape: [batch, s.outChannels, out.height, out.width],
                                parameters: weights, multAdds: weights * out.height * out.width * batch)
        }
        func batchNorm(_ name: String, _ shape: [Int], depth: Int, type: String = "BatchNorm2d") -> LayerSummary {
            LayerSummary(name: name, type: type, depth: depth, outputShape: shape, parameters: 2 * shape[1], multAdds: 2 * shape[1] * batch)
        }
        func linear(_ name: String, _ inputs: Int, _ outputs: Int, depth: Int) -> LayerSummary {
            LayerSummary(name: name, type: "Linear", depth: depth, outputShape: [batch, outputs],
                         parameters: inputs * outputs + outputs, multAdds: inputs * outputs * batch)
        }
        let stemConv = conv("conv1", stem, depth: 0)
        rows.append(stemConv)
        rows.append(batchNorm("bn1", stemConv.outputShape, depth: 0))
        rows.append(LayerSummary(name: "relu", type: "ReLU", depth: 0, outputShape: stemConv.outputShape, parameters: 0, multAdds: 0))
        let pooled = Geometry(batch: batch, height: stemOutputSide(height), width: stemOutputSide(width))
        g = pooled
        rows.append(LayerSummary(name: "maxpool", type: "MaxPool2d", depth: 0,
                                 outputShape: [batch, stem.outChannels, pooled.height, pooled.width], parameters: 0, multAdds: 0))
        for block in blocks {
            var inner: [LayerSummary] = []
            let input = g
            let c1 = conv("\(block.name).conv1", block.conv1, depth: 1)
            inner += [c1, batchNorm("\(block.name).bn1", c1.outputShape, depth: 1),
                      LayerSummary(name: "\(block.name).relu", type: "ReLU", depth: 1, outputShape: c1.outputShape, parameters: 0, multAdds: 0)]
            g = g.output(of: block.conv1)
            let c2 = conv("\(block.name).conv2", block.conv2, depth: 1)
            inner += [c2, batchNorm("\(block.name).bn2", c2.outputShape, depth: 1)]
            if let ds = block.downsample {
                let mid = g
                g = input
                let d = conv("\(block.name).downsample.0", ds, depth: 1)
                inner += [d, batchNorm("\(block.name).downsample.1", d.outputShape, depth: 1)]
                g = mid
            }
            g = g.output(of: block.conv2)
            inner.append(LayerSummary(name: "\(block.name).relu", type: "ReLU", depth: 1, outputShape: c2.outputShape, parameters: 0, multAdds: 0))
            rows.append(LayerSummary(name: block.name, type: "BasicBlock", depth: 0, outputShape: c2.outputShape,
                                     parameters: inner.reduce(0) { $0 + $1.parameters }, multAdds: inner.reduce(0) { $0 + $1.multAdds }))
            rows += inner
        }
        let features = config.featureWidth
        rows.append(LayerSummary(name: "avgpool", type: "AdaptiveAvgPool2d", depth: 0, outputShape: [batch, features, 1, 1], parameters: 0, multAdds: 0))
        switch config.head {
        case .linear:
            rows.append(linear("fc", features, config.numClasses, depth: 0))
        case .mlp:
            let hidden = config.hiddenUnits
            rows.append(LayerSummary(name: "flatten", type: "Flatten", depth: 0, outputShape: [batch, features], parameters: 0, multAdds: 0))
            rows.append(batchNorm("head.bn1", [batch, features], depth: 0, type: "BatchNorm1d"))
            rows.append(LayerSummary(name: "head.dropout1", type: "Dropout", depth: 0, outputShape: [batch, features], parameters: 0, multAdds: 0))
            rows.append(linear("head.fc1", features, hidden, depth: 0))
            rows.append(LayerSummary(name: "head.relu", type: "ReLU", depth: 0, outputShape: [batch, hidden], parameters: 0, multAdds: 0))
            rows.append(batchNorm("head.bn2", [batch, hidden], depth: 0, type: "BatchNorm1d"))
            rows.append(LayerSummary(name: "head.dropout2", type: "Dropout", depth: 0, outputShape: [batch, hidden], parameters: 0, multAdds: 0))
            rows.append(linear("head.fc2", hidden, config.numClasses, depth: 0))
        }
        return rows
    }
}
