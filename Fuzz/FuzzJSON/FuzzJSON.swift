import FuzzSupport
import Foundation
@testable import ResNetFormats
import ResNetModel

// The JSON that model files carry: a Keras model_config attribute (layer walk, BatchNorm graph, epsilon, padding) and a
// checkpoint's metadata strings (config, preprocessing, provenance, classes), then the value checks.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSON(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    let data = Data(bytes: start, count: count)
    if let json = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) {
        _ = KerasWeights.layerDescriptions(json)
        _ = KerasWeights.batchNormInputs(json)
        _ = try? KerasWeights.batchNormEpsilon(json, path: "fuzz")
        // The padding rules, the convolutions paired with the config's Conv2D layers in order, as the importer
        // pairs them with the file's.
        let architecture = Architecture(ModelConfig())
        let conv2D = KerasWeights.layerDescriptions(json).compactMap { layer -> String? in
            guard layer["class_name"] as? String == "Conv2D", let settings = layer["config"] as? [String: Any] else { return nil }
            return settings["name"] as? String ?? layer["name"] as? String
        }
        let names = Dictionary(zip(architecture.namedConvolutions.map(\.conv), conv2D), uniquingKeysWith: { first, _ in first })
        _ = try? KerasWeights.paddingRules(json, kerasNames: names, architecture: architecture, path: "fuzz")
    }
    let decoder = JSONDecoder()
    if let config = try? decoder.decode(ModelConfig.self, from: data) {
        if (try? ModelValidation.check(config: config, preprocessing: Preprocessing(), path: "fuzz")) != nil {
            _ = Architecture(config).parameterSpecs.count
        }
    }
    if let preprocessing = try? decoder.decode(Preprocessing.self, from: data) {
        _ = try? ModelValidation.check(config: ModelConfig(), preprocessing: preprocessing, path: "fuzz")
    }
    _ = try? decoder.decode(Provenance.self, from: data)
    _ = try? decoder.decode([String].self, from: data)
    return 0
}

@_cdecl("FuzzJSON_main")
public func fuzzJSONMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzJSON)
}
