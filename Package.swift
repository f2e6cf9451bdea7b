// swift-tools-version:6.0
import PackageDescription

// ResNetKit: conversion, transfer learning and batch inference of ResNet-18 classifiers.
// Layout: C bridges (system libraries) → ResNetModel (math, no I/O) → ResNetFormats (checkpoints,
// importers) and ResNetData (images, CSV, loaders) → the `resnetkit` command.
let package = Package(
    name: "ResNetKit",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "resnetkit", targets: ["resnetkit"]),
        .library(name: "ResNetModel", targets: ["ResNetModel"]),
        .library(name: "ResNetFormats", targets: ["ResNetFormats"]),
        .library(name: "ResNetData", targets: ["ResNetData"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.0.0"),
        .package(url: "https://github.com/weichsel/ZIPFoundation", from: "0.9.20"),
    ],
    targets: [
        // C bridges to Debian's -dev packages.
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CTIFF", pkgConfig: "libtiff-4", providers: [.apt(["libtiff-dev"])]),
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        .systemLibrary(name: "CProtobufC", pkgConfig: "libprotobuf-c", providers: [.apt(["libprotobuf-c-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        // oneDNN (no pkg-config file in Debian's package: the module map links `dnnl`).
        .systemLibrary(name: "CDNNL", providers: [.apt(["libdnnl-dev"])]),

        // C code generated from onnx.proto by protoc-c (tools/generate_onnx_proto.sh).
        .target(name: "ONNXProto", dependencies: ["CProtobufC"]),

        // Elementwise kernels compiled per instruction set (AVX-512, AVX2, baseline), chosen at load.
        .target(name: "CKernels"),

        // Small shared pieces of file handling: atomic writes, one-line file errors.
        .target(name: "ResNetSupport", dependencies: ["COpenBLAS"]),
        // The network: layers, the fused inference plan, training. Pure computation, no I/O.
        .target(name: "ResNetModel", dependencies: ["COpenBLAS", "CKernels"]),
        // bf16 / int8 inference through oneDNN, behind the InferenceEngine seam. Computation only, no I/O.
        .target(name: "ResNetDNNL", dependencies: ["ResNetModel", "CDNNL", "COpenBLAS", "CKernels"]),
        // Checkpoints (safetensors) and importers/exporters.
        .target(name: "ResNetFormats", dependencies: [
            "ResNetModel", "ResNetSupport", "CHDF5", "CProtobufC", "ONNXProto",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "ZIPFoundation", package: "ZIPFoundation"),
        ]),
        // Images (libtiff, libpng), slides, preprocessing, CSV, the prefetching loader.
        .target(name: "ResNetData", dependencies: ["ResNetModel", "ResNetSupport", "CTIFF", "CPNG"]),
        .executableTarget(name: "resnetkit", dependencies: [
            "ResNetModel", "ResNetFormats", "ResNetData", "ResNetSupport", "ResNetDNNL",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "resnetkit-bench", dependencies: ["ResNetModel", "ResNetFormats", "ResNetSupport", "ResNetDNNL"],
                          path: "tools/bench"),

        // Paths to fixtures/ and ../shared/reference, and the relative error the tolerances refer to.
        .target(name: "TestSupport", dependencies: ["CTIFF", "ResNetFormats", "ResNetModel"], path: "Tests/TestSupport"),
        .testTarget(name: "ResNetModelTests", dependencies: ["ResNetModel", "ResNetFormats", "ResNetSupport", "CKernels", "TestSupport"]),
        .testTarget(name: "ResNetFormatsTests", dependencies: ["ResNetFormats", "ResNetModel", "TestSupport"]),
        .testTarget(name: "ResNetDataTests", dependencies: ["ResNetData", "ResNetSupport", "TestSupport", "CTIFF"]),
        .testTarget(name: "ResNetDNNLTests", dependencies: ["ResNetDNNL", "ResNetModel", "ResNetFormats", "TestSupport"]),
        .testTarget(name: "CLITests", dependencies: ["ResNetFormats", "ResNetModel", "ResNetData", "ResNetSupport", "TestSupport"]),
    ],
    swiftLanguageModes: [.v5]
)

// libFuzzer targets (tools/fuzz.sh builds them with -sanitize=fuzzer into .build-fuzz): declared only when
// RESNETKIT_FUZZ is set, so ordinary builds and tests never see them.
if Context.environment["RESNETKIT_FUZZ"] != nil {
    package.targets += [
        .target(name: "FuzzSupport", path: "Fuzz/FuzzSupport"),
        .executableTarget(name: "FuzzONNX", dependencies: ["ResNetFormats", "FuzzSupport"], path: "Fuzz/FuzzONNX"),
        .executableTarget(name: "FuzzJSON", dependencies: ["ResNetFormats", "ResNetModel", "FuzzSupport"], path: "Fuzz/FuzzJSON"),
        .executableTarget(name: "FuzzSafeTensors", dependencies: ["ResNetFormats", "FuzzSupport"], path: "Fuzz/FuzzSafeTensors"),
        .executableTarget(name: "FuzzCSV", dependencies: ["ResNetData", "FuzzSupport"], path: "Fuzz/FuzzCSV"),
        .executableTarget(name: "FuzzTIFF", dependencies: ["ResNetData", "FuzzSupport"], path: "Fuzz/FuzzTIFF"),
        .executableTarget(name: "FuzzHDF5", dependencies: ["ResNetFormats", "FuzzSupport"], path: "Fuzz/FuzzHDF5"),
        .executableTarget(name: "FuzzPickle", dependencies: ["ResNetFormats", "FuzzSupport"], path: "Fuzz/FuzzPickle"),
    ]
}
