import Foundation

/// A minimal line-plot SVG writer (no dependencies): panels of series with axes, ticks, legend, and dotted
/// vertical markers. Output is plain SVG 1.1 that browsers render.
struct SVGPlot {
    struct Series {
        var label: String
        var points: [(x: Double, y: Double)]
        var color: String
        var opacity = 1.0
        var lineWidth = 1.5
        var dashed = false
        var markers = false
    }

    var title: String
    var xLabel: String
    var yLabel: String
    var series: [Series]
    /// Dotted vertical lines, e.g. where fine-tuning starts.
    var markers: [(x: Double, label: String)] = []
    /// Fixed axis ranges (e.g. 0…1 for ROC curves); nil fits the data.
    var xRange: ClosedRange<Double>? = nil
    var yRange: ClosedRange<Double>? = nil
    /// Labels of the x ticks (e.g. 10^x for a log axis); nil: the values themselves.
    var xTickLabel: ((Double) -> String)? = nil
    /// The legend in the top left corner instead of the top right.
    var legendLeft = false

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    static func format(_ v: Double) -> String {
        if v == 0 { return "0" }
        let a = abs(v)
        return a >= 1000 || a < 0.01 ? String(format: "%.2g", v) : String(format: "%.3g", v)
    }

    /// Ticks at 1, 2 or 5 × 10ⁿ spacing, about five of them.
    static func ticks(_ range: ClosedRange<Double>) -> [Double] {
        let span = range.upperBound - range.lowerBound
        guard span > 0, span.isFinite else { return [range.lowerBound] }
        let raw = span / 5, magnitude = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= raw } ?? raw
        var ticks: [Double] = []
        var t = ceil(range.lowerBound / step) * step
        while t <= range.upperBound + step * 1e-9 { ticks.append(t); t += step }
        return ticks
    }

    /// The panel as an SVG group at (left, top) of the given size.
    func render(left: Double, top: Double, width: Double, height: Double) -> String {
        let all = series.flatMap(\.points).filter { $0.x.isFinite && $0.y.isFinite }
        func fit(_ values: [Double]) -> ClosedRange<Double> {
            guard let lo = values.min(), let hi = values.max() else { return 0...1 }
            if lo == hi { return (lo - 0.5)...(hi + 0.5) }
            let pad = (hi - lo) * 0.05
            return (lo - pad)...(hi + pad)
        }
        let xr = xRange ?? fit(all.map(\.x) + markers.map(\.x)), yr = yRange ?? fit(all.map(\.y))
        let plotLeft = left + 60, plotTop = top + 30, plotWidth = width - 80, plotHeight = height - 75
        func px(_ x: Double) -> Double { plotLeft + (x - xr.lowerBound) / (xr.upperBound - xr.lowerBound) * plotWidth }
        func py(_ y: Double) -> Double { plotTop + plotHeight - (y - yr.lowerBound) / (yr.upperBound - yr.lowerBound) * plotHeight }
        func n(_ v: Double) -> String { String(format: "%.1f", v) }
        var out = ["<g font-family=\"sans-serif\" font-size=\"11\">"]
        out.append("<text x=\"\(n(left + width / 2))\" y=\"\(n(top + 18))\" text-anchor=\"middle\" font-size=\"14\">\(Self.escape(title))</text>")
        out.append("<rect x=\"\(n(plotLeft))\" y=\"\(n(plotTop))\" width=\"\(n(plotWidth))\" height=\"\(n(plotHeight))\" fill=\"none\" stroke=\"#444\"/>")
        for t in Self.ticks(xr) {
            out.append("<line x1=\"\(n(px(t)))\" y1=\"\(n(plotTop + plotHeight))\" x2=\"\(n(px(t)))\" y2=\"\(n(plotTop + plotHeight + 4))\" stroke=\"#444\"/>")
            out.append("<text x=\"\(n(px(t)))\" y=\"\(n(plotTop + plotHeight + 16))\" text-anchor=\"middle\">\(Self.escape(xTickLabel?(t) ?? Self.format(t)))</text>")
        }
        for t in Self.ticks(yr) {
            out.append("<line x1=\"\(n(plotLeft - 4))\" y1=\"\(n(py(t)))\" x2=\"\(n(plotLeft + plotWidth))\" y2=\"\(n(py(t)))\" stroke=\"#ddd\"/>")
            out.append("<text x=\"\(n(plotLeft - 6))\" y=\"\(n(py(t) + 4))\" text-anchor=\"end\">\(Self.format(t))</text>")
        }
        out.append("<text x=\"\(n(plotLeft + plotWidth / 2))\" y=\"\(n(top + height - 12))\" text-anchor=\"middle\">\(Self.escape(xLabel))</text>")
        out.append("<text transform=\"translate(\(n(left + 14)),\(n(plotTop + plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\">\(Self.escape(yLabel))</text>")
        for marker in markers where xr.contains(marker.x) {
            out.append("<line x1=\"\(n(px(marker.x)))\" y1=\"\(n(plotTop))\" x2=\"\(n(px(marker.x)))\" y2=\"\(n(plotTop + plotHeight))\" stroke=\"#000\" stroke-dasharray=\"2,3\"/>")
            out.append("<text x=\"\(n(px(marker.x) + 4))\" y=\"\(n(plotTop + 12))\">\(Self.escape(marker.label))</text>")
        }
        for s in series {
            let points = s.points.filter { $0.x.isFinite && $0.y.isFinite }
            guard !points.isEmpty else { continue }
            let path = points.map { "\(n(px($0.x))),\(n(py($0.y)))" }.joined(separator: " ")
            out.append("<polyline points=\"\(path)\" fill=\"none\" stroke=\"\(s.color)\" stroke-opacity=\"\(s.opacity)\" stroke-width=\"\(s.lineWidth)\"\(s.dashed ? " stroke-dasharray=\"5,3\"" : "")/>")
            if s.markers {
                for p in points { out.append("<circle cx=\"\(n(px(p.x)))\" cy=\"\(n(py(p.y)))\" r=\"2.5\" fill=\"\(s.color)\"/>") }
            }
        }
        for (i, s) in series.enumerated() {
            let y = plotTop + 14 + Double(i) * 14, x = legendLeft ? plotLeft + 10 : plotLeft + plotWidth - 150
            out.append("<line x1=\"\(n(x))\" y1=\"\(n(y - 4))\" x2=\"\(n(x + 20))\" y2=\"\(n(y - 4))\" stroke=\"\(s.color)\" stroke-opacity=\"\(max(s.opacity, 0.4))\" stroke-width=\"2\"/>")
            out.append("<text x=\"\(n(x + 25))\" y=\"\(n(y))\">\(Self.escape(s.label))</text>")
        }
        out.append("</g>")
        return out.joined(separator: "\n")
    }

    /// A standalone SVG document with the panels stacked vertically.
    static func document(_ panels: [SVGPlot], width: Double = 720, panelHeight: Double = 340) -> String {
        let height = panelHeight * Double(panels.count)
        var out = ["<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
                   "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\">",
                   "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"]
        for (i, panel) in panels.enumerated() {
            out.append(panel.render(left: 0, top: Double(i) * panelHeight, width: width, height: panelHeight))
        }
        out.append("</svg>")
        return out.joined(separator: "\n") + "\n"
    }
}
