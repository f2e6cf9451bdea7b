import ArgumentParser
import Foundation
import ResNetData
import ResNetFormats
import ResNetModel
import ResNetSupport

/// `resnetkit explain PATH... --model CKPT --out DIR`: Grad-CAM maps at layer4 for each image.
struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Grad-CAM: where in each image the model looks for a class.",
        discussion: """
            Examples:
              resnetkit explain test/0e1a308b.tif --model finetuned.safetensors --out cams/
              resnetkit explain ./test --model finetuned.safetensors --out cams/ --class 1

            For each image (prepared as batch-infer prepares it: centre crop, channel order, normalisation): \
            alpha_k = the spatial mean of d y_c / d A_k, with A layer4's output and y_c the logit of class c (--class, \
            default the predicted class); CAM = ReLU(sum_k alpha_k A_k), divided by its maximum (an all-zero map \
            stays zero), upsampled to the network's input size by bilinear interpolation with half-pixel centres \
            (PyTorch's interpolate(mode="bilinear", align_corners=False)).

            Writes <id>.png (the input image, cropped, with the CAM in the viridis colour map at 40% opacity) and \
            <id>.cam.tiff (the CAM as float32, one channel) into --out, and one line per image: id, class, logit.

            Exit status: 0 done; 1 a fatal error (bad option, model or output folder); 3 some images could not be \
            read (named on stderr).
            """)

    @Argument(help: "TIFF files or folders of .tif/.tiff files.")
    var paths: [String]

    @Option(help: ArgumentHelp("Checkpoint, ONNX or HDF5 model.", valueName: "CKPT"))
    var model: String

    @Option(help: ArgumentHelp("Folder for the PNGs and float TIFFs (created if missing).", valueName: "DIR"))
    var out: String

    @Option(name: .customLong("class"), help: ArgumentHelp("Class to explain (default: each image's predicted class).", valueName: "K"))
    var classIndex: Int?

    @OptionGroup(title: "Preprocessing")
    var preprocessingOptions: PreprocessingOptions

    @Flag(help: "Descend into sub-folders.")
    var recursive = false

    @Flag(help: "No per-image lines or summary (errors still go to stderr).")
    var quiet = false

    /// Opacity of the CAM's colours over the image.
    static let opacity: Float = 0.4

    func run() throws {
        Console.quiet = quiet
        for path in paths {
            var info = stat()
            if stat(path, &info) != 0 { throw FileError(path, "no such file or folder") }
        }
        let checkpoint = try ModelImporter.load(path: model).checkpoint
        let preprocessing = try preprocessingOptions.applied(to: checkpoint.preprocessing)
        let classes = checkpoint.config.numClasses
        if let classIndex, classIndex < 0 || classIndex >= classes {
            throw UsageError("--class must be between 0 and \(classes - 1) (\(model) has \(classes) classes)")
        }
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: out, isDirectory: &isFolder) {
            guard isFolder.boolValue else { throw FileError(out, "is a file; --out takes a folder") }
        } else {
            do { try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true) } catch {
                throw FileError(out, "cannot create the folder: \(error.localizedDescription)")
            }
        }

        let plan = try InferencePlan(architecture: checkpoint.architecture, state: checkpoint.state)
        var done = 0, failed = 0
        for entry in ImageEnumerator(paths: paths, recursive: recursive) {
            do {
                if let problem = entry.problem { throw FileError(entry.path, problem) }
                let image = try TIFFDecoder.decode(path: entry.path)
                let (height, width) = ImagePreparation.outputSize(width: image.width, height: image.height, preprocessing)
                guard height >= ModelConfig.minimumInputSide, width >= ModelConfig.minimumInputSide else {
                    throw FileError(entry.path, "is \(image.width)x\(image.height), smaller than the network's smallest input \(ModelConfig.minimumInputSide)")
                }
                var input = [Float](repeating: 0, count: height * width * 3)
                try input.withUnsafeMutableBufferPointer { try ImagePreparation.prepare(image, preprocessing, into: $0.baseAddress!, path: entry.path) }
                let cam = input.withUnsafeBufferPointer {
                    GradCAM.compute(plan: plan, image: $0.baseAddress!, height: height, width: width, classIndex: classIndex)
                }
                let map = GradCAM.upsample(cam.map, height: cam.height, width: cam.width, toHeight: height, toWidth: width)
                let base = URL(fileURLWithPath: out).appendingPathComponent(entry.id.replacingOccurrences(of: "/", with: "_")).path
                try FloatTIFF.write(path: base + ".cam.tiff", width: width, height: height, values: map)
                try PNGFile.write(path: base + ".png", width: width, height: height, channels: 3,
                                  pixels: Self.blend(image, preprocessing, map: map, height: height, width: width))
                Console.info(String(format: "%@: class %d (logit %.4f)", entry.id, cam.classIndex, cam.logits[cam.classIndex]))
                done += 1
            } catch {
                Console.warning("\(error)")
                failed += 1
            }
        }
        Console.info("explain: \(done) images, \(failed) failed, wrote \(out)")
        if failed > 0 { throw ExitCode(3) }
        if done == 0 { throw FileError(paths.joined(separator: " "), "no .tif or .tiff images found") }
    }

    /// The network's view of the image (the crop, in RGB, 8-bit) with the map's viridis colours at `opacity`.
    static func blend(_ image: RGBImage, _ preprocessing: Preprocessing, map: [Float], height: Int, width: Int) -> [UInt8] {
        let top = preprocessing.crop > 0 ? ImagePreparation.centreCropOffset(side: image.height, crop: preprocessing.crop) : 0
        let left = preprocessing.crop > 0 ? ImagePreparation.centreCropOffset(side: image.width, crop: preprocessing.crop) : 0
        var pixels = [UInt8](repeating: 0, count: height * width * 3)
        for y in 0..<height {
            for x in 0..<width {
                let (r, g, b) = ColorMap.viridis(map[y * width + x])
                let source = ((top + y) * image.width + left + x) * 3
                for (c, colour) in [r, g, b].enumerated() {
                    let value = image.pixels[source + c] * 255 * (1 - opacity) + Float(colour) * opacity
                    pixels[(y * width + x) * 3 + c] = UInt8(min(255, max(0, value.rounded())))
                }
            }
        }
        return pixels
    }
}
